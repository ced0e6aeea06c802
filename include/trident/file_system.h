// trident/file_system.h: the file system the checkpoint engine and loader go through
// (CheckpointOptions::file_system, ReadOptions::file_system). Every file they touch is opened,
// written, synced and renamed through a FileSystem, so a caller can put checkpoints on
// storage of their own, or wrap the real one to count, delay or fail calls (as LevelDB's Env):
//
//   class FullDisk : public trident::FileSystemWrapper {
//    public:
//     FullDisk() : FileSystemWrapper(trident::PosixFileSystem()) {}
//     absl::StatusOr<std::unique_ptr<trident::WritableFile>> NewWritableFile(
//         const std::string& path, bool direct) override {
//       return absl::ResourceExhaustedError("ENOSPC (test)");
//     }
//   };
//
// Implementations must be thread-safe: the engine calls them from its background threads.
// errno is converted once, in PosixFileSystem, with the call and the path in the message.
#ifndef TRIDENT_FILE_SYSTEM_H_
#define TRIDENT_FILE_SYSTEM_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace trident {

// O_DIRECT needs buffers, offsets and lengths aligned to this.
inline constexpr size_t kDirectIoAlignment = 4096;

class WritableFile {
 public:
  virtual ~WritableFile() = default;
  // Whether the file was opened with O_DIRECT: then every Write's buffer, offset and size
  // must be multiples of kDirectIoAlignment.
  virtual bool direct() const = 0;
  // Writes all n bytes at offset (retrying short writes).
  virtual absl::Status Write(uint64_t offset, const void* data, size_t n) = 0;
  virtual absl::Status Truncate(uint64_t size) = 0;
  virtual absl::Status Sync() = 0;
  virtual absl::Status Close() = 0;
};

class ReadableFile {
 public:
  virtual ~ReadableFile() = default;
  // Reads up to n bytes at offset; fewer only at the end of the file.
  virtual absl::StatusOr<size_t> Read(uint64_t offset, void* data, size_t n) = 0;
  virtual absl::StatusOr<uint64_t> Size() = 0;
};

class FileSystem {
 public:
  virtual ~FileSystem() = default;
  // Creates or truncates. `direct` asks for O_DIRECT; a file system that refuses it gives a
  // buffered file (check WritableFile::direct()).
  virtual absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path,
                                                                        bool direct) = 0;
  virtual absl::StatusOr<std::unique_ptr<ReadableFile>> OpenForRead(const std::string& path) = 0;
  // Creates one directory; OK if it exists.
  virtual absl::Status CreateDir(const std::string& path) = 0;
  // fsync of a directory, so that entries created or renamed in it are durable.
  virtual absl::Status SyncDir(const std::string& path) = 0;
  // rename(2): atomic; replaces a file, or an empty directory.
  virtual absl::Status Rename(const std::string& from, const std::string& to) = 0;
  // Swaps two existing entries atomically (renameat2 RENAME_EXCHANGE). kUnimplemented where
  // the file system (or this implementation) cannot; callers then fall back to two renames.
  virtual absl::Status Exchange(const std::string& /*a*/, const std::string& /*b*/) {
    return absl::UnimplementedError("Exchange is not supported by this file system");
  }
  // Removes a file or a directory tree; OK if absent.
  virtual absl::Status RemoveAll(const std::string& path) = 0;
  // Names in a directory (without "." and ".."); kNotFound if it does not exist.
  virtual absl::StatusOr<std::vector<std::string>> ListDir(const std::string& path) = 0;
  virtual bool IsDirectory(const std::string& path) = 0;
  virtual bool FileExists(const std::string& path) = 0;
};

// The real file system (POSIX calls; O_DIRECT where the file system allows it).
std::shared_ptr<FileSystem> PosixFileSystem();

// Forwards every call to `target`: derive from it and override what you change.
class FileSystemWrapper : public FileSystem {
 public:
  explicit FileSystemWrapper(std::shared_ptr<FileSystem> target) : target_(std::move(target)) {}
  FileSystem& target() const { return *target_; }

  absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path,
                                                                bool direct) override {
    return target_->NewWritableFile(path, direct);
  }
  absl::StatusOr<std::unique_ptr<ReadableFile>> OpenForRead(const std::string& path) override {
    return target_->OpenForRead(path);
  }
  absl::Status CreateDir(const std::string& path) override { return target_->CreateDir(path); }
  absl::Status SyncDir(const std::string& path) override { return target_->SyncDir(path); }
  absl::Status Rename(const std::string& from, const std::string& to) override {
    return target_->Rename(from, to);
  }
  absl::Status Exchange(const std::string& a, const std::string& b) override {
    return target_->Exchange(a, b);
  }
  absl::Status RemoveAll(const std::string& path) override { return target_->RemoveAll(path); }
  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& path) override {
    return target_->ListDir(path);
  }
  bool IsDirectory(const std::string& path) override { return target_->IsDirectory(path); }
  bool FileExists(const std::string& path) override { return target_->FileExists(path); }

 private:
  std::shared_ptr<FileSystem> target_;
};

}  // namespace trident

#endif  // TRIDENT_FILE_SYSTEM_H_
