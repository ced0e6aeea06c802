// MemoryStore: a KvMap under one mutex; Get and Wait sleep on a condition variable that every
// mutation signals.
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"
#include "store/kv_map.h"
#include "trident/store.h"

namespace trident {
namespace {

using store_internal::KvMap;

class MemoryStore final : public Store {
 public:
  absl::Status Set(absl::string_view key, absl::string_view value, absl::Time) override {
    RETURN_IF_ERROR(ValidateKey(key));
    RETURN_IF_ERROR(ValidateValue(value));
    absl::MutexLock lock(&mu_);
    map_.Set(key, value);
    changed_.SignalAll();
    return absl::OkStatus();
  }

  absl::StatusOr<std::string> Get(absl::string_view key, absl::Time deadline) override {
    RETURN_IF_ERROR(ValidateKey(key));
    absl::MutexLock lock(&mu_);
    while (true) {
      if (const std::string* value = map_.Find(key)) return *value;
      if (changed_.WaitWithDeadline(&mu_, deadline)) {
        if (const std::string* value = map_.Find(key)) return *value;
        return store_internal::MissingKeysError("Get", {std::string(key)});
      }
    }
  }

  absl::StatusOr<std::string> TryGet(absl::string_view key, absl::Time) override {
    RETURN_IF_ERROR(ValidateKey(key));
    absl::MutexLock lock(&mu_);
    if (const std::string* value = map_.Find(key)) return *value;
    return absl::NotFoundError(
        absl::StrCat("store key ", store_internal::QuoteKey(key), " is not set"));
  }

  absl::StatusOr<int64_t> Add(absl::string_view key, int64_t delta, absl::Time) override {
    RETURN_IF_ERROR(ValidateKey(key));
    absl::MutexLock lock(&mu_);
    absl::StatusOr<int64_t> sum = map_.Add(key, delta);
    if (sum.ok()) changed_.SignalAll();
    return sum;
  }

  absl::StatusOr<std::string> CompareSet(absl::string_view key, absl::string_view expected,
                                         absl::string_view desired, absl::Time) override {
    RETURN_IF_ERROR(ValidateKey(key));
    RETURN_IF_ERROR(ValidateValue(expected));
    RETURN_IF_ERROR(ValidateValue(desired));
    absl::MutexLock lock(&mu_);
    std::string after = map_.CompareSet(key, expected, desired);
    changed_.SignalAll();
    return after;
  }

  absl::Status Wait(absl::Span<const std::string> keys, absl::Time deadline) override {
    RETURN_IF_ERROR(store_internal::ValidateKeys(keys));
    absl::MutexLock lock(&mu_);
    while (true) {
      std::vector<std::string> missing = map_.Missing(keys);
      if (missing.empty()) return absl::OkStatus();
      if (changed_.WaitWithDeadline(&mu_, deadline)) {
        missing = map_.Missing(keys);
        if (missing.empty()) return absl::OkStatus();
        return store_internal::MissingKeysError("Wait", missing);
      }
    }
  }

  absl::StatusOr<bool> Delete(absl::string_view key, absl::Time) override {
    RETURN_IF_ERROR(ValidateKey(key));
    absl::MutexLock lock(&mu_);
    return map_.Delete(key);
  }

  absl::StatusOr<std::vector<std::string>> ListPrefix(absl::string_view prefix,
                                                      absl::Time) override {
    RETURN_IF_ERROR(store_internal::ValidatePrefix(prefix));
    absl::MutexLock lock(&mu_);
    return map_.ListPrefix(prefix);
  }

 private:
  absl::Mutex mu_;
  KvMap map_ ABSL_GUARDED_BY(mu_);
  absl::CondVar changed_;  // signalled on every change that can make a key appear
};

}  // namespace

std::unique_ptr<Store> NewMemoryStore() { return std::make_unique<MemoryStore>(); }

}  // namespace trident
