// The NCCL backend; compiled to nothing in builds without NCCL (nccl_create.cc answers there).
#if TRIDENT_HAVE_NCCL

#include "comm/nccl/nccl_communicator.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <tuple>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "comm/nccl/nccl_status.h"
#include "comm/op_checks.h"
#include "common/check.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace trident::nccl {

absl::Status NcclCheck(ncclResult_t result, absl::string_view call, ncclComm_t comm) {
  if (result == ncclSuccess) return absl::OkStatus();
  const char* last = ncclGetLastError(comm);
  return NcclResultToStatus(static_cast<int>(result), call, ncclGetErrorString(result),
                            last != nullptr ? last : "");
}

namespace {

ncclDataType_t ToNccl(DType dtype) {
  switch (dtype) {
    case DType::kF32: return ncclFloat32;
    case DType::kF64: return ncclFloat64;
    case DType::kF16: return ncclFloat16;
    case DType::kBF16: return ncclBfloat16;
    case DType::kI8: return ncclInt8;
    case DType::kU8: return ncclUint8;
    case DType::kI32: return ncclInt32;
    case DType::kI64: return ncclInt64;
  }
  TRIDENT_CHECK(false) << "unknown dtype " << static_cast<int>(dtype);
  __builtin_unreachable();
}

ncclRedOp_t ToNccl(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return ncclSum;
    case ReduceOp::kProd: return ncclProd;
    case ReduceOp::kMin: return ncclMin;
    case ReduceOp::kMax: return ncclMax;
    case ReduceOp::kAvg: return ncclAvg;
  }
  TRIDENT_CHECK(false) << "unknown reduce op " << static_cast<int>(op);
  __builtin_unreachable();
}

// ncclGetVersion of the library loaded (not the headers'); 0 if it does not say.
int LoadedNcclVersion() {
  static const int version = [] {
    int v = 0;
    return ncclGetVersion(&v) == ncclSuccess ? v : 0;
  }();
  return version;
}

std::string NcclVersion() {
  const int v = LoadedNcclVersion();
  if (v == 0) return "nccl ?";
  // Since 2.9 the code is major*10000 + minor*100 + patch.
  return absl::StrCat("nccl ", v / 10000, ".", (v % 10000) / 100, ".", v % 100);
}

void Pause(absl::Duration& pause) {
  absl::SleepFor(pause);
  pause = std::min(pause * 2, absl::Milliseconds(1));
}

}  // namespace

// --- NcclHandle --------------------------------------------------------------------------

NcclHandle::NcclHandle(ncclComm_t comm, NcclGroup group) : group_(std::move(group)), comm_(comm) {
  TRIDENT_CHECK(group_.store != nullptr);
  TRIDENT_CHECK(static_cast<int>(group_.job_ranks.size()) == group_.size);
}

NcclHandle::~NcclHandle() {
  // The communicator finalises or aborts before it lets go of the handle; a handle that still
  // holds a ncclComm_t here was never handed over (a failed init), so abort it.
  absl::MutexLock lock(&mu_);
  if (comm_ != nullptr) {
    cuda::DeviceGuard guard(group_.device);
    ncclCommAbort(comm_);
    comm_ = nullptr;
  }
}

std::string NcclHandle::Describe() const {
  return absl::StrCat(group_.name, "[rank ", group_.rank, "/", group_.size, ", epoch ",
                      group_.epoch, ", ", NcclVersion(), " on cuda:", group_.device, "]");
}

absl::Status NcclHandle::AwaitReady(ncclComm_t comm, absl::string_view call, absl::Time deadline,
                                    const std::function<bool()>& abandon) {
  absl::Duration pause = absl::Microseconds(1);
  // A call can stay in progress for long (connections are made on first use); a member that
  // aborted meanwhile would keep it there until the deadline, so look at the communicator's
  // store keys now and then.
  absl::Time next_health = absl::Now() + absl::Milliseconds(100);
  while (true) {
    ncclResult_t state = ncclSuccess;
    ncclResult_t r = ncclCommGetAsyncError(comm, &state);
    if (r != ncclSuccess) return NcclCheck(r, "ncclCommGetAsyncError", comm);
    if (state == ncclSuccess) return absl::OkStatus();
    if (state != ncclInProgress) return NcclCheck(state, call, comm);
    if (abandon && abandon()) {
      return absl::AbortedError(absl::StrCat(call, " on ", Describe(),
                                             ": given up, the communicator is being aborted"));
    }
    const absl::Time now = absl::Now();
    if (now >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          call, " on ", Describe(), " was still in progress at its deadline"));
    }
    if (now >= next_health) {
      next_health = now + absl::Milliseconds(100);
      RETURN_IF_ERROR(PeerAborted());
    }
    Pause(pause);
  }
}

