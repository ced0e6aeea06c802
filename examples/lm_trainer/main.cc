// lm-trainer: trains a small character-level language model with tensor, pipeline and data
// parallelism over Trident's communicators. See --help, and docs/parallelism.md.
//
//   trident-run --nproc 8 -- lm-trainer --tp 2 --pp 2 --dp 2 --steps 200
#include <cblas.h>
#include <signal.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "comm/host/inproc.h"
#include "common/check.h"
#include "common/cli.h"
#include "common/logging.h"
#include "recovery.h"
#include "trainer.h"
#include "trident/communicator.h"
#include "trident/parallel/mesh.h"
#include "trident/runtime.h"

ABSL_FLAG(int, tp, 1, "tensor-parallel ranks (splits each MLP block's weights)");
ABSL_FLAG(int, pp, 1, "pipeline stages (splits the blocks)");
ABSL_FLAG(int, dp, 1, "data-parallel replicas (splits the batch)");
ABSL_FLAG(std::string, schedule, "1f1b", "pipeline schedule: gpipe 1f1b interleaved zb-h1");
ABSL_FLAG(int, microbatches, 4, "micro-batches per step on each data-parallel replica");
ABSL_FLAG(int, virtual_stages, 2, "model chunks per stage with --schedule interleaved");
ABSL_FLAG(int, steps, 200, "training steps");
ABSL_FLAG(int, batch, 256, "global batch: predicted characters per step, over all replicas");
ABSL_FLAG(double, lr, 3e-3, "Adam learning rate");
ABSL_FLAG(int, seed, 1, "seed of the weights and of the batches");
ABSL_FLAG(bool, zero1, false, "shard the optimizer state over dp (ZeRO stage 1)");
ABSL_FLAG(int, context, 16, "characters the model sees before the one it predicts");
ABSL_FLAG(int, embed, 16, "embedding width per character (hidden = context x embed)");
ABSL_FLAG(int, ffn, 512, "inner width of an MLP block");
ABSL_FLAG(int, layers, 4, "MLP blocks");
ABSL_FLAG(int, eval_every, 10, "validation loss every N steps (and at the first and last)");
ABSL_FLAG(int, val_samples, 2048, "validation characters per evaluation");
ABSL_FLAG(int, bucket_kb, 1024, "gradient bucket size for the dp all-reduce, KiB");
ABSL_FLAG(std::string, data, "", "a text file to train on instead of the built-in corpus");
ABSL_FLAG(int, threads, 0, "OpenBLAS threads per rank; 0: the cores divided by the ranks");
ABSL_FLAG(absl::Duration, timeout, absl::ZeroDuration(),
          "deadline of each communication op, e.g. 30s; 0: TRIDENT_TIMEOUT_MS");
ABSL_FLAG(std::string, ckpt_dir, "", "checkpoint directory (shared by all ranks); empty: none");
ABSL_FLAG(int, ckpt_every, 0, "save a checkpoint every N steps (needs --ckpt-dir); 0: never");
ABSL_FLAG(int, keep, 3, "committed checkpoints to keep (0: all)");
ABSL_FLAG(bool, resume, false,
          "start from the latest checkpoint in --ckpt-dir (any tp/pp/dp layout), if there is one");
ABSL_FLAG(bool, peer_replicas, true,
          "keep each rank's last checkpoint in a buddy rank's memory, for a fast restore");
ABSL_FLAG(std::string, inject_fault, "",
          "for tests: MEMBER:WHEN:SIGNAL[,...]; the process of MEMBER (w3, s0, ...) raises "
          "SIGNAL (KILL, STOP, SEGV, TERM, ABRT; or HANG: its training thread blocks forever, "
          "a deadlock) at the start of step WHEN, or with WHEN=recovery as soon as the next "
          "recovery has built its world");
ABSL_FLAG(bool, elastic_dp, false,
          "when a rank dies and no spare is left, go on without its data-parallel replica "
          "(same global batch, split over fewer replicas) instead of stopping; the replica's "
          "other ranks wait as spares. Needs --batch a multiple of d x microbatches for every "
          "d <= dp");
