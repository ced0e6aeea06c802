#include "comm/host/host_communicator.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/time/clock.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "comm/host/reduce.h"
#include "comm/op_checks.h"
#include "common/backoff.h"
#include "common/check.h"
#include "common/completion.h"
#include "common/logging.h"
#include "common/op_wait.h"
#include "common/status_macros.h"

namespace trident {

namespace {

using OpKind = HostCommunicator::OpKind;

absl::string_view KindName(OpKind kind) {
  switch (kind) {
    case OpKind::kAllReduce: return "AllReduce";
    case OpKind::kReduceScatter: return "ReduceScatter";
    case OpKind::kAllGather: return "AllGather";
    case OpKind::kBroadcast: return "Broadcast";
    case OpKind::kReduce: return "Reduce";
    case OpKind::kAllToAll: return "AllToAll";
    case OpKind::kBarrier: return "Barrier";
    case OpKind::kSend: return "Send";
    case OpKind::kRecv: return "Recv";
  }
  return "?";
}

bool IsReduction(OpKind kind) {
  return kind == OpKind::kAllReduce || kind == OpKind::kReduceScatter ||
         kind == OpKind::kReduce;
}
bool HasRoot(OpKind kind) { return kind == OpKind::kBroadcast || kind == OpKind::kReduce; }

// The first message of every collective, checked by the right neighbour.
struct Fingerprint {
  uint32_t magic = kMagic;
  uint32_t seq = 0;
  int32_t epoch = 0;
  int32_t rank = 0;
  uint8_t kind = 0, dtype = 0, reduce = 0, pad = 0;
  int32_t root = -1;
  int64_t count = 0;
  static constexpr uint32_t kMagic = 0x54524446;  // "TRDF"

  bool SameCall(const Fingerprint& o) const {
    return seq == o.seq && epoch == o.epoch && kind == o.kind && dtype == o.dtype &&
           reduce == o.reduce && root == o.root && count == o.count;
  }
  std::string Describe() const {
    const OpKind k = static_cast<OpKind>(kind);
    std::string s = absl::StrCat(KindName(k), "(count=", count);
    if (k != OpKind::kBarrier) {
      absl::StrAppend(&s, ", ", DTypeName(static_cast<DType>(dtype)));
    }
    if (IsReduction(k)) absl::StrAppend(&s, ", ", ReduceOpName(static_cast<ReduceOp>(reduce)));
    if (HasRoot(k)) absl::StrAppend(&s, ", root=", root);
    return absl::StrCat(s, ") as op #", seq, " of epoch ", epoch);
  }
};

// Errors published in the store carry their code: "<code>|<message>".
std::string EncodeStatus(const absl::Status& s) {
  return absl::StrCat(static_cast<int>(s.code()), "|", s.message());
}
absl::Status DecodeStatus(absl::string_view v) {
  std::pair<absl::string_view, absl::string_view> parts = absl::StrSplit(v, absl::MaxSplits('|', 1));
  int code = static_cast<int>(absl::StatusCode::kAborted);
  if (!absl::SimpleAtoi(parts.first, &code) || code == 0) {
    code = static_cast<int>(absl::StatusCode::kAborted);
  }
  return absl::Status(static_cast<absl::StatusCode>(code), parts.second);
}

}  // namespace

struct HostCommunicator::Op {
  OpKind kind;
  Tensor in, out;
  ReduceOp reduce = ReduceOp::kSum;
  int root = -1;  // root, or the peer of Send/Recv
  int tag = 0;
  int64_t count = 0;  // the count every rank must agree on (see Fingerprint)
  uint32_t seq = 0;
  absl::Duration timeout;
  absl::Time deadline;
  std::shared_ptr<HostWork> work;
  std::unique_ptr<TransportRequest> request;  // point-to-point only
  // What the algorithm reads and writes: the tensors' memory, or for CUDA tensors host
  // staging buffers (see PrepareStaging / CopyInputs / CopyOutputs).
  void* host_in = nullptr;
  void* host_out = nullptr;
  bool cuda = false;
  void* stream = nullptr;                   // OpOptions::cuda_stream
  std::unique_ptr<Staging::Mark> issued;    // the caller's stream when the op was issued
  std::unique_ptr<Staging::Buffer> stage_in, stage_out;  // stage_out null: out is stage_in
  bool copy_in = false, copy_out = false;
  // The fingerprints exchanged at the start; they live as long as the op, as the send may
  // still be reading its buffer when the algorithm starts.
  Fingerprint mine, theirs;
  // The op's entry in the flight recorder; finished (completed or failed, as its Work) when
  // the op is destroyed, which every path does right after completing it.
  fr::FlightRecorder* recorder = nullptr;
  uint64_t fr_id = 0;
  ~Op();
};

class HostCommunicator::HostWork : public Work {
 public:
  absl::Status Wait(absl::Time deadline) override {
    ScopedOpWait waiting;
    std::optional<absl::Status> s = done_.WaitUntil(deadline);
    if (!s.has_value()) {
      return absl::DeadlineExceededError(
          "Work::Wait: the caller's deadline passed before the op completed; the op is still "
          "running under its own deadline");
    }
    return *s;
  }
  bool IsCompleted() const override { return done_.done(); }
  absl::Status status() const override {
    return done_.status().value_or(absl::UnavailableError("op still running"));
  }
  void Complete(absl::Status status) {
    TRIDENT_CHECK(done_.Complete(std::move(status))) << "op completed twice";
  }

