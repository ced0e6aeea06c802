// Argument checks shared by the backends: what makes an op kInvalidArgument before anything
// is queued. The device checks are each backend's own (the host backend takes CPU tensors and,
// through staging, CUDA tensors; the NCCL backend takes CUDA tensors on its device).
#ifndef TRIDENT_COMM_OP_CHECKS_H_
#define TRIDENT_COMM_OP_CHECKS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "trident/tensor.h"

namespace trident {

// A negative shape, or a null pointer with elements.
absl::Status CheckTensorShape(absl::string_view op, absl::string_view which, const Tensor& t);
// in and out have one dtype and out.numel() * den == in.numel() * num.
absl::Status CheckPairShapes(absl::string_view op, const Tensor& in, const Tensor& out,
                             int64_t out_per_in_num, int64_t out_per_in_den);
// avg of an integer dtype is not defined.
absl::Status CheckReduceOp(absl::string_view op, DType dtype, ReduceOp reduce);

}  // namespace trident

#endif  // TRIDENT_COMM_OP_CHECKS_H_
