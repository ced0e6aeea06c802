#include "comm/op_checks.h"

#include "absl/strings/str_cat.h"

namespace trident {

absl::Status CheckTensorShape(absl::string_view op, absl::string_view which, const Tensor& t) {
  if (t.numel() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", which, " has a negative shape"));
  }
  if (t.data() == nullptr && t.numel() > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", which, " has ", t.numel(), " elements but a null data pointer"));
  }
  return absl::OkStatus();
}

absl::Status CheckPairShapes(absl::string_view op, const Tensor& in, const Tensor& out,
                             int64_t out_per_in_num, int64_t out_per_in_den) {
  if (in.dtype() != out.dtype()) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": in is ", DTypeName(in.dtype()),
                                                   " but out is ", DTypeName(out.dtype())));
  }
  if (out.numel() * out_per_in_den != in.numel() * out_per_in_num) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": in has ", in.numel(), " elements and out has ", out.numel(), "; out must have ",
        out_per_in_num == out_per_in_den
            ? "as many"
            : absl::StrCat(out_per_in_num, "/", out_per_in_den, " times as many")));
  }
  return absl::OkStatus();
}

absl::Status CheckReduceOp(absl::string_view op, DType dtype, ReduceOp reduce) {
  if (reduce == ReduceOp::kAvg && !IsFloatingPoint(dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": avg of ", DTypeName(dtype), " is not defined; use sum and divide, or a float type"));
  }
  return absl::OkStatus();
}

}  // namespace trident
