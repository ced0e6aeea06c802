// The on-disk format of a checkpoint (docs/checkpoint.md): directory and file names, the
// manifest.json index, the safetensors shard header, CRC32C, and the N-d box arithmetic that
// resharding on load is built on.
#ifndef TRIDENT_CHECKPOINT_FORMAT_H_
#define TRIDENT_CHECKPOINT_FORMAT_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "trident/checkpoint.h"
#include "trident/tensor.h"

namespace trident::ckpt {

inline constexpr int kFormatVersion = 1;
inline constexpr char kFormatName[] = "trident-checkpoint";
inline constexpr char kManifestName[] = "manifest.json";
inline constexpr char kLatestName[] = "latest";
// Shard data starts at a multiple of this in the file.
inline constexpr size_t kDataAlignment = 4096;
// Limits on what a reader accepts from a file, so that a crafted one cannot make it allocate
// without bound: the size of a manifest, of `latest`, of a safetensors header (the limit of
// the safetensors reference implementation); a tensor's dimensions, a saving world's ranks.
inline constexpr uint64_t kMaxManifestBytes = uint64_t{1} << 30;
inline constexpr uint64_t kMaxLatestBytes = 4096;
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = uint64_t{100} << 20;
inline constexpr size_t kMaxDims = 64;
inline constexpr int kMaxWorldSize = 1 << 20;

// CRC32C (Castagnoli, as iSCSI and ext4 use it) through ISA-L. Chainable:
// Crc32c(b, m, Crc32c(a, n)) is the CRC of a followed by b.
uint32_t Crc32c(const void* data, size_t n, uint32_t crc = 0);

// "step-000000100"; the tmp directory of a save in flight is "step-000000100.tmp-<nonce>".
std::string StepDirName(int64_t step);
std::string TmpDirName(int64_t step, absl::string_view nonce);
// A directory a replaced checkpoint is moved to before it is deleted.
std::string OldDirName(int64_t step, absl::string_view nonce);
// The step of a committed directory's name ("step-<digits>" exactly), else nullopt.
std::optional<int64_t> ParseStepDirName(absl::string_view name);
// Whether a name is a half-written or replaced directory that a save cleans up.
bool IsStaleDirName(absl::string_view name);
std::string ShardFileName(int rank);

// The rows [begin, end) of dimension 0 that replica `index` of `count` writes.
struct RowRange {
  int64_t begin = 0;
  int64_t end = 0;
};
RowRange ReplicaRows(const Tensor::Shape& shape, int index, int count);

// --- Boxes ---------------------------------------------------------------------------------

struct Box {
  Tensor::Shape offset;
  Tensor::Shape shape;
};
int64_t Volume(const Tensor::Shape& shape);
// The intersection of a and b (same rank); false when empty.
bool Intersect(const Box& a, const Box& b, Box* out);
bool Contains(const Box& outer, const Box& inner);
std::string ShapeString(const Tensor::Shape& shape);
// Copies `region` (inside both boxes) from src, laid out row-major as src_box, into dst, laid
// out as dst_box. elem is the element size in bytes.
void CopyBox(const char* src, const Box& src_box, char* dst, const Box& dst_box,
             const Box& region, size_t elem);

// --- safetensors ---------------------------------------------------------------------------

// The bytes of a tensor of `shape` and `dtype`; nullopt when a dimension is negative or the
// product is over 2^63 - 1.
std::optional<uint64_t> CheckedBytes(const Tensor::Shape& shape, DType dtype);

absl::string_view SafetensorsDType(DType dtype);  // "F32", "BF16", ...
absl::StatusOr<DType> ParseSafetensorsDType(absl::string_view name);

struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::kF32;
  Tensor::Shape shape;
  uint64_t begin = 0;  // relative to the start of the data
  uint64_t end = 0;
};
// The bytes before the data: 8-byte little-endian header size, the JSON header, spaces up to
// a multiple of kDataAlignment.
std::string BuildSafetensorsPrefix(const std::vector<SafetensorsEntry>& entries,
                                   const std::map<std::string, std::string>& metadata);
struct SafetensorsHeader {
  uint64_t data_start = 0;  // file offset of the data
  std::vector<SafetensorsEntry> entries;
  std::map<std::string, std::string> metadata;
};
// The header size that the first 8 bytes of a shard file declare.
uint64_t SafetensorsHeaderSize(absl::string_view prefix);
// Parses a shard file's prefix (at least its first 8 + header-size bytes) and checks each entry
// on its own: a known dtype, non-negative dimensions, data_offsets [begin, end] with end >=
// begin holding exactly shape x dtype bytes. `where` names the file in errors (kDataLoss).
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::string_view bytes,
                                                         absl::string_view where);
// A manifest's shard that lives in a given file, with its tensor's name and dtype.
struct StoredShard {
  absl::string_view tensor;
  DType dtype = DType::kF32;
  const ShardInfo* shard = nullptr;
};
// Checks a parsed header against the file's size (aligned data start, every entry's bytes
// inside the file) and against the manifest's shards stored in the file (each has an entry of
// the same dtype and shape at the same bytes). kDataLoss naming `path`, the tensor and field.
absl::Status ValidateShardHeader(const SafetensorsHeader& header, uint64_t file_size,
                                 absl::Span<const StoredShard> shards, absl::string_view path);

