// Internals shared by the store backends: the key-value semantics of store.h over an ordered
// map (MemoryStore and TcpStoreServer keep their data in one), and the error messages that
// every backend gives for the same failure.
//
// KvMap is not thread-safe: MemoryStore guards it with a mutex, the server owns it on its thread.
#ifndef TRIDENT_STORE_KV_MAP_H_
#define TRIDENT_STORE_KV_MAP_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace trident::store_internal {

class KvMap {
 public:
  void Set(absl::string_view key, absl::string_view value);
  // nullptr when absent. The pointer is valid until the next mutation.
  const std::string* Find(absl::string_view key) const;
  absl::StatusOr<int64_t> Add(absl::string_view key, int64_t delta);
  // Returns the value afterwards ("" when the key stays absent).
  std::string CompareSet(absl::string_view key, absl::string_view expected,
                         absl::string_view desired);
  bool Delete(absl::string_view key);
  std::vector<std::string> ListPrefix(absl::string_view prefix) const;
  // The keys of `keys` that are absent, in the given order.
  std::vector<std::string> Missing(absl::Span<const std::string> keys) const;

 private:
  // std::less<> lets lookups take a string_view without building a std::string.
  std::map<std::string, std::string, std::less<>> map_;
};

// The counter semantics of Store::Add: `current` is the stored value (nullptr when absent,
// counted as 0). Returns the new value, or kInvalidArgument for a non-integer value or an
// overflow.
absl::StatusOr<int64_t> AddToCounter(absl::string_view key, const std::string* current,
                                     int64_t delta);

// kDeadlineExceeded from Get/Wait, naming the keys still missing (escaped and clipped, so
// binary or 4 KiB keys keep the message readable).
absl::Status MissingKeysError(absl::string_view op, absl::Span<const std::string> missing);

// A key as it appears in messages: quoted, non-printable bytes escaped, clipped.
std::string QuoteKey(absl::string_view key);

// Validates every key of a Wait, and a ListPrefix prefix (which may be empty).
absl::Status ValidateKeys(absl::Span<const std::string> keys);
absl::Status ValidatePrefix(absl::string_view prefix);

}  // namespace trident::store_internal

namespace trident {
// Checks a key and value against Store's limits; shared by every implementation.
absl::Status ValidateKey(absl::string_view key);
absl::Status ValidateValue(absl::string_view value);
}  // namespace trident

#endif  // TRIDENT_STORE_KV_MAP_H_
