// An in-process job for the runtime's tests: members are threads (workers w0.., spares s0..)
// that meet in one MemoryStore, build each epoch's world over the in-process transport, and
// run RunResilient on a ToyTrainer; health::Coordinator decides on the test's thread, driven
// by a fake agent that knows which threads have "died". A death is a thread that stops: a
// "kill" reports its exit at once (as trident-run's signalfd would), a "stop" stops its
// heartbeat and lets the coordinator find it stopped (as /proc would say) and kill it.
#ifndef TRIDENT_TESTS_RUNTIME_INPROC_JOB_H_
#define TRIDENT_TESTS_RUNTIME_INPROC_JOB_H_

#include <signal.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "comm/host/inproc.h"
#include "health/coordinator.h"
#include "trident/resilient.h"
#include "trident/runtime.h"

namespace trident::testing {

// Replicated parameters w (f64) trained by exact arithmetic: each step's gradient is the mean
// over `virtual_ranks` integer contributions, split over however many ranks the world has,
// and the learning rate is a power of two, so any world size, any restore and any order of
// sums gives bit-identical weights.
class ToyTrainer : public Trainable {
 public:
  static constexpr int kParams = 16;
  explicit ToyTrainer(int virtual_ranks, std::vector<std::vector<int>> shrink = {})
      : virtual_ranks_(virtual_ranks), shrink_(std::move(shrink)) {
    ResetToInitialState();
  }

  // Called at the start of Step(step) on this member: may kill or stop it.
  std::function<absl::Status(int64_t step)> fate;
  // Called at the end of Step(step) (a fault injection: a flipped bit of w).
  std::function<void(int64_t step, std::vector<double>& w)> after_step;
  // Set once this member is dead: it takes no part in anything after.
  const bool* dead = nullptr;
  // How long each step computes (for the adaptive replica-check interval).
  absl::Duration step_time = absl::ZeroDuration();

  absl::Status Bind(Communicator& world, const BindInfo& info) override {
    if (dead != nullptr && *dead) return absl::InternalError("dead");
    world_ = &world;
    ++binds;
    return absl::OkStatus();
  }
  std::vector<Communicator*> Groups() override { return {}; }
  absl::Status Step() override {
    if (fate) {
      if (absl::Status s = fate(step_ + 1); !s.ok()) return s;
    }
    if (dead != nullptr && *dead) return absl::InternalError("dead");
    if (step_time > absl::ZeroDuration()) absl::SleepFor(step_time);  // the step's compute
    const int n = world_->size(), r = world_->rank();
    std::vector<double> g(kParams, 0.0);
    for (int v = r * virtual_ranks_ / n; v < (r + 1) * virtual_ranks_ / n; ++v) {
      for (int i = 0; i < kParams; ++i) g[i] += Contribution(step_ + 1, v, i);
    }
    dirty_ = true;  // from here on the state may be half-updated
    Tensor t = Tensor::Of(g.data(), g.size());
    if (absl::Status s = world_->AllReduce(t, t, ReduceOp::kSum)->Wait(); !s.ok()) return s;
    for (int i = 0; i < kParams; ++i) w_[i] -= g[i] / virtual_ranks_ / 64.0;
    dirty_ = false;
    ++step_;
    if (after_step) after_step(step_, w_);
    return absl::OkStatus();
  }
  int64_t step() const override { return step_; }
  bool dirty() const override { return dirty_; }
  CheckpointState SaveState() override {
    CheckpointState s;
    TensorPlacement replicated;  // every rank holds all of w
    replicated.replica_index = world_->rank();
    replicated.replica_count = world_->size();
    s.tensors.push_back({"w", Tensor::Of(w_.data(), w_.size()), replicated});
    return s;
  }
  std::vector<TensorRequest> RestoreRequests() override {
    TensorRequest req;
    req.name = "w";
    req.tensor = Tensor::Of(w_.data(), w_.size());
    return {req};
  }
  void SetRestoredStep(int64_t step) override {
    step_ = step;
    dirty_ = false;
  }
  void ResetToInitialState() override {
    w_.assign(kParams, 0.0);
    for (int i = 0; i < kParams; ++i) w_[i] = i - 8;
    step_ = 0;
    dirty_ = false;
  }
  std::string Layout() const override { return "toy"; }
  Replicas ReplicatedState() override {
    // Every rank holds w, and w is the whole state.
    return {.set = 0, .tensors = {Tensor::Of(w_.data(), w_.size())}, .complete = true};
  }
  std::vector<std::vector<int>> ShrinkGroups() const override {
    // The groups of the launch layout only while the world has that size.
    if (shrink_.empty() || world_ == nullptr) return {};
    size_t total = 0;
    for (const auto& g : shrink_) total += g.size();
    if (static_cast<int>(total) != world_->size()) return {};
    return shrink_;
  }

