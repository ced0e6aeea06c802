#include "trident/parallel/data_parallel.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/memory/memory.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/check.h"
#include "common/status_macros.h"

namespace trident {
namespace {

absl::Status CheckCpuF32(const Tensor& t, absl::string_view what, size_t index) {
  if (t.dtype() != DType::kF32) {
    return absl::InvalidArgumentError(absl::StrCat(what, " ", index, " is ",
                                                   DTypeName(t.dtype()), "; only f32 is supported"));
  }
  if (!t.device().is_cpu()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " ", index, " is not on the CPU; only CPU tensors are supported"));
  }
  if (t.numel() < 0 || (t.numel() > 0 && t.data() == nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " ", index, " has ", t.numel(), " elements and a null pointer"));
  }
  return absl::OkStatus();
}

// Waits for `work` until `deadline`. If the caller's deadline passes while the op is still
// running, the op still owns our buffers: abort the group (the op's own deadline would abort
// it anyway) so that it lets go of them promptly, and wait for it to finish failing.
absl::Status WaitOrAbort(Communicator& comm, Work& work, absl::Time deadline,
                         absl::string_view what) {
  absl::Status st = work.Wait(deadline);
  if (st.code() == absl::StatusCode::kDeadlineExceeded && !work.IsCompleted()) {
    st = absl::DeadlineExceededError(absl::StrCat("deadline passed while ", what,
                                                  "; aborting ", comm.Describe()));
    comm.Abort(st);
    work.Wait().IgnoreError();
    return st;
  }
  return Annotate(st, what);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// GradBucketer

struct GradBucketer::State {
  struct Bucket {
    std::vector<int> params;
    std::vector<size_t> offsets;  // element offset of each param in `staging`
    std::vector<float> staging;
    int remaining = 0;  // params not yet marked in this step
    std::shared_ptr<Work> work;
  };

  Communicator* dp = nullptr;
  GradBucketerOptions options;
  std::vector<Tensor> grads;
  std::vector<int> bucket_of;      // param -> bucket
  std::vector<size_t> offset_of;   // param -> element offset in its bucket

  mutable absl::Mutex mu;
  std::vector<Bucket> buckets ABSL_GUARDED_BY(mu);
  std::vector<bool> marked ABSL_GUARDED_BY(mu);
  int next_launch ABSL_GUARDED_BY(mu) = 0;
  int64_t steps_finished ABSL_GUARDED_BY(mu) = 0;
  int64_t buckets_launched ABSL_GUARDED_BY(mu) = 0;
  int64_t bytes_launched ABSL_GUARDED_BY(mu) = 0;

  // Issues every complete bucket from next_launch on, in order.
  void LaunchReady() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    OpOptions op;
    op.timeout = options.op_timeout;
    while (next_launch < static_cast<int>(buckets.size()) &&
           buckets[next_launch].remaining == 0) {
      Bucket& b = buckets[next_launch];
      Tensor t = Tensor::Of(b.staging.data(), static_cast<int64_t>(b.staging.size()));
      b.work = dp->AllReduce(t, t, ReduceOp::kAvg, op);
      TRIDENT_CHECK(b.work != nullptr) << "AllReduce returned no Work";
      ++buckets_launched;
      bytes_launched += static_cast<int64_t>(b.staging.size() * sizeof(float));
      ++next_launch;
    }
  }

  void Reset() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    for (Bucket& b : buckets) {
      b.remaining = static_cast<int>(b.params.size());
      b.work.reset();
    }
    std::fill(marked.begin(), marked.end(), false);
    next_launch = 0;
  }

  std::string Describe(int b) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    const Bucket& bk = buckets[b];
    return absl::StrCat("bucket ", b, " (params ", bk.params.front(), "..", bk.params.back(),
                        ", ", bk.staging.size() * sizeof(float), " bytes)");
  }
};

GradBucketer::GradBucketer(std::unique_ptr<State> state) : state_(std::move(state)) {}

GradBucketer::~GradBucketer() {
  absl::MutexLock lock(&state_->mu);
  // The ops write into the staging buffers: they must be done before the buffers go. Each op
  // is bound by its own deadline, so this cannot block forever.
  for (auto& b : state_->buckets) {
    if (b.work != nullptr) b.work->Wait().IgnoreError();
  }
}

