// trident_backend.cc: the c10d backend "trident" (a c10d::Backend over trident::Communicator)
// and the Python module trident._C that creates it.
//
// One Trident host communicator per process group. The ranks meet through the store that
// torch passes to the backend (already scoped to the group by a c10d PrefixStore), adapted to
// trident::Store below, so every launcher that torch supports (torchrun's env://, tcp://,
// file://, trident-run through trident.torch's environment mapping) works unchanged.
//
// Every op is issued asynchronously on the Trident communicator and returns a TridentWork.
// Its future completes on the backend's completion thread (ops on one communicator complete
// in issue order, so one thread waiting on them in order suffices); Work::wait() waits on the
// calling thread directly, so a blocking op pays no thread hand-off. Tensors that Trident
// cannot take as they are (non-contiguous, on a CUDA device, a list to be packed) are staged
// through a contiguous CPU buffer and copied back when the op completes.
//
// Errors: a failed op raises torch.distributed.DistBackendError from wait() (and fails its
// future) with a message naming the op, this rank, the group and Trident's status (which
// names the failed peer, or for a deadline the ranks that never arrived). After such an
// error the communicator is aborted; later ops fail at once, never hang.
#include <pybind11/chrono.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>
#include <torch/python.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "trident/communicator.h"
#include "trident/store.h"
#include "trident/tensor.h"
#include "internal.h"

namespace trident_torch {

namespace {
std::mutex g_mu;
std::unique_ptr<trident::Communicator> g_pending;  // guarded by g_mu
absl::Status g_last_error;                         // guarded by g_mu
}  // namespace

void SetPendingGroup(std::unique_ptr<trident::Communicator> comm) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_pending = std::move(comm);
}

std::unique_ptr<trident::Communicator> TakePendingGroup() {
  std::lock_guard<std::mutex> lock(g_mu);
  return std::move(g_pending);
}

void RecordOpError(const absl::Status& status) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_last_error.ok()) g_last_error = status;
}

absl::Status TakeLastOpError() {
  std::lock_guard<std::mutex> lock(g_mu);
  return std::exchange(g_last_error, absl::OkStatus());
}

namespace {

using c10d::OpType;

// Tag reserved for the point-to-point traffic of alltoall with uneven splits, gather and
// scatter; user tags of send/recv must stay below it.
constexpr int kInternalTag = (1 << 24) - 1;

std::chrono::milliseconds Remaining(absl::Time deadline) {
  int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
  return std::chrono::milliseconds(std::max<int64_t>(ms, 1));
}

// trident::Store over a c10d::Store. c10d's stores have no prefix listing: ListPrefix finds
// only keys of the form prefix + <rank> (rank < world size), which is the one use the host
// communicator makes of it (naming the ranks that had not arrived at a deadline).
class C10dStore : public trident::Store {
 public:
  C10dStore(c10::intrusive_ptr<c10d::Store> store, int world_size)
      : store_(std::move(store)), world_size_(world_size) {}

  absl::Status Set(absl::string_view key, absl::string_view value, absl::Time) override {
    return Call("set", key, [&] {
      store_->set(std::string(key), std::vector<uint8_t>(value.begin(), value.end()));
    });
  }
  absl::StatusOr<std::string> Get(absl::string_view key, absl::Time deadline) override {
    std::string out;
    absl::Status s = Call("get", key, [&] {
      store_->wait({std::string(key)}, Remaining(deadline));
      auto v = store_->get(std::string(key));
      out.assign(v.begin(), v.end());
    });
    if (!s.ok()) return s;
    return out;
  }
  absl::StatusOr<std::string> TryGet(absl::string_view key, absl::Time) override {
    std::string out;
    bool found = false;
    absl::Status s = Call("check", key, [&] {
      found = store_->check({std::string(key)});
      if (found) {
        auto v = store_->get(std::string(key));
        out.assign(v.begin(), v.end());
      }
    });
    if (!s.ok()) return s;
    if (!found) return absl::NotFoundError(absl::StrCat("store key ", key, " is absent"));
    return out;
  }
  absl::StatusOr<int64_t> Add(absl::string_view key, int64_t delta, absl::Time) override {
    int64_t out = 0;
    absl::Status s = Call("add", key, [&] { out = store_->add(std::string(key), delta); });
    if (!s.ok()) return s;
    return out;
  }
  absl::StatusOr<std::string> CompareSet(absl::string_view key, absl::string_view expected,
                                         absl::string_view desired, absl::Time) override {
    std::string out;
    absl::Status s = Call("compareSet", key, [&] {
      auto v = store_->compareSet(std::string(key),
                                  std::vector<uint8_t>(expected.begin(), expected.end()),
                                  std::vector<uint8_t>(desired.begin(), desired.end()));
      out.assign(v.begin(), v.end());
    });
    if (!s.ok()) return s;
    return out;
  }
  absl::Status Wait(absl::Span<const std::string> keys, absl::Time deadline) override {
    std::vector<std::string> k(keys.begin(), keys.end());
    return Call("wait", keys.empty() ? "" : keys[0],
                [&] { store_->wait(k, Remaining(deadline)); });
  }
  absl::StatusOr<bool> Delete(absl::string_view key, absl::Time) override {
    bool out = false;
    absl::Status s = Call("deleteKey", key, [&] { out = store_->deleteKey(std::string(key)); });
    if (!s.ok()) return s;
    return out;
  }
  absl::StatusOr<std::vector<std::string>> ListPrefix(absl::string_view prefix,
                                                      absl::Time) override {
    std::vector<std::string> out;
    absl::Status s = Call("check", prefix, [&] {
      for (int r = 0; r < world_size_; ++r) {
        std::string key = absl::StrCat(prefix, r);
        if (store_->check({key})) out.push_back(key);
      }
    });
    if (!s.ok()) return s;
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  template <typename F>
  absl::Status Call(const char* what, absl::string_view key, F&& f) {
    try {
      f();
      return absl::OkStatus();
    } catch (const c10::DistStoreError& e) {  // c10d's stores throw this at their timeout
      return absl::DeadlineExceededError(
          absl::StrCat("torch store ", what, "(", key, "): ", e.what_without_backtrace()));
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat("torch store ", what, "(", key, "): ", e.what()));
    }
  }