  const std::vector<double>& weights() const { return w_; }
  int binds = 0;

 private:
  static double Contribution(int64_t step, int v, int i) {
    return static_cast<double>((step * 7 + v * 3 + i * 5) % 11) - 5.0;
  }
  const int virtual_ranks_;
  std::vector<std::vector<int>> shrink_;
  Communicator* world_ = nullptr;
  std::vector<double> w_;
  int64_t step_ = 0;
  bool dirty_ = false;
};

// The weights after `steps` steps of an unbroken run.
inline std::vector<double> ReferenceWeights(int virtual_ranks, int steps) {
  ToyTrainer t(virtual_ranks);
  std::unique_ptr<Communicator> one = std::move(NewInprocCommunicators({.size = 1})[0]);
  (void)t.Bind(*one, {});
  for (int i = 0; i < steps; ++i) (void)t.Step();
  return t.weights();
}

// Each epoch's world over the in-process transport: the first rank to ask makes all of its
// communicators, every rank takes its own.
class InprocWorlds {
 public:
  CommunicatorFactory Factory() {
    return [this](const WorldSpec& spec) -> absl::StatusOr<std::unique_ptr<Communicator>> {
      absl::MutexLock lock(&mu_);
      auto& comms = worlds_[spec.epoch];
      if (comms.empty()) {
        comms = NewInprocCommunicators(
            {.size = spec.world_size, .store = spec.store, .timeout = spec.op_timeout});
      }
      if (spec.rank < 0 || spec.rank >= static_cast<int>(comms.size()) || !comms[spec.rank]) {
        return absl::FailedPreconditionError(
            absl::StrCat("no communicator for rank ", spec.rank, " of epoch ", spec.epoch));
      }
      return std::move(comms[spec.rank]);
    };
  }

 private:
  absl::Mutex mu_;
  std::map<int64_t, std::vector<std::unique_ptr<Communicator>>> worlds_ ABSL_GUARDED_BY(mu_);
};

struct MemberResult {
  absl::Status status;         // of Init or RunResilient
  std::vector<double> weights;  // at the end
  int64_t step = -1;
  std::vector<RecoveryReport> recoveries;
  std::vector<int64_t> resumed;
  std::vector<SdcEvent> sdc;  // every replica check
  // Every completed step in the order run (a redone step appears again) and w after it.
  std::vector<std::pair<int64_t, std::vector<double>>> steps_run;
};

class InprocJob : public health::Agent {
 public:
  struct Options {
    int world_size = 4;
    int spares = 0;
    int steps = 12;
    std::string ckpt_dir;  // empty: no checkpoints
    int ckpt_every = 2;
    std::vector<std::vector<int>> shrink_groups;
    absl::Duration heartbeat_timeout = absl::Milliseconds(300);
    int sdc_every = 0;  // LoopOptions::sdc_every
    absl::Duration step_time = absl::ZeroDuration();  // ToyTrainer::step_time
    double sdc_budget = 0.005;                         // LoopOptions::sdc_budget
  };

  explicit InprocJob(Options options) : options_(std::move(options)) {}
  ~InprocJob() override { Join(); }

  // `member` dies by SIGKILL as it starts step `step` (or, step -1, right after its next
  // recovery built its world).
  void KillAt(const std::string& member, int64_t step) { fates_[member] = {step, false}; }
  // `member` is SIGSTOPped as it starts step `step`: its heartbeat stops, it blocks.
  void StopAt(const std::string& member, int64_t step) { fates_[member] = {step, true}; }
  // `member` dies by SIGKILL right after the job's last save was staged (its commit runs).
  void KillInLastSave(const std::string& member) { fates_[member] = {kInLastSave, false}; }
  // Bit `bit` of w[index] of `member` flips right after its step `step` (once).
  void FlipAt(const std::string& member, int64_t step, int index, int bit) {
    flips_[member] = {step, index, bit};
  }

