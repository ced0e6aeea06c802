#include "trainer.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "trident/status_macros.h"
#include "corpus.h"
#include "trident/checkpoint.h"
#include "trident/parallel/data_parallel.h"
#include "trident/parallel/mesh.h"
#include "trident/parallel/pipeline_executor.h"

namespace lm {
namespace {

using trident::Communicator;
using trident::Dim;
using trident::Tensor;
using Clock = std::chrono::steady_clock;

// Tags of the evaluation pass's activations: bit 22 is never set by the pipeline executor's
// tags (micro-batch * chunks + chunk < 2^20), so the two can never match each other.
constexpr int kEvalTagBit = 1 << 22;

int64_t NanosSince(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count();
}

// Adam on n elements with their moments; `t` is the 1-based step.
void AdamUpdate(float* p, const float* g, float* m, float* v, size_t n, float lr, int64_t t) {
  constexpr float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
  const auto c1 = static_cast<float>(1.0 - std::pow(0.9, static_cast<double>(t)));
  const auto c2 = static_cast<float>(1.0 - std::pow(0.999, static_cast<double>(t)));
  for (size_t i = 0; i < n; ++i) {
    m[i] = b1 * m[i] + (1.0f - b1) * g[i];
    v[i] = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
    p[i] -= lr * (m[i] / c1) / (std::sqrt(v[i] / c2) + eps);
  }
}

}  // namespace

struct Trainer::State {
  Corpus corpus;
  std::optional<trident::Mesh> mesh;
  std::optional<trident::MeshGroups> groups;  // of the current world
  trident::MeshCoord coord;
  trident::pipeline::ScheduleSpec spec;
  int chunks_per_stage = 1;
  std::vector<std::unique_ptr<Chunk>> chunks;  // index: chunk (virtual stage c*pp + stage)
  std::vector<Param*> params;                  // all chunks', chunk by chunk, forward order
  std::vector<std::vector<Stash>> stash;       // [micro-batch][chunk]
  std::vector<int> weight_passes;              // per chunk, this step
  std::unique_ptr<trident::GradBucketer> bucketer;
  std::vector<std::vector<int>> bucket_index;  // per chunk: its params' bucketer indices
  std::unique_ptr<trident::Zero1Optimizer> zero1;
  std::vector<float> adam_m, adam_v;           // all params, or this rank's ZeRO-1 shard
  bool failed = false;

