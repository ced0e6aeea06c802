#include "checkpoint/format.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <limits>
#include <set>

#include "absl/algorithm/container.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/strip.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/check.h"
#include "common/status_macros.h"
#include "isa-l/crc.h"
#include "nlohmann/json.hpp"

namespace trident::ckpt {

using json = nlohmann::json;

namespace {

// A field of a file read from disk that is out of range or of the wrong type. Thrown only
// inside this file, by the readers below, and caught by the parser that called them.
struct FieldError {
  std::string message;
};

[[noreturn]] void BadField(absl::string_view field, absl::string_view why) {
  throw FieldError{absl::StrCat("field ", field, " ", why)};
}

// An integer field that fits T (no silent narrowing or wrap-around of what a file says).
template <typename T>
T IntField(const json& j, absl::string_view field) {
  if (!j.is_number_integer()) BadField(field, "is not an integer");
  __int128 v = j.is_number_unsigned() ? static_cast<__int128>(j.get<uint64_t>())
                                      : static_cast<__int128>(j.get<int64_t>());
  if (v < static_cast<__int128>(std::numeric_limits<T>::min()) ||
      v > static_cast<__int128>(std::numeric_limits<T>::max())) {
    BadField(field, absl::StrCat("is out of range: ", j.dump()));
  }
  return static_cast<T>(v);
}

template <typename T>
T Member(const json& j, const char* field) {
  if (!j.is_object() || !j.contains(field)) BadField(field, "is missing");
  return IntField<T>(j.at(field), field);
}

std::string StringMember(const json& j, const char* field) {
  if (!j.is_object() || !j.contains(field)) BadField(field, "is missing");
  if (!j.at(field).is_string()) BadField(field, "is not a string");
  return j.at(field).get<std::string>();
}

// A shape: an array of at most kMaxDims non-negative dimensions.
Tensor::Shape ShapeMember(const json& j, const char* field) {
  if (!j.is_object() || !j.contains(field)) BadField(field, "is missing");
  const json& a = j.at(field);
  if (!a.is_array()) BadField(field, "is not an array");
  if (a.size() > kMaxDims) BadField(field, absl::StrCat("has ", a.size(), " dimensions"));
  Tensor::Shape out;
  for (const json& d : a) {
    out.push_back(IntField<int64_t>(d, field));
    if (out.back() < 0) BadField(field, absl::StrCat("has a negative dimension ", out.back()));
  }
  return out;
}

}  // namespace

std::optional<uint64_t> CheckedBytes(const Tensor::Shape& shape, DType dtype) {
  uint64_t v = DTypeSize(dtype);
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(v, static_cast<uint64_t>(d), &v)) return std::nullopt;
  }
  if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
  return v;
}

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

