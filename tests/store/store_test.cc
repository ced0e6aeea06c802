// Tests of the store layer: one suite run on every backend (memory, file, tcp), then what is
// particular to TcpStore (tokens, malformed peers, dead and restarted servers), FileStore
// (processes meeting in a directory) and ConnectStore.
#include "trident/store.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
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
#include "common/logging.h"
#include "spdlog/sinks/ostream_sink.h"
#include "spdlog/spdlog.h"
#include "store/tcp_store_protocol.h"

namespace trident {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

const absl::Status& ToStatus(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& ToStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

MATCHER_P2(StatusIs, code, message, "") {
  const absl::Status& s = ToStatus(arg);
  *result_listener << "status is " << s;
  return s.code() == code &&
         ::testing::ExplainMatchResult(message, std::string(s.message()), result_listener);
}

MATCHER(IsOk, "") {
  const absl::Status& s = ToStatus(arg);
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

enum class Backend { kMemory, kFile, kTcp };

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
    }
    return nullptr;
  }

  std::shared_ptr<Store> memory_;
  std::string dir_;
  std::unique_ptr<TcpStoreServer> server_;
  std::shared_ptr<Store> store_;
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

INSTANTIATE_TEST_SUITE_P(Backends, StoreTest,
                         ::testing::Values(Backend::kMemory, Backend::kFile, Backend::kTcp),
                         [](const ::testing::TestParamInfo<Backend>& info) {
                           switch (info.param) {
                             case Backend::kMemory:
                               return "Memory";
                             case Backend::kFile:
                               return "File";
                             case Backend::kTcp:
                               return "Tcp";
                           }
                           return "Unknown";
                         });

// ---------------------------------------------------------------------------------------------
// TcpStore and its server.

// A raw connection to the server, for speaking the protocol badly on purpose.
class RawConn {
 public:
  explicit RawConn(int port) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    timeval tv{5, 0};  // a test never hangs on a server that fails to close
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  }
  ~RawConn() { close(fd_); }

  void Send(absl::string_view bytes) {
    EXPECT_EQ(send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(bytes.size()));
  }
  void Hello(absl::string_view token) {
    store_internal::FrameWriter w;
    w.U8(static_cast<uint8_t>(store_internal::Op::kHello))
        .U32(store_internal::kProtocolMagic)
        .U32(store_internal::kProtocolVersion)
        .Bytes(token);
    Send(w.Finish());
    absl::StatusOr<std::string> reply = ReadFrame();
    ASSERT_THAT(reply, IsOk());
    EXPECT_EQ((*reply)[0], 0) << "hello refused";
  }
  absl::StatusOr<std::string> ReadFrame() {
    char prefix[4];
    if (!ReadAll(prefix, 4)) return absl::UnavailableError("closed");
    std::string body(store_internal::LoadU32(prefix), '\0');
    if (!ReadAll(body.data(), body.size())) return absl::UnavailableError("closed");
    return body;
  }
  // True when the server has closed the connection (EOF or reset) already; never blocks.
  bool ClosedNow() {
    char buf[4096];
    while (true) {
      ssize_t n = recv(fd_, buf, sizeof(buf), MSG_DONTWAIT);
      if (n == 0) return true;
      if (n < 0) return errno == ECONNRESET;
    }
  }
  // True when the server closed the connection (EOF or reset) within the receive timeout.
  bool ClosedByServer() {
    char buf[4096];
    while (true) {
      ssize_t n = recv(fd_, buf, sizeof(buf), 0);
      if (n == 0) return true;
      if (n < 0) return errno == ECONNRESET;
    }
  }

 private:
  bool ReadAll(char* out, size_t n) {
    while (n > 0) {
      ssize_t got = recv(fd_, out, n, 0);
      if (got <= 0) return false;
      out += got;
      n -= static_cast<size_t>(got);
    }
    return true;
  }
  int fd_;
};

TEST(TcpStoreTest, WrongTokenIsRefusedAndOthersAreServed) {
  std::unique_ptr<TcpStoreServer> server = StartServer();
  ASSERT_NE(server, nullptr);
  for (const char* token : {"wrong", "", "s3cret-token-but-longer"}) {
    absl::Time start = absl::Now();
    EXPECT_THAT(NewTcpStore("127.0.0.1", server->port(), token, Soon()),
                StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("TRIDENT_JOB_TOKEN")))
        << "token '" << token << "'";
    EXPECT_LT(absl::Now() - start, absl::Seconds(2)) << "a refusal is final, not retried";
  }
  std::unique_ptr<Store> good = Client(*server);
  ASSERT_NE(good, nullptr);
  EXPECT_THAT(good->Set("k", "v", Soon()), IsOk());
  EXPECT_THAT(good->Get("k", Soon()), IsOkAndHolds("v"));
}