  Communicator& tp() { return groups->Group(Dim::kTp); }
  Communicator& pp() { return groups->Group(Dim::kPp); }
  Communicator& dp() { return groups->Group(Dim::kDp); }
  int virtual_stages() const { return spec.stages * chunks_per_stage; }
  bool last_stage() const { return coord.pp == spec.stages - 1; }
  int64_t tp_comm_ns() const {
    int64_t ns = 0;
    for (const auto& c : chunks) ns += c->tp_comm_ns();
    return ns;
  }
};

std::string DescribeConfig(const TrainerConfig& c) {
  return absl::StrFormat(
      "tp=%d pp=%d dp=%d schedule=%s microbatches=%d batch=%d lr=%g zero1=%d seed=%d "
      "context=%d embed=%d ffn=%d layers=%d",
      c.tp, c.pp, c.dp, trident::pipeline::ScheduleName(c.schedule), c.microbatches, c.batch,
      c.lr, c.zero1 ? 1 : 0, c.model.seed, c.model.context, c.model.embed, c.model.ffn,
      c.model.layers);
}

Trainer::Trainer(Communicator& world, const TrainerConfig& config)
    : world_(&world), config_(config), state_(std::make_unique<State>()) {}

Trainer::~Trainer() = default;

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(Communicator& world,
                                                         const TrainerConfig& config) {
  auto bad = [](auto&&... args) { return absl::InvalidArgumentError(absl::StrCat(args...)); };
  const TrainerConfig& c = config;
  const bool interleaved = c.schedule == trident::pipeline::Schedule::kInterleaved1F1B;
  const int v = interleaved ? c.virtual_stages : 1;
  if (c.microbatches < 1) return bad("--microbatches must be at least 1, not ", c.microbatches);
  if (c.batch < 1 || c.batch % (c.dp * c.microbatches) != 0) {
    return bad("--batch ", c.batch, " must be a positive multiple of dp x microbatches = ",
               c.dp, " x ", c.microbatches, " (each micro-batch gets the same number of samples)");
  }
  if (c.model.layers < 1 || c.model.layers % (c.pp * v) != 0) {
    return bad("--layers ", c.model.layers, " must be a positive multiple of the ", c.pp * v,
               " virtual pipeline stages (pp ", c.pp, interleaved ? " x 2 chunks" : "", ")");
  }
  if (c.model.ffn < 1 || c.model.ffn % c.tp != 0) {
    return bad("--ffn ", c.model.ffn, " must be a positive multiple of tp ", c.tp);
  }
  if (c.model.context < 1 || c.model.embed < 1) return bad("--context and --embed must be >= 1");
  if (!(c.lr > 0.0f)) return bad("--lr must be positive, not ", c.lr);
  if (c.val_samples < c.dp) return bad("--val-samples must be at least dp (", c.dp, ")");
  std::unique_ptr<Trainer> trainer(new Trainer(world, config));
  TRIDENT_RETURN_IF_ERROR(trainer->Init());
  return trainer;
}

absl::Status Trainer::Init() {
  State& s = *state_;
  const TrainerConfig& c = config_;
  if (c.data_path.empty()) {
    TRIDENT_ASSIGN_OR_RETURN(s.corpus, Corpus::Create(Corpus::BuiltinText(), c.model.context));
  } else {
    TRIDENT_ASSIGN_OR_RETURN(s.corpus, Corpus::FromFile(c.data_path, c.model.context));
  }
  config_.model.vocab = s.corpus.vocab_size();
  TRIDENT_ASSIGN_OR_RETURN(trident::Mesh mesh,
                   trident::Mesh::Create(world_->size(), {.tp = c.tp, .pp = c.pp, .dp = c.dp}));
  s.mesh = mesh;
  s.coord = mesh.CoordOf(world_->rank());

  const bool interleaved = c.schedule == trident::pipeline::Schedule::kInterleaved1F1B;
  s.chunks_per_stage = interleaved ? c.virtual_stages : 1;
  s.spec = {.schedule = c.schedule, .stages = c.pp, .microbatches = c.microbatches,
            .virtual_stages = s.chunks_per_stage};
  TRIDENT_RETURN_IF_ERROR(trident::pipeline::ValidateSpec(s.spec));

  const int nvs = s.virtual_stages();
  const int layers_per_vs = c.model.layers / nvs;
  for (int chunk = 0; chunk < s.chunks_per_stage; ++chunk) {
    const int vs = trident::pipeline::VirtualStage(s.coord.pp, chunk, c.pp);
    Chunk::Placement place{.first_layer = vs * layers_per_vs, .num_layers = layers_per_vs,
                           .has_embedding = vs == 0, .has_head = vs == nvs - 1,
                           .tp_rank = s.coord.tp, .tp_size = c.tp};
    s.chunks.push_back(std::make_unique<Chunk>(config_.model, place, nullptr));
    for (Param* p : s.chunks.back()->params()) s.params.push_back(p);
  }
  s.weight_passes.assign(s.chunks_per_stage, 0);
  return BindGroups();
}

absl::Status Trainer::BindGroups() {
  State& s = *state_;
  const TrainerConfig& c = config_;
  s.bucketer.reset();
  s.zero1.reset();
  s.groups.reset();
  TRIDENT_ASSIGN_OR_RETURN(trident::MeshGroups groups, trident::MeshGroups::Build(*world_, *s.mesh));
  s.groups = std::move(groups);
  if (!(s.groups->coord() == s.coord)) {
    return absl::InternalError(absl::StrCat("rank ", world_->rank(),
                                            " moved in the mesh; a rebuilt world keeps the ranks"));
  }
  for (auto& chunk : s.chunks) chunk->set_tp(&s.tp());
  s.stash.assign(c.microbatches, std::vector<Stash>(s.chunks_per_stage));

  std::vector<Tensor> values, grads;
  for (Param* p : s.params) {
    values.push_back(Tensor::Of(p->value.data(), static_cast<int64_t>(p->value.size())));
    grads.push_back(Tensor::Of(p->grad.data(), static_cast<int64_t>(p->grad.size())));
  }
  size_t adam_size = 0;
  if (c.zero1) {
    TRIDENT_ASSIGN_OR_RETURN(s.zero1,
                     trident::Zero1Optimizer::Create(s.dp(), values, grads, {.timeout = c.timeout}));
    adam_size = s.zero1->shard_size();
  } else {
    // Registered in the order backward finishes them: the last chunk first, each chunk's
    // parameters from its last layer back.
    std::vector<Tensor> order;
    s.bucket_index.assign(s.chunks_per_stage, {});
    for (int chunk = s.chunks_per_stage - 1; chunk >= 0; --chunk) {
      std::vector<Param*> ps = s.chunks[chunk]->params();
      for (auto it = ps.rbegin(); it != ps.rend(); ++it) {
        s.bucket_index[chunk].push_back(static_cast<int>(order.size()));
        order.push_back(Tensor::Of((*it)->grad.data(), static_cast<int64_t>((*it)->grad.size())));
      }
    }
    TRIDENT_ASSIGN_OR_RETURN(s.bucketer,
                     trident::GradBucketer::Create(
                         s.dp(), order, {.bucket_bytes = c.bucket_bytes, .op_timeout = c.timeout}));
    for (Param* p : s.params) adam_size += p->value.size();
  }
  if (s.adam_m.size() != adam_size) {  // first bind, or ZeRO-1 at a new dp (restored next)
    s.adam_m.assign(adam_size, 0.0f);
    s.adam_v.assign(adam_size, 0.0f);
  }
  return absl::OkStatus();
}

absl::Status Trainer::Rebuild(Communicator& world) {
  State& s = *state_;
  TrainerConfig& c = config_;
  // The old world may be gone already (Runtime::Recover replaces it): compare with what
  // Create saw. Only dp may change (a shrink); this rank keeps its model shard.
  const int shard_ranks = c.tp * c.pp;
  const int dp = world.size() / shard_ranks;
  absl::StatusOr<trident::Mesh> mesh =
      world.size() % shard_ranks == 0
          ? trident::Mesh::Create(world.size(), {.tp = c.tp, .pp = c.pp, .dp = dp})
          : absl::InvalidArgumentError("not a multiple of tp x pp");
  const trident::MeshCoord coord = mesh.ok() ? mesh->CoordOf(world.rank()) : trident::MeshCoord{};
  if (!mesh.ok() || coord.tp != s.coord.tp || coord.pp != s.coord.pp ||
      c.batch % (dp * c.microbatches) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Rebuild: the new world is rank ", world.rank(), " of ", world.size(),
        ", which is not this trainer's model shard (", s.mesh->Describe(),
        "); a rebuilt world keeps every rank's tp and pp place and only dp may change (with "
        "--batch a multiple of dp x microbatches)"));
  }
  if (dp != c.dp) {
    // ZeRO-1's moment shards follow dp: they must be restored from a checkpoint.
    if (c.zero1) dirty_ = true;
    c.dp = dp;
    s.mesh = *mesh;
  }
  s.coord = coord;
  world_ = &world;
  s.failed = false;
  return BindGroups();
}