absl::Status NcclHandle::Run(absl::string_view call, absl::Time deadline,
                             const std::function<bool()>& abandon,
                             const std::function<ncclResult_t(ncclComm_t)>& launch,
                             const std::function<absl::Status()>& after) {
  absl::MutexLock lock(&mu_);
  if (comm_ == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(call, " on ", Describe(), ": the NCCL communicator was aborted"));
  }
  cuda::DeviceGuard guard(group_.device);
  RETURN_IF_ERROR(guard.status());
  ncclResult_t r = launch(comm_);
  if (r == ncclInProgress) {
    RETURN_IF_ERROR(AwaitReady(comm_, call, deadline, abandon));
  } else if (r != ncclSuccess) {
    return NcclCheck(r, call, comm_);
  }
  return after ? after() : absl::OkStatus();
}

absl::StatusOr<bool> NcclHandle::PollReady(absl::string_view call) {
  absl::MutexLock lock(&mu_);
  if (comm_ == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(call, " on ", Describe(), ": the NCCL communicator was aborted"));
  }
  ncclResult_t state = ncclSuccess;
  ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
  if (r != ncclSuccess) return NcclCheck(r, "ncclCommGetAsyncError", comm_);
  if (state == ncclInProgress) return false;
  RETURN_IF_ERROR(NcclCheck(state, call, comm_));
  return true;
}

absl::Status NcclHandle::AsyncError() {
  // Never wait for the lock: the thread that holds it is queuing an op and polls the same
  // error itself; and the watchdog thread must not stall behind it.
  if (!mu_.TryLock()) return absl::OkStatus();
  absl::Status status;
  if (comm_ != nullptr) {
    ncclResult_t state = ncclSuccess;
    ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
    if (r != ncclSuccess) {
      status = NcclCheck(r, "ncclCommGetAsyncError", comm_);
    } else if (state != ncclSuccess && state != ncclInProgress) {
      status = NcclCheck(state, "ncclCommGetAsyncError", comm_);
    }
  }
  mu_.Unlock();
  return status;
}

std::string NcclHandle::AbortedPrefix() const {
  return absl::StrCat("comm/", group_.context, "/aborted/");
}

absl::Status NcclHandle::PeerAborted() {
  const absl::Time deadline = absl::Now() + absl::Milliseconds(500);
  auto aborted = group_.store->ListPrefix(AbortedPrefix(), deadline);
  if (!aborted.ok()) return absl::OkStatus();  // the store is briefly unreachable; keep going
  for (const std::string& key : *aborted) {
    int rank = -1;
    if (!absl::SimpleAtoi(absl::string_view(key).substr(AbortedPrefix().size()), &rank) ||
        rank == group_.rank || rank < 0 || rank >= group_.size) {
      continue;
    }
    auto cause = group_.store->TryGet(key, deadline);
    return absl::AbortedError(absl::StrCat(
        "rank ", rank, " (job rank ", group_.job_ranks[rank], ") of ", group_.name, " (epoch ",
        group_.epoch, ") aborted the communicator: ",
        cause.ok() ? *cause : std::string("(its reason could not be read)")));
  }
  return absl::OkStatus();
}

void NcclHandle::PublishAbort(const absl::Status& why) {
  absl::Status s = group_.store->Set(absl::StrCat(AbortedPrefix(), group_.rank), why.ToString(),
                                     absl::Now() + absl::Milliseconds(500));
  if (!s.ok()) TLOG(warn, "{}: could not tell the other ranks it aborted: {}", Describe(), s);
}

absl::Status NcclHandle::DiagnoseTimeout(const GpuWork& op) {
  const std::string head =
      absl::StrCat(op.name(), " timed out after ", absl::FormatDuration(op.timeout()));
  if (op.seq() < 0) {
    return absl::DeadlineExceededError(absl::StrCat(
        head, ": the peer never posted the matching call, or the transfer stalled"));
  }
  // Every rank whose watchdog sees this op expire records it; a rank missing after a short
  // grace period never queued the op (or is stuck before it, or dead).
  const std::string prefix =
      absl::StrCat("comm/", group_.context, "/arrived/", op.seq(), "/");
  const absl::Duration grace = std::min(absl::Seconds(1), op.timeout());
  Store& store = *group_.store;
  std::string missing = "unknown (the store did not answer)";
  if (store.Set(absl::StrCat(prefix, group_.rank), "1", absl::Now() + grace).ok()) {
    std::vector<std::string> keys;
    for (int r = 0; r < group_.size; ++r) keys.push_back(absl::StrCat(prefix, r));
    if (store.Wait(keys, absl::Now() + grace).ok()) {
      missing = "none: every rank had queued it, but NCCL made no progress (a network, "
                "NVLink or device problem)";
    } else if (auto arrived = store.ListPrefix(prefix, absl::Now() + grace); arrived.ok()) {
      std::vector<int> absent;
      for (int r = 0; r < group_.size; ++r) {
        if (std::find(arrived->begin(), arrived->end(), keys[r]) == arrived->end()) {
          absent.push_back(r);
        }
      }
      missing = absent.empty() ? "none" : absl::StrJoin(absent, ", ");
    }
  }
  return absl::DeadlineExceededError(
      absl::StrCat(head, "; ranks that had not queued it: ", missing));
}

