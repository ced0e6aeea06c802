#include "checkpoint/format.h"

#include <algorithm>
#include <climits>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/strip.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/check.h"
#include "isa-l/crc.h"
#include "nlohmann/json.hpp"

namespace trident::ckpt {

using json = nlohmann::json;

uint32_t Crc32c(const void* data, size_t n, uint32_t crc) {
  // ISA-L's crc32_iscsi neither inverts its seed nor its result; the standard CRC32C does both.
  auto* p = static_cast<unsigned char*>(const_cast<void*>(data));
  uint32_t state = ~crc;
  constexpr size_t kMaxPiece = size_t{1} << 30;  // its length is an int
  while (n > 0) {
    const size_t piece = std::min(n, kMaxPiece);
    state = crc32_iscsi(p, static_cast<int>(piece), state);
    p += piece;
    n -= piece;
  }
  return ~state;
}

std::string StepDirName(int64_t step) { return absl::StrFormat("step-%09d", step); }

std::string TmpDirName(int64_t step, absl::string_view nonce) {
  return absl::StrCat(StepDirName(step), ".tmp-", nonce);
}

std::string OldDirName(int64_t step, absl::string_view nonce) {
  return absl::StrCat(StepDirName(step), ".old-", nonce);
}

std::optional<int64_t> ParseStepDirName(absl::string_view name) {
  if (!absl::ConsumePrefix(&name, "step-") || name.empty()) return std::nullopt;
  for (char c : name) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return std::nullopt;
  }
  int64_t step = 0;
  if (!absl::SimpleAtoi(name, &step)) return std::nullopt;
  return step;
}

bool IsStaleDirName(absl::string_view name) {
  return absl::StartsWith(name, "step-") &&
         (absl::StrContains(name, ".tmp-") || absl::StrContains(name, ".old-"));
}

std::string ShardFileName(int rank) { return absl::StrFormat("shard-r%05d.safetensors", rank); }

RowRange ReplicaRows(const Tensor::Shape& shape, int index, int count) {
  if (shape.empty() || count <= 1 || shape[0] == 0) {
    // A scalar, an unreplicated or an empty tensor: replica 0 writes all of it.
    const int64_t rows = shape.empty() ? 1 : shape[0];
    return index == 0 ? RowRange{0, rows} : RowRange{0, 0};
  }
  const int64_t rows = shape[0];
  return RowRange{rows * index / count, rows * (index + 1) / count};
}

// --- Boxes ---------------------------------------------------------------------------------

int64_t Volume(const Tensor::Shape& shape) {
  int64_t v = 1;
  for (int64_t d : shape) v *= d;
  return v;
}

bool Intersect(const Box& a, const Box& b, Box* out) {
  TRIDENT_CHECK(a.shape.size() == b.shape.size() && a.offset.size() == a.shape.size() &&
                b.offset.size() == b.shape.size())
      << "boxes of different rank";
  out->offset.resize(a.shape.size());
  out->shape.resize(a.shape.size());
  bool empty = false;
  for (size_t d = 0; d < a.shape.size(); ++d) {
    const int64_t lo = std::max(a.offset[d], b.offset[d]);
    const int64_t hi = std::min(a.offset[d] + a.shape[d], b.offset[d] + b.shape[d]);
    out->offset[d] = lo;
    out->shape[d] = std::max<int64_t>(0, hi - lo);
    if (hi <= lo) empty = true;
  }
  return !empty;
}

bool Contains(const Box& outer, const Box& inner) {
  if (outer.shape.size() != inner.shape.size()) return false;
  for (size_t d = 0; d < outer.shape.size(); ++d) {
    if (inner.offset[d] < outer.offset[d] ||
        inner.offset[d] + inner.shape[d] > outer.offset[d] + outer.shape[d]) {
      return false;
    }
  }
  return true;
}