std::vector<Communicator*> Trainer::groups() {
  State& s = *state_;
  if (!s.groups.has_value()) return {};
  return {&s.tp(), &s.pp(), &s.dp()};
}

absl::Status Trainer::Fail(absl::Status status) {
  State& s = *state_;
  s.failed = true;
  if (s.groups.has_value()) {
    for (Dim d : {Dim::kTp, Dim::kPp, Dim::kDp}) s.groups->Group(d).Abort(status);
  }
  world_->Abort(status);
  return status;
}

absl::StatusOr<StepStats> Trainer::Step() {
  if (state_->failed) {
    return absl::FailedPreconditionError("the trainer failed in an earlier step; rebuild it");
  }
  absl::StatusOr<StepStats> st = RunStep();
  if (!st.ok()) return Fail(st.status());
  return st;
}

absl::StatusOr<StepStats> Trainer::RunStep() {
  State& s = *state_;
  const TrainerConfig& c = config_;
  const auto start = Clock::now();
  const int64_t tp_ns_before = s.tp_comm_ns();
  int64_t compute_ns = 0;
  const int64_t step = step_ + 1;
  dirty_ = true;  // from here until success, parameters and moments may be half-updated
  for (Param* p : s.params) std::fill(p->grad.begin(), p->grad.end(), 0.0f);
  std::fill(s.weight_passes.begin(), s.weight_passes.end(), 0);

  const int local_batch = c.batch / c.dp;
  const int mb_size = local_batch / c.microbatches;
  const float grad_scale = 1.0f / static_cast<float>(local_batch);
  const int context = c.model.context;
  double loss_sum = 0.0;
  std::vector<uint8_t> tokens(static_cast<size_t>(mb_size) * context), targets(mb_size);

  auto load_batch = [&](int mb) {
    const int64_t first = static_cast<int64_t>(s.coord.dp) * local_batch +
                          static_cast<int64_t>(mb) * mb_size;
    for (int j = 0; j < mb_size; ++j) {
      const int64_t pos = s.corpus.TrainPosition(c.model.seed, step, first + j);
      std::copy(s.corpus.ContextAt(pos), s.corpus.ContextAt(pos) + context,
                tokens.begin() + static_cast<size_t>(j) * context);
      targets[j] = static_cast<uint8_t>(s.corpus.TargetAt(pos));
    }
  };
  auto weight_pass_done = [&](int chunk) -> absl::Status {
    if (++s.weight_passes[chunk] < c.microbatches || !s.bucketer) return absl::OkStatus();
    for (int index : s.bucket_index[chunk]) TRIDENT_RETURN_IF_ERROR(s.bucketer->MarkReady(index));
    return absl::OkStatus();
  };
  const bool split_backward = c.schedule == trident::pipeline::Schedule::kZeroBubbleH1;

  trident::pipeline::StageCallbacks callbacks;
  callbacks.forward = [&](int mb, int chunk, const Tensor* in, Tensor* out) -> absl::Status {
    const auto t0 = Clock::now();
    load_batch(mb);
    absl::Status st = s.chunks[chunk]->Forward(
        mb_size, tokens.data(), in ? static_cast<const float*>(in->data()) : nullptr,
        targets.data(), out ? static_cast<float*>(out->data()) : nullptr, &loss_sum, grad_scale,
        &s.stash[mb][chunk]);
    compute_ns += NanosSince(t0);
    return st;
  };
  callbacks.backward = [&](int mb, int chunk, const Tensor* grad_out,
                           Tensor* grad_in) -> absl::Status {
    const auto t0 = Clock::now();
    Chunk& ch = *s.chunks[chunk];
    absl::Status st = ch.BackwardInput(
        s.stash[mb][chunk], grad_out ? static_cast<const float*>(grad_out->data()) : nullptr,
        grad_in ? static_cast<float*>(grad_in->data()) : nullptr);
    if (st.ok() && !split_backward) {
      ch.BackwardWeight(s.stash[mb][chunk]);
      st = weight_pass_done(chunk);
    }
    compute_ns += NanosSince(t0);
    return st;
  };
  callbacks.backward_weight = [&](int mb, int chunk) -> absl::Status {
    const auto t0 = Clock::now();
    s.chunks[chunk]->BackwardWeight(s.stash[mb][chunk]);
    absl::Status st = weight_pass_done(chunk);
    compute_ns += NanosSince(t0);
    return st;
  };

  trident::pipeline::ExecutorOptions exec{.spec = s.spec, .stage = s.coord.pp,
                                          .pp_group = &s.pp(),
                                          .activation_shape = {mb_size, c.model.hidden()},
                                          .timeout = c.timeout};
  TRIDENT_RETURN_IF_ERROR(trident::pipeline::RunSchedule(exec, callbacks));

  const int64_t t = step;
  const float lr = c.lr;
  const absl::Time deadline =
      c.timeout > absl::ZeroDuration() ? absl::Now() + 2 * c.timeout : absl::InfiniteFuture();
  if (s.bucketer) {
    TRIDENT_RETURN_IF_ERROR(s.bucketer->Finish(deadline));
    const auto t0 = Clock::now();
    size_t offset = 0;
    for (Param* p : s.params) {
      AdamUpdate(p->value.data(), p->grad.data(), s.adam_m.data() + offset,
                 s.adam_v.data() + offset, p->value.size(), lr, t);
      offset += p->value.size();
    }
    compute_ns += NanosSince(t0);
  } else {
    const size_t shard_offset = s.zero1->shard_offset();
    TRIDENT_RETURN_IF_ERROR(s.zero1->Step(
        [&](float* p, const float* g, size_t n, size_t offset) {
          const auto t0 = Clock::now();
          const size_t i = offset - shard_offset;
          AdamUpdate(p, g, s.adam_m.data() + i, s.adam_v.data() + i, n, lr, t);
          compute_ns += NanosSince(t0);
        },
        deadline));
  }

  // The loss lives on the last stage's tp-rank-0 of every dp replica; one world all-reduce
  // gives every rank the global mean.
  double reduced = s.last_stage() && s.coord.tp == 0 ? loss_sum : 0.0;
  Tensor loss_t = Tensor::Of(&reduced, 1);
  if (step == skip_world_allreduce_step_) {
    skip_world_allreduce_step_ = -1;
    std::fprintf(stderr, "lm-trainer: injecting a skipped collective (the world all-reduce "
                 "of step %lld)\n", static_cast<long long>(step));
  } else if (step == wrong_op_step_) {
    wrong_op_step_ = -1;
    std::fprintf(stderr, "lm-trainer: injecting a wrong op (an all-gather where the others "
                 "all-reduce, step %lld)\n", static_cast<long long>(step));
    std::vector<double> all(world_->size());
    TRIDENT_RETURN_IF_ERROR(
        world_->AllGather(loss_t, Tensor::Of(all.data(), static_cast<int64_t>(all.size())),
                          {.timeout = c.timeout})
            ->Wait());
  } else {
    TRIDENT_RETURN_IF_ERROR(world_->AllReduce(loss_t, loss_t, trident::ReduceOp::kSum,
                                              {.timeout = c.timeout})
                                ->Wait());
  }
  StepStats st;
  step_ = step;
  dirty_ = false;
  st.step = step;
  st.loss = reduced / c.batch;
  st.step_ms = static_cast<double>(NanosSince(start)) / 1e6;
  st.compute_ms =
      static_cast<double>(compute_ns - (s.tp_comm_ns() - tp_ns_before)) / 1e6;
  st.tokens_per_s = c.batch / (st.step_ms / 1e3);
  return st;
}

