#include "trident/parallel/tensor_parallel.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace trident::tp {
namespace {

std::string ShapeString(const Tensor& t) {
  return absl::StrCat("[", absl::StrJoin(t.shape(), ", "), "]");
}

absl::Status CheckTensor(absl::string_view call, absl::string_view name, const Tensor& t) {
  if (t.numel() < 0 || (t.numel() > 0 && t.data() == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat("tp::", call, ": ", name, " ",
                                                   ShapeString(t), " has a null pointer"));
  }
  return absl::OkStatus();
}

// `full` must be `shard` with its first dimension multiplied by the group size.
absl::Status CheckSequenceShapes(absl::string_view call, const Communicator& tp,
                                 const Tensor& shard, const Tensor& full) {
  RETURN_IF_ERROR(CheckTensor(call, "shard", shard));
  RETURN_IF_ERROR(CheckTensor(call, "full", full));
  auto mismatch = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tp::", call, ": full ", ShapeString(full), " ", DTypeName(full.dtype()), " is not ",
        tp.size(), " shards ", ShapeString(shard), " ", DTypeName(shard.dtype()),
        " along the first dimension: ", why));
  };
  if (shard.dtype() != full.dtype()) return mismatch("dtypes differ");
  if (shard.shape().empty() || full.shape().size() != shard.shape().size()) {
    return mismatch("ranks differ or are 0");
  }
  if (full.shape()[0] != shard.shape()[0] * tp.size()) {
    return mismatch("first dimension");
  }
  for (size_t d = 1; d < shard.shape().size(); ++d) {
    if (full.shape()[d] != shard.shape()[d]) return mismatch(absl::StrCat("dimension ", d));
  }
  return absl::OkStatus();
}

absl::Status Run(absl::string_view call, std::shared_ptr<Work> work) {
  // The op is bound by its own deadline, so waiting without one cannot block forever.
  return Annotate(work->Wait(), absl::StrCat("tp::", call));
}

}  // namespace

absl::Status ColumnParallelForward(Communicator&, const Tensor& x, const OpOptions&) {
  return CheckTensor("ColumnParallelForward", "x", x);
}

absl::Status ColumnParallelBackward(Communicator& tp, const Tensor& grad_x,
                                    const OpOptions& options) {
  RETURN_IF_ERROR(CheckTensor("ColumnParallelBackward", "grad_x", grad_x));
  return Run("ColumnParallelBackward", tp.AllReduce(grad_x, grad_x, ReduceOp::kSum, options));
}

absl::Status RowParallelForward(Communicator& tp, const Tensor& y, const OpOptions& options) {
  RETURN_IF_ERROR(CheckTensor("RowParallelForward", "y", y));
  return Run("RowParallelForward", tp.AllReduce(y, y, ReduceOp::kSum, options));
}

absl::Status RowParallelBackward(Communicator&, const Tensor& grad_y, const OpOptions&) {
  return CheckTensor("RowParallelBackward", "grad_y", grad_y);
}

absl::Status SequenceParallelGather(Communicator& tp, const Tensor& shard, const Tensor& full,
                                    const OpOptions& options) {
  RETURN_IF_ERROR(CheckSequenceShapes("SequenceParallelGather", tp, shard, full));
  return Run("SequenceParallelGather", tp.AllGather(shard, full, options));
}

absl::Status SequenceParallelGatherBackward(Communicator& tp, const Tensor& grad_full,
                                            const Tensor& grad_shard,
                                            const OpOptions& options) {
  RETURN_IF_ERROR(
      CheckSequenceShapes("SequenceParallelGatherBackward", tp, grad_shard, grad_full));
  return Run("SequenceParallelGatherBackward",
             tp.ReduceScatter(grad_full, grad_shard, ReduceOp::kSum, options));
}

absl::Status SequenceParallelScatter(Communicator& tp, const Tensor& full, const Tensor& shard,
                                     const OpOptions& options) {
  RETURN_IF_ERROR(CheckSequenceShapes("SequenceParallelScatter", tp, shard, full));
  return Run("SequenceParallelScatter", tp.ReduceScatter(full, shard, ReduceOp::kSum, options));
}

absl::Status SequenceParallelScatterBackward(Communicator& tp, const Tensor& grad_shard,
                                             const Tensor& grad_full,
                                             const OpOptions& options) {
  RETURN_IF_ERROR(
      CheckSequenceShapes("SequenceParallelScatterBackward", tp, grad_shard, grad_full));
  return Run("SequenceParallelScatterBackward", tp.AllGather(grad_shard, grad_full, options));
}

}  // namespace trident::tp
