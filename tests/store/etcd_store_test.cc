// EtcdStore against a real etcd that the test starts on 127.0.0.1 (tests/store/etcd_test_util.h):
// the store contract every backend passes (store_conformance.h), then what is particular to etcd:
// URLs, an unreachable cluster, leases (kept, abandoned, revoked, lost when etcd dies), and a
// 3-member cluster whose leader is killed while the store is in use. Skips, saying why, when no
// etcd binary is installed.
#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "store_conformance.h"

namespace trident {
namespace {

class StopEtcdAtExit : public ::testing::Environment {
 public:
  void TearDown() override { StopSharedEtcd(); }
};
const auto* const kStopEtcd = ::testing::AddGlobalTestEnvironment(new StopEtcdAtExit);

INSTANTIATE_TEST_SUITE_P(Etcd, StoreTest, ::testing::Values(Backend::kEtcd),
                         [](const ::testing::TestParamInfo<Backend>&) { return "Etcd"; });

#define SKIP_WITHOUT_ETCD()                                                     \
  do {                                                                          \
    if (testing::FindEtcd().empty()) GTEST_SKIP() << "no etcd binary on PATH";  \
  } while (0)

std::unique_ptr<EtcdStore> Connect(const std::vector<std::string>& endpoints,
                                   const std::string& job) {
  absl::StatusOr<std::unique_ptr<EtcdStore>> store =
      NewEtcdStore({.endpoints = endpoints, .job = job}, Soon());
  EXPECT_THAT(store, IsOk());
  return store.ok() ? *std::move(store) : nullptr;
}

// Polls until `done` or the deadline (for what etcd does on its own clock: lease expiry).
template <typename F>
bool Eventually(F done, absl::Duration within) {
  absl::Time deadline = absl::Now() + within;
  while (absl::Now() < deadline) {
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return done();
}

TEST(EtcdUrlTest, ParsesEndpointsAndJob) {
  absl::StatusOr<EtcdStoreOptions> one = ParseEtcdUrl("etcd://10.0.0.1:2379/job7");
  ASSERT_THAT(one, IsOk());
  EXPECT_THAT(one->endpoints, ElementsAre("10.0.0.1:2379"));
  EXPECT_EQ(one->job, "job7");
  absl::StatusOr<EtcdStoreOptions> three = ParseEtcdUrl("etcd://a:1,b:2,[::1]:3/j");
  ASSERT_THAT(three, IsOk());
  EXPECT_THAT(three->endpoints, ElementsAre("a:1", "b:2", "[::1]:3"));
}

TEST(EtcdUrlTest, RejectsMalformedUrlsSayingWhy) {
  struct Case {
    const char* url;
    const char* why;
  } cases[] = {
      {"etcd://host:2379", "names no job"},
      {"etcd://host:2379/", "names no job"},
      {"etcd://host:2379/a/b", "'/' in its job"},
      {"etcd://host/job", "without host:port"},
      {"etcd://host:x/job", "no valid port"},
      {"etcd://a:1,,b:2/job", "empty endpoint"},
  };
  for (const Case& c : cases) {
    EXPECT_THAT(ParseEtcdUrl(c.url),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.why)))
        << c.url;
    // ConnectStore names every accepted form too.
    EXPECT_THAT(ConnectStore(c.url, kToken, Soon()),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         ::testing::AllOf(HasSubstr(c.why), HasSubstr("tcp://host:port"))))
        << c.url;
  }
}

TEST(EtcdStoreTest, UnreachableEtcdIsUnavailableWithinTheDeadlineNamingEachEndpoint) {
  const std::string a = absl::StrCat("127.0.0.1:", testing::FreeLoopbackPort());
  const std::string b = absl::StrCat("127.0.0.1:", testing::FreeLoopbackPort());
  absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<Store>> store =
      ConnectStore(absl::StrCat("etcd://", a, ",", b, "/job"), "",
                   start + absl::Milliseconds(500));
  absl::Duration took = absl::Now() - start;
  EXPECT_THAT(store, StatusIs(absl::StatusCode::kUnavailable,
                              ::testing::AllOf(HasSubstr(a), HasSubstr(b),
                                               HasSubstr("check that etcd runs"))));
  EXPECT_LT(took, absl::Milliseconds(500) + absl::Milliseconds(500));
}