 private:
  Completion done_;
};

HostCommunicator::Op::~Op() {
  if (recorder != nullptr) recorder->Finish(fr_id, work->IsCompleted() && work->status().ok());
}

HostCommunicator::HostCommunicator(HostCommConfig config)
    : config_(std::move(config)),
      recorder_(fr::FlightRecorder::Create({.name = config_.name,
                                            .epoch = config_.epoch,
                                            .rank = config_.rank,
                                            .size = static_cast<int>(config_.ranks.size()),
                                            .members = config_.ranks})),
      staging_(config_.staging != nullptr ? config_.staging : CreateCudaStaging()) {
  TRIDENT_CHECK(config_.transport != nullptr && config_.store != nullptr);
  TRIDENT_CHECK(config_.rank >= 0 && config_.rank < size());
  worker_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "trident-comm");
    WorkerLoop();
  });
}

HostCommunicator::~HostCommunicator() {
  Abort(absl::AbortedError(absl::StrCat(Describe(), " was destroyed with ops pending")));
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  worker_.join();
}

std::string HostCommunicator::Describe() const {
  return absl::StrCat(config_.name, "[rank ", rank(), "/", size(), ", epoch ", config_.epoch,
                      ", ", config_.transport->Describe(),
                      config_.shm != nullptr ? ", collectives on the shm engine" : "", "]");
}

std::string HostCommunicator::OpName(const Op& op) const {
  if (op.kind == OpKind::kSend || op.kind == OpKind::kRecv) {
    return absl::StrCat(KindName(op.kind), " of ", op.in.nbytes(),
                        op.kind == OpKind::kSend ? " bytes to rank " : " bytes from rank ",
                        op.root, " (tag ", op.tag, ") on ", config_.name);
  }
  return absl::StrCat(KindName(op.kind), " #", op.seq, " (count ", op.count, ", ",
                      DTypeName(op.in.dtype()), ") on ", config_.name, " epoch ",
                      config_.epoch);
}

// --- issuing ---------------------------------------------------------------------------------

namespace {

std::shared_ptr<Work> Failed(absl::Status status) {
  auto work = std::make_shared<HostCommunicator::HostWork>();
  work->Complete(std::move(status));
  return work;
}

absl::Status CheckTensor(Staging& staging, absl::string_view op, absl::string_view which,
                         const Tensor& t) {
  // CUDA tensors are staged through host memory; a build or machine without CUDA answers
  // kInvalidArgument saying so.
  RETURN_IF_ERROR(staging.Check(t, op, which));
  return CheckTensorShape(op, which, t);
}

absl::Status CheckPair(Staging& staging, absl::string_view op, const Tensor& in,
                       const Tensor& out, int64_t out_per_in_num, int64_t out_per_in_den) {
  RETURN_IF_ERROR(CheckTensor(staging, op, "in", in));
  RETURN_IF_ERROR(CheckTensor(staging, op, "out", out));
  if (in.device() != out.device()) {
    auto name = [](Device d) {
      return d.is_cpu() ? std::string("the CPU") : absl::StrCat("cuda:", d.index);
    };
    return absl::InvalidArgumentError(absl::StrCat(op, ": in is on ", name(in.device()),
                                                   " but out is on ", name(out.device()),
                                                   "; both must be on the same device"));
  }
  return CheckPairShapes(op, in, out, out_per_in_num, out_per_in_den);
}

}  // namespace

std::unique_ptr<HostCommunicator::Op> HostCommunicator::NewOp(OpKind kind, const Tensor& in,
                                                              const Tensor& out, ReduceOp reduce,
                                                              int root, int tag, int64_t count,
                                                              const OpOptions& options) {
  auto op = std::make_unique<Op>();
  op->kind = kind;
  op->in = in;
  op->out = out;
  op->reduce = reduce;
  op->root = root;
  op->tag = tag;
  op->count = count;
  op->timeout = options.timeout;
  op->host_in = in.data();
  op->host_out = out.data();
  op->cuda = !in.device().is_cpu();
  op->stream = options.cuda_stream;
  return op;
}