  c10::intrusive_ptr<c10d::Store> store_;
  const int world_size_;
};

}  // namespace

absl::StatusOr<trident::DType> ToDType(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return trident::DType::kF32;
    case at::kDouble: return trident::DType::kF64;
    case at::kHalf: return trident::DType::kF16;
    case at::kBFloat16: return trident::DType::kBF16;
    case at::kChar: return trident::DType::kI8;
    case at::kByte: return trident::DType::kU8;
    case at::kInt: return trident::DType::kI32;
    case at::kLong: return trident::DType::kI64;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("dtype ", c10::toString(t),
                       " cannot be reduced by trident (float32/64, float16, bfloat16, int8, "
                       "uint8, int32, int64 can; ops that only move data take every dtype)"));
  }
}

absl::StatusOr<trident::ReduceOp> ToReduceOp(const c10d::ReduceOp& op) {
  switch (op.op_) {
    case c10d::ReduceOp::SUM: return trident::ReduceOp::kSum;
    case c10d::ReduceOp::AVG: return trident::ReduceOp::kAvg;
    case c10d::ReduceOp::PRODUCT: return trident::ReduceOp::kProd;
    case c10d::ReduceOp::MIN: return trident::ReduceOp::kMin;
    case c10d::ReduceOp::MAX: return trident::ReduceOp::kMax;
    default:
      return absl::InvalidArgumentError(
          "trident supports the reductions SUM, AVG, PRODUCT, MIN and MAX (not BAND, BOR, BXOR "
          "or PREMUL_SUM)");
  }
}

namespace {

// A contiguous CPU tensor holding `t`'s data: `t` itself when it already is one.
at::Tensor Staged(const at::Tensor& t) {
  if (t.device().is_cpu() && t.is_contiguous()) return t;
  return t.to(at::kCPU).contiguous();
}

bool SameBuffer(const at::Tensor& a, const at::Tensor& b) {
  return a.device().is_cpu() && a.data_ptr() == b.data_ptr() && a.is_contiguous();
}

[[noreturn]] void Throw(const std::string& msg) {
  throw c10::DistBackendError({__func__, __FILE__, static_cast<uint32_t>(__LINE__)}, msg);
}

class TridentBackend;

// One op (or a batch of ops issued together) on the Trident communicator.
class TridentWork : public c10d::Work {
 public:
  TridentWork(int rank, OpType type, std::string what,
              std::vector<std::shared_ptr<trident::Work>> works, std::vector<at::Tensor> outputs,
              std::function<void()> finish)
      : c10d::Work(rank, type),
        what_(std::move(what)),
        works_(std::move(works)),
        outputs_(std::move(outputs)),
        finish_(std::move(finish)),
        future_(c10::make_intrusive<c10::ivalue::Future>(
            c10::ListType::create(c10::TensorType::get()))) {}