uint64_t SafetensorsHeaderSize(absl::string_view prefix) {
  uint64_t n = 0;
  for (size_t i = 0; i < 8 && i < prefix.size(); ++i) {
    n |= static_cast<uint64_t>(static_cast<unsigned char>(prefix[i])) << (8 * i);
  }
  return n;
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::string_view bytes,
                                                         absl::string_view where) {
  if (bytes.size() < 8) {
    return absl::DataLossError(absl::StrCat(where, ": shorter than a safetensors header"));
  }
  const uint64_t n = SafetensorsHeaderSize(bytes);
  if (n > kMaxSafetensorsHeaderBytes) {
    return absl::DataLossError(absl::StrCat(where, ": safetensors header size ", n,
                                            " is over the limit of ",
                                            kMaxSafetensorsHeaderBytes, " bytes"));
  }
  if (n > bytes.size() - 8) {
    return absl::DataLossError(absl::StrCat(where, ": safetensors header of ", n,
                                            " bytes runs past the ", bytes.size(),
                                            " bytes read"));
  }
  SafetensorsHeader out;
  out.data_start = 8 + n;
  const absl::string_view text = bytes.substr(8, n);
  json header = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) {
    return absl::DataLossError(absl::StrCat(where, ": safetensors header is not a JSON object"));
  }
  std::string entry = "__metadata__";
  try {
    for (auto it = header.begin(); it != header.end(); ++it) {
      entry = it.key();
      if (it.key() == "__metadata__") {
        if (!it.value().is_object()) BadField("__metadata__", "is not an object");
        for (auto m = it.value().begin(); m != it.value().end(); ++m) {
          if (!m.value().is_string()) BadField(m.key(), "of __metadata__ is not a string");
          out.metadata[m.key()] = m.value().get<std::string>();
        }
        continue;
      }
      SafetensorsEntry e;
      e.name = it.key();
      auto dtype = ParseSafetensorsDType(StringMember(it.value(), "dtype"));
      if (!dtype.ok()) BadField("dtype", dtype.status().message());
      e.dtype = *dtype;
      e.shape = ShapeMember(it.value(), "shape");
      if (!it.value().contains("data_offsets")) BadField("data_offsets", "is missing");
      const json& off = it.value().at("data_offsets");
      if (!off.is_array() || off.size() != 2) BadField("data_offsets", "is not [begin, end]");
      e.begin = IntField<uint64_t>(off.at(0), "data_offsets");
      e.end = IntField<uint64_t>(off.at(1), "data_offsets");
      if (e.end < e.begin) {
        BadField("data_offsets", absl::StrCat("[", e.begin, ", ", e.end, "] ends before it begins"));
      }
      const std::optional<uint64_t> bytes_of_shape = CheckedBytes(e.shape, e.dtype);
      if (!bytes_of_shape || *bytes_of_shape != e.end - e.begin) {
        BadField("data_offsets", absl::StrCat("[", e.begin, ", ", e.end, "] hold ", e.end - e.begin,
                                              " bytes; shape ", ShapeString(e.shape), " of ",
                                              SafetensorsDType(e.dtype), " needs ",
                                              bytes_of_shape ? absl::StrCat(*bytes_of_shape)
                                                             : std::string("more than 2^63")));
      }
      out.entries.push_back(std::move(e));
    }
  } catch (const FieldError& ex) {
    return absl::DataLossError(
        absl::StrCat(where, ": safetensors header, tensor ", entry, ": ", ex.message));
  } catch (const json::exception& ex) {
    return absl::DataLossError(absl::StrCat(where, ": bad safetensors header: ", ex.what()));
  }
  return out;
}

// --- PyTorch distributed checkpoint and Hugging Face interop -----------------------------

std::map<std::string, std::string> ShardMetadata(
    int64_t step, int rank, const std::map<std::string, Tensor::Shape>& offsets) {
  json info = json::object();
  for (const auto& [name, offset] : offsets) info[name] = {{"saved_offsets", ShapeJson(offset)}};
  return {{kShardFormatKey, kShardFormatValue},
          {kTridentFormatKey, kFormatName},
          {kDcpShardingInfoKey, info.dump()},
          {kDcpVersionKey, kDcpVersion},
          {"step", absl::StrCat(step)},
          {"rank", absl::StrCat(rank)}};
}

absl::StatusOr<std::optional<std::map<std::string, Tensor::Shape>>> ParseDcpShardingInfo(
    const SafetensorsHeader& header, absl::string_view where) {
  auto it = header.metadata.find(kDcpShardingInfoKey);
  if (it == header.metadata.end()) return std::nullopt;
  const std::string& text = it->second;
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::DataLossError(absl::StrCat(where, ": __metadata__ ", kDcpShardingInfoKey,
                                            " is not a JSON object"));
  }
  std::map<std::string, Tensor::Shape> out;
  std::string entry;
  try {
    for (const SafetensorsEntry& e : header.entries) {
      entry = e.name;
      if (!j.contains(e.name)) BadField("saved_offsets", "is missing");
      Tensor::Shape offset = ShapeMember(j.at(e.name), "saved_offsets");
      if (offset.size() != e.shape.size()) {
        BadField("saved_offsets", absl::StrCat(ShapeString(offset), " does not have the ",
                                               e.shape.size(), " dimensions of the shape ",
                                               ShapeString(e.shape)));
      }
      out[e.name] = std::move(offset);
    }
  } catch (const FieldError& ex) {
    return absl::DataLossError(absl::StrCat(where, ": __metadata__ ", kDcpShardingInfoKey,
                                            ", tensor ", entry, ": ", ex.message));
  } catch (const json::exception& ex) {
    return absl::DataLossError(
        absl::StrCat(where, ": bad __metadata__ ", kDcpShardingInfoKey, ": ", ex.what()));
  }
  return out;
}

