// TcpStore: a client of TcpStoreServer.
//
// Each call borrows a connection from a small pool (or dials a new one), so concurrent calls
// from several threads never queue behind one another's blocking Get. A connection that broke
// (server restarted, reset) is replaced by dialling again with backoff until the call's
// deadline; if no server answers by then the call fails with kUnavailable.
//
// Get and Wait send their remaining timeout; the server answers kDeadlineExceeded at about the
// deadline, naming the keys still missing. The client waits for that answer at most kReplyGrace
// past the deadline, then gives up on the connection and reports the deadline itself.
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/backoff.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "store/kv_map.h"
#include "store/tcp_store_protocol.h"
#include "trident/store.h"

namespace trident {
namespace {

using store_internal::FrameReader;
using store_internal::FrameWriter;
using store_internal::Op;
using store_internal::UniqueFd;

// How long past the deadline a reply may take to arrive: the server's own timer for a Get or
// Wait fires just after the client's deadline, and its answer names the missing keys.
constexpr absl::Duration kReplyGrace = absl::Milliseconds(100);
constexpr absl::Duration kFirstBackoff = absl::Milliseconds(5);
constexpr absl::Duration kMaxBackoff = absl::Milliseconds(500);
// Idle connections kept for reuse; more are closed when returned.
constexpr size_t kMaxIdle = 4;

// True when an idle connection has something to read: with no request in flight that can only
// be EOF or a reset (the server went away), so the connection must not be reused.
bool LooksClosed(int fd) {
  pollfd p{fd, POLLIN, 0};
  return poll(&p, 1, 0) != 0;
}

class TcpStore final : public Store {
 public:
  TcpStore(std::string host, int port, std::string token)
      : host_(std::move(host)),
        port_(port),
        token_(std::move(token)),
        where_(absl::StrCat(absl::StrContains(host_, ':') ? absl::StrCat("[", host_, "]") : host_,
                            ":", port_)) {}

  // Dials the first connection, so that a wrong token or an absent server shows at once.
  absl::Status Connect(absl::Time deadline) {
    RetryBackoff backoff(kFirstBackoff, kMaxBackoff);
    ASSIGN_OR_RETURN(UniqueFd fd, DialWithRetry(deadline, backoff));
    Release(std::move(fd));
    return absl::OkStatus();
  }

  absl::Status Set(absl::string_view key, absl::string_view value, absl::Time deadline) override {
    RETURN_IF_ERROR(ValidateKey(key));
    RETURN_IF_ERROR(ValidateValue(value));
    FrameWriter w;
    w.U8(static_cast<uint8_t>(Op::kSet)).Bytes(key).Bytes(value);
    return Call(Op::kSet, std::move(w).Finish(), {}, deadline).status();
  }

  absl::StatusOr<std::string> Get(absl::string_view key, absl::Time deadline) override {
    RETURN_IF_ERROR(ValidateKey(key));
    std::string k(key);
    // The timeout is computed per attempt, so a retry after a reconnect sends what is left.
    ASSIGN_OR_RETURN(std::string reply, Call(
                                            Op::kGet,
                                            [&] {
                                              FrameWriter w;
                                              w.U8(static_cast<uint8_t>(Op::kGet))
                                                  .Bytes(key)
                                                  .I64(store_internal::TimeoutMsUntil(deadline));
                                              return std::move(w).Finish();
                                            },
                                            {k}, deadline));
    FrameReader r(reply);
    absl::string_view value;
    if (!r.Bytes(&value) || !r.AtEnd()) return Malformed(Op::kGet);
    return std::string(value);
  }

  absl::StatusOr<std::string> TryGet(absl::string_view key, absl::Time deadline) override {
    RETURN_IF_ERROR(ValidateKey(key));
    FrameWriter w;
    w.U8(static_cast<uint8_t>(Op::kTryGet)).Bytes(key);
    ASSIGN_OR_RETURN(std::string reply, Call(Op::kTryGet, std::move(w).Finish(), {}, deadline));
    FrameReader r(reply);
    absl::string_view value;
    if (!r.Bytes(&value) || !r.AtEnd()) return Malformed(Op::kTryGet);
    return std::string(value);
  }