void NcclHandle::AbortBackend(const absl::Status& why) {
  // Takes the lock: a thread queuing an op gives it up promptly (it polls the abort), and
  // nothing else holds it for long.
  absl::MutexLock lock(&mu_);
  if (comm_ == nullptr) return;
  const absl::Time start = absl::Now();
  cuda::DeviceGuard guard(group_.device);
  ncclResult_t r = ncclCommAbort(comm_);
  comm_ = nullptr;
  if (r != ncclSuccess && r != ncclInProgress) {
    TLOG(warn, "{}: ncclCommAbort: {}", Describe(), NcclCheck(r, "ncclCommAbort"));
  }
  TLOG(info, "{}: NCCL communicator aborted in {} ({})", Describe(),
               absl::FormatDuration(absl::Now() - start), why.message());
}

absl::Status NcclHandle::Finalize(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  if (comm_ == nullptr) return absl::OkStatus();
  cuda::DeviceGuard guard(group_.device);
  RETURN_IF_ERROR(guard.status());
  ncclResult_t r = ncclCommFinalize(comm_);
  if (r == ncclInProgress) {
    RETURN_IF_ERROR(AwaitReady(comm_, "ncclCommFinalize", deadline, nullptr));
  } else if (r != ncclSuccess) {
    return NcclCheck(r, "ncclCommFinalize", comm_);
  }
  r = ncclCommDestroy(comm_);
  comm_ = nullptr;
  return NcclCheck(r, "ncclCommDestroy");
}

// --- NcclCommunicator --------------------------------------------------------------------

NcclCommunicator::NcclCommunicator(std::shared_ptr<NcclHandle> handle,
                                   std::shared_ptr<WatchedComm> watched,
                                   std::shared_ptr<Watchdog> watchdog)
    : watchdog_(std::move(watchdog)), handle_(std::move(handle)), watched_(std::move(watched)) {}

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Create(
    std::shared_ptr<NcclHandle> handle, std::shared_ptr<WatchedComm> watched,
    std::shared_ptr<Watchdog> watchdog) {
  const int device = handle->group().device;
  auto comm = std::unique_ptr<NcclCommunicator>(
      new NcclCommunicator(std::move(handle), std::move(watched), std::move(watchdog)));
  // Blocking with respect to the legacy default stream: work the caller queued there without
  // naming a stream runs before ops that name none either.
  ASSIGN_OR_RETURN(comm->stream_, cuda::OwnedStream::Create(device, /*non_blocking=*/false));
  ASSIGN_OR_RETURN(comm->scratch_, cuda::DeviceBuffer::Allocate(sizeof(float), device));
  return comm;
}

NcclCommunicator::~NcclCommunicator() {
  if (watched_->pending() > 0) {
    Abort(absl::AbortedError(absl::StrCat(Describe(), " was destroyed with ops pending")));
  }
  if (!watched_->aborted()) {
    absl::Status s = handle_->Finalize(absl::Now() + std::min(group().timeout, absl::Seconds(30)));
    if (!s.ok()) {
      TLOG(warn, "{}: clean shutdown failed, aborting instead: {}", Describe(), s);
      watched_->Abort(absl::AbortedError(absl::StrCat(Describe(), " shutdown: ", s.message())));
    }
  }
  // A requested abort runs on the watchdog's thread; wait for it (the watchdog exits the
  // process if it hangs) before the stream and scratch memory go away.
  watched_->AwaitBackendAborted();
}

void NcclCommunicator::Abort(absl::Status status) { watched_->Abort(std::move(status)); }

absl::Status NcclCommunicator::AbortStatus() const { return watched_->abort_status(); }

int64_t NcclCommunicator::NextSeq() {
  absl::MutexLock lock(&seq_mu_);
  return next_seq_++;
}

std::string NcclCommunicator::OpName(absl::string_view kind, int64_t seq, int64_t count,
                                     DType dtype) const {
  return absl::StrCat(kind, " #", seq, " (count ", count, ", ", DTypeName(dtype), ") on ",
                      group().name, " epoch ", group().epoch);
}

absl::Status NcclCommunicator::CheckTensor(absl::string_view op, absl::string_view which,
                                           const Tensor& t) const {
  if (t.device().is_cpu()) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", which, " is a CPU tensor; the NCCL communicator ", Describe(),
        " takes CUDA tensors on cuda:", group().device, " (use the host backend for CPU tensors)"));
  }
  if (t.device().index != group().device) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", which, " is on cuda:",
                                                   t.device().index, " but ", Describe(),
                                                   " uses cuda:", group().device));
  }
  return CheckTensorShape(op, which, t);
}

cudaStream_t NcclCommunicator::StreamOf(const OpOptions& options) const {
  return options.cuda_stream != nullptr ? static_cast<cudaStream_t>(options.cuda_stream)
                                        : static_cast<cudaStream_t>(stream_->get());
}

