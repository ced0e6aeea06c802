// trident-bench test data: the value every rank puts in each element, the result each
// collective must produce, and element access for every DType.
//
// Values are integers chosen to be exact in the dtype, and so are all partial results of the
// reduction whatever order the ranks combine them in: sums stay within the dtype's exact
// integer range (bf16: 256, f16: 2048, i8: 127, ...), products are +-1 or +-2, and avg inputs
// sum to a multiple of the world size. So the expected result is computed locally and
// compared exactly (avg of floating point allows 2 ulps for the final division). Values
// depend on rank and index through a hash, so a misplaced block is caught.
#ifndef TRIDENT_TOOLS_TRIDENT_BENCH_DATA_H_
#define TRIDENT_TOOLS_TRIDENT_BENCH_DATA_H_

#include <cstdint>

#include "trident/tensor.h"

namespace trident::bench {

// Element access: value i of a buffer of `dtype`, as a double (exact for the test values).
void StoreElement(void* base, DType dtype, int64_t i, double value);
double LoadElement(const void* base, DType dtype, int64_t i);

// The value written where a result must land (or, for Reduce on non-roots, must stay).
inline constexpr double kSentinel = 99;

class TestData {
 public:
  // `reduce` matters only for reducing collectives; data movement uses its own values.
  TestData(DType dtype, ReduceOp reduce, int world_size);

  // Input of rank `rank` at global index `i`, for a collective that reduces.
  double ReduceInput(int rank, int64_t i) const;
  // The reduction over all ranks of ReduceInput(r, i).
  double Reduced(int64_t i) const;
  // Input of rank `rank` at global index `i`, for data movement (allgather, ...).
  double MoveInput(int rank, int64_t i) const;
  // True when `got` is the expected `want` (avg of floating point: within 2 ulps).
  bool Matches(double got, double want) const;

 private:
  DType dtype_;
  ReduceOp reduce_;
  int world_size_;
  int64_t sum_amplitude_;  // sum inputs lie in [-a, a] ([0, a] for u8)
  int64_t move_lo_, move_span_;  // movement values lie in [lo, lo + span)
  double tolerance_ulps_;
};

}  // namespace trident::bench

#endif  // TRIDENT_TOOLS_TRIDENT_BENCH_DATA_H_
