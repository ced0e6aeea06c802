// Tensor-parallel communication: Y = X W split column-wise, then row-wise, and a Megatron MLP
// with sequence parallelism, each on 1, 2 and 4 ranks, give exactly the Y, dX and dW of the
// unsplit computation. Small integers keep every float32 sum exact.
#include "trident/parallel/tensor_parallel.h"

#include <atomic>
#include <vector>

#include "comm/host/inproc.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "../comm/comm_test_util.h"

namespace trident {
namespace {

using ::testing::HasSubstr;

struct Mat {
  int rows = 0, cols = 0;
  std::vector<float> v;
  Mat(int r, int c) : rows(r), cols(c), v(static_cast<size_t>(r) * c) {}
  float& at(int i, int j) { return v[static_cast<size_t>(i) * cols + j]; }
  float at(int i, int j) const { return v[static_cast<size_t>(i) * cols + j]; }
  Tensor tensor() { return Tensor(v.data(), DType::kF32, {rows, cols}); }
  bool operator==(const Mat& o) const { return rows == o.rows && cols == o.cols && v == o.v; }
};

Mat Filled(int r, int c, int seed) {
  Mat m(r, c);
  for (int i = 0; i < r; ++i) {
    for (int j = 0; j < c; ++j) m.at(i, j) = static_cast<float>((i * 7 + j * 3 + seed) % 5 - 2);
  }
  return m;
}
Mat MatMul(const Mat& a, const Mat& b) {
  Mat c(a.rows, b.cols);
  for (int i = 0; i < a.rows; ++i) {
    for (int k = 0; k < a.cols; ++k) {
      for (int j = 0; j < b.cols; ++j) c.at(i, j) += a.at(i, k) * b.at(k, j);
    }
  }
  return c;
}
Mat T(const Mat& a) {
  Mat t(a.cols, a.rows);
  for (int i = 0; i < a.rows; ++i) {
    for (int j = 0; j < a.cols; ++j) t.at(j, i) = a.at(i, j);
  }
  return t;
}
Mat Cols(const Mat& a, int begin, int end) {
  Mat s(a.rows, end - begin);
  for (int i = 0; i < a.rows; ++i) {
    for (int j = begin; j < end; ++j) s.at(i, j - begin) = a.at(i, j);
  }
  return s;
}
Mat Rows(const Mat& a, int begin, int end) { return T(Cols(T(a), begin, end)); }

std::vector<std::unique_ptr<Communicator>> Comms(int n) {
  InprocCommOptions options;
  options.size = n;
  return NewInprocCommunicators(options);
}

constexpr int kB = 8;   // batch x sequence rows
constexpr int kK = 8;   // input features (hidden)
constexpr int kN = 12;  // output features (ffn)

class TensorParallelTest : public ::testing::TestWithParam<int> {};

TEST_P(TensorParallelTest, ColumnParallelLinearMatchesTheUnsplitLayer) {
  const int p = GetParam();
  const Mat x = Filled(kB, kK, 1), w = Filled(kK, kN, 2), dy = Filled(kB, kN, 3);
  const Mat y = MatMul(x, w), dx = MatMul(dy, T(w)), dw = MatMul(T(x), dy);
  auto comms = Comms(p);
  std::atomic<int> mismatches{0};
  testing::RunRanks(comms, [&](int r, Communicator& tp) {
    const int c0 = r * kN / p, c1 = (r + 1) * kN / p;
    const Mat w_r = Cols(w, c0, c1);
    Mat x_r = x;
    ASSERT_TRUE(tp::ColumnParallelForward(tp, x_r.tensor()).ok());
    const Mat y_r = MatMul(x_r, w_r);
    const Mat dy_r = Cols(dy, c0, c1);
    Mat dx_r = MatMul(dy_r, T(w_r));  // partial
    absl::Status st = tp::ColumnParallelBackward(tp, dx_r.tensor());
    ASSERT_TRUE(st.ok()) << st;
    const Mat dw_r = MatMul(T(x_r), dy_r);
    if (!(y_r == Cols(y, c0, c1))) ++mismatches, ADD_FAILURE() << "rank " << r << " Y";
    if (!(dx_r == dx)) ++mismatches, ADD_FAILURE() << "rank " << r << " dX";
    if (!(dw_r == Cols(dw, c0, c1))) ++mismatches, ADD_FAILURE() << "rank " << r << " dW";
  });
  EXPECT_EQ(mismatches.load(), 0);
}

TEST_P(TensorParallelTest, RowParallelLinearMatchesTheUnsplitLayer) {
  const int p = GetParam();
  const Mat x = Filled(kB, kK, 4), w = Filled(kK, kN, 5), dy = Filled(kB, kN, 6);
  const Mat y = MatMul(x, w), dx = MatMul(dy, T(w)), dw = MatMul(T(x), dy);
  auto comms = Comms(p);
  std::atomic<int> mismatches{0};
  testing::RunRanks(comms, [&](int r, Communicator& tp) {
    const int k0 = r * kK / p, k1 = (r + 1) * kK / p;
    const Mat x_r = Cols(x, k0, k1), w_r = Rows(w, k0, k1);
    Mat y_r = MatMul(x_r, w_r);  // partial
    absl::Status st = tp::RowParallelForward(tp, y_r.tensor());
    ASSERT_TRUE(st.ok()) << st;
    Mat dy_r = dy;
    ASSERT_TRUE(tp::RowParallelBackward(tp, dy_r.tensor()).ok());
    const Mat dx_r = MatMul(dy_r, T(w_r)), dw_r = MatMul(T(x_r), dy_r);
    if (!(y_r == y)) ++mismatches, ADD_FAILURE() << "rank " << r << " Y";
    if (!(dx_r == Cols(dx, k0, k1))) ++mismatches, ADD_FAILURE() << "rank " << r << " dX";
    if (!(dw_r == Rows(dw, k0, k1))) ++mismatches, ADD_FAILURE() << "rank " << r << " dW";
  });
  EXPECT_EQ(mismatches.load(), 0);
}

// Z = (X W1) W2 with W1 column-parallel and W2 row-parallel (Megatron's MLP, no activation),
// X and Z split along the sequence: all-gather in, reduce-scatter out, and the reverse in
// backward.
TEST_P(TensorParallelTest, SequenceParallelMlpMatchesTheUnsplitMlp) {
  const int p = GetParam();
  const Mat x = Filled(kB, kK, 7), w1 = Filled(kK, kN, 8), w2 = Filled(kN, kK, 9);
  const Mat dz = Filled(kB, kK, 10);
  const Mat a = MatMul(x, w1), z = MatMul(a, w2);
  const Mat da = MatMul(dz, T(w2)), dw2 = MatMul(T(a), dz);
  const Mat dx = MatMul(da, T(w1)), dw1 = MatMul(T(x), da);
  auto comms = Comms(p);
  std::atomic<int> mismatches{0};
  testing::RunRanks(comms, [&](int r, Communicator& tp) {
    const int s0 = r * kB / p, s1 = (r + 1) * kB / p;   // sequence rows of this rank
    const int f0 = r * kN / p, f1 = (r + 1) * kN / p;   // ffn columns of this rank
    const Mat w1_r = Cols(w1, f0, f1), w2_r = Rows(w2, f0, f1);
    // Forward.
    Mat x_shard = Rows(x, s0, s1), x_full(kB, kK);
    ASSERT_TRUE(tp::SequenceParallelGather(tp, x_shard.tensor(), x_full.tensor()).ok());
    const Mat a_r = MatMul(x_full, w1_r);
    Mat z_partial = MatMul(a_r, w2_r), z_shard(s1 - s0, kK);
    ASSERT_TRUE(tp::SequenceParallelScatter(tp, z_partial.tensor(), z_shard.tensor()).ok());
    // Backward.
    Mat dz_shard = Rows(dz, s0, s1), dz_full(kB, kK);
    ASSERT_TRUE(
        tp::SequenceParallelScatterBackward(tp, dz_shard.tensor(), dz_full.tensor()).ok());
    const Mat da_r = MatMul(dz_full, T(w2_r)), dw2_r = MatMul(T(a_r), dz_full);
    Mat dx_partial = MatMul(da_r, T(w1_r)), dx_shard(s1 - s0, kK);
    const Mat dw1_r = MatMul(T(x_full), da_r);
    ASSERT_TRUE(
        tp::SequenceParallelGatherBackward(tp, dx_partial.tensor(), dx_shard.tensor()).ok());
    if (!(x_full == x)) ++mismatches, ADD_FAILURE() << "rank " << r << " gathered X";
    if (!(z_shard == Rows(z, s0, s1))) ++mismatches, ADD_FAILURE() << "rank " << r << " Z";
    if (!(dx_shard == Rows(dx, s0, s1))) ++mismatches, ADD_FAILURE() << "rank " << r << " dX";
    if (!(dw1_r == Cols(dw1, f0, f1))) ++mismatches, ADD_FAILURE() << "rank " << r << " dW1";
    if (!(dw2_r == Rows(dw2, f0, f1))) ++mismatches, ADD_FAILURE() << "rank " << r << " dW2";
  });
  EXPECT_EQ(mismatches.load(), 0);
}

INSTANTIATE_TEST_SUITE_P(Ranks, TensorParallelTest, ::testing::Values(1, 2, 4));

TEST(TensorParallelShapesTest, SequenceShapesThatDoNotFitAreInvalidArgument) {
  auto comms = Comms(2);
  testing::RunRanks(comms, [&](int, Communicator& tp) {
    Mat shard(4, 8), wrong_rows(6, 8), wrong_cols(8, 4), full(8, 8);
    absl::Status st = tp::SequenceParallelGather(tp, shard.tensor(), wrong_rows.tensor());
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(st.message(), HasSubstr("full [6, 8] f32 is not 2 shards [4, 8] f32"));
    st = tp::SequenceParallelScatter(tp, wrong_cols.tensor(), shard.tensor());
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(st.message(), HasSubstr("dimension 1"));
    std::vector<double> d(32);
    st = tp::SequenceParallelGather(tp, shard.tensor(),
                                    Tensor(d.data(), DType::kF64, {8, 4}));
    EXPECT_THAT(st.message(), HasSubstr("dtypes differ"));
    // Nothing was issued, so the group is still in step: a good call works.
    EXPECT_TRUE(tp::SequenceParallelGather(tp, shard.tensor(), full.tensor()).ok());
  });
}

TEST(TensorParallelShapesTest, AbortedGroupFailsWithTheAbortStatus) {
  auto comms = Comms(1);
  comms[0]->Abort(absl::AbortedError("rank 3 died"));
  Mat y(2, 2);
  absl::Status st = tp::RowParallelForward(*comms[0], y.tensor());
  EXPECT_NE(st.code(), absl::StatusCode::kOk);
  EXPECT_THAT(st.message(), HasSubstr("tp::RowParallelForward"));
}

}  // namespace
}  // namespace trident
