// NcclCommunicator: the Communicator of the NCCL backend (trident/nccl.h has the contract).
// Only compiled into builds with NCCL (TRIDENT_HAVE_NCCL); include it only there.
//
// Structure:
//  - NcclHandle owns the ncclComm_t and is the watchdog's WatchdogBackend: it answers async-
//    error polls, tells and asks the other members about aborts through the communicator's
//    own store keys (comm/<context>/aborted/<rank>), diagnoses timeouts, and runs
//    ncclCommAbort. It never reads the job's failure records: a peer's death reaches it only
//    through Communicator::Abort, called by the runtime. Its mutex serialises every NCCL call on the communicator (NCCL
//    communicators are not thread-safe); no call under it blocks, as the communicator is
//    non-blocking and every ncclInProgress is polled with a deadline and an abort check.
//  - NcclCommunicator validates and issues ops on the caller's stream, records an event after
//    each, and hands the GpuWork to its WatchedComm, which the process's Watchdog checks.
#ifndef TRIDENT_COMM_NCCL_NCCL_COMMUNICATOR_H_
#define TRIDENT_COMM_NCCL_NCCL_COMMUNICATOR_H_

#if !TRIDENT_HAVE_NCCL
#error "nccl_communicator.h is for builds with NCCL only"
#endif

#include <nccl.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "comm/nccl/watchdog.h"
#include "common/cuda.h"
#include "trident/communicator.h"
#include "trident/store.h"

namespace trident::nccl {

// Converts `result` of `call`, with NCCL's text for it and ncclGetLastError(comm).
absl::Status NcclCheck(ncclResult_t result, absl::string_view call, ncclComm_t comm = nullptr);

struct NcclGroup {
  std::string name = "world";
  int64_t epoch = 0;
  int rank = 0;
  int size = 1;
  int device = 0;
  int context = 0;                 // unique in the job; names this communicator's store keys
  std::vector<int> job_ranks;      // group rank -> job rank (named in errors)
  absl::Duration timeout = absl::Minutes(5);
  std::shared_ptr<Store> store;
};

class NcclHandle : public WatchdogBackend {
 public:
  NcclHandle(ncclComm_t comm, NcclGroup group);
  ~NcclHandle() override;

  std::string Describe() const override;
  absl::Status AsyncError() override;
  absl::Status PeerAborted() override;
  void PublishAbort(const absl::Status& why) override;
  absl::Status DiagnoseTimeout(const GpuWork& op) override;
  void AbortBackend(const absl::Status& why) override;

  const NcclGroup& group() const { return group_; }

  // Runs `launch` on the communicator under its lock with the device made current, then
  // polls until NCCL has finished queuing it (ncclInProgress), up to `deadline`, giving up
  // early when `abandon()` turns true (an abort was requested). `launch` gets the
  // ncclComm_t; kFailedPrecondition when the communicator is already gone.
  absl::Status Run(absl::string_view call, absl::Time deadline,
                   const std::function<bool()>& abandon,
                   const std::function<ncclResult_t(ncclComm_t)>& launch,
                   const std::function<absl::Status()>& after = nullptr);
  // Polls ncclCommGetAsyncError on `comm` until it leaves ncclInProgress. The lock is held.
  absl::Status AwaitReady(ncclComm_t comm, absl::string_view call, absl::Time deadline,
                          const std::function<bool()>& abandon)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // One ncclCommGetAsyncError: true once the last call (init, split) has finished, false
  // while it is in progress, or its error.
  absl::StatusOr<bool> PollReady(absl::string_view call);
  // Finalize and destroy (a clean shutdown), bounded by `deadline`; on failure the caller
  // aborts instead.
  absl::Status Finalize(absl::Time deadline);

  absl::Mutex& mu() ABSL_LOCK_RETURNED(mu_) { return mu_; }
  // Where the members publish that they aborted this communicator, by group rank.
  std::string AbortedPrefix() const;
  ncclComm_t comm() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return comm_; }

 private:
  const NcclGroup group_;
  absl::Mutex mu_;
  ncclComm_t comm_ ABSL_GUARDED_BY(mu_);
};

class NcclCommunicator : public Communicator {
 public:
  // Takes over `handle` (whose ncclComm_t has finished its init) and `watched`, registered
  // with `watchdog`.
  static absl::StatusOr<std::unique_ptr<NcclCommunicator>> Create(
      std::shared_ptr<NcclHandle> handle, std::shared_ptr<WatchedComm> watched,
      std::shared_ptr<Watchdog> watchdog);
  ~NcclCommunicator() override;

