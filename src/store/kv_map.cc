#include "store/kv_map.h"

#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "trident/store.h"

namespace trident::store_internal {

void KvMap::Set(absl::string_view key, absl::string_view value) {
  auto it = map_.find(key);
  if (it == map_.end()) {
    map_.emplace(std::string(key), std::string(value));
  } else {
    it->second.assign(value.data(), value.size());
  }
}

const std::string* KvMap::Find(absl::string_view key) const {
  auto it = map_.find(key);
  return it == map_.end() ? nullptr : &it->second;
}

absl::StatusOr<int64_t> KvMap::Add(absl::string_view key, int64_t delta) {
  absl::StatusOr<int64_t> sum = AddToCounter(key, Find(key), delta);
  if (sum.ok()) Set(key, absl::StrCat(*sum));
  return sum;
}

std::string KvMap::CompareSet(absl::string_view key, absl::string_view expected,
                              absl::string_view desired) {
  const std::string* current = Find(key);
  absl::string_view now = current == nullptr ? absl::string_view() : absl::string_view(*current);
  if (now != expected) return std::string(now);
  Set(key, desired);
  return std::string(desired);
}

bool KvMap::Delete(absl::string_view key) {
  auto it = map_.find(key);
  if (it == map_.end()) return false;
  map_.erase(it);
  return true;
}

std::vector<std::string> KvMap::ListPrefix(absl::string_view prefix) const {
  std::vector<std::string> keys;
  for (auto it = map_.lower_bound(prefix); it != map_.end(); ++it) {
    if (!absl::StartsWith(it->first, prefix)) break;
    keys.push_back(it->first);
  }
  return keys;
}

std::vector<std::string> KvMap::Missing(absl::Span<const std::string> keys) const {
  std::vector<std::string> missing;
  for (const std::string& key : keys) {
    if (Find(key) == nullptr) missing.push_back(key);
  }
  return missing;
}

absl::StatusOr<int64_t> AddToCounter(absl::string_view key, const std::string* current,
                                     int64_t delta) {
  int64_t value = 0;
  if (current != nullptr && !absl::SimpleAtoi(*current, &value)) {
    return absl::InvalidArgumentError(absl::StrCat("store Add: the value of key ", QuoteKey(key),
                                                   " is not an integer: ", QuoteKey(*current)));
  }
  int64_t sum = 0;
  if (__builtin_add_overflow(value, delta, &sum)) {
    return absl::InvalidArgumentError(absl::StrCat("store Add: ", value, " + ", delta,
                                                   " overflows int64 at key ", QuoteKey(key)));
  }
  return sum;
}

absl::Status MissingKeysError(absl::string_view op, absl::Span<const std::string> missing) {
  constexpr size_t kMaxNamed = 8;
  std::string names;
  for (size_t i = 0; i < missing.size() && i < kMaxNamed; ++i) {
    absl::StrAppend(&names, i == 0 ? "" : ", ", QuoteKey(missing[i]));
  }
  if (missing.size() > kMaxNamed) {
    absl::StrAppend(&names, " and ", missing.size() - kMaxNamed, " more");
  }
  return absl::DeadlineExceededError(absl::StrCat("store ", op,
                                                  ": deadline passed while waiting for ",
                                                  missing.size() == 1 ? "key " : "keys ", names));
}

std::string QuoteKey(absl::string_view key) {
  constexpr size_t kMaxShown = 160;
  if (key.size() <= kMaxShown) return absl::StrCat("'", absl::CHexEscape(key), "'");
  return absl::StrCat("'", absl::CHexEscape(key.substr(0, kMaxShown)), "'... (", key.size(),
                      " bytes)");
}

absl::Status ValidateKeys(absl::Span<const std::string> keys) {
  for (const std::string& key : keys) {
    absl::Status status = ValidateKey(key);
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::Status ValidatePrefix(absl::string_view prefix) {
  if (prefix.size() > Store::kMaxKeyBytes) {
    return absl::InvalidArgumentError(absl::StrCat("store prefix of ", prefix.size(),
                                                   " bytes is over the key limit of ",
                                                   Store::kMaxKeyBytes, " bytes"));
  }
  return absl::OkStatus();
}

}  // namespace trident::store_internal
