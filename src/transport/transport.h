// Transport: tagged, reliable, ordered messages between the ranks of one job. The host
// communicator's algorithms are written once over this interface; the backends are
// fabric/ (libfabric RDM endpoints: shm, tcp, efa) and inproc/ (threads as ranks, for tests).
//
// Model: PostSend/PostRecv start an operation and return at once; the caller owns the
// TransportRequest, keeps it (and the buffer) alive and unmoved until `done`, and drives
// completion by calling Progress(). A send and a receive match when the receive was posted on
// the sender's peer with the same tag; messages with the same (peer, tag) match in the order
// they were sent. Messages of any size are allowed (a backend splits what its provider
// cannot carry in one piece). A receive whose buffer is smaller than the message fails with
// kInvalidArgument.
//
// Thread-safety: every method may be called from any thread.
#ifndef TRIDENT_TRANSPORT_TRANSPORT_H_
#define TRIDENT_TRANSPORT_TRANSPORT_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace trident {

// A transport error caused by one peer (a connection reset, a CQ error naming it) carries that
// peer's transport rank as a status payload, so that layers above can report the peer as
// suspect (health: job/suspect_rank/<rank>) without parsing messages.
inline constexpr char kPeerPayloadUrl[] = "trident/peer-rank";
absl::Status WithPeer(absl::Status status, int peer);
// The peer a status names through WithPeer, or -1.
int PeerOf(const absl::Status& status);

// The completion record of one send or receive; owned by the caller.
struct TransportRequest {
  // Set (release) by the transport once the operation finished, successfully or not; `status`
  // and `bytes` are valid after an acquire load sees true.
  std::atomic<bool> done{false};
  absl::Status status;
  size_t bytes = 0;  // bytes sent, or received

  // Backend bookkeeping; the caller does not touch these.
  int peer = -1;
  int pending_parts = 0;
  void* backend = nullptr;

  bool IsDone() const { return done.load(std::memory_order_acquire); }
};

class Transport {
 public:
  virtual ~Transport() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // E.g. "fabric(shm)" or "inproc".
  virtual std::string Describe() const = 0;

  // Starts sending `bytes` bytes at `data` to `peer` with `tag`. An error returned here means
  // the request was not started; errors after the start are reported in request->status.
  virtual absl::Status PostSend(int peer, uint64_t tag, const void* data, size_t bytes,
                                TransportRequest* request) = 0;
  // Starts receiving at most `capacity` bytes from `peer` with `tag` into `data`.
  virtual absl::Status PostRecv(int peer, uint64_t tag, void* data, size_t capacity,
                                TransportRequest* request) = 0;

  // Completes whatever operations can be completed now; returns how many finished. Never
  // blocks for long. A failure of the transport as a whole (not of one peer) is returned.
  virtual absl::StatusOr<int> Progress() = 0;

  // Withdraws a request that has not completed, so that the transport no longer touches its
  // buffer; afterwards the request is done with `reason` (or with its real outcome if it
  // completed meanwhile). Returns promptly (bounded by a short internal timeout).
  virtual void Cancel(TransportRequest* request, const absl::Status& reason) = 0;
};

}  // namespace trident

#endif  // TRIDENT_TRANSPORT_TRANSPORT_H_