TEST(EtcdStoreTest, JobsDoNotSeeEachOthersKeys) {
  SKIP_WITHOUT_ETCD();
  std::string why;
  testing::EtcdCluster* etcd = SharedEtcd(&why);
  ASSERT_NE(etcd, nullptr) << why;
  std::unique_ptr<EtcdStore> a = Connect(etcd->endpoints(), "jobA");
  std::unique_ptr<EtcdStore> ab = Connect(etcd->endpoints(), "jobAB");
  ASSERT_NE(a, nullptr);
  ASSERT_NE(ab, nullptr);
  ASSERT_THAT(a->Set("k", "1", Soon()), IsOk());
  ASSERT_THAT(ab->Set("k2", "2", Soon()), IsOk());
  EXPECT_THAT(ab->TryGet("k", Soon()), StatusIs(absl::StatusCode::kNotFound, HasSubstr("'k'")));
  EXPECT_THAT(a->ListPrefix("", Soon()), IsOkAndHolds(ElementsAre("k")));
}

TEST(EtcdStoreTest, LeasedKeyLivesWhileRenewedAndGoesWhenAbandonedOrRevoked) {
  SKIP_WITHOUT_ETCD();
  std::string why;
  testing::EtcdCluster* etcd = SharedEtcd(&why);
  ASSERT_NE(etcd, nullptr) << why;
  std::unique_ptr<EtcdStore> store = Connect(etcd->endpoints(), "leases");
  ASSERT_NE(store, nullptr);

  // Kept alive: the key outlives several ttls.
  absl::StatusOr<std::unique_ptr<EtcdLease>> kept =
      store->SetWhileAlive("agent/0", "alive", absl::Seconds(1), Soon());
  ASSERT_THAT(kept, IsOk());
  EXPECT_EQ((*kept)->ttl(), absl::Seconds(1));
  absl::SleepFor(absl::Milliseconds(2500));  // 2.5 ttls: only renewals keep the key
  EXPECT_THAT(store->TryGet("agent/0", Soon()), IsOkAndHolds("alive"));
  EXPECT_FALSE((*kept)->lost()) << (*kept)->status();

  // Abandoned (the agent died): etcd deletes the key after the ttl, not before it is told to.
  (*kept)->Abandon();
  EXPECT_TRUE(Eventually([&] { return absl::IsNotFound(store->TryGet("agent/0", Soon()).status()); },
                         absl::Seconds(4)))
      << "the abandoned lease's key was still there 4 s after a 1 s ttl";

  // Destroyed: revoked, the key goes at once.
  absl::StatusOr<std::unique_ptr<EtcdLease>> revoked =
      store->SetWhileAlive("agent/1", "alive", absl::Seconds(30), Soon());
  ASSERT_THAT(revoked, IsOk());
  EXPECT_THAT(store->TryGet("agent/1", Soon()), IsOkAndHolds("alive"));
  revoked->reset();
  EXPECT_THAT(store->TryGet("agent/1", Soon()),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("agent/1")));

  EXPECT_THAT(store->GrantLease(absl::Milliseconds(300), Soon()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("one second")));
}

