// The store contract, one parameterised suite run on every backend: store_test instantiates
// it for memory, file and tcp, etcd_store_test for etcd (against a real etcd it starts).
// Included by exactly one file per test binary.
#ifndef TRIDENT_TESTS_STORE_STORE_CONFORMANCE_H_
#define TRIDENT_TESTS_STORE_STORE_CONFORMANCE_H_

#include "trident/store.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "spdlog/sinks/ostream_sink.h"
#include "spdlog/spdlog.h"
#include "store/tcp_store_protocol.h"
#include "store/etcd_store.h"
#include "etcd_test_util.h"
#include "../util/status_matchers.h"

namespace trident {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::StatusIs;
using ::testing::IsEmpty;
using ::testing::Not;

MATCHER(IsOk, "") {
  const absl::Status& s = testing::StatusOf(arg);
  *result_listener << "status is " << s;
  return s.ok();
}

MATCHER_P(IsOkAndHolds, matcher, "") {
  if (!arg.ok()) {
    *result_listener << "status is " << arg.status();
    return false;
  }
  return ::testing::ExplainMatchResult(matcher, *arg, result_listener);
}

absl::Time Soon() { return DeadlineIn(absl::Seconds(10)); }

constexpr char kToken[] = "s3cret-token";

std::string MakeTempDir() {
  std::string tmpl = ::testing::TempDir() + "/trident-store-XXXXXX";
  char* dir = mkdtemp(tmpl.data());
  EXPECT_NE(dir, nullptr) << "mkdtemp failed: errno " << errno;
  return tmpl;
}

std::unique_ptr<TcpStoreServer> StartServer(int port = 0, std::string token = kToken) {
  TcpStoreServerOptions options;
  options.port = port;
  options.job_token = std::move(token);
  absl::StatusOr<std::unique_ptr<TcpStoreServer>> server = StartTcpStoreServer(options);
  EXPECT_THAT(server, IsOk());
  return server.ok() ? *std::move(server) : nullptr;
}

std::unique_ptr<Store> Client(const TcpStoreServer& server, std::string token = kToken) {
  absl::StatusOr<std::unique_ptr<Store>> store =
      NewTcpStore("127.0.0.1", server.port(), std::move(token), Soon());
  EXPECT_THAT(store, IsOk());
  return store.ok() ? *std::move(store) : nullptr;
}

// ---------------------------------------------------------------------------------------------
// The same contract on every backend.

enum class Backend { kMemory, kFile, kTcp, kEtcd };

// One single-member etcd for the whole test binary (each test uses its own job, so its own key
// range); nullptr with the reason when none can run. StopSharedEtcd (etcd_store_test's global
// environment) stops it and removes its data.
absl::StatusOr<std::unique_ptr<testing::EtcdCluster>>& SharedEtcdSlot() {
  static auto* slot = new absl::StatusOr<std::unique_ptr<testing::EtcdCluster>>(
      absl::UnavailableError("not started"));
  return *slot;
}
testing::EtcdCluster* SharedEtcd(std::string* why) {
  static bool started = false;
  if (!started) {
    started = true;
    SharedEtcdSlot() = testing::EtcdCluster::Start(1);
  }
  if (!SharedEtcdSlot().ok()) {
    *why = std::string(SharedEtcdSlot().status().message());
    return nullptr;
  }
  return SharedEtcdSlot().value().get();
}
[[maybe_unused]] void StopSharedEtcd() { SharedEtcdSlot() = absl::UnavailableError("stopped"); }

class StoreTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    switch (GetParam()) {
      case Backend::kMemory:
        memory_ = NewMemoryStore();
        break;
      case Backend::kFile:
        dir_ = MakeTempDir();
        break;
      case Backend::kTcp:
        server_ = StartServer();
        ASSERT_NE(server_, nullptr);
        break;
      case Backend::kEtcd: {
        std::string why;
        etcd_ = SharedEtcd(&why);
        if (etcd_ == nullptr) GTEST_SKIP() << "no etcd: " << why;
        static int jobs = 0;
        etcd_url_ = etcd_->Url(absl::StrCat("conformance-", getpid(), "-", ++jobs));
        break;
      }
    }
    store_ = NewHandle();
    ASSERT_NE(store_, nullptr);
  }

  void TearDown() override {
    store_.reset();
    memory_.reset();
    server_.reset();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  // Another handle on the same data: a second client, a second FileStore on the directory.
  std::shared_ptr<Store> NewHandle() {
    switch (GetParam()) {
      case Backend::kMemory:
        return memory_;
      case Backend::kFile: {
        absl::StatusOr<std::unique_ptr<Store>> store = NewFileStore(dir_);
        EXPECT_THAT(store, IsOk());
        return store.ok() ? std::shared_ptr<Store>(*std::move(store)) : nullptr;
      }
      case Backend::kTcp:
        return Client(*server_);
      case Backend::kEtcd: {
        absl::StatusOr<std::unique_ptr<Store>> store = ConnectStore(etcd_url_, kToken, Soon());
        EXPECT_THAT(store, IsOk());
        return store.ok() ? std::shared_ptr<Store>(*std::move(store)) : nullptr;
      }
    }
    return nullptr;
  }

  std::shared_ptr<Store> memory_;
  std::string dir_;
  std::unique_ptr<TcpStoreServer> server_;
  std::shared_ptr<Store> store_;
  testing::EtcdCluster* etcd_ = nullptr;
  std::string etcd_url_;
};