std::shared_ptr<Work> HostCommunicator::Enqueue(std::unique_ptr<Op> op) {
  op->work = std::make_shared<HostWork>();
  std::shared_ptr<Work> work = op->work;
  if (op->cuda) {
    // Marks the caller's stream and takes the staging buffers; the copies run on the worker
    // in issue order. A failure here changed nothing.
    if (absl::Status s = PrepareStaging(*op); !s.ok()) {
      op->work->Complete(Annotate(s, absl::StrCat(KindName(op->kind), " on ", Describe())));
      return work;
    }
  }
  absl::MutexLock lock(&mu_);
  if (!abort_status_.ok()) {
    op->work->Complete(absl::FailedPreconditionError(
        absl::StrCat(KindName(op->kind), " issued on ", Describe(),
                     " after it was aborted (", abort_status_.message(), "); rebuild it")));
    return work;
  }
  if (op->kind != OpKind::kSend && op->kind != OpKind::kRecv) op->seq = next_seq_++;
  op->recorder = recorder_.get();
  // Point-to-point ops have no collective sequence number: -1 (an int64_t, not the uint32_t
  // -1 that a plain conditional with op->seq would make of it).
  const bool p2p = op->kind == OpKind::kSend || op->kind == OpKind::kRecv;
  op->fr_id = recorder_->Issue(KindName(op->kind), DTypeName(op->in.dtype()), op->count,
                               op->root, p2p ? int64_t{-1} : static_cast<int64_t>(op->seq));
  if (op->timeout == absl::ZeroDuration()) op->timeout = config_.timeout;
  op->deadline = absl::Now() + op->timeout;
  queue_.push_back(std::move(op));
  return work;
}

std::shared_ptr<Work> HostCommunicator::AllReduce(const Tensor& in, const Tensor& out,
                                                  ReduceOp op, const OpOptions& options) {
  if (absl::Status s = CheckPair(*staging_, "AllReduce", in, out, 1, 1); !s.ok()) return Failed(s);
  if (absl::Status s = CheckReduceOp("AllReduce", in.dtype(), op); !s.ok()) return Failed(s);
  return Enqueue(NewOp(OpKind::kAllReduce, in, out, op, -1, 0, in.numel(), options));
}

std::shared_ptr<Work> HostCommunicator::ReduceScatter(const Tensor& in, const Tensor& out,
                                                      ReduceOp op, const OpOptions& options) {
  if (absl::Status s = CheckPair(*staging_, "ReduceScatter", in, out, 1, size()); !s.ok()) {
    return Failed(s);
  }
  if (absl::Status s = CheckReduceOp("ReduceScatter", in.dtype(), op); !s.ok()) return Failed(s);
  return Enqueue(NewOp(OpKind::kReduceScatter, in, out, op, -1, 0, out.numel(), options));
}

std::shared_ptr<Work> HostCommunicator::AllGather(const Tensor& in, const Tensor& out,
                                                  const OpOptions& options) {
  if (absl::Status s = CheckPair(*staging_, "AllGather", in, out, size(), 1); !s.ok()) {
    return Failed(s);
  }
  return Enqueue(NewOp(OpKind::kAllGather, in, out, ReduceOp::kSum, -1, 0, in.numel(), options));
}

std::shared_ptr<Work> HostCommunicator::Broadcast(const Tensor& tensor, int root,
                                                  const OpOptions& options) {
  if (absl::Status s = CheckTensor(*staging_, "Broadcast", "tensor", tensor); !s.ok()) {
    return Failed(s);
  }
  if (root < 0 || root >= size()) {
    return Failed(absl::InvalidArgumentError(
        absl::StrCat("Broadcast: root ", root, " is not a rank of ", Describe())));
  }
  return Enqueue(NewOp(OpKind::kBroadcast, tensor, tensor, ReduceOp::kSum, root, 0, tensor.numel(), options));
}

std::shared_ptr<Work> HostCommunicator::Reduce(const Tensor& in, const Tensor& out, ReduceOp op,
                                               int root, const OpOptions& options) {
  if (absl::Status s = CheckPair(*staging_, "Reduce", in, out, 1, 1); !s.ok()) return Failed(s);
  if (absl::Status s = CheckReduceOp("Reduce", in.dtype(), op); !s.ok()) return Failed(s);
  if (root < 0 || root >= size()) {
    return Failed(absl::InvalidArgumentError(
        absl::StrCat("Reduce: root ", root, " is not a rank of ", Describe())));
  }
  return Enqueue(NewOp(OpKind::kReduce, in, out, op, root, 0, in.numel(), options));
}