namespace {

// This rank's real (unpadded) slice of the ZeRO-1 flat vector: [offset, offset + n) of flat.
struct Zero1Slice {
  int64_t flat = 0, offset = 0, n = 0;
};
Zero1Slice Zero1SliceOf(const trident::Zero1Optimizer& z) {
  Zero1Slice out;
  out.flat = static_cast<int64_t>(z.flat_size());
  out.offset = static_cast<int64_t>(z.shard_offset());
  out.n = std::clamp<int64_t>(out.flat - out.offset, 0, static_cast<int64_t>(z.shard_size()));
  return out;
}

// "adam_m/block0.w1"
std::string MomentName(const char* which, const Param& p) {
  return absl::StrCat("adam_", which, "/", p.name);
}

}  // namespace

trident::TensorPlacement Trainer::PlacementOf(const Param& p) const {
  const State& s = *state_;
  trident::TensorPlacement place;
  place.global_shape.assign(p.global_shape.begin(), p.global_shape.end());
  place.offset.assign(p.offset.begin(), p.offset.end());
  // Replicated over dp always; over tp too unless the tensor is split there.
  place.replica_count = p.tp_replicated ? config_.tp * config_.dp : config_.dp;
  place.replica_index = p.tp_replicated ? s.coord.tp + config_.tp * s.coord.dp : s.coord.dp;
  return place;
}