absl::StatusOr<std::unique_ptr<GradBucketer>> GradBucketer::Create(
    Communicator& dp, std::vector<Tensor> grads, const GradBucketerOptions& options) {
  if (options.bucket_bytes == 0) {
    return absl::InvalidArgumentError("GradBucketer: bucket_bytes must be positive");
  }
  for (size_t i = 0; i < grads.size(); ++i) {
    RETURN_IF_ERROR(CheckCpuF32(grads[i], "GradBucketer: gradient", i));
  }
  auto state = std::make_unique<State>();
  state->dp = &dp;
  state->options = options;
  state->bucket_of.resize(grads.size());
  state->offset_of.resize(grads.size());
  {
    absl::MutexLock lock(&state->mu);
    std::vector<State::Bucket>& buckets = state->buckets;
    size_t current_bytes = 0;
    for (size_t i = 0; i < grads.size(); ++i) {
      const size_t bytes = grads[i].nbytes();
      // Close the open bucket when this gradient would take it past the target size; a
      // gradient larger than the target then sits alone in a new bucket.
      if (buckets.empty() ||
          (!buckets.back().params.empty() && current_bytes + bytes > options.bucket_bytes)) {
        buckets.emplace_back();
        current_bytes = 0;
      }
      State::Bucket& b = buckets.back();
      state->bucket_of[i] = static_cast<int>(buckets.size() - 1);
      state->offset_of[i] = current_bytes / sizeof(float);
      b.params.push_back(static_cast<int>(i));
      b.offsets.push_back(current_bytes / sizeof(float));
      current_bytes += bytes;
      b.staging.resize(current_bytes / sizeof(float));
    }
    state->marked.assign(grads.size(), false);
    state->grads = std::move(grads);
    state->Reset();
  }
  return absl::WrapUnique(new GradBucketer(std::move(state)));
}

absl::Status GradBucketer::MarkReady(int param) {
  State& s = *state_;
  if (param < 0 || param >= static_cast<int>(s.grads.size())) {
    return absl::InvalidArgumentError(absl::StrCat("GradBucketer::MarkReady: parameter ", param,
                                                   " out of range [0, ", s.grads.size(), ")"));
  }
  absl::MutexLock lock(&s.mu);
  if (s.marked[param]) {
    return absl::FailedPreconditionError(
        absl::StrCat("GradBucketer::MarkReady: parameter ", param,
                     " was already marked ready in this step (bucket ", s.bucket_of[param], ")"));
  }
  s.marked[param] = true;
  State::Bucket& b = s.buckets[s.bucket_of[param]];
  const Tensor& g = s.grads[param];
  if (g.numel() > 0) {
    std::memcpy(b.staging.data() + s.offset_of[param], g.data(), g.nbytes());
  }
  if (--b.remaining == 0) s.LaunchReady();
  return absl::OkStatus();
}

absl::Status GradBucketer::Finish(absl::Time deadline) {
  State& s = *state_;
  absl::MutexLock lock(&s.mu);
  absl::Status result;
  for (size_t i = 0; i < s.grads.size(); ++i) {
    if (!s.marked[i]) {
      result = absl::FailedPreconditionError(absl::StrCat(
          "GradBucketer::Finish: parameter ", i, " (bucket ", s.bucket_of[i],
          ") was not marked ready in this step; buckets from ", s.bucket_of[i],
          " on were not all-reduced"));
      break;
    }
  }
  for (int b = 0; b < s.next_launch; ++b) {
    State::Bucket& bk = s.buckets[b];
    absl::Status st = WaitOrAbort(*s.dp, *bk.work, deadline,
                                  absl::StrCat("GradBucketer: all-reducing ", s.Describe(b)));
    if (!st.ok()) {
      if (result.ok()) result = st;
      continue;
    }
    if (!result.ok()) continue;
    for (size_t k = 0; k < bk.params.size(); ++k) {
      const Tensor& g = s.grads[bk.params[k]];
      if (g.numel() > 0) std::memcpy(g.data(), bk.staging.data() + bk.offsets[k], g.nbytes());
    }
  }
  if (result.ok()) ++s.steps_finished;
  s.Reset();
  return result;
}

GradBucketerStats GradBucketer::stats() const {
  const State& s = *state_;
  absl::MutexLock lock(&s.mu);
  GradBucketerStats out;
  for (const auto& b : s.buckets) {
    out.buckets.push_back({b.staging.size() * sizeof(float), b.params});
  }
  out.launched_this_step = s.next_launch;
  out.steps_finished = s.steps_finished;
  out.buckets_launched = s.buckets_launched;
  out.bytes_launched = s.bytes_launched;
  return out;
}

int GradBucketer::num_params() const { return static_cast<int>(state_->grads.size()); }