TEST(EtcdStoreTest, LeaseIsLostWhenEtcdGoesAway) {
  SKIP_WITHOUT_ETCD();
  absl::StatusOr<std::unique_ptr<testing::EtcdCluster>> etcd = testing::EtcdCluster::Start(1);
  ASSERT_THAT(etcd, IsOk());
  std::unique_ptr<EtcdStore> store = Connect((*etcd)->endpoints(), "lost");
  ASSERT_NE(store, nullptr);
  absl::StatusOr<std::unique_ptr<EtcdLease>> lease =
      store->SetWhileAlive("agent/0", "alive", absl::Seconds(1), Soon());
  ASSERT_THAT(lease, IsOk());
  (*etcd)->Kill(0);
  EXPECT_TRUE(Eventually([&] { return (*lease)->lost(); }, absl::Seconds(5)));
  EXPECT_THAT((*lease)->status(),
              StatusIs(absl::StatusCode::kUnavailable,
                       ::testing::AllOf(HasSubstr("expired"), HasSubstr("register again"))));
  // Calls on a dead etcd end at their deadline with the endpoint named.
  absl::Time start = absl::Now();
  EXPECT_THAT(store->Set("k", "v", start + absl::Milliseconds(300)),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr((*etcd)->endpoints()[0])));
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
}

TEST(EtcdStoreTest, ThreeMemberClusterSurvivesItsLeaderBeingKilled) {
  SKIP_WITHOUT_ETCD();
  absl::StatusOr<std::unique_ptr<testing::EtcdCluster>> started = testing::EtcdCluster::Start(3);
  ASSERT_THAT(started, IsOk());
  testing::EtcdCluster& etcd = **started;
  const int leader = etcd.Leader();
  ASSERT_GE(leader, 0);
  // The leader first in the URL, so it is the endpoint in use when it dies.
  std::vector<std::string> endpoints = {etcd.endpoints()[leader]};
  for (int i = 0; i < 3; ++i) {
    if (i != leader) endpoints.push_back(etcd.endpoints()[i]);
  }
  std::unique_ptr<EtcdStore> store = Connect(endpoints, "failover");
  ASSERT_NE(store, nullptr);
  ASSERT_THAT(store->Set("before", "1", Soon()), IsOk());
  EXPECT_THAT(store->Add("n", 1, Soon()), IsOkAndHolds(1));
  EXPECT_EQ(store->preferred_endpoint(), etcd.endpoints()[leader]);
  absl::StatusOr<std::unique_ptr<EtcdLease>> lease =
      store->SetWhileAlive("agent/0", "alive", absl::Seconds(5), Soon());
  ASSERT_THAT(lease, IsOk());

  // A waiter blocked in a watch on the leader when it dies.
  absl::Status waited = absl::UnknownError("not run");
  std::unique_ptr<EtcdStore> waiter_store = Connect(endpoints, "failover");
  ASSERT_NE(waiter_store, nullptr);
  std::thread waiter([&] { waited = waiter_store->Wait({"after"}, Soon()); });
  absl::SleepFor(absl::Milliseconds(100));  // let it reach its watch; it must finish either way

  etcd.Kill(leader);

  // Every operation goes on through the other members, within its deadline.
  EXPECT_THAT(store->Get("before", Soon()), IsOkAndHolds("1"));
  EXPECT_THAT(store->Set("after", "2", Soon()), IsOk());
  EXPECT_THAT(store->Add("n", 1, Soon()), IsOkAndHolds(2));
  EXPECT_THAT(store->CompareSet("c", "", "x", Soon()), IsOkAndHolds("x"));
  EXPECT_NE(store->preferred_endpoint(), etcd.endpoints()[leader]);
  waiter.join();
  EXPECT_THAT(waited, IsOk());
  // The survivors elected a new leader, and the lease is still renewed through them.
  EXPECT_TRUE(Eventually([&] { return etcd.Leader() >= 0 && etcd.Leader() != leader; },
                         absl::Seconds(10)));
  absl::SleepFor(absl::Seconds(1));
  EXPECT_FALSE((*lease)->lost()) << (*lease)->status();
  EXPECT_THAT(store->TryGet("agent/0", Soon()), IsOkAndHolds("alive"));
  // A client that knows only a survivor sees everything.
  std::unique_ptr<EtcdStore> survivor = Connect({endpoints[1]}, "failover");
  ASSERT_NE(survivor, nullptr);
  EXPECT_THAT(survivor->ListPrefix("", Soon()),
              IsOkAndHolds(ElementsAre("after", "agent/0", "before", "c", "n")));
}

}  // namespace
}  // namespace trident
