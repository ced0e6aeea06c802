// The collective algorithms of the host backend, written once over Channel (and so over any
// Transport). Latency algorithms for small messages (recursive doubling, binomial trees,
// dissemination) and bandwidth algorithms for large ones (rings, and trees pipelined in
// chunks). Buffers are raw bytes; counts are in elements.
//
// Every rank reduces in the same order as its partners, so AllReduce results are bitwise
// identical on every rank.
#ifndef TRIDENT_COMM_HOST_ALGORITHMS_H_
#define TRIDENT_COMM_HOST_ALGORITHMS_H_

#include <cstddef>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "comm/host/channel.h"
#include "common/host_memory.h"
#include "trident/tensor.h"

namespace trident {

// Reusable scratch memory of one communicator (fresh pages are costly: reuse them).
class Scratch {
 public:
  char* Get(size_t bytes) {
    if (bytes > size_) {
      data_ = AllocateHostMemory(bytes);
      size_ = bytes;
    }
    return data_.get();
  }

 private:
  HostMemory data_;
  size_t size_ = 0;
};

// How a buffer of `count` elements is cut into `n` blocks (sizes differ by at most one).
struct Blocks {
  std::vector<size_t> offset;  // in elements
  std::vector<size_t> count;
  size_t max_count = 0;
  static Blocks Even(size_t count, int n);
  static Blocks Uniform(size_t block_count, int n);
};

struct AlgoParams {
  size_t small_bytes;  // at or below: latency algorithms
  size_t chunk_bytes;  // pipeline chunk of the bandwidth algorithms
};

absl::Status AllReduceRecursiveDoubling(Channel& ch, DType dtype, ReduceOp op, const void* in,
                                        void* out, size_t count, Scratch& scratch);
absl::Status AllReduceRing(Channel& ch, DType dtype, ReduceOp op, const void* in, void* out,
                           size_t count, size_t chunk_bytes, Scratch& scratch);
// Rank r gets block r of the reduction in `out`.
absl::Status ReduceScatterRing(Channel& ch, DType dtype, ReduceOp op, const void* in, void* out,
                               size_t block_count, size_t chunk_bytes, Scratch& scratch);
// `in` (block_count elements) lands in block r of `out` on every rank.
absl::Status AllGatherRing(Channel& ch, DType dtype, const void* in, void* out,
                           size_t block_count, size_t chunk_bytes);
// Binomial tree, pipelined in chunks: each rank forwards a chunk as soon as it arrives.
absl::Status BroadcastTree(Channel& ch, void* data, size_t bytes, int root, size_t chunk_bytes);
absl::Status ReduceTree(Channel& ch, DType dtype, ReduceOp op, const void* in, void* out,
                        size_t count, int root, Scratch& scratch);
absl::Status ReduceRing(Channel& ch, DType dtype, ReduceOp op, const void* in, void* out,
                        size_t count, int root, size_t chunk_bytes, Scratch& scratch);
absl::Status AllToAllPairwise(Channel& ch, DType dtype, const void* in, void* out,
                              size_t block_count, Scratch& scratch);
absl::Status BarrierDissemination(Channel& ch);

}  // namespace trident

#endif  // TRIDENT_COMM_HOST_ALGORITHMS_H_