TEST_P(StoreTest, SetThenGet) {
  ASSERT_THAT(store_->Set("a", "1", Soon()), IsOk());
  EXPECT_THAT(store_->Get("a", Soon()), IsOkAndHolds("1"));
  ASSERT_THAT(store_->Set("a", "22", Soon()), IsOk());
  EXPECT_THAT(store_->Get("a", Soon()), IsOkAndHolds("22"));
  EXPECT_THAT(store_->TryGet("a", Soon()), IsOkAndHolds("22"));
  // Empty and binary values, and keys that are not file-name safe.
  ASSERT_THAT(store_->Set("empty", "", Soon()), IsOk());
  EXPECT_THAT(store_->Get("empty", Soon()), IsOkAndHolds(""));
  const std::string binary("x\0y\xff\n", 5);
  const std::string odd_key = std::string("dir/../sub key%41\xff\0.", 20);
  ASSERT_THAT(store_->Set(odd_key, binary, Soon()), IsOk());
  EXPECT_THAT(store_->Get(odd_key, Soon()), IsOkAndHolds(binary));
  EXPECT_THAT(store_->ListPrefix("dir/", Soon()), IsOkAndHolds(ElementsAre(odd_key)));
  // Another handle sees the same data.
  EXPECT_THAT(NewHandle()->Get("a", Soon()), IsOkAndHolds("22"));
}

TEST_P(StoreTest, LargeValueRoundTrips) {
  std::string value(4 << 20, '\0');
  for (size_t i = 0; i < value.size(); ++i) value[i] = static_cast<char>(i * 131 + (i >> 13));
  ASSERT_THAT(store_->Set("big", value, Soon()), IsOk());
  EXPECT_THAT(NewHandle()->Get("big", Soon()), IsOkAndHolds(value));
}

TEST_P(StoreTest, GetWaitsForALaterSet) {
  std::shared_ptr<Store> other = NewHandle();
  absl::Notification started;
  absl::StatusOr<std::string> got;
  std::thread getter([&] {
    started.Notify();
    got = other->Get("late", Soon());
  });
  started.WaitForNotification();
  absl::SleepFor(absl::Milliseconds(30));  // let the Get start waiting; the result holds either way
  ASSERT_THAT(store_->Set("late", "here", Soon()), IsOk());
  getter.join();
  EXPECT_THAT(got, IsOkAndHolds("here"));
}