  bool isCompleted() override {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }
  bool isSuccess() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return done_ && exception_ == nullptr;
  }
  std::exception_ptr exception() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return exception_;
  }
  std::vector<at::Tensor> result() override { return outputs_; }
  c10::intrusive_ptr<c10::ivalue::Future> getFuture() override { return future_; }

  // Blocks until the op completes (bounded by the op's own deadline) or `timeout` passes;
  // raises DistBackendError when the op failed or the timeout passed first.
  bool wait(std::chrono::milliseconds timeout) override {
    absl::Time deadline = timeout == kNoTimeout
                              ? absl::InfiniteFuture()
                              : absl::Now() + absl::FromChrono(timeout);
    for (const auto& w : works_) {
      absl::Status s = w->Wait(deadline);
      if (!s.ok() && !w->IsCompleted()) {
        Throw(absl::StrCat("trident: ", what_, ": Work.wait(timeout=", timeout.count(),
                           " ms) returned before the op completed; the op is still running "
                           "and is bound by its own deadline"));
      }
    }
    Complete();
    std::lock_guard<std::mutex> lock(mu_);
    if (exception_) std::rethrow_exception(exception_);
    return true;
  }

  void abort() override {}

  // Waits for every part of the op (each ends by its deadline at the latest), runs the
  // copy-back and completes the future. Idempotent; called by wait() and by the backend's
  // completion thread, whichever comes first.
  void Complete() {
    absl::Status status;
    for (const auto& w : works_) {
      absl::Status s = w->Wait();
      if (status.ok() && !s.ok()) status = s;
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return;
    if (status.ok() && finish_) {
      try {
        finish_();
      } catch (const std::exception& e) {
        status = absl::InternalError(absl::StrCat("copying the result back: ", e.what()));
      }
    }
    finish_ = nullptr;
    done_ = true;
    if (status.ok()) {
      future_->markCompleted(c10::IValue(outputs_));
    } else {
      RecordOpError(status);
      std::string msg = absl::StrCat("trident: ", what_, " failed: ", status.ToString());
      exception_ = std::make_exception_ptr(
          c10::DistBackendError({__func__, __FILE__, static_cast<uint32_t>(__LINE__)}, msg));
      future_->setError(exception_);
    }
  }

 private:
  const std::string what_;
  const std::vector<std::shared_ptr<trident::Work>> works_;
  std::vector<at::Tensor> outputs_;
  mutable std::mutex mu_;
  std::function<void()> finish_;  // guarded by mu_
  bool done_ = false;             // guarded by mu_
  std::exception_ptr exception_;  // guarded by mu_
  c10::intrusive_ptr<c10::ivalue::Future> future_;
};

class TridentBackend : public c10d::Backend {
 public:
  TridentBackend(std::unique_ptr<trident::Communicator> comm, std::string name,
                 std::chrono::milliseconds timeout)
      : c10d::Backend(comm->rank(), comm->size()),
        comm_(std::move(comm)),
        name_(std::move(name)),
        timeout_(timeout) {
    completer_ = std::thread([this] { CompleteLoop(); });
  }

  ~TridentBackend() override {
    comm_->Abort(absl::CancelledError("the trident process group was destroyed"));
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    completer_.join();
  }

  const std::string getBackendName() const override { return "trident"; }
  bool supportsCoalescing() const override { return false; }

  // Creates the backend for one process group: builds a Trident host communicator whose
  // ranks meet through `store`. Blocks until every rank of the group arrived or `timeout`.
  static c10::intrusive_ptr<c10d::Backend> Create(const c10::intrusive_ptr<c10d::Store>& store,
                                                  int rank, int size,
                                                  const std::chrono::duration<float>& timeout) {
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(timeout);
    // A group that trident.torch's resilient loop split from the runtime's world for this
    // epoch (trident_runtime.cc): adopt it instead of building one through the store.
    if (std::unique_ptr<trident::Communicator> pending = TakePendingGroup()) {
      if (pending->rank() == rank && pending->size() == size) {
        return c10::make_intrusive<TridentBackend>(std::move(pending), "runtime", ms);
      }
      Throw(absl::StrCat("trident: the runtime's group is rank ", pending->rank(), " of ",
                         pending->size(), ", but torch asked for rank ", rank, " of ", size));
    }
    trident::HostCommOptions options;
    options.rank = rank;
    options.world_size = size;
    options.store = std::make_shared<C10dStore>(store, size);
    options.timeout = absl::FromChrono(ms);
    options.name = "torch";
    auto comm = trident::CreateHostCommunicator(std::move(options));
    if (!comm.ok()) {
      Throw(absl::StrCat("trident: creating the process group on rank ", rank, " of ", size,
                         " failed: ", comm.status().ToString()));
    }
    return c10::make_intrusive<TridentBackend>(*std::move(comm), "torch", ms);
  }

  c10::intrusive_ptr<c10d::Work> allreduce(std::vector<at::Tensor>& tensors,
                                           const c10d::AllreduceOptions& opts) override {
    const at::Tensor& t = One(tensors, "allreduce");
    trident::ReduceOp op = Check(ToReduceOp(opts.reduceOp), "allreduce");
    at::Tensor buf = Staged(t);
    auto tt = Typed(buf, "allreduce");
    auto w = comm_->AllReduce(tt, tt, op, Opts(opts.timeout));
    return Issue(OpType::ALLREDUCE, "allreduce", {w}, tensors, CopyBack(t, buf));
  }

