#include "store/tcp_store_protocol.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "store/kv_map.h"

namespace trident::store_internal {

absl::string_view OpName(Op op) {
  switch (op) {
    case Op::kHello:
      return "Hello";
    case Op::kSet:
      return "Set";
    case Op::kGet:
      return "Get";
    case Op::kTryGet:
      return "TryGet";
    case Op::kAdd:
      return "Add";
    case Op::kCompareSet:
      return "CompareSet";
    case Op::kWait:
      return "Wait";
    case Op::kDelete:
      return "Delete";
    case Op::kListPrefix:
      return "ListPrefix";
  }
  return "?";
}

FrameWriter& FrameWriter::U8(uint8_t v) {
  buf_.push_back(static_cast<char>(v));
  return *this;
}

FrameWriter& FrameWriter::U32(uint32_t v) {
  for (int i = 0; i < 4; ++i) buf_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  return *this;
}

FrameWriter& FrameWriter::I64(int64_t v) {
  auto u = static_cast<uint64_t>(v);
  for (int i = 0; i < 8; ++i) buf_.push_back(static_cast<char>((u >> (8 * i)) & 0xff));
  return *this;
}

FrameWriter& FrameWriter::Bytes(absl::string_view v) {
  U32(static_cast<uint32_t>(v.size()));
  buf_.append(v.data(), v.size());
  return *this;
}

std::string FrameWriter::Finish() {
  auto n = static_cast<uint32_t>(body_size());
  for (int i = 0; i < 4; ++i) buf_[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return std::move(buf_);
}

uint32_t LoadU32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i)
    v |= static_cast<uint32_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}

absl::StatusOr<Hello> DecodeHello(absl::string_view body) {
  FrameReader r(body);
  uint8_t op = 0;
  uint32_t magic = 0;
  Hello hello;
  if (!r.U8(&op) || op != static_cast<uint8_t>(Op::kHello) || !r.U32(&magic) ||
      magic != kProtocolMagic) {
    return absl::PermissionDeniedError("first message is not a store hello");
  }
  if (!r.U32(&hello.version) || !r.Bytes(&hello.token) || !r.AtEnd()) {
    return absl::PermissionDeniedError("malformed hello");
  }
  return hello;
}

absl::StatusOr<Request> DecodeRequest(absl::string_view body) {
  FrameReader r(body);
  uint8_t op_byte = 0;
  if (!r.U8(&op_byte)) return absl::InvalidArgumentError("empty request");
  Request q;
  q.op = static_cast<Op>(op_byte);
  auto malformed = [&] {
    return absl::InvalidArgumentError(absl::StrCat("malformed ", OpName(q.op), " request"));
  };
  auto check = [&](const absl::Status& s) {
    return s.ok() ? s : absl::InvalidArgumentError(absl::StrCat(OpName(q.op), ": ", s.message()));
  };
  switch (q.op) {
    case Op::kSet:
      if (!r.Bytes(&q.key) || !r.Bytes(&q.value) || !r.AtEnd()) return malformed();
      RETURN_IF_ERROR(check(ValidateKey(q.key)));
      RETURN_IF_ERROR(check(ValidateValue(q.value)));
      return q;
    case Op::kGet:
      if (!r.Bytes(&q.key) || !r.I64(&q.timeout_ms) || !r.AtEnd()) return malformed();
      RETURN_IF_ERROR(check(ValidateKey(q.key)));
      return q;
    case Op::kTryGet:
    case Op::kDelete:
      if (!r.Bytes(&q.key) || !r.AtEnd()) return malformed();
      RETURN_IF_ERROR(check(ValidateKey(q.key)));
      return q;
    case Op::kAdd:
      if (!r.Bytes(&q.key) || !r.I64(&q.delta) || !r.AtEnd()) return malformed();
      RETURN_IF_ERROR(check(ValidateKey(q.key)));
      return q;
    case Op::kCompareSet:
      if (!r.Bytes(&q.key) || !r.Bytes(&q.expected) || !r.Bytes(&q.value) || !r.AtEnd()) {
        return malformed();
      }
      RETURN_IF_ERROR(check(ValidateKey(q.key)));
      RETURN_IF_ERROR(check(ValidateValue(q.expected)));
      RETURN_IF_ERROR(check(ValidateValue(q.value)));
      return q;
    case Op::kWait: {
      uint32_t n = 0;
      // Each key takes at least its 4-byte length: a count over that is malformed, and never
      // sizes an allocation.
      if (!r.U32(&n) || n > r.remaining() / 4) return malformed();
      q.keys.reserve(n);
      for (uint32_t i = 0; i < n; ++i) {
        absl::string_view key;
        if (!r.Bytes(&key)) return malformed();
        RETURN_IF_ERROR(check(ValidateKey(key)));
        q.keys.push_back(key);
      }
      if (!r.I64(&q.timeout_ms) || !r.AtEnd()) return malformed();
      return q;
    }
    case Op::kListPrefix:
      if (!r.Bytes(&q.key) || !r.AtEnd()) return malformed();
      if (!ValidatePrefix(q.key).ok()) return malformed();
      return q;
    case Op::kHello:
      break;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown or repeated op ", op_byte));
}

bool FrameReader::U8(uint8_t* v) {
  if (rest_.empty()) return false;
  *v = static_cast<uint8_t>(rest_[0]);
  rest_.remove_prefix(1);
  return true;
}

bool FrameReader::U32(uint32_t* v) {
  if (rest_.size() < 4) return false;
  *v = LoadU32(rest_.data());
  rest_.remove_prefix(4);
  return true;
}

bool FrameReader::I64(int64_t* v) {
  if (rest_.size() < 8) return false;
  uint64_t u = 0;
  for (int i = 0; i < 8; ++i)
    u |= static_cast<uint64_t>(static_cast<unsigned char>(rest_[i])) << (8 * i);
  *v = static_cast<int64_t>(u);
  rest_.remove_prefix(8);
  return true;
}

bool FrameReader::Bytes(absl::string_view* v) {
  if (rest_.size() < 4) return false;
  uint32_t n = LoadU32(rest_.data());
  if (n > rest_.size() - 4) return false;
  *v = rest_.substr(4, n);
  rest_.remove_prefix(4 + static_cast<size_t>(n));
  return true;
}

bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  // Walk the longer length in full and fold every difference (and the length) into one word.
  size_t n = a.size() > b.size() ? a.size() : b.size();
  volatile unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff = diff | (x ^ y);
  }
  return diff == 0;
}

