// Fuzzes the manifest parser, its validation and the loader over a checkpoint that may hold
// anything. Input: u32 (little-endian) manifest length, the manifest, then the bytes of the
// one shard file "shard-r00000.safetensors"; they form step 1 of a checkpoint directory in
// memory (`latest` names it). Properties beyond "no crash, no sanitizer report": every error
// is one of the codes the API documents, and when VerifyCheckpoint accepts the checkpoint,
// loading each of its tensors (whole, and the first half of its rows) succeeds too: verify and
// load share one validation.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "checkpoint/file_system.h"
#include "checkpoint/format.h"
#include "trident/checkpoint.h"

namespace trident {
namespace {

void Require(bool condition) {
  if (!condition) std::abort();
}

class MemoryFile : public ReadableFile {
 public:
  explicit MemoryFile(const std::string* bytes) : bytes_(bytes) {}
  absl::StatusOr<size_t> Read(uint64_t offset, void* data, size_t n) override {
    if (offset >= bytes_->size()) return 0;
    const size_t got = std::min<uint64_t>(n, bytes_->size() - offset);
    std::memcpy(data, bytes_->data() + offset, got);
    return got;
  }
  absl::StatusOr<uint64_t> Size() override { return bytes_->size(); }

 private:
  const std::string* bytes_;
};

// A read-only file system of a few files and directories.
class MemoryFs : public FileSystem {
 public:
  std::map<std::string, std::string> files;
  std::set<std::string> dirs;

  absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path,
                                                                bool) override {
    return absl::PermissionDeniedError("read-only: " + path);
  }
  absl::StatusOr<std::unique_ptr<ReadableFile>> OpenForRead(const std::string& path) override {
    auto it = files.find(path);
    if (it == files.end()) return absl::NotFoundError("no file " + path);
    return std::make_unique<MemoryFile>(&it->second);
  }
  absl::Status CreateDir(const std::string&) override { return absl::PermissionDeniedError("ro"); }
  absl::Status SyncDir(const std::string&) override { return absl::OkStatus(); }
  absl::Status Rename(const std::string&, const std::string&) override {
    return absl::PermissionDeniedError("ro");
  }
  absl::Status RemoveAll(const std::string&) override { return absl::PermissionDeniedError("ro"); }
  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& path) override {
    if (dirs.count(path) == 0) return absl::NotFoundError("no directory " + path);
    std::vector<std::string> out;
    const std::string prefix = path + "/";
    for (const auto& [name, bytes] : files) {
      if (absl::StartsWith(name, prefix) && name.find('/', prefix.size()) == std::string::npos) {
        out.push_back(name.substr(prefix.size()));
      }
    }
    for (const std::string& d : dirs) {
      if (absl::StartsWith(d, prefix) && d.find('/', prefix.size()) == std::string::npos) {
        out.push_back(d.substr(prefix.size()));
      }
    }
    return out;
  }
  bool IsDirectory(const std::string& path) override { return dirs.count(path) > 0; }
  bool FileExists(const std::string& path) override {
    return files.count(path) > 0 || dirs.count(path) > 0;
  }
};

bool Documented(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kDataLoss:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kResourceExhausted:
      return true;
    default:
      return false;
  }
}

// Loads the whole of a tensor, and the first half of its rows, into fresh memory.
absl::Status LoadTensor(const std::string& dir, const std::string& name, const TensorInfo& t,
                        const LoadOptions& options) {
  const std::optional<uint64_t> bytes = ckpt::CheckedBytes(t.global_shape, t.dtype);
  if (!bytes || *bytes > (1 << 20)) return absl::OkStatus();  // too large to try here
  std::vector<char> buffer(std::max<uint64_t>(*bytes, 1));
  TensorRequest whole{name, Tensor(buffer.data(), t.dtype, t.global_shape), {}, t.global_shape};
  absl::Status s = LoadCheckpoint(dir, 1, {&whole, 1}, options).status();
  if (!s.ok() || t.global_shape.empty() || t.global_shape[0] < 2) return s;
  Tensor::Shape half = t.global_shape;
  half[0] /= 2;
  TensorRequest part{name, Tensor(buffer.data(), t.dtype, half), {}, {}};
  return LoadCheckpoint(dir, 1, {&part, 1}, options).status();
}

}  // namespace
}  // namespace trident

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace trident;
  if (size < 4) return 0;
  const uint32_t manifest_len = ckpt::SafetensorsHeaderSize(
      std::string(reinterpret_cast<const char*>(data), 4) + std::string(4, '\0'));
  if (manifest_len > size - 4) return 0;
  auto fs = std::make_shared<MemoryFs>();
  const std::string dir = "/ckpt";
  const std::string step_dir = dir + "/" + ckpt::StepDirName(1);
  fs->dirs = {dir, step_dir};
  fs->files[step_dir + "/" + ckpt::kManifestName] =
      std::string(reinterpret_cast<const char*>(data) + 4, manifest_len);
  fs->files[step_dir + "/" + ckpt::ShardFileName(0)] =
      std::string(reinterpret_cast<const char*>(data) + 4 + manifest_len, size - 4 - manifest_len);
  fs->files[dir + "/" + ckpt::kLatestName] = ckpt::StepDirName(1);

  LoadOptions options;
  options.file_system = fs;
  const absl::Status verified = VerifyCheckpoint(dir, kLatestStep, options);
  Require(verified.ok() || Documented(verified));
  absl::StatusOr<CheckpointManifest> m = ReadManifest(dir, 1, options);
  Require(m.ok() || Documented(m.status()));
  if (!m.ok()) {
    Require(!verified.ok());
    return 0;
  }
  for (const auto& [name, t] : m->tensors) {
    const absl::Status loaded = LoadTensor(dir, name, t, options);
    Require(loaded.ok() || Documented(loaded));
    if (verified.ok()) Require(loaded.ok());
  }
  return 0;
}