  c10::intrusive_ptr<c10d::Work> allreduce_coalesced(
      std::vector<at::Tensor>& tensors, const c10d::AllreduceCoalescedOptions& opts) override {
    TORCH_CHECK(!tensors.empty(), "trident: allreduce_coalesced needs at least one tensor");
    trident::ReduceOp op = Check(ToReduceOp(opts.reduceOp), "allreduce_coalesced");
    std::vector<at::Tensor> flat;
    for (const auto& t : tensors) {
      TORCH_CHECK(t.scalar_type() == tensors[0].scalar_type(),
                  "trident: allreduce_coalesced needs tensors of one dtype");
      flat.push_back(t.reshape(-1).to(at::kCPU));
    }
    at::Tensor buf = at::cat(flat);
    auto tt = Typed(buf, "allreduce_coalesced");
    auto w = comm_->AllReduce(tt, tt, op, Opts(opts.timeout));
    std::vector<at::Tensor> outs = tensors;
    return Issue(OpType::ALLREDUCE_COALESCED, "allreduce_coalesced", {w}, tensors,
                 [outs, buf]() mutable {
                   int64_t off = 0;
                   for (auto& t : outs) {
                     t.copy_(buf.narrow(0, off, t.numel()).view(t.sizes()));
                     off += t.numel();
                   }
                 });
  }

  c10::intrusive_ptr<c10d::Work> broadcast(std::vector<at::Tensor>& tensors,
                                           const c10d::BroadcastOptions& opts) override {
    const at::Tensor& t = One(tensors, "broadcast");
    at::Tensor buf = Staged(t);
    auto w = comm_->Broadcast(Bytes(buf), static_cast<int>(opts.rootRank), Opts(opts.timeout));
    return Issue(OpType::BROADCAST, absl::StrCat("broadcast(root=", opts.rootRank, ")"), {w},
                 tensors, CopyBack(t, buf));
  }

  c10::intrusive_ptr<c10d::Work> reduce(std::vector<at::Tensor>& tensors,
                                        const c10d::ReduceOptions& opts) override {
    const at::Tensor& t = One(tensors, "reduce");
    trident::ReduceOp op = Check(ToReduceOp(opts.reduceOp), "reduce");
    at::Tensor buf = Staged(t);
    auto tt = Typed(buf, "reduce");
    auto w = comm_->Reduce(tt, tt, op, static_cast<int>(opts.rootRank), Opts(opts.timeout));
    return Issue(OpType::REDUCE, absl::StrCat("reduce(root=", opts.rootRank, ")"), {w},
                 tensors, CopyBack(t, buf));
  }

  c10::intrusive_ptr<c10d::Work> allgather(std::vector<std::vector<at::Tensor>>& outputs,
                                           std::vector<at::Tensor>& inputs,
                                           const c10d::AllgatherOptions& opts) override {
    const at::Tensor& in = One(inputs, "allgather");
    TORCH_CHECK(outputs.size() == 1 && static_cast<int>(outputs[0].size()) == size_,
                "trident: allgather needs one output list of ", size_, " tensors");
    at::Tensor src = Staged(in);
    at::Tensor buf = at::empty({size_ * in.numel()}, src.options());
    auto w = comm_->AllGather(Bytes(src), Bytes(buf), Opts(opts.timeout));
    std::vector<at::Tensor> outs = outputs[0];
    int64_t n = in.numel();
    return Issue(OpType::ALLGATHER, "allgather", {w}, outs, [outs, buf, src, n]() mutable {
      for (size_t r = 0; r < outs.size(); ++r) {
        outs[r].copy_(buf.narrow(0, static_cast<int64_t>(r) * n, n).view(outs[r].sizes()));
      }
    });
  }

  c10::intrusive_ptr<c10d::Work> _allgather_base(at::Tensor& output, at::Tensor& input,
                                                 const c10d::AllgatherOptions& opts) override {
    TORCH_CHECK(output.numel() == input.numel() * size_,
                "trident: all_gather_into_tensor needs an output of ", size_,
                " x the input's elements");
    at::Tensor src = Staged(input);
    at::Tensor buf = Staged(output);
    auto w = comm_->AllGather(Bytes(src), Bytes(buf), Opts(opts.timeout));
    std::vector<at::Tensor> outs{output};
    return Issue(OpType::_ALLGATHER_BASE, "all_gather_into_tensor", {w}, outs,
                 CopyBack(output, buf, src));
  }

  c10::intrusive_ptr<c10d::Work> allgather_into_tensor_coalesced(
      std::vector<at::Tensor>& outputs, std::vector<at::Tensor>& inputs,
      const c10d::AllgatherOptions& opts) override {
    TORCH_CHECK(outputs.size() == inputs.size(),
                "trident: allgather_into_tensor_coalesced needs as many outputs as inputs");
    std::vector<std::shared_ptr<trident::Work>> works;
    std::vector<std::function<void()>> finishes;
    for (size_t i = 0; i < inputs.size(); ++i) {
      TORCH_CHECK(outputs[i].numel() == inputs[i].numel() * size_,
                  "trident: allgather_into_tensor_coalesced: output ", i, " has the wrong size");
      at::Tensor src = Staged(inputs[i]);
      at::Tensor buf = Staged(outputs[i]);
      works.push_back(comm_->AllGather(Bytes(src), Bytes(buf), Opts(opts.timeout)));
      finishes.push_back(CopyBack(outputs[i], buf, src));
    }
    return Issue(OpType::COALESCED, "allgather_into_tensor_coalesced", works, outputs,
                 Chain(std::move(finishes)));
  }

