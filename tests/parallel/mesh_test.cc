// Mesh arithmetic against hand-written tables, bad layouts, and the groups built with Split.
#include "trident/parallel/mesh.h"

#include <atomic>

#include "comm/host/inproc.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "../comm/comm_test_util.h"

namespace trident {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(MeshTest, DefaultOrderKeepsTensorParallelRanksAdjacent) {
  auto mesh = Mesh::Create(8, {.tp = 2, .pp = 2, .dp = 2});
  ASSERT_TRUE(mesh.ok()) << mesh.status();
  // rank: (tp, pp, dp) for order tp-dp-pp, written out by hand.
  const MeshCoord want[8] = {{0, 0, 0}, {1, 0, 0}, {0, 0, 1}, {1, 0, 1},
                             {0, 1, 0}, {1, 1, 0}, {0, 1, 1}, {1, 1, 1}};
  for (int r = 0; r < 8; ++r) {
    EXPECT_EQ(mesh->CoordOf(r), want[r]) << "rank " << r;
    EXPECT_EQ(mesh->RankOf(want[r]), r);
  }
  EXPECT_THAT(mesh->GroupRanks(Dim::kTp, 5), ElementsAre(4, 5));
  EXPECT_THAT(mesh->GroupRanks(Dim::kDp, 5), ElementsAre(5, 7));
  EXPECT_THAT(mesh->GroupRanks(Dim::kPp, 5), ElementsAre(1, 5));
  EXPECT_EQ(mesh->PipelineNext(1), 5);
  EXPECT_EQ(mesh->PipelineNext(5), -1);
  EXPECT_EQ(mesh->PipelinePrev(5), 1);
  EXPECT_EQ(mesh->PipelinePrev(1), -1);
}

TEST(MeshTest, OtherOrders) {
  // pp fastest, then tp, then dp: rank = pp + 2 * (tp + 3 * dp) with pp=2, tp=3, dp=2.
  auto mesh = Mesh::Create(12, {.tp = 3, .pp = 2, .dp = 2, .order = "pp-tp-dp"});
  ASSERT_TRUE(mesh.ok()) << mesh.status();
  EXPECT_EQ(mesh->CoordOf(0), (MeshCoord{0, 0, 0}));
  EXPECT_EQ(mesh->CoordOf(1), (MeshCoord{0, 1, 0}));
  EXPECT_EQ(mesh->CoordOf(2), (MeshCoord{1, 0, 0}));
  EXPECT_EQ(mesh->CoordOf(7), (MeshCoord{0, 1, 1}));
  EXPECT_EQ(mesh->CoordOf(11), (MeshCoord{2, 1, 1}));
  EXPECT_THAT(mesh->GroupRanks(Dim::kTp, 7), ElementsAre(7, 9, 11));
  EXPECT_THAT(mesh->GroupRanks(Dim::kPp, 7), ElementsAre(6, 7));
  EXPECT_THAT(mesh->GroupRanks(Dim::kDp, 7), ElementsAre(1, 7));
  // dp fastest: rank = dp + 4 * (tp + 1 * pp) with dp=4, tp=1, pp=1... a 1-D mesh.
  auto dp_only = Mesh::Create(4, {.dp = 4, .order = "dp-tp-pp"});
  ASSERT_TRUE(dp_only.ok());
  EXPECT_EQ(dp_only->CoordOf(3), (MeshCoord{0, 0, 3}));
  EXPECT_THAT(dp_only->GroupRanks(Dim::kDp, 0), ElementsAre(0, 1, 2, 3));
}

TEST(MeshTest, BadLayoutsAreClearErrors) {
  EXPECT_THAT(Mesh::Create(8, {.tp = 2, .pp = 2, .dp = 1}).status().message(),
              HasSubstr("tp=2 x pp=2 x dp=1 = 4 ranks, but the world has 8"));
  EXPECT_EQ(Mesh::Create(8, {.tp = 2, .pp = 2, .dp = 1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Mesh::Create(4, {.tp = 0, .pp = 4}).status().message(),
              HasSubstr("tp size is 0"));
  EXPECT_THAT(Mesh::Create(4, {.tp = 4, .order = "tp-tp-pp"}).status().message(),
              HasSubstr("must name tp, dp and pp once each"));
  EXPECT_THAT(Mesh::Create(4, {.tp = 4, .order = "tp-dp"}).status().message(),
              HasSubstr("must name tp, dp and pp once each"));
}

TEST(MeshTest, GroupsBuiltWithSplitMatchTheArithmetic) {
  InprocCommOptions options;
  options.size = 8;
  auto comms = NewInprocCommunicators(options);
  auto mesh = Mesh::Create(8, {.tp = 2, .pp = 2, .dp = 2});
  ASSERT_TRUE(mesh.ok());
  std::atomic<int> wrong{0};
  testing::RunRanks(comms, [&](int r, Communicator& world) {
    auto groups = MeshGroups::Build(world, *mesh);
    ASSERT_TRUE(groups.ok()) << groups.status();
    for (Dim d : {Dim::kTp, Dim::kPp, Dim::kDp}) {
      Communicator& g = groups->Group(d);
      // Gathering world ranks over the group gives exactly GroupRanks, in order.
      int64_t mine = r;
      std::vector<int64_t> all(g.size());
      absl::Status s = g.AllGather(Tensor::Of(&mine, 1), Tensor::Of(all.data(), g.size()))
                           ->Wait(DeadlineIn(absl::Seconds(20)));
      std::vector<int> want = mesh->GroupRanks(d, r);
      if (!s.ok() || all != std::vector<int64_t>(want.begin(), want.end()) ||
          g.rank() != groups->coord()[d]) {
        ++wrong;
      }
    }
  });
  EXPECT_EQ(wrong.load(), 0);
}

}  // namespace
}  // namespace trident