std::shared_ptr<Work> HostCommunicator::AllToAll(const Tensor& in, const Tensor& out,
                                                 const OpOptions& options) {
  if (absl::Status s = CheckPair(*staging_, "AllToAll", in, out, 1, 1); !s.ok()) return Failed(s);
  if (in.numel() % size() != 0) {
    return Failed(absl::InvalidArgumentError(absl::StrCat(
        "AllToAll: ", in.numel(), " elements do not split into ", size(), " equal blocks")));
  }
  return Enqueue(NewOp(OpKind::kAllToAll, in, out, ReduceOp::kSum, -1, 0, in.numel(), options));
}

std::shared_ptr<Work> HostCommunicator::Barrier(const OpOptions& options) {
  const Tensor none(nullptr, DType::kU8, {0});
  return Enqueue(NewOp(OpKind::kBarrier, none, none, ReduceOp::kSum, -1, 0, 0, options));
}

std::shared_ptr<Work> HostCommunicator::Send(const Tensor& tensor, int peer, int tag,
                                             const OpOptions& options) {
  if (absl::Status s = CheckTensor(*staging_, "Send", "tensor", tensor); !s.ok()) return Failed(s);
  if (peer < 0 || peer >= size() || peer == rank()) {
    return Failed(absl::InvalidArgumentError(absl::StrCat(
        "Send: peer ", peer, " is not another rank of ", Describe())));
  }
  if (tag < 0 || tag >= (1 << 24)) {
    return Failed(absl::InvalidArgumentError(
        absl::StrCat("Send: tag ", tag, " is outside [0, 2^24)")));
  }
  return Enqueue(NewOp(OpKind::kSend, tensor, tensor, ReduceOp::kSum, peer, tag, tensor.numel(), options));
}

std::shared_ptr<Work> HostCommunicator::Recv(const Tensor& tensor, int peer, int tag,
                                             const OpOptions& options) {
  if (absl::Status s = CheckTensor(*staging_, "Recv", "tensor", tensor); !s.ok()) return Failed(s);
  if (peer < 0 || peer >= size() || peer == rank()) {
    return Failed(absl::InvalidArgumentError(absl::StrCat(
        "Recv: peer ", peer, " is not another rank of ", Describe())));
  }
  if (tag < 0 || tag >= (1 << 24)) {
    return Failed(absl::InvalidArgumentError(
        absl::StrCat("Recv: tag ", tag, " is outside [0, 2^24)")));
  }
  return Enqueue(NewOp(OpKind::kRecv, tensor, tensor, ReduceOp::kSum, peer, tag, tensor.numel(), options));
}

// --- abort -----------------------------------------------------------------------------------

void HostCommunicator::Abort(absl::Status status) {
  TRIDENT_CHECK(!status.ok()) << "Abort needs a non-OK status";
  std::deque<std::unique_ptr<Op>> queued;
  {
    absl::MutexLock lock(&mu_);
    if (!abort_status_.ok()) return;
    abort_status_ = status;
    aborted_.store(true, std::memory_order_release);
    queued.swap(queue_);
  }
  TLOG(debug, "{}: aborted: {}", Describe(), status);
  for (auto& op : queued) op->work->Complete(status);
}

absl::Status HostCommunicator::AbortStatus() const {
  absl::MutexLock lock(&mu_);
  return abort_status_;
}

void HostCommunicator::FailAll(const absl::Status& status) {
  Abort(status);
  absl::Status reason = AbortStatus();
  if (!inflight_.empty()) {
    for (auto& op : inflight_) {  // the dump shows them failed, as their Works will be
      recorder_->Finish(op->fr_id, false);
      op->recorder = nullptr;
    }
    fr::DumpOnFailure(Describe(), reason);
  }
  while (!inflight_.empty()) {
    Op& op = *inflight_.front();
    config_.transport->Cancel(op.request.get(), reason);
    op.work->Complete(reason);
    inflight_.pop_front();
  }
}

void HostCommunicator::PublishError(const absl::Status& status) {
  auto result = config_.store->CompareSet(absl::StrCat("comm/", config_.context, "/error"), "",
                                          EncodeStatus(status), DeadlineIn(absl::Seconds(2)));
  if (!result.ok()) {
    TLOG(warn, "{}: could not publish error to the store: {}", Describe(), result.status());
  }
}

// --- health and timeouts ---------------------------------------------------------------------

absl::Status HostCommunicator::Health() {
  if (aborted_.load(std::memory_order_acquire)) return AbortStatus();
  auto error = config_.store->TryGet(absl::StrCat("comm/", config_.context, "/error"),
                                     DeadlineIn(absl::Milliseconds(500)));
  if (error.ok()) return DecodeStatus(*error);
  return absl::OkStatus();  // no error, or the store is briefly unreachable: keep waiting
}