TEST_P(StoreTest, GetTimesOutNamingTheKey) {
  absl::Time start = absl::Now();
  absl::Duration timeout = absl::Milliseconds(200);
  absl::StatusOr<std::string> got = store_->Get("missing/key", start + timeout);
  absl::Duration took = absl::Now() - start;
  EXPECT_THAT(got, StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("missing/key")));
  EXPECT_GE(took, timeout - absl::Milliseconds(1));
  EXPECT_LT(took, timeout + absl::Seconds(1));
}

TEST_P(StoreTest, TryGetOfAnAbsentKeyIsNotFound) {
  EXPECT_THAT(store_->TryGet("nope", Soon()),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("nope")));
}

TEST_P(StoreTest, AddFromManyThreadsSumsExactly) {
  EXPECT_THAT(store_->Add("n", 5, Soon()), IsOkAndHolds(5));
  EXPECT_THAT(store_->Add("n", -7, Soon()), IsOkAndHolds(-2));
  EXPECT_THAT(store_->Get("n", Soon()), IsOkAndHolds("-2"));

  constexpr int kThreads = 4;
  constexpr int kAdds = 50;
  std::vector<std::shared_ptr<Store>> handles;
  for (int t = 0; t < kThreads; ++t) handles.push_back(t % 2 == 0 ? store_ : NewHandle());
  std::vector<std::vector<int64_t>> seen(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kAdds; ++i) {
        absl::StatusOr<int64_t> v = handles[t]->Add("counter", 1, Soon());
        ASSERT_THAT(v, IsOk());
        seen[t].push_back(*v);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_THAT(store_->Get("counter", Soon()), IsOkAndHolds(absl::StrCat(kThreads * kAdds)));
  // Atomic: every Add saw a distinct value.
  std::set<int64_t> all;
  for (const auto& s : seen) all.insert(s.begin(), s.end());
  EXPECT_EQ(all.size(), static_cast<size_t>(kThreads * kAdds));
}

TEST_P(StoreTest, AddOnANonIntegerIsInvalid) {
  ASSERT_THAT(store_->Set("word", "abc", Soon()), IsOk());
  EXPECT_THAT(store_->Add("word", 1, Soon()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not an integer")));
  EXPECT_THAT(store_->Get("word", Soon()), IsOkAndHolds("abc"));
}

TEST_P(StoreTest, CompareSetSemantics) {
  // An absent key equals "".
  EXPECT_THAT(store_->CompareSet("c", "", "one", Soon()), IsOkAndHolds("one"));
  // A mismatch leaves the value and returns it.
  EXPECT_THAT(store_->CompareSet("c", "wrong", "two", Soon()), IsOkAndHolds("one"));
  EXPECT_THAT(store_->Get("c", Soon()), IsOkAndHolds("one"));
  EXPECT_THAT(store_->CompareSet("c", "one", "two", Soon()), IsOkAndHolds("two"));
  // A mismatch on an absent key creates nothing.
  EXPECT_THAT(store_->CompareSet("absent", "x", "y", Soon()), IsOkAndHolds(""));
  EXPECT_THAT(store_->TryGet("absent", Soon()),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("absent")));
}

TEST_P(StoreTest, OnlyOneCompareSetRacerWins) {
  constexpr int kRacers = 6;
  std::vector<std::shared_ptr<Store>> handles;
  for (int i = 0; i < kRacers; ++i) handles.push_back(NewHandle());
  std::vector<std::string> results(kRacers);
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kRacers; ++i) {
    threads.emplace_back([&, i] {
      ready.fetch_add(1);
      while (ready.load() < kRacers) {
      }
      absl::StatusOr<std::string> r =
          handles[i]->CompareSet("leader", "", absl::StrCat("rank", i), Soon());
      ASSERT_THAT(r, IsOk());
      results[i] = *r;
    });
  }
  for (std::thread& t : threads) t.join();
  int winners = 0;
  for (int i = 0; i < kRacers; ++i) {
    if (results[i] == absl::StrCat("rank", i)) ++winners;
    EXPECT_EQ(results[i], results[0]) << "every racer sees the one winner";
  }
  EXPECT_EQ(winners, 1);
  EXPECT_THAT(store_->Get("leader", Soon()), IsOkAndHolds(results[0]));
}

TEST_P(StoreTest, WaitForSeveralKeys) {
  EXPECT_THAT(store_->Wait({}, Soon()), IsOk());
  std::shared_ptr<Store> other = NewHandle();
  absl::Status waited = absl::UnknownError("not run");
  std::thread waiter([&] { waited = other->Wait({"w/1", "w/2", "w/3"}, Soon()); });
  for (const char* key : {"w/2", "w/1", "w/3"}) ASSERT_THAT(store_->Set(key, "x", Soon()), IsOk());
  waiter.join();
  EXPECT_THAT(waited, IsOk());
}

TEST_P(StoreTest, WaitTimeoutNamesOnlyTheMissingKeys) {
  ASSERT_THAT(store_->Set("here", "1", Soon()), IsOk());
  absl::Time start = absl::Now();
  absl::Status status = store_->Wait({"here", "gone/a", "gone/b"}, start + absl::Milliseconds(200));
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(200) + absl::Seconds(1));
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("gone/a")));
  EXPECT_THAT(status.message(), HasSubstr("gone/b"));
  EXPECT_THAT(status.message(), Not(HasSubstr("'here'")));
}

