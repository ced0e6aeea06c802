#include "options.h"

#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "trident/cli.h"
#include "trident/resilient.h"

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
          "recovery has built its world; MEMBER:STEP:BITFLIP[:TENSOR] flips one bit of "
          "parameter TENSOR (default: the first) right after step STEP (silent data "
          "corruption, for --sdc-every); MEMBER:STEP:SKIP_COLLECTIVE (step STEP skips its "
          "world all-reduce), MEMBER:STEP:WRONG_OP (step STEP calls a world all-gather where the "
          "others call the all-reduce), MEMBER:STEP:SLEEP=SECONDS (the training thread sleeps outside "
          "any op): hangs for the flight recorder (docs/observability.md)");
ABSL_FLAG(std::string, sdc_every, "auto",
          "every N steps (and before every checkpoint) the dp replicas compare XXH3 digests of "
          "their parameters and moments; a replica that disagrees is replaced by a spare "
          "(docs/fault-tolerance.md); auto: N chosen by measurement so that the checks cost "
          "at most 0.5% of the step time; 0: off");
ABSL_FLAG(bool, elastic_dp, false,
          "when a rank dies and no spare is left, go on without its data-parallel replica "
          "(same global batch, split over fewer replicas) instead of stopping; the replica's "
          "other ranks wait as spares. Needs --batch a multiple of d x microbatches for every "
          "d <= dp");
ABSL_FLAG(absl::Duration, recover_timeout, absl::Seconds(60),
          "after a failure, how long to wait for trident-run to give the dead rank's place to "
          "a spare before giving up");

namespace lm {
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
  checkpoint_skipped step S: rank R: DATA_LOSS: ...   (--resume) a newer checkpoint that
          could not be loaded; the run resumed from an older one
  recovery epoch=E dead_rank=R cause=C detect_ms=D recover_ms=M steps_redone=K source=peer|checkpoint|init world=W dp=P ...
          after a rank died or hung under `trident-run --spares`: a spare took its place
          (or, with --elastic-dp and no spare left, its dp replica left the world: dp=P
          after), every rank went back to the newest committed checkpoint that loads (the
          spare's state from its buddy's memory when it has that step, else from the
          checkpoint; skipped="..." names newer ones that could not be loaded, and why)
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
  PrintFlag(FLAGS_sdc_every, 14);
  PrintFlag(FLAGS_inject_fault, 14);
}

absl::StatusOr<std::vector<Fault>> ParseFaults(const std::string& spec) {
  std::vector<Fault> out;
  for (absl::string_view item : absl::StrSplit(spec, ',', absl::SkipEmpty())) {
    std::vector<std::string> parts = absl::StrSplit(item, ':');
    Fault f;
    const std::string bad =
        absl::StrCat("--inject-fault: '", item,
                     "' is not MEMBER:STEP:SIGNAL, MEMBER:recovery:SIGNAL, "
                     "MEMBER:STEP:BITFLIP[:TENSOR], MEMBER:STEP:SKIP_COLLECTIVE, "
                     "MEMBER:STEP:WRONG_OP or MEMBER:STEP:SLEEP=SECONDS");
    if (parts.size() == 4 && parts[2] == "BITFLIP") {
      f.tensor = parts[3];
      parts.pop_back();
    }
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
    f.bitflip = parts[2] == "BITFLIP";
    f.skip_collective = parts[2] == "SKIP_COLLECTIVE";
    f.wrong_op = parts[2] == "WRONG_OP";
    if (absl::StartsWith(parts[2], "SLEEP=") &&
        (!absl::SimpleAtod(parts[2].substr(6), &f.sleep_seconds) || !(f.sleep_seconds > 0))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--inject-fault: '", item, "': SLEEP=SECONDS needs a positive number of seconds"));
    }
    const bool hang_for_fr = f.skip_collective || f.wrong_op || f.sleep_seconds > 0;
    if ((f.bitflip || hang_for_fr) && f.step < 1) return absl::InvalidArgumentError(bad);
    if (f.signal == 0 && !f.hang && !f.bitflip && !hang_for_fr) {
      return absl::InvalidArgumentError(bad);
    }
    out.push_back(f);
  }
  return out;
}

}  // namespace

void UsageError(const std::string& message) {
  std::fprintf(stderr, "lm-trainer: %s\n(try --help)\n", message.c_str());
  std::exit(2);
}

Options ParseOptions(int argc, char** argv) {
  std::vector<std::string> storage;
  std::vector<char*> args = trident::cli::NormalizeArgs(argc, argv, storage);
  if (trident::cli::WantsHelp(args)) {
    PrintHelp();
    std::exit(0);
  }
  std::vector<char*> positional =
      absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  if (positional.size() > 1) UsageError(absl::StrCat("unexpected argument ", positional[1]));

  Options o;
  TrainerConfig& config = o.config;
  config.tp = absl::GetFlag(FLAGS_tp);
  config.pp = absl::GetFlag(FLAGS_pp);
  config.dp = absl::GetFlag(FLAGS_dp);
  auto schedule = trident::pipeline::ParseSchedule(absl::GetFlag(FLAGS_schedule));
  if (!schedule.ok()) UsageError(std::string(schedule.status().message()));
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
  o.steps = absl::GetFlag(FLAGS_steps);
  o.eval_every = absl::GetFlag(FLAGS_eval_every);
  o.threads = absl::GetFlag(FLAGS_threads);
  if (o.steps < 1) UsageError("--steps must be at least 1");
  if (o.eval_every < 1) UsageError("--eval-every must be at least 1");
  if (config.tp < 1 || config.pp < 1 || config.dp < 1) {
    UsageError("--tp, --pp and --dp must be at least 1");
  }
  o.elastic_dp = absl::GetFlag(FLAGS_elastic_dp);
  for (int d = config.dp; o.elastic_dp && d >= 1; --d) {
    if (config.batch % (d * config.microbatches) != 0) {
      UsageError(absl::StrFormat("--elastic-dp: --batch %d is not a multiple of dp x "
                                 "microbatches = %d x %d, so dp could not shrink to %d",
                                 config.batch, d, config.microbatches, d));
    }
  }
  o.ckpt_dir = absl::GetFlag(FLAGS_ckpt_dir);
  o.ckpt_every = absl::GetFlag(FLAGS_ckpt_every);
  o.keep = absl::GetFlag(FLAGS_keep);
  o.peer_replicas = absl::GetFlag(FLAGS_peer_replicas);
  o.resume = absl::GetFlag(FLAGS_resume);
  o.recover_timeout = absl::GetFlag(FLAGS_recover_timeout);
  if (const std::string every = absl::GetFlag(FLAGS_sdc_every); every == "auto") {
    o.sdc_every = trident::kSdcAuto;
  } else if (!absl::SimpleAtoi(every, &o.sdc_every) || o.sdc_every < 0) {
    UsageError(absl::StrCat("--sdc-every must be auto or a number >= 0, not '", every, "'"));
  }
  auto faults = ParseFaults(absl::GetFlag(FLAGS_inject_fault));
  if (!faults.ok()) UsageError(std::string(faults.status().message()));
  o.faults = *std::move(faults);
  if (o.ckpt_every < 0 || o.keep < 0) UsageError("--ckpt-every and --keep must be >= 0");
  if ((o.ckpt_every > 0 || o.resume) && o.ckpt_dir.empty()) {
    UsageError("--ckpt-every and --resume need --ckpt-dir");
  }
  return o;
}

}  // namespace lm