TEST(TcpStoreTest, MalformedRequestsCloseOnlyThatConnection) {
  std::unique_ptr<TcpStoreServer> server = StartServer();
  ASSERT_NE(server, nullptr);
  std::unique_ptr<Store> good = Client(*server);
  ASSERT_NE(good, nullptr);
  ASSERT_THAT(good->Set("k", "v", Soon()), IsOk());
  // A good client blocked in a Get throughout, answered at the end.
  absl::StatusOr<std::string> waited;
  std::thread waiter([&] { waited = good->Get("after", Soon()); });

  {  // Not our protocol at all.
    RawConn raw(server->port());
    raw.Send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_TRUE(raw.ClosedByServer());
  }
  {  // An absurd length prefix.
    RawConn raw(server->port());
    raw.Hello(kToken);
    raw.Send(std::string("\xf0\xff\xff\xff", 4));
    EXPECT_TRUE(raw.ClosedByServer());
  }
  {  // An unknown op.
    RawConn raw(server->port());
    raw.Hello(kToken);
    store_internal::FrameWriter w;
    w.U8(77).Bytes("k");
    raw.Send(w.Finish());
    EXPECT_TRUE(raw.ClosedByServer());
  }
  {  // A key over the limit.
    RawConn raw(server->port());
    raw.Hello(kToken);
    store_internal::FrameWriter w;
    w.U8(static_cast<uint8_t>(store_internal::Op::kSet))
        .Bytes(std::string(Store::kMaxKeyBytes + 1, 'k'))
        .Bytes("v");
    raw.Send(w.Finish());
    EXPECT_TRUE(raw.ClosedByServer());
  }
  {  // A field whose length runs past the end of the frame.
    RawConn raw(server->port());
    raw.Hello(kToken);
    store_internal::FrameWriter w;
    w.U8(static_cast<uint8_t>(store_internal::Op::kSet)).U32(1000).U8('k');
    raw.Send(w.Finish());
    EXPECT_TRUE(raw.ClosedByServer());
  }
  {  // A second request before the first one's reply.
    RawConn raw(server->port());
    raw.Hello(kToken);
    store_internal::FrameWriter w;
    w.U8(static_cast<uint8_t>(store_internal::Op::kGet)).Bytes("never").I64(10000);
    std::string get = w.Finish();
    raw.Send(get + get);
    EXPECT_TRUE(raw.ClosedByServer());
  }
  {  // A well-formed request from a raw peer is served (the harness itself is sound).
    RawConn raw(server->port());
    raw.Hello(kToken);
    store_internal::FrameWriter w;
    w.U8(static_cast<uint8_t>(store_internal::Op::kTryGet)).Bytes("k");
    raw.Send(w.Finish());
    absl::StatusOr<std::string> reply = raw.ReadFrame();
    ASSERT_THAT(reply, IsOk());
    store_internal::FrameReader r(*reply);
    uint8_t code = 1;
    absl::string_view message, value;
    ASSERT_TRUE(r.U8(&code) && r.Bytes(&message) && r.Bytes(&value) && r.AtEnd());
    EXPECT_EQ(code, 0);
    EXPECT_EQ(value, "v");
  }
  EXPECT_THAT(good->Set("after", "still served", Soon()), IsOk());
  waiter.join();
  EXPECT_THAT(waited, IsOkAndHolds("still served"));
  EXPECT_THAT(good->Add("n", 1, Soon()), IsOkAndHolds(1));
}

// Captures what the library logs (its "trident" logger) for the life of the object; create
// it before the threads that log start, and destroy it after they stopped.
class CapturedLog {
 public:
  CapturedLog() : sink_(std::make_shared<spdlog::sinks::ostream_sink_mt>(out_)) {
    Logger().sinks().push_back(sink_);
  }
  ~CapturedLog() {
    auto& sinks = Logger().sinks();
    sinks.erase(std::remove(sinks.begin(), sinks.end(), sink_), sinks.end());
  }
  // Lines that contain `what` (call after the logging threads are done).
  int Count(absl::string_view what) {
    Logger().flush();
    int n = 0;
    for (absl::string_view line : absl::StrSplit(out_.str(), '\n')) n += absl::StrContains(line, what);
    return n;
  }

