// trident-bench recovery: detection and recovery times of lm-trainer under trident-run over
// many injected failures, and the peer-replica transfer rate against sendrecv (recovery.cc;
// `trident-bench recovery --help`). The parsing and statistics are in recovery_stats.h.
#ifndef TRIDENT_TOOLS_TRIDENT_BENCH_RECOVERY_H_
#define TRIDENT_TOOLS_TRIDENT_BENCH_RECOVERY_H_

namespace trident::bench {

// argv[0] is "recovery". Returns the exit status: 0 when every run recovered and the sendrecv
// reference ran, 1 when a run failed or hung (or the reference failed), 2 on bad usage.
int RunRecoveryBench(int argc, char** argv);

}  // namespace trident::bench

#endif  // TRIDENT_TOOLS_TRIDENT_BENCH_RECOVERY_H_