std::shared_ptr<Work> NcclCommunicator::Fail(const std::string& name, absl::Status s) {
  if (watched_->aborted()) return GpuWork::Failed(name, watched_->abort_status());
  s = Annotate(s, name);
  if (cuda::IsContextLost(s)) {
    // No rebuild in this process can succeed; the watchdog's handler ends it.
    watched_->Abort(absl::AbortedError(s.message()));
    watchdog_->ReportDeviceLost(std::string(s.message()));
    return GpuWork::Failed(name, watched_->abort_status());
  }
  if (s.code() == absl::StatusCode::kInvalidArgument) {
    // Our checks passed, yet NCCL refused the call: on a non-blocking communicator NCCL keeps
    // that error (every later call would fail), so "nothing happened, still usable" does not
    // hold. Abort, saying why.
    s = absl::AbortedError(absl::StrCat(
        s.message(), "; NCCL keeps this error on a non-blocking communicator, so ", Describe(),
        " is aborted: rebuild it"));
  }
  // Anything but a refused argument leaves NCCL in an unknown state.
  watched_->Abort(s);
  return GpuWork::Failed(name, watched_->abort_status());
}

std::shared_ptr<Work> NcclCommunicator::FailBeforeNccl(const std::string& name,
                                                       const absl::Status& s) {
  // NCCL saw nothing: the communicator stays usable, unless the CUDA context is lost.
  if (cuda::IsContextLost(s)) return Fail(name, s);
  return GpuWork::Failed(name, Annotate(s, name));
}

std::shared_ptr<Work> NcclCommunicator::Issue(
    std::string name, int64_t seq, const OpOptions& options,
    const std::function<ncclResult_t(ncclComm_t, cudaStream_t)>& launch) {
  if (watched_->aborted()) {
    return GpuWork::Failed(name, absl::FailedPreconditionError(absl::StrCat(
                                     name, " issued on ", Describe(), " after it was aborted (",
                                     watched_->abort_status().message(), "); rebuild it")));
  }
  const absl::Duration timeout =
      options.timeout == absl::ZeroDuration() ? group().timeout : options.timeout;
  const absl::Time deadline = absl::Now() + timeout;
  cudaStream_t stream = StreamOf(options);
  // An op captured into a CUDA graph runs when the graph is launched, not now: it gets no
  // event and no deadline (querying an event recorded under capture is an error, and its
  // deadline would pass while the graph waits to be launched).
  absl::StatusOr<bool> capturing = cuda::IsCapturing(stream);
  if (!capturing.ok()) return FailBeforeNccl(name, capturing.status());
  std::shared_ptr<cuda::Event> event;
  WatchedComm* watched = watched_.get();
  absl::Status s = handle_->Run(
      name, deadline, [watched] { return watched->aborted(); },
      [&](ncclComm_t comm) { return launch(comm, stream); },
      [&]() -> absl::Status {
        if (*capturing) return absl::OkStatus();
        ASSIGN_OR_RETURN(std::unique_ptr<cuda::Event> e, cuda::Event::Record(stream, group().device));
        event = std::move(e);
        return absl::OkStatus();
      });
  if (!s.ok()) return Fail(name, s);
  if (*capturing) {
    return GpuWork::Done(absl::StrCat(name, " (captured into a CUDA graph: its errors and "
                                            "hangs show on the graph's launches)"));
  }
  auto work = std::make_shared<GpuWork>(name, seq, deadline, timeout,
                                        [event]() { return event->Done(); });
  // Track completes it with kFailedPrecondition if an abort came meanwhile; the Work says so.
  (void)watched_->Track(work);
  return work;
}

std::shared_ptr<Work> NcclCommunicator::AllReduce(const Tensor& in, const Tensor& out,
                                                  ReduceOp op, const OpOptions& options) {
  for (absl::Status s : {CheckTensor("AllReduce", "in", in), CheckTensor("AllReduce", "out", out),
                         CheckPairShapes("AllReduce", in, out, 1, 1),
                         CheckReduceOp("AllReduce", in.dtype(), op)}) {
    if (!s.ok()) return GpuWork::Failed("AllReduce", s);
  }
  const int64_t seq = NextSeq();
  return Issue(OpName("AllReduce", seq, in.numel(), in.dtype()), seq, options,
               [&](ncclComm_t c, cudaStream_t st) {
                 return ncclAllReduce(in.data(), out.data(), in.numel(), ToNccl(in.dtype()),
                                      ToNccl(op), c, st);
               });
}

std::shared_ptr<Work> NcclCommunicator::ReduceScatter(const Tensor& in, const Tensor& out,
                                                      ReduceOp op, const OpOptions& options) {
  for (absl::Status s :
       {CheckTensor("ReduceScatter", "in", in), CheckTensor("ReduceScatter", "out", out),
        CheckPairShapes("ReduceScatter", in, out, 1, size()),
        CheckReduceOp("ReduceScatter", in.dtype(), op)}) {
    if (!s.ok()) return GpuWork::Failed("ReduceScatter", s);
  }
  const int64_t seq = NextSeq();
  return Issue(OpName("ReduceScatter", seq, out.numel(), in.dtype()), seq, options,
               [&](ncclComm_t c, cudaStream_t st) {
                 return ncclReduceScatter(in.data(), out.data(), out.numel(),
                                          ToNccl(in.dtype()), ToNccl(op), c, st);
               });
}

