#include "runtime/flight_dumps.h"

#include <signal.h>

#include <atomic>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "comm/flight_recorder.h"
#include "common/logging.h"

namespace trident::runtime_internal {
namespace {

constexpr absl::Duration kRequestCheckEvery = absl::Milliseconds(100);
constexpr absl::Duration kStoreCall = absl::Seconds(2);

std::atomic<bool> dump_signalled{false};

extern "C" void OnDumpSignal(int) { dump_signalled.store(true, std::memory_order_relaxed); }

}  // namespace

DumpResponder::DumpResponder(std::shared_ptr<Store> store, std::string member)
    : store_(std::move(store)), member_(std::move(member)) {
  struct sigaction old {};
  if (sigaction(SIGUSR1, nullptr, &old) == 0 && !(old.sa_flags & SA_SIGINFO) &&
      old.sa_handler == SIG_DFL) {
    struct sigaction sa {};
    sa.sa_handler = OnDumpSignal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    took_sigusr1_ = sigaction(SIGUSR1, &sa, nullptr) == 0;
  }
  // A request older than this process is still answered once: its ranks may be asked again.
  fr::SetDumpObserver([this](const std::string& json) {
    absl::MutexLock lock(&mu_);
    pending_ = json;
  });
}

DumpResponder::~DumpResponder() {
  fr::SetDumpObserver(nullptr);
  if (took_sigusr1_) {
    struct sigaction now {};
    if (sigaction(SIGUSR1, nullptr, &now) == 0 && now.sa_handler == OnDumpSignal) {
      signal(SIGUSR1, SIG_DFL);
    }
  }
}

void DumpResponder::Poll() {
  if (dump_signalled.exchange(false, std::memory_order_relaxed)) {
    absl::StatusOr<std::string> path = fr::DumpFlightRecorders("SIGUSR1");
    if (!path.ok()) TLOG(warn, "{}", path.status());
    TLOG(info, "flight recorder: dumped on SIGUSR1{}",
         path.ok() && !path->empty() ? absl::StrCat(" to ", *path) : "");
  }
  if (absl::Now() >= next_request_check_) {
    next_request_check_ = absl::Now() + kRequestCheckEvery;
    absl::StatusOr<std::string> request =
        store_->TryGet(fr::kDumpRequestKey, absl::Now() + kStoreCall);
    if (request.ok() && *request != seen_request_) {
      seen_request_ = *request;
      absl::StatusOr<std::string> path = fr::DumpFlightRecorders(
          absl::StrCat("requested: ", absl::StripTrailingAsciiWhitespace(*request)));
      if (!path.ok()) TLOG(warn, "{}", path.status());
    }
  }
  Flush();
}

void DumpResponder::Flush() {
  std::string json;
  {
    absl::MutexLock lock(&mu_);
    json.swap(pending_);
  }
  if (json.empty()) return;
  absl::Status s = store_->Set(absl::StrCat(fr::kDumpPrefix, member_), json,
                               absl::Now() + kStoreCall);
  if (!s.ok()) TLOG(warn, "flight recorder: cannot publish the dump in the store: {}", s);
}

void DumpResponder::ReportDeadline(const absl::Status& error) {
  absl::Status s = store_->Set(absl::StrCat(fr::kHangReportPrefix, member_), error.ToString(),
                               absl::Now() + absl::Milliseconds(500));
  if (!s.ok()) TLOG(debug, "cannot report the op deadline to trident-run: {}", s);
}

}  // namespace trident::runtime_internal