std::string WeightMapIndexJson(const std::map<std::string, std::string>& weight_map,
                               uint64_t total_size,
                               const std::map<std::string, std::string>& extra) {
  json meta = json::object();
  for (const auto& [k, v] : extra) meta[k] = v;
  meta["total_size"] = total_size;
  json map = json::object();
  for (const auto& [name, file] : weight_map) map[name] = file;
  json j = {{"metadata", meta}, {"weight_map", map}};
  return j.dump(2) + "\n";
}

std::string CheckpointIndexJson(const CheckpointManifest& m) {
  std::map<std::string, std::string> weight_map;
  uint64_t total = 0;
  bool sharded = false;
  for (const auto& [name, t] : m.tensors) {
    total += CheckedBytes(t.global_shape, t.dtype).value_or(0);
    std::set<std::string> files;
    const ShardInfo* first = nullptr;
    for (const ShardInfo& s : t.shards) {
      files.insert(s.file);
      if (first == nullptr || s.offset < first->offset) first = &s;
    }
    if (files.size() > 1) sharded = true;
    if (first != nullptr) weight_map[name] = first->file;
  }
  return WeightMapIndexJson(weight_map, total,
                            {{kTridentFormatKey, kFormatName},
                             {"step", absl::StrCat(m.step)},
                             {"sharded", sharded ? "true" : "false"}});
}

absl::Status ValidateCheckpointIndex(absl::string_view text, const CheckpointManifest& m,
                                     absl::string_view where) {
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || !j.contains("weight_map") ||
      !j.at("weight_map").is_object()) {
    return absl::DataLossError(
        absl::StrCat(where, " is not a JSON object with a weight_map object"));
  }
  const json& map = j.at("weight_map");
  for (const auto& [name, t] : m.tensors) {
    if (!map.contains(name) || !map.at(name).is_string()) {
      return absl::DataLossError(
          absl::StrCat(where, ": weight_map has no file for tensor ", name));
    }
    const std::string file = map.at(name).get<std::string>();
    bool holds = false;
    for (const ShardInfo& s : t.shards) holds = holds || s.file == file;
    if (!holds) {
      return absl::DataLossError(absl::StrCat(where, ": weight_map maps tensor ", name, " to ",
                                              file, ", which holds no piece of it"));
    }
  }
  return absl::OkStatus();
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
  s.file = StringMember(j, "file");
  s.rank = Member<int>(j, "rank");
  s.byte_offset = Member<uint64_t>(j, "byte_offset");
  s.byte_length = Member<uint64_t>(j, "byte_length");
  s.offset = ShapeMember(j, "offset");
  s.shape = ShapeMember(j, "shape");
  s.crc32c = Member<uint32_t>(j, "crc32c");
  s.replica_count = Member<int>(j, "replica");
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