std::shared_ptr<Work> NcclCommunicator::AllGather(const Tensor& in, const Tensor& out,
                                                  const OpOptions& options) {
  for (absl::Status s : {CheckTensor("AllGather", "in", in), CheckTensor("AllGather", "out", out),
                         CheckPairShapes("AllGather", in, out, size(), 1)}) {
    if (!s.ok()) return GpuWork::Failed("AllGather", s);
  }
  const int64_t seq = NextSeq();
  return Issue(OpName("AllGather", seq, in.numel(), in.dtype()), seq, options,
               [&](ncclComm_t c, cudaStream_t st) {
                 return ncclAllGather(in.data(), out.data(), in.numel(), ToNccl(in.dtype()), c,
                                      st);
               });
}

std::shared_ptr<Work> NcclCommunicator::Broadcast(const Tensor& tensor, int root,
                                                  const OpOptions& options) {
  if (absl::Status s = CheckTensor("Broadcast", "tensor", tensor); !s.ok()) {
    return GpuWork::Failed("Broadcast", s);
  }
  if (root < 0 || root >= size()) {
    return GpuWork::Failed("Broadcast", absl::InvalidArgumentError(absl::StrCat(
                                            "Broadcast: root ", root, " is not a rank of ",
                                            Describe())));
  }
  const int64_t seq = NextSeq();
  return Issue(OpName("Broadcast", seq, tensor.numel(), tensor.dtype()), seq, options,
               [&](ncclComm_t c, cudaStream_t st) {
                 return ncclBroadcast(tensor.data(), tensor.data(), tensor.numel(),
                                      ToNccl(tensor.dtype()), root, c, st);
               });
}

std::shared_ptr<Work> NcclCommunicator::Reduce(const Tensor& in, const Tensor& out, ReduceOp op,
                                               int root, const OpOptions& options) {
  for (absl::Status s : {CheckTensor("Reduce", "in", in), CheckTensor("Reduce", "out", out),
                         CheckPairShapes("Reduce", in, out, 1, 1),
                         CheckReduceOp("Reduce", in.dtype(), op)}) {
    if (!s.ok()) return GpuWork::Failed("Reduce", s);
  }
  if (root < 0 || root >= size()) {
    return GpuWork::Failed("Reduce", absl::InvalidArgumentError(absl::StrCat(
                                         "Reduce: root ", root, " is not a rank of ", Describe())));
  }
  const int64_t seq = NextSeq();
  return Issue(OpName("Reduce", seq, in.numel(), in.dtype()), seq, options,
               [&](ncclComm_t c, cudaStream_t st) {
                 return ncclReduce(in.data(), out.data(), in.numel(), ToNccl(in.dtype()),
                                   ToNccl(op), root, c, st);
               });
}

std::shared_ptr<Work> NcclCommunicator::AllToAll(const Tensor& in, const Tensor& out,
                                                 const OpOptions& options) {
  for (absl::Status s : {CheckTensor("AllToAll", "in", in), CheckTensor("AllToAll", "out", out),
                         CheckPairShapes("AllToAll", in, out, 1, 1)}) {
    if (!s.ok()) return GpuWork::Failed("AllToAll", s);
  }
  if (in.numel() % size() != 0) {
    return GpuWork::Failed("AllToAll", absl::InvalidArgumentError(absl::StrCat(
                                           "AllToAll: ", in.numel(), " elements do not split into ",
                                           size(), " equal blocks")));
  }
  const int64_t seq = NextSeq();
  const int64_t block = in.numel() / size();
  const size_t block_bytes = static_cast<size_t>(block) * DTypeSize(in.dtype());
  const int n = size();
  const std::string name = OpName("AllToAll", seq, in.numel(), in.dtype());
  // NCCL's all-to-all may overwrite a block of `out` before it has sent the same block of
  // `in`: when they overlap, send from a copy made on the op's stream, freed after the op.
  const void* send = in.data();
  void* scratch = nullptr;
  const cudaStream_t stream = StreamOf(options);
  const char* in_begin = static_cast<const char*>(in.data());
  const char* out_begin = static_cast<const char*>(out.data());
  if (in_begin < out_begin + out.nbytes() && out_begin < in_begin + in.nbytes() &&
      !watched_->aborted()) {
    absl::StatusOr<void*> copy = cuda::AllocAsync(in.nbytes(), stream);
    if (!copy.ok()) return FailBeforeNccl(name, copy.status());
    scratch = *copy;
    if (absl::Status s = cuda::CopyAsync(scratch, in.data(), in.nbytes(), stream); !s.ok()) {
      (void)cuda::FreeAsync(scratch, stream);
      return FailBeforeNccl(name, s);
    }
    send = scratch;
  }
  std::shared_ptr<Work> work =
      Issue(name, seq, options, [&](ncclComm_t c, cudaStream_t st) -> ncclResult_t {
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 28, 3)
                 // The NCCL loaded at run time may be older than the headers (a device
                 // image's own): ncclAlltoAll is bound lazily, only called when it exists.
                 if (LoadedNcclVersion() >= NCCL_VERSION(2, 28, 3)) {
                   return ncclAlltoAll(send, out.data(), block, ToNccl(in.dtype()), c, st);
                 }
#endif
                 // Before ncclAlltoAll: one group of n sends and n receives.
                 ncclResult_t r = ncclGroupStart();
                 if (r != ncclSuccess) return r;
                 for (int p = 0; p < n && r == ncclSuccess; ++p) {
                   r = ncclSend(static_cast<const char*>(send) + p * block_bytes, block,
                                ToNccl(in.dtype()), p, c, st);
                   if (r == ncclSuccess) {
                     r = ncclRecv(static_cast<char*>(out.data()) + p * block_bytes, block,
                                  ToNccl(in.dtype()), p, c, st);
                   }
                 }
                 ncclResult_t end = ncclGroupEnd();
                 return r != ncclSuccess ? r : end;
               });
  if (scratch != nullptr) {
    // Stream-ordered: given back after the all-to-all has read it (or at once if it was
    // never queued). A failure here only leaks the copy until the stream's pool is trimmed.
    if (absl::Status s = cuda::FreeAsync(scratch, stream); !s.ok()) {
      TLOG(warn, "{}: {}", name, s);
    }
  }
  return work;
}