TEST_P(StoreTest, Delete) {
  EXPECT_THAT(store_->Delete("d", Soon()), IsOkAndHolds(false));
  ASSERT_THAT(store_->Set("d", "1", Soon()), IsOk());
  EXPECT_THAT(store_->Delete("d", Soon()), IsOkAndHolds(true));
  EXPECT_THAT(store_->TryGet("d", Soon()), StatusIs(absl::StatusCode::kNotFound, HasSubstr("'d'")));
  EXPECT_THAT(store_->Delete("d", Soon()), IsOkAndHolds(false));
}

TEST_P(StoreTest, ListPrefixIsSorted) {
  for (const char* key : {"b/2", "a/1", "b/10", "b/1", "c", "b"}) {
    ASSERT_THAT(store_->Set(key, "v", Soon()), IsOk());
  }
  EXPECT_THAT(store_->ListPrefix("b/", Soon()), IsOkAndHolds(ElementsAre("b/1", "b/10", "b/2")));
  EXPECT_THAT(store_->ListPrefix("", Soon()),
              IsOkAndHolds(ElementsAre("a/1", "b", "b/1", "b/10", "b/2", "c")));
  EXPECT_THAT(store_->ListPrefix("zzz", Soon()), IsOkAndHolds(IsEmpty()));
}