  c10::intrusive_ptr<c10d::Work> reduce_scatter(
      std::vector<at::Tensor>& outputs, std::vector<std::vector<at::Tensor>>& inputs,
      const c10d::ReduceScatterOptions& opts) override {
    const at::Tensor& out = One(outputs, "reduce_scatter");
    TORCH_CHECK(inputs.size() == 1 && static_cast<int>(inputs[0].size()) == size_,
                "trident: reduce_scatter needs one input list of ", size_, " tensors");
    trident::ReduceOp op = Check(ToReduceOp(opts.reduceOp), "reduce_scatter");
    std::vector<at::Tensor> flat;
    for (const auto& t : inputs[0]) flat.push_back(t.reshape(-1).to(at::kCPU));
    at::Tensor src = at::cat(flat);
    at::Tensor buf = Staged(out);
    auto w = comm_->ReduceScatter(Typed(src, "reduce_scatter"), Typed(buf, "reduce_scatter"), op,
                                  Opts(opts.timeout));
    return Issue(OpType::REDUCE_SCATTER, "reduce_scatter", {w}, outputs,
                 CopyBack(out, buf, src));
  }

  c10::intrusive_ptr<c10d::Work> _reduce_scatter_base(
      at::Tensor& output, at::Tensor& input, const c10d::ReduceScatterOptions& opts) override {
    TORCH_CHECK(input.numel() == output.numel() * size_,
                "trident: reduce_scatter_tensor needs an input of ", size_,
                " x the output's elements");
    trident::ReduceOp op = Check(ToReduceOp(opts.reduceOp), "reduce_scatter_tensor");
    at::Tensor src = Staged(input);
    at::Tensor buf = Staged(output);
    auto w = comm_->ReduceScatter(Typed(src, "reduce_scatter_tensor"),
                                  Typed(buf, "reduce_scatter_tensor"), op, Opts(opts.timeout));
    std::vector<at::Tensor> outs{output};
    return Issue(OpType::_REDUCE_SCATTER_BASE, "reduce_scatter_tensor", {w}, outs,
                 CopyBack(output, buf, src));
  }

  c10::intrusive_ptr<c10d::Work> reduce_scatter_tensor_coalesced(
      std::vector<at::Tensor>& outputs, std::vector<at::Tensor>& inputs,
      const c10d::ReduceScatterOptions& opts) override {
    TORCH_CHECK(outputs.size() == inputs.size(),
                "trident: reduce_scatter_tensor_coalesced needs as many outputs as inputs");
    trident::ReduceOp op = Check(ToReduceOp(opts.reduceOp), "reduce_scatter_tensor_coalesced");
    std::vector<std::shared_ptr<trident::Work>> works;
    std::vector<std::function<void()>> finishes;
    for (size_t i = 0; i < inputs.size(); ++i) {
      TORCH_CHECK(inputs[i].numel() == outputs[i].numel() * size_,
                  "trident: reduce_scatter_tensor_coalesced: input ", i, " has the wrong size");
      at::Tensor src = Staged(inputs[i]);
      at::Tensor buf = Staged(outputs[i]);
      works.push_back(comm_->ReduceScatter(Typed(src, "reduce_scatter"),
                                           Typed(buf, "reduce_scatter"), op, Opts(opts.timeout)));
      finishes.push_back(CopyBack(outputs[i], buf, src));
    }
    return Issue(OpType::COALESCED, "reduce_scatter_tensor_coalesced", works, outputs,
                 Chain(std::move(finishes)));
  }