absl::Status HostCommunicator::ExplainPeerFailure(const absl::Status& transport_error) {
  // An abort of this communicator is explained already (its caller knows the cause); other
  // errors than a peer's (a bad call, a timeout) need no owner.
  const int peer = PeerOf(transport_error);
  if (peer < 0 || transport_error.code() != absl::StatusCode::kAborted ||
      aborted_.load(std::memory_order_acquire) || !config_.on_peer_error) {
    return transport_error;
  }
  return config_.on_peer_error(peer, transport_error);
}

absl::Status HostCommunicator::DiagnoseTimeout(const Op& op) {
  // Ranks that reach this point record that they had arrived; whoever is missing after a short
  // grace period never called the op (or is stuck before it).
  const std::string prefix =
      absl::StrCat("comm/", config_.context, "/arrived/", op.seq, "/");
  const absl::Duration grace = std::min(absl::Seconds(1), op.timeout);
  std::string missing = "unknown (the store did not answer)";
  if (config_.store->Set(absl::StrCat(prefix, rank()), "1", DeadlineIn(grace)).ok()) {
    std::vector<std::string> keys;
    for (int r = 0; r < size(); ++r) keys.push_back(absl::StrCat(prefix, r));
    absl::Status all = config_.store->Wait(keys, DeadlineIn(grace));
    if (all.ok()) {
      missing = "none: every rank had arrived, but the transport made no progress";
    } else if (auto arrived = config_.store->ListPrefix(prefix, DeadlineIn(grace));
               arrived.ok()) {
      std::vector<int> absent;
      for (int r = 0; r < size(); ++r) {
        if (std::find(arrived->begin(), arrived->end(), absl::StrCat(prefix, r)) ==
            arrived->end()) {
          absent.push_back(r);
        }
      }
      missing = absent.empty() ? "none" : absl::StrJoin(absent, ", ");
    }
  }
  return absl::DeadlineExceededError(
      absl::StrCat(OpName(op), " timed out after ", absl::FormatDuration(op.timeout),
                   "; ranks that had not arrived: ", missing));
}

// --- the worker ------------------------------------------------------------------------------

void HostCommunicator::WorkerLoop() {
  Backoff backoff;
  absl::Time next_health = absl::InfinitePast();
  while (true) {
    std::unique_ptr<Op> op;
    {
      absl::MutexLock lock(&mu_);
      if (inflight_.empty()) {
        mu_.Await(absl::Condition(
            +[](HostCommunicator* self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->mu_) {
              return !self->queue_.empty() || self->stopping_;
            },
            this));
      }
      if (!queue_.empty()) {
        op = std::move(queue_.front());
        queue_.pop_front();
      } else if (stopping_ && inflight_.empty()) {
        return;
      }
    }
    if (aborted_.load(std::memory_order_acquire) && !inflight_.empty()) FailAll(AbortStatus());
    if (op == nullptr) {  // only point-to-point ops in flight: drive them
      if (ProgressP2P(absl::Now())) {
        backoff.Reset();
      } else {
        absl::Time now = absl::Now();
        if (now >= next_health) {
          next_health = now + absl::Milliseconds(50);
          if (absl::Status s = Health(); !s.ok()) FailAll(s);
        }
        backoff.Pause();
      }
      continue;
    }
    if (op->kind == OpKind::kSend || op->kind == OpKind::kRecv) {
      if (absl::Status s = CopyInputs(*op); !s.ok()) {
        Abort(s);
        op->work->Complete(std::move(s));
        continue;
      }
      recorder_->Start(op->fr_id);
      PostP2P(*op);
      inflight_.push_back(std::move(op));
      continue;
    }
    // A collective starts once earlier point-to-point ops are done (issue order).
    while (!inflight_.empty()) {
      if (aborted_.load(std::memory_order_acquire)) {
        FailAll(AbortStatus());
        break;
      }
      if (!ProgressP2P(absl::Now())) backoff.Pause();
    }
    absl::Status status = CopyInputs(*op);
    recorder_->Start(op->fr_id);
    if (status.ok()) status = RunCollective(*op);
    if (status.ok()) status = CopyOutputs(*op);
    if (!status.ok()) {
      Abort(status);
      recorder_->Finish(op->fr_id, false);  // the dump shows it failed, as its Work will be
      op->recorder = nullptr;
      fr::DumpOnFailure(Describe(), status);
    }
    op->work->Complete(std::move(status));
  }
}

