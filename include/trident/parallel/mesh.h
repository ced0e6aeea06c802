// trident/parallel/mesh.h: the 3D layout of a job's ranks (tensor, pipeline and data
// parallel) and a communicator per dimension.
//
// A Mesh is pure arithmetic: world size, the size of each dimension (tp, pp, dp; their product
// is the world size) and the rank order, a string like Megatron's "tp-dp-pp" that lists the
// dimensions from the fastest-varying to the slowest. With the default "tp-dp-pp" the ranks of
// a tensor-parallel group are adjacent (rank = tp + TP * (dp + DP * pp)), which keeps the
// chattiest group on one host.
//
// MeshGroups builds the communicators of one rank's groups from a world communicator with
// Split; calling Build again on a new world (a new epoch) rebuilds them from the same Mesh.
//
//   ASSIGN_OR_RETURN(Mesh mesh, Mesh::Create(world->size(), {.tp = 2, .pp = 2, .dp = 2}));
//   ASSIGN_OR_RETURN(MeshGroups groups, MeshGroups::Build(*world, mesh));
//   groups.Group(Dim::kDp).AllReduce(grads, grads, ReduceOp::kAvg);
//   int next = mesh.PipelineNext(world->rank());   // -1 on the last stage
//
// Thread-safety: Mesh is an immutable value. MeshGroups owns its communicators; see
// communicator.h for theirs.
#ifndef TRIDENT_PARALLEL_MESH_H_
#define TRIDENT_PARALLEL_MESH_H_

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "trident/communicator.h"

namespace trident {

enum class Dim : int { kTp = 0, kPp = 1, kDp = 2 };
absl::string_view DimName(Dim dim);  // "tp", "pp", "dp"
absl::StatusOr<Dim> ParseDim(absl::string_view name);

struct MeshSpec {
  int tp = 1;
  int pp = 1;
  int dp = 1;
  std::string order = "tp-dp-pp";  // fastest-varying dimension first
};

struct MeshCoord {
  int tp = 0, pp = 0, dp = 0;
  int& operator[](Dim d) { return d == Dim::kTp ? tp : d == Dim::kPp ? pp : dp; }
  int operator[](Dim d) const { return d == Dim::kTp ? tp : d == Dim::kPp ? pp : dp; }
  friend bool operator==(const MeshCoord& a, const MeshCoord& b) {
    return a.tp == b.tp && a.pp == b.pp && a.dp == b.dp;
  }
  friend bool operator!=(const MeshCoord& a, const MeshCoord& b) { return !(a == b); }
};

class Mesh {
 public:
  // kInvalidArgument when a size is below 1, the product is not the world size, or the order
  // is not a permutation of tp, dp and pp; the message says which and why.
  static absl::StatusOr<Mesh> Create(int world_size, const MeshSpec& spec);

  int world_size() const { return world_size_; }
  int size(Dim d) const { return sizes_[static_cast<int>(d)]; }
  const MeshSpec& spec() const { return spec_; }

  MeshCoord CoordOf(int rank) const;
  int RankOf(const MeshCoord& coord) const;
  // The world ranks of `rank`'s group along `d`, ordered by their coordinate in `d`.
  std::vector<int> GroupRanks(Dim d, int rank) const;
  // The pipeline neighbours of `rank` (same tp and dp coordinates), or -1 at either end.
  int PipelineNext(int rank) const;
  int PipelinePrev(int rank) const;
  std::string Describe() const;  // "tp=2 pp=2 dp=2 order=tp-dp-pp"

 private:
  Mesh() = default;
  int world_size_ = 1;
  MeshSpec spec_;
  std::array<int, 3> sizes_{1, 1, 1};
  std::array<Dim, 3> order_{Dim::kTp, Dim::kDp, Dim::kPp};  // fastest first
};

class MeshGroups {
 public:
  // Collective over `world`: every rank calls it with the same mesh. Splits `world` once per
  // dimension.
  static absl::StatusOr<MeshGroups> Build(Communicator& world, const Mesh& mesh);

  Communicator& Group(Dim d) const { return *groups_[static_cast<int>(d)]; }
  const MeshCoord& coord() const { return coord_; }

 private:
  std::array<std::shared_ptr<Communicator>, 3> groups_;
  MeshCoord coord_;
};

}  // namespace trident

#endif  // TRIDENT_PARALLEL_MESH_H_
