// Channel: what one collective's algorithm sees of the world while it runs. It maps group
// ranks to transport ranks, builds tags, tracks every request the op posts, and waits on them
// under the op's deadline while watching for abort, failed peers and errors raised by other
// ranks. When the op ends (well or not) the channel withdraws whatever is still posted, so
// that no transport writes into a user buffer after the op has returned.
#ifndef TRIDENT_COMM_HOST_CHANNEL_H_
#define TRIDENT_COMM_HOST_CHANNEL_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "transport/transport.h"

namespace trident {

// Tag layout: context (16 bits) | sequence (32 bits) | slot (16 bits). Slot 0 carries data,
// slot 1 the fingerprint. Point-to-point traffic uses sequence values with the top bit set.
inline uint64_t MakeTag(uint16_t context, uint32_t seq, uint16_t slot) {
  return (static_cast<uint64_t>(context) << 48) | (static_cast<uint64_t>(seq) << 16) | slot;
}
inline constexpr uint16_t kDataSlot = 0;
inline constexpr uint16_t kFingerprintSlot = 1;
inline constexpr uint32_t kP2PSeqBit = 0x80000000u;

class Channel {
 public:
  // Called every few tens of milliseconds while a wait makes no progress; a non-OK status
  // (a failed peer, an error published by another rank) ends the wait with that status.
  using HealthCheck = std::function<absl::Status()>;
  // Called once when the deadline passes; returns the kDeadlineExceeded to report.
  using OnTimeout = std::function<absl::Status()>;

  Channel(Transport* transport, const std::vector<int>* ranks, int rank, uint16_t context,
          uint32_t seq, absl::Time deadline, const std::atomic<bool>* aborted,
          HealthCheck health, OnTimeout on_timeout);
  ~Channel();  // withdraws anything still posted

  int rank() const { return rank_; }
  int size() const { return static_cast<int>(ranks_->size()); }

  // Post a send/receive to group rank `peer` on `slot`. The returned request lives as long as
  // the channel.
  absl::StatusOr<TransportRequest*> Send(int peer, const void* data, size_t bytes,
                                         uint16_t slot = kDataSlot);
  absl::StatusOr<TransportRequest*> Recv(int peer, void* data, size_t bytes,
                                         uint16_t slot = kDataSlot);

  // Waits until the request completes; fails on its error, the deadline, abort or a health
  // check failure.
  absl::Status Wait(TransportRequest* request);
  // Waits for every request posted so far.
  absl::Status WaitAll();

  // Post both, wait both.
  absl::Status SendRecv(int send_peer, const void* send_data, size_t send_bytes, int recv_peer,
                        void* recv_data, size_t recv_bytes);

 private:
  absl::StatusOr<TransportRequest*> Post(bool send, int peer, void* data, size_t bytes,
                                         uint16_t slot);
  absl::Status Check(TransportRequest* request);

  Transport* transport_;
  const std::vector<int>* ranks_;
  int rank_;
  uint16_t context_;
  uint32_t seq_;
  absl::Time deadline_;
  const std::atomic<bool>* aborted_;
  HealthCheck health_;
  OnTimeout on_timeout_;
  absl::Status failure_;  // sticky: once a wait failed, every later wait fails the same
  std::deque<TransportRequest> requests_;  // deque: addresses stay stable as it grows
};

}  // namespace trident

#endif  // TRIDENT_COMM_HOST_CHANNEL_H_