bool HostCommunicator::PostP2P(Op& op) {
  op.request = std::make_unique<TransportRequest>();
  const uint64_t tag =
      MakeTag(config_.context, kP2PSeqBit | static_cast<uint32_t>(op.tag), kDataSlot);
  const int peer = config_.ranks[op.root];
  absl::Status s =
      op.kind == OpKind::kSend
          ? config_.transport->PostSend(peer, tag, op.host_in, op.in.nbytes(), op.request.get())
          : config_.transport->PostRecv(peer, tag, op.host_out, op.in.nbytes(),
                                        op.request.get());
  if (!s.ok()) {
    op.request->status = Annotate(s, OpName(op));
    op.request->done.store(true, std::memory_order_release);
  }
  return true;
}

bool HostCommunicator::ProgressP2P(absl::Time now) {
  absl::StatusOr<int> progressed = config_.transport->Progress();
  if (!progressed.ok()) {
    FailAll(Annotate(progressed.status(), Describe()));
    return true;
  }
  bool any = *progressed > 0;
  while (!inflight_.empty()) {
    Op& op = *inflight_.front();
    if (!op.request->IsDone()) {
      if (now < op.deadline) break;
      absl::Status timeout = absl::DeadlineExceededError(absl::StrCat(
          OpName(op), " timed out after ", absl::FormatDuration(op.timeout),
          op.kind == OpKind::kRecv ? ": the peer never sent a matching message"
                                   : ": the peer never received it"));
      config_.transport->Cancel(op.request.get(), timeout);
      FailAll(timeout);
      return true;
    }
    if (!op.request->status.ok()) {
      FailAll(Annotate(ExplainPeerFailure(op.request->status), OpName(op)));
      return true;
    }
    if (absl::Status s = CopyOutputs(op); !s.ok()) {
      FailAll(s);
      return true;
    }
    op.work->Complete(absl::OkStatus());
    inflight_.pop_front();
    any = true;
  }
  return any;
}

absl::Status HostCommunicator::RunCollective(Op& op) {
  if (aborted_.load(std::memory_order_acquire)) return AbortStatus();
  if (size() == 1) {
    Channel ch(config_.transport.get(), &config_.ranks, rank(), config_.context, op.seq,
               op.deadline, &aborted_, nullptr, nullptr);
    return RunAlgorithm(op, ch);
  }
  absl::Status s;
  if (config_.shm != nullptr) {
    s = RunOnShm(op);
  } else {
    Channel ch(
        config_.transport.get(), &config_.ranks, rank(), config_.context, op.seq, op.deadline,
        &aborted_, [this] { return Health(); }, [this, &op] { return DiagnoseTimeout(op); });
    s = CheckFingerprint(op, ch);
    if (s.ok()) s = RunAlgorithm(op, ch);
  }
  if (s.ok()) return s;
  if (s.code() == absl::StatusCode::kCancelled) s = AbortStatus();
  s = ExplainPeerFailure(s);
  // Name the op, unless the message already does (timeouts and mismatches do).
  if (absl::StrContains(s.message(), KindName(op.kind))) return s;
  return absl::Status(s.code(), absl::StrCat(OpName(op), ": ", s.message()));
}

absl::Status HostCommunicator::CheckFingerprint(Op& op, Channel& ch) {
  const int n = size(), r = rank();
  Fingerprint& mine = op.mine;
  Fingerprint& theirs = op.theirs;
  mine.seq = op.seq;
  mine.epoch = static_cast<int32_t>(config_.epoch);  // the wire carries 32 bits
  mine.rank = r;
  mine.kind = static_cast<uint8_t>(op.kind);
  mine.dtype = static_cast<uint8_t>(op.in.dtype());
  mine.reduce = IsReduction(op.kind) ? static_cast<uint8_t>(op.reduce) : 0;
  mine.root = HasRoot(op.kind) ? op.root : -1;
  mine.count = op.count;
  ASSIGN_OR_RETURN(TransportRequest * recv,
                   ch.Recv((r + n - 1) % n, &theirs, sizeof(theirs), kFingerprintSlot));
  RETURN_IF_ERROR(ch.Send((r + 1) % n, &mine, sizeof(mine), kFingerprintSlot).status());
  RETURN_IF_ERROR(ch.Wait(recv));
  if (theirs.magic != Fingerprint::kMagic || !mine.SameCall(theirs)) {
    absl::Status mismatch = absl::InvalidArgumentError(absl::StrCat(
        "ranks called different collectives on ", config_.name, ": rank ", r, " called ",
        mine.Describe(), " but rank ", theirs.rank, " called ", theirs.Describe()));
    PublishError(mismatch);
    return mismatch;
  }
  return absl::OkStatus();
}

