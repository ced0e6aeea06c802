// The pipeline executor against a single-process sequential run of a toy model: p*v
// scalar-affine virtual stages y = a_j x + b_j on vectors of 4 floats, loss sum(y_last). All
// values are small dyadic numbers, so every sum is exact whatever the order and results must
// match bit for bit. Plus: a failing callback stops the step everywhere without hanging, and
// neighbouring sends and receives go out as one SendRecv batch.
#include "trident/parallel/pipeline_executor.h"

#include <array>
#include <atomic>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "comm/host/inproc.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "../comm/comm_test_util.h"

namespace trident::pipeline {
namespace {

using ::testing::HasSubstr;
using Vec = std::array<float, 4>;
constexpr int kMicrobatches = 8;

float A(int j) { return static_cast<float>((j % 3) + 1) * (j % 2 == 0 ? 1.0f : -0.5f); }
float B(int j) { return static_cast<float>(j) - 1.5f; }
Vec Loader(int mb) {
  Vec x;
  for (int i = 0; i < 4; ++i) x[i] = static_cast<float>(mb) + 0.25f * static_cast<float>(i);
  return x;
}

struct Result {
  std::vector<float> da, db;      // per virtual stage
  std::vector<Vec> outputs;       // per micro-batch: the last virtual stage's y
};

Result Sequential(int nvs, int m) {
  Result r{std::vector<float>(nvs, 0), std::vector<float>(nvs, 0), std::vector<Vec>(m)};
  for (int mb = 0; mb < m; ++mb) {
    std::vector<Vec> xs(nvs);
    Vec x = Loader(mb);
    for (int j = 0; j < nvs; ++j) {
      xs[j] = x;
      for (int i = 0; i < 4; ++i) x[i] = A(j) * x[i] + B(j);
    }
    r.outputs[mb] = x;
    Vec g;
    g.fill(1.0f);
    for (int j = nvs - 1; j >= 0; --j) {
      for (int i = 0; i < 4; ++i) {
        r.da[j] += g[i] * xs[j][i];
        r.db[j] += g[i];
      }
      for (int i = 0; i < 4; ++i) g[i] *= A(j);
    }
  }
  return r;
}

// The model state of all virtual stages; each virtual stage j is touched only by stage j % p.
struct Model {
  int p, nvs, m;
  bool split;  // ZB-H1: backward does only grad_input, backward_weight does da/db
  std::vector<std::vector<Vec>> inputs;  // [j][mb]
  std::vector<std::vector<Vec>> grads;   // [j][mb]: dL/dy kept for W
  Result r;

  Model(int p_, int v, int m_, bool split_)
      : p(p_), nvs(p_ * v), m(m_), split(split_), inputs(nvs, std::vector<Vec>(m)),
        grads(nvs, std::vector<Vec>(m)),
        r{std::vector<float>(nvs, 0), std::vector<float>(nvs, 0), std::vector<Vec>(m)} {}

  void Weight(int j, int mb) {
    for (int i = 0; i < 4; ++i) {
      r.da[j] += grads[j][mb][i] * inputs[j][mb][i];
      r.db[j] += grads[j][mb][i];
    }
  }