 private:
  std::ostringstream out_;
  std::shared_ptr<spdlog::sinks::sink> sink_;
};

// Defect 7 of issue 17: each refused connection logged a warning (75,000 lines a minute from
// one local process). Now one line per window, then a summary.
TEST(TcpStoreTest, RefusalsAreLoggedOncePerWindow) {
  CapturedLog log;
  std::unique_ptr<TcpStoreServer> server = StartServer();
  ASSERT_NE(server, nullptr);
  for (int i = 0; i < 200; ++i) {
    RawConn raw(server->port());
    raw.Send("GET / HTTP/1.1\r\n\r\n");
    EXPECT_TRUE(raw.ClosedByServer());
  }
  std::unique_ptr<Store> good = Client(*server);
  ASSERT_NE(good, nullptr);
  EXPECT_THAT(good->Set("k", "v", Soon()), IsOk());
  server->Shutdown();
  EXPECT_EQ(log.Count("refused connection from"), 1);
}

// Defect 10 of issue 17: an empty frame was logged as "frame length 0 is over the limit".
TEST(TcpStoreTest, AnEmptyFrameIsCalledThat) {
  CapturedLog log;
  std::unique_ptr<TcpStoreServer> server = StartServer();
  ASSERT_NE(server, nullptr);
  RawConn raw(server->port());
  raw.Hello(kToken);
  raw.Send(std::string(4, '\0'));
  EXPECT_TRUE(raw.ClosedByServer());
  server->Shutdown();
  EXPECT_EQ(log.Count("an empty frame (length 0)"), 1);
  EXPECT_EQ(log.Count("over the limit"), 0);
}

// Connections that never say hello are capped: a flood of them neither grows without bound
// nor keeps a real client out (the silent ones are dropped after a second under pressure).
TEST(TcpStoreTest, SilentConnectionsAreCappedAndARealClientStillGetsIn) {
  std::unique_ptr<TcpStoreServer> server = StartServer();
  ASSERT_NE(server, nullptr);
  std::vector<std::unique_ptr<RawConn>> silent;
  for (int i = 0; i < 300; ++i) silent.push_back(std::make_unique<RawConn>(server->port()));
  const absl::Time start = absl::Now();
  std::unique_ptr<Store> good = Client(*server);
  ASSERT_NE(good, nullptr);
  EXPECT_THAT(good->Set("k", "v", Soon()), IsOk());
  // Two rounds of dropping (1 s each) let it in; without the cap, in 10 s (the hello deadline).
  EXPECT_LT(absl::Now() - start, absl::Seconds(6));
  // Those over the cap were dropped; at most the cap's worth still wait for their deadline.
  absl::SleepFor(absl::Milliseconds(200));
  int closed = 0;
  for (auto& raw : silent) closed += raw->ClosedNow();
  EXPECT_GE(closed, 300 - 128);
}

TEST(TcpStoreTest, BlockingGetDoesNotDelayOtherCallsOnTheSameClient) {
  std::unique_ptr<TcpStoreServer> server = StartServer();
  ASSERT_NE(server, nullptr);
  std::unique_ptr<Store> client = Client(*server);
  ASSERT_NE(client, nullptr);
  absl::StatusOr<std::string> got;
  std::thread getter([&] { got = client->Get("later", Soon()); });
  absl::SleepFor(absl::Milliseconds(20));
  absl::Time start = absl::Now();
  EXPECT_THAT(client->Set("other", "x", DeadlineIn(absl::Seconds(1))), IsOk());
  EXPECT_THAT(client->Set("later", "y", DeadlineIn(absl::Seconds(1))), IsOk());
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  getter.join();
  EXPECT_THAT(got, IsOkAndHolds("y"));
}