ABSL_FLAG(absl::Duration, recover_timeout, absl::Seconds(60),
          "after a failure, how long to wait for trident-run to give the dead rank's place to "
          "a spare before giving up");

namespace {

constexpr char kUsage[] = R"(usage: lm-trainer [flags]
       trident-run --nproc N -- lm-trainer --tp T --pp P --dp D [flags]   (N = T x P x D)

Trains a character-level language model (embedding, residual MLP blocks, softmax
cross-entropy; Adam; f32 on the CPU through OpenBLAS) on a built-in corpus (Genesis and
Exodus, King James Bible, ~367 KB; the last 10% is the validation text). Every layout and
schedule computes the same losses as one process, up to float rounding.

Rank 0 prints logfmt lines on stdout:
  start   the configuration, world size, vocabulary and parameter count
  step=S loss=L [val_loss=V] tokens_per_s=T step_ms=M comm_share=C
          loss: mean cross-entropy (nats) of the step's batch; val_loss: on the evaluation
          steps; comm_share: share of rank 0's step time not spent computing (waiting on
          tp/pp/dp communication)
  checkpoint step=S stall_ms=X bytes=B       a save was snapshotted (the loop's stall)
  checkpoint_committed step=S persist_ms=Y   ... and became durable (or checkpoint_failed)
  resumed step=S from=DIR
  recovery epoch=E dead_rank=R cause=C detect_ms=D recover_ms=M steps_redone=K source=peer|checkpoint|init world=W dp=P ...
          after a rank died or hung under `trident-run --spares`: a spare took its place
          (or, with --elastic-dp and no spare left, its dp replica left the world: dp=P
          after), every rank went back to the last committed checkpoint step (the spare's
          state from its buddy's memory when it has that step, else from the checkpoint)
  done steps=N final_loss=L final_val_loss=V mean_tokens_per_s=T
Exit status: 0 when all steps ran (or, for a spare, when it was not needed); 1 on an error
(printed with the rank); 2 on bad usage. Without trident-run (no TRIDENT_WORLD_SIZE) it runs
as one process (tp = pp = dp = 1).

Flags (--flag=value or --flag value; dashes and underscores are the same):
)";

void PrintHelp() {
  std::fputs(kUsage, stdout);
  using trident::cli::PrintFlag;
  PrintFlag(FLAGS_tp, 14);
  PrintFlag(FLAGS_pp, 14);
  PrintFlag(FLAGS_dp, 14);
  PrintFlag(FLAGS_schedule, 14);
  PrintFlag(FLAGS_microbatches, 14);
  PrintFlag(FLAGS_virtual_stages, 14);
  PrintFlag(FLAGS_steps, 14);
  PrintFlag(FLAGS_batch, 14);
  PrintFlag(FLAGS_lr, 14);
  PrintFlag(FLAGS_seed, 14);
  PrintFlag(FLAGS_zero1, 14);
  PrintFlag(FLAGS_context, 14);
  PrintFlag(FLAGS_embed, 14);
  PrintFlag(FLAGS_ffn, 14);
  PrintFlag(FLAGS_layers, 14);
  PrintFlag(FLAGS_eval_every, 14);
  PrintFlag(FLAGS_val_samples, 14);
  PrintFlag(FLAGS_bucket_kb, 14);
  PrintFlag(FLAGS_data, 14);
  PrintFlag(FLAGS_threads, 14);
  PrintFlag(FLAGS_timeout, 14);
  PrintFlag(FLAGS_ckpt_dir, 14);
  PrintFlag(FLAGS_ckpt_every, 14);
  PrintFlag(FLAGS_keep, 14);
  PrintFlag(FLAGS_resume, 14);
  PrintFlag(FLAGS_peer_replicas, 14);
  PrintFlag(FLAGS_elastic_dp, 14);
  PrintFlag(FLAGS_recover_timeout, 14);
  PrintFlag(FLAGS_inject_fault, 14);
}

// --inject-fault: raise a signal in one member at a chosen point.
struct Fault {
  std::string member;
  int64_t step = -1;  // -1: during the next recovery
  int signal = 0;     // 0: HANG
  bool hang = false;
};

absl::StatusOr<std::vector<Fault>> ParseFaults(const std::string& spec) {
  std::vector<Fault> out;
  for (absl::string_view item : absl::StrSplit(spec, ',', absl::SkipEmpty())) {
    std::vector<std::string> parts = absl::StrSplit(item, ':');
    Fault f;
    const std::string bad = absl::StrCat("--inject-fault: '", item,
                                         "' is not MEMBER:STEP:SIGNAL or MEMBER:recovery:SIGNAL");
    if (parts.size() != 3) return absl::InvalidArgumentError(bad);
    f.member = parts[0];
    if (parts[1] != "recovery" && (!absl::SimpleAtoi(parts[1], &f.step) || f.step < 1)) {
      return absl::InvalidArgumentError(bad);
    }
    for (auto [name, sig] : {std::pair{"KILL", SIGKILL}, std::pair{"STOP", SIGSTOP},
                             std::pair{"SEGV", SIGSEGV}, std::pair{"TERM", SIGTERM},
                             std::pair{"ABRT", SIGABRT}}) {
      if (parts[2] == name) f.signal = sig;
    }
    f.hang = parts[2] == "HANG";
    if (f.signal == 0 && !f.hang) return absl::InvalidArgumentError(bad);
    out.push_back(f);
  }
  return out;
}

// Errors that a new epoch can cure: a peer died or hung (communicator.h's codes).
bool IsCommunicationFailure(const absl::Status& s) {
  return absl::IsAborted(s) || absl::IsDeadlineExceeded(s) || absl::IsUnavailable(s) ||
         absl::IsCancelled(s) || absl::IsFailedPrecondition(s);
}

// "SIGKILL", "SIGSTOP", "hang", "exit_3": the recovery line's cause from the agent's words.
std::string ShortCause(const std::string& cause) {
  if (absl::StrContains(cause, "stopped")) return "SIGSTOP";
  if (absl::StrContains(cause, "declared dead")) return "hang";
  if (const size_t open = cause.find("(SIG"); open != std::string::npos) {
    return cause.substr(open + 1, cause.find(')', open) - open - 1);
  }
  if (const size_t at = cause.find("exited with status "); at != std::string::npos) {
    return absl::StrCat("exit_", cause.substr(at + 19));
  }
  return "unknown";
}

// The ranks of each dp replica of the layout (for Runtime::AllowShrink).
std::vector<std::vector<int>> DpReplicas(const lm::TrainerConfig& c) {
  auto mesh = trident::Mesh::Create(c.tp * c.pp * c.dp, {.tp = c.tp, .pp = c.pp, .dp = c.dp});
  TRIDENT_CHECK(mesh.ok()) << mesh.status();  // the sizes were checked to be >= 1
  std::vector<std::vector<int>> replicas(c.dp);
  for (int r = 0; r < mesh->world_size(); ++r) replicas[mesh->CoordOf(r).dp].push_back(r);
  return replicas;
}

[[noreturn]] void UsageError(absl::string_view message) {
  std::fprintf(stderr, "lm-trainer: %s\n(try --help)\n", std::string(message).c_str());
  std::exit(2);
}

int Main(int argc, char** argv) {
  std::vector<std::string> storage;
  std::vector<char*> args = trident::cli::NormalizeArgs(argc, argv, storage);
  if (trident::cli::WantsHelp(args)) {
    PrintHelp();
    return 0;
  }
  std::vector<char*> positional =
      absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  if (positional.size() > 1) UsageError(absl::StrCat("unexpected argument ", positional[1]));

  lm::TrainerConfig config;
  config.tp = absl::GetFlag(FLAGS_tp);
  config.pp = absl::GetFlag(FLAGS_pp);
  config.dp = absl::GetFlag(FLAGS_dp);
  auto schedule = trident::pipeline::ParseSchedule(absl::GetFlag(FLAGS_schedule));
  if (!schedule.ok()) UsageError(schedule.status().message());
  config.schedule = *schedule;
  config.microbatches = absl::GetFlag(FLAGS_microbatches);
  config.virtual_stages = absl::GetFlag(FLAGS_virtual_stages);
  config.batch = absl::GetFlag(FLAGS_batch);
  config.lr = static_cast<float>(absl::GetFlag(FLAGS_lr));
  config.zero1 = absl::GetFlag(FLAGS_zero1);
  config.val_samples = absl::GetFlag(FLAGS_val_samples);
  config.bucket_bytes = static_cast<size_t>(std::max(1, absl::GetFlag(FLAGS_bucket_kb))) << 10;
  config.data_path = absl::GetFlag(FLAGS_data);
  config.timeout = absl::GetFlag(FLAGS_timeout);
  config.model.seed = static_cast<uint64_t>(absl::GetFlag(FLAGS_seed));
  config.model.context = absl::GetFlag(FLAGS_context);
  config.model.embed = absl::GetFlag(FLAGS_embed);
  config.model.ffn = absl::GetFlag(FLAGS_ffn);
  config.model.layers = absl::GetFlag(FLAGS_layers);
  const int steps = absl::GetFlag(FLAGS_steps);
  const int eval_every = absl::GetFlag(FLAGS_eval_every);
  if (steps < 1) UsageError("--steps must be at least 1");
  if (eval_every < 1) UsageError("--eval-every must be at least 1");
  if (config.tp < 1 || config.pp < 1 || config.dp < 1) {
    UsageError("--tp, --pp and --dp must be at least 1");
  }
  const bool elastic = absl::GetFlag(FLAGS_elastic_dp);
  for (int d = config.dp; elastic && d >= 1; --d) {
    if (config.batch % (d * config.microbatches) != 0) {
      UsageError(absl::StrFormat("--elastic-dp: --batch %d is not a multiple of dp x "
                                 "microbatches = %d x %d, so dp could not shrink to %d",
                                 config.batch, d, config.microbatches, d));
    }
  }

  lm::CheckpointSettings ckpt;
  ckpt.dir = absl::GetFlag(FLAGS_ckpt_dir);
  ckpt.every = absl::GetFlag(FLAGS_ckpt_every);
  ckpt.keep = absl::GetFlag(FLAGS_keep);
  ckpt.peer_replicas = absl::GetFlag(FLAGS_peer_replicas);
  const bool resume = absl::GetFlag(FLAGS_resume);
  auto faults = ParseFaults(absl::GetFlag(FLAGS_inject_fault));
  if (!faults.ok()) UsageError(faults.status().message());
  if (ckpt.every < 0 || ckpt.keep < 0) UsageError("--ckpt-every and --keep must be >= 0");
  if ((ckpt.every > 0 || resume) && ckpt.dir.empty()) {
    UsageError("--ckpt-every and --resume need --ckpt-dir");
  }

  // The world: from the runtime under trident-run (a spare blocks here until promoted),
  // else one in-process rank.
  std::unique_ptr<trident::Runtime> rt;
  std::unique_ptr<trident::Communicator> local_world;
  if (std::getenv("TRIDENT_WORLD_SIZE") == nullptr) {
    trident::InprocCommOptions options;
    options.size = 1;
    local_world = std::move(trident::NewInprocCommunicators(options)[0]);
  } else {
    trident::RuntimeOptions options;
    options.timeout = config.timeout;
    if (elastic) options.shrink_groups = DpReplicas(config);
    auto runtime = trident::Runtime::Init(options);
    if (absl::IsCancelled(runtime.status())) {  // a spare that was not needed
      std::fprintf(stderr, "lm-trainer: %s\n", std::string(runtime.status().message()).c_str());
      return 0;
    }
    if (!runtime.ok()) {
      std::fprintf(stderr, "lm-trainer: cannot start the runtime: %s\n",
                   runtime.status().ToString().c_str());
      return 1;
    }
    rt = std::move(runtime).value();
  }
  auto world = [&]() -> trident::Communicator& { return rt ? rt->world() : *local_world; };
  auto rank = [&] { return world().rank(); };
  trident::InitLogging(absl::StrCat("rank ", rank()));
  // A spare promoted after a shrink joins a world with fewer replicas.
  auto follow_world_dp = [&] {
    const int shard_ranks = config.tp * config.pp;
    if (elastic && rt && rt->epoch() > 1 && world().size() < shard_ranks * config.dp &&
        world().size() % shard_ranks == 0) {
      config.dp = world().size() / shard_ranks;
    }
  };
  follow_world_dp();
  if (config.tp * config.pp * config.dp != world().size()) {
    UsageError(absl::StrFormat("tp x pp x dp = %d x %d x %d = %d, but the world has %d ranks",
                               config.tp, config.pp, config.dp,
                               config.tp * config.pp * config.dp, world().size()));
  }
  int threads = absl::GetFlag(FLAGS_threads);
  if (threads <= 0) {
    threads =
        std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / world().size());
  }
  openblas_set_num_threads(threads);

  auto maybe_fault = [&](int64_t when) {
    if (!rt) return;
    for (const Fault& f : *faults) {
      if (f.member == rt->member() && f.step == when) {
        spdlog::warn("injecting {} into {} ({})",
                     f.hang ? std::string("a hang") : absl::StrCat("signal ", f.signal), f.member,
                     when < 0 ? std::string("recovery") : absl::StrCat("step ", when));
        // For benchmarks: when the fault happened, on the agent's (same host) clock.
        std::printf("fault_injected member=%s signal=%d unix_ms=%lld\n", f.member.c_str(),
                    f.signal, static_cast<long long>(absl::ToUnixMillis(absl::Now())));
        std::fflush(stdout);
        if (f.hang) absl::Notification().WaitForNotification();  // never notified
        raise(f.signal);
      }
    }
  };
  auto fail = [&](const absl::Status& status) {
    std::fprintf(stderr, "lm-trainer: rank %d: %s\n", rank(), status.ToString().c_str());
    return 1;
  };
  auto say = [&](const std::string& line) {  // rank 0's logfmt lines
    if (rank() != 0) return;
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
  };
  // Everything below is collective over the world, and any of it can meet another rank's
  // death; `setup` is the one path for the start and for every recovery.
  std::unique_ptr<lm::Trainer> trainer_ptr;
  lm::EpochCheckpointer ckpt_engine;
  // A promoted spare's state is not the job's until a restore succeeded.
  bool fresh = rt && rt->promoted();
  bool said_start = false;
  int64_t last_verdict_ms = 0;  // of the last recovery, until its first completed step
  // The communicators the runtime aborts when a rank fails: the trainer's and the engine's.
  auto register_groups = [&]() -> absl::Status {
    if (!rt) return absl::OkStatus();
    std::vector<trident::Communicator*> groups = trainer_ptr->groups();
    if (ckpt_engine.comm) groups.push_back(ckpt_engine.comm.get());
    rt->SetGroups(groups);
    if (!elastic) return absl::OkStatus();
    // --elastic-dp: the dp replicas may leave the world (one that holds a dead rank).
    return rt->AllowShrink(DpReplicas(trainer_ptr->config()));
  };
  // `rec`: the recovery that led here (null at a plain start).
  auto setup = [&](const trident::Recovery* rec,
                   std::shared_ptr<const trident::PeerReplica> held) -> absl::Status {
    if (trainer_ptr == nullptr) {
      follow_world_dp();
      auto created = lm::Trainer::Create(world(), config);
      if (!created.ok()) {
        if (absl::IsInvalidArgument(created.status())) UsageError(created.status().message());
        return created.status();
      }
      trainer_ptr = std::move(created).value();
    } else if (absl::Status s = trainer_ptr->Rebuild(world()); !s.ok()) {
      return s;
    }
    lm::Trainer& trainer = *trainer_ptr;
    if (!said_start) {
      say(absl::StrFormat("start %s world=%d vocab=%d threads=%d",
                          lm::DescribeConfig(trainer.config()), world().size(),
                          trainer.vocab_size(), threads));
      said_start = true;
    }
    if (!ckpt.dir.empty()) {
      auto made = lm::MakeCheckpointer(world(), ckpt, trainer.config(), rt ? rt->epoch() : 1);
      if (!made.ok()) return made.status();
      ckpt_engine = std::move(made).value();
    }
    if (absl::Status s = register_groups(); !s.ok()) return s;
    if (rec == nullptr) {
      if (!resume) return absl::OkStatus();
      auto step = lm::ResumeFromCheckpoint(ckpt.dir, trainer);
      if (!step.ok()) return step.status();
      if (*step > 0) say(absl::StrFormat("resumed step=%d from=%s", *step, ckpt.dir));
      return absl::OkStatus();
    }
    // Every rank back to the last committed step; one line per dead rank.
    auto report = lm::RestoreAfterFailure(world(), trainer, ckpt.dir, fresh, std::move(held));
    if (!report.ok()) return report.status();
    fresh = false;
    // The peer transfer happened on the fresh rank; everyone learns its size and time.
    double transfer[2] = {static_cast<double>(report->bytes_from_peer), report->peer_transfer_ms};
    trident::Tensor t = trident::Tensor::Of(transfer, 2);
    if (absl::Status s = world().AllReduce(t, t, trident::ReduceOp::kMax)->Wait(); !s.ok()) {
      return s;
    }
    const int64_t now_ms = absl::ToUnixMillis(absl::Now());
    for (const trident::FailedRank& f : rec->failed) {
      say(absl::StrFormat("recovery epoch=%d dead_rank=%d cause=%s detect_ms=%d recover_ms=%d "
                          "steps_redone=%d source=%s world=%d dp=%d resume_step=%d "
                          "verdict_unix_ms=%d peer_bytes=%.0f peer_ms=%.2f",
                          rec->epoch, f.rank, ShortCause(f.cause),
                          f.verdict_unix_ms - f.last_seen_unix_ms, now_ms - f.verdict_unix_ms,
                          report->steps_redone, report->source, world().size(),
                          trainer.config().dp, report->step + 1, f.verdict_unix_ms,
                          transfer[0], transfer[1]));
      last_verdict_ms = std::max(last_verdict_ms, f.verdict_unix_ms);
    }
    return absl::OkStatus();
  };
  // After a failure: the next epoch, then setup again. Retries when another rank dies during
  // the recovery itself; gives up on errors that no new epoch can cure.
  auto recover = [&](absl::Status cause) -> absl::Status {
    for (int attempt = 0; attempt < 8; ++attempt) {
      if (!rt || !IsCommunicationFailure(cause)) return cause;
      std::shared_ptr<const trident::PeerReplica> held =
          ckpt_engine.engine ? ckpt_engine.engine->HeldReplica() : nullptr;
      const int old_size = world().size();
      auto rec = rt->Recover(cause, absl::Now() + absl::GetFlag(FLAGS_recover_timeout));
      if (!rec.ok()) return rec.status();
      maybe_fault(-1);
      rt->SetGroups({});
      ckpt_engine = {};  // the old epoch's engine: its communicator is aborted
      if (rec->rejoined) {
        // Back from the spare pool after a shrink, maybe at another place: a new trainer
        // whose state comes from a peer or the checkpoint.
        trainer_ptr.reset();
        fresh = true;
        held = nullptr;
      } else if (rec->world_size != old_size) {
        held = nullptr;  // a replica of the old layout's ranks
      }
      const absl::Time t0 = absl::Now();
      absl::Status s = setup(&*rec, std::move(held));
      spdlog::info("recovery into epoch {}: waited {} for the epoch, built the world in {}, "
                   "rebuilt and restored in {}: {}",
                   rec->epoch, absl::FormatDuration(rec->wait),
                   absl::FormatDuration(rec->rebuild), absl::FormatDuration(absl::Now() - t0),
                   s.ToString());
      if (s.ok()) return s;
      cause = s;
    }
    return absl::AbortedError(absl::StrCat("gave up after 8 recoveries in a row: ", cause.ToString()));
  };

  // A process that starts in a later epoch (a promoted spare, or a worker whose setup met a
  // failure) joins the survivors' restore.
  absl::Status started =
      rt && rt->epoch() > 1 ? setup(&rt->promotion(), nullptr) : setup(nullptr, nullptr);
  // Left the world in a shrink and not needed again: done, like an unused spare.
  auto retired = [&](const absl::Status& s) {
    std::fprintf(stderr, "lm-trainer: %s\n", std::string(s.message()).c_str());
    return 0;
  };
  if (!started.ok()) {
    if (absl::Status s = recover(started); !s.ok()) {
      return absl::IsCancelled(s) ? retired(s) : fail(s);
    }
  }

  double loss = NAN, val_loss = NAN, tokens = 0, seconds = 0;
  int64_t reported_save = 0;
  auto report_saves = [&](bool wait) {
    if (!ckpt_engine.engine) return;
    std::shared_ptr<trident::CheckpointSave> last = ckpt_engine.engine->LastSave();
    if (!last || last->step() <= reported_save) return;
    if (wait) last->Wait(absl::Now() + absl::Seconds(120)).IgnoreError();  // status read below
    if (!last->IsCompleted()) return;
    reported_save = last->step();
    trident::SaveStats st = last->stats();
    if (last->status().ok()) {
      say(absl::StrFormat("checkpoint_committed step=%d persist_ms=%.1f", st.step,
                          st.persist_seconds * 1e3));
    } else {
      say(absl::StrFormat("checkpoint_failed step=%d error=\"%s\"", st.step,
                          last->status().ToString()));
    }
  };
  // One step, its evaluation and its checkpoint; any error is a failure to recover from.
  auto run_step = [&]() -> absl::Status {
    lm::Trainer& trainer = *trainer_ptr;  // a rejoined rank gets a new one
    if (rt) rt->Progress();  // a training thread stuck longer than TRIDENT_HANG_TIMEOUT_MS is hung
    maybe_fault(trainer.step() + 1);
    auto st = trainer.Step();
    if (!st.ok()) return st.status();
    const int64_t i = st->step;
    loss = st->loss;
    tokens += config.batch;
    seconds += st->step_ms / 1e3;
    std::string val;
    if (i == 1 || i % eval_every == 0 || i == steps) {
      auto v = trainer.Evaluate();
      if (!v.ok()) return v.status();
      val_loss = *v;
      val = absl::StrFormat(" val_loss=%.6f", val_loss);
    }
    say(absl::StrFormat("step=%d loss=%.6f%s tokens_per_s=%.0f step_ms=%.2f comm_share=%.3f", i,
                        st->loss, val, st->tokens_per_s, st->step_ms,
                        st->step_ms > 0 ? std::max(0.0, 1.0 - st->compute_ms / st->step_ms) : 0.0));
    if (last_verdict_ms > 0) {
      say(absl::StrFormat("first_step_after_recovery step=%d since_verdict_ms=%d", i,
                          absl::ToUnixMillis(absl::Now()) - last_verdict_ms));
      last_verdict_ms = 0;
    }
    report_saves(false);
    if (ckpt_engine.engine && ckpt.every > 0 && i % ckpt.every == 0) {
      const absl::Time t0 = absl::Now();
      auto save = ckpt_engine.engine->Save(i, trainer.CheckpointState());
      if (!save.ok()) {
        // The engine's communicator was aborted (a failure): recover; else log and go on.
        if (absl::IsFailedPrecondition(save.status()) || absl::IsAborted(save.status())) {
          return save.status();
        }
        say(absl::StrFormat("checkpoint_failed step=%d error=\"%s\"", i, save.status().ToString()));
      } else {
        say(absl::StrFormat("checkpoint step=%d stall_ms=%.2f bytes=%d", i,
                            absl::ToDoubleMilliseconds(absl::Now() - t0),
                            (*save)->stats().staged_bytes));
      }
    }
    return absl::OkStatus();
  };
  while (trainer_ptr->step() < steps) {
    absl::Status s = run_step();
    if (s.ok()) continue;
    if (!rt || !IsCommunicationFailure(s)) return fail(s);
    if (absl::Status r = recover(s); !r.ok()) return absl::IsCancelled(r) ? retired(r) : fail(r);
  }
  report_saves(true);
  say(absl::StrFormat("done steps=%d final_loss=%.6f final_val_loss=%.6f mean_tokens_per_s=%.0f",
                      steps, loss, val_loss, seconds > 0 ? tokens / seconds : 0.0));
  if (rt) rt->Finish();
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return Main(argc, argv); }