std::string ShapeString(const Tensor::Shape& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

void CopyBox(const char* src, const Box& src_box, char* dst, const Box& dst_box,
             const Box& region, size_t elem) {
  const size_t nd = region.shape.size();
  if (nd == 0) {
    std::memcpy(dst, src, elem);
    return;
  }
  if (Volume(region.shape) == 0) return;
  std::vector<int64_t> src_stride(nd, 1), dst_stride(nd, 1);
  for (size_t d = nd - 1; d > 0; --d) {
    src_stride[d - 1] = src_stride[d] * src_box.shape[d];
    dst_stride[d - 1] = dst_stride[d] * dst_box.shape[d];
  }
  // Merge trailing dimensions that both boxes hold whole into one contiguous run.
  size_t inner = nd - 1;
  int64_t run = region.shape[inner];
  while (inner > 0 && region.shape[inner] == src_box.shape[inner] &&
         region.shape[inner] == dst_box.shape[inner]) {
    --inner;
    run *= region.shape[inner];
  }
  int64_t src_base = 0, dst_base = 0;
  for (size_t d = inner; d < nd; ++d) {
    src_base += (region.offset[d] - src_box.offset[d]) * src_stride[d];
    dst_base += (region.offset[d] - dst_box.offset[d]) * dst_stride[d];
  }
  std::vector<int64_t> idx(inner, 0);  // position in the outer dimensions of the region
  while (true) {
    int64_t s = src_base, t = dst_base;
    for (size_t d = 0; d < inner; ++d) {
      s += (region.offset[d] + idx[d] - src_box.offset[d]) * src_stride[d];
      t += (region.offset[d] + idx[d] - dst_box.offset[d]) * dst_stride[d];
    }
    std::memcpy(dst + t * elem, src + s * elem, static_cast<size_t>(run) * elem);
    size_t d = inner;
    while (d > 0) {
      --d;
      if (++idx[d] < region.shape[d]) break;
      idx[d] = 0;
      if (d == 0) return;
    }
    if (inner == 0) return;
  }
}

// --- safetensors ---------------------------------------------------------------------------

absl::string_view SafetensorsDType(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "F32";
    case DType::kF64: return "F64";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
    case DType::kI8: return "I8";
    case DType::kU8: return "U8";
    case DType::kI32: return "I32";
    case DType::kI64: return "I64";
  }
  return "?";
}

absl::StatusOr<DType> ParseSafetensorsDType(absl::string_view name) {
  for (DType d : kAllDTypes) {
    if (SafetensorsDType(d) == name) return d;
  }
  return absl::DataLossError(absl::StrCat("unknown safetensors dtype '", name, "'"));
}

namespace {

json ShapeJson(const Tensor::Shape& shape) {
  json a = json::array();
  for (int64_t d : shape) a.push_back(d);
  return a;
}

}  // namespace

std::string BuildSafetensorsPrefix(const std::vector<SafetensorsEntry>& entries,
                                   const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  json meta = json::object();
  for (const auto& [k, v] : metadata) meta[k] = v;
  header["__metadata__"] = meta;
  for (const SafetensorsEntry& e : entries) {
    header[e.name] = {{"dtype", std::string(SafetensorsDType(e.dtype))},
                      {"shape", ShapeJson(e.shape)},
                      {"data_offsets", {e.begin, e.end}}};
  }
  std::string text = header.dump();
  const size_t total = (8 + text.size() + kDataAlignment - 1) / kDataAlignment * kDataAlignment;
  text.resize(total - 8, ' ');  // the format allows trailing spaces in the header
  std::string out(8, '\0');
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  out += text;
  return out;
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::string_view bytes,
                                                         absl::string_view where) {
  if (bytes.size() < 8) {
    return absl::DataLossError(absl::StrCat(where, ": shorter than a safetensors header"));
  }
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  if (n > bytes.size() - 8) {
    return absl::DataLossError(absl::StrCat(where, ": safetensors header of ", n,
                                            " bytes runs past the ", bytes.size(),
                                            " bytes read"));
  }
  SafetensorsHeader out;
  out.data_start = 8 + n;
  json header = json::parse(bytes.substr(8, n).begin(), bytes.substr(8, n).end(), nullptr,
                            /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) {
    return absl::DataLossError(absl::StrCat(where, ": safetensors header is not a JSON object"));
  }
  try {
    for (auto it = header.begin(); it != header.end(); ++it) {
      if (it.key() == "__metadata__") {
        for (auto m = it.value().begin(); m != it.value().end(); ++m) {
          out.metadata[m.key()] = m.value().get<std::string>();
        }
        continue;
      }
      SafetensorsEntry e;
      e.name = it.key();
      auto dtype = ParseSafetensorsDType(it.value().at("dtype").get<std::string>());
      if (!dtype.ok()) return absl::DataLossError(absl::StrCat(where, ": ", dtype.status().message()));
      e.dtype = *dtype;
      for (const json& d : it.value().at("shape")) e.shape.push_back(d.get<int64_t>());
      const json& off = it.value().at("data_offsets");
      e.begin = off.at(0).get<uint64_t>();
      e.end = off.at(1).get<uint64_t>();
      out.entries.push_back(std::move(e));
    }
  } catch (const json::exception& ex) {
    return absl::DataLossError(absl::StrCat(where, ": bad safetensors header: ", ex.what()));
  }
  return out;
}

