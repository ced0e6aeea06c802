#include "trident/parallel/mesh.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/check.h"
#include "common/status_macros.h"

namespace trident {

absl::string_view DimName(Dim dim) {
  switch (dim) {
    case Dim::kTp: return "tp";
    case Dim::kPp: return "pp";
    case Dim::kDp: return "dp";
  }
  return "?";
}

absl::StatusOr<Dim> ParseDim(absl::string_view name) {
  for (Dim d : {Dim::kTp, Dim::kPp, Dim::kDp}) {
    if (DimName(d) == name) return d;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown mesh dimension '", name, "'; expected tp, pp or dp"));
}

absl::StatusOr<Mesh> Mesh::Create(int world_size, const MeshSpec& spec) {
  for (auto [name, size] : {std::pair{"tp", spec.tp}, {"pp", spec.pp}, {"dp", spec.dp}}) {
    if (size < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("mesh: ", name, " size is ", size, "; every dimension needs at least 1"));
    }
  }
  if (static_cast<int64_t>(spec.tp) * spec.pp * spec.dp != world_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "mesh: tp=", spec.tp, " x pp=", spec.pp, " x dp=", spec.dp, " = ",
        static_cast<int64_t>(spec.tp) * spec.pp * spec.dp, " ranks, but the world has ",
        world_size, "; the product of the sizes must equal the world size"));
  }
  Mesh mesh;
  std::vector<std::string> parts = absl::StrSplit(spec.order, '-');
  std::vector<Dim> order;
  for (const std::string& part : parts) {
    absl::StatusOr<Dim> d = ParseDim(part);
    if (!d.ok() || std::find(order.begin(), order.end(), *d) != order.end()) {
      order.clear();
      break;
    }
    order.push_back(*d);
  }
  if (order.size() != 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        "mesh: order '", spec.order,
        "' must name tp, dp and pp once each, fastest-varying first, e.g. \"tp-dp-pp\""));
  }
  mesh.world_size_ = world_size;
  mesh.spec_ = spec;
  mesh.sizes_ = {spec.tp, spec.pp, spec.dp};
  std::copy(order.begin(), order.end(), mesh.order_.begin());
  return mesh;
}

MeshCoord Mesh::CoordOf(int rank) const {
  TRIDENT_CHECK(rank >= 0 && rank < world_size_) << "rank " << rank;
  MeshCoord c;
  for (Dim d : order_) {
    c[d] = rank % size(d);
    rank /= size(d);
  }
  return c;
}

int Mesh::RankOf(const MeshCoord& coord) const {
  int rank = 0;
  for (int i = 2; i >= 0; --i) {
    const Dim d = order_[i];
    TRIDENT_CHECK(coord[d] >= 0 && coord[d] < size(d)) << DimName(d) << "=" << coord[d];
    rank = rank * size(d) + coord[d];
  }
  return rank;
}

std::vector<int> Mesh::GroupRanks(Dim d, int rank) const {
  MeshCoord c = CoordOf(rank);
  std::vector<int> out;
  for (int i = 0; i < size(d); ++i) {
    c[d] = i;
    out.push_back(RankOf(c));
  }
  return out;
}

int Mesh::PipelineNext(int rank) const {
  MeshCoord c = CoordOf(rank);
  if (c.pp + 1 >= size(Dim::kPp)) return -1;
  ++c.pp;
  return RankOf(c);
}

int Mesh::PipelinePrev(int rank) const {
  MeshCoord c = CoordOf(rank);
  if (c.pp == 0) return -1;
  --c.pp;
  return RankOf(c);
}

std::string Mesh::Describe() const {
  return absl::StrCat("tp=", spec_.tp, " pp=", spec_.pp, " dp=", spec_.dp,
                      " order=", spec_.order);
}

absl::StatusOr<MeshGroups> MeshGroups::Build(Communicator& world, const Mesh& mesh) {
  if (world.size() != mesh.world_size()) {
    return absl::InvalidArgumentError(absl::StrCat("MeshGroups: the mesh (", mesh.Describe(),
                                                   ") is for ", mesh.world_size(),
                                                   " ranks but the communicator has ",
                                                   world.size()));
  }
  MeshGroups groups;
  groups.coord_ = mesh.CoordOf(world.rank());
  for (Dim d : {Dim::kTp, Dim::kPp, Dim::kDp}) {
    // Ranks that agree on the other two coordinates form a group: the rank with this
    // dimension's coordinate zeroed names it; the coordinate orders it.
    MeshCoord leader = groups.coord_;
    leader[d] = 0;
    ASSIGN_OR_RETURN(std::unique_ptr<Communicator> group,
                     world.Split(mesh.RankOf(leader), groups.coord_[d]));
    TRIDENT_CHECK(group != nullptr && group->size() == mesh.size(d));
    groups.groups_[static_cast<int>(d)] = std::move(group);
  }
  return groups;
}

}  // namespace trident
