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
#include "store_conformance.h"

namespace trident {
namespace {

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
                             case Backend::kEtcd:
                               return "Etcd";  // etcd_store_test
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
