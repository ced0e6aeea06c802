#include "trident/parallel/pipeline_executor.h"

#include <map>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace trident::pipeline {
namespace {

// Tag layout (24 bits): bit 23 = kind (0 activation, 1 gradient), bits 0..22 =
// microbatch * v + sender's chunk (< m*v <= 2^20 by ValidateSpec).
constexpr int kGradBit = 1 << 23;

int MakeTag(bool grad, int mb, int sender_chunk, int v) {
  return (grad ? kGradBit : 0) | (mb * v + sender_chunk);
}

struct Buffer {
  std::vector<unsigned char> bytes;
  Tensor tensor;
};

class StageRunner {
 public:
  StageRunner(const ExecutorOptions& o, const StageCallbacks& cb) : o_(o), cb_(cb) {
    p_ = o.spec.stages;
    v_ = o.spec.virtual_stages;
    nvs_ = p_ * v_;
    shape_.assign(o.activation_shape.begin(), o.activation_shape.end());
  }

  absl::Status Run(const std::vector<Instruction>& list) {
    absl::Status status;
    for (size_t i = 0; i < list.size();) {
      // Consecutive sends and receives go out as one batch.
      size_t end = i + 1;
      if (IsTransfer(list[i].kind)) {
        while (end < list.size() && IsTransfer(list[end].kind)) ++end;
        status = Exchange(list, i, end);
      } else {
        status = Execute(list[i]);
      }
      if (!status.ok()) {
        status = Annotate(status, list[i]);
        break;
      }
      i = end;
      Reap();
    }
    // Every batch must finish before its buffers go away, on success and on error alike (the
    // ops are bound by their own deadline).
    for (auto& [bufs, work, in] : pending_) {
      absl::Status s = work->Wait();
      if (status.ok() && !s.ok()) status = Annotate(s, in);
    }
    pending_.clear();
    return status;
  }

 private:
  using Key = std::pair<int, int>;  // (microbatch, chunk)

  std::unique_ptr<Buffer> NewBuffer() {
    auto b = std::make_unique<Buffer>();
    int64_t n = 1;
    for (int64_t d : shape_) n *= d;
    b->bytes.assign(static_cast<size_t>(n) * DTypeSize(o_.dtype), 0);
    b->tensor = Tensor(b->bytes.data(), o_.dtype, shape_);
    return b;
  }

  absl::Status Annotate(const absl::Status& s, const Instruction& in) const {
    return absl::Status(s.code(), absl::StrCat("pipeline stage ", o_.stage, ", ", ToString(in),
                                               ": ", s.message()));
  }

  OpOptions Op() const { return OpOptions{.timeout = o_.timeout}; }

  absl::Time Deadline() const {
    return o_.timeout > absl::ZeroDuration() ? absl::Now() + o_.timeout + absl::Seconds(1)
                                             : absl::InfiniteFuture();
  }

  absl::Status Take(std::map<Key, std::unique_ptr<Buffer>>& m, const Key& k, const char* what,
                    std::unique_ptr<Buffer>* out) {
    auto it = m.find(k);
    if (it == m.end()) {
      return absl::InternalError(absl::StrCat("no ", what, " buffer for this instruction"));
    }
    *out = std::move(it->second);
    m.erase(it);
    return absl::OkStatus();
  }

  absl::Status Execute(const Instruction& in) {
    const Key key{in.microbatch, in.chunk};
    const int vs = VirtualStage(o_.stage, in.chunk, p_);
    switch (in.kind) {
      case Kind::kForward: {
        Buffer* input = nullptr;
        if (vs > 0) {
          auto it = act_in_.find(key);
          if (it == act_in_.end()) return absl::InternalError("forward input missing");
          input = it->second.get();
        }
        std::unique_ptr<Buffer> output;
        if (vs < nvs_ - 1) output = NewBuffer();
        RETURN_IF_ERROR(cb_.forward(in.microbatch, in.chunk, input ? &input->tensor : nullptr,
                                    output ? &output->tensor : nullptr));
        if (output) {
          if (p_ == 1) {
            act_in_[{in.microbatch, in.chunk + 1}] = std::move(output);
          } else {
            act_out_[key] = std::move(output);
          }
        }
        return absl::OkStatus();
      }
      case Kind::kBackward:
      case Kind::kBackwardInput: {
        std::unique_ptr<Buffer> grad_output;
        if (vs < nvs_ - 1) {
          RETURN_IF_ERROR(Take(grad_in_, key, "gradient", &grad_output));
        }
        std::unique_ptr<Buffer> grad_input;
        if (vs > 0) grad_input = NewBuffer();
        RETURN_IF_ERROR(cb_.backward(in.microbatch, in.chunk,
                                     grad_output ? &grad_output->tensor : nullptr,
                                     grad_input ? &grad_input->tensor : nullptr));
        act_in_.erase(key);  // the forward input is no longer needed
        if (grad_input) {
          if (p_ == 1) {
            grad_in_[{in.microbatch, in.chunk - 1}] = std::move(grad_input);
          } else {
            grad_out_[key] = std::move(grad_input);
          }
        }
        return absl::OkStatus();
      }
      case Kind::kBackwardWeight:
        if (!cb_.backward_weight) return absl::InvalidArgumentError("no backward_weight callback");
        return cb_.backward_weight(in.microbatch, in.chunk);
      case Kind::kSendActivation:
      case Kind::kSendGrad:
      case Kind::kRecvActivation:
      case Kind::kRecvGrad:
        return absl::InternalError("sends and receives run through Exchange");
    }
    return absl::InternalError("unknown instruction kind");
  }

