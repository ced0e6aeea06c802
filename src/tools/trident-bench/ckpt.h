// trident-bench ckpt: the checkpoint engine's stall, persist throughput and peak extra host
// memory on one rank
// (ckpt.cc; `trident-bench ckpt --help`).
#ifndef TRIDENT_TOOLS_TRIDENT_BENCH_CKPT_H_
#define TRIDENT_TOOLS_TRIDENT_BENCH_CKPT_H_

namespace trident::bench {

// argv[0] is "ckpt". Returns the exit status.
int RunCkptBench(int argc, char** argv);

}  // namespace trident::bench

#endif  // TRIDENT_TOOLS_TRIDENT_BENCH_CKPT_H_