std::string Trainer::Zero1Name(const char* which) const {
  return absl::StrCat("zero1_adam_", which, "/pp", state_->coord.pp, ".tp", state_->coord.tp);
}

std::vector<trident::Tensor> Trainer::ReplicatedTensors() {
  State& s = *state_;
  std::vector<trident::Tensor> out;
  for (Param* p : s.params) out.push_back(Tensor::Of(p->value.data(), p->value.size()));
  if (!s.zero1) {
    out.push_back(Tensor::Of(s.adam_m.data(), s.adam_m.size()));
    out.push_back(Tensor::Of(s.adam_v.data(), s.adam_v.size()));
  }
  return out;
}

int64_t Trainer::ReplicaSet() const {
  return state_->coord.tp + static_cast<int64_t>(config_.tp) * state_->coord.pp;
}

absl::Status Trainer::FlipBit(const std::string& name) {
  std::vector<std::string> names;
  for (Param* p : state_->params) {
    if ((name.empty() || p->name == name) && !p->value.empty()) {
      uint32_t bits;
      std::memcpy(&bits, &p->value[0], sizeof(bits));
      bits ^= 1u << 20;
      std::memcpy(&p->value[0], &bits, sizeof(bits));
      return absl::OkStatus();
    }
    names.push_back(p->name);
  }
  return absl::NotFoundError(absl::StrCat("no parameter '", name, "' on this rank; it holds ",
                                          absl::StrJoin(names, ", ")));
}

