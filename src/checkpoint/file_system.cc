#include "checkpoint/file_system.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace trident {
namespace {

absl::Status Errno(absl::string_view call, const std::string& path) {
  return ErrnoToStatus(errno, absl::StrCat(call, "(", path, ")"));
}

class PosixWritableFile : public WritableFile {
 public:
  PosixWritableFile(std::string path, int fd, bool direct)
      : path_(std::move(path)), fd_(fd), direct_(direct) {}
  ~PosixWritableFile() override {
    if (fd_ >= 0) ::close(fd_);
  }

  bool direct() const override { return direct_; }

  absl::Status Write(uint64_t offset, const void* data, size_t n) override {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      ssize_t w = ::pwrite(fd_, p, n, static_cast<off_t>(offset));
      if (w < 0) {
        if (errno == EINTR) continue;
        return Errno("write", path_);
      }
      if (w == 0) return ErrnoToStatus(EIO, absl::StrCat("write(", path_, ") wrote nothing"));
      p += w;
      n -= static_cast<size_t>(w);
      offset += static_cast<uint64_t>(w);
    }
    return absl::OkStatus();
  }

  absl::Status Truncate(uint64_t size) override {
    if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) return Errno("ftruncate", path_);
    return absl::OkStatus();
  }

  absl::Status Sync() override {
    if (::fsync(fd_) != 0) return Errno("fsync", path_);
    return absl::OkStatus();
  }

  absl::Status Close() override {
    int fd = fd_;
    fd_ = -1;
    if (fd >= 0 && ::close(fd) != 0) return Errno("close", path_);
    return absl::OkStatus();
  }

 private:
  std::string path_;
  int fd_;
  bool direct_;
};

class PosixReadableFile : public ReadableFile {
 public:
  PosixReadableFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  ~PosixReadableFile() override { ::close(fd_); }

  absl::StatusOr<size_t> Read(uint64_t offset, void* data, size_t n) override {
    char* p = static_cast<char*>(data);
    size_t done = 0;
    while (done < n) {
      ssize_t r = ::pread(fd_, p + done, n - done, static_cast<off_t>(offset + done));
      if (r < 0) {
        if (errno == EINTR) continue;
        return Errno("read", path_);
      }
      if (r == 0) break;
      done += static_cast<size_t>(r);
    }
    return done;
  }

  absl::StatusOr<uint64_t> Size() override {
    struct stat st;
    if (::fstat(fd_, &st) != 0) return Errno("fstat", path_);
    return static_cast<uint64_t>(st.st_size);
  }

 private:
  std::string path_;
  int fd_;
};

class PosixFs : public FileSystem {
 public:
  absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path,
                                                                bool direct) override {
    const int flags = O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC;
    if (direct) {
      int fd = ::open(path.c_str(), flags | O_DIRECT, 0644);
      if (fd >= 0) return std::make_unique<PosixWritableFile>(path, fd, true);
      // tmpfs and some network file systems refuse O_DIRECT: write through the page cache.
      if (errno != EINVAL) return Errno("open", path);
    }
    int fd = ::open(path.c_str(), flags, 0644);
    if (fd < 0) return Errno("open", path);
    return std::make_unique<PosixWritableFile>(path, fd, false);
  }

  absl::StatusOr<std::unique_ptr<ReadableFile>> OpenForRead(const std::string& path) override {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return Errno("open", path);
    return std::make_unique<PosixReadableFile>(path, fd);
  }

  absl::Status CreateDir(const std::string& path) override {
    if (::mkdir(path.c_str(), 0755) == 0 || errno == EEXIST) return absl::OkStatus();
    return Errno("mkdir", path);
  }

  absl::Status SyncDir(const std::string& path) override {
    int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return Errno("open", path);
    int rc = ::fsync(fd);
    int err = errno;
    ::close(fd);
    if (rc != 0) return ErrnoToStatus(err, absl::StrCat("fsync(", path, ")"));
    return absl::OkStatus();
  }

  absl::Status Rename(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0) {
      return ErrnoToStatus(errno, absl::StrCat("rename(", from, ", ", to, ")"));
    }
    return absl::OkStatus();
  }

  absl::Status Exchange(const std::string& a, const std::string& b) override {
    if (::renameat2(AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), RENAME_EXCHANGE) == 0) {
      return absl::OkStatus();
    }
    if (errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP) {
      return absl::UnimplementedError(absl::StrCat("renameat2(RENAME_EXCHANGE) of ", a, " and ",
                                                   b, ": not supported here (errno ", errno, ")"));
    }
    return ErrnoToStatus(errno, absl::StrCat("renameat2(", a, ", ", b, ", RENAME_EXCHANGE)"));
  }

  absl::Status RemoveAll(const std::string& path) override {
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0) {
      if (errno == ENOENT) return absl::OkStatus();
      return Errno("lstat", path);
    }
    if (S_ISDIR(st.st_mode)) {
      ASSIGN_OR_RETURN(std::vector<std::string> names, ListDir(path));
      for (const std::string& name : names) RETURN_IF_ERROR(RemoveAll(JoinPath(path, name)));
      if (::rmdir(path.c_str()) != 0 && errno != ENOENT) return Errno("rmdir", path);
      return absl::OkStatus();
    }
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) return Errno("unlink", path);
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& path) override {
    DIR* d = ::opendir(path.c_str());
    if (d == nullptr) return Errno("opendir", path);
    std::vector<std::string> out;
    errno = 0;
    while (struct dirent* e = ::readdir(d)) {
      std::string name = e->d_name;
      if (name != "." && name != "..") out.push_back(std::move(name));
    }
    int err = errno;
    ::closedir(d);
    if (err != 0) return ErrnoToStatus(err, absl::StrCat("readdir(", path, ")"));
    return out;
  }

  bool IsDirectory(const std::string& path) override {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
  }

  bool FileExists(const std::string& path) override {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0;
  }
};

}  // namespace

std::shared_ptr<FileSystem> PosixFileSystem() {
  static const std::shared_ptr<FileSystem> fs = std::make_shared<PosixFs>();
  return fs;
}

absl::StatusOr<std::string> ReadFileToString(FileSystem& fs, const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> file, fs.OpenForRead(path));
  ASSIGN_OR_RETURN(uint64_t size, file->Size());
  std::string out(size, '\0');
  ASSIGN_OR_RETURN(size_t n, file->Read(0, out.data(), out.size()));
  out.resize(n);
  return out;
}

absl::StatusOr<std::string> ReadFileToString(FileSystem& fs, const std::string& path,
                                             uint64_t max_bytes) {
  ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> file, fs.OpenForRead(path));
  ASSIGN_OR_RETURN(uint64_t size, file->Size());
  if (size > max_bytes) {
    return absl::DataLossError(
        absl::StrCat(path, " has ", size, " bytes, over the limit of ", max_bytes));
  }
  std::string out(size, '\0');
  ASSIGN_OR_RETURN(size_t n, file->Read(0, out.data(), out.size()));
  out.resize(n);
  return out;
}

absl::Status WriteFileAndSync(FileSystem& fs, const std::string& path, absl::string_view data) {
  ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> file, fs.NewWritableFile(path, false));
  RETURN_IF_ERROR(file->Write(0, data.data(), data.size()));
  RETURN_IF_ERROR(file->Sync());
  return file->Close();
}

std::string JoinPath(absl::string_view a, absl::string_view b) {
  if (a.empty()) return std::string(b);
  if (a.back() == '/') return absl::StrCat(a, b);
  return absl::StrCat(a, "/", b);
}

}  // namespace trident