absl::Status HostCommunicator::RunOnShm(Op& op) {
  ShmOp shm;
  ShmCall& call = shm.call;
  call.seq = op.seq;
  call.epoch = static_cast<int32_t>(config_.epoch);
  call.rank = rank();
  call.kind = static_cast<uint8_t>(op.kind);
  call.dtype = static_cast<uint8_t>(op.in.dtype());
  call.reduce = IsReduction(op.kind) ? static_cast<uint8_t>(op.reduce) : 0;
  call.root = HasRoot(op.kind) ? op.root : -1;
  call.count = op.count;
  shm.dtype = op.in.dtype();
  shm.reduce = op.reduce;
  shm.root = op.root;
  shm.in = op.host_in;
  shm.out = op.host_out;
  shm.count = static_cast<size_t>(op.count);
  shm.deadline = op.deadline;
  shm.timeout = op.timeout;
  switch (op.kind) {
    case OpKind::kAllReduce: shm.algo = ShmAlgo::kAllReduce; break;
    case OpKind::kReduceScatter: shm.algo = ShmAlgo::kReduceScatter; break;
    case OpKind::kAllGather: shm.algo = ShmAlgo::kAllGather; break;
    case OpKind::kBroadcast: shm.algo = ShmAlgo::kBroadcast; break;
    case OpKind::kReduce: shm.algo = ShmAlgo::kReduce; break;
    case OpKind::kAllToAll:
      shm.algo = ShmAlgo::kAllToAll;
      shm.count = static_cast<size_t>(op.count / size());
      break;
    default: shm.algo = ShmAlgo::kAgree;
  }
  ShmHooks hooks;
  hooks.aborted = &aborted_;
  hooks.abort_status = [this] { return AbortStatus(); };
  hooks.health = [this] { return Health(); };
  hooks.describe = [](const ShmCall& c) {
    Fingerprint f;
    f.seq = c.seq;
    f.epoch = c.epoch;
    f.rank = c.rank;
    f.kind = c.kind;
    f.dtype = c.dtype;
    f.reduce = c.reduce;
    f.root = c.root;
    f.count = c.count;
    return f.Describe();
  };
  hooks.publish = [this](const absl::Status& s) { PublishError(s); };
  hooks.op_name = OpName(op);
  hooks.comm_name = config_.name;
  return config_.shm->Run(shm, hooks);
}

absl::Status HostCommunicator::RunAlgorithm(Op& op, Channel& ch) {
  const DType dtype = op.in.dtype();
  const size_t bytes = op.in.nbytes();
  const AlgoParams& algo = config_.algo;
  void* in = op.host_in;
  void* out = op.host_out;
  const int n = size();
  switch (op.kind) {
    case OpKind::kAllReduce:
      if (bytes <= algo.small_bytes || static_cast<int64_t>(op.count) < n) {
        return AllReduceRecursiveDoubling(ch, dtype, op.reduce, in, out, op.count, scratch_);
      }
      return AllReduceRing(ch, dtype, op.reduce, in, out, op.count, algo.chunk_bytes, scratch_);
    case OpKind::kReduceScatter:
      return ReduceScatterRing(ch, dtype, op.reduce, in, out, op.count, algo.chunk_bytes,
                               scratch_);
    case OpKind::kAllGather:
      return AllGatherRing(ch, dtype, in, out, op.count, algo.chunk_bytes);
    case OpKind::kBroadcast:
      return BroadcastTree(ch, in, bytes, op.root, algo.chunk_bytes);
    case OpKind::kReduce:
      if (bytes <= algo.small_bytes || static_cast<int64_t>(op.count) < n) {
        return ReduceTree(ch, dtype, op.reduce, in, out, op.count, op.root, scratch_);
      }
      return ReduceRing(ch, dtype, op.reduce, in, out, op.count, op.root, algo.chunk_bytes,
                        scratch_);
    case OpKind::kAllToAll:
      return AllToAllPairwise(ch, dtype, in, out, op.count / n, scratch_);
    case OpKind::kBarrier:
      return BarrierDissemination(ch);
    case OpKind::kSend:
    case OpKind::kRecv:
      break;
  }
  TRIDENT_CHECK(false) << "not a collective: " << KindName(op.kind);
  __builtin_unreachable();
}

// --- CUDA tensors: staging through pinned host memory ----------------------------------------

absl::Status HostCommunicator::PrepareStaging(Op& op) {
  const int device = op.in.device().index;
  switch (op.kind) {
    case OpKind::kBroadcast:
      op.copy_in = rank() == op.root;
      op.copy_out = rank() != op.root;
      break;
    case OpKind::kReduce:
      op.copy_in = true;
      op.copy_out = rank() == op.root;  // out is not touched on other ranks
      break;
    case OpKind::kSend:
      op.copy_in = true;
      break;
    case OpKind::kRecv:
      op.copy_out = true;
      break;
    default:
      op.copy_in = op.copy_out = true;
  }
  // One buffer when in and out are the same memory (in place, Broadcast, Send, Recv).
  const bool same = op.in.data() == op.out.data();
  ASSIGN_OR_RETURN(op.stage_in, staging_->Acquire(same ? std::max(op.in.nbytes(), op.out.nbytes())
                                                       : op.in.nbytes()));
  op.host_in = op.stage_in->data();
  if (same) {
    op.host_out = op.host_in;
  } else {
    ASSIGN_OR_RETURN(op.stage_out, staging_->Acquire(op.out.nbytes()));
    op.host_out = op.stage_out->data();
  }
  ASSIGN_OR_RETURN(op.issued, staging_->MarkStream(device, op.stream));
  return absl::OkStatus();
}

