// trident/parallel/data_parallel.h: the communication of data parallelism over the dp group:
// gradient bucketing with all-reduce overlapped with backward (GradBucketer, as in PyTorch
// DDP's c10d Reducer), and ZeRO stage 1 (Zero1Optimizer: reduce-scatter the gradients, update
// one shard of the parameters per rank, all-gather the parameters).
//
// GradBucketer packs the gradients, in the order backward produces them, into contiguous
// staging buckets of about `bucket_bytes`. Backward calls MarkReady(i) as gradient i is final;
// the bucket is copied into as gradients arrive, and the moment its last gradient is marked its
// AllReduce(kAvg) is issued, so communication overlaps the rest of backward. Finish waits for
// every bucket and writes the averaged values back into the gradient tensors.
//
//   // grads: the gradient tensors, in reverse order of use (the order backward fills them).
//   ASSIGN_OR_RETURN(auto bucketer, GradBucketer::Create(groups.Group(Dim::kDp), grads));
//   for (int i = 0; i < n; ++i) { Backward(i); RETURN_IF_ERROR(bucketer->MarkReady(i)); }
//   RETURN_IF_ERROR(bucketer->Finish(absl::Now() + absl::Seconds(60)));
//   Optimizer step on the gradients, which now hold the mean over the dp group.
//
// Ordering: buckets are issued in bucket order (a bucket that is complete waits for the buckets
// before it), so every rank issues the same collectives in the same order whatever order its
// gradients are marked in. Marked in registration order, each bucket is issued when its own
// last gradient is marked.
//
// Ownership: the caller keeps the gradient memory alive and does not touch a gradient between
// MarkReady(i) and the end of Finish (its value has been copied; the averaged one is written
// back by Finish). The communicator must outlive the bucketer. Only float32 CPU tensors.
//
// Thread-safety: MarkReady may be called from several threads at once (autograd hooks run on
// worker threads); Finish must not run concurrently with MarkReady of the same step.
#ifndef TRIDENT_PARALLEL_DATA_PARALLEL_H_
#define TRIDENT_PARALLEL_DATA_PARALLEL_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "trident/communicator.h"
#include "trident/tensor.h"

namespace trident {

struct GradBucketerOptions {
  // Target size of one bucket. A gradient is never split: a bucket closes before the gradient
  // that would take it past this size, and a gradient larger than this gets a bucket of its own.
  size_t bucket_bytes = 25u << 20;  // 25 MiB, c10d's default
  // Deadline of each bucket's AllReduce, counted from its issue; zero: the communicator's.
  absl::Duration op_timeout = absl::ZeroDuration();
};

// The layout of the buckets (fixed at Create) and counters for tests and logs.
struct GradBucketerStats {
  struct Bucket {
    size_t bytes = 0;            // staging buffer size: the sum of its gradients' bytes
    std::vector<int> params;     // indices of its gradients, in registration order
  };
  std::vector<Bucket> buckets;
  int launched_this_step = 0;    // buckets whose AllReduce has been issued in this step
  int64_t steps_finished = 0;    // Finish calls that returned OK
  int64_t buckets_launched = 0;  // over the bucketer's life
  int64_t bytes_launched = 0;    // over the bucketer's life
};

class GradBucketer {
 public:
  // `dp` is the data-parallel group; `grads` are the gradient tensors in reverse order of use
  // (index i is what MarkReady(i) refers to). kInvalidArgument for a tensor that is not
  // float32 on the CPU, a null pointer with elements, or a zero bucket size.
  static absl::StatusOr<std::unique_ptr<GradBucketer>> Create(
      Communicator& dp, std::vector<Tensor> grads, const GradBucketerOptions& options = {});
  ~GradBucketer();  // Waits (bounded by the ops' deadlines) for buckets still in flight.

  GradBucketer(const GradBucketer&) = delete;
  GradBucketer& operator=(const GradBucketer&) = delete;

  // Gradient `param` is final for this step: copies it into its bucket and, when that
  // completes its bucket (and all earlier buckets are issued), issues the bucket's
  // AllReduce(kAvg). kInvalidArgument for an index out of range; kFailedPrecondition when the
  // gradient was already marked in this step (the message names it). Never blocks on the
  // network.
  absl::Status MarkReady(int param);