  c10::intrusive_ptr<c10d::Work> alltoall_base(at::Tensor& output, at::Tensor& input,
                                               std::vector<int64_t>& output_splits,
                                               std::vector<int64_t>& input_splits,
                                               const c10d::AllToAllOptions& opts) override {
    at::Tensor src = Staged(input);
    at::Tensor buf = Staged(output);
    std::vector<at::Tensor> outs{output};
    if (output_splits.empty() && input_splits.empty()) {
      TORCH_CHECK(input.numel() == output.numel() && input.numel() % size_ == 0,
                  "trident: all_to_all_single needs input and output of equal size, a "
                  "multiple of the group size");
      auto w = comm_->AllToAll(Bytes(src), Bytes(buf), Opts(opts.timeout));
      return Issue(OpType::ALLTOALL_BASE, "all_to_all_single", {w}, outs,
                   CopyBack(output, buf, src));
    }
    // Uneven splits: one point-to-point batch (rows of dim 0; an empty split list means even).
    auto splits = [&](const std::vector<int64_t>& s, const at::Tensor& t) {
      std::vector<int64_t> out = s;
      if (out.empty()) out.assign(size_, t.size(0) / size_);
      TORCH_CHECK(static_cast<int>(out.size()) == size_,
                  "trident: all_to_all_single: a split list needs ", size_, " entries");
      return out;
    };
    std::vector<int64_t> in_s = splits(input_splits, input);
    std::vector<int64_t> out_s = splits(output_splits, output);
    const int64_t in_row = input.dim() == 0 ? 0 : input.numel() / std::max<int64_t>(input.size(0), 1);
    const int64_t out_row = output.dim() == 0 ? 0 : output.numel() / std::max<int64_t>(output.size(0), 1);
    std::vector<trident::P2POp> ops;
    int64_t in_off = 0, out_off = 0;
    std::vector<std::pair<at::Tensor, at::Tensor>> self_copy;
    for (int r = 0; r < size_; ++r) {
      at::Tensor in_part = src.reshape(-1).narrow(0, in_off * in_row, in_s[r] * in_row);
      at::Tensor out_part = buf.reshape(-1).narrow(0, out_off * out_row, out_s[r] * out_row);
      if (r == rank_) {
        self_copy.emplace_back(out_part, in_part);
      } else {
        if (in_part.numel() > 0) {
          ops.push_back({trident::P2POp::Kind::kSend, Bytes(in_part), r, kInternalTag});
        }
        if (out_part.numel() > 0) {
          ops.push_back({trident::P2POp::Kind::kRecv, Bytes(out_part), r, kInternalTag});
        }
      }
      in_off += in_s[r];
      out_off += out_s[r];
    }
    for (auto& [dst, from] : self_copy) dst.copy_(from);
    auto w = ops.empty() ? comm_->Barrier(Opts(opts.timeout)) : comm_->SendRecv(ops, Opts(opts.timeout));
    return Issue(OpType::ALLTOALL_BASE, "all_to_all_single", {w}, outs,
                 CopyBack(output, buf, src));
  }

  c10::intrusive_ptr<c10d::Work> alltoall(std::vector<at::Tensor>& outputs,
                                          std::vector<at::Tensor>& inputs,
                                          const c10d::AllToAllOptions& opts) override {
    TORCH_CHECK(static_cast<int>(outputs.size()) == size_ &&
                    static_cast<int>(inputs.size()) == size_,
                "trident: all_to_all needs lists of ", size_, " tensors");
    std::vector<trident::P2POp> ops;
    std::vector<at::Tensor> bufs;
    std::vector<at::Tensor> keep;
    for (int r = 0; r < size_; ++r) {
      at::Tensor in = Staged(inputs[r]);
      at::Tensor out = Staged(outputs[r]);
      bufs.push_back(out);
      keep.push_back(in);
      if (r == rank_) {
        out.copy_(in);
        continue;
      }
      if (in.numel() > 0) ops.push_back({trident::P2POp::Kind::kSend, Bytes(in), r, kInternalTag});
      if (out.numel() > 0) ops.push_back({trident::P2POp::Kind::kRecv, Bytes(out), r, kInternalTag});
    }
    auto w = ops.empty() ? comm_->Barrier(Opts(opts.timeout)) : comm_->SendRecv(ops, Opts(opts.timeout));
    std::vector<at::Tensor> outs = outputs;
    return Issue(OpType::ALLTOALL, "all_to_all", {w}, outputs, [outs, bufs, keep]() mutable {
      for (size_t r = 0; r < outs.size(); ++r) {
        if (!SameBuffer(outs[r], bufs[r])) outs[r].copy_(bufs[r]);
      }
    });
  }

  c10::intrusive_ptr<c10d::Work> gather(std::vector<std::vector<at::Tensor>>& outputs,
                                        std::vector<at::Tensor>& inputs,
                                        const c10d::GatherOptions& opts) override {
    const at::Tensor& in = One(inputs, "gather");
    const int root = static_cast<int>(opts.rootRank);
    at::Tensor src = Staged(in);
    std::vector<trident::P2POp> ops;
    std::vector<at::Tensor> bufs, outs;
    if (rank_ == root) {
      TORCH_CHECK(outputs.size() == 1 && static_cast<int>(outputs[0].size()) == size_,
                  "trident: gather needs one output list of ", size_, " tensors on the root");
      outs = outputs[0];
      for (int r = 0; r < size_; ++r) {
        at::Tensor b = Staged(outs[r]);
        bufs.push_back(b);
        if (r == rank_) b.copy_(src.view(b.sizes()));
        else ops.push_back({trident::P2POp::Kind::kRecv, Bytes(b), r, kInternalTag});
      }
    } else {
      ops.push_back({trident::P2POp::Kind::kSend, Bytes(src), root, kInternalTag});
    }
    auto w = ops.empty() ? comm_->Barrier(Opts(opts.timeout)) : comm_->SendRecv(ops, Opts(opts.timeout));
    return Issue(OpType::GATHER, absl::StrCat("gather(root=", root, ")"), {w}, outs,
                 [outs, bufs, src]() mutable {
                   for (size_t r = 0; r < outs.size(); ++r) {
                     if (!SameBuffer(outs[r], bufs[r])) outs[r].copy_(bufs[r]);
                   }
                 });
  }