// On the worker, when every earlier op has completed (its outputs copied back), so the inputs
// include their results; and after the work queued on the caller's stream before the op.
absl::Status HostCommunicator::CopyInputs(Op& op) {
  if (!op.cuda || !op.copy_in) return absl::OkStatus();
  const std::string what = absl::StrCat(
      OpName(op), ": copying the inputs from the GPU (after the work queued on the caller's "
                  "stream before the op)");
  absl::Status s =
      staging_->CopyIn(op.in.device().index, op.issued.get(), op.in.data(), *op.stage_in,
                       op.in.nbytes(), {op.deadline, &aborted_, what});
  if (s.code() == absl::StatusCode::kCancelled) return AbortStatus();
  if (s.code() == absl::StatusCode::kDeadlineExceeded) return s;
  return Annotate(s, OpName(op));
}

absl::Status HostCommunicator::CopyOutputs(Op& op) {
  if (!op.cuda || !op.copy_out) return absl::OkStatus();
  Staging::Buffer& result = op.stage_out != nullptr ? *op.stage_out : *op.stage_in;
  const std::string what = absl::StrCat(OpName(op), ": copying the result to the GPU");
  absl::Status s = staging_->CopyOut(op.out.device().index, op.issued.get(), result,
                                     op.out.data(), op.out.nbytes(),
                                     {op.deadline, &aborted_, what});
  if (s.code() == absl::StatusCode::kCancelled) return AbortStatus();
  if (s.code() == absl::StatusCode::kDeadlineExceeded) return s;
  return Annotate(s, OpName(op));
}

// --- split -----------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Communicator>> HostCommunicator::Split(int color, int key) {
  const int n = size();
  int64_t mine[2] = {color, key};
  std::vector<int64_t> all(2 * n);
  RETURN_IF_ERROR(AllGather(Tensor::Of(mine, 2), Tensor::Of(all.data(), 2 * n), {})->Wait());
  const int split_id = splits_++;
  if (color < 0) return std::unique_ptr<Communicator>();
  std::vector<int> members;  // group ranks of this communicator, ordered by (key, rank)
  for (int r = 0; r < n; ++r) {
    if (all[2 * r] == color) members.push_back(r);
  }
  std::stable_sort(members.begin(), members.end(),
                   [&](int a, int b) { return all[2 * a + 1] < all[2 * b + 1]; });
  HostCommConfig config = config_;
  config.ranks.clear();
  for (int m : members) config.ranks.push_back(config_.ranks[m]);
  config.rank = static_cast<int>(std::find(members.begin(), members.end(), rank()) -
                                 members.begin());
  config.name = absl::StrCat(config_.name, "/", color);

  // The new group's first rank allocates a context id; the others read it.
  const std::string id_key =
      absl::StrCat("comm/", config_.context, "/split/", split_id, "/", color);
  const absl::Time deadline = DeadlineIn(config_.timeout);
  std::string id;
  if (config.rank == 0) {
    ASSIGN_OR_RETURN(int64_t next, config_.store->Add("comm/next_context", 1, deadline));
    if (next > 0xffff) {
      return absl::ResourceExhaustedError(
          absl::StrCat("Split: the job has created ", next, " communicators; the limit is 65535"));
    }
    id = absl::StrCat(next);
    RETURN_IF_ERROR(config_.store->Set(id_key, id, deadline));
  } else {
    ASSIGN_OR_RETURN(id, config_.store->Get(id_key, deadline));
  }
  int context = 0;
  TRIDENT_CHECK(absl::SimpleAtoi(id, &context)) << "bad context id " << id;
  config.context = static_cast<uint16_t>(context);
  if (config_.shm != nullptr) {  // the new group is on this host too
    ASSIGN_OR_RETURN(std::unique_ptr<ShmEngine> engine,
                     ShmEngine::Create(*config_.store, absl::StrCat("comm/", context, "/shm"),
                                       config.rank, config.ranks, config_.shm_params, deadline));
    config.shm = std::move(engine);
  }
  return std::unique_ptr<Communicator>(new HostCommunicator(std::move(config)));
}

}  // namespace trident
