// trident/parallel/tensor_parallel.h: the communication of Megatron-LM's tensor-parallel
// linear layers (Shoeybi et al., 2019) and of sequence parallelism (Korthikanti et al., 2022),
// as functions over the tp group. The matrix products are the caller's; these are the
// collectives that sit between them.
//
// With p = tp.size() and rank r, for Y = X W:
//  - column-parallel: W = [W_0 | ... | W_{p-1}] split by columns; rank r computes
//    Y_r = X W_r (its columns of Y). X is needed whole on every rank, so the input gradient
//    dX = sum_r dY_r W_r^T is summed over the group in backward.
//  - row-parallel: W = [W_0; ...; W_{p-1}] split by rows, X = [X_0 | ... | X_{p-1}] by
//    columns (typically the output of a column-parallel layer); rank r computes the partial
//    Y^(r) = X_r W_r and Y = sum_r Y^(r) is summed over the group in forward. dY is the same
//    on every rank, so backward needs no communication: dX_r = dY W_r^T.
//  - sequence parallel: the activations outside the tensor-parallel region are split along the
//    sequence (first) dimension; the all-reduce of a row-parallel layer becomes a
//    reduce-scatter and the identity before a column-parallel layer becomes an all-gather
//    (their backward is the other one).
//
// A Megatron MLP, X [s, h] -> column-parallel W1 -> row-parallel W2:
//   RETURN_IF_ERROR(tp::ColumnParallelForward(tp, x));          // f (identity)
//   a_r = x * W1_r; z_r = a_r * W2_r;                            // caller's GEMMs
//   RETURN_IF_ERROR(tp::RowParallelForward(tp, z));              // g: z = sum_r z_r
//   ... backward:
//   RETURN_IF_ERROR(tp::RowParallelBackward(tp, dz));            // identity
//   da_r = dz * W2_r^T; dx_r = da_r * W1_r^T;
//   RETURN_IF_ERROR(tp::ColumnParallelBackward(tp, dx));         // dx = sum_r dx_r
// With sequence parallelism, ColumnParallelForward becomes SequenceParallelGather and
// RowParallelForward becomes SequenceParallelScatter (see tensor_parallel_test.cc).
//
// Every call is collective over the tp group (the identities excepted: they communicate
// nothing), issues its op and waits for it; the op is bound by options.timeout or the
// communicator's default. Errors are the communicator's (communicator.h); kInvalidArgument
// for tensors whose sizes do not fit. Tensors may be of any dtype (sums of integers wrap).
// Thread-safety: that of the communicator; the tensors must not be touched during the call.
#ifndef TRIDENT_PARALLEL_TENSOR_PARALLEL_H_
#define TRIDENT_PARALLEL_TENSOR_PARALLEL_H_

#include "absl/status/status.h"
#include "trident/communicator.h"
#include "trident/tensor.h"

namespace trident::tp {

// Column-parallel layer, forward, before the local GEMM (Megatron's
// copy_to_tensor_model_parallel_region, "f"): X -> X, identity. Checks `x` and returns.
absl::Status ColumnParallelForward(Communicator& tp, const Tensor& x,
                                   const OpOptions& options = {});
// Column-parallel layer, backward of f: dX <- sum_r dX_r, an all-reduce (sum) in place of the
// rank's partial input gradient dX_r = dY_r W_r^T.
absl::Status ColumnParallelBackward(Communicator& tp, const Tensor& grad_x,
                                    const OpOptions& options = {});

// Row-parallel layer, forward, after the local GEMM (Megatron's
// reduce_from_tensor_model_parallel_region, "g"): Y <- sum_r Y^(r), an all-reduce (sum) in
// place of the rank's partial output Y^(r) = X_r W_r. Add the bias after this, once.
absl::Status RowParallelForward(Communicator& tp, const Tensor& y,
                                const OpOptions& options = {});
// Row-parallel layer, backward of g: dY -> dY, identity (dY is replicated). Checks and returns.
absl::Status RowParallelBackward(Communicator& tp, const Tensor& grad_y,
                                 const OpOptions& options = {});

// Sequence parallel, entering the tensor-parallel region (Megatron's
// gather_from_sequence_parallel_region): `shard` [s/p, ...] is rank r's rows r*s/p ..
// (r+1)*s/p - 1 of X; `full` [s, ...] receives X = concat_r(shard_r) along the first dimension
// (an all-gather). Replaces ColumnParallelForward.
absl::Status SequenceParallelGather(Communicator& tp, const Tensor& shard, const Tensor& full,
                                    const OpOptions& options = {});
// Backward of SequenceParallelGather: grad_shard <- rows r*s/p .. of sum_r grad_full_r (a
// reduce-scatter, sum, along the first dimension). Replaces ColumnParallelBackward.
absl::Status SequenceParallelGatherBackward(Communicator& tp, const Tensor& grad_full,
                                            const Tensor& grad_shard,
                                            const OpOptions& options = {});

// Sequence parallel, leaving the tensor-parallel region (Megatron's
// reduce_scatter_to_sequence_parallel_region): `full` [s, ...] is the rank's partial output
// Y^(r); `shard` [s/p, ...] receives rows r*s/p .. of Y = sum_r Y^(r) (a reduce-scatter, sum).
// Replaces RowParallelForward.
absl::Status SequenceParallelScatter(Communicator& tp, const Tensor& full, const Tensor& shard,
                                     const OpOptions& options = {});
// Backward of SequenceParallelScatter: grad_full [s, ...] <- concat_r(grad_shard_r) along the
// first dimension (an all-gather). Replaces RowParallelBackward.
absl::Status SequenceParallelScatterBackward(Communicator& tp, const Tensor& grad_shard,
                                             const Tensor& grad_full,
                                             const OpOptions& options = {});

}  // namespace trident::tp

#endif  // TRIDENT_PARALLEL_TENSOR_PARALLEL_H_