int GradBucketer::bucket_of(int param) const {
  TRIDENT_CHECK(param >= 0 && param < num_params()) << "parameter " << param << " out of range";
  return state_->bucket_of[param];
}

// ---------------------------------------------------------------------------------------------
// Zero1Optimizer

absl::StatusOr<std::unique_ptr<Zero1Optimizer>> Zero1Optimizer::Create(
    Communicator& dp, std::vector<Tensor> params, std::vector<Tensor> grads,
    const OpOptions& options) {
  if (params.size() != grads.size()) {
    return absl::InvalidArgumentError(absl::StrCat("Zero1Optimizer: ", params.size(),
                                                   " parameters but ", grads.size(),
                                                   " gradients"));
  }
  for (size_t i = 0; i < params.size(); ++i) {
    RETURN_IF_ERROR(CheckCpuF32(params[i], "Zero1Optimizer: parameter", i));
    RETURN_IF_ERROR(CheckCpuF32(grads[i], "Zero1Optimizer: gradient", i));
    if (params[i].numel() != grads[i].numel()) {
      return absl::InvalidArgumentError(
          absl::StrCat("Zero1Optimizer: parameter ", i, " has ", params[i].numel(),
                       " elements but its gradient has ", grads[i].numel()));
    }
  }
  return absl::WrapUnique(
      new Zero1Optimizer(dp, std::move(params), std::move(grads), options));
}

Zero1Optimizer::Zero1Optimizer(Communicator& dp, std::vector<Tensor> params,
                               std::vector<Tensor> grads, const OpOptions& options)
    : dp_(dp), params_(std::move(params)), grads_(std::move(grads)), options_(options) {
  for (const Tensor& p : params_) flat_size_ += static_cast<size_t>(p.numel());
  const size_t n = static_cast<size_t>(dp_.size());
  padded_size_ = (flat_size_ + n - 1) / n * n;
  if (padded_size_ == 0) padded_size_ = n;  // every rank owns at least a (padding) element
  flat_grads_.assign(padded_size_, 0.0f);
  grad_shard_.assign(padded_size_ / n, 0.0f);
  param_shard_.assign(padded_size_ / n, 0.0f);
  flat_params_.assign(padded_size_, 0.0f);
}

absl::Status Zero1Optimizer::Step(const UpdateFn& update, absl::Time deadline) {
  // 1. Flatten the gradients (the padding stays zero) and reduce-scatter their mean.
  size_t off = 0;
  for (const Tensor& g : grads_) {
    if (g.numel() > 0) std::memcpy(flat_grads_.data() + off, g.data(), g.nbytes());
    off += static_cast<size_t>(g.numel());
  }
  const size_t shard = shard_size();
  const size_t begin = shard_offset();
  {
    auto work = dp_.ReduceScatter(
        Tensor::Of(flat_grads_.data(), static_cast<int64_t>(padded_size_)),
        Tensor::Of(grad_shard_.data(), static_cast<int64_t>(shard)), ReduceOp::kAvg, options_);
    RETURN_IF_ERROR(
        WaitOrAbort(dp_, *work, deadline, "ZeRO-1: reduce-scattering the gradients"));
  }

  // 2. Copy this rank's shard of the parameters out, update it.
  const size_t valid = begin >= flat_size_ ? 0 : std::min(shard, flat_size_ - begin);
  std::fill(param_shard_.begin(), param_shard_.end(), 0.0f);
  off = 0;
  for (const Tensor& p : params_) {
    const size_t len = static_cast<size_t>(p.numel());
    const size_t lo = std::max(off, begin), hi = std::min(off + len, begin + valid);
    if (lo < hi) {
      std::memcpy(param_shard_.data() + (lo - begin), static_cast<const float*>(p.data()) + (lo - off),
                  (hi - lo) * sizeof(float));
    }
    off += len;
  }
  update(param_shard_.data(), grad_shard_.data(), valid, begin);

  // 3. All-gather the updated shards and scatter them back into the parameters.
  {
    auto work = dp_.AllGather(Tensor::Of(param_shard_.data(), static_cast<int64_t>(shard)),
                              Tensor::Of(flat_params_.data(), static_cast<int64_t>(padded_size_)),
                              options_);
    RETURN_IF_ERROR(
        WaitOrAbort(dp_, *work, deadline, "ZeRO-1: all-gathering the parameters"));
  }
  off = 0;
  for (const Tensor& p : params_) {
    if (p.numel() > 0) std::memcpy(p.data(), flat_params_.data() + off, p.nbytes());
    off += static_cast<size_t>(p.numel());
  }
  return absl::OkStatus();
}

}  // namespace trident
