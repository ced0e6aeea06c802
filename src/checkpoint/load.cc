// Reading checkpoints: listing, the `latest` pointer, manifests, resharding loads, verify.
#include <algorithm>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "checkpoint/file_system.h"
#include "checkpoint/format.h"
#include "checkpoint/internal.h"
#include "common/check.h"
#include "common/cuda.h"
#include "common/host_memory.h"
#include "common/status_macros.h"

namespace trident {
namespace ckpt {
namespace {

constexpr size_t kReadPiece = size_t{64} << 20;

std::shared_ptr<FileSystem> FsOf(const ReadOptions& options) {
  return options.file_system ? options.file_system : PosixFileSystem();
}

std::string Hex(uint32_t v) { return absl::StrFormat("0x%08x", v); }

// Reads one stored shard of a tensor into dst (byte_length bytes), checking size and CRC.
absl::Status ReadShard(ReadableFile& file, const std::string& path, const std::string& tensor,
                       const ShardInfo& shard, char* dst) {
  uint32_t crc = 0;
  for (uint64_t done = 0; done < shard.byte_length;) {
    const size_t want = static_cast<size_t>(std::min<uint64_t>(kReadPiece, shard.byte_length - done));
    ASSIGN_OR_RETURN(size_t got, file.Read(shard.byte_offset + done, dst + done, want));
    if (got < want) {
      auto size = file.Size();
      return absl::DataLossError(absl::StrCat(
          path, " is truncated: tensor ", tensor, " needs bytes [", shard.byte_offset, ", ",
          shard.byte_offset + shard.byte_length, ") but the file has ",
          size.ok() ? absl::StrCat(*size) : std::string("fewer"), " bytes"));
    }
    crc = Crc32c(dst + done, got, crc);
    done += got;
  }
  if (crc != shard.crc32c) {
    return absl::DataLossError(absl::StrCat(
        "checksum mismatch in ", path, ", tensor ", tensor, " (the piece of rank ", shard.rank,
        " at offset ", ShapeString(shard.offset), "): stored crc32c ", Hex(shard.crc32c),
        ", computed ", Hex(crc)));
  }
  return absl::OkStatus();
}

// Bytes of a buffer for one stored shard. The manifest was validated, so byte_length is
// within the shard file's size; the allocation can still fail (kResourceExhausted).
absl::Status EnsureBuffer(HostMemory* buffer, size_t* buffer_bytes, uint64_t bytes,
                          const std::string& tensor) {
  if (*buffer_bytes >= bytes) return absl::OkStatus();
  buffer->reset();
  *buffer_bytes = 0;
  auto memory = TryAllocateHostMemory(static_cast<size_t>(bytes));
  if (!memory.ok()) return Annotate(memory.status(), absl::StrCat("reading tensor ", tensor));
  *buffer = std::move(memory).value();
  *buffer_bytes = static_cast<size_t>(bytes);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<CheckpointReader>> CheckpointReader::Open(FileSystem& fs,
                                                                         const std::string& dir,
                                                                         int64_t step) {
  ASSIGN_OR_RETURN(CheckpointManifest m, ReadManifestAt(fs, dir, &step));
  return std::unique_ptr<CheckpointReader>(
      new CheckpointReader(fs, JoinPath(dir, StepDirName(step)), step, std::move(m)));
}

CheckpointReader::CheckpointReader(FileSystem& fs, std::string step_dir, int64_t step,
                                   CheckpointManifest manifest)
    : fs_(fs), step_dir_(std::move(step_dir)), step_(step), manifest_(std::move(manifest)) {
  for (const FileInfo& f : manifest_.files) by_file_[f.name].info = &f;
  for (const auto& [name, t] : manifest_.tensors) {
    for (const ShardInfo& s : t.shards) by_file_[s.file].shards.push_back({name, t.dtype, &s});
  }
  for (auto& [name, file] : by_file_) {
    std::sort(file.shards.begin(), file.shards.end(), [](const StoredShard& a, const StoredShard& b) {
      return a.shard->byte_offset < b.shard->byte_offset;
    });
  }
}

CheckpointReader::~CheckpointReader() = default;

absl::StatusOr<ReadableFile*> CheckpointReader::File(const std::string& name,
                                                     absl::string_view tensor) {
  auto it = by_file_.find(name);
  // ValidateManifest: every shard names a listed file.
  TRIDENT_CHECK(it != by_file_.end() && it->second.info != nullptr) << "unlisted file " << name;
  OpenFile& entry = it->second;
  if (entry.file) return entry.file.get();
  const std::string path = PathOf(name);
  auto file = fs_.OpenForRead(path);
  if (!file.ok()) {
    if (absl::IsNotFound(file.status())) {
      return absl::DataLossError(absl::StrCat("shard file ", path, " is missing (tensor ",
                                              tensor, " is stored in it)"));
    }
    return Annotate(file.status(), absl::StrCat("reading tensor ", tensor));
  }
  ReadableFile& f = **file;
  ASSIGN_OR_RETURN(uint64_t size, f.Size());
  const uint64_t listed = entry.info->bytes;
  if (size != listed) {
    if (size > listed) {
      return absl::DataLossError(
          absl::StrCat(path, " has ", size, " bytes; the manifest says ", listed));
    }
    for (const StoredShard& s : entry.shards) {
      if (s.shard->byte_offset + s.shard->byte_length > size) {
        return absl::DataLossError(absl::StrCat(
            path, " is truncated: tensor ", s.tensor, " needs bytes [", s.shard->byte_offset,
            ", ", s.shard->byte_offset + s.shard->byte_length, ") but the file has ", size,
            " bytes (the manifest says ", listed, ")"));
      }
    }
    return absl::DataLossError(absl::StrCat(path, " is truncated: ", size,
                                            " bytes, the manifest says ", listed));
  }
  // The header: its size first, then exactly that many bytes (never more than the file).
  std::string prefix(std::min<uint64_t>(size, 8), '\0');
  ASSIGN_OR_RETURN(size_t got, f.Read(0, prefix.data(), prefix.size()));
  prefix.resize(got);
  if (got == 8) {
    const uint64_t n = SafetensorsHeaderSize(prefix);
    if (n <= kMaxSafetensorsHeaderBytes && n <= size - 8) {
      prefix.resize(8 + n);
      ASSIGN_OR_RETURN(got, f.Read(0, prefix.data(), prefix.size()));
      prefix.resize(got);
    }
  }
  ASSIGN_OR_RETURN(SafetensorsHeader header, ParseSafetensorsHeader(prefix, path));
  RETURN_IF_ERROR(ValidateShardHeader(header, size, entry.shards, path));
  entry.file = std::move(file).value();
  return entry.file.get();
}

absl::StatusOr<Box> RequestBox(const TensorRequest& request, DType dtype,
                               const Tensor::Shape& global_shape, absl::string_view where) {
  const Tensor& t = request.tensor;
  if (t.dtype() != dtype) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", request.name, " is ",
                                                   DTypeName(dtype), " in ", where,
                                                   "; the destination is ", DTypeName(t.dtype())));
  }
  if (!request.global_shape.empty() && request.global_shape != global_shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor ", request.name, " has global shape ", ShapeString(global_shape), " in ", where,
        "; the caller expects ", ShapeString(request.global_shape)));
  }
  RETURN_IF_ERROR(cuda::CheckCudaTensor(t, "loading a checkpoint", absl::StrCat("tensor ", request.name)));
  Box box{request.offset, t.shape()};
  if (box.offset.empty()) box.offset.assign(box.shape.size(), 0);
  const Box global{Tensor::Shape(global_shape.size(), 0), global_shape};
  if (box.offset.size() != box.shape.size() || box.shape.size() != global_shape.size() ||
      !Contains(global, box)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor ", request.name, ": the slice at offset ", ShapeString(box.offset), " of shape ",
        ShapeString(box.shape), " is not inside the global shape ", ShapeString(global_shape),
        " stored in ", where));
  }
  if (t.data() == nullptr && t.numel() > 0) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", request.name, ": null data"));
  }
  return box;
}

