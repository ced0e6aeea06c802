// FailureDetector with a fake clock: suspicion after the timeout, confirmation by the caller
// or by more silence, and no verdict for a heartbeat that is late but comes.
#include "health/detector.h"

#include <optional>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace trident::health {
namespace {

using ::testing::HasSubstr;
using State = FailureDetector::State;

class DetectorTest : public ::testing::Test {
 protected:
  absl::Time t0_ = absl::FromUnixSeconds(1000);
  absl::Time At(int ms) { return t0_ + absl::Milliseconds(ms); }
  FailureDetector d_{{.timeout = absl::Milliseconds(1000),
                      .confirm_window = absl::Milliseconds(1000)}};
  FailureDetector::ConfirmFn never_ = [](const std::string&) -> std::optional<FailureDetector::Confirmation> {
    return std::nullopt;
  };
};

TEST_F(DetectorTest, BeatingMemberStaysAlive) {
  d_.Watch("w0", At(0));
  for (int ms = 100; ms <= 5000; ms += 100) {
    d_.Observe("w0", ms / 100, At(ms));
    EXPECT_TRUE(d_.Check(At(ms), never_).empty()) << ms;
  }
  EXPECT_EQ(d_.state("w0"), State::kAlive);
}

TEST_F(DetectorTest, SilenceMakesASuspectAtTheTimeoutNotBefore) {
  d_.Watch("w1", At(0));
  d_.Observe("w1", 1, At(100));
  EXPECT_TRUE(d_.Check(At(1099), never_).empty());
  EXPECT_EQ(d_.state("w1"), State::kAlive);
  EXPECT_TRUE(d_.Check(At(1100), never_).empty());  // suspected, not yet dead
  EXPECT_EQ(d_.state("w1"), State::kSuspected);
}

TEST_F(DetectorTest, ConfirmationTurnsSuspicionIntoAVerdictAtOnce) {
  d_.Watch("w2", At(0));
  auto stopped = [](const std::string& m) -> std::optional<FailureDetector::Confirmation> {
    if (m == "w2") {
      return FailureDetector::Confirmation{FailureKind::kStopped, "its process is stopped (SIGSTOP?)"};
    }
    return std::nullopt;
  };
  EXPECT_TRUE(d_.Check(At(999), stopped).empty());  // not suspected yet: confirm is not asked
  auto v = d_.Check(At(1000), stopped);
  ASSERT_EQ(v.size(), 1u);
  EXPECT_EQ(v[0].member, "w2");
  EXPECT_THAT(v[0].cause, HasSubstr("no heartbeat for 1s"));
  EXPECT_THAT(v[0].cause, HasSubstr("stopped"));
  EXPECT_EQ(v[0].kind, FailureKind::kStopped);
  EXPECT_EQ(v[0].reporter, "agent");
  EXPECT_EQ(d_.state("w2"), State::kDead);
  EXPECT_TRUE(d_.Check(At(3000), stopped).empty());  // a verdict is given once
}

TEST_F(DetectorTest, UnconfirmedSuspicionNeedsTheConfirmWindow) {
  d_.Watch("w3", At(0));
  EXPECT_TRUE(d_.Check(At(1000), never_).empty());
  EXPECT_TRUE(d_.Check(At(1999), never_).empty());
  auto v = d_.Check(At(2000), never_);
  ASSERT_EQ(v.size(), 1u);
  EXPECT_THAT(v[0].cause, HasSubstr("still silent 1s later"));
}

TEST_F(DetectorTest, LateHeartbeatClearsSuspicionNoFalsePositive) {
  d_.Watch("w4", At(0));
  EXPECT_TRUE(d_.Check(At(1500), never_).empty());
  EXPECT_EQ(d_.state("w4"), State::kSuspected);
  d_.Observe("w4", 7, At(1900));  // a slow link: late, but alive
  EXPECT_TRUE(d_.Check(At(2600), never_).empty());
  EXPECT_EQ(d_.state("w4"), State::kAlive);
  // Silence is measured from the late beat.
  EXPECT_TRUE(d_.Check(At(2899), never_).empty());
  EXPECT_EQ(d_.state("w4"), State::kAlive);
}

TEST_F(DetectorTest, SameCounterIsNotABeat) {
  d_.Watch("w5", At(0));
  d_.Observe("w5", 3, At(100));
  d_.Observe("w5", 3, At(900));  // read again, unchanged: the member did not beat
  d_.Check(At(1100), never_);
  EXPECT_EQ(d_.state("w5"), State::kSuspected);
}

TEST_F(DetectorTest, PeerReportSuspectsAtOnceAndOnlyANewBeatClearsIt) {
  d_.Watch("w6", At(0));
  d_.Observe("w6", 1, At(50));
  d_.Suspect("w6", "transport error from rank 2", At(100));
  EXPECT_EQ(d_.state("w6"), State::kSuspected);
  d_.Observe("w6", 1, At(150));  // the same counter: no
  EXPECT_EQ(d_.state("w6"), State::kSuspected);
  auto v = d_.Check(At(1100), never_);
  ASSERT_EQ(v.size(), 1u);
  EXPECT_THAT(v[0].cause, HasSubstr("transport error from rank 2"));
}

TEST_F(DetectorTest, SecondObserverConfirmsThoughTheMemberStillBeats) {
  d_.Watch("w3", At(0));
  d_.Suspect("w3", "transport error: connection reset", At(100), "rank 1");
  d_.Observe("w3", 1, At(150));  // its process lives: the suspicion is cleared
  EXPECT_EQ(d_.state("w3"), State::kAlive);
  EXPECT_TRUE(d_.Check(At(200), never_).empty());
  d_.Suspect("w3", "transport error: connection reset", At(300), "rank 5");
  d_.Observe("w3", 2, At(350));
  auto v = d_.Check(At(400), never_);
  ASSERT_EQ(v.size(), 1u);
  EXPECT_EQ(v[0].member, "w3");
  EXPECT_THAT(v[0].cause, HasSubstr("confirmed by a second observer (rank 1, rank 5)"));
  EXPECT_EQ(v[0].kind, FailureKind::kUnreachable);
  EXPECT_EQ(v[0].reporter, "rank 1, rank 5");
  EXPECT_EQ(d_.state("w3"), State::kDead);
}

TEST_F(DetectorTest, OneObserverRepeatingOrReportsTooFarApartAreNoVerdict) {
  d_.Watch("w2", At(0));
  d_.Suspect("w2", "transport error", At(100), "rank 0");
  d_.Suspect("w2", "transport error", At(200), "rank 0");  // the same observer again
  d_.Observe("w2", 1, At(250));
  EXPECT_TRUE(d_.Check(At(300), never_).empty());
  // A second observer, but the first report is older than the confirm window.
  d_.Observe("w2", 2, At(1250));
  d_.Suspect("w2", "transport error", At(1300), "rank 4");
  d_.Observe("w2", 3, At(1350));
  EXPECT_TRUE(d_.Check(At(1400), never_).empty());
  EXPECT_EQ(d_.state("w2"), State::kAlive);
}

TEST_F(DetectorTest, NextCheckIsTheEarliestDeadline) {
  EXPECT_EQ(d_.NextCheck(), absl::InfiniteFuture());
  d_.Watch("a", At(0));
  d_.Watch("b", At(300));
  EXPECT_EQ(d_.NextCheck(), At(1000));
  d_.Check(At(1000), never_);  // a suspected; its verdict is due at 2000, b's suspicion at 1300
  EXPECT_EQ(d_.NextCheck(), At(1300));
  d_.Forget("b");
  EXPECT_EQ(d_.NextCheck(), At(2000));
}

}  // namespace
}  // namespace trident::health