std::shared_ptr<Work> NcclCommunicator::Barrier(const OpOptions& options) {
  // NCCL has no barrier: a one-element all-reduce, complete only when every rank queued it.
  const int64_t seq = NextSeq();
  void* scratch = scratch_->data();
  return Issue(OpName("Barrier", seq, 1, DType::kF32), seq, options,
               [&](ncclComm_t c, cudaStream_t st) {
                 return ncclAllReduce(scratch, scratch, 1, ncclFloat32, ncclSum, c, st);
               });
}

absl::Status NcclCommunicator::CheckP2P(absl::string_view op, const Tensor& tensor, int peer,
                                        int tag) const {
  RETURN_IF_ERROR(CheckTensor(op, "tensor", tensor));
  if (peer < 0 || peer >= size() || peer == rank()) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": peer ", peer, " is not another rank of ", Describe()));
  }
  if (tag < 0 || tag >= (1 << 24)) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": tag ", tag, " is outside [0, 2^24)"));
  }
  return absl::OkStatus();
}

std::shared_ptr<Work> NcclCommunicator::Send(const Tensor& tensor, int peer, int tag,
                                             const OpOptions& options) {
  return SendRecv({P2POp{P2POp::Kind::kSend, tensor, peer, tag}}, options);
}

std::shared_ptr<Work> NcclCommunicator::Recv(const Tensor& tensor, int peer, int tag,
                                             const OpOptions& options) {
  return SendRecv({P2POp{P2POp::Kind::kRecv, tensor, peer, tag}}, options);
}

std::shared_ptr<Work> NcclCommunicator::SendRecv(const std::vector<P2POp>& ops,
                                                 const OpOptions& options) {
  for (const P2POp& op : ops) {
    const char* kind = op.kind == P2POp::Kind::kSend ? "Send" : "Recv";
    if (absl::Status s = CheckP2P(kind, op.tensor, op.peer, op.tag); !s.ok()) {
      return GpuWork::Failed(ops.size() == 1 ? kind : "SendRecv", s);
    }
  }
  // NCCL matches point-to-point calls in issue order per peer and direction; the tag is not
  // sent. In (peer, kind, tag) order, both sides of an exchange issue the same tags in the
  // same order. Bytes, so that only the byte size must match, as on the host backend.
  std::vector<P2POp> sorted = ops;
  std::stable_sort(sorted.begin(), sorted.end(), [](const P2POp& a, const P2POp& b) {
    return std::tie(a.peer, a.kind, a.tag) < std::tie(b.peer, b.kind, b.tag);
  });
  std::string name;
  if (sorted.size() == 1) {
    const P2POp& op = sorted[0];
    name = absl::StrCat(op.kind == P2POp::Kind::kSend ? "Send of " : "Recv of ",
                        op.tensor.nbytes(), op.kind == P2POp::Kind::kSend ? " bytes to rank "
                                                                          : " bytes from rank ",
                        op.peer, " (tag ", op.tag, ") on ", group().name);
  } else {
    int64_t bytes = 0;
    for (const P2POp& op : sorted) bytes += op.tensor.nbytes();
    name = absl::StrCat("SendRecv of ", sorted.size(), " transfers (", bytes, " bytes) on ",
                        group().name);
  }
  return Issue(std::move(name), -1, options, [&](ncclComm_t c, cudaStream_t st) {
    // One group: no send waits for its peer's receive to be posted (lazy connections).
    ncclResult_t r = sorted.size() > 1 ? ncclGroupStart() : ncclSuccess;
    for (size_t i = 0; i < sorted.size() && r == ncclSuccess; ++i) {
      const P2POp& op = sorted[i];
      r = op.kind == P2POp::Kind::kSend
              ? ncclSend(op.tensor.data(), op.tensor.nbytes(), ncclUint8, op.peer, c, st)
              : ncclRecv(op.tensor.data(), op.tensor.nbytes(), ncclUint8, op.peer, c, st);
    }
    if (sorted.size() > 1) {
      ncclResult_t end = ncclGroupEnd();
      if (r == ncclSuccess) r = end;
    }
    return r;
  });
}

