// The reduction kernels against a scalar reference, for every dtype and op, at lengths that
// cover the vector body and its tail.
#include "comm/host/reduce.h"

#include <cmath>

#include "comm_test_util.h"
#include "gtest/gtest.h"

namespace trident {
namespace {

using testing::Buffer;

TEST(ReduceTest, EveryDTypeAndOpMatchesScalarReference) {
  for (DType dtype : kAllDTypes) {
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kProd, ReduceOp::kMin, ReduceOp::kMax}) {
      for (size_t n : {1, 15, 16, 17, 255, 256, 257, 1000}) {
        Buffer a(dtype, n), b(dtype, n), out(dtype, n);
        for (size_t i = 0; i < n; ++i) {
          a.Set(i, static_cast<double>(i % 11) - 3);
          b.Set(i, static_cast<double>(i % 7) - (IsFloatingPoint(dtype) ? 2.5 : 2));
          if (dtype == DType::kU8) {
            a.Set(i, static_cast<double>(i % 11));
            b.Set(i, static_cast<double>(i % 7));
          }
        }
        ReduceElements(dtype, op, out.bytes.data(), a.bytes.data(), b.bytes.data(), n);
        for (size_t i = 0; i < n; ++i) {
          double x = a.Get(i), y = b.Get(i), want = 0;
          switch (op) {
            case ReduceOp::kSum: want = x + y; break;
            case ReduceOp::kProd: want = x * y; break;
            case ReduceOp::kMin: want = std::min(x, y); break;
            case ReduceOp::kMax: want = std::max(x, y); break;
            default: break;
          }
          Buffer w(dtype, 1);
          w.Set(0, want);  // rounds like the kernel's f32 result does
          ASSERT_EQ(out.Get(i), w.Get(0)) << DTypeName(dtype) << " " << ReduceOpName(op)
                                          << " n=" << n << " i=" << i;
        }
      }
    }
  }
}

TEST(ReduceTest, Bf16RoundsToNearestEven) {
  // 1 + 2^-8 is exactly halfway between two bf16 values (1 and 1 + 2^-7): ties go to even.
  Buffer a(DType::kBF16, 1), b(DType::kBF16, 1), out(DType::kBF16, 1);
  a.Set(0, 1.0);
  b.Set(0, std::ldexp(1.0, -8));
  ReduceElements(DType::kBF16, ReduceOp::kSum, out.bytes.data(), a.bytes.data(),
                 b.bytes.data(), 1);
  EXPECT_EQ(out.Get(0), 1.0);
}

TEST(ReduceTest, ScaleDownDividesFloats) {
  Buffer x(DType::kF32, 3);
  x.Set(0, 3);
  x.Set(1, 6);
  x.Set(2, -9);
  ScaleDown(DType::kF32, x.bytes.data(), 3, 3);
  EXPECT_EQ(x.Get(0), 1);
  EXPECT_EQ(x.Get(1), 2);
  EXPECT_EQ(x.Get(2), -3);
}

}  // namespace
}  // namespace trident