// --- manifest ------------------------------------------------------------------------------

namespace {

json ShardJson(const ShardInfo& s) {
  return {{"file", s.file},
          {"rank", s.rank},
          {"byte_offset", s.byte_offset},
          {"byte_length", s.byte_length},
          {"offset", ShapeJson(s.offset)},
          {"shape", ShapeJson(s.shape)},
          {"crc32c", s.crc32c},
          {"replica", s.replica_count}};
}

ShardInfo ShardFrom(const json& j) {
  ShardInfo s;
  s.file = j.at("file").get<std::string>();
  s.rank = j.at("rank").get<int>();
  s.byte_offset = j.at("byte_offset").get<uint64_t>();
  s.byte_length = j.at("byte_length").get<uint64_t>();
  for (const json& d : j.at("offset")) s.offset.push_back(d.get<int64_t>());
  for (const json& d : j.at("shape")) s.shape.push_back(d.get<int64_t>());
  s.crc32c = j.at("crc32c").get<uint32_t>();
  s.replica_count = j.at("replica").get<int>();
  return s;
}

json TensorsJson(const std::map<std::string, TensorInfo>& tensors) {
  json out = json::object();
  for (const auto& [name, t] : tensors) {
    json shards = json::array();
    for (const ShardInfo& s : t.shards) shards.push_back(ShardJson(s));
    out[name] = {{"dtype", std::string(DTypeName(t.dtype))},
                 {"global_shape", ShapeJson(t.global_shape)},
                 {"shards", shards}};
  }
  return out;
}

absl::StatusOr<std::map<std::string, TensorInfo>> TensorsFrom(const json& j) {
  std::map<std::string, TensorInfo> out;
  for (auto it = j.begin(); it != j.end(); ++it) {
    TensorInfo t;
    auto dtype = ParseDType(it.value().at("dtype").get<std::string>());
    if (!dtype.ok()) {
      return absl::DataLossError(absl::StrCat("tensor ", it.key(), ": ", dtype.status().message()));
    }
    t.dtype = *dtype;
    for (const json& d : it.value().at("global_shape")) t.global_shape.push_back(d.get<int64_t>());
    for (const json& s : it.value().at("shards")) t.shards.push_back(ShardFrom(s));
    out[it.key()] = std::move(t);
  }
  return out;
}

}  // namespace

std::string ManifestToJson(const CheckpointManifest& m) {
  json files = json::array();
  for (const FileInfo& f : m.files) {
    files.push_back({{"name", f.name}, {"rank", f.rank}, {"bytes", f.bytes}});
  }
  json ranks = json::array();
  for (size_t r = 0; r < m.metadata.size(); ++r) {
    ranks.push_back({{"rank", r}, {"metadata", absl::Base64Escape(m.metadata[r])}});
  }
  json j = {{"format", kFormatName},
            {"version", m.version},
            {"step", m.step},
            {"epoch", m.epoch},
            {"world_size", m.world_size},
            {"layout", m.layout},
            {"created_unix_ms", m.created_unix_ms},
            {"files", files},
            {"ranks", ranks},
            {"tensors", TensorsJson(m.tensors)}};
  return j.dump(1) + "\n";
}

absl::StatusOr<CheckpointManifest> ParseManifest(absl::string_view text, absl::string_view where) {
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::DataLossError(absl::StrCat(where, " is not valid JSON"));
  }
  CheckpointManifest m;
  try {
    if (!j.contains("format") || j.at("format").get<std::string>() != kFormatName) {
      return absl::DataLossError(absl::StrCat(where, " is not a ", kFormatName, " manifest"));
    }
    m.version = j.at("version").get<int>();
    if (m.version != kFormatVersion) {
      return absl::FailedPreconditionError(
          absl::StrCat(where, " has format version ", m.version, "; this build reads version ",
                       kFormatVersion));
    }
    m.step = j.at("step").get<int64_t>();
    m.epoch = j.at("epoch").get<int64_t>();
    m.world_size = j.at("world_size").get<int>();
    m.layout = j.at("layout").get<std::string>();
    m.created_unix_ms = j.at("created_unix_ms").get<int64_t>();
    for (const json& f : j.at("files")) {
      m.files.push_back({f.at("name").get<std::string>(), f.at("rank").get<int>(),
                         f.at("bytes").get<uint64_t>()});
    }
    m.metadata.resize(std::max(0, m.world_size));
    for (const json& r : j.at("ranks")) {
      const int rank = r.at("rank").get<int>();
      if (rank < 0 || rank >= m.world_size) {
        return absl::DataLossError(absl::StrCat(where, ": rank ", rank, " out of range"));
      }
      if (!absl::Base64Unescape(r.at("metadata").get<std::string>(), &m.metadata[rank])) {
        return absl::DataLossError(absl::StrCat(where, ": metadata of rank ", rank,
                                                " is not base64"));
      }
    }
    auto tensors = TensorsFrom(j.at("tensors"));
    if (!tensors.ok()) {
      return absl::DataLossError(absl::StrCat(where, ": ", tensors.status().message()));
    }
    m.tensors = std::move(tensors).value();
  } catch (const json::exception& ex) {
    return absl::DataLossError(absl::StrCat(where, " is malformed: ", ex.what()));
  }
  return m;
}

