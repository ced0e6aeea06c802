// The heartbeat thread on a MemoryStore: it beats, and a stall check stops it (saying why in
// the store) until the check clears.
#include "health/heartbeat.h"

#include <atomic>
#include <functional>

#include "absl/strings/numbers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "health/membership.h"

namespace trident::health {
namespace {

using ::testing::HasSubstr;

// The member's counter in the store (0 before the first beat).
int64_t Counter(Store& store, const std::string& member) {
  absl::StatusOr<std::string> v = store.TryGet(HeartbeatKey(member), absl::Now() + absl::Seconds(1));
  int64_t n = 0;
  return v.ok() && absl::SimpleAtoi(*v, &n) ? n : 0;
}

// Polls `done` until it holds or 10 s pass.
bool Eventually(const std::function<bool()>& done) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!done()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(2));
  }
  return true;
}

TEST(HeartbeatTest, BeatsUntilStalledRecordsWhyThenBeatsAgain) {
  std::shared_ptr<Store> store = NewMemoryStore();
  std::atomic<bool> stuck{false};
  Heartbeat hb(store, "w1", absl::Milliseconds(2), [&]() -> std::optional<std::string> {
    if (stuck.load()) return std::string("the training thread made no progress for 5s");
    return std::nullopt;
  });
  ASSERT_TRUE(Eventually([&] { return Counter(*store, "w1") >= 3; }));

  stuck = true;
  ASSERT_TRUE(Eventually([&] {
    return store->TryGet(StalledKey("w1"), absl::Now() + absl::Seconds(1)).ok();
  }));
  EXPECT_THAT(*store->Get(StalledKey("w1"), absl::Now() + absl::Seconds(1)),
              HasSubstr("made no progress for 5s"));
  // Silent from now on: the counter holds still over many intervals.
  const int64_t frozen = Counter(*store, "w1");
  const int64_t beats_at_freeze = hb.beats();
  absl::SleepFor(absl::Milliseconds(50));  // 25 intervals; no beat may land in them
  EXPECT_EQ(Counter(*store, "w1"), frozen);
  EXPECT_EQ(hb.beats(), beats_at_freeze);

  stuck = false;
  EXPECT_TRUE(Eventually([&] { return Counter(*store, "w1") > frozen; }));
}

}  // namespace
}  // namespace trident::health
