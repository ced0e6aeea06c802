// The reduction kernels built for AVX2 + F16C (see CMake: this file gets -mavx2 -mf16c).
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "trident/tensor.h"

namespace trident::avx2 {
#include "comm/host/reduce_kernels.inc"

void Reduce(DType dtype, ReduceOp op, void* out, const void* a, const void* b, size_t n) {
  ReduceImpl(dtype, op, out, a, b, n);
}
}  // namespace trident::avx2
