#include "comm/host/channel.h"

#include "absl/strings/str_cat.h"
#include "common/backoff.h"
#include "common/check.h"

namespace trident {

namespace {
// How often a stalled wait asks the health check; cheap enough for a store round trip.
constexpr absl::Duration kHealthInterval = absl::Milliseconds(50);
}  // namespace

Channel::Channel(Transport* transport, const std::vector<int>* ranks, int rank,
                 uint16_t context, uint32_t seq, absl::Time deadline,
                 const std::atomic<bool>* aborted, HealthCheck health, OnTimeout on_timeout)
    : transport_(transport),
      ranks_(ranks),
      rank_(rank),
      context_(context),
      seq_(seq),
      deadline_(deadline),
      aborted_(aborted),
      health_(std::move(health)),
      on_timeout_(std::move(on_timeout)) {}

Channel::~Channel() {
  const absl::Status reason =
      failure_.ok() ? absl::CancelledError("op ended") : failure_;
  for (TransportRequest& request : requests_) {
    if (!request.IsDone()) transport_->Cancel(&request, reason);
  }
}

absl::StatusOr<TransportRequest*> Channel::Send(int peer, const void* data, size_t bytes,
                                                uint16_t slot) {
  return Post(/*send=*/true, peer, const_cast<void*>(data), bytes, slot);
}

absl::StatusOr<TransportRequest*> Channel::Recv(int peer, void* data, size_t bytes,
                                                uint16_t slot) {
  return Post(/*send=*/false, peer, data, bytes, slot);
}

absl::StatusOr<TransportRequest*> Channel::Post(bool send, int peer, void* data, size_t bytes,
                                                uint16_t slot) {
  TRIDENT_CHECK(peer >= 0 && peer < size()) << "peer " << peer << " of " << size();
  if (!failure_.ok()) return failure_;
  TransportRequest* request = &requests_.emplace_back();
  const int to = (*ranks_)[peer];
  const uint64_t tag = MakeTag(context_, seq_, slot);
  absl::Status s = send ? transport_->PostSend(to, tag, data, bytes, request)
                        : transport_->PostRecv(to, tag, data, bytes, request);
  if (!s.ok()) {
    request->status = s;
    request->done.store(true, std::memory_order_release);
    return failure_ = s;
  }
  return request;
}

absl::Status Channel::Check(TransportRequest* request) {
  if (!request->status.ok()) return failure_ = request->status;
  return absl::OkStatus();
}

absl::Status Channel::Wait(TransportRequest* request) {
  if (!failure_.ok()) return failure_;
  if (request->IsDone()) return Check(request);
  Backoff backoff;
  absl::Time next_health = absl::Now() + kHealthInterval;
  while (true) {
    absl::StatusOr<int> progressed = transport_->Progress();
    if (!progressed.ok()) return failure_ = progressed.status();
    if (request->IsDone()) return Check(request);
    if (aborted_->load(std::memory_order_acquire)) {
      // The communicator supplies the abort status through the health check.
      absl::Status s = health_ ? health_() : absl::AbortedError("communicator aborted");
      return failure_ = s.ok() ? absl::AbortedError("communicator aborted") : s;
    }
    if (*progressed > 0) {
      backoff.Reset();
      continue;
    }
    absl::Time now = absl::Now();
    if (now >= deadline_) {
      return failure_ = on_timeout_ ? on_timeout_()
                                    : absl::DeadlineExceededError("op deadline passed");
    }
    if (now >= next_health && health_) {
      next_health = now + kHealthInterval;
      absl::Status s = health_();
      if (!s.ok()) return failure_ = s;
    }
    backoff.Pause();
  }
}

absl::Status Channel::WaitAll() {
  for (TransportRequest& request : requests_) {
    absl::Status s = Wait(&request);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status Channel::SendRecv(int send_peer, const void* send_data, size_t send_bytes,
                               int recv_peer, void* recv_data, size_t recv_bytes) {
  absl::StatusOr<TransportRequest*> recv = Recv(recv_peer, recv_data, recv_bytes);
  if (!recv.ok()) return recv.status();
  absl::StatusOr<TransportRequest*> send = Send(send_peer, send_data, send_bytes);
  if (!send.ok()) return send.status();
  absl::Status s = Wait(*recv);
  if (!s.ok()) return s;
  return Wait(*send);
}

}  // namespace trident
