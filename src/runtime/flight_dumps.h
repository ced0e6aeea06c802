// DumpResponder: a rank's answer to requests for its flight recorders (comm/flight_recorder.h)
// that do not go through files: trident-run's request in the store (fr::kDumpRequestKey), and
// SIGUSR1 sent to the process. Every dump this process writes (also the ones written when an
// op fails) is published under fr::kDumpPrefix<member>, where trident-run reads them.
//
// The runtime's watcher thread calls Poll(); nothing here runs on the training thread, so a
// rank whose training thread is stuck (outside any op, or in one) still answers. A stopped
// process (SIGSTOP) cannot: trident-run says so.
//
// SIGUSR1: taken only when its disposition is the default (which would kill the process), so
// a host that handles SIGUSR1 itself keeps it. The handler only sets a flag (async-signal
// safe); Poll() writes the dump. The default disposition is restored on destruction.
//
// Thread safety: Poll() and Flush() from one thread at a time (the watcher, then the thread
// that stops it); the dump observer from any thread.
#ifndef TRIDENT_RUNTIME_FLIGHT_DUMPS_H_
#define TRIDENT_RUNTIME_FLIGHT_DUMPS_H_

#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "trident/store.h"

namespace trident::runtime_internal {

class DumpResponder {
 public:
  DumpResponder(std::shared_ptr<Store> store, std::string member);
  ~DumpResponder();
  DumpResponder(const DumpResponder&) = delete;
  DumpResponder& operator=(const DumpResponder&) = delete;

  // Dumps when SIGUSR1 came or the request key changed (the store is asked at most every
  // 100 ms), and publishes the newest dump not yet in the store.
  void Poll();
  // Publishes the newest dump not yet in the store (before the process leaves the job).
  void Flush();
  // Records that this member's training loop met an op deadline (fr::kHangReportPrefix):
  // trident-run takes it for a suspected hang and asks every rank for its rings.
  void ReportDeadline(const absl::Status& error);

  bool took_sigusr1() const { return took_sigusr1_; }

 private:
  std::shared_ptr<Store> store_;
  const std::string member_;
  std::string seen_request_;
  absl::Time next_request_check_ = absl::InfinitePast();
  bool took_sigusr1_ = false;
  absl::Mutex mu_;
  std::string pending_ ABSL_GUARDED_BY(mu_);  // the newest dump not yet published
};

}  // namespace trident::runtime_internal

#endif  // TRIDENT_RUNTIME_FLIGHT_DUMPS_H_
