// Element-wise reductions used by the host algorithms. Vectorised: the kernels are compiled
// twice, for baseline x86-64 and for AVX2+F16C, and the faster one is picked at run time.
// f16 and bf16 are computed in f32 and rounded back (to nearest even) per call.
#ifndef TRIDENT_COMM_HOST_REDUCE_H_
#define TRIDENT_COMM_HOST_REDUCE_H_

#include <cstddef>

#include "trident/tensor.h"

namespace trident {

// dst[i] = a[i] op b[i] for i < count; dst may alias a or b. kAvg reduces as kSum (divide
// afterwards with ScaleDown).
void ReduceElements(DType dtype, ReduceOp op, void* dst, const void* a, const void* b,
                    size_t count);

// x[i] /= divisor, for the floating-point dtypes (kAvg's last step).
void ScaleDown(DType dtype, void* x, size_t count, int divisor);

}  // namespace trident

#endif  // TRIDENT_COMM_HOST_REDUCE_H_
