// PrefixStore: namespaces a shared base store (e.g. per epoch: "epoch/3/").
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/status_macros.h"
#include "store/kv_map.h"
#include "trident/store.h"

namespace trident {
namespace {

class PrefixStore final : public Store {
 public:
  PrefixStore(std::string prefix, std::shared_ptr<Store> base)
      : prefix_(std::move(prefix)), base_(std::move(base)) {
    TRIDENT_CHECK(base_ != nullptr) << "NewPrefixStore(\"" << prefix_ << "\") with a null base";
  }

  // The caller's key is checked on its own first: "" is invalid even though prefix_ + "" is not.
  absl::Status Set(absl::string_view key, absl::string_view value, absl::Time deadline) override {
    RETURN_IF_ERROR(ValidateKey(key));
    return base_->Set(Full(key), value, deadline);
  }
  absl::StatusOr<std::string> Get(absl::string_view key, absl::Time deadline) override {
    RETURN_IF_ERROR(ValidateKey(key));
    return base_->Get(Full(key), deadline);
  }
  absl::StatusOr<std::string> TryGet(absl::string_view key, absl::Time deadline) override {
    RETURN_IF_ERROR(ValidateKey(key));
    return base_->TryGet(Full(key), deadline);
  }
  absl::StatusOr<int64_t> Add(absl::string_view key, int64_t delta, absl::Time deadline) override {
    RETURN_IF_ERROR(ValidateKey(key));
    return base_->Add(Full(key), delta, deadline);
  }
  absl::StatusOr<std::string> CompareSet(absl::string_view key, absl::string_view expected,
                                         absl::string_view desired, absl::Time deadline) override {
    RETURN_IF_ERROR(ValidateKey(key));
    return base_->CompareSet(Full(key), expected, desired, deadline);
  }
  absl::Status Wait(absl::Span<const std::string> keys, absl::Time deadline) override {
    RETURN_IF_ERROR(store_internal::ValidateKeys(keys));
    std::vector<std::string> full;
    full.reserve(keys.size());
    for (const std::string& key : keys) full.push_back(Full(key));
    return base_->Wait(full, deadline);
  }
  absl::StatusOr<bool> Delete(absl::string_view key, absl::Time deadline) override {
    RETURN_IF_ERROR(ValidateKey(key));
    return base_->Delete(Full(key), deadline);
  }
  absl::StatusOr<std::vector<std::string>> ListPrefix(absl::string_view prefix,
                                                      absl::Time deadline) override {
    RETURN_IF_ERROR(store_internal::ValidatePrefix(prefix));
    ASSIGN_OR_RETURN(std::vector<std::string> keys, base_->ListPrefix(Full(prefix), deadline));
    for (std::string& key : keys) {
      TRIDENT_CHECK(absl::StartsWith(key, prefix_)) << "base store listed a key outside prefix";
      key.erase(0, prefix_.size());
    }
    return keys;  // stripping a common prefix keeps the order
  }

 private:
  std::string Full(absl::string_view key) const { return absl::StrCat(prefix_, key); }

  const std::string prefix_;
  const std::shared_ptr<Store> base_;
};

}  // namespace

std::unique_ptr<Store> NewPrefixStore(std::string prefix, std::shared_ptr<Store> base) {
  return std::make_unique<PrefixStore>(std::move(prefix), std::move(base));
}

}  // namespace trident