  // Waits for every bucket, copies the averaged values back into the gradient tensors and
  // resets for the next step. Returns the first failing bucket's error, annotated with the
  // bucket and its parameters; kFailedPrecondition naming the first gradient not marked (the
  // buckets already issued are waited for, the rest are not issued: the other ranks' ops will
  // then fail at their deadline, so treat it as a bug and rebuild the group). When `deadline`
  // passes with a bucket still in flight, the dp communicator is aborted with
  // kDeadlineExceeded (the op must let go of the staging buffer) and that is returned.
  // Whatever it returns, the bucketer is reset for the next step; on error the gradients'
  // values are unspecified.
  absl::Status Finish(absl::Time deadline = absl::InfiniteFuture());

  GradBucketerStats stats() const;
  int num_params() const;
  int bucket_of(int param) const;

 private:
  struct State;
  explicit GradBucketer(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

// ZeRO stage 1 over the dp group (Rajbhandari et al., 2020): the optimizer's work and state
// are sharded, the parameters and gradients are not.
//
// The parameters (and their gradients, same shapes) are viewed as one flat vector of length L,
// padded with zeros to P = ceil(L / dp) * dp; rank r owns the contiguous shard
// [r * P/dp, (r+1) * P/dp). One Step is:
//   1. ReduceScatter(kAvg) of the flat gradient: rank r receives the mean over the dp ranks of
//      its shard (the same values an AllReduce(kAvg) would give for those elements);
//   2. update(params_shard, grads_shard, n, shard_offset) on the shard only, where n is the
//      number of real (unpadded) elements of the shard, possibly 0 on the last ranks, and
//      shard_offset is the shard's first index in the flat vector (to address optimizer
//      state, or per-parameter learning rates);
//   3. AllGather of the updated shards into the full parameters on every rank.
// With an element-wise update (SGD, Adam, ...) the parameters are bit-identical to AllReduce
// (kAvg) followed by the update on the whole vector; the update runs on 1/dp of it. Optimizer
// state (momenta) lives in the caller's update function and needs only shard_size() elements.
//
//   ASSIGN_OR_RETURN(auto zero, Zero1Optimizer::Create(dp, params, grads));
//   RETURN_IF_ERROR(zero->Step([&](float* p, const float* g, size_t n, size_t off) {
//     for (size_t i = 0; i < n; ++i) p[i] -= lr * g[i];
//   }));
//
// Ownership: the caller keeps params and grads alive; the gradients are read, not modified.
// Thread-safety: one Step at a time.
class Zero1Optimizer {
 public:
  using UpdateFn = std::function<void(float* params_shard, const float* grads_shard, size_t n,
                                      size_t shard_offset)>;

  // kInvalidArgument when params and grads differ in number or element counts, or a tensor is
  // not float32 on the CPU.
  static absl::StatusOr<std::unique_ptr<Zero1Optimizer>> Create(
      Communicator& dp, std::vector<Tensor> params, std::vector<Tensor> grads,
      const OpOptions& options = {});

  // Runs steps 1-3 above, waiting for each collective until `deadline` (the ops are also bound
  // by their own deadline; if `deadline` passes first, the dp communicator is aborted with
  // kDeadlineExceeded so that the op lets go of the buffers). On error the parameters are
  // unchanged if the reduce-scatter failed, and unspecified if the all-gather did.
  absl::Status Step(const UpdateFn& update, absl::Time deadline = absl::InfiniteFuture());

  size_t flat_size() const { return flat_size_; }      // L
  size_t padded_size() const { return padded_size_; }  // P
  size_t shard_size() const { return padded_size_ / dp_.size(); }
  size_t shard_offset() const { return shard_size() * dp_.rank(); }

 private:
  Zero1Optimizer(Communicator& dp, std::vector<Tensor> params, std::vector<Tensor> grads,
                 const OpOptions& options);

  Communicator& dp_;
  std::vector<Tensor> params_;
  std::vector<Tensor> grads_;
  OpOptions options_;
  size_t flat_size_ = 0;
  size_t padded_size_ = 0;
  std::vector<float> flat_grads_;   // P elements: the gradients, then zeros
  std::vector<float> grad_shard_;   // P/dp elements
  std::vector<float> param_shard_;  // P/dp elements
  std::vector<float> flat_params_;  // P elements, the all-gather's output
};

}  // namespace trident

#endif  // TRIDENT_PARALLEL_DATA_PARALLEL_H_
