// trident-bench's engine: runs one collective over a range of sizes on a Communicator and
// measures it with the nccl-tests conventions.
//
//  - bytes: the size of the full buffer: allreduce/broadcast/reduce: the buffer; allgather:
//    the output (each rank gives bytes/n); reducescatter: the input (each rank gets bytes/n);
//    alltoall: each rank's send buffer; sendrecv: one message. Blocked ops round the element
//    count down to a multiple of the world size (at least one element per rank).
//  - time: max over ranks of the mean time of one call in a timed loop in which each call is
//    issued and waited for, back to back, with no barrier inside (one Barrier before it).
//  - algbw = bytes / time; busbw = algbw * factor: allreduce 2(n-1)/n; reducescatter,
//    allgather, alltoall (n-1)/n; broadcast, reduce, sendrecv 1.
//  - check: inputs hold rank- and index-dependent values exact in the dtype (data.h); one call,
//    then every element of the result is compared with the value computed locally. #wrong is
//    the max over ranks, taken through the communicator.
#ifndef TRIDENT_TOOLS_TRIDENT_BENCH_BENCH_H_
#define TRIDENT_TOOLS_TRIDENT_BENCH_BENCH_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "trident/communicator.h"
#include "trident/tensor.h"

namespace trident::bench {

enum class Collective {
  kAllReduce,
  kReduceScatter,
  kAllGather,
  kBroadcast,
  kReduce,
  kAllToAll,
  kSendRecv,
  kBarrier
};

absl::StatusOr<Collective> ParseCollective(absl::string_view name);
absl::string_view CollectiveName(Collective c);
bool Reduces(Collective c);    // takes a ReduceOp
bool HasRoot(Collective c);    // broadcast, reduce
double BusFactor(Collective c, int world_size);

// "4096", "4K", "256M", "1G" (also "4KiB", "4KB"): binary multiples.
absl::StatusOr<int64_t> ParseBytes(absl::string_view text);
// min, 2 min, 4 min, ... up to max (inclusive).
std::vector<int64_t> SizeRange(int64_t min_bytes, int64_t max_bytes);
// The sizes of SizeRange that give distinct buffers for collective c of dtype on n ranks (a
// size under one element, or one element per rank, rounds up like the one before it).
std::vector<int64_t> MeasuredSizes(Collective c, DType dtype, int n, int64_t min_bytes,
                                   int64_t max_bytes);

struct Config {
  Collective collective = Collective::kAllReduce;
  int64_t min_bytes = 4096;
  int64_t max_bytes = 4096;
  DType dtype = DType::kF32;
  ReduceOp reduce = ReduceOp::kSum;
  int root = 0;
  bool in_place = false;     // allreduce only: out is in
  int iters = 0;             // 0: adaptive
  int warmup = 2;
  double target_seconds = 0.3;  // adaptive: time of the timed loop per size
  int min_iters = 3;
  int max_iters = 1000;
  bool check = false;
  absl::Duration timeout = absl::ZeroDuration();  // per op; zero: the communicator's
  int cuda_device = -1;  // >= 0: buffers are device memory on this CUDA device
  bool heap = false;     // CPU buffers from the heap (std::vector), not AllocateHostMemory
};

struct Row {
  int64_t bytes = 0;
  int64_t count = 0;  // elements of the full buffer (bytes / dtype size)
  int iters = 0;
  double seconds = 0;  // max over ranks of the mean time of one call
  double algbw_gbps = 0;
  double busbw_gbps = 0;
  int64_t wrong = -1;  // -1: not checked
};

// Runs the sizes of `config` on `comm`; every rank of the communicator calls it with the same
// config. `on_row` is called on every rank after each size (all ranks hold the same row).
// Returns the first failed op's status, annotated with the op and size.
absl::Status RunBench(Communicator& comm, const Config& config,
                      const std::function<void(const Row&)>& on_row);

}  // namespace trident::bench

#endif  // TRIDENT_TOOLS_TRIDENT_BENCH_BENCH_H_
