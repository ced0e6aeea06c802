#include "health/failure_watcher.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "health/membership.h"

namespace trident::health {

std::optional<std::string> FailureWatcher::EpochOver(int64_t epoch, absl::Time deadline) const {
  const std::string prefix = absl::StrCat(EpochPrefix(epoch), "job/failed/");
  absl::StatusOr<std::vector<std::string>> keys = store_->ListPrefix(prefix, deadline);
  if (keys.ok() && !keys->empty()) {
    absl::StatusOr<std::string> cause = store_->TryGet(keys->front(), deadline);
    return cause.ok() ? *cause : keys->front();
  }
  absl::StatusOr<std::string> current = store_->TryGet(kEpochKey, deadline);
  int64_t now_epoch = 1;
  if (current.ok() && absl::SimpleAtoi(*current, &now_epoch) && now_epoch > epoch) {
    return absl::StrCat("the job moved on to epoch ", now_epoch);
  }
  return std::nullopt;
}

std::optional<std::string> FailureWatcher::FailureOf(int64_t epoch, int rank,
                                                     absl::Time deadline) const {
  absl::StatusOr<std::string> cause = store_->TryGet(FailedKey(epoch, rank), deadline);
  if (!cause.ok()) return std::nullopt;
  return *cause;
}

absl::Status FailureWatcher::ExplainPeerError(int64_t epoch, int rank, int reporter,
                                              const absl::Status& error,
                                              absl::Duration wait) const {
  const absl::Time start = absl::Now();
  // Best effort: a store that does not answer leaves the verdict to the heartbeats.
  (void)store_->Set(SuspectKey(epoch, rank, reporter), error.message(),
                    start + absl::Milliseconds(500));
  const absl::Time give_up = start + wait;
  do {
    if (std::optional<std::string> cause =
            FailureOf(epoch, rank, std::max(give_up, absl::Now() + absl::Milliseconds(200)));
        cause.has_value()) {
      return absl::AbortedError(
          absl::StrCat(*cause, "; the transport saw: ", error.message()));
    }
    absl::SleepFor(absl::Milliseconds(20));
  } while (absl::Now() < give_up);
  return error;
}

}  // namespace trident::health