TEST(TcpStoreTest, DeadServerGivesUnavailableWithinTheDeadline) {
  std::unique_ptr<TcpStoreServer> server = StartServer();
  ASSERT_NE(server, nullptr);
  std::unique_ptr<Store> client = Client(*server);
  ASSERT_NE(client, nullptr);
  ASSERT_THAT(client->Set("k", "v", Soon()), IsOk());

  // A Get in flight when the server dies.
  absl::StatusOr<std::string> in_flight;
  absl::Time in_flight_deadline = DeadlineIn(absl::Milliseconds(800));
  std::thread getter([&] { in_flight = client->Get("never", in_flight_deadline); });
  absl::SleepFor(absl::Milliseconds(20));
  server->Shutdown();

  for (int i = 0; i < 2; ++i) {
    absl::Time deadline = DeadlineIn(absl::Milliseconds(300));
    absl::StatusOr<std::string> got = client->Get("k", deadline);
    EXPECT_THAT(got, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("127.0.0.1")));
    EXPECT_LT(absl::Now(), deadline + absl::Seconds(1));
  }
  absl::Time deadline = DeadlineIn(absl::Milliseconds(300));
  EXPECT_THAT(client->Add("n", 1, deadline),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("store")));
  EXPECT_LT(absl::Now(), deadline + absl::Seconds(1));
  getter.join();
  EXPECT_THAT(in_flight, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("could not reach")));
  EXPECT_LT(absl::Now(), in_flight_deadline + absl::Seconds(1));

  // A new client to a port with nobody behind it.
  absl::Time start = absl::Now();
  EXPECT_THAT(NewTcpStore("127.0.0.1", server->port(), kToken, DeadlineIn(absl::Milliseconds(300))),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("could not reach")));
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(300) + absl::Seconds(1));
}

TEST(TcpStoreTest, ClientReconnectsAfterTheServerRestarts) {
  std::unique_ptr<TcpStoreServer> server = StartServer();
  ASSERT_NE(server, nullptr);
  const int port = server->port();
  std::unique_ptr<Store> client = Client(*server);
  ASSERT_NE(client, nullptr);
  ASSERT_THAT(client->Set("before", "1", Soon()), IsOk());
  server->Shutdown();
  server.reset();

  // A call made while no server is up keeps trying until the deadline.
  absl::StatusOr<std::string> got;
  std::thread getter([&] { got = client->Get("after", Soon()); });
  absl::SleepFor(absl::Milliseconds(50));
  server = StartServer(port);
  ASSERT_NE(server, nullptr);
  ASSERT_EQ(server->port(), port);
  std::unique_ptr<Store> other = Client(*server);
  ASSERT_NE(other, nullptr);
  ASSERT_THAT(other->Set("after", "2", Soon()), IsOk());
  getter.join();
  EXPECT_THAT(got, IsOkAndHolds("2"));
  // The same client works for every call; the old server's data is gone with it.
  EXPECT_THAT(client->Add("n", 1, Soon()), IsOkAndHolds(1));
  EXPECT_THAT(client->TryGet("before", Soon()),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("before")));
}

TEST(TcpStoreTest, ServerWithoutTokenAcceptsAnyClient) {
  std::unique_ptr<TcpStoreServer> server = StartServer(0, "");
  ASSERT_NE(server, nullptr);
  EXPECT_EQ(server->host(), "127.0.0.1");
  std::unique_ptr<Store> client = Client(*server, "anything");
  ASSERT_NE(client, nullptr);
  EXPECT_THAT(client->Set("k", "v", Soon()), IsOk());
}

TEST(TcpStoreTest, ConstantTimeEquals) {
  EXPECT_TRUE(store_internal::ConstantTimeEquals("", ""));
  EXPECT_TRUE(store_internal::ConstantTimeEquals("abc", "abc"));
  EXPECT_FALSE(store_internal::ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(store_internal::ConstantTimeEquals("abc", "ab"));
  EXPECT_FALSE(store_internal::ConstantTimeEquals("", "a"));
  EXPECT_FALSE(store_internal::ConstantTimeEquals(std::string("a\0", 2), "a"));
}

// ---------------------------------------------------------------------------------------------
// FileStore across processes.

TEST(FileStoreTest, AddFromTwoProcessesSumsExactly) {
  std::string dir = MakeTempDir();
  constexpr int kAdds = 150;
  int go[2];
  ASSERT_EQ(pipe(go), 0);
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // The child reports through its exit code only: no gtest in here.
    char c;
    close(go[1]);
    if (read(go[0], &c, 1) != 1) _exit(2);
    absl::StatusOr<std::unique_ptr<Store>> store = NewFileStore(dir);
    if (!store.ok()) _exit(3);
    for (int i = 0; i < kAdds; ++i) {
      if (!(*store)->Add("counter", 1, Soon()).ok()) _exit(4);
    }
    if (!(*store)->Set("child/done", "1", Soon()).ok()) _exit(5);
    _exit(0);
  }
  close(go[0]);
  absl::StatusOr<std::unique_ptr<Store>> store = NewFileStore(dir);
  ASSERT_THAT(store, IsOk());
  ASSERT_EQ(write(go[1], "g", 1), 1);
  close(go[1]);
  for (int i = 0; i < kAdds; ++i) ASSERT_THAT((*store)->Add("counter", 1, Soon()), IsOk());
  EXPECT_THAT((*store)->Get("child/done", Soon()), IsOkAndHolds("1"));
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_THAT((*store)->Get("counter", Soon()), IsOkAndHolds(absl::StrCat(2 * kAdds)));
  std::filesystem::remove_all(dir);
}