  int rank() const override { return group().rank; }
  int size() const override { return group().size; }
  std::string Describe() const override { return handle_->Describe(); }

  std::shared_ptr<Work> AllReduce(const Tensor& in, const Tensor& out, ReduceOp op,
                                  const OpOptions& options) override;
  std::shared_ptr<Work> ReduceScatter(const Tensor& in, const Tensor& out, ReduceOp op,
                                      const OpOptions& options) override;
  std::shared_ptr<Work> AllGather(const Tensor& in, const Tensor& out,
                                  const OpOptions& options) override;
  std::shared_ptr<Work> Broadcast(const Tensor& tensor, int root,
                                  const OpOptions& options) override;
  std::shared_ptr<Work> Reduce(const Tensor& in, const Tensor& out, ReduceOp op, int root,
                               const OpOptions& options) override;
  std::shared_ptr<Work> AllToAll(const Tensor& in, const Tensor& out,
                                 const OpOptions& options) override;
  std::shared_ptr<Work> Barrier(const OpOptions& options) override;
  std::shared_ptr<Work> Send(const Tensor& tensor, int peer, int tag,
                             const OpOptions& options) override;
  std::shared_ptr<Work> Recv(const Tensor& tensor, int peer, int tag,
                             const OpOptions& options) override;
  // One ncclGroupStart/End, in (peer, kind, tag) order (communicator.h).
  std::shared_ptr<Work> SendRecv(const std::vector<P2POp>& ops,
                                 const OpOptions& options) override;
  absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key) override;
  void Abort(absl::Status status) override;
  absl::Status AbortStatus() const override;

 private:
  NcclCommunicator(std::shared_ptr<NcclHandle> handle, std::shared_ptr<WatchedComm> watched,
                   std::shared_ptr<Watchdog> watchdog);
  const NcclGroup& group() const { return handle_->group(); }
  absl::Status CheckTensor(absl::string_view op, absl::string_view which, const Tensor& t) const;
  absl::Status CheckP2P(absl::string_view op, const Tensor& tensor, int peer, int tag) const;
  // Issues one op: `name` for messages, `seq` (-1 for point-to-point), `launch` the NCCL call
  // on the resolved stream.
  std::shared_ptr<Work> Issue(std::string name, int64_t seq, const OpOptions& options,
                              const std::function<ncclResult_t(ncclComm_t, cudaStream_t)>& launch);
  // The failed Work of op `name` that could not be queued because of `s`; aborts the
  // communicator (NCCL's state is unknown), or ends the process when the CUDA context is lost.
  std::shared_ptr<Work> Fail(const std::string& name, absl::Status s);
  // The failed Work of op `name` when a CUDA call before NCCL's failed (`s`): the
  // communicator stays usable, unless the CUDA context is lost.
  std::shared_ptr<Work> FailBeforeNccl(const std::string& name, const absl::Status& s);
  cudaStream_t StreamOf(const OpOptions& options) const;
  std::string OpName(absl::string_view kind, int64_t seq, int64_t count, DType dtype) const;
  int64_t NextSeq();

  // Members are destroyed in reverse order: the watchdog outlives the watched communicator.
  std::shared_ptr<Watchdog> watchdog_;
  std::shared_ptr<NcclHandle> handle_;
  std::shared_ptr<WatchedComm> watched_;
  std::unique_ptr<cuda::OwnedStream> stream_;   // the default stream of ops
  std::unique_ptr<cuda::DeviceBuffer> scratch_;  // Barrier's one element
  absl::Mutex seq_mu_;
  int64_t next_seq_ ABSL_GUARDED_BY(seq_mu_) = 0;
  int splits_ = 0;  // Split calls so far; Split is collective, so callers serialise it
};

// Aborts a ncclComm_t that no communicator owns (a failed init or split) on the watchdog's
// abort thread, so that a hung ncclCommAbort is bounded like any other. `group` names it.
void AbortBounded(ncclComm_t comm, NcclGroup group, const absl::Status& why);

// Builds the communicator after NCCL's init: shared by CreateNcclCommunicator and Split.
// `comm` has been created non-blocking and may still be initialising; this waits for it
// (bounded by the group's timeout, failing early when another member's init failed and it
// published that under the communicator's keys).
absl::StatusOr<std::unique_ptr<Communicator>> FinishNcclInit(ncclComm_t comm, NcclGroup group,
                                                             absl::Time deadline);

}  // namespace trident::nccl

#endif  // TRIDENT_COMM_NCCL_NCCL_COMMUNICATOR_H_
