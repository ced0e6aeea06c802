#include "store/kv_map.h"
#include "absl/strings/str_cat.h"
#include "trident/store.h"

namespace trident {

absl::Status ValidateKey(absl::string_view key) {
  if (key.empty()) return absl::InvalidArgumentError("store key is empty");
  if (key.size() > Store::kMaxKeyBytes) {
    return absl::InvalidArgumentError(absl::StrCat("store key of ", key.size(),
                                                   " bytes is over the limit of ",
                                                   Store::kMaxKeyBytes, " bytes"));
  }
  return absl::OkStatus();
}

absl::Status ValidateValue(absl::string_view value) {
  if (value.size() > Store::kMaxValueBytes) {
    return absl::InvalidArgumentError(absl::StrCat("store value of ", value.size(),
                                                   " bytes is over the limit of ",
                                                   Store::kMaxValueBytes, " bytes"));
  }
  return absl::OkStatus();
}

}  // namespace trident