  c10::intrusive_ptr<c10d::Work> scatter(std::vector<at::Tensor>& outputs,
                                         std::vector<std::vector<at::Tensor>>& inputs,
                                         const c10d::ScatterOptions& opts) override {
    const at::Tensor& out = One(outputs, "scatter");
    const int root = static_cast<int>(opts.rootRank);
    at::Tensor buf = Staged(out);
    std::vector<trident::P2POp> ops;
    std::vector<at::Tensor> keep;
    if (rank_ == root) {
      TORCH_CHECK(inputs.size() == 1 && static_cast<int>(inputs[0].size()) == size_,
                  "trident: scatter needs one input list of ", size_, " tensors on the root");
      for (int r = 0; r < size_; ++r) {
        at::Tensor s = Staged(inputs[0][r]);
        keep.push_back(s);
        if (r == rank_) buf.copy_(s.view(buf.sizes()));
        else ops.push_back({trident::P2POp::Kind::kSend, Bytes(s), r, kInternalTag});
      }
    } else {
      ops.push_back({trident::P2POp::Kind::kRecv, Bytes(buf), root, kInternalTag});
    }
    auto w = ops.empty() ? comm_->Barrier(Opts(opts.timeout)) : comm_->SendRecv(ops, Opts(opts.timeout));
    std::function<void()> back = CopyBack(out, buf);
    return Issue(OpType::SCATTER, absl::StrCat("scatter(root=", root, ")"), {w}, outputs,
                 [back, keep]() { if (back) back(); });
  }

  c10::intrusive_ptr<c10d::Work> send(std::vector<at::Tensor>& tensors, int dst,
                                      int tag) override {
    const at::Tensor& t = One(tensors, "send");
    CheckTag(tag, "send");
    at::Tensor buf = Staged(t);
    auto w = comm_->Send(Bytes(buf), dst, tag, Opts(c10d::kUnsetTimeout));
    return Issue(OpType::SEND, absl::StrCat("send(dst=", dst, ", tag=", tag, ")"), {w}, tensors,
                 [buf]() {});
  }

  c10::intrusive_ptr<c10d::Work> recv(std::vector<at::Tensor>& tensors, int src,
                                      int tag) override {
    const at::Tensor& t = One(tensors, "recv");
    CheckTag(tag, "recv");
    at::Tensor buf = Staged(t);
    auto w = comm_->Recv(Bytes(buf), src, tag, Opts(c10d::kUnsetTimeout));
    return Issue(OpType::RECV, absl::StrCat("recv(src=", src, ", tag=", tag, ")"), {w}, tensors,
                 CopyBack(t, buf));
  }

  c10::intrusive_ptr<c10d::Work> barrier(const c10d::BarrierOptions& opts) override {
    auto w = comm_->Barrier(Opts(opts.timeout));
    return Issue(OpType::BARRIER, "barrier", {w}, {}, nullptr);
  }

  void abort() override {
    comm_->Abort(absl::CancelledError("the process group was aborted (abort())"));
  }
  void shutdown() override {
    comm_->Abort(absl::CancelledError("the process group was shut down"));
  }

  void setTimeout(std::chrono::milliseconds timeout) override { timeout_ = timeout; }

  std::string Describe() const { return comm_->Describe(); }
  trident::Communicator& comm() { return *comm_; }