// A copy to a device is done well within this unless the device is hung.
constexpr absl::Duration kDeviceCopyTimeout = absl::Minutes(5);

struct DeviceUploads::State {
  std::shared_ptr<cuda::PinnedPool> pool = cuda::PinnedPool::Create();
  cuda::PinnedPool::Block block;  // the current request's, when it is a CUDA tensor
  std::map<int, std::unique_ptr<cuda::OwnedStream>> streams;  // by device
  std::map<int, std::shared_ptr<cuda::Event>> last;           // the last copy, by device
};

DeviceUploads::DeviceUploads() : state_(std::make_unique<State>()) {}

DeviceUploads::~DeviceUploads() {
  // A load that failed part-way: wait for what was queued (its blocks go back fenced anyway).
  if (!state_->last.empty()) (void)Finish();
}

absl::StatusOr<char*> DeviceUploads::Destination(const TensorRequest& request) {
  if (request.tensor.device().is_cpu()) return static_cast<char*>(request.tensor.data());
  ASSIGN_OR_RETURN(state_->block, cuda::PinnedPool::Acquire(
                                      state_->pool, std::max<size_t>(request.tensor.nbytes(), 1)));
  return static_cast<char*>(state_->block.data());
}

absl::Status DeviceUploads::Queue(const TensorRequest& request) {
  if (request.tensor.device().is_cpu()) return absl::OkStatus();
  const int device = request.tensor.device().index;
  const std::string what = absl::StrCat("loading tensor ", request.name, " into cuda:", device);
  std::unique_ptr<cuda::OwnedStream>& stream = state_->streams[device];
  if (stream == nullptr) {
    // Synchronising with the legacy default stream, as the blocking copy it replaces did.
    auto made = cuda::OwnedStream::Create(device, /*non_blocking=*/false);
    if (!made.ok()) return Annotate(made.status(), what);
    stream = std::move(*made);
  }
  cuda::DeviceGuard guard(device);
  RETURN_IF_ERROR(Annotate(guard.status(), what));
  RETURN_IF_ERROR(Annotate(cuda::CopyAsync(request.tensor.data(), state_->block.data(),
                                           request.tensor.nbytes(), stream->get()),
                           what));
  auto event = cuda::Event::Record(stream->get(), device);
  if (!event.ok()) return Annotate(event.status(), what);
  std::shared_ptr<cuda::Event> fence = std::move(*event);
  state_->block.set_fence(fence);
  state_->block = cuda::PinnedPool::Block();  // back to the pool, not reused before the copy
  state_->last[device] = std::move(fence);
  return absl::OkStatus();
}