TEST_P(StoreTest, PrefixStoresAreIsolated) {
  std::unique_ptr<Store> job1 = NewPrefixStore("job1/", store_);
  std::unique_ptr<Store> job2 = NewPrefixStore("job2/", NewHandle());
  ASSERT_THAT(job1->Set("k", "1", Soon()), IsOk());
  EXPECT_THAT(job2->TryGet("k", Soon()), StatusIs(absl::StatusCode::kNotFound, HasSubstr("k")));
  EXPECT_THAT(store_->Get("job1/k", Soon()), IsOkAndHolds("1"));
  EXPECT_THAT(job1->Add("n", 2, Soon()), IsOkAndHolds(2));
  EXPECT_THAT(job2->Add("n", 3, Soon()), IsOkAndHolds(3));
  EXPECT_THAT(job1->CompareSet("c", "", "x", Soon()), IsOkAndHolds("x"));
  EXPECT_THAT(job1->Wait({"k", "n", "c"}, Soon()), IsOk());
  EXPECT_THAT(job2->Wait({"k"}, DeadlineIn(absl::Milliseconds(50))),
              StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("job2/k")));
  EXPECT_THAT(job1->ListPrefix("", Soon()), IsOkAndHolds(ElementsAre("c", "k", "n")));
  EXPECT_THAT(job2->ListPrefix("", Soon()), IsOkAndHolds(ElementsAre("n")));
  EXPECT_THAT(job1->Delete("k", Soon()), IsOkAndHolds(true));
  EXPECT_THAT(store_->TryGet("job1/k", Soon()),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("job1/k")));
  // The caller's key is validated on its own: "" is empty even under a prefix.
  EXPECT_THAT(job1->Set("", "v", Soon()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty")));
}

TEST_P(StoreTest, InvalidKeysAndValues) {
  const std::string max_key(Store::kMaxKeyBytes, 'k');
  const std::string long_key(Store::kMaxKeyBytes + 1, 'k');
  const std::string long_value(Store::kMaxValueBytes + 1, 'v');
  auto invalid = [](absl::string_view what) {
    return StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(std::string(what)));
  };
  // Checked before any I/O: with the server gone these still say kInvalidArgument.
  if (server_ != nullptr) server_->Shutdown();
  EXPECT_THAT(store_->Set("", "v", Soon()), invalid("empty"));
  EXPECT_THAT(store_->Get("", Soon()), invalid("empty"));
  EXPECT_THAT(store_->TryGet("", Soon()), invalid("empty"));
  EXPECT_THAT(store_->Add("", 1, Soon()), invalid("empty"));
  EXPECT_THAT(store_->CompareSet("", "", "x", Soon()), invalid("empty"));
  EXPECT_THAT(store_->Delete("", Soon()), invalid("empty"));
  EXPECT_THAT(store_->Wait({"ok", ""}, Soon()), invalid("empty"));
  EXPECT_THAT(store_->Set(long_key, "v", Soon()), invalid("over the limit"));
  EXPECT_THAT(store_->Get(long_key, Soon()), invalid("over the limit"));
  EXPECT_THAT(store_->ListPrefix(long_key, Soon()), invalid("over the key limit"));
  EXPECT_THAT(store_->Set("k", long_value, Soon()), invalid("over the limit"));
  EXPECT_THAT(store_->CompareSet("k", "", long_value, Soon()), invalid("over the limit"));
  if (server_ != nullptr) return;
  // A key of exactly the limit works (FileStore hashes its file name).
  ASSERT_THAT(store_->Set(max_key, "m", Soon()), IsOk());
  EXPECT_THAT(store_->Get(max_key, Soon()), IsOkAndHolds("m"));
  EXPECT_THAT(store_->ListPrefix("kkk", Soon()), IsOkAndHolds(ElementsAre(max_key)));
  EXPECT_THAT(store_->Delete(max_key, Soon()), IsOkAndHolds(true));
}

TEST_P(StoreTest, MaxKeyRoundTrips) {
  const std::string max_key(Store::kMaxKeyBytes, '/');
  ASSERT_THAT(store_->Set(max_key, "m", Soon()), IsOk());
  EXPECT_THAT(NewHandle()->Get(max_key, Soon()), IsOkAndHolds("m"));
  EXPECT_THAT(store_->Add(max_key + "", 0, Soon()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not an integer")));
  EXPECT_THAT(store_->ListPrefix("//", Soon()), IsOkAndHolds(ElementsAre(max_key)));
  EXPECT_THAT(store_->Delete(max_key, Soon()), IsOkAndHolds(true));
  EXPECT_THAT(store_->ListPrefix("", Soon()), IsOkAndHolds(IsEmpty()));
}
}  // namespace
}  // namespace trident

#endif  // TRIDENT_TESTS_STORE_STORE_CONFORMANCE_H_
