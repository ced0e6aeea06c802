// Fuzzes the safetensors header parser and its check against the file: any bytes as a shard
// file. Properties beyond "no crash, no sanitizer report": a header that parses is consistent
// with the file when it says so, its entries (as a manifest would list them) pass the check,
// and writing the parsed header back gives a header that parses to the same entries.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "checkpoint/format.h"

namespace {

void Require(bool condition) {
  if (!condition) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace trident;
  using namespace trident::ckpt;
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<SafetensorsHeader> header = ParseSafetensorsHeader(bytes, "fuzz.safetensors");
  if (!header.ok()) {
    Require(header.status().code() == absl::StatusCode::kDataLoss);
    return 0;
  }
  absl::Status alone = ValidateShardHeader(*header, size, {}, "fuzz.safetensors");
  if (!alone.ok()) {
    Require(alone.code() == absl::StatusCode::kDataLoss);
    return 0;
  }
  // The file's own entries, as the manifest of a checkpoint would list them (at the offsets
  // its DCP_SHARDING_INFO gives, which the check above parsed).
  absl::StatusOr<std::optional<std::map<std::string, Tensor::Shape>>> offsets =
      ParseDcpShardingInfo(*header, "fuzz.safetensors");
  Require(offsets.ok());
  std::vector<ShardInfo> infos;
  infos.reserve(header->entries.size());
  for (const SafetensorsEntry& e : header->entries) {
    ShardInfo s;
    s.file = "fuzz.safetensors";
    s.byte_offset = header->data_start + e.begin;
    s.byte_length = e.end - e.begin;
    s.shape = e.shape;
    s.offset = offsets->has_value() ? (**offsets).at(e.name) : Tensor::Shape(e.shape.size(), 0);
    infos.push_back(s);
  }
  std::vector<StoredShard> shards;
  for (size_t i = 0; i < infos.size(); ++i) {
    shards.push_back({header->entries[i].name, header->entries[i].dtype, &infos[i]});
  }
  Require(ValidateShardHeader(*header, size, shards, "fuzz.safetensors").ok());
  // Round trip through the writer.
  const std::string prefix = BuildSafetensorsPrefix(header->entries, header->metadata);
  absl::StatusOr<SafetensorsHeader> again = ParseSafetensorsHeader(prefix, "rewritten");
  Require(again.ok());
  Require(again->entries.size() == header->entries.size());
  Require(again->metadata == header->metadata);
  return 0;
}