int64_t TimeoutMsUntil(absl::Time deadline) {
  if (deadline == absl::InfiniteFuture()) return -1;
  absl::Duration left = deadline - absl::Now();
  if (left <= absl::ZeroDuration()) return 0;
  return absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1)));
}

int PollTimeoutMs(absl::Time deadline) {
  if (deadline == absl::InfiniteFuture()) return -1;
  int64_t ms = TimeoutMsUntil(deadline);
  return ms > INT_MAX / 2 ? INT_MAX / 2 : static_cast<int>(ms);
}

std::string PeerAddress(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return "?";
  char host[INET6_ADDRSTRLEN] = "?";
  if (addr.ss_family == AF_INET) {
    auto* in = reinterpret_cast<sockaddr_in*>(&addr);
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
    return absl::StrCat(host, ":", ntohs(in->sin_port));
  }
  if (addr.ss_family == AF_INET6) {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&addr);
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
    return absl::StrCat("[", host, "]:", ntohs(in6->sin6_port));
  }
  return "?";
}

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) reset(other.release());
  return *this;
}

int UniqueFd::release() {
  int fd = fd_;
  fd_ = -1;
  return fd;
}

void UniqueFd::reset(int fd) {
  if (fd_ >= 0) close(fd_);
  fd_ = fd;
}

namespace {

// Waits for `events` on fd until deadline; kDeadlineExceeded when it passes.
absl::Status PollUntil(int fd, short events, absl::Time deadline) {
  while (true) {
    pollfd p{fd, events, 0};
    int rc = poll(&p, 1, PollTimeoutMs(deadline));
    if (rc > 0) return absl::OkStatus();  // errors and hang-ups surface in the next call
    if (rc < 0 && errno != EINTR) return ErrnoToStatus(errno, "poll(store socket)");
    if (rc == 0 && absl::Now() >= deadline) {
      return absl::DeadlineExceededError("store socket: deadline passed");
    }
  }
}

absl::Status RecvExactUntil(int fd, char* out, size_t n, absl::Time deadline) {
  size_t done = 0;
  while (done < n) {
    ssize_t got = recv(fd, out + done, n - done, 0);
    if (got > 0) {
      done += static_cast<size_t>(got);
      continue;
    }
    if (got == 0) return absl::UnavailableError("the store server closed the connection");
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      RETURN_IF_ERROR(PollUntil(fd, POLLIN, deadline));
      continue;
    }
    return ErrnoToStatus(errno, "recv(store socket)");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status SendAllUntil(int fd, absl::string_view data, absl::Time deadline) {
  while (!data.empty()) {
    ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n > 0) {
      data.remove_prefix(static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      RETURN_IF_ERROR(PollUntil(fd, POLLOUT, deadline));
      continue;
    }
    return ErrnoToStatus(errno, "send(store socket)");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> RecvFrameUntil(int fd, absl::Time deadline, size_t max_body) {
  char prefix[4];
  RETURN_IF_ERROR(RecvExactUntil(fd, prefix, sizeof(prefix), deadline));
  uint32_t n = LoadU32(prefix);
  if (n == 0 || n > max_body) {
    return absl::InternalError(absl::StrCat("malformed frame from the store server: length ", n,
                                            " (limit ", max_body, ")"));
  }
  std::string body(n, '\0');
  RETURN_IF_ERROR(RecvExactUntil(fd, body.data(), n, deadline));
  return body;
}

}  // namespace trident::store_internal
