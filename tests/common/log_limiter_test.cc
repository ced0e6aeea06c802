// LogLimiter: one line per window, the rest summarised when the window ends.
#include "common/log_limiter.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace trident {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(LogLimiterTest, OneLinePerWindowThenASummary) {
  std::vector<std::string> lines;
  LogLimiter limiter(absl::Seconds(10), [&](const std::string& l) { lines.push_back(l); });
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  EXPECT_EQ(limiter.NextFlush(), absl::InfiniteFuture());
  for (int i = 0; i < 1000; ++i) {
    limiter.Event(t0 + absl::Milliseconds(i), "refused peer " + std::to_string(i));
  }
  ASSERT_THAT(lines, ElementsAre("refused peer 0"));
  EXPECT_EQ(limiter.NextFlush(), t0 + absl::Seconds(10));
  limiter.Flush(t0 + absl::Seconds(9));
  EXPECT_EQ(lines.size(), 1u);
  limiter.Flush(t0 + absl::Seconds(10));
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_THAT(lines[1], HasSubstr("999 more like it in 10s (the last: refused peer 999)"));
  EXPECT_EQ(limiter.NextFlush(), absl::InfiniteFuture());
  // A steady flood: one summary per window, not one line per event.
  for (int s = 0; s < 60; ++s) {
    for (int i = 0; i < 100; ++i) {
      limiter.Event(t0 + absl::Seconds(10 + s) + absl::Milliseconds(10 * i), "again");
    }
  }
  limiter.Flush(t0 + absl::Seconds(200));
  EXPECT_LE(lines.size(), 2u + 7u);
  EXPECT_EQ(limiter.total(), 1000 + 6000);
  // After a quiet window the next event is logged in full at once.
  limiter.Event(t0 + absl::Seconds(300), "later");
  EXPECT_EQ(lines.back(), "later");
}

}  // namespace
}  // namespace trident