trident::CheckpointState Trainer::CheckpointState() {
  State& s = *state_;
  trident::CheckpointState out;
  for (Param* p : s.params) {
    Tensor::Shape shape(p->shape.begin(), p->shape.end());
    out.tensors.push_back({p->name, Tensor(p->value.data(), trident::DType::kF32, shape),
                           PlacementOf(*p)});
    if (!s.zero1) {
      // The moments, in the parameters' shape and place, so that any layout can load them.
      const size_t offset = MomentOffset(*p);
      for (auto [which, moments] : {std::pair{"m", &s.adam_m}, std::pair{"v", &s.adam_v}}) {
        out.tensors.push_back({MomentName(which, *p),
                               Tensor(moments->data() + offset, trident::DType::kF32, shape),
                               PlacementOf(*p)});
      }
    }
  }
  if (s.zero1) {
    // ZeRO-1 moments: this rank's slice of the flat vector of its (pp stage, tp rank). Loads
    // at any dp; the flat order depends on tp and pp, so those must match.
    const Zero1Slice z = Zero1SliceOf(*s.zero1);
    if (z.n > 0) {
      for (auto [which, moments] : {std::pair{"m", &s.adam_m}, std::pair{"v", &s.adam_v}}) {
        trident::TensorPlacement place;
        place.global_shape = {z.flat};
        place.offset = {z.offset};
        out.tensors.push_back({Zero1Name(which), Tensor::Of(moments->data(), z.n), place});
      }
    }
  }
  out.metadata = absl::StrCat("step=", step_, " zero1=", config_.zero1 ? 1 : 0, " layout=tp", config_.tp,
                              ".pp", config_.pp, ".dp", config_.dp);
  return out;
}

std::vector<trident::TensorRequest> Trainer::RestoreRequests() {
  State& s = *state_;
  std::vector<trident::TensorRequest> out;
  auto request = [](std::string name, float* data, const Param& p) {
    trident::TensorRequest r;
    r.name = std::move(name);
    r.tensor = Tensor(data, trident::DType::kF32, Tensor::Shape(p.shape.begin(), p.shape.end()));
    r.offset.assign(p.offset.begin(), p.offset.end());
    r.global_shape.assign(p.global_shape.begin(), p.global_shape.end());
    return r;
  };
  for (Param* p : s.params) {
    out.push_back(request(p->name, p->value.data(), *p));
    if (!s.zero1) {
      const size_t offset = MomentOffset(*p);
      out.push_back(request(MomentName("m", *p), s.adam_m.data() + offset, *p));
      out.push_back(request(MomentName("v", *p), s.adam_v.data() + offset, *p));
    }
  }
  if (s.zero1) {
    const Zero1Slice z = Zero1SliceOf(*s.zero1);
    std::fill(s.adam_m.begin(), s.adam_m.end(), 0.0f);  // the padding stays zero
    std::fill(s.adam_v.begin(), s.adam_v.end(), 0.0f);
    if (z.n > 0) {
      for (auto [which, moments] : {std::pair{"m", &s.adam_m}, std::pair{"v", &s.adam_v}}) {
        trident::TensorRequest r;
        r.name = Zero1Name(which);
        r.tensor = Tensor::Of(moments->data(), z.n);
        r.offset = {z.offset};
        r.global_shape = {z.flat};
        out.push_back(std::move(r));
      }
    }
  }
  return out;
}