// --- split -------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Communicator>> NcclCommunicator::Split(int color, int key) {
  if (absl::Status s = watched_->abort_status(); !s.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("Split on ", Describe(), " after it was aborted (", s.message(), ")"));
  }
  const NcclGroup& parent = group();
  const absl::Time deadline = absl::Now() + parent.timeout;
  const int split_id = splits_++;
  Store& store = *parent.store;
  // Membership through the store: the child needs the job ranks of its members (to name
  // them in errors) and a context id; NCCL orders the child's ranks by (key, parent rank) too.
  // Each rank writes its record, parent rank 0 gathers them into one table, every rank reads
  // that: O(n) store operations, not one read of every record by every rank.
  const std::string prefix = absl::StrCat("comm/", parent.context, "/split/", split_id, "/");
  RETURN_IF_ERROR(store.Set(absl::StrCat(prefix, "member/", parent.rank),
                            absl::StrCat(color, ",", key), deadline));
  if (parent.rank == 0) {
    std::vector<std::string> records;
    for (int r = 0; r < parent.size; ++r) {
      ASSIGN_OR_RETURN(std::string v, store.Get(absl::StrCat(prefix, "member/", r), deadline));
      records.push_back(std::move(v));
    }
    RETURN_IF_ERROR(store.Set(absl::StrCat(prefix, "table"), absl::StrJoin(records, ";"),
                              deadline));
  }
  ASSIGN_OR_RETURN(std::string table, store.Get(absl::StrCat(prefix, "table"), deadline));
  std::vector<absl::string_view> records = absl::StrSplit(table, ';');
  TRIDENT_CHECK(static_cast<int>(records.size()) == parent.size) << "bad split table " << table;
  std::vector<std::pair<int64_t, int>> members;  // (key, parent rank) of my color
  for (int r = 0; r < parent.size; ++r) {
    std::pair<absl::string_view, absl::string_view> ck = absl::StrSplit(records[r], ',');
    int c = 0;
    int64_t k = 0;
    TRIDENT_CHECK(absl::SimpleAtoi(ck.first, &c) && absl::SimpleAtoi(ck.second, &k))
        << "bad split record " << records[r];
    if (color >= 0 && c == color) members.emplace_back(k, r);
  }
  std::stable_sort(members.begin(), members.end());

  // NCCL's split job writes the child's handle when it finishes, which can be after a failed
  // Split has returned; it also keeps the config it was given. So the slot, the config and
  // the name live on the heap, and are let go only once NCCL is known to be done with them.
  struct SplitSlot {
    ncclComm_t child = nullptr;
    std::string name;
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  };
  auto slot = std::make_unique<SplitSlot>();
  slot->name = absl::StrCat(parent.name, "/", color);
  slot->config.blocking = 0;
  slot->config.commName = slot->name.c_str();
  const std::string child_name = slot->name;
  WatchedComm* watched = watched_.get();
  SplitSlot* raw = slot.get();
  absl::Status s = handle_->Run(
      "ncclCommSplit", deadline, [watched] { return watched->aborted(); },
      [&](ncclComm_t c) {
        return ncclCommSplit(c, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &raw->child,
                             &raw->config);
      });
  // A communicator nobody owns yet is aborted through the watchdog too (bounded).
  NcclGroup orphan;
  orphan.name = child_name;
  orphan.device = parent.device;
  orphan.job_ranks = {parent.job_ranks[parent.rank]};
  orphan.store = parent.store;
  if (!s.ok()) {
    s = Annotate(s, absl::StrCat("Split(", color, ", ", key, ") of ", Describe()));
    // A split that failed part-way leaves the parent in an unknown state: abort it (which
    // stops the split job where NCCL can), then the child if the job got to make one.
    Abort(s);
    watched_->AwaitBackendAborted();
    ncclComm_t child = __atomic_load_n(&raw->child, __ATOMIC_ACQUIRE);
    if (child != nullptr) {
      AbortBounded(child, orphan, s);
    } else {
      // NCCL may still write the slot: leaked on purpose (some bytes), never left dangling.
      (void)slot.release();
    }
    return AbortStatus();
  }
  ncclComm_t child = raw->child;
  if (color < 0) {
    AbortBounded(child, orphan, absl::CancelledError("no color"));  // NCCL gives none
    return std::unique_ptr<Communicator>();
  }
  NcclGroup g;
  g.name = child_name;
  g.epoch = parent.epoch;
  g.size = static_cast<int>(members.size());
  for (int i = 0; i < g.size; ++i) {
    if (members[i].second == parent.rank) g.rank = i;
    g.job_ranks.push_back(parent.job_ranks[members[i].second]);
  }
  g.device = parent.device;
  g.timeout = parent.timeout;
  g.store = parent.store;
  // The child's first rank takes a context id from the job's counter and publishes it.
  const std::string id_key = absl::StrCat(prefix, "context/", color);
  std::string id;
  absl::Status id_status;
  if (g.rank == 0) {
    absl::StatusOr<int64_t> next = store.Add("comm/next_context", 1, deadline);
    id_status = next.status();
    if (next.ok()) {
      id = absl::StrCat(*next);
      id_status = store.Set(id_key, id, deadline);
    }
  } else {
    absl::StatusOr<std::string> got = store.Get(id_key, deadline);
    id_status = got.status();
    if (got.ok()) id = *got;
  }
  if (!id_status.ok() || !absl::SimpleAtoi(id, &g.context)) {
    absl::Status failed =
        Annotate(id_status.ok() ? absl::InternalError(absl::StrCat("bad context id ", id))
                                : id_status,
                 absl::StrCat("Split(", color, ", ", key, ") of ", Describe()));
    AbortBounded(child, orphan, failed);
    return failed;
  }
  return FinishNcclInit(child, std::move(g), deadline);
}

