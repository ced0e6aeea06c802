// lm-trainer's command line: its flags, --help, and the checks of their values.
#ifndef TRIDENT_EXAMPLES_LM_TRAINER_OPTIONS_H_
#define TRIDENT_EXAMPLES_LM_TRAINER_OPTIONS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "trainer.h"

namespace lm {

// --inject-fault: raise a signal in one member at a chosen point (tests).
struct Fault {
  std::string member;
  int64_t step = -1;  // -1: right after the next recovery built its world
  int signal = 0;     // 0 with hang: the training thread blocks forever
  bool hang = false;
  // BITFLIP: after step `step`, one bit of one parameter flips (silent data corruption).
  bool bitflip = false;
  std::string tensor;  // BITFLIP's parameter; empty: the first
  // Hangs for the flight recorder's tests (docs/observability.md), at the start of `step`:
  // SKIP_COLLECTIVE: the step skips its world all-reduce (the next step's dp ops follow);
  // WRONG_OP: the step calls a world all-gather where the others call its all-reduce;
  // SLEEP=SECONDS: the training thread sleeps, outside any op.
  bool skip_collective = false;
  bool wrong_op = false;
  double sleep_seconds = 0;
};

struct Options {
  TrainerConfig config;
  int steps = 0;
  int eval_every = 0;
  int threads = 0;  // OpenBLAS threads; 0: the cores divided by the ranks
  bool elastic_dp = false;
  std::string ckpt_dir;
  int ckpt_every = 0;
  int keep = 3;
  bool resume = false;
  bool peer_replicas = true;
  int sdc_every = 0;  // trident::LoopOptions::sdc_every (kSdcAuto: --sdc-every auto)
  absl::Duration recover_timeout;
  std::vector<Fault> faults;
};

// Parses argv. Prints --help and exits 0, or prints a usage error and exits 2.
Options ParseOptions(int argc, char** argv);
// Prints a usage error and exits 2.
[[noreturn]] void UsageError(const std::string& message);

}  // namespace lm

#endif  // TRIDENT_EXAMPLES_LM_TRAINER_OPTIONS_H_