// Throws FieldError (naming the tensor and shard) or json::exception.
std::map<std::string, TensorInfo> TensorsFrom(const json& j) {
  if (!j.is_object()) BadField("tensors", "is not an object");
  std::map<std::string, TensorInfo> out;
  for (auto it = j.begin(); it != j.end(); ++it) {
    try {
      TensorInfo t;
      auto dtype = ParseDType(StringMember(it.value(), "dtype"));
      if (!dtype.ok()) BadField("dtype", dtype.status().message());
      t.dtype = *dtype;
      t.global_shape = ShapeMember(it.value(), "global_shape");
      if (!it.value().contains("shards") || !it.value().at("shards").is_array()) {
        BadField("shards", "is not an array");
      }
      for (const json& s : it.value().at("shards")) {
        try {
          t.shards.push_back(ShardFrom(s));
        } catch (const FieldError& e) {
          throw FieldError{absl::StrCat("shard ", t.shards.size(), ": ", e.message)};
        }
      }
      out[it.key()] = std::move(t);
    } catch (const FieldError& e) {
      throw FieldError{absl::StrCat("tensor ", it.key(), ": ", e.message)};
    }
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
    json entry = {{"rank", r}, {"metadata", absl::Base64Escape(m.metadata[r])}};
    if (r < m.replica_sets.size() && r < m.replica_digests.size() && m.replica_sets[r] >= 0) {
      entry["replica_set"] = m.replica_sets[r];
      entry["digest"] = DigestHex(m.replica_digests[r]);  // a hex string: JSON readers lose
                                                          // 64-bit integers
    }
    ranks.push_back(std::move(entry));
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
    if (!j.contains("format") || !j.at("format").is_string() ||
        j.at("format").get<std::string>() != kFormatName) {
      return absl::DataLossError(absl::StrCat(where, " is not a ", kFormatName, " manifest"));
    }
    m.version = Member<int>(j, "version");
    if (m.version != kFormatVersion) {
      return absl::FailedPreconditionError(
          absl::StrCat(where, " has format version ", m.version, "; this build reads version ",
                       kFormatVersion));
    }
    m.step = Member<int64_t>(j, "step");
    m.epoch = Member<int64_t>(j, "epoch");
    m.world_size = Member<int>(j, "world_size");
    if (m.world_size < 1 || m.world_size > kMaxWorldSize) {
      BadField("world_size", absl::StrCat(m.world_size, " is not in [1, ", kMaxWorldSize, "]"));
    }
    m.layout = StringMember(j, "layout");
    m.created_unix_ms = Member<int64_t>(j, "created_unix_ms");
    if (!j.contains("files") || !j.at("files").is_array()) BadField("files", "is not an array");
    for (const json& f : j.at("files")) {
      m.files.push_back({StringMember(f, "name"), Member<int>(f, "rank"),
                         Member<uint64_t>(f, "bytes")});
    }
    m.metadata.resize(m.world_size);
    if (!j.contains("ranks") || !j.at("ranks").is_array()) BadField("ranks", "is not an array");
    for (const json& r : j.at("ranks")) {
      const int rank = Member<int>(r, "rank");
      if (rank < 0 || rank >= m.world_size) {
        return absl::DataLossError(absl::StrCat(where, ": rank ", rank, " out of range"));
      }
      if (!absl::Base64Unescape(StringMember(r, "metadata"), &m.metadata[rank])) {
        return absl::DataLossError(absl::StrCat(where, ": metadata of rank ", rank,
                                                " is not base64"));
      }
      if (r.contains("replica_set")) {  // optional: manifests written without digests
        if (m.replica_sets.empty()) {
          m.replica_sets.assign(m.world_size, -1);
          m.replica_digests.assign(m.world_size, 0);
        }
        m.replica_sets[rank] = Member<int64_t>(r, "replica_set");
        const std::string hex = StringMember(r, "digest");
        uint64_t d = 0;
        if (hex.size() != 16 || !absl::c_all_of(hex, absl::ascii_isxdigit) ||
            !absl::SimpleHexAtoi(hex, &d)) {
          return absl::DataLossError(absl::StrCat(where, ": digest of rank ", rank, " ('",
                                                  absl::CHexEscape(hex),
                                                  "') is not 16 hex digits"));
        }
        m.replica_digests[rank] = d;
      }
    }
    if (!j.contains("tensors")) BadField("tensors", "is missing");
    m.tensors = TensorsFrom(j.at("tensors"));
  } catch (const FieldError& ex) {
    return absl::DataLossError(absl::StrCat(where, ": ", ex.message));
  } catch (const json::exception& ex) {
    return absl::DataLossError(absl::StrCat(where, " is malformed: ", ex.what()));
  }
  return m;
}

