// TcpStoreServer: one thread, one poll() loop over the listening socket, a wake-up eventfd and
// every connection. All data lives on that thread (a KvMap), so nothing but Shutdown() needs
// a lock. A Get or Wait whose keys are missing parks its connection; every mutation re-checks
// the parked ones, and a timer answers kDeadlineExceeded when the client's timeout runs out.
//
// A connection is closed, with a warning naming its peer, when it fails the hello (after a
// refusal reply), sends a malformed or oversized frame, or breaks the one-request-at-a-time
// rule; other connections are never affected. Whoever can reach the port can cause the
// refusals, so their warnings go through a LogLimiter (one line, then a summary per window),
// and at most kMaxUnauthenticated connections that have not said hello are held: past that,
// the ones silent for kPressureHelloTimeout are dropped and new ones wait in the kernel's
// listen backlog (a real client says hello at once, so it is never the one dropped).
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/check.h"
#include "common/log_limiter.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "store/kv_map.h"
#include "store/tcp_store_protocol.h"
#include "trident/store.h"

namespace trident {
namespace {

using store_internal::FrameReader;
using store_internal::FrameWriter;
using store_internal::KvMap;
using store_internal::Op;
using store_internal::UniqueFd;

// A peer must say hello within this time, so idle half-open connections do not pile up.
constexpr absl::Duration kHelloTimeout = absl::Seconds(10);
// After a refusal, how long we keep draining the peer so that our reply is not lost to a reset.
constexpr absl::Duration kLinger = absl::Seconds(1);
constexpr size_t kReadChunk = 256 << 10;
// Per connection per poll round, so one bulk sender cannot starve the others.
constexpr size_t kMaxReadPerRound = 4 << 20;
// Connections held before their hello; and how long one may stay silent once that many are.
constexpr size_t kMaxUnauthenticated = 128;
constexpr absl::Duration kPressureHelloTimeout = absl::Seconds(1);
// Refusals are logged in full once per window, then summarised.
constexpr absl::Duration kRefusalLogWindow = absl::Seconds(10);

struct Conn {
  UniqueFd fd;
  std::string peer;
  bool authed = false;
  bool closing = false;  // refused: flush the reply, half-close, drain until EOF or `timer`
  bool dead = false;     // closed; removed at the end of the poll round
  absl::Time timer = absl::InfiniteFuture();  // hello deadline, or end of the linger
  absl::Time accepted = absl::InfinitePast();
  std::string in;
  std::string out;
  size_t out_sent = 0;
  // A Get or Wait waiting for keys (only the ones missing when it was parked).
  bool parked = false;
  Op parked_op = Op::kGet;
  std::vector<std::string> parked_keys;
  absl::Time parked_deadline = absl::InfiniteFuture();

  bool SendPending() const { return out_sent < out.size(); }
};

FrameWriter OkReply() {
  FrameWriter w;
  w.U8(static_cast<uint8_t>(absl::StatusCode::kOk)).Bytes("");
  return w;
}

std::string ErrorReply(const absl::Status& status) {
  FrameWriter w;
  w.U8(static_cast<uint8_t>(status.code())).Bytes(status.message());
  return std::move(w).Finish();
}

class Server final : public TcpStoreServer {
 public:
  Server(std::string host, int port, std::string token, UniqueFd listen_fd, UniqueFd wake_fd)
      : host_(std::move(host)),
        port_(port),
        token_(std::move(token)),
        listen_fd_(std::move(listen_fd)),
        wake_fd_(std::move(wake_fd)),
        scratch_(kReadChunk),
        refusals_(kRefusalLogWindow) {}
  ~Server() override { Shutdown(); }

  int port() const override { return port_; }
  std::string host() const override { return host_; }

  void Start() {
    absl::MutexLock lock(&thread_mu_);
    thread_ = std::thread([this] { Run(); });
  }

  void Shutdown() override {
    absl::MutexLock lock(&thread_mu_);
    if (!thread_.joinable()) return;
    stop_.store(true);
    uint64_t one = 1;
    ssize_t rc = write(wake_fd_.get(), &one, sizeof(one));
    TRIDENT_CHECK(rc == sizeof(one)) << "eventfd write failed: errno " << errno;
    thread_.join();
    TLOG(info, "store server {}:{} stopped", host_, port_);
  }

