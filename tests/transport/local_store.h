// Test-local stores for the transport tests: LocalMemoryStore (ranks as threads) and DirStore
// (forked processes meeting in a directory). They stand in until the store layer's
// NewMemoryStore / NewFileStore land; only what the rendezvous needs is exercised.
#ifndef TRIDENT_TESTS_TRANSPORT_LOCAL_STORE_H_
#define TRIDENT_TESTS_TRANSPORT_LOCAL_STORE_H_

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "common/backoff.h"
#include "trident/store.h"

namespace trident::testing {

class LocalMemoryStore : public Store {
 public:
  absl::Status Set(absl::string_view key, absl::string_view value, absl::Time) override {
    absl::MutexLock lock(&mu_);
    map_[std::string(key)] = std::string(value);
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> Get(absl::string_view key, absl::Time deadline) override {
    absl::MutexLock lock(&mu_);
    std::string k(key);
    auto present = [&] { return map_.count(k) > 0; };
    if (!mu_.AwaitWithDeadline(absl::Condition(&present), deadline)) {
      return absl::DeadlineExceededError(absl::StrCat("key ", k, " did not appear"));
    }
    return map_[k];
  }
  absl::StatusOr<std::string> TryGet(absl::string_view key, absl::Time) override {
    absl::MutexLock lock(&mu_);
    auto it = map_.find(std::string(key));
    if (it == map_.end()) return absl::NotFoundError(std::string(key));
    return it->second;
  }
  absl::StatusOr<int64_t> Add(absl::string_view key, int64_t delta, absl::Time) override {
    absl::MutexLock lock(&mu_);
    std::string& value = map_[std::string(key)];
    int64_t n = value.empty() ? 0 : std::stoll(value);
    n += delta;
    value = std::to_string(n);
    return n;
  }
  absl::StatusOr<std::string> CompareSet(absl::string_view key, absl::string_view expected,
                                         absl::string_view desired, absl::Time) override {
    absl::MutexLock lock(&mu_);
    auto it = map_.find(std::string(key));
    std::string current = it == map_.end() ? "" : it->second;
    if (current == expected) map_[std::string(key)] = std::string(desired);
    return map_[std::string(key)];
  }
  absl::Status Wait(absl::Span<const std::string> keys, absl::Time deadline) override {
    for (const std::string& key : keys) {
      absl::StatusOr<std::string> value = Get(key, deadline);
      if (!value.ok()) return value.status();
    }
    return absl::OkStatus();
  }
  absl::StatusOr<bool> Delete(absl::string_view key, absl::Time) override {
    absl::MutexLock lock(&mu_);
    return map_.erase(std::string(key)) > 0;
  }
  absl::StatusOr<std::vector<std::string>> ListPrefix(absl::string_view prefix,
                                                      absl::Time) override {
    absl::MutexLock lock(&mu_);
    std::vector<std::string> keys;
    for (const auto& [k, v] : map_) {
      if (absl::string_view(k).substr(0, prefix.size()) == prefix) keys.push_back(k);
    }
    return keys;
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, std::string> map_ ABSL_GUARDED_BY(mu_);
};

// Keys are files in a directory (key bytes hex-encoded); Set writes a temporary file and
// renames it, Get polls with a backoff until the deadline. Only Set and Get are supported.
class DirStore : public Store {
 public:
  explicit DirStore(std::string dir) : dir_(std::move(dir)) { mkdir(dir_.c_str(), 0700); }

  absl::Status Set(absl::string_view key, absl::string_view value, absl::Time) override {
    std::string path = Path(key);
    std::string tmp = absl::StrCat(path, ".tmp.", getpid());
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      out.write(value.data(), static_cast<std::streamsize>(value.size()));
      if (!out) return absl::InternalError(absl::StrCat("writing ", tmp));
    }
    if (rename(tmp.c_str(), path.c_str()) != 0) {
      return absl::InternalError(absl::StrCat("rename to ", path, ": errno ", errno));
    }
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> Get(absl::string_view key, absl::Time deadline) override {
    Backoff backoff;
    for (;;) {
      absl::StatusOr<std::string> value = TryGet(key, deadline);
      if (value.ok() || !absl::IsNotFound(value.status())) return value;
      if (absl::Now() >= deadline) {
        return absl::DeadlineExceededError(absl::StrCat("key ", key, " did not appear"));
      }
      backoff.Pause();
    }
  }
  absl::StatusOr<std::string> TryGet(absl::string_view key, absl::Time) override {
    std::ifstream in(Path(key), std::ios::binary);
    if (!in) return absl::NotFoundError(std::string(key));
    std::ostringstream data;
    data << in.rdbuf();
    return data.str();
  }
  absl::StatusOr<int64_t> Add(absl::string_view, int64_t, absl::Time) override {
    return absl::UnimplementedError("DirStore::Add");
  }
  absl::StatusOr<std::string> CompareSet(absl::string_view, absl::string_view,
                                         absl::string_view, absl::Time) override {
    return absl::UnimplementedError("DirStore::CompareSet");
  }
  absl::Status Wait(absl::Span<const std::string>, absl::Time) override {
    return absl::UnimplementedError("DirStore::Wait");
  }
  absl::StatusOr<bool> Delete(absl::string_view, absl::Time) override {
    return absl::UnimplementedError("DirStore::Delete");
  }
  absl::StatusOr<std::vector<std::string>> ListPrefix(absl::string_view, absl::Time) override {
    return absl::UnimplementedError("DirStore::ListPrefix");
  }

 private:
  std::string Path(absl::string_view key) const {
    std::string name;
    for (unsigned char c : key) absl::StrAppend(&name, absl::Hex(c, absl::kZeroPad2));
    return absl::StrCat(dir_, "/", name);
  }
  std::string dir_;
};

}  // namespace trident::testing

#endif  // TRIDENT_TESTS_TRANSPORT_LOCAL_STORE_H_
