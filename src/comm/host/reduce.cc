#include "comm/host/reduce.h"

#include <cstdint>
#include <cstring>

#include "common/check.h"

namespace trident {
namespace avx2 {
void Reduce(DType dtype, ReduceOp op, void* out, const void* a, const void* b, size_t n);
}  // namespace avx2

namespace baseline {
#include "comm/host/reduce_kernels.inc"
}  // namespace baseline

namespace {
bool HasAvx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  return has;
}

template <typename T>
void Scale(T* x, size_t n, int divisor) {
  const T d = static_cast<T>(divisor);
  for (size_t i = 0; i < n; ++i) x[i] /= d;
}
}  // namespace

void ReduceElements(DType dtype, ReduceOp op, void* dst, const void* a, const void* b,
                    size_t count) {
  if (count == 0) return;
  if (HasAvx2()) {
    avx2::Reduce(dtype, op, dst, a, b, count);
  } else {
    baseline::ReduceImpl(dtype, op, dst, a, b, count);
  }
}

void ScaleDown(DType dtype, void* x, size_t count, int divisor) {
  switch (dtype) {
    case DType::kF32: return Scale(static_cast<float*>(x), count, divisor);
    case DType::kF64: return Scale(static_cast<double*>(x), count, divisor);
    case DType::kF16:
    case DType::kBF16: {
      auto* h = static_cast<uint16_t*>(x);
      for (size_t i = 0; i < count; ++i) {
        if (dtype == DType::kBF16) {
          h[i] = baseline::F32ToBf16(baseline::Bf16ToF32(h[i]) / divisor);
        } else {
          _Float16 v;
          std::memcpy(&v, &h[i], 2);
          v = static_cast<_Float16>(static_cast<float>(v) / divisor);
          std::memcpy(&h[i], &v, 2);
        }
      }
      return;
    }
    default:
      TRIDENT_CHECK(false) << "ScaleDown on integer dtype " << DTypeName(dtype);
  }
}

}  // namespace trident
