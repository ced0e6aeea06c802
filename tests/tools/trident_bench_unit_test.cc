// trident-bench's size ladder: each measured size is a distinct buffer.
#include <vector>

#include "bench.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace trident::bench {
namespace {

using ::testing::ElementsAre;

// Defect 10 of issue 17: --min-bytes 3 --max-bytes 7 printed the same 4-byte row twice.
TEST(MeasuredSizesTest, SizesThatRoundToTheSameBufferAreMeasuredOnce) {
  EXPECT_THAT(MeasuredSizes(Collective::kAllReduce, DType::kF32, 2, 3, 7), ElementsAre(3));
  EXPECT_THAT(SizeRange(3, 7), ElementsAre(3, 6));
  // Blocked collectives round to one element per rank: 4 ranks x f32 is 16 bytes.
  EXPECT_THAT(MeasuredSizes(Collective::kAllGather, DType::kF32, 4, 1, 64), ElementsAre(1, 32, 64));
  EXPECT_THAT(MeasuredSizes(Collective::kAllReduce, DType::kI8, 2, 1, 8), ElementsAre(1, 2, 4, 8));
}

}  // namespace
}  // namespace trident::bench
