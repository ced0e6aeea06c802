// lm-trainer: trains a small character-level language model with tensor, pipeline and data
// parallelism over Trident's communicators, through failures: the runtime's resilient loop
// (trident/resilient.h) does checkpoints, recovery and restore; this file is flags and output.
// See --help, docs/parallelism.md and docs/fault-tolerance.md.
//
//   trident-run --nproc 8 --spares 1 -- lm-trainer --tp 2 --pp 2 --dp 2 --steps 200
#include <cblas.h>
#include <signal.h>

#include <cstdio>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "options.h"
#include "trainable.h"
#include "trident/resilient.h"
#include "trident/runtime.h"

namespace {

// --inject-fault: raises the member's signal (or hangs) when `when` comes (-1: a recovery).
void MaybeFault(const std::vector<lm::Fault>& faults, const std::string& member, int64_t when) {
  for (const lm::Fault& f : faults) {
    if (f.member != member || f.step != when || f.bitflip || f.skip_collective || f.wrong_op ||
        f.sleep_seconds > 0) {
      continue;
    }
    std::fprintf(stderr, "lm-trainer: injecting %s into %s (%s)\n",
                 f.hang ? "a hang" : absl::StrCat("signal ", f.signal).c_str(), f.member.c_str(),
                 when < 0 ? "recovery" : absl::StrCat("step ", when).c_str());
    // For benchmarks: when the fault happened, on the launcher's (same host) clock.
    std::printf("fault_injected member=%s signal=%d unix_ms=%lld\n", f.member.c_str(), f.signal,
                static_cast<long long>(absl::ToUnixMillis(absl::Now())));
    std::fflush(stdout);
    if (f.hang) absl::Notification().WaitForNotification();  // never notified: a deadlock
    raise(f.signal);
  }
}

// --inject-fault ...:SLEEP=SECONDS at the start of step `when` (a hang of the flight
// recorder's tests; SKIP_COLLECTIVE and WRONG_OP are the trainer's: SkipCollectiveAt, WrongOpAt).
void MaybeHang(const std::vector<lm::Fault>& faults, trident::Runtime& rt, int64_t when) {
  for (const lm::Fault& f : faults) {
    if (f.member != rt.member() || f.step != when) continue;
    if (f.sleep_seconds > 0) {
      std::fprintf(stderr, "lm-trainer: injecting a sleep of %g s outside any op into %s (step %lld)\n",
                   f.sleep_seconds, f.member.c_str(), static_cast<long long>(when));
      absl::SleepFor(absl::Seconds(f.sleep_seconds));
    }
  }
}

int Main(int argc, char** argv) {
  lm::Options o = lm::ParseOptions(argc, argv);

  // The world: from trident-run (a spare blocks here until promoted), else one process.
  trident::RuntimeOptions rt_options;
  rt_options.timeout = o.config.timeout;
  if (o.elastic_dp) rt_options.shrink_groups = lm::DpReplicas(o.config);
  auto runtime = trident::Runtime::Init(rt_options);
  if (absl::IsCancelled(runtime.status())) {  // a spare that was not needed
    std::fprintf(stderr, "lm-trainer: %s\n", std::string(runtime.status().message()).c_str());
    return 0;
  }
  if (!runtime.ok()) {
    std::fprintf(stderr, "lm-trainer: cannot start the runtime: %s\n",
                 runtime.status().ToString().c_str());
    return 1;
  }
  trident::Runtime& rt = **runtime;
  const int world = rt.world_size();
  const int shard_ranks = o.config.tp * o.config.pp;
  // A spare promoted after an elastic shrink joins a world with fewer dp replicas.
  const bool shrunk = o.elastic_dp && world < shard_ranks * o.config.dp && world % shard_ranks == 0;
  if (!shrunk && shard_ranks * o.config.dp != world) {
    lm::UsageError(absl::StrFormat("tp x pp x dp = %d x %d x %d = %d, but the world has %d ranks",
                                   o.config.tp, o.config.pp, o.config.dp,
                                   shard_ranks * o.config.dp, world));
  }
  const int threads = o.threads > 0 ? o.threads
                                    : std::max(1, static_cast<int>(
                                                      std::thread::hardware_concurrency()) /
                                                      world);
  openblas_set_num_threads(threads);

  lm::LmTrainable trainer(o.config, o.steps, o.eval_every, o.elastic_dp, threads);
  trident::LoopOptions loop;
  loop.steps = o.steps;
  loop.ckpt_dir = o.ckpt_dir;
  loop.ckpt_every = o.ckpt_every;
  loop.keep = o.keep;
  loop.peer_replicas = o.peer_replicas;
  loop.resume = o.resume;
  loop.commit_timeout = o.config.timeout;
  loop.recover_timeout = o.recover_timeout;
  loop.sdc_every = o.sdc_every;
  int sdc_checks = 0;
  double sdc_ms = 0;
  int sdc_interval = 0;  // the last check's interval (auto: the one chosen)
  loop.on_sdc = [&](const trident::SdcEvent& e) {
    ++sdc_checks;
    sdc_ms += e.check_ms;
    if (e.every > 0) sdc_interval = e.every;
  };
  for (const lm::Fault& f : o.faults) {
    if (f.bitflip && f.member == rt.member()) trainer.FlipBitAfter(f.step, f.tensor);
  }
  for (const lm::Fault& f : o.faults) {
    if (f.skip_collective && f.member == rt.member()) trainer.SkipCollectiveAt(f.step);
    if (f.wrong_op && f.member == rt.member()) trainer.WrongOpAt(f.step);
  }
  loop.before_step = [&](int64_t next) {
    MaybeFault(o.faults, rt.member(), next);
    MaybeHang(o.faults, rt, next);
  };
  loop.after_rebuild = [&] { MaybeFault(o.faults, rt.member(), -1); };
  loop.on_resume = [&](int64_t step, const std::vector<std::string>& skipped) {
    for (const std::string& s : skipped) {
      trainer.Say(absl::StrFormat("checkpoint_skipped %s", s));
    }
    if (step > 0) trainer.Say(absl::StrFormat("resumed step=%d from=%s", step, o.ckpt_dir));
  };
  loop.on_step = [&](int64_t step, int64_t since_verdict_ms) {
    if (since_verdict_ms <= 0) return;
    trainer.Say(absl::StrFormat("first_step_after_recovery step=%d since_verdict_ms=%d", step,
                                since_verdict_ms));
  };
  loop.on_save = [&](const trident::SaveEvent& e) {
    if (!e.status.ok()) {
      trainer.Say(absl::StrFormat("checkpoint_failed step=%d error=\"%s\"", e.step,
                                  e.status.ToString()));
    } else if (e.committed) {
      trainer.Say(absl::StrFormat("checkpoint_committed step=%d persist_ms=%.1f", e.step,
                                  e.persist_ms));
    } else {
      trainer.Say(absl::StrFormat("checkpoint step=%d stall_ms=%.2f bytes=%d", e.step, e.stall_ms,
                                  e.bytes));
    }
  };
  loop.on_recovery = [&](const trident::RecoveryReport& r) {
    trainer.Say(absl::StrFormat(
        "recovery epoch=%d dead_rank=%d cause=%s detect_ms=%d recover_ms=%d steps_redone=%d "
        "source=%s world=%d dp=%d resume_step=%d verdict_unix_ms=%d peer_bytes=%d "
        "peer_ms=%.2f%s",
        r.epoch, r.failed.rank, r.failed.ShortCause(), r.detect_ms, r.recover_ms, r.steps_redone,
        r.source, r.world_size, trainer.trainer().config().dp, r.resume_step,
        r.failed.verdict_unix_ms, r.peer_bytes, r.peer_ms,
        r.skipped_checkpoints.empty()
            ? ""
            : absl::StrCat(" skipped=\"", absl::StrJoin(r.skipped_checkpoints, " | "), "\"")));
  };

  absl::Status s = trident::RunResilient(rt, trainer, loop);
  if (absl::IsCancelled(s)) {  // not needed: an idle spare, or retired by a shrink
    std::fprintf(stderr, "lm-trainer: %s\n", std::string(s.message()).c_str());
    return 0;
  }
  if (!s.ok()) {
    std::fprintf(stderr, "lm-trainer: rank %d: %s\n", rt.rank(), s.ToString().c_str());
    return 1;
  }
  trainer.Say(absl::StrFormat(
      "done steps=%d final_loss=%.6f final_val_loss=%.6f mean_tokens_per_s=%.0f "
      "sdc_checks=%d sdc_check_ms=%.3f sdc_every=%d",
      o.steps, trainer.loss(), trainer.val_loss(), trainer.mean_tokens_per_s(), sdc_checks,
      sdc_checks > 0 ? sdc_ms / sdc_checks : 0.0, sdc_interval));
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return Main(argc, argv); }
