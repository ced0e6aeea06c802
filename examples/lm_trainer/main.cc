// lm-trainer: trains a small character-level language model with tensor, pipeline and data
// parallelism over Trident's communicators. See --help, and docs/parallelism.md.
//
//   trident-run --nproc 8 -- lm-trainer --tp 2 --pp 2 --dp 2 --steps 200
#include <cblas.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "comm/host/inproc.h"
#include "common/cli.h"
#include "common/logging.h"
#include "trainer.h"
#include "trident/communicator.h"

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
  done steps=N final_loss=L final_val_loss=V mean_tokens_per_s=T
Exit status: 0 when all steps ran; 1 on an error (printed with the rank); 2 on bad usage.
Without trident-run (no TRIDENT_WORLD_SIZE) it runs as one process (tp = pp = dp = 1).

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

  std::unique_ptr<trident::Communicator> world;
  if (std::getenv("TRIDENT_WORLD_SIZE") == nullptr) {
    trident::InprocCommOptions options;
    options.size = 1;
    world = std::move(trident::NewInprocCommunicators(options)[0]);
  } else {
    trident::HostCommOptions options;
    options.name = "world";
    auto comm = trident::CreateHostCommunicator(options);
    if (!comm.ok()) {
      std::fprintf(stderr, "lm-trainer: cannot create the communicator: %s\n",
                   comm.status().ToString().c_str());
      return 1;
    }
    world = std::move(comm).value();
  }
  const int rank = world->rank();
  trident::InitLogging(absl::StrCat("rank ", rank));
  if (config.tp * config.pp * config.dp != world->size()) {
    UsageError(absl::StrFormat("tp x pp x dp = %d x %d x %d = %d, but the world has %d ranks",
                               config.tp, config.pp, config.dp,
                               config.tp * config.pp * config.dp, world->size()));
  }
  int threads = absl::GetFlag(FLAGS_threads);
  if (threads <= 0) {
    threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / world->size());
  }
  openblas_set_num_threads(threads);

  auto fail = [&](const absl::Status& status) {
    std::fprintf(stderr, "lm-trainer: rank %d: %s\n", rank, status.ToString().c_str());
    return 1;
  };
  auto trainer_or = lm::Trainer::Create(*world, config);
  if (!trainer_or.ok()) {
    if (absl::IsInvalidArgument(trainer_or.status())) UsageError(trainer_or.status().message());
    return fail(trainer_or.status());
  }
  lm::Trainer& trainer = **trainer_or;
  if (rank == 0) {
    std::printf("start %s world=%d vocab=%d threads=%d\n", lm::DescribeConfig(trainer.config()).c_str(),
                world->size(), trainer.vocab_size(), threads);
    std::fflush(stdout);
  }
  double loss = NAN, val_loss = NAN, tokens = 0, seconds = 0;
  for (int i = 1; i <= steps; ++i) {
    auto st = trainer.Step();
    if (!st.ok()) return fail(st.status());
    loss = st->loss;
    tokens += config.batch;
    seconds += st->step_ms / 1e3;
    std::string val;
    if (i == 1 || i % eval_every == 0 || i == steps) {
      auto v = trainer.Evaluate();
      if (!v.ok()) return fail(v.status());
      val_loss = *v;
      val = absl::StrFormat(" val_loss=%.6f", val_loss);
    }
    if (rank == 0) {
      std::printf("step=%d loss=%.6f%s tokens_per_s=%.0f step_ms=%.2f comm_share=%.3f\n", i,
                  st->loss, val.c_str(), st->tokens_per_s, st->step_ms,
                  st->step_ms > 0 ? std::max(0.0, 1.0 - st->compute_ms / st->step_ms) : 0.0);
      std::fflush(stdout);
    }
  }
  if (rank == 0) {
    std::printf("done steps=%d final_loss=%.6f final_val_loss=%.6f mean_tokens_per_s=%.0f\n",
                steps, loss, val_loss, tokens / seconds);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return Main(argc, argv); }