// --- PyTorch distributed checkpoint and Hugging Face interop -----------------------------
//
// What torch.distributed.checkpoint's HuggingFaceStorageReader (torch/distributed/checkpoint/
// hf_storage.py, _hf_utils.py) reads from sharded safetensors: each file's __metadata__ has
// DCP_SHARDING_INFO, a JSON string {"<tensor>": {"saved_offsets": [..]}} giving the offset of
// the file's piece in the global tensor (the global shape is the largest offset + shape over
// the files), DCP_VERSION "1.0" and format "pt" (which Hugging Face loaders also require).
// The index beside the shards maps each tensor to a file, as Hugging Face's sharded
// checkpoints do.

inline constexpr char kIndexName[] = "model.safetensors.index.json";
inline constexpr char kDcpShardingInfoKey[] = "DCP_SHARDING_INFO";
inline constexpr char kDcpVersionKey[] = "DCP_VERSION";
inline constexpr char kDcpVersion[] = "1.0";
inline constexpr char kShardFormatKey[] = "format";
inline constexpr char kShardFormatValue[] = "pt";
// Our own key in a shard's __metadata__ (the value is kFormatName).
inline constexpr char kTridentFormatKey[] = "trident_format";

// The __metadata__ of a shard file that holds, for each tensor name, the piece at `offsets`.
std::map<std::string, std::string> ShardMetadata(int64_t step, int rank,
                                                 const std::map<std::string, Tensor::Shape>& offsets);
// The pieces' offsets that a header's DCP_SHARDING_INFO gives, by tensor name; nullopt when the
// header has none (a checkpoint written before it was added). kDataLoss naming `where` when
// it is not the JSON above or misses a tensor of the header or gives one an offset of another
// rank than its shape.
absl::StatusOr<std::optional<std::map<std::string, Tensor::Shape>>> ParseDcpShardingInfo(
    const SafetensorsHeader& header, absl::string_view where);

// The Hugging Face index: {"metadata": {"total_size": N, ...}, "weight_map": {name: file}}.
// `total_size` is the bytes of all tensors; `extra` goes into "metadata" next to it.
std::string WeightMapIndexJson(const std::map<std::string, std::string>& weight_map,
                               uint64_t total_size,
                               const std::map<std::string, std::string>& extra = {});
// The index of a committed checkpoint: every tensor mapped to the file holding its piece at
// offset zero (a tensor split over files is whole in none: torch's DCP reader assembles it
// from DCP_SHARDING_INFO; `trident-ckpt export` writes whole tensors), total_size the bytes of
// the global tensors, and in "metadata" the format, step and "sharded": "true" when a tensor
// is split over several files.
std::string CheckpointIndexJson(const CheckpointManifest& manifest);
// Checks an index against the manifest: JSON of the shape above, every tensor of the manifest
// in weight_map, mapped to a file that holds a piece of it. kDataLoss naming `where`.
absl::Status ValidateCheckpointIndex(absl::string_view text, const CheckpointManifest& manifest,
                                     absl::string_view where);

// --- manifest ------------------------------------------------------------------------------

std::string ManifestToJson(const CheckpointManifest& manifest);
// kDataLoss for text that is not a manifest (naming `where` and the field: a missing field,
// one of the wrong type, an integer out of its type's range, a negative dimension);
// kFailedPrecondition for another version.
absl::StatusOr<CheckpointManifest> ParseManifest(absl::string_view text, absl::string_view where);
// A file name a manifest may use: a plain name inside the step directory (not empty, ".",
// "..", nor containing '/' or NUL). kInvalidArgument otherwise.
absl::Status CheckFileName(absl::string_view name);
// Every field of a parsed manifest against the others, before any shard is opened: file names
// confined to the step directory, ranks in the saving world, each shard's offset and shape
// inside its tensor's global shape, byte_length equal to shape x dtype, [byte_offset,
// byte_offset + byte_length) inside the file's listed size, and the shards tiling each tensor
// exactly. kDataLoss naming `where` (the manifest's path), the tensor and the field. Loading
// and verifying both call it (through the reader in load.cc), so they accept the same files.
absl::Status ValidateManifest(const CheckpointManifest& m, absl::string_view where);
// Checks that every tensor's shards tile its global shape exactly (no gap, no overlap) and
// lie inside it. kInvalidArgument naming the tensor.
absl::Status CheckCoverage(const CheckpointManifest& manifest);

// --- what each rank reports when it votes on a commit --------------------------------------

struct RankReport {
  int rank = 0;
  int64_t step = 0;
  int64_t seq = 0;
  absl::Status status;
  std::string file;  // empty: this rank wrote no file
  uint64_t file_bytes = 0;
  std::string metadata;
  int64_t replica_set = -1;  // CheckpointState::replica_set/replica_digest
  uint64_t replica_digest = 0;
  bool sends_replica = false;
  // One shard per tensor this rank wrote (shards[0] of each).
  std::map<std::string, TensorInfo> tensors;
};
std::string RankReportToJson(const RankReport& report);
// kDataLoss naming the set and the ranks when two ranks of one replica set (>= 0) report
// different digests: such a save must not commit.
absl::Status CheckReplicaDigests(const std::vector<RankReport>& reports);
// "0123456789abcdef": how a digest is written in the manifest.
std::string DigestHex(uint64_t digest);
absl::StatusOr<RankReport> ParseRankReport(absl::string_view text);

}  // namespace trident::ckpt

#endif  // TRIDENT_CHECKPOINT_FORMAT_H_