absl::Status CheckFileName(absl::string_view name) {
  if (name.empty() || name == "." || name == ".." || name.size() > 255) {
    return absl::InvalidArgumentError(absl::StrCat("'", absl::CHexEscape(name),
                                                   "' is not a file name"));
  }
  for (char c : name) {
    if (c == '/' || c == '\0') {
      return absl::InvalidArgumentError(absl::StrCat(
          "'", absl::CHexEscape(name), "' is not a plain file name in the step directory"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateManifest(const CheckpointManifest& m, absl::string_view where) {
  auto bad = [&](auto&&... parts) {
    return absl::DataLossError(absl::StrCat(where, ": ", parts...));
  };
  if (m.step < 0) return bad("field step is negative (", m.step, ")");
  if (m.world_size < 1 || m.world_size > kMaxWorldSize) {
    return bad("field world_size ", m.world_size, " is not in [1, ", kMaxWorldSize, "]");
  }
  if (m.metadata.size() != static_cast<size_t>(m.world_size)) {
    return bad("metadata for ", m.metadata.size(), " ranks; world_size is ", m.world_size);
  }
  if (!m.replica_sets.empty() &&
      (m.replica_sets.size() != static_cast<size_t>(m.world_size) ||
       m.replica_digests.size() != m.replica_sets.size())) {
    return bad("replica digests for ", m.replica_sets.size(), " ranks; world_size is ",
               m.world_size);
  }
  std::map<std::string, const FileInfo*> files;
  for (const FileInfo& f : m.files) {
    absl::Status name = CheckFileName(f.name);
    if (!name.ok()) return bad("files: ", name.message());
    if (f.rank < 0 || f.rank >= m.world_size) {
      return bad("file ", f.name, ": field rank ", f.rank, " is not a rank of the ",
                 m.world_size, " that saved");
    }
    if (!files.emplace(f.name, &f).second) return bad("file ", f.name, " is listed twice");
  }
  for (const auto& [name, t] : m.tensors) {
    if (name.empty()) return bad("a tensor has an empty name");
    if (!CheckedBytes(t.global_shape, t.dtype)) {
      return bad("tensor ", name, ": field global_shape ", ShapeString(t.global_shape),
                 " is too large");
    }
    for (size_t i = 0; i < t.shards.size(); ++i) {
      const ShardInfo& s = t.shards[i];
      const std::string shard = absl::StrCat("tensor ", name, ", shard ", i, " (rank ", s.rank, ")");
      auto file = files.find(s.file);
      if (file == files.end()) {
        absl::Status fname = CheckFileName(s.file);
        if (!fname.ok()) return bad(shard, ": field file: ", fname.message());
        return bad(shard, ": field file names ", s.file, ", which the manifest does not list");
      }
      if (s.rank < 0 || s.rank >= m.world_size) {
        return bad(shard, ": field rank is not a rank of the ", m.world_size, " that saved");
      }
      if (s.replica_count < 1 || s.replica_count > m.world_size) {
        return bad(shard, ": field replica ", s.replica_count, " is not in [1, ", m.world_size,
                   "]");
      }
      if (s.offset.size() != t.global_shape.size() || s.shape.size() != t.global_shape.size()) {
        return bad(shard, ": fields offset ", ShapeString(s.offset), " and shape ",
                   ShapeString(s.shape), " do not have the ", t.global_shape.size(),
                   " dimensions of global_shape");
      }
      for (size_t d = 0; d < s.shape.size(); ++d) {
        // Both are non-negative (the parser checks), so the subtraction cannot overflow.
        if (s.offset[d] < 0 || s.shape[d] < 0 || s.offset[d] > t.global_shape[d] ||
            s.shape[d] > t.global_shape[d] - s.offset[d]) {
          return bad(shard, ": the piece at offset ", ShapeString(s.offset), " of shape ",
                     ShapeString(s.shape), " is outside the global shape ",
                     ShapeString(t.global_shape));
        }
      }
      const uint64_t bytes = *CheckedBytes(s.shape, t.dtype);  // inside the global shape
      if (s.byte_length != bytes) {
        return bad(shard, ": field byte_length is ", s.byte_length, "; shape ",
                   ShapeString(s.shape), " of ", DTypeName(t.dtype), " is ", bytes, " bytes");
      }
      const uint64_t file_bytes = file->second->bytes;
      if (s.byte_length > file_bytes || s.byte_offset > file_bytes - s.byte_length) {
        return bad(shard, ": fields byte_offset ", s.byte_offset, " and byte_length ",
                   s.byte_length, " run past the ", file_bytes, " bytes of ", s.file);
      }
    }
  }
  absl::Status coverage = CheckCoverage(m);
  if (!coverage.ok()) return bad(coverage.message());
  return absl::OkStatus();
}

absl::Status ValidateShardHeader(const SafetensorsHeader& header, uint64_t file_size,
                                 absl::Span<const StoredShard> shards, absl::string_view path) {
  auto bad = [&](auto&&... parts) {
    return absl::DataLossError(absl::StrCat(path, ": ", parts...));
  };
  if (header.data_start % kDataAlignment != 0) {
    return bad("data starts at ", header.data_start, ", not a multiple of ", kDataAlignment);
  }
  if (header.data_start > file_size) {
    return bad("the safetensors header runs past the end of the file (", header.data_start,
               " of ", file_size, " bytes)");
  }
  std::map<absl::string_view, const SafetensorsEntry*> entries;
  for (const SafetensorsEntry& e : header.entries) {
    if (e.end > file_size - header.data_start) {
      return bad("safetensors header, tensor ", e.name, ": field data_offsets [", e.begin, ", ",
                 e.end, "] runs past the ", file_size - header.data_start, " bytes of data");
    }
    entries[e.name] = &e;
  }
  // What torch's reader takes the pieces' places from must agree with the manifest: a
  // disagreement would load other values there than here.
  ASSIGN_OR_RETURN(auto dcp_offsets, ParseDcpShardingInfo(header, path));
  for (const StoredShard& s : shards) {
    auto it = entries.find(s.tensor);
    if (it == entries.end()) {
      return bad("the safetensors header has no tensor ", s.tensor, ", which the manifest says is here");
    }
    const SafetensorsEntry& e = *it->second;
    const std::string prefix = absl::StrCat("tensor ", s.tensor, ": the safetensors header says ");
    if (e.dtype != s.dtype) {
      return bad(prefix, "dtype ", SafetensorsDType(e.dtype), ", the manifest ", DTypeName(s.dtype));
    }
    if (e.shape != s.shard->shape) {
      return bad(prefix, "shape ", ShapeString(e.shape), ", the manifest ",
                 ShapeString(s.shard->shape));
    }
    if (header.data_start + e.begin != s.shard->byte_offset ||
        e.end - e.begin != s.shard->byte_length) {
      return bad(prefix, "bytes [", header.data_start + e.begin, ", ", header.data_start + e.end,
                 "), the manifest byte_offset ", s.shard->byte_offset, " byte_length ",
                 s.shard->byte_length);
    }
    if (dcp_offsets) {
      const Tensor::Shape& saved = dcp_offsets->at(e.name);  // one for every entry
      if (saved != s.shard->offset) {
        return bad("tensor ", s.tensor, ": __metadata__ ", kDcpShardingInfoKey,
                   " says saved_offsets ", ShapeString(saved), ", the manifest offset ",
                   ShapeString(s.shard->offset));
      }
    }
  }
  return absl::OkStatus();
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
            {"replica_set", r.replica_set},
            {"replica_digest", r.replica_digest},
            {"sends_replica", r.sends_replica},
            {"tensors", TensorsJson(r.tensors)}};
  return j.dump();
}

std::string DigestHex(uint64_t digest) { return absl::StrFormat("%016x", digest); }

absl::Status CheckReplicaDigests(const std::vector<RankReport>& reports) {
  std::map<int64_t, const RankReport*> first_of_set;
  std::vector<std::string> bad;
  for (const RankReport& r : reports) {
    if (r.replica_set < 0) continue;
    auto [it, inserted] = first_of_set.try_emplace(r.replica_set, &r);
    if (inserted || it->second->replica_digest == r.replica_digest) continue;
    bad.push_back(absl::StrCat("replica set ", r.replica_set, ": rank ", it->second->rank,
                               " has digest ", DigestHex(it->second->replica_digest), ", rank ",
                               r.rank, " has ", DigestHex(r.replica_digest)));
  }
  if (bad.empty()) return absl::OkStatus();
  return absl::DataLossError(absl::StrCat(
      "the replicas disagree (", absl::StrJoin(bad, "; "),
      "): silent data corruption or a nondeterministic step; a state whose replicas disagree "
      "is never committed, so `latest` still names the previous checkpoint"));
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
    r.replica_set = j.at("replica_set").get<int64_t>();
    r.replica_digest = j.at("replica_digest").get<uint64_t>();
    r.sends_replica = j.at("sends_replica").get<bool>();
    r.tensors = TensorsFrom(j.at("tensors"));
  } catch (const FieldError& ex) {
    return absl::InternalError(absl::StrCat("a rank's commit report is malformed: ", ex.message));
  } catch (const json::exception& ex) {
    return absl::InternalError(absl::StrCat("a rank's commit report is malformed: ", ex.what()));
  }
  return r;
}

}  // namespace trident::ckpt
