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
    for (const Instruction& in : list) {
      status = Execute(in);
      if (!status.ok()) {
        status = Annotate(status, in);
        break;
      }
      Reap();
    }
    // Every send must finish before its buffer goes away, on success and on error alike (the
    // op is bound by its own deadline).
    for (auto& [buf, work, in] : pending_) {
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
      case Kind::kSendGrad: {
        const bool grad = in.kind == Kind::kSendGrad;
        std::unique_ptr<Buffer> buf;
        RETURN_IF_ERROR(Take(grad ? grad_out_ : act_out_, key, grad ? "gradient" : "activation",
                             &buf));
        auto work = o_.pp_group->Send(buf->tensor, in.peer_stage,
                                      MakeTag(grad, in.microbatch, in.chunk, v_), Op());
        if (work->IsCompleted()) {
          RETURN_IF_ERROR(work->status());
        } else {
          pending_.push_back({std::move(buf), std::move(work), in});
        }
        return absl::OkStatus();
      }
      case Kind::kRecvActivation:
      case Kind::kRecvGrad: {
        const bool grad = in.kind == Kind::kRecvGrad;
        // The sender's virtual stage and its chunk there.
        const int sender_vs = grad ? vs + 1 : vs - 1;
        const int sender_chunk = sender_vs / p_;
        auto buf = NewBuffer();
        auto work = o_.pp_group->Recv(buf->tensor, in.peer_stage,
                                      MakeTag(grad, in.microbatch, sender_chunk, v_), Op());
        RETURN_IF_ERROR(work->Wait(Deadline()));
        (grad ? grad_in_ : act_in_)[key] = std::move(buf);
        return absl::OkStatus();
      }
    }
    return absl::InternalError("unknown instruction kind");
  }

  // Drops sends that have completed, keeping errors.
  void Reap() {
    for (auto it = pending_.begin(); it != pending_.end();) {
      if (it->work->IsCompleted() && it->work->status().ok()) {
        it = pending_.erase(it);
      } else {
        ++it;
      }
    }
  }

  struct PendingSend {
    std::unique_ptr<Buffer> buf;
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
  std::vector<PendingSend> pending_;
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
