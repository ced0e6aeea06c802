// Peer replicas: the wire format of a replica (an index message, then the bytes) and the
// restore of slices from one held in memory.
#include <algorithm>
#include <cstring>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "checkpoint/internal.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace trident {

using json = nlohmann::json;

std::vector<std::string> HeldPeerReplica::TensorNames() const {
  std::vector<std::string> names;
  for (const ReplicaTensor& t : impl_->tensors) names.push_back(t.name);
  return names;
}

absl::Status HeldPeerReplica::Restore(absl::Span<const TensorRequest> requests) const {
  const std::string where = absl::StrCat("the replica of rank ", impl_->owner_rank, " (step ",
                                         impl_->step, ")");
  std::vector<std::vector<bool>> verified(impl_->tensors.size());
  ckpt::DeviceUploads uploads;  // CUDA destinations
  for (const TensorRequest& request : requests) {
    auto it = std::find_if(impl_->tensors.begin(), impl_->tensors.end(),
                           [&](const ReplicaTensor& t) { return t.name == request.name; });
    if (it == impl_->tensors.end()) {
      return absl::NotFoundError(absl::StrCat(where, " has no tensor ", request.name));
    }
    const ReplicaTensor& t = *it;
    ASSIGN_OR_RETURN(ckpt::Box want, ckpt::RequestBox(request, t.dtype, t.global_shape, where));
    ASSIGN_OR_RETURN(char* dst, uploads.Destination(request));
    std::vector<bool>& ok = verified[it - impl_->tensors.begin()];
    ok.resize(t.pieces.size(), false);
    int64_t filled = 0;
    for (size_t i = 0; i < t.pieces.size(); ++i) {
      const ReplicaPiece& piece = t.pieces[i];
      ckpt::Box region;
      if (!ckpt::Intersect(piece.box, want, &region) && !want.shape.empty()) continue;
      const char* src = impl_->data.get() + piece.data_offset;
      if (!ok[i]) {
        const uint32_t crc = ckpt::Crc32c(src, piece.bytes);
        if (crc != piece.crc32c) {
          return absl::DataLossError(absl::StrCat(
              where, ": checksum mismatch in tensor ", t.name, " at offset ",
              ckpt::ShapeString(piece.box.offset), ": stored crc32c ", piece.crc32c,
              ", computed ", crc));
        }
        ok[i] = true;
      }
      ckpt::CopyBox(src, piece.box, dst, want, region, DTypeSize(t.dtype));
      filled += ckpt::Volume(region.shape);
    }
    if (filled != ckpt::Volume(want.shape)) {
      return absl::NotFoundError(absl::StrCat(
          where, " holds only part of the requested slice of tensor ", t.name, " (offset ",
          ckpt::ShapeString(want.offset), " shape ", ckpt::ShapeString(want.shape), ")"));
    }
    RETURN_IF_ERROR(uploads.Queue(request));
  }
  return uploads.Finish();
}