 private:
  void Run();
  void AcceptAll();
  // Connections that have not said hello (refused ones lingering included).
  size_t Unauthenticated() const;
  // Over the cap: closes those silent for kPressureHelloTimeout. Returns whether there is
  // room for another.
  bool MakeRoom(absl::Time now);
  void ReadFrom(Conn& c);
  void ProcessFrames(Conn& c);
  void HandleHello(Conn& c, absl::string_view body);
  void HandleRequest(Conn& c, absl::string_view body);
  void Park(Conn& c, Op op, std::vector<std::string> missing, int64_t timeout_ms);
  void WakeWaiters();
  void ServeTimers(absl::Time now);
  absl::Time NextTimer() const;
  void Send(Conn& c, std::string frame);
  void Flush(Conn& c);
  void Refuse(Conn& c, absl::StatusCode code, absl::string_view why);
  void Close(Conn& c, absl::string_view why, bool warn);

  const std::string host_;
  const int port_;
  const std::string token_;
  UniqueFd listen_fd_;
  const UniqueFd wake_fd_;
  std::atomic<bool> stop_{false};
  absl::Mutex thread_mu_;
  std::thread thread_ ABSL_GUARDED_BY(thread_mu_);

  // Owned by the server thread.
  std::vector<char> scratch_;
  std::vector<std::unique_ptr<Conn>> conns_;
  KvMap map_;
  bool accept_failing_ = false;
  LogLimiter refusals_;
};

void Server::Run() {
  pthread_setname_np(pthread_self(), "trident-store");
  std::vector<pollfd> fds;
  while (!stop_.load()) {
    fds.clear();
    fds.push_back({wake_fd_.get(), POLLIN, 0});
    // At the cap of unauthenticated connections, new ones wait in the listen backlog.
    const bool room = MakeRoom(absl::Now());
    fds.push_back({room ? listen_fd_.get() : -1, POLLIN, 0});
    for (const auto& c : conns_) {
      fds.push_back(
          {c->fd.get(), static_cast<short>(POLLIN | (c->SendPending() ? POLLOUT : 0)), 0});
    }
    int rc = poll(fds.data(), fds.size(), store_internal::PollTimeoutMs(NextTimer()));
    if (rc < 0) {
      TRIDENT_CHECK(errno == EINTR || errno == ENOMEM) << "store server poll: errno " << errno;
      continue;
    }
    if (fds[0].revents != 0) break;  // Shutdown()
    // conns_ only grows in AcceptAll below, so fds[i + 2] is still conns_[i] here.
    size_t n = conns_.size();
    for (size_t i = 0; i < n; ++i) {
      Conn& c = *conns_[i];
      short revents = fds[i + 2].revents;
      if (c.dead || revents == 0) continue;
      if (revents & POLLOUT) Flush(c);
      if (!c.dead && (revents & (POLLIN | POLLHUP | POLLERR))) ReadFrom(c);
    }
    if (fds[1].revents != 0) AcceptAll();
    ServeTimers(absl::Now());
    conns_.erase(std::remove_if(conns_.begin(), conns_.end(),
                                [](const std::unique_ptr<Conn>& c) { return c->dead; }),
                 conns_.end());
  }
  conns_.clear();  // closes every connection
  listen_fd_.reset();
}

size_t Server::Unauthenticated() const {
  return static_cast<size_t>(std::count_if(conns_.begin(), conns_.end(), [](const auto& c) {
    return !c->dead && !c->authed;
  }));
}

bool Server::MakeRoom(absl::Time now) {
  size_t waiting = Unauthenticated();
  if (waiting < kMaxUnauthenticated) return true;
  for (const auto& c : conns_) {
    if (waiting < kMaxUnauthenticated) break;
    if (c->dead || c->authed || c->accepted + kPressureHelloTimeout > now) continue;
    if (!c->closing) {
      refusals_.Event(now, absl::StrCat("store server ", host_, ":", port_, ": dropped connection from ", c->peer,
                                        ": no hello within ", absl::FormatDuration(kPressureHelloTimeout),
                                        " while ", kMaxUnauthenticated,
                                        " connections were waiting for theirs"));
    }
    Close(*c, "dropped to make room", /*warn=*/false);
    --waiting;
  }
  return waiting < kMaxUnauthenticated;
}

void Server::AcceptAll() {
  size_t waiting = Unauthenticated();
  while (waiting < kMaxUnauthenticated) {
    int fd = accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      // Out of descriptors or memory: the connection stays queued; back off, do not spin.
      if (!accept_failing_) {
        TLOG(warn, "store server {}:{}: {}", host_, port_,
                     ErrnoToStatus(errno, "accept").message());
      }
      accept_failing_ = true;
      absl::SleepFor(absl::Milliseconds(10));
      return;
    }
    accept_failing_ = false;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    auto c = std::make_unique<Conn>();
    c->fd.reset(fd);
    c->peer = store_internal::PeerAddress(fd);
    c->accepted = absl::Now();
    c->timer = c->accepted + kHelloTimeout;
    TLOG(debug, "store server: connection from {}", c->peer);
    conns_.push_back(std::move(c));
    ++waiting;
  }
}

void Server::ReadFrom(Conn& c) {
  size_t total = 0;
  while (total < kMaxReadPerRound && !c.dead) {
    ssize_t n = recv(c.fd.get(), scratch_.data(), scratch_.size(), MSG_DONTWAIT);
    if (n > 0) {
      total += static_cast<size_t>(n);
      if (c.closing) continue;  // draining a refused peer
      c.in.append(scratch_.data(), static_cast<size_t>(n));
      ProcessFrames(c);
      continue;
    }
    if (n == 0) {
      Close(c, c.parked ? "peer closed while waiting" : "peer closed", /*warn=*/false);
      return;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return;
    Close(c, ErrnoToStatus(errno, "recv").message(), /*warn=*/false);
    return;
  }
}

void Server::ProcessFrames(Conn& c) {
  size_t off = 0;
  while (!c.dead && !c.closing && c.in.size() - off >= 4) {
    uint32_t len = store_internal::LoadU32(c.in.data() + off);
    size_t limit = c.authed ? store_internal::kMaxFrameBytes : store_internal::kMaxHelloBytes;
    if (len == 0 || len > limit) {
      const std::string why = len == 0 ? std::string("an empty frame (length 0)")
                                       : absl::StrCat("frame length ", len,
                                                      " is over the limit of ", limit, " bytes");
      if (!c.authed) {
        Refuse(c, absl::StatusCode::kPermissionDenied,
               absl::StrCat("first message is not a store hello (", why, ")"));
      } else {
        Close(c, why, /*warn=*/true);
      }
      break;
    }
    if (c.in.size() - off - 4 < len) break;  // wait for the rest
    if (c.parked || c.SendPending()) {
      Close(c, "sent a request before the reply to the previous one", /*warn=*/true);
      break;
    }
    absl::string_view body(c.in.data() + off + 4, len);
    off += 4 + static_cast<size_t>(len);
    if (c.authed) {
      HandleRequest(c, body);
    } else {
      HandleHello(c, body);
    }
  }
  if (c.dead || c.closing) {
    c.in.clear();
  } else {
    c.in.erase(0, off);
  }
}

void Server::HandleHello(Conn& c, absl::string_view body) {
  absl::StatusOr<store_internal::Hello> hello = store_internal::DecodeHello(body);
  if (!hello.ok()) return Refuse(c, hello.status().code(), hello.status().message());
  const uint32_t version = hello->version;
  const absl::string_view token = hello->token;
  if (version != store_internal::kProtocolVersion) {
    return Refuse(c, absl::StatusCode::kFailedPrecondition,
                  absl::StrCat("client speaks store protocol version ", version,
                               ", this server speaks ", store_internal::kProtocolVersion));
  }
  if (!token_.empty() && !store_internal::ConstantTimeEquals(token, token_)) {
    return Refuse(c, absl::StatusCode::kPermissionDenied,
                  token.empty() ? "no job token presented" : "wrong job token");
  }
  c.authed = true;
  c.timer = absl::InfiniteFuture();
  Send(c, OkReply().Finish());
}

void Server::HandleRequest(Conn& c, absl::string_view body) {
  absl::StatusOr<store_internal::Request> decoded = store_internal::DecodeRequest(body);
  if (!decoded.ok()) return Close(c, decoded.status().message(), /*warn=*/true);
  const store_internal::Request& q = *decoded;
  switch (q.op) {
    case Op::kSet:
      map_.Set(q.key, q.value);
      Send(c, OkReply().Finish());
      WakeWaiters();
      return;
    case Op::kGet:
      if (const std::string* value = map_.Find(q.key)) {
        return Send(c, OkReply().Bytes(*value).Finish());
      }
      return Park(c, q.op, {std::string(q.key)}, q.timeout_ms);
    case Op::kTryGet:
      if (const std::string* value = map_.Find(q.key)) {
        return Send(c, OkReply().Bytes(*value).Finish());
      }
      return Send(c, ErrorReply(absl::NotFoundError(absl::StrCat(
                         "store key ", store_internal::QuoteKey(q.key), " is not set"))));
    case Op::kAdd: {
      absl::StatusOr<int64_t> sum = map_.Add(q.key, q.delta);
      if (!sum.ok()) return Send(c, ErrorReply(sum.status()));
      Send(c, OkReply().I64(*sum).Finish());
      WakeWaiters();
      return;
    }
    case Op::kCompareSet: {
      std::string after = map_.CompareSet(q.key, q.expected, q.value);
      Send(c, OkReply().Bytes(after).Finish());
      WakeWaiters();
      return;
    }
    case Op::kWait: {
      std::vector<std::string> keys(q.keys.begin(), q.keys.end());
      std::vector<std::string> missing = map_.Missing(keys);
      if (missing.empty()) return Send(c, OkReply().Finish());
      return Park(c, q.op, std::move(missing), q.timeout_ms);
    }
    case Op::kDelete: {
      bool existed = map_.Delete(q.key);
      return Send(c, OkReply().U8(existed ? 1 : 0).Finish());
    }
    case Op::kListPrefix: {
      std::vector<std::string> keys = map_.ListPrefix(q.key);
      FrameWriter w = OkReply();
      w.U32(static_cast<uint32_t>(keys.size()));
      for (const std::string& key : keys) {
        w.Bytes(key);
        if (w.body_size() > store_internal::kMaxFrameBytes) {
          return Send(c, ErrorReply(absl::ResourceExhaustedError(
                             absl::StrCat("store ListPrefix(", store_internal::QuoteKey(q.key),
                                          "): ", keys.size(), " keys are over the reply limit of ",
                                          store_internal::kMaxFrameBytes, " bytes"))));
        }
      }
      return Send(c, std::move(w).Finish());
    }
    case Op::kHello:
      break;
  }
  TRIDENT_CHECK(false) << "DecodeRequest passed op " << static_cast<int>(q.op);
}

void Server::Park(Conn& c, Op op, std::vector<std::string> missing, int64_t timeout_ms) {
  if (timeout_ms == 0) {
    return Send(c,
                ErrorReply(store_internal::MissingKeysError(store_internal::OpName(op), missing)));
  }
  c.parked = true;
  c.parked_op = op;
  c.parked_keys = std::move(missing);
  c.parked_deadline =
      timeout_ms < 0 ? absl::InfiniteFuture() : absl::Now() + absl::Milliseconds(timeout_ms);
}

void Server::WakeWaiters() {
  for (const auto& c : conns_) {
    if (c->dead || !c->parked) continue;
    if (!map_.Missing(c->parked_keys).empty()) continue;
    c->parked = false;
    if (c->parked_op == Op::kGet) {
      Send(*c, OkReply().Bytes(*map_.Find(c->parked_keys[0])).Finish());
    } else {
      Send(*c, OkReply().Finish());
    }
    c->parked_keys.clear();
  }
}

void Server::ServeTimers(absl::Time now) {
  refusals_.Flush(now);
  for (const auto& c : conns_) {
    if (c->dead) continue;
    if (c->timer <= now) {
      if (c->closing) {
        Close(*c, "refused", /*warn=*/false);
        continue;
      }
      Refuse(*c, absl::StatusCode::kPermissionDenied,
             absl::StrCat("no hello within ", absl::FormatDuration(kHelloTimeout)));
    }
    if (c->parked && c->parked_deadline <= now) {
      c->parked = false;
      std::vector<std::string> missing = map_.Missing(c->parked_keys);
      c->parked_keys.clear();
      Send(*c, ErrorReply(store_internal::MissingKeysError(store_internal::OpName(c->parked_op),
                                                           missing)));
    }
  }
}

absl::Time Server::NextTimer() const {
  absl::Time next = refusals_.NextFlush();
  const bool full = Unauthenticated() >= kMaxUnauthenticated;
  for (const auto& c : conns_) {
    next = std::min(next, c->timer);
    if (c->parked) next = std::min(next, c->parked_deadline);
    if (full && !c->dead && !c->authed) next = std::min(next, c->accepted + kPressureHelloTimeout);
  }
  return next;
}

void Server::Send(Conn& c, std::string frame) {
  if (c.dead) return;
  if (c.out.empty()) {
    c.out = std::move(frame);
  } else {
    c.out.append(frame);
  }
  Flush(c);
}

void Server::Flush(Conn& c) {
  while (c.SendPending()) {
    ssize_t n = send(c.fd.get(), c.out.data() + c.out_sent, c.out.size() - c.out_sent,
                     MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      c.out_sent += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;  // POLLOUT resumes
    Close(c, ErrnoToStatus(errno, "send").message(), /*warn=*/false);
    return;
  }
  c.out.clear();
  c.out_sent = 0;
  if (c.closing) shutdown(c.fd.get(), SHUT_WR);
}

void Server::Refuse(Conn& c, absl::StatusCode code, absl::string_view why) {
  refusals_.Event(absl::Now(), absl::StrCat("store server ", host_, ":", port_,
                                            ": refused connection from ", c.peer, ": ", why));
  c.closing = true;
  c.timer = absl::Now() + kLinger;
  Send(c, ErrorReply(absl::Status(code, absl::StrCat("store server refused this client: ", why))));
}

void Server::Close(Conn& c, absl::string_view why, bool warn) {
  if (c.dead) return;
  if (warn) {
    TLOG(warn, "store server {}:{}: closing connection from {}: {}", host_, port_, c.peer, why);
  } else {
    TLOG(debug, "store server {}:{}: closing connection from {}: {}", host_, port_, c.peer, why);
  }
  c.dead = true;
  c.parked = false;
  c.fd.reset();
}

}  // namespace

absl::StatusOr<std::unique_ptr<TcpStoreServer>> StartTcpStoreServer(
    const TcpStoreServerOptions& options) {
  if (options.port < 0 || options.port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("store server port ", options.port, " is not in [0, 65535]"));
  }
  std::string where = absl::StrCat(options.bind_address, ":", options.port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* addrs = nullptr;
  std::string port_str = absl::StrCat(options.port);
  int gai = getaddrinfo(options.bind_address.empty() ? nullptr : options.bind_address.c_str(),
                        port_str.c_str(), &hints, &addrs);
  if (gai != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("store server: cannot resolve bind address ", where, ": ", gai_strerror(gai)));
  }
  UniqueFd listen_fd;
  int err = 0;
  std::string failed_call;
  for (addrinfo* a = addrs; a != nullptr; a = a->ai_next) {
    UniqueFd fd(
        socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol));
    if (!fd.valid()) {
      err = errno;
      failed_call = "socket";
      continue;
    }
    // A restarted server must get its port back although old connections sit in TIME_WAIT.
    int one = 1;
    setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd.get(), a->ai_addr, a->ai_addrlen) != 0) {
      err = errno;
      failed_call = "bind";
      continue;
    }
    if (listen(fd.get(), SOMAXCONN) != 0) {
      err = errno;
      failed_call = "listen";
      continue;
    }
    listen_fd = std::move(fd);
    break;
  }
  freeaddrinfo(addrs);
  if (!listen_fd.valid()) {
    absl::Status status = ErrnoToStatus(err, absl::StrCat(failed_call, "(", where, ")"));
    if (err == EADDRINUSE) status = absl::UnavailableError(status.message());
    return Annotate(status, "store server");
  }
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  if (getsockname(listen_fd.get(), reinterpret_cast<sockaddr*>(&bound), &len) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("getsockname(", where, ")"));
  }
  int port = bound.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                         : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  UniqueFd wake_fd(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!wake_fd.valid()) return ErrnoToStatus(errno, "eventfd(store server)");
  auto server = std::make_unique<Server>(options.bind_address, port, options.job_token,
                                         std::move(listen_fd), std::move(wake_fd));
  server->Start();
  TLOG(info, "store server listening on {}:{}{}", options.bind_address, port,
               options.job_token.empty() ? " (no job token required)" : "");
  return server;
}

}  // namespace trident