absl::Status CheckCoverage(const CheckpointManifest& manifest) {
  for (const auto& [name, t] : manifest.tensors) {
    const Box global{Tensor::Shape(t.global_shape.size(), 0), t.global_shape};
    int64_t covered = 0;
    for (size_t i = 0; i < t.shards.size(); ++i) {
      const ShardInfo& s = t.shards[i];
      const Box box{s.offset, s.shape};
      if (s.offset.size() != t.global_shape.size() || s.shape.size() != t.global_shape.size() ||
          !Contains(global, box)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor ", name, ": rank ", s.rank, "'s piece at offset ", ShapeString(s.offset),
            " of shape ", ShapeString(s.shape), " is outside the global shape ",
            ShapeString(t.global_shape)));
      }
      if (s.byte_length != static_cast<uint64_t>(Volume(s.shape)) * DTypeSize(t.dtype)) {
        return absl::InvalidArgumentError(absl::StrCat("tensor ", name, ": rank ", s.rank,
                                                       "'s piece has ", s.byte_length,
                                                       " bytes for shape ", ShapeString(s.shape)));
      }
      covered += Volume(s.shape);
      for (size_t k = 0; k < i; ++k) {
        Box overlap;
        if (Volume(s.shape) > 0 && Volume(t.shards[k].shape) > 0 &&
            Intersect(box, Box{t.shards[k].offset, t.shards[k].shape}, &overlap)) {
          return absl::InvalidArgumentError(absl::StrCat(
              "tensor ", name, ": the pieces of rank ", t.shards[k].rank, " and rank ", s.rank,
              " overlap at offset ", ShapeString(overlap.offset), " shape ",
              ShapeString(overlap.shape),
              " (a piece held by several ranks must be declared with replica_count)"));
        }
      }
    }
    if (covered != Volume(t.global_shape)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", name, ": the ranks' pieces cover ", covered, " of the ",
          Volume(t.global_shape), " elements of global shape ", ShapeString(t.global_shape)));
    }
  }
  return absl::OkStatus();
}

// --- rank reports --------------------------------------------------------------------------

std::string RankReportToJson(const RankReport& r) {
  json j = {{"rank", r.rank},
            {"step", r.step},
            {"seq", r.seq},
            {"code", static_cast<int>(r.status.code())},
            {"message", std::string(r.status.message())},
            {"file", r.file},
            {"file_bytes", r.file_bytes},
            {"metadata", absl::Base64Escape(r.metadata)},
            {"sends_replica", r.sends_replica},
            {"tensors", TensorsJson(r.tensors)}};
  return j.dump();
}

absl::StatusOr<RankReport> ParseRankReport(absl::string_view text) {
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InternalError("a rank's commit report is not JSON");
  RankReport r;
  try {
    r.rank = j.at("rank").get<int>();
    r.step = j.at("step").get<int64_t>();
    r.seq = j.at("seq").get<int64_t>();
    r.status = absl::Status(static_cast<absl::StatusCode>(j.at("code").get<int>()),
                            j.at("message").get<std::string>());
    r.file = j.at("file").get<std::string>();
    r.file_bytes = j.at("file_bytes").get<uint64_t>();
    if (!absl::Base64Unescape(j.at("metadata").get<std::string>(), &r.metadata)) {
      return absl::InternalError("a rank's commit report has bad metadata");
    }
    r.sends_replica = j.at("sends_replica").get<bool>();
    auto tensors = TensorsFrom(j.at("tensors"));
    if (!tensors.ok()) return tensors.status();
    r.tensors = std::move(tensors).value();
  } catch (const json::exception& ex) {
    return absl::InternalError(absl::StrCat("a rank's commit report is malformed: ", ex.what()));
  }
  return r;
}

}  // namespace trident::ckpt