  // The C++ baseline of the per-op overhead benchmark (tests/perf/torch_allreduce.py):
  // `iters` blocking AllReduce(sum) calls straight on the communicator, no c10d or Python in
  // between; returns the mean seconds per call. Collective: every rank calls it.
  double TimeAllReduce(const at::Tensor& t, int iters) {
    at::Tensor buf = Staged(t);
    trident::Tensor tt = Typed(buf, "allreduce");
    auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) {
      absl::Status s = comm_->AllReduce(tt, tt, trident::ReduceOp::kSum, Opts(c10d::kUnsetTimeout))->Wait();
      if (!s.ok()) Throw(absl::StrCat("trident: allreduce failed: ", s.ToString()));
    }
    std::chrono::duration<double> d = std::chrono::steady_clock::now() - start;
    return d.count() / std::max(iters, 1);
  }

 private:
  const at::Tensor& One(const std::vector<at::Tensor>& tensors, const char* op) {
    TORCH_CHECK(tensors.size() == 1, "trident: ", op,
                " takes exactly one tensor per rank (got ", tensors.size(), ")");
    return tensors[0];
  }

  template <typename T>
  T Check(absl::StatusOr<T> v, const char* op) {
    TORCH_CHECK(v.ok(), "trident: ", op, ": ", std::string(v.status().message()));
    return *std::move(v);
  }

  void CheckTag(int tag, const char* op) {
    TORCH_CHECK(tag >= 0 && tag < kInternalTag, "trident: ", op, ": tag ", tag,
                " is out of range [0, ", kInternalTag, ")");
  }

  trident::Tensor Typed(const at::Tensor& buf, const char* op) {
    trident::DType d = Check(ToDType(buf.scalar_type()), op);
    return trident::Tensor(buf.data_ptr(), d, {buf.numel()});
  }
  // Ops that only move data see every dtype as bytes.
  static trident::Tensor Bytes(const at::Tensor& buf) {
    return trident::Tensor(buf.data_ptr(), trident::DType::kU8,
                           {static_cast<int64_t>(buf.numel() * buf.element_size())});
  }

  trident::OpOptions Opts(std::chrono::milliseconds timeout) const {
    trident::OpOptions o;
    if (timeout != c10d::kUnsetTimeout && timeout.count() > 0) {
      o.timeout = absl::FromChrono(timeout);
    } else {
      o.timeout = absl::FromChrono(timeout_);
    }
    return o;
  }

  // The copy from the staging buffer back to the user's tensor (none when they are one);
  // `keep` holds an input buffer alive until the op completes.
  static std::function<void()> CopyBack(const at::Tensor& user, const at::Tensor& buf,
                                        at::Tensor keep = at::Tensor()) {
    if (SameBuffer(user, buf)) return [buf, keep]() {};
    at::Tensor u = user;
    return [u, buf, keep]() mutable { u.copy_(buf.view(u.sizes())); };
  }

  static std::function<void()> Chain(std::vector<std::function<void()>> fs) {
    return [fs = std::move(fs)]() {
      for (const auto& f : fs) {
        if (f) f();
      }
    };
  }

  c10::intrusive_ptr<c10d::Work> Issue(OpType type, std::string what,
                                       std::vector<std::shared_ptr<trident::Work>> works,
                                       std::vector<at::Tensor> outputs,
                                       std::function<void()> finish) {
    std::string desc = absl::StrCat(what, " on rank ", rank_, " of ", size_, " (",
                                    comm_->Describe(), ")");
    auto work = c10::make_intrusive<TridentWork>(rank_, type, std::move(desc), std::move(works),
                                                 std::move(outputs), std::move(finish));
    {
      std::lock_guard<std::mutex> lock(mu_);
      pending_.push_back(work);
    }
    cv_.notify_one();
    return work;
  }

  // Completes the futures in issue order (every op ends by its deadline at the latest).
  void CompleteLoop() {
    for (;;) {
      c10::intrusive_ptr<TridentWork> w;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !pending_.empty(); });
        if (pending_.empty()) return;  // stop_ and drained
        w = pending_.front();
        pending_.pop_front();
      }
      w->Complete();
    }
  }

  std::unique_ptr<trident::Communicator> comm_;
  const std::string name_;
  std::chrono::milliseconds timeout_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<c10::intrusive_ptr<TridentWork>> pending_;  // guarded by mu_
  bool stop_ = false;                                     // guarded by mu_
  std::thread completer_;
};

}  // namespace

trident::Communicator* BackendCommunicator(const c10::intrusive_ptr<c10d::Backend>& backend) {
  auto* tb = dynamic_cast<TridentBackend*>(backend.get());
  return tb == nullptr ? nullptr : &tb->comm();
}

}  // namespace trident_torch

PYBIND11_MODULE(_C, m) {
  namespace py = pybind11;
  m.doc() = "Trident's native module: the c10d backend 'trident' (see trident.torch).";
  py::module_::import("torch.distributed");
  m.def("create_backend", &trident_torch::TridentBackend::Create, py::arg("store"),
        py::arg("rank"), py::arg("size"), py::arg("timeout"),
        py::call_guard<py::gil_scoped_release>(),
        "Creates the c10d backend of one process group (called by torch.distributed).");
  m.def(
      "_cpp_allreduce_seconds",
      [](const c10::intrusive_ptr<c10d::Backend>& backend, const at::Tensor& t, int iters) {
        auto* tb = dynamic_cast<trident_torch::TridentBackend*>(backend.get());
        TORCH_CHECK(tb != nullptr, "trident: not a trident backend");
        return tb->TimeAllReduce(t, iters);
      },
      py::arg("backend"), py::arg("tensor"), py::arg("iters"),
      py::call_guard<py::gil_scoped_release>(),
      "Benchmark baseline: mean seconds of `iters` blocking AllReduce calls made in C++ on the "
      "backend's communicator (collective; every rank calls it).");
  trident_torch::RegisterRuntime(m);
  m.attr("__version__") = "0.1.0";
}