  // Runs the job to the end (or `limit`); returns the coordinator's verdict.
  health::Coordinator::JobState Run(absl::Duration limit = absl::Seconds(60)) {
    coordinator_ = std::make_unique<health::Coordinator>(
        health::Coordinator::Options{.world_size = options_.world_size,
                                     .spares = options_.spares,
                                     .heartbeat_timeout = options_.heartbeat_timeout,
                                     .spare_start_wait = absl::Seconds(5)},
        this, absl::Now());
    for (int i = 0; i < options_.world_size; ++i) Start(absl::StrCat("w", i), "worker", i);
    for (int i = 0; i < options_.spares; ++i) Start(absl::StrCat("s", i), "spare", -1);
    const absl::Time end = absl::Now() + limit;
    while (absl::Now() < end) {
      absl::SleepFor(absl::Milliseconds(10));
      absl::MutexLock lock(&mu_);
      coordinator_->Poll(absl::Now());
      bool any = false;
      for (auto& [name, m] : members_) any = any || m->running;
      if (!any) {
        coordinator_->AllGone(absl::Now());
        break;
      }
    }
    Join();
    return coordinator_->state();
  }

  const MemberResult& result(const std::string& member) { return members_.at(member)->result; }
  const health::Coordinator& coordinator() const { return *coordinator_; }
  // Results of the members that held a rank at the end, by rank.
  std::vector<const MemberResult*> Finishers() {
    std::vector<const MemberResult*> out;
    for (auto& [name, m] : members_) {
      if (m->result.status.ok() && m->result.step >= 0) out.push_back(&m->result);
    }
    return out;
  }

  // health::Agent
  Store* store() override { return store_.get(); }
  ProcessState Probe(const std::string& member) override {
    auto it = members_.find(member);
    if (it == members_.end() || !it->second->running) return ProcessState::kGone;
    return it->second->stopped ? ProcessState::kStopped : ProcessState::kRunning;
  }
  void Kill(const std::string& member) override {
    auto it = members_.find(member);
    if (it != members_.end() && !it->second->killed.HasBeenNotified()) {
      it->second->killed.Notify();
    }
  }
  void Say(const std::string& line) override { said.push_back(line); }
  std::vector<std::string> said;  // the coordinator's lines

 private:
  static constexpr int64_t kInLastSave = -2;
  struct Fate {
    int64_t step = 0;  // -1: after the next rebuild; kInLastSave
    bool stop = false;
  };
  struct Flip {
    int64_t step = 0;
    int index = 0;
    int bit = 0;
  };
  struct Member {
    std::atomic<bool> running{true};
    std::atomic<bool> stopped{false};
    absl::Notification killed;
    std::unique_ptr<Runtime> runtime;
    MemberResult result;
    std::thread thread;
  };

  void Exited(const std::string& name, const health::MemberExit& exit) {
    absl::MutexLock lock(&mu_);
    members_.at(name)->running = false;
    coordinator_->MemberExited(name, exit, absl::Now());
  }

  // The member's death: a kill is reported at once; a stop waits for the coordinator's kill.
  absl::Status Die(const std::string& name, Member& m, bool stop) {
    // A dead process's ops go nowhere (a killed one runs no destructor that could wait).
    m.runtime->AbortWorld(absl::AbortedError(absl::StrCat(name, " is dead")));
    m.runtime->Finish();  // no more heartbeats
    // ... and no "finished" either: a dead process says nothing.
    (void)store_->Delete(health::HeartbeatKey(name), absl::Now() + absl::Seconds(1));
    if (stop) {
      m.stopped = true;
      m.killed.WaitForNotification();
    }
    Exited(name, {.signal = SIGKILL, .description = "killed by signal 9 (SIGKILL)"});
    return absl::InternalError(absl::StrCat(name, " is dead"));
  }