void Trainer::ResetToInitialState() {
  State& s = *state_;
  for (auto& chunk : s.chunks) {
    Chunk fresh(config_.model, chunk->placement(), nullptr);  // same seed: the initial weights
    std::vector<Param*> mine = chunk->params(), init = fresh.params();
    for (size_t i = 0; i < mine.size(); ++i) mine[i]->value = init[i]->value;
  }
  std::fill(s.adam_m.begin(), s.adam_m.end(), 0.0f);
  std::fill(s.adam_v.begin(), s.adam_v.end(), 0.0f);
  SetRestoredStep(0);
}

void Trainer::SetRestoredStep(int64_t step) {
  step_ = step;
  dirty_ = false;
  state_->failed = false;
}

size_t Trainer::MomentOffset(const Param& p) const {
  size_t offset = 0;
  for (const Param* q : state_->params) {
    if (q == &p) return offset;
    offset += q->value.size();
  }
  std::fprintf(stderr, "lm-trainer: bug: parameter %s is not this trainer's\n", p.name.c_str());
  std::abort();
}

absl::StatusOr<double> Trainer::Evaluate() {
  if (state_->failed) {
    return absl::FailedPreconditionError("the trainer failed in an earlier step; rebuild it");
  }
  State& s = *state_;
  const TrainerConfig& c = config_;
  const int p = c.pp;
  const int nvs = s.virtual_stages();
  const int h = c.model.hidden();
  const int context = c.model.context;
  const int64_t first = static_cast<int64_t>(c.val_samples) * s.coord.dp / c.dp;
  const int n = static_cast<int>(static_cast<int64_t>(c.val_samples) * (s.coord.dp + 1) / c.dp -
                                 first);
  std::vector<uint8_t> tokens(static_cast<size_t>(n) * context), targets(n);
  for (int j = 0; j < n; ++j) {
    const int64_t pos = s.corpus.ValPosition(first + j, c.val_samples);
    std::copy(s.corpus.ContextAt(pos), s.corpus.ContextAt(pos) + context,
              tokens.begin() + static_cast<size_t>(j) * context);
    targets[j] = static_cast<uint8_t>(s.corpus.TargetAt(pos));
  }
  double loss_sum = 0.0;
  const trident::OpOptions op{.timeout = c.timeout};
  auto run = [&]() -> absl::Status {
    // One micro-batch through the virtual stages in order: a forward-only pipeline.
    std::vector<float> in, out;
    std::vector<std::pair<std::shared_ptr<trident::Work>, std::vector<float>>> sends;
    absl::Status status;
    for (int vs = 0; vs < nvs && status.ok(); ++vs) {
      if (vs % p != s.coord.pp) continue;
      if (vs > 0 && p > 1) {
        in.assign(static_cast<size_t>(n) * h, 0.0f);
        status = s.pp().Recv(Tensor::Of(in.data(), static_cast<int64_t>(in.size())),
                             (vs - 1) % p, kEvalTagBit | (vs - 1), op)->Wait();
        if (!status.ok()) break;
      }
      const bool last = vs == nvs - 1;
      out.assign(last ? 0 : static_cast<size_t>(n) * h, 0.0f);
      status = s.chunks[vs / p]->Forward(n, tokens.data(), in.data(), targets.data(), out.data(),
                                         &loss_sum, 0.0f, nullptr);
      if (!status.ok() || last) break;
      if (p == 1) {
        in.swap(out);
      } else {
        auto work = s.pp().Send(Tensor::Of(out.data(), static_cast<int64_t>(out.size())),
                                (vs + 1) % p, kEvalTagBit | vs, op);
        sends.emplace_back(std::move(work), std::move(out));
      }
    }
    for (auto& [work, buf] : sends) {
      absl::Status w = work->Wait();
      if (status.ok()) status = w;
    }
    if (!status.ok()) return absl::Status(status.code(), absl::StrCat("evaluation: ", status.message()));
    return absl::OkStatus();
  };
  absl::Status status = run();
  if (!status.ok()) return Fail(status);
  double reduced = s.last_stage() && s.coord.tp == 0 ? loss_sum : 0.0;
  Tensor loss_t = Tensor::Of(&reduced, 1);
  status = world_->AllReduce(loss_t, loss_t, trident::ReduceOp::kSum, op)->Wait();
  if (!status.ok()) return Fail(status);
  return reduced / c.val_samples;
}

}  // namespace lm
