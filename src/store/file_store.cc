// FileStore: one file per key in a directory that every rank can see.
//
// A key's file is "k-" + the key percent-encoded (so '/' and binary bytes are safe); when that
// name would pass the file name limit, it is "h-" + a 128-bit hash of the key, and the file
// starts with the key itself (u32 length, bytes) so that a listing can recover it. Readers take
// no lock: every write goes to a temporary file that is renamed over the key's file, so a
// reader sees the old value or the new one, never a torn one. Writers serialise on flock() of
// a lock file, which makes Add and CompareSet atomic across processes; the lock is taken on a
// file description opened per call, so threads of one process exclude each other too.
#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "store/kv_map.h"
#include "trident/store.h"

namespace trident {
namespace {

using store_internal::MissingKeysError;
using store_internal::QuoteKey;

constexpr char kLockName[] = ".lock";
constexpr char kShortPrefix[] = "k-";
constexpr char kHashedPrefix[] = "h-";
// NAME_MAX is 255 on every Linux file system we care about; stay well under it.
constexpr size_t kMaxShortName = 200;

bool IsPlainByte(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_' || c == '.';
}

std::string PercentEncode(absl::string_view key) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(key.size());
  for (char c : key) {
    if (IsPlainByte(c)) {
      out.push_back(c);
    } else {
      auto b = static_cast<unsigned char>(c);
      out.push_back('%');
      out.push_back(kHex[b >> 4]);
      out.push_back(kHex[b & 15]);
    }
  }
  return out;
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::optional<std::string> PercentDecode(absl::string_view name) {
  std::string out;
  for (size_t i = 0; i < name.size(); ++i) {
    if (name[i] != '%') {
      out.push_back(name[i]);
      continue;
    }
    if (i + 2 >= name.size()) return std::nullopt;
    int hi = HexDigit(name[i + 1]), lo = HexDigit(name[i + 2]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out.push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return out;
}

// Stable across processes and builds (unlike absl::Hash, which is seeded per process).
uint64_t Hash64(absl::string_view s, uint64_t seed) {
  uint64_t h = 14695981039346656037ull ^ seed;
  for (char c : s) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ull;
  }
  // Final avalanche (MurmurHash3 fmix64), so that similar keys differ in every bit.
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 33;
  return h;
}

std::string FileName(absl::string_view key) {
  std::string name = absl::StrCat(kShortPrefix, PercentEncode(key));
  if (name.size() <= kMaxShortName) return name;
  return absl::StrCat(kHashedPrefix, absl::Hex(Hash64(key, 1), absl::kZeroPad16),
                      absl::Hex(Hash64(key, 2), absl::kZeroPad16));
}

bool IsHashedName(absl::string_view name) { return absl::StartsWith(name, kHashedPrefix); }

// File contents of a hashed name: [u32 key length, little-endian][key][value].
std::string HashedHeader(absl::string_view key) {
  std::string header(4, '\0');
  auto n = static_cast<uint32_t>(key.size());
  for (int i = 0; i < 4; ++i) header[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return absl::StrCat(header, key);
}

// Splits a hashed file's contents into key and value; nullopt if it is not one.
std::optional<std::pair<absl::string_view, absl::string_view>> SplitHashed(
    absl::string_view contents) {
  if (contents.size() < 4) return std::nullopt;
  uint32_t n = 0;
  for (int i = 0; i < 4; ++i)
    n |= static_cast<uint32_t>(static_cast<unsigned char>(contents[i])) << (8 * i);
  if (n > Store::kMaxKeyBytes || n > contents.size() - 4) return std::nullopt;
  return std::make_pair(contents.substr(4, n), contents.substr(4 + n));
}

// Sleeps between polls of a missing key: short at first (a peer is usually about to write it),
// longer later (an idle wait should cost little), never past the deadline.
class PollBackoff {
 public:
  // Returns false once the deadline has passed.
  bool Sleep(absl::Time deadline) {
    absl::Time now = absl::Now();
    if (now >= deadline) return false;
    absl::SleepFor(std::min(delay_, deadline - now));
    delay_ = std::min(delay_ * 2, absl::Milliseconds(20));
    return true;
  }

 private:
  absl::Duration delay_ = absl::Microseconds(500);
};

class FileStore final : public Store {
 public:
  FileStore(std::string dir, int dir_fd) : dir_(std::move(dir)), dir_fd_(dir_fd) {}
  ~FileStore() override { close(dir_fd_); }

  absl::Status Set(absl::string_view key, absl::string_view value, absl::Time deadline) override {
    RETURN_IF_ERROR(ValidateKey(key));
    RETURN_IF_ERROR(ValidateValue(value));
    ASSIGN_OR_RETURN(int lock_fd, Lock(deadline));
    absl::Cleanup unlock = [lock_fd] { close(lock_fd); };
    return WriteKey(key, value);
  }

  absl::StatusOr<std::string> Get(absl::string_view key, absl::Time deadline) override {
    RETURN_IF_ERROR(ValidateKey(key));
    PollBackoff backoff;
    while (true) {
      ASSIGN_OR_RETURN(std::optional<std::string> value, ReadKey(key));
      if (value.has_value()) return *std::move(value);
      if (!backoff.Sleep(deadline)) return MissingKeysError("Get", {std::string(key)});
    }
  }

  absl::StatusOr<std::string> TryGet(absl::string_view key, absl::Time) override {
    RETURN_IF_ERROR(ValidateKey(key));
    ASSIGN_OR_RETURN(std::optional<std::string> value, ReadKey(key));
    if (value.has_value()) return *std::move(value);
    return absl::NotFoundError(absl::StrCat("store key ", QuoteKey(key), " is not set"));
  }

  absl::StatusOr<int64_t> Add(absl::string_view key, int64_t delta, absl::Time deadline) override {
    RETURN_IF_ERROR(ValidateKey(key));
    ASSIGN_OR_RETURN(int lock_fd, Lock(deadline));
    absl::Cleanup unlock = [lock_fd] { close(lock_fd); };
    ASSIGN_OR_RETURN(std::optional<std::string> current, ReadKey(key));
    ASSIGN_OR_RETURN(int64_t sum, store_internal::AddToCounter(
                                      key, current.has_value() ? &*current : nullptr, delta));
    RETURN_IF_ERROR(WriteKey(key, absl::StrCat(sum)));
    return sum;
  }

  absl::StatusOr<std::string> CompareSet(absl::string_view key, absl::string_view expected,
                                         absl::string_view desired, absl::Time deadline) override {
    RETURN_IF_ERROR(ValidateKey(key));
    RETURN_IF_ERROR(ValidateValue(expected));
    RETURN_IF_ERROR(ValidateValue(desired));
    ASSIGN_OR_RETURN(int lock_fd, Lock(deadline));
    absl::Cleanup unlock = [lock_fd] { close(lock_fd); };
    ASSIGN_OR_RETURN(std::optional<std::string> current, ReadKey(key));
    std::string now = current.value_or("");
    if (now != expected) return now;
    RETURN_IF_ERROR(WriteKey(key, desired));
    return std::string(desired);
  }

  absl::Status Wait(absl::Span<const std::string> keys, absl::Time deadline) override {
    RETURN_IF_ERROR(store_internal::ValidateKeys(keys));
    std::vector<std::string> missing(keys.begin(), keys.end());
    PollBackoff backoff;
    while (true) {
      std::vector<std::string> still;
      for (const std::string& key : missing) {
        ASSIGN_OR_RETURN(std::optional<std::string> value, ReadKey(key));
        if (!value.has_value()) still.push_back(key);
      }
      missing = std::move(still);
      if (missing.empty()) return absl::OkStatus();
      if (!backoff.Sleep(deadline)) return MissingKeysError("Wait", missing);
    }
  }

  absl::StatusOr<bool> Delete(absl::string_view key, absl::Time deadline) override {
    RETURN_IF_ERROR(ValidateKey(key));
    ASSIGN_OR_RETURN(int lock_fd, Lock(deadline));
    absl::Cleanup unlock = [lock_fd] { close(lock_fd); };
    // For a hashed name, make sure the file is this key's and not a colliding one's.
    ASSIGN_OR_RETURN(std::optional<std::string> current, ReadKey(key));
    if (!current.has_value()) return false;
    std::string name = FileName(key);
    if (unlinkat(dir_fd_, name.c_str(), 0) != 0) {
      if (errno == ENOENT) return false;
      return ErrnoToStatus(errno, absl::StrCat("unlink(", dir_, "/", name, ")"));
    }
    return true;
  }

  absl::StatusOr<std::vector<std::string>> ListPrefix(absl::string_view prefix,
                                                      absl::Time) override {
    RETURN_IF_ERROR(store_internal::ValidatePrefix(prefix));
    // A fresh open file description: concurrent listings must not share a directory offset.
    int fd = openat(dir_fd_, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return ErrnoToStatus(errno, absl::StrCat("open(", dir_, ")"));
    DIR* d = fdopendir(fd);
    if (d == nullptr) {
      close(fd);
      return ErrnoToStatus(errno, absl::StrCat("fdopendir(", dir_, ")"));
    }
    absl::Cleanup close_dir = [d] { closedir(d); };
    std::vector<std::string> keys;
    while (true) {
      errno = 0;
      dirent* entry = readdir(d);
      if (entry == nullptr) {
        if (errno != 0) return ErrnoToStatus(errno, absl::StrCat("readdir(", dir_, ")"));
        break;
      }
      absl::string_view name = entry->d_name;
      std::optional<std::string> key;
      if (absl::StartsWith(name, kShortPrefix)) {
        // Only names this store would write: a foreign "k-a b" must not list a key that
        // reads from another file.
        key = PercentDecode(name.substr(strlen(kShortPrefix)));
        if (key.has_value() && FileName(*key) != name) key.reset();
      } else if (IsHashedName(name)) {
        ASSIGN_OR_RETURN(std::optional<std::string> contents, ReadFile(std::string(name)));
        if (!contents.has_value()) continue;  // deleted since readdir
        if (auto split = SplitHashed(*contents)) key = std::string(split->first);
      } else {
        continue;  // the lock file, temporary files, anything else a user left here
      }
      if (key.has_value() && ValidateKey(*key).ok() && absl::StartsWith(*key, prefix)) {
        keys.push_back(*std::move(key));
      }
    }
    std::sort(keys.begin(), keys.end());
    return keys;
  }

 private:
  // Takes the directory's write lock; the returned fd holds it until closed.
  absl::StatusOr<int> Lock(absl::Time deadline) {
    int fd = openat(dir_fd_, kLockName, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return ErrnoToStatus(errno, absl::StrCat("open(", dir_, "/", kLockName, ")"));
    PollBackoff backoff;
    while (flock(fd, LOCK_EX | LOCK_NB) != 0) {
      int err = errno;
      if (err == EINTR) continue;
      if (err != EWOULDBLOCK) {
        close(fd);
        return ErrnoToStatus(err, absl::StrCat("flock(", dir_, "/", kLockName, ")"));
      }
      if (!backoff.Sleep(deadline)) {
        close(fd);
        return absl::UnavailableError(
            absl::StrCat("file store ", dir_,
                         ": the write lock stayed held by another process until the "
                         "deadline"));
      }
    }
    return fd;
  }

  // The whole file, or nullopt if it does not exist.
  absl::StatusOr<std::optional<std::string>> ReadFile(const std::string& name) {
    int fd = openat(dir_fd_, name.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ENOENT) return std::nullopt;
      return ErrnoToStatus(errno, absl::StrCat("open(", dir_, "/", name, ")"));
    }
    absl::Cleanup close_fd = [fd] { close(fd); };
    struct stat st;
    if (fstat(fd, &st) != 0)
      return ErrnoToStatus(errno, absl::StrCat("fstat(", dir_, "/", name, ")"));
    std::string contents(static_cast<size_t>(st.st_size), '\0');
    size_t done = 0;
    while (done < contents.size()) {
      ssize_t n = read(fd, contents.data() + done, contents.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return ErrnoToStatus(errno, absl::StrCat("read(", dir_, "/", name, ")"));
      if (n == 0) break;  // files are replaced, never truncated in place; be safe anyway
      done += static_cast<size_t>(n);
    }
    contents.resize(done);
    return contents;
  }

  absl::StatusOr<std::optional<std::string>> ReadKey(absl::string_view key) {
    std::string name = FileName(key);
    ASSIGN_OR_RETURN(std::optional<std::string> contents, ReadFile(name));
    if (!contents.has_value() || !IsHashedName(name)) return contents;
    auto split = SplitHashed(*contents);
    if (!split.has_value()) {
      return absl::DataLossError(absl::StrCat("file store ", dir_, "/", name, " is corrupt"));
    }
    if (split->first != key) {
      return absl::InternalError(absl::StrCat("file store ", dir_, ": keys ", QuoteKey(key),
                                              " and ", QuoteKey(split->first),
                                              " hash to the same file ", name));
    }
    return std::string(split->second);
  }

  // Writes the key's file atomically (temporary file, then rename). Caller holds the lock.
  absl::Status WriteKey(absl::string_view key, absl::string_view value) {
    std::string name = FileName(key);
    std::string header = IsHashedName(name) ? HashedHeader(key) : std::string();
    std::string tmp =
        absl::StrCat(".tmp-", getpid(), "-", absl::Hex(nonce_), "-", next_tmp_.fetch_add(1));
    int fd = openat(dir_fd_, tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return ErrnoToStatus(errno, absl::StrCat("open(", dir_, "/", tmp, ")"));
    bool renamed = false;
    absl::Cleanup cleanup = [&] {
      if (fd >= 0) close(fd);
      if (!renamed) unlinkat(dir_fd_, tmp.c_str(), 0);
    };
    absl::string_view pieces[2] = {header, value};
    for (absl::string_view piece : pieces) {
      while (!piece.empty()) {
        ssize_t n = write(fd, piece.data(), piece.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return ErrnoToStatus(errno, absl::StrCat("write(", dir_, "/", tmp, ")"));
        piece.remove_prefix(static_cast<size_t>(n));
      }
    }
    int rc = close(fd);
    fd = -1;
    if (rc != 0) return ErrnoToStatus(errno, absl::StrCat("close(", dir_, "/", tmp, ")"));
    if (renameat(dir_fd_, tmp.c_str(), dir_fd_, name.c_str()) != 0) {
      return ErrnoToStatus(errno, absl::StrCat("rename(", dir_, "/", tmp, ", ", name, ")"));
    }
    renamed = true;
    return absl::OkStatus();
  }

  const std::string dir_;
  const int dir_fd_;
  // Temporary names must not clash across processes, even ones in other PID namespaces that
  // share the directory: pid + a random nonce + a counter.
  const uint64_t nonce_ = absl::Uniform<uint64_t>(absl::BitGen());
  std::atomic<uint64_t> next_tmp_{0};
};

}  // namespace

absl::StatusOr<std::unique_ptr<Store>> NewFileStore(const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("file store directory is empty");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return ErrnoToStatus(ec.value(), absl::StrCat("create_directories(", dir, ")"));
  }
  int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoToStatus(errno, absl::StrCat("open(", dir, ")"));
  return std::make_unique<FileStore>(dir, fd);
}

}  // namespace trident
