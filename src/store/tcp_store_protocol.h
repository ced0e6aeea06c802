// The wire protocol between TcpStore (client) and TcpStoreServer, and the socket helpers both
// sides use.
//
// Every message is a frame: u32 body length (little-endian), then the body. Integers in a body
// are little-endian; "bytes" is a u32 length then that many bytes.
//   request:  u8 op, then the op's fields (see Op below)
//   reply:    u8 absl::StatusCode, bytes message, then (only when the code is OK) the op's results
// The first request of a connection is kHello; the server answers it with OK, or with
// kPermissionDenied (wrong token) or kFailedPrecondition (other protocol) and then closes.
// One request is in flight per connection: a client sends the next only after the reply.
// Get and Wait carry the client's remaining timeout (ms, -1 = none), so the server answers
// kDeadlineExceeded naming the missing keys at about the time the client gives up.
#ifndef TRIDENT_STORE_TCP_STORE_PROTOCOL_H_
#define TRIDENT_STORE_TCP_STORE_PROTOCOL_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "trident/store.h"

namespace trident::store_internal {

inline constexpr uint32_t kProtocolMagic = 0x53445254;  // "TRDS" on the wire
inline constexpr uint32_t kProtocolVersion = 1;

// The largest body either side accepts: a CompareSet carries a key and two values. A length
// prefix over it is malformed, and the connection is closed.
inline constexpr size_t kMaxFrameBytes = 2 * Store::kMaxValueBytes + 2 * Store::kMaxKeyBytes + 1024;
// Before the hello is accepted a peer may send only this much (a token is small).
inline constexpr size_t kMaxHelloBytes = 64 << 10;

enum class Op : uint8_t {
  kHello = 1,       // u32 magic, u32 version, bytes token            -> (nothing)
  kSet = 2,         // bytes key, bytes value                         -> (nothing)
  kGet = 3,         // bytes key, i64 timeout_ms                      -> bytes value
  kTryGet = 4,      // bytes key                                      -> bytes value | kNotFound
  kAdd = 5,         // bytes key, i64 delta                           -> i64 new value
  kCompareSet = 6,  // bytes key, bytes expected, bytes desired       -> bytes value afterwards
  kWait = 7,        // u32 n, n x bytes key, i64 timeout_ms           -> (nothing)
  kDelete = 8,      // bytes key                                      -> u8 existed
  kListPrefix = 9,  // bytes prefix                                   -> u32 n, n x bytes key
};

absl::string_view OpName(Op op);

// Builds one frame; the length prefix is filled in by Finish().
class FrameWriter {
 public:
  FrameWriter() : buf_(4, '\0') {}
  FrameWriter& U8(uint8_t v);
  FrameWriter& U32(uint32_t v);
  FrameWriter& I64(int64_t v);
  FrameWriter& Bytes(absl::string_view v);
  size_t body_size() const { return buf_.size() - 4; }
  // The whole frame, prefix included; the writer is left empty.
  std::string Finish();

 private:
  std::string buf_;
};

// Reads the fields of one frame body. Every getter returns false, and consumes nothing, when
// the body is too short: the caller treats that as a malformed frame.
class FrameReader {
 public:
  explicit FrameReader(absl::string_view body) : rest_(body) {}
  bool U8(uint8_t* v);
  bool U32(uint32_t* v);
  bool I64(int64_t* v);
  bool Bytes(absl::string_view* v);
  bool AtEnd() const { return rest_.empty(); }
  size_t remaining() const { return rest_.size(); }

 private:
  absl::string_view rest_;
};

uint32_t LoadU32(const char* p);

// --- The server's side: decoding what a peer sent (any bytes at all; tests/fuzz fuzzes it) ---

// The first frame of a connection. kPermissionDenied when it is not a hello; the version and
// token are the server's to judge.
struct Hello {
  uint32_t version = 0;
  absl::string_view token;  // points into the frame
};
absl::StatusOr<Hello> DecodeHello(absl::string_view body);

// One request, its fields pointing into the frame. Which fields an op uses: see Op.
struct Request {
  Op op = Op::kHello;
  absl::string_view key;       // ListPrefix: the prefix
  absl::string_view value;     // Set; CompareSet: the desired value
  absl::string_view expected;  // CompareSet
  int64_t timeout_ms = 0;      // Get, Wait
  int64_t delta = 0;           // Add
  std::vector<absl::string_view> keys;  // Wait
};
// Decodes a request and checks its keys and values against the store's limits.
// kInvalidArgument ("malformed Set request", "Get: store key is empty", "unknown or repeated
// op 77"): the server closes that connection with the message.
absl::StatusOr<Request> DecodeRequest(absl::string_view body);

// Compares in time that depends only on the lengths, never on where the bytes first differ.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b);

// Encodes a deadline as a remaining timeout for the wire: -1 for none, else ms rounded up (so
// the server never answers before the client's deadline).
int64_t TimeoutMsUntil(absl::Time deadline);

// A poll() timeout in ms until deadline: -1 for an infinite one, rounded up, capped.
int PollTimeoutMs(absl::Time deadline);

// "1.2.3.4:5" or "[::1]:5" for a socket's peer (or "?" when it cannot be read).
std::string PeerAddress(int fd);

// Owns a file descriptor.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release();
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

// Blocking-with-deadline I/O on a non-blocking socket, for the client. Errors:
// kDeadlineExceeded when the deadline passed, kUnavailable when the peer closed or reset the
// connection, kInternal (DataLoss-like) for a length prefix over max_body.
absl::Status SendAllUntil(int fd, absl::string_view data, absl::Time deadline);
absl::StatusOr<std::string> RecvFrameUntil(int fd, absl::Time deadline, size_t max_body);

}  // namespace trident::store_internal

#endif  // TRIDENT_STORE_TCP_STORE_PROTOCOL_H_