  static bool IsTransfer(Kind kind) {
    return kind == Kind::kSendActivation || kind == Kind::kSendGrad ||
           kind == Kind::kRecvActivation || kind == Kind::kRecvGrad;
  }

  // The transfers list[begin, end) as one Communicator::SendRecv batch: on NCCL one group, so
  // that neighbouring stages that both send and receive never wait for each other to post
  // first (a send holds its stream until the peer's receive runs). A batch with receives is
  // waited for before the compute that consumes them; one of sends only is left pending,
  // keeping its buffers, as a single send was.
  absl::Status Exchange(const std::vector<Instruction>& list, size_t begin, size_t end) {
    std::vector<P2POp> ops;
    Pending batch;
    batch.in = list[begin];
    std::vector<std::pair<std::map<Key, std::unique_ptr<Buffer>>*, Key>> landing;
    for (size_t i = begin; i < end; ++i) {
      const Instruction& in = list[i];
      const Key key{in.microbatch, in.chunk};
      const bool grad = in.kind == Kind::kSendGrad || in.kind == Kind::kRecvGrad;
      if (in.kind == Kind::kSendActivation || in.kind == Kind::kSendGrad) {
        std::unique_ptr<Buffer> buf;
        RETURN_IF_ERROR(Take(grad ? grad_out_ : act_out_, key, grad ? "gradient" : "activation",
                             &buf));
        ops.push_back({P2POp::Kind::kSend, buf->tensor, in.peer_stage,
                       MakeTag(grad, in.microbatch, in.chunk, v_)});
        batch.bufs.push_back(std::move(buf));
      } else {
        // The sender's virtual stage and its chunk there.
        const int vs = VirtualStage(o_.stage, in.chunk, p_);
        const int sender_chunk = (grad ? vs + 1 : vs - 1) / p_;
        auto buf = NewBuffer();
        ops.push_back({P2POp::Kind::kRecv, buf->tensor, in.peer_stage,
                       MakeTag(grad, in.microbatch, sender_chunk, v_)});
        landing.emplace_back(grad ? &grad_in_ : &act_in_, key);
        batch.bufs.push_back(std::move(buf));
      }
    }
    batch.work = o_.pp_group->SendRecv(ops, Op());
    if (landing.empty()) {
      if (batch.work->IsCompleted()) return batch.work->status();
      pending_.push_back(std::move(batch));
      return absl::OkStatus();
    }
    absl::Status s = batch.work->Wait(Deadline());
    if (!s.ok()) {
      // Still running only if our deadline came first: Run waits for it before the buffers go.
      if (!batch.work->IsCompleted()) pending_.push_back(std::move(batch));
      return s;
    }
    // bufs[i] is ops[i]'s: the receives' land in their maps, the sends' go with `batch`.
    size_t r = 0;
    for (size_t i = 0; i < ops.size(); ++i) {
      if (ops[i].kind != P2POp::Kind::kRecv) continue;
      auto& [map, key] = landing[r++];
      (*map)[key] = std::move(batch.bufs[i]);
    }
    return absl::OkStatus();
  }

  // Drops batches that have completed, keeping errors.
  void Reap() {
    for (auto it = pending_.begin(); it != pending_.end();) {
      if (it->work->IsCompleted() && it->work->status().ok()) {
        it = pending_.erase(it);
      } else {
        ++it;
      }
    }
  }

  // A batch in flight and the buffers it uses.
  struct Pending {
    std::vector<std::unique_ptr<Buffer>> bufs;
    std::shared_ptr<Work> work;
    Instruction in;
  };

  const ExecutorOptions& o_;
  const StageCallbacks& cb_;
  int p_ = 1, v_ = 1, nvs_ = 1;
  Tensor::Shape shape_;
  std::map<Key, std::unique_ptr<Buffer>> act_in_;    // received (or local) forward inputs
  std::map<Key, std::unique_ptr<Buffer>> act_out_;   // forward outputs awaiting their send
  std::map<Key, std::unique_ptr<Buffer>> grad_in_;   // received (or local) output gradients
  std::map<Key, std::unique_ptr<Buffer>> grad_out_;  // input gradients awaiting their send
  std::vector<Pending> pending_;
};

}  // namespace

absl::Status RunSchedule(const ExecutorOptions& options, const StageCallbacks& callbacks) {
  const ScheduleSpec& spec = options.spec;
  RETURN_IF_ERROR(ValidateSpec(spec));
  if (options.stage < 0 || options.stage >= spec.stages) {
    return absl::InvalidArgumentError(absl::StrCat("stage ", options.stage, " out of range [0, ",
                                                   spec.stages, ")"));
  }
  if (!callbacks.forward || !callbacks.backward) {
    return absl::InvalidArgumentError("forward and backward callbacks are required");
  }
  if (spec.schedule == Schedule::kZeroBubbleH1 && !callbacks.backward_weight) {
    return absl::InvalidArgumentError("zb-h1 needs a backward_weight callback");
  }
  if (spec.stages > 1) {
    if (options.pp_group == nullptr) {
      return absl::InvalidArgumentError("pp_group is null with more than one stage");
    }
    if (options.pp_group->size() != spec.stages || options.pp_group->rank() != options.stage) {
      return absl::InvalidArgumentError(absl::StrCat(
          "pp_group has rank ", options.pp_group->rank(), " of ", options.pp_group->size(),
          ", expected rank ", options.stage, " of ", spec.stages));
    }
  }
  for (int64_t d : options.activation_shape) {
    if (d < 0) return absl::InvalidArgumentError("negative activation_shape dimension");
  }
  ASSIGN_OR_RETURN(auto lists, Generate(spec));
  StageRunner runner(options, callbacks);
  return runner.Run(lists[options.stage]);
}

}  // namespace trident::pipeline