absl::Status DeviceUploads::Finish() {
  const absl::Time deadline = absl::Now() + kDeviceCopyTimeout;
  absl::Status status;
  for (auto& [device, event] : state_->last) {
    absl::Status s = cuda::WaitEvent(*event, deadline,
                                     absl::StrCat("loading a checkpoint into cuda:", device));
    if (status.ok()) status = s;
  }
  state_->last.clear();
  return status;
}

absl::Status CheckLatestPointer(FileSystem& fs, const std::string& dir) {
  const std::string path = JoinPath(dir, kLatestName);
  auto text = ReadFileToString(fs, path, kMaxLatestBytes);
  if (absl::IsNotFound(text.status())) return absl::OkStatus();
  RETURN_IF_ERROR(text.status());
  const std::string name(absl::StripAsciiWhitespace(*text));
  if (!ParseStepDirName(name)) {
    return absl::DataLossError(
        absl::StrCat(path, " does not name a step directory: '", absl::CHexEscape(name.substr(0, 64)), "'"));
  }
  const std::string manifest = JoinPath(JoinPath(dir, name), kManifestName);
  if (!fs.FileExists(manifest)) {
    return absl::DataLossError(absl::StrCat(path, " names ", name, ", which has no ",
                                            kManifestName, " (not a committed checkpoint)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<CheckpointManifest> ReadManifestAt(FileSystem& fs, const std::string& dir,
                                                  int64_t* step) {
  if (*step == kLatestStep) {
    ReadOptions options;
    options.file_system = std::shared_ptr<FileSystem>(std::shared_ptr<FileSystem>(), &fs);  // borrowed
    ASSIGN_OR_RETURN(*step, LatestCheckpointStep(dir, options));
  }
  if (*step < 0) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint step ", *step, " is negative"));
  }
  const std::string step_dir = JoinPath(dir, StepDirName(*step));
  if (!fs.IsDirectory(step_dir)) {
    return absl::NotFoundError(absl::StrCat("no checkpoint of step ", *step, " in ", dir));
  }
  const std::string path = JoinPath(step_dir, kManifestName);
  auto text = ReadFileToString(fs, path, kMaxManifestBytes);
  if (!text.ok()) {
    if (absl::IsNotFound(text.status())) {
      return absl::DataLossError(absl::StrCat(path, " is missing"));
    }
    return text.status();
  }
  ASSIGN_OR_RETURN(CheckpointManifest m, ParseManifest(*text, path));
  if (m.step != *step) {
    return absl::DataLossError(absl::StrCat(path, ": field step is ", m.step, " in the directory of step ", *step));
  }
  RETURN_IF_ERROR(ValidateManifest(m, path));
  return m;
}

}  // namespace ckpt

using ckpt::Box;

absl::StatusOr<std::vector<CheckpointInfo>> ListCheckpoints(const std::string& dir,
                                                            const ReadOptions& options) {
  std::shared_ptr<FileSystem> fs = ckpt::FsOf(options);
  ASSIGN_OR_RETURN(std::vector<std::string> names, fs->ListDir(dir));
  std::string latest;
  // A `latest` that is not a step name (or too large to be one) names nothing.
  auto text = ReadFileToString(*fs, JoinPath(dir, ckpt::kLatestName), ckpt::kMaxLatestBytes);
  if (text.ok()) latest = std::string(absl::StripAsciiWhitespace(*text));
  std::vector<CheckpointInfo> out;
  for (const std::string& name : names) {
    std::optional<int64_t> step = ckpt::ParseStepDirName(name);
    if (!step) continue;
    const std::string path = JoinPath(dir, name);
    if (!fs->IsDirectory(path) || !fs->FileExists(JoinPath(path, ckpt::kManifestName))) continue;
    out.push_back({*step, path, name == latest});
  }
  std::sort(out.begin(), out.end(),
            [](const CheckpointInfo& a, const CheckpointInfo& b) { return a.step < b.step; });
  return out;
}

absl::StatusOr<int64_t> LatestCheckpointStep(const std::string& dir, const ReadOptions& options) {
  auto list = ListCheckpoints(dir, options);
  if (!list.ok()) {
    if (absl::IsNotFound(list.status())) {
      return absl::NotFoundError(absl::StrCat("no checkpoint directory ", dir));
    }
    return list.status();
  }
  for (const CheckpointInfo& c : *list) {
    if (c.latest) return c.step;
  }
  if (list->empty()) return absl::NotFoundError(absl::StrCat("no committed checkpoint in ", dir));
  return list->back().step;
}

absl::StatusOr<CheckpointManifest> ReadManifest(const std::string& dir, int64_t step,
                                                const ReadOptions& options) {
  std::shared_ptr<FileSystem> fs = ckpt::FsOf(options);
  return ckpt::ReadManifestAt(*fs, dir, &step);
}

absl::StatusOr<LoadResult> LoadCheckpoint(const std::string& dir, int64_t step,
                                          absl::Span<const TensorRequest> requests,
                                          const LoadOptions& options) {
  std::shared_ptr<FileSystem> fs = ckpt::FsOf(options);
  ASSIGN_OR_RETURN(std::unique_ptr<ckpt::CheckpointReader> reader,
                   ckpt::CheckpointReader::Open(*fs, dir, step));
  const CheckpointManifest& m = reader->manifest();
  step = reader->step();
  const std::string where = absl::StrCat("checkpoint step ", step);
  LoadResult result;
  result.step = step;
  result.epoch = m.epoch;
  if (options.metadata_rank >= 0) {
    if (options.metadata_rank >= static_cast<int>(m.metadata.size())) {
      return absl::InvalidArgumentError(absl::StrCat("metadata of rank ", options.metadata_rank,
                                                     " requested; ", where, " was saved by ",
                                                     m.world_size, " ranks"));
    }
    result.metadata = m.metadata[options.metadata_rank];
  }
  HostMemory scratch;
  size_t scratch_bytes = 0;
  ckpt::DeviceUploads uploads;  // CUDA destinations
  for (const TensorRequest& request : requests) {
    auto it = m.tensors.find(request.name);
    if (it == m.tensors.end()) {
      return absl::NotFoundError(absl::StrCat("tensor ", request.name, " is not in ", where,
                                              " (", dir, ")"));
    }
    const TensorInfo& t = it->second;
    ASSIGN_OR_RETURN(Box want, ckpt::RequestBox(request, t.dtype, t.global_shape, where));
    const size_t elem = DTypeSize(t.dtype);
    ASSIGN_OR_RETURN(char* dst, uploads.Destination(request));
    int64_t filled = 0;
    for (const ShardInfo& shard : t.shards) {
      const Box have{shard.offset, shard.shape};
      Box region;
      if (!ckpt::Intersect(have, want, &region) && !want.shape.empty()) continue;
      if (ckpt::Volume(region.shape) == 0 && ckpt::Volume(want.shape) != 0) continue;
      ASSIGN_OR_RETURN(ReadableFile * file, reader->File(shard.file, request.name));
      const std::string path = reader->PathOf(shard.file);
      if (have.offset == want.offset && have.shape == want.shape) {
        // Same layout: straight into the caller's tensor, whose size ValidateManifest has
        // tied to byte_length (shape x dtype); checked again, as this write trusts it.
        TRIDENT_CHECK(shard.byte_length == request.tensor.nbytes())
            << "tensor " << request.name << ": a validated piece of " << shard.byte_length
            << " bytes for a destination of " << request.tensor.nbytes();
        RETURN_IF_ERROR(ckpt::ReadShard(*file, path, request.name, shard, dst));
      } else {
        RETURN_IF_ERROR(ckpt::EnsureBuffer(&scratch, &scratch_bytes, shard.byte_length,
                                           request.name));
        RETURN_IF_ERROR(ckpt::ReadShard(*file, path, request.name, shard, scratch.get()));
        ckpt::CopyBox(scratch.get(), have, dst, want, region, elem);
      }
      result.bytes_read += static_cast<int64_t>(shard.byte_length);
      filled += ckpt::Volume(region.shape);
    }
    if (filled != ckpt::Volume(want.shape)) {
      return absl::DataLossError(absl::StrCat(
          "the manifest of ", where, " does not cover the slice at offset ",
          ckpt::ShapeString(want.offset), " shape ", ckpt::ShapeString(want.shape), " of tensor ",
          request.name));
    }
    RETURN_IF_ERROR(uploads.Queue(request));
  }
  RETURN_IF_ERROR(uploads.Finish());
  return result;
}

absl::Status VerifyCheckpoint(const std::string& dir, int64_t step, const ReadOptions& options) {
  std::shared_ptr<FileSystem> fs = ckpt::FsOf(options);
  if (step == kLatestStep) RETURN_IF_ERROR(ckpt::CheckLatestPointer(*fs, dir));
  ASSIGN_OR_RETURN(std::unique_ptr<ckpt::CheckpointReader> reader,
                   ckpt::CheckpointReader::Open(*fs, dir, step));
  HostMemory buffer;
  size_t buffer_bytes = 0;
  for (const FileInfo& f : reader->manifest().files) {
    const std::vector<ckpt::StoredShard>& shards = reader->ShardsIn(f.name);
    ASSIGN_OR_RETURN(ReadableFile * file,
                     reader->File(f.name, shards.empty() ? "(none)" : shards[0].tensor));
    const std::string path = reader->PathOf(f.name);
    for (const ckpt::StoredShard& s : shards) {
      const std::string tensor(s.tensor);
      RETURN_IF_ERROR(ckpt::EnsureBuffer(&buffer, &buffer_bytes, s.shard->byte_length, tensor));
      RETURN_IF_ERROR(ckpt::ReadShard(*file, path, tensor, *s.shard, buffer.get()));
    }
  }
  // The Hugging Face index, which loading never reads (checkpoints written before it was
  // added have none): it must name, for every tensor, a file that holds a piece of it.
  const std::string index = reader->PathOf(ckpt::kIndexName);
  if (fs->FileExists(index)) {
    ASSIGN_OR_RETURN(std::string text, ReadFileToString(*fs, index, ckpt::kMaxManifestBytes));
    RETURN_IF_ERROR(ckpt::ValidateCheckpointIndex(text, reader->manifest(), index));
  }
  return absl::OkStatus();
}

}  // namespace trident