namespace ckpt {
namespace {

constexpr int kTagHeader = 0xC4A000;
constexpr int kTagIndex = 0xC4A001;
constexpr int kTagData = 0xC4A002;
constexpr size_t kWireChunk = size_t{256} << 20;

json ShapeJson(const Tensor::Shape& shape) {
  json a = json::array();
  for (int64_t d : shape) a.push_back(d);
  return a;
}

Tensor Bytes(const void* p, size_t n) {
  return Tensor(const_cast<void*>(p), DType::kU8, {static_cast<int64_t>(n)});
}

absl::Status WaitAll(std::vector<std::shared_ptr<Work>>& works, absl::string_view what) {
  absl::Status first;
  for (auto& w : works) {
    absl::Status s = w->Wait();
    if (!s.ok() && first.ok()) first = s;
  }
  works.clear();
  return Annotate(first, what);
}

}  // namespace

std::string ReplicaIndexJson(const ReplicaData& r) {
  json tensors = json::array();
  for (const ReplicaTensor& t : r.tensors) {
    json pieces = json::array();
    for (const ReplicaPiece& p : t.pieces) {
      pieces.push_back({{"offset", ShapeJson(p.box.offset)},
                        {"shape", ShapeJson(p.box.shape)},
                        {"data_offset", p.data_offset},
                        {"bytes", p.bytes},
                        {"crc32c", p.crc32c}});
    }
    tensors.push_back({{"name", t.name},
                       {"dtype", std::string(DTypeName(t.dtype))},
                       {"global_shape", ShapeJson(t.global_shape)},
                       {"pieces", pieces}});
  }
  json j = {{"owner_rank", r.owner_rank}, {"step", r.step},
            {"epoch", r.epoch},           {"metadata", absl::Base64Escape(r.metadata)},
            {"bytes", r.bytes},           {"tensors", tensors}};
  return j.dump();
}

namespace {

absl::Status ParseReplicaIndex(absl::string_view text, ReplicaData* r) {
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::DataLossError("the replica index is not JSON");
  try {
    r->owner_rank = j.at("owner_rank").get<int>();
    r->step = j.at("step").get<int64_t>();
    r->epoch = j.at("epoch").get<int64_t>();
    if (!absl::Base64Unescape(j.at("metadata").get<std::string>(), &r->metadata)) {
      return absl::DataLossError("the replica's metadata is not base64");
    }
    r->bytes = j.at("bytes").get<size_t>();
    for (const json& jt : j.at("tensors")) {
      ReplicaTensor t;
      t.name = jt.at("name").get<std::string>();
      auto dtype = ParseDType(jt.at("dtype").get<std::string>());
      if (!dtype.ok()) return absl::DataLossError(dtype.status().message());
      t.dtype = *dtype;
      for (const json& d : jt.at("global_shape")) t.global_shape.push_back(d.get<int64_t>());
      for (const json& jp : jt.at("pieces")) {
        ReplicaPiece p;
        for (const json& d : jp.at("offset")) p.box.offset.push_back(d.get<int64_t>());
        for (const json& d : jp.at("shape")) p.box.shape.push_back(d.get<int64_t>());
        p.data_offset = jp.at("data_offset").get<uint64_t>();
        p.bytes = jp.at("bytes").get<uint64_t>();
        p.crc32c = jp.at("crc32c").get<uint32_t>();
        if (p.data_offset + p.bytes > r->bytes ||
            p.bytes != static_cast<uint64_t>(Volume(p.box.shape)) * DTypeSize(t.dtype)) {
          return absl::DataLossError(absl::StrCat("the replica index's piece of tensor ", t.name,
                                                  " is out of range"));
        }
        t.pieces.push_back(std::move(p));
      }
      r->tensors.push_back(std::move(t));
    }
  } catch (const json::exception& ex) {
    return absl::DataLossError(absl::StrCat("the replica index is malformed: ", ex.what()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<ReplicaData>> ExchangeReplicas(
    Communicator& comm, const OutgoingReplica* outgoing, bool receive, int src, HostMemory reuse,
    size_t reuse_bytes, const OpOptions& options) {
  const std::string what =
      absl::StrCat(outgoing != nullptr ? absl::StrCat("sending a peer replica to rank ", outgoing->dest)
                                       : std::string(),
                   outgoing != nullptr && receive ? " and " : "",
                   receive ? absl::StrCat("receiving one from rank ", src) : std::string());
  std::vector<std::shared_ptr<Work>> works;
  // 1. Index sizes.
  const int64_t out_header =
      outgoing != nullptr ? static_cast<int64_t>(outgoing->index_json.size()) : 0;
  int64_t in_header = 0;
  if (outgoing != nullptr) {
    works.push_back(comm.Send(Tensor::Of(&out_header, 1), outgoing->dest, kTagHeader, options));
  }
  if (receive) works.push_back(comm.Recv(Tensor::Of(&in_header, 1), src, kTagHeader, options));
  RETURN_IF_ERROR(WaitAll(works, what));
  if (receive && (in_header < 2 || in_header > (int64_t{1} << 31))) {
    return absl::DataLossError(absl::StrCat(what, ": bad index size ", in_header));
  }
  // 2. Indexes.
  std::string index(static_cast<size_t>(in_header), '\0');
  if (outgoing != nullptr) {
    works.push_back(comm.Send(Bytes(outgoing->index_json.data(), outgoing->index_json.size()),
                              outgoing->dest, kTagIndex, options));
  }
  if (receive) works.push_back(comm.Recv(Bytes(index.data(), index.size()), src, kTagIndex, options));
  RETURN_IF_ERROR(WaitAll(works, what));
  std::unique_ptr<ReplicaData> replica;
  if (receive) {
    replica = std::make_unique<ReplicaData>();
    RETURN_IF_ERROR(Annotate(ParseReplicaIndex(index, replica.get()), what));
    if (reuse && reuse_bytes >= replica->bytes) {
      replica->data = std::move(reuse);
    } else {
      reuse.reset();
      replica->data = AllocateHostMemory(std::max<size_t>(replica->bytes, 1));
    }
  }
  // 3. Bytes.
  if (outgoing != nullptr) {
    for (size_t off = 0; off < outgoing->bytes; off += kWireChunk) {
      works.push_back(comm.Send(Bytes(outgoing->data + off, std::min(kWireChunk, outgoing->bytes - off)),
                                outgoing->dest, kTagData, options));
    }
  }
  if (receive) {
    for (size_t off = 0; off < replica->bytes; off += kWireChunk) {
      works.push_back(comm.Recv(Bytes(replica->data.get() + off,
                                      std::min(kWireChunk, replica->bytes - off)),
                                src, kTagData, options));
    }
  }
  RETURN_IF_ERROR(WaitAll(works, what));
  return replica;
}

}  // namespace ckpt

absl::Status SendPeerReplica(Communicator& comm, int dest, const PeerReplica& replica,
                             const OpOptions& options) {
  if (dest < 0 || dest >= comm.size() || dest == comm.rank()) {
    return absl::InvalidArgumentError(absl::StrCat("SendPeerReplica: bad destination rank ", dest,
                                                   " in ", comm.Describe()));
  }
  const auto* held = dynamic_cast<const HeldPeerReplica*>(&replica);
  if (held == nullptr) {
    return absl::InvalidArgumentError(
        "SendPeerReplica: the replica was not made by a CheckpointEngine or FetchPeerReplica");
  }
  const ReplicaData& r = held->impl();
  ckpt::OutgoingReplica out{dest, ckpt::ReplicaIndexJson(r), r.data.get(), r.bytes};
  return ckpt::ExchangeReplicas(comm, &out, /*receive=*/false, -1, nullptr, 0, options).status();
}

absl::StatusOr<std::shared_ptr<PeerReplica>> FetchPeerReplica(Communicator& comm, int holder,
                                                              const OpOptions& options) {
  if (holder < 0 || holder >= comm.size() || holder == comm.rank()) {
    return absl::InvalidArgumentError(absl::StrCat("FetchPeerReplica: bad holder rank ", holder,
                                                   " in ", comm.Describe()));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<ReplicaData> impl,
                   ckpt::ExchangeReplicas(comm, nullptr, /*receive=*/true, holder, nullptr, 0,
                                          options));
  return std::make_shared<HeldPeerReplica>(std::move(impl));
}

int ReplicaHolderOf(int rank, absl::Span<const std::string> host_of_rank) {
  std::vector<uint64_t> ids;
  for (const std::string& h : host_of_rank) ids.push_back(ckpt::HostId(h));
  const int n = static_cast<int>(ids.size());
  const int s = ckpt::BuddyShift(ids);
  if (s == 0 || rank < 0 || rank >= n) return -1;
  return (rank + s) % n;
}

}  // namespace trident