TEST(FileStoreTest, ListingIgnoresForeignFiles) {
  std::string dir = MakeTempDir();
  absl::StatusOr<std::unique_ptr<Store>> store = NewFileStore(dir + "/nested/created");
  ASSERT_THAT(store, IsOk());
  ASSERT_THAT((*store)->Set("a/b", "1", Soon()), IsOk());
  std::ofstream(dir + "/nested/created/README") << "not a key";
  std::ofstream(dir + "/nested/created/.tmp-1-2-3") << "a crashed writer's leftover";
  std::ofstream(dir + "/nested/created/k-bad%zz") << "undecodable";
  std::ofstream(dir + "/nested/created/k-not canonical") << "a space is always encoded";
  std::ofstream(dir + "/nested/created/k-") << "an empty key";
  EXPECT_THAT((*store)->ListPrefix("", Soon()), IsOkAndHolds(ElementsAre("a/b")));
  std::filesystem::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------
// ConnectStore.

TEST(ConnectStoreTest, RejectsUnknownUrls) {
  for (const char* url : {"", "etcd://host:2379", "tcp://hostonly", "tcp://:29400",
                          "tcp://host:notaport", "tcp://host:70000", "file://relative/dir"}) {
    EXPECT_THAT(ConnectStore(url, kToken, Soon()),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tcp://host:port")))
        << url;
  }
}

TEST(ConnectStoreTest, ConnectsToTcpAndFileStores) {
  std::unique_ptr<TcpStoreServer> server = StartServer();
  ASSERT_NE(server, nullptr);
  absl::StatusOr<std::unique_ptr<Store>> tcp =
      ConnectStore(absl::StrCat("tcp://127.0.0.1:", server->port()), kToken, Soon());
  ASSERT_THAT(tcp, IsOk());
  EXPECT_THAT((*tcp)->Set("k", "tcp", Soon()), IsOk());
  EXPECT_THAT(
      ConnectStore(absl::StrCat("tcp://[::1]:1"), kToken, DeadlineIn(absl::Milliseconds(50))),
      StatusIs(absl::StatusCode::kUnavailable, HasSubstr("[::1]:1")));

  std::string dir = MakeTempDir();
  absl::StatusOr<std::unique_ptr<Store>> file = ConnectStore("file://" + dir, "", Soon());
  ASSERT_THAT(file, IsOk());
  EXPECT_THAT((*file)->Set("k", "file", Soon()), IsOk());
  std::filesystem::remove_all(dir);
}

TEST(ConnectStoreTest, FromEnv) {
  unsetenv("TRIDENT_STORE");
  EXPECT_THAT(ConnectStoreFromEnv(Soon()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("trident-run")));
  std::unique_ptr<TcpStoreServer> server = StartServer();
  ASSERT_NE(server, nullptr);
  setenv("TRIDENT_STORE", absl::StrCat("tcp://127.0.0.1:", server->port()).c_str(), 1);
  setenv("TRIDENT_JOB_TOKEN", "wrong", 1);
  EXPECT_THAT(ConnectStoreFromEnv(Soon()),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("TRIDENT_JOB_TOKEN")));
  setenv("TRIDENT_JOB_TOKEN", kToken, 1);
  absl::StatusOr<std::unique_ptr<Store>> store = ConnectStoreFromEnv(Soon());
  ASSERT_THAT(store, IsOk());
  EXPECT_THAT((*store)->Add("n", 4, Soon()), IsOkAndHolds(4));
  unsetenv("TRIDENT_STORE");
  unsetenv("TRIDENT_JOB_TOKEN");
}

}  // namespace
}  // namespace trident
