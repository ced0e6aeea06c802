// The file-system seam of the checkpoint layer: every file the engine and the loader touch
// goes through a FileSystem, so tests inject faults (ENOSPC, short files) without a real full
// disk. PosixFileSystem() is the real one; errno is converted once, here, with the call and
// the path in the message.
#ifndef TRIDENT_CHECKPOINT_FILE_SYSTEM_H_
#define TRIDENT_CHECKPOINT_FILE_SYSTEM_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

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
  virtual absl::Status Exchange(const std::string& a, const std::string& b) {
    return absl::UnimplementedError("Exchange is not supported by this file system");
  }
  // Removes a file or a directory tree; OK if absent.
  virtual absl::Status RemoveAll(const std::string& path) = 0;
  // Names in a directory (without "." and ".."); kNotFound if it does not exist.
  virtual absl::StatusOr<std::vector<std::string>> ListDir(const std::string& path) = 0;
  virtual bool IsDirectory(const std::string& path) = 0;
  virtual bool FileExists(const std::string& path) = 0;
};

std::shared_ptr<FileSystem> PosixFileSystem();

// Helpers over any FileSystem.
absl::StatusOr<std::string> ReadFileToString(FileSystem& fs, const std::string& path);
// The same for a file that may hold anything (a checkpoint's): kDataLoss naming the file when
// it is larger than max_bytes, so that its size never sizes an allocation.
absl::StatusOr<std::string> ReadFileToString(FileSystem& fs, const std::string& path,
                                             uint64_t max_bytes);
// Writes a small file and fsyncs it (buffered).
absl::Status WriteFileAndSync(FileSystem& fs, const std::string& path, absl::string_view data);
std::string JoinPath(absl::string_view a, absl::string_view b);

}  // namespace trident

#endif  // TRIDENT_CHECKPOINT_FILE_SYSTEM_H_