  absl::StatusOr<int64_t> Add(absl::string_view key, int64_t delta, absl::Time deadline) override {
    RETURN_IF_ERROR(ValidateKey(key));
    FrameWriter w;
    w.U8(static_cast<uint8_t>(Op::kAdd)).Bytes(key).I64(delta);
    ASSIGN_OR_RETURN(std::string reply, Call(Op::kAdd, std::move(w).Finish(), {}, deadline));
    FrameReader r(reply);
    int64_t sum = 0;
    if (!r.I64(&sum) || !r.AtEnd()) return Malformed(Op::kAdd);
    return sum;
  }

  absl::StatusOr<std::string> CompareSet(absl::string_view key, absl::string_view expected,
                                         absl::string_view desired, absl::Time deadline) override {
    RETURN_IF_ERROR(ValidateKey(key));
    RETURN_IF_ERROR(ValidateValue(expected));
    RETURN_IF_ERROR(ValidateValue(desired));
    FrameWriter w;
    w.U8(static_cast<uint8_t>(Op::kCompareSet)).Bytes(key).Bytes(expected).Bytes(desired);
    ASSIGN_OR_RETURN(std::string reply, Call(Op::kCompareSet, std::move(w).Finish(), {}, deadline));
    FrameReader r(reply);
    absl::string_view after;
    if (!r.Bytes(&after) || !r.AtEnd()) return Malformed(Op::kCompareSet);
    return std::string(after);
  }

  absl::Status Wait(absl::Span<const std::string> keys, absl::Time deadline) override {
    RETURN_IF_ERROR(store_internal::ValidateKeys(keys));
    if (keys.empty()) return absl::OkStatus();
    std::vector<std::string> all(keys.begin(), keys.end());
    auto build = [&] {
      FrameWriter w;
      w.U8(static_cast<uint8_t>(Op::kWait)).U32(static_cast<uint32_t>(keys.size()));
      for (const std::string& key : keys) w.Bytes(key);
      w.I64(store_internal::TimeoutMsUntil(deadline));
      return w;
    };
    if (build().body_size() > store_internal::kMaxFrameBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("store Wait on ", keys.size(), " keys is over the request limit of ",
                       store_internal::kMaxFrameBytes, " bytes; wait on fewer keys at a time"));
    }
    return Call(
               Op::kWait, [&] { return build().Finish(); }, all, deadline)
        .status();
  }

  absl::StatusOr<bool> Delete(absl::string_view key, absl::Time deadline) override {
    RETURN_IF_ERROR(ValidateKey(key));
    FrameWriter w;
    w.U8(static_cast<uint8_t>(Op::kDelete)).Bytes(key);
    ASSIGN_OR_RETURN(std::string reply, Call(Op::kDelete, std::move(w).Finish(), {}, deadline));
    FrameReader r(reply);
    uint8_t existed = 0;
    if (!r.U8(&existed) || !r.AtEnd() || existed > 1) return Malformed(Op::kDelete);
    return existed == 1;
  }

  absl::StatusOr<std::vector<std::string>> ListPrefix(absl::string_view prefix,
                                                      absl::Time deadline) override {
    RETURN_IF_ERROR(store_internal::ValidatePrefix(prefix));
    FrameWriter w;
    w.U8(static_cast<uint8_t>(Op::kListPrefix)).Bytes(prefix);
    ASSIGN_OR_RETURN(std::string reply, Call(Op::kListPrefix, std::move(w).Finish(), {}, deadline));
    FrameReader r(reply);
    uint32_t n = 0;
    if (!r.U32(&n) || n > r.remaining() / 4) return Malformed(Op::kListPrefix);
    std::vector<std::string> keys;
    keys.reserve(n);
    for (uint32_t i = 0; i < n; ++i) {
      absl::string_view key;
      if (!r.Bytes(&key)) return Malformed(Op::kListPrefix);
      keys.emplace_back(key);
    }
    if (!r.AtEnd()) return Malformed(Op::kListPrefix);
    return keys;
  }

 private:
  template <typename Build>
  absl::StatusOr<std::string> Call(Op op, Build build, const std::vector<std::string>& wait_keys,
                                   absl::Time deadline);
  absl::StatusOr<std::string> Call(Op op, std::string request,
                                   const std::vector<std::string>& wait_keys, absl::Time deadline) {
    return Call(
        op, [&] { return request; }, wait_keys, deadline);
  }