// --- init --------------------------------------------------------------------------------

void AbortBounded(ncclComm_t comm, NcclGroup group, const absl::Status& why) {
  if (comm == nullptr) return;
  group.size = 1;
  group.rank = 0;
  if (group.job_ranks.size() != 1) group.job_ranks = {0};
  auto handle = std::make_shared<NcclHandle>(comm, std::move(group));
  auto watched = std::make_shared<WatchedComm>(handle);
  Watchdog::Shared()->Register(watched);
  watched->Abort(why);
  watched->AwaitBackendAborted();
}

absl::StatusOr<std::unique_ptr<Communicator>> FinishNcclInit(ncclComm_t comm, NcclGroup group,
                                                             absl::Time deadline) {
  auto handle = std::make_shared<NcclHandle>(comm, group);
  auto watched = std::make_shared<WatchedComm>(handle);
  std::shared_ptr<Watchdog> watchdog = Watchdog::Shared();
  watchdog->Register(watched);
  // Wait for NCCL's init, checking the communicator's store keys for members whose init
  // failed meanwhile (this one would never finish). A member that died is the runtime's to
  // notice; the deadline bounds the wait.
  absl::Status status;
  bool peer_cause = false;
  absl::Time next_health = absl::InfinitePast();
  absl::Duration pause = absl::Microseconds(20);
  while (true) {
    absl::StatusOr<bool> ready = handle->PollReady("NCCL init");
    if (!ready.ok() || *ready) {
      status = ready.status();
      break;
    }
    const absl::Time now = absl::Now();
    if (now >= deadline) {
      status = absl::DeadlineExceededError(absl::StrCat(
          "NCCL init of ", handle->Describe(), " did not finish by its deadline (",
          absl::FormatDuration(group.timeout), "): a member never joined or the network is "
          "unreachable"));
      break;
    }
    if (now >= next_health) {
      next_health = now + absl::Milliseconds(100);
      if (absl::Status peers = handle->PeerAborted(); !peers.ok()) {
        status = Annotate(peers, absl::StrCat("NCCL init of ", handle->Describe()));
        peer_cause = true;
        break;
      }
    }
    Pause(pause);
  }
  if (status.ok()) {
    // NCCL orders the ranks the way we expect; anything else is a bug.
    absl::MutexLock lock(&handle->mu());
    int nccl_rank = -1, nccl_size = -1;
    ncclCommUserRank(handle->comm(), &nccl_rank);
    ncclCommCount(handle->comm(), &nccl_size);
    TRIDENT_CHECK(nccl_rank == group.rank && nccl_size == group.size)
        << "NCCL made rank " << nccl_rank << "/" << nccl_size << " of " << handle->Describe();
  }
  if (!status.ok()) {
    // The other members wait for this init too: tell them (unless they told us).
    if (!peer_cause) handle->PublishAbort(status);
    watched->Abort(status);
    watched->AwaitBackendAborted();
    return status;
  }
  auto made = NcclCommunicator::Create(handle, watched, watchdog);
  if (!made.ok()) {
    watched->Abort(made.status());
    watched->AwaitBackendAborted();
    return made.status();
  }
  TLOG(debug, "created {}", (*made)->Describe());
  return std::unique_ptr<Communicator>(std::move(*made));
}

}  // namespace trident::nccl

#endif  // TRIDENT_HAVE_NCCL
