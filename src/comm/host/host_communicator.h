// HostCommunicator: the Communicator of the host backend. One worker thread per communicator
// runs the ops in issue order; collectives run an algorithm from algorithms.h over a Channel,
// point-to-point ops are posted and completed in order while later ops proceed (so that a
// Send followed by a Recv cannot deadlock against the peer's Send).
//
// Failure handling (mechanism only: no job keys): the first message of every collective is a
// fingerprint sent to the right neighbour; a mismatch is published under this communicator's
// own store key (comm/<context>/error) so every rank fails with the same kInvalidArgument,
// and a stalled op polls that key. A transport error from a peer goes to the owner's
// on_peer_error handler (the runtime reports it and learns the cause), and the owner aborts
// the communicator (Abort) when the job says a member died.
//
// CUDA tensors (builds with CUDA): staged through host buffers (staging.h). At issue the
// caller's stream is marked; the worker then copies the inputs in (after the marked work), runs
// the algorithm and copies the outputs back, in issue order, before the Work completes; so an op
// sees the outputs of the ops issued before it. Direct use of device memory by the provider
// (FI_HMEM) is not done yet.
#ifndef TRIDENT_COMM_HOST_HOST_COMMUNICATOR_H_
#define TRIDENT_COMM_HOST_HOST_COMMUNICATOR_H_

#include <atomic>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "comm/flight_recorder.h"
#include "comm/host/algorithms.h"
#include "comm/host/shm/shm_engine.h"
#include "comm/host/staging.h"
#include "trident/communicator.h"
#include "trident/store.h"
#include "transport/transport.h"

namespace trident {

struct HostCommConfig {
  std::shared_ptr<Transport> transport;
  std::shared_ptr<Store> store;  // where ranks meet (keys comm/<context>/...)
  std::vector<int> ranks;        // group rank -> transport rank
  int rank = 0;                  // this process's group rank
  uint16_t context = 0;          // unique per communicator in the job; part of every tag
  int64_t epoch = 0;
  std::string name = "world";
  absl::Duration timeout = absl::Minutes(5);
  AlgoParams algo{64 << 10, 1 << 20};
  // HostCommOptions::on_peer_error (peer numbered as a transport rank); shared by splits.
  PeerErrorHandler on_peer_error;
  // The intra-host engine (shm/shm_engine.h) when every rank is on this host: collectives run
  // on it (send/recv stay on the transport). Null: everything over the transport. Split
  // builds the engine of each new group when this one has it.
  std::shared_ptr<ShmEngine> shm;
  ShmParams shm_params;
  // How device tensors are copied through host memory; null: CreateCudaStaging() (a fresh one
  // per communicator). Tests pass a fake.
  std::shared_ptr<Staging> staging;
};

class HostCommunicator : public Communicator {
 public:
  explicit HostCommunicator(HostCommConfig config);
  ~HostCommunicator() override;

  int rank() const override { return config_.rank; }
  int size() const override { return static_cast<int>(config_.ranks.size()); }
  std::string Describe() const override;

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
  absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key) override;
  void Abort(absl::Status status) override;
  absl::Status AbortStatus() const override;

  enum class OpKind : uint8_t {
    kAllReduce, kReduceScatter, kAllGather, kBroadcast, kReduce, kAllToAll, kBarrier,
    kSend, kRecv
  };
  struct Op;
  class HostWork;

 private:
  static std::unique_ptr<Op> NewOp(OpKind kind, const Tensor& in, const Tensor& out,
                                   ReduceOp reduce, int root, int tag, int64_t count,
                                   const OpOptions& options);
  std::shared_ptr<Work> Enqueue(std::unique_ptr<Op> op);
  void WorkerLoop();
  absl::Status RunCollective(Op& op);
  absl::Status RunAlgorithm(Op& op, Channel& ch);
  absl::Status RunOnShm(Op& op);
  absl::Status CheckFingerprint(Op& op, Channel& ch);
  absl::Status Health();
  absl::Status DiagnoseTimeout(const Op& op);
  absl::Status ExplainPeerFailure(const absl::Status& transport_error);
  void PublishError(const absl::Status& status);
  std::string OpName(const Op& op) const;
  bool PostP2P(Op& op);
  bool ProgressP2P(absl::Time now);
  void FailAll(const absl::Status& status);
  absl::Status PrepareStaging(Op& op);
  absl::Status CopyInputs(Op& op);
  absl::Status CopyOutputs(Op& op);

  const HostCommConfig config_;
  const std::shared_ptr<fr::FlightRecorder> recorder_;  // this communicator's last ops
  Scratch scratch_;  // worker thread only

  mutable absl::Mutex mu_;
  std::deque<std::unique_ptr<Op>> queue_ ABSL_GUARDED_BY(mu_);
  absl::Status abort_status_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  uint32_t next_seq_ ABSL_GUARDED_BY(mu_) = 0;
  uint32_t next_p2p_seq_ ABSL_GUARDED_BY(mu_) = 0;
  std::atomic<bool> aborted_{false};

  const std::shared_ptr<Staging> staging_;  // CUDA tensors; see staging.h

  std::deque<std::unique_ptr<Op>> inflight_;  // posted point-to-point ops; worker only
  int splits_ = 0;                            // Split calls so far; caller-serialised
  std::thread worker_;
};

}  // namespace trident

#endif  // TRIDENT_COMM_HOST_HOST_COMMUNICATOR_H_