  // An idle pooled connection that still looks alive, else a new one.
  absl::StatusOr<UniqueFd> Acquire(absl::Time deadline, RetryBackoff& backoff);
  void Release(UniqueFd fd);
  absl::StatusOr<UniqueFd> DialWithRetry(absl::Time deadline, RetryBackoff& backoff);
  absl::StatusOr<UniqueFd> Dial(absl::Time deadline);

  absl::Status Malformed(Op op) const {
    return absl::InternalError(absl::StrCat("malformed ", store_internal::OpName(op),
                                            " reply from the store server at ", where_));
  }

  const std::string host_;
  const int port_;
  const std::string token_;
  const std::string where_;  // "host:port", for messages

  absl::Mutex mu_;
  std::vector<UniqueFd> idle_ ABSL_GUARDED_BY(mu_);
};

template <typename Build>
absl::StatusOr<std::string> TcpStore::Call(Op op, Build build,
                                           const std::vector<std::string>& wait_keys,
                                           absl::Time deadline) {
  const bool waits = op == Op::kGet || op == Op::kWait;
  // Everything but Add may be sent again after a broken connection: repeating Set, Get,
  // Delete, ListPrefix or a CompareSet that already won gives the same result.
  const bool retriable = op != Op::kAdd;
  RetryBackoff backoff(kFirstBackoff, kMaxBackoff);
  while (true) {
    ASSIGN_OR_RETURN(UniqueFd fd, Acquire(deadline, backoff));
    std::string request = build();
    absl::Status sent = store_internal::SendAllUntil(fd.get(), request, deadline + kReplyGrace);
    absl::StatusOr<std::string> reply =
        sent.ok() ? store_internal::RecvFrameUntil(fd.get(), deadline + kReplyGrace,
                                                   store_internal::kMaxFrameBytes)
                  : sent;
    if (reply.ok()) {
      FrameReader r(*reply);
      uint8_t code = 0;
      absl::string_view message;
      if (!r.U8(&code) || code > static_cast<uint8_t>(absl::StatusCode::kUnauthenticated) ||
          !r.Bytes(&message)) {
        return Malformed(op);  // fd is dropped: the stream can no longer be trusted
      }
      std::string rest(reply->data() + (reply->size() - r.remaining()), r.remaining());
      Release(std::move(fd));
      if (code != 0) return absl::Status(static_cast<absl::StatusCode>(code), message);
      return rest;
    }
    // The connection is out of step or broken; it is dropped (fd closes here).
    const absl::Status& error = reply.status();
    if (error.code() == absl::StatusCode::kDeadlineExceeded) {
      if (waits) {
        return Annotate(store_internal::MissingKeysError(store_internal::OpName(op), wait_keys),
                        absl::StrCat("no answer from the store server at ", where_));
      }
      return absl::UnavailableError(absl::StrCat(
          "store ", store_internal::OpName(op), ": no answer from the store server at ", where_,
          " before the deadline", sent.ok() && !retriable ? "; it may have been applied" : ""));
    }
    if (error.code() == absl::StatusCode::kInternal) return error;  // malformed frame
    if (sent.ok() && !retriable) {
      return absl::UnavailableError(absl::StrCat(
          "store ", store_internal::OpName(op), ": lost the connection to the store server at ",
          where_,
          " after sending the request, so it may or may not have been applied: ", error.message()));
    }
    TLOG(warn, "store client: lost the connection to {} during {} ({}); reconnecting", where_,
                 store_internal::OpName(op), error.message());
    if (!backoff.Sleep(deadline)) {
      return absl::UnavailableError(absl::StrCat("store ", store_internal::OpName(op),
                                                 ": could not reach the store server at ", where_,
                                                 " before the deadline: ", error.message()));
    }
  }
}

absl::StatusOr<UniqueFd> TcpStore::Acquire(absl::Time deadline, RetryBackoff& backoff) {
  while (true) {
    UniqueFd fd;
    {
      absl::MutexLock lock(&mu_);
      if (idle_.empty()) break;
      fd = std::move(idle_.back());
      idle_.pop_back();
    }
    if (!LooksClosed(fd.get())) return fd;
    TLOG(debug, "store client: pooled connection to {} was closed by the server", where_);
  }
  return DialWithRetry(deadline, backoff);
}

void TcpStore::Release(UniqueFd fd) {
  absl::MutexLock lock(&mu_);
  if (idle_.size() < kMaxIdle) idle_.push_back(std::move(fd));
}

absl::StatusOr<UniqueFd> TcpStore::DialWithRetry(absl::Time deadline, RetryBackoff& backoff) {
  while (true) {
    absl::StatusOr<UniqueFd> fd = Dial(deadline);
    if (fd.ok()) return fd;
    // A refusal is final: retrying with the same token cannot succeed.
    absl::StatusCode code = fd.status().code();
    if (code == absl::StatusCode::kPermissionDenied ||
        code == absl::StatusCode::kFailedPrecondition) {
      return fd.status();
    }
    if (!backoff.Sleep(deadline)) {
      return absl::UnavailableError(absl::StrCat("could not reach the store server at ", where_,
                                                 " before the deadline: ", fd.status().message()));
    }
  }
}

absl::StatusOr<UniqueFd> TcpStore::Dial(absl::Time deadline) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* addrs = nullptr;
  std::string port = absl::StrCat(port_);
  int gai = getaddrinfo(host_.c_str(), port.c_str(), &hints, &addrs);
  if (gai != 0) {
    return absl::UnavailableError(absl::StrCat("cannot resolve ", host_, ": ", gai_strerror(gai)));
  }
  absl::Status last = absl::UnavailableError(absl::StrCat("no address for ", host_));
  UniqueFd fd;
  for (addrinfo* a = addrs; a != nullptr && !fd.valid(); a = a->ai_next) {
    UniqueFd s(socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol));
    if (!s.valid()) {
      last = ErrnoToStatus(errno, "socket");
      continue;
    }
    if (connect(s.get(), a->ai_addr, a->ai_addrlen) != 0) {
      if (errno != EINPROGRESS) {
        last = ErrnoToStatus(errno, absl::StrCat("connect(", where_, ")"));
        continue;
      }
      pollfd p{s.get(), POLLOUT, 0};
      int rc;
      do {
        rc = poll(&p, 1, store_internal::PollTimeoutMs(deadline));
      } while (rc < 0 && errno == EINTR);
      if (rc == 0) {
        last = absl::UnavailableError(absl::StrCat("connect(", where_, ") timed out"));
        continue;
      }
      int err = 0;
      socklen_t len = sizeof(err);
      if (rc < 0)
        err = errno;
      else
        getsockopt(s.get(), SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        last = ErrnoToStatus(err, absl::StrCat("connect(", where_, ")"));
        continue;
      }
    }
    fd = std::move(s);
  }
  freeaddrinfo(addrs);
  if (!fd.valid()) return last;
  int one = 1;
  setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

  FrameWriter hello;
  hello.U8(static_cast<uint8_t>(Op::kHello))
      .U32(store_internal::kProtocolMagic)
      .U32(store_internal::kProtocolVersion)
      .Bytes(token_);
  RETURN_IF_ERROR(Annotate(
      store_internal::SendAllUntil(fd.get(), std::move(hello).Finish(), deadline), "store hello"));
  absl::StatusOr<std::string> reply =
      store_internal::RecvFrameUntil(fd.get(), deadline, store_internal::kMaxHelloBytes);
  if (!reply.ok()) {
    return absl::UnavailableError(
        absl::StrCat("no answer to the store hello from ", where_, ": ", reply.status().message()));
  }
  FrameReader r(*reply);
  uint8_t code = 0;
  absl::string_view message;
  if (!r.U8(&code) || !r.Bytes(&message)) {
    return absl::UnavailableError(
        absl::StrCat(where_, " answered the store hello with garbage; is it a trident store?"));
  }
  if (code == static_cast<uint8_t>(absl::StatusCode::kPermissionDenied)) {
    return absl::PermissionDeniedError(absl::StrCat(
        "the store server at ", where_, " refused this client's job token (", message,
        "); check TRIDENT_JOB_TOKEN: it must be the token of the job that trident-run started"));
  }
  if (code != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("the store server at ", where_, " refused this client: ", message));
  }
  return fd;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Store>> NewTcpStore(const std::string& host, int port,
                                                   std::string job_token, absl::Time deadline) {
  if (host.empty()) return absl::InvalidArgumentError("store host is empty");
  if (port <= 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("store port ", port, " is not in [1, 65535]"));
  }
  auto store = std::make_unique<TcpStore>(host, port, std::move(job_token));
  RETURN_IF_ERROR(store->Connect(deadline));
  return store;
}

}  // namespace trident