  StageCallbacks Callbacks(int stage) {
    StageCallbacks cb;
    cb.forward = [this, stage](int mb, int chunk, const Tensor* in, Tensor* out) {
      const int j = VirtualStage(stage, chunk, p);
      if ((in == nullptr) != (j == 0) || (out == nullptr) != (j == nvs - 1)) {
        return absl::InternalError(absl::StrCat("bad forward buffers at vs ", j));
      }
      Vec x = in ? *static_cast<const Vec*>(in->data()) : Loader(mb);
      inputs[j][mb] = x;
      Vec y;
      for (int i = 0; i < 4; ++i) y[i] = A(j) * x[i] + B(j);
      if (out) {
        *static_cast<Vec*>(out->data()) = y;
      } else {
        r.outputs[mb] = y;
      }
      return absl::OkStatus();
    };
    cb.backward = [this, stage](int mb, int chunk, const Tensor* gout, Tensor* gin) {
      const int j = VirtualStage(stage, chunk, p);
      if ((gout == nullptr) != (j == nvs - 1) || (gin == nullptr) != (j == 0)) {
        return absl::InternalError(absl::StrCat("bad backward buffers at vs ", j));
      }
      Vec g;
      if (gout) {
        g = *static_cast<const Vec*>(gout->data());
      } else {
        g.fill(1.0f);
      }
      grads[j][mb] = g;
      if (gin) {
        Vec gi;
        for (int i = 0; i < 4; ++i) gi[i] = A(j) * g[i];
        *static_cast<Vec*>(gin->data()) = gi;
      }
      if (!split) Weight(j, mb);
      return absl::OkStatus();
    };
    cb.backward_weight = [this, stage](int mb, int chunk) {
      if (!split) return absl::InternalError("backward_weight called without ZB-H1");
      Weight(VirtualStage(stage, chunk, p), mb);
      return absl::OkStatus();
    };
    return cb;
  }
};

struct Case {
  Schedule schedule;
  int p;
};

class ExecutorMatchesSequential : public ::testing::TestWithParam<Case> {};

TEST_P(ExecutorMatchesSequential, ExactGradientsAndOutputs) {
  const Case c = GetParam();
  const int v = c.schedule == Schedule::kInterleaved1F1B ? 2 : 1;
  const ScheduleSpec spec{.schedule = c.schedule, .stages = c.p, .microbatches = kMicrobatches,
                          .virtual_stages = v};
  Model model(c.p, v, kMicrobatches, c.schedule == Schedule::kZeroBubbleH1);
  std::vector<absl::Status> statuses(c.p);
  auto comms = NewInprocCommunicators({.size = c.p, .store = nullptr, .timeout = absl::Seconds(20)});
  testing::RunRanks(comms, [&](int rank, Communicator& comm) {
    ExecutorOptions opts{.spec = spec, .stage = rank, .pp_group = &comm,
                         .activation_shape = {4}, .timeout = absl::Seconds(20)};
    statuses[rank] = RunSchedule(opts, model.Callbacks(rank));
  });
  for (int s = 0; s < c.p; ++s) ASSERT_TRUE(statuses[s].ok()) << "stage " << s << ": " << statuses[s];
  const Result want = Sequential(c.p * v, kMicrobatches);
  for (int j = 0; j < c.p * v; ++j) {
    EXPECT_EQ(model.r.da[j], want.da[j]) << "da of virtual stage " << j;
    EXPECT_EQ(model.r.db[j], want.db[j]) << "db of virtual stage " << j;
  }
  for (int mb = 0; mb < kMicrobatches; ++mb) {
    EXPECT_EQ(model.r.outputs[mb], want.outputs[mb]) << "output of micro-batch " << mb;
  }
}

std::vector<Case> AllCases() {
  std::vector<Case> cases;
  for (Schedule s : {Schedule::kGPipe, Schedule::kOneFOneB, Schedule::kInterleaved1F1B,
                     Schedule::kZeroBubbleH1}) {
    for (int p : {1, 2, 4}) cases.push_back({s, p});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(
    AllSchedules, ExecutorMatchesSequential, ::testing::ValuesIn(AllCases()),
    [](const ::testing::TestParamInfo<Case>& info) {
      std::string name(ScheduleName(info.param.schedule));
      for (char& ch : name) {
        if (ch == '-') ch = '_';
      }
      return absl::StrCat(name, "_p", info.param.p);
    });

// Forwards everything to a communicator and records the SendRecv batches it is given.
class BatchRecorder : public Communicator {
 public:
  explicit BatchRecorder(Communicator& inner) : c_(inner) {}
  int rank() const override { return c_.rank(); }
  int size() const override { return c_.size(); }
  std::string Describe() const override { return c_.Describe(); }
  std::shared_ptr<Work> AllReduce(const Tensor& i, const Tensor& o, ReduceOp op,
                                  const OpOptions& x) override { return c_.AllReduce(i, o, op, x); }
  std::shared_ptr<Work> ReduceScatter(const Tensor& i, const Tensor& o, ReduceOp op,
                                      const OpOptions& x) override {
    return c_.ReduceScatter(i, o, op, x);
  }
  std::shared_ptr<Work> AllGather(const Tensor& i, const Tensor& o, const OpOptions& x) override {
    return c_.AllGather(i, o, x);
  }
  std::shared_ptr<Work> Broadcast(const Tensor& t, int root, const OpOptions& x) override {
    return c_.Broadcast(t, root, x);
  }
  std::shared_ptr<Work> Reduce(const Tensor& i, const Tensor& o, ReduceOp op, int root,
                               const OpOptions& x) override { return c_.Reduce(i, o, op, root, x); }
  std::shared_ptr<Work> AllToAll(const Tensor& i, const Tensor& o, const OpOptions& x) override {
    return c_.AllToAll(i, o, x);
  }
  std::shared_ptr<Work> Barrier(const OpOptions& x) override { return c_.Barrier(x); }
  std::shared_ptr<Work> Send(const Tensor& t, int peer, int tag, const OpOptions& x) override {
    ++single_ops;
    return c_.Send(t, peer, tag, x);
  }
  std::shared_ptr<Work> Recv(const Tensor& t, int peer, int tag, const OpOptions& x) override {
    ++single_ops;
    return c_.Recv(t, peer, tag, x);
  }
  std::shared_ptr<Work> SendRecv(const std::vector<P2POp>& ops, const OpOptions& x) override {
    bool sends = false, recvs = false;
    for (const P2POp& op : ops) (op.kind == P2POp::Kind::kSend ? sends : recvs) = true;
    if (sends && recvs) ++mixed_batches;
    ++batches;
    return c_.SendRecv(ops, x);
  }
  absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key) override {
    return c_.Split(color, key);
  }
  void Abort(absl::Status s) override { c_.Abort(std::move(s)); }
  absl::Status AbortStatus() const override { return c_.AbortStatus(); }

  int batches = 0, mixed_batches = 0, single_ops = 0;

 private:
  Communicator& c_;
};

// Every transfer goes through SendRecv, and in 1F1B's steady state a stage's activation send
// and gradient receive share one batch (one NCCL group: neither neighbour waits for the other
// to post first), with the results still exact.
TEST(PipelineExecutorTest, NeighbouringTransfersShareOneBatch) {
  const ScheduleSpec spec{.schedule = Schedule::kOneFOneB, .stages = 2,
                          .microbatches = kMicrobatches};
  Model model(2, 1, kMicrobatches, false);
  std::vector<absl::Status> statuses(2);
  std::vector<int> mixed(2), batches(2), singles(2);
  auto comms = NewInprocCommunicators({.size = 2, .store = nullptr, .timeout = absl::Seconds(20)});
  testing::RunRanks(comms, [&](int rank, Communicator& comm) {
    BatchRecorder recorder(comm);
    ExecutorOptions opts{.spec = spec, .stage = rank, .pp_group = &recorder,
                         .activation_shape = {4}, .timeout = absl::Seconds(20)};
    statuses[rank] = RunSchedule(opts, model.Callbacks(rank));
    mixed[rank] = recorder.mixed_batches;
    batches[rank] = recorder.batches;
    singles[rank] = recorder.single_ops;
  });
  const Result want = Sequential(2, kMicrobatches);
  for (int s = 0; s < 2; ++s) {
    ASSERT_TRUE(statuses[s].ok()) << "stage " << s << ": " << statuses[s];
    EXPECT_EQ(singles[s], 0) << "stage " << s;
    EXPECT_GT(batches[s], 0) << "stage " << s;
    EXPECT_GT(mixed[s], 0) << "stage " << s;
  }
  for (int mb = 0; mb < kMicrobatches; ++mb) {
    EXPECT_EQ(model.r.outputs[mb], want.outputs[mb]) << "output of micro-batch " << mb;
  }
}

TEST(PipelineExecutorTest, FailingCallbackStopsEveryStage) {
  constexpr int kStages = 4;
  const ScheduleSpec spec{.schedule = Schedule::kOneFOneB, .stages = kStages,
                          .microbatches = kMicrobatches};
  Model model(kStages, 1, kMicrobatches, false);
  std::vector<absl::Status> statuses(kStages);
  auto comms = NewInprocCommunicators({.size = kStages, .store = nullptr, .timeout = absl::Seconds(2)});
  const absl::Time start = absl::Now();
  testing::RunRanks(comms, [&](int rank, Communicator& comm) {
    StageCallbacks cb = model.Callbacks(rank);
    if (rank == 1) {
      auto inner = cb.forward;
      cb.forward = [inner](int mb, int chunk, const Tensor* in, Tensor* out) {
        if (mb == 3) return absl::DataLossError("injected failure");
        return inner(mb, chunk, in, out);
      };
    }
    ExecutorOptions opts{.spec = spec, .stage = rank, .pp_group = &comm,
                         .activation_shape = {4}, .timeout = absl::Seconds(2)};
    statuses[rank] = RunSchedule(opts, cb);
    if (!statuses[rank].ok()) comm.Abort(statuses[rank]);
  });
  EXPECT_LT(absl::Now() - start, absl::Seconds(15));
  EXPECT_EQ(statuses[1].code(), absl::StatusCode::kDataLoss) << statuses[1];
  EXPECT_THAT(statuses[1].message(), HasSubstr("pipeline stage 1"));
  EXPECT_THAT(statuses[1].message(), HasSubstr("Forward(mb 3"));
  EXPECT_THAT(statuses[1].message(), HasSubstr("injected failure"));
  for (int s : {0, 2, 3}) {
    EXPECT_FALSE(statuses[s].ok()) << "stage " << s;
    EXPECT_THAT(statuses[s].message(), HasSubstr(absl::StrCat("pipeline stage ", s)));
  }
}

TEST(PipelineExecutorTest, BadOptionsAreInvalidArgument) {
  Model model(1, 1, 2, false);
  ExecutorOptions opts{.spec = {.schedule = Schedule::kGPipe, .stages = 2, .microbatches = 2},
                       .stage = 0, .pp_group = nullptr, .activation_shape = {4}};
  EXPECT_EQ(RunSchedule(opts, model.Callbacks(0)).code(), absl::StatusCode::kInvalidArgument);
  opts.spec.stages = 1;
  opts.stage = 1;
  EXPECT_EQ(RunSchedule(opts, model.Callbacks(0)).code(), absl::StatusCode::kInvalidArgument);
  opts.stage = 0;
  EXPECT_TRUE(RunSchedule(opts, model.Callbacks(0)).ok());
}

}  // namespace
}  // namespace trident::pipeline