  void Start(const std::string& name, const std::string& role, int rank) {
    auto m = std::make_unique<Member>();
    Member* mp = m.get();
    {
      absl::MutexLock lock(&mu_);
      members_[name] = std::move(m);
    }
    mp->thread = std::thread([this, name, role, rank, mp] {
      RuntimeOptions ro;
      ro.store = store_;
      ro.rank = rank;
      ro.world_size = options_.world_size;
      ro.member = name;
      ro.role = role;
      ro.factory = worlds_.Factory();
      ro.timeout = absl::Seconds(20);
      ro.heartbeat = absl::Milliseconds(20);
      ro.poll = absl::Milliseconds(5);
      ro.build_timeout = absl::Seconds(3);
      ro.shrink_groups = options_.shrink_groups;
      auto rt = Runtime::Init(ro);
      if (!rt.ok()) {
        mp->result.status = rt.status();
        Exited(name, {.exit_status = absl::IsCancelled(rt.status()) ? 0 : 1});
        return;
      }
      mp->runtime = *std::move(rt);
      ToyTrainer trainer(options_.world_size, options_.shrink_groups);
      trainer.step_time = options_.step_time;
      auto fate = fates_.find(name);
      LoopOptions loop;
      loop.steps = options_.steps;
      loop.ckpt_dir = options_.ckpt_dir;
      loop.ckpt_every = options_.ckpt_dir.empty() ? 0 : options_.ckpt_every;
      loop.keep = 0;
      loop.recover_timeout = absl::Seconds(20);
      bool dead = false;
      trainer.dead = &dead;
      if (fate != fates_.end()) {
        const Fate f = fate->second;
        trainer.fate = [this, name, mp, f, &dead](int64_t step) -> absl::Status {
          if (step != f.step || dead) return absl::OkStatus();
          dead = true;
          return Die(name, *mp, f.stop);
        };
        loop.on_save = [this, name, mp, f, &dead, steps = options_.steps](const SaveEvent& e) {
          if (f.step == kInLastSave && !dead && !e.committed && e.step == steps) {
            dead = true;
            (void)Die(name, *mp, f.stop);
          }
        };
        loop.after_rebuild = [this, name, mp, f, &dead] {
          if (f.step == -1 && !dead) {
            dead = true;
            (void)Die(name, *mp, f.stop);
          }
        };
      }
      loop.sdc_every = options_.sdc_every;
      loop.sdc_budget = options_.sdc_budget;
      loop.on_sdc = [mp](const SdcEvent& e) { mp->result.sdc.push_back(e); };
      if (auto flip = flips_.find(name); flip != flips_.end()) {
        trainer.after_step = [f = flip->second, done = false](int64_t step,
                                                             std::vector<double>& w) mutable {
          if (step != f.step || done) return;
          done = true;  // a replay passes this step again: the fault was once
          uint64_t bits;
          memcpy(&bits, &w[f.index], sizeof(bits));
          bits ^= uint64_t{1} << f.bit;
          memcpy(&w[f.index], &bits, sizeof(bits));
        };
      }
      loop.on_recovery = [mp](const RecoveryReport& r) { mp->result.recoveries.push_back(r); };
      loop.on_step = [mp, &trainer](int64_t step, int64_t) {
        mp->result.steps_run.emplace_back(step, trainer.weights());
      };
      loop.on_resume = [mp](int64_t step, const std::vector<std::string>&) {
        mp->result.resumed.push_back(step);
      };
      absl::Status s = RunResilient(*mp->runtime, trainer, loop);
      if (dead) return;  // reported already; what the dead thread did after does not count
      mp->result.status = s;
      mp->result.weights = trainer.weights();
      mp->result.step = s.ok() ? trainer.step() : -1;
      mp->runtime.reset();
      Exited(name, {.exit_status = s.ok() || absl::IsCancelled(s) ? 0 : 1});
    });
  }

  void Join() {
    for (auto& [name, m] : members_) {
      if (!m->killed.HasBeenNotified()) m->killed.Notify();  // a stopped thread may go
      if (m->thread.joinable()) m->thread.join();
    }
  }

  Options options_;
  std::shared_ptr<Store> store_ = NewMemoryStore();
  InprocWorlds worlds_;
  std::map<std::string, Fate> fates_;
  std::map<std::string, Flip> flips_;
  absl::Mutex mu_;
  std::map<std::string, std::unique_ptr<Member>> members_;
  std::unique_ptr<health::Coordinator> coordinator_;
};

}  // namespace trident::testing

#endif  // TRIDENT_TESTS_RUNTIME_INPROC_JOB_H_
