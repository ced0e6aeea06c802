// Communicator::SendRecv's default (the host backend's): a batch in which both ranks send and
// receive, listed in different orders on each side, lands by tag; a bad op fails the batch.
#include <thread>
#include <vector>

#include "comm/host/inproc.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "trident/communicator.h"
#include "../util/status_matchers.h"

namespace trident {
namespace {

using ::testing::HasSubstr;
using testing::StatusIs;

TEST(SendRecvTest, SymmetricExchangeLandsByTag) {
  InprocCommOptions options;
  options.size = 2;
  auto comms = NewInprocCommunicators(options);
  std::vector<std::thread> ranks;
  for (int r = 0; r < 2; ++r) {
    ranks.emplace_back([&, r] {
      Communicator& c = *comms[r];
      const int peer = 1 - r;
      std::vector<float> act(256, 10.0f + r), grad(256, 20.0f + r), got_act(256), got_grad(256);
      std::vector<P2POp> ops = {
          {P2POp::Kind::kSend, Tensor::Of(act.data(), act.size()), peer, 1},
          {P2POp::Kind::kSend, Tensor::Of(grad.data(), grad.size()), peer, 2},
          {P2POp::Kind::kRecv, Tensor::Of(got_act.data(), got_act.size()), peer, 1},
          {P2POp::Kind::kRecv, Tensor::Of(got_grad.data(), got_grad.size()), peer, 2}};
      if (r == 1) std::swap(ops[2], ops[3]);  // the other side lists them the other way round
      absl::Status s = c.SendRecv(ops)->Wait(absl::Now() + absl::Seconds(30));
      ASSERT_TRUE(s.ok()) << s;
      EXPECT_EQ(got_act, std::vector<float>(256, 10.0f + peer));
      EXPECT_EQ(got_grad, std::vector<float>(256, 20.0f + peer));
    });
  }
  for (auto& t : ranks) t.join();
}

TEST(SendRecvTest, ABadOpFailsTheBatch) {
  InprocCommOptions options;
  options.size = 2;
  auto comms = NewInprocCommunicators(options);
  std::vector<float> buf(4);
  auto work = comms[0]->SendRecv({{P2POp::Kind::kSend, Tensor::Of(buf.data(), 4), 7, 0}});
  EXPECT_THAT(work->Wait(absl::Now() + absl::Seconds(10)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("7")));
  EXPECT_TRUE(work->IsCompleted());
}

}  // namespace
}  // namespace trident
