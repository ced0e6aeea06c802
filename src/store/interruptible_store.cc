#include "store/interruptible_store.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "common/check.h"
#include "common/status_macros.h"

namespace trident {
namespace {

class InterruptibleStore final : public Store {
 public:
  InterruptibleStore(std::shared_ptr<Store> base, std::function<absl::Status()> interrupt,
                     absl::Duration slice)
      : base_(std::move(base)), interrupt_(std::move(interrupt)), slice_(slice) {
    TRIDENT_CHECK(base_ != nullptr && interrupt_ != nullptr && slice_ > absl::ZeroDuration())
        << "NewInterruptibleStore needs a base store, an interrupt check and a positive slice";
  }

  absl::Status Set(absl::string_view key, absl::string_view value, absl::Time deadline) override {
    return base_->Set(key, value, deadline);
  }
  absl::StatusOr<std::string> Get(absl::string_view key, absl::Time deadline) override {
    return Sliced<std::string>(deadline, [&](absl::Time d) { return base_->Get(key, d); });
  }
  absl::StatusOr<std::string> TryGet(absl::string_view key, absl::Time deadline) override {
    return base_->TryGet(key, deadline);
  }
  absl::StatusOr<int64_t> Add(absl::string_view key, int64_t delta, absl::Time deadline) override {
    return base_->Add(key, delta, deadline);
  }
  absl::StatusOr<std::string> CompareSet(absl::string_view key, absl::string_view expected,
                                         absl::string_view desired, absl::Time deadline) override {
    return base_->CompareSet(key, expected, desired, deadline);
  }
  absl::Status Wait(absl::Span<const std::string> keys, absl::Time deadline) override {
    return Sliced<bool>(deadline, [&](absl::Time d) -> absl::StatusOr<bool> {
             RETURN_IF_ERROR(base_->Wait(keys, d));
             return true;
           })
        .status();
  }
  absl::StatusOr<bool> Delete(absl::string_view key, absl::Time deadline) override {
    return base_->Delete(key, deadline);
  }
  absl::StatusOr<std::vector<std::string>> ListPrefix(absl::string_view prefix,
                                                      absl::Time deadline) override {
    return base_->ListPrefix(prefix, deadline);
  }

 private:
  // Runs a blocking call in slices of slice_, asking interrupt_ between them (a call that
  // returns within its first slice costs nothing more); a slice that ends before the
  // caller's deadline is not the caller's timeout.
  template <typename T, typename Fn>
  absl::StatusOr<T> Sliced(absl::Time deadline, Fn call) {
    while (true) {
      const absl::Time until = std::min(deadline, absl::Now() + slice_);
      absl::StatusOr<T> result = call(until);
      if (!absl::IsDeadlineExceeded(result.status()) || until >= deadline) return result;
      RETURN_IF_ERROR(interrupt_());
    }
  }

  std::shared_ptr<Store> base_;
  std::function<absl::Status()> interrupt_;
  absl::Duration slice_;
};

}  // namespace

std::unique_ptr<Store> NewInterruptibleStore(std::shared_ptr<Store> base,
                                             std::function<absl::Status()> interrupt,
                                             absl::Duration slice) {
  return std::make_unique<InterruptibleStore>(std::move(base), std::move(interrupt), slice);
}

}  // namespace trident
