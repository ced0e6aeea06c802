#include "transport/inproc/inproc_transport.h"

#include <algorithm>
#include <cstring>
#include <deque>
#include <list>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/check.h"

namespace trident {
namespace {

struct PostedRecv {
  int src;
  uint64_t tag;
  void* data;
  size_t capacity;
  TransportRequest* request;
};

struct Unexpected {
  int src;
  uint64_t tag;
  std::string bytes;
};

// The mailboxes of every rank, behind one lock: simple, and fast enough for tests.
class Hub {
 public:
  explicit Hub(int size) : posted_(size), unexpected_(size) {}

  void Send(int src, int dst, uint64_t tag, const void* data, size_t bytes,
            TransportRequest* request) {
    {
      absl::MutexLock lock(&mu_);
      auto& posted = posted_[dst];
      auto it = std::find_if(posted.begin(), posted.end(), [&](const PostedRecv& r) {
        return r.src == src && r.tag == tag;
      });
      if (it != posted.end()) {
        Deliver(*it, data, bytes);
        posted.erase(it);
      } else {
        unexpected_[dst].push_back(
            {src, tag, std::string(static_cast<const char*>(data), bytes)});
      }
    }
    Finish(request, absl::OkStatus(), bytes);
  }

  void Recv(int self, int src, uint64_t tag, void* data, size_t capacity,
            TransportRequest* request) {
    absl::MutexLock lock(&mu_);
    auto& queue = unexpected_[self];
    auto it = std::find_if(queue.begin(), queue.end(), [&](const Unexpected& u) {
      return u.src == src && u.tag == tag;
    });
    PostedRecv recv{src, tag, data, capacity, request};
    if (it != queue.end()) {
      Deliver(recv, it->bytes.data(), it->bytes.size());
      queue.erase(it);
    } else {
      posted_[self].push_back(recv);
    }
  }

  void Cancel(int self, TransportRequest* request, const absl::Status& reason) {
    absl::MutexLock lock(&mu_);
    auto& posted = posted_[self];
    for (auto it = posted.begin(); it != posted.end(); ++it) {
      if (it->request == request) {
        posted.erase(it);
        Finish(request, reason, 0);
        return;
      }
    }
  }

 private:
  static void Finish(TransportRequest* request, absl::Status status, size_t bytes) {
    request->status = std::move(status);
    request->bytes = bytes;
    request->done.store(true, std::memory_order_release);
  }

  static void Deliver(const PostedRecv& recv, const void* data, size_t bytes) {
    if (bytes > recv.capacity) {
      Finish(recv.request,
             absl::InvalidArgumentError(absl::StrCat(
                 "message of ", bytes, " bytes from rank ", recv.src, " (tag ", recv.tag,
                 ") is larger than the receive buffer of ", recv.capacity, " bytes")),
             0);
      return;
    }
    if (bytes > 0) std::memcpy(recv.data, data, bytes);
    Finish(recv.request, absl::OkStatus(), bytes);
  }

  absl::Mutex mu_;
  std::vector<std::list<PostedRecv>> posted_ ABSL_GUARDED_BY(mu_);
  std::vector<std::deque<Unexpected>> unexpected_ ABSL_GUARDED_BY(mu_);
};

class InprocTransport : public Transport {
 public:
  InprocTransport(std::shared_ptr<Hub> hub, int rank, int size)
      : hub_(std::move(hub)), rank_(rank), size_(size) {}

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string Describe() const override { return "inproc"; }

  absl::Status PostSend(int peer, uint64_t tag, const void* data, size_t bytes,
                        TransportRequest* request) override {
    TRIDENT_CHECK(peer >= 0 && peer < size_) << "peer " << peer;
    request->peer = peer;
    hub_->Send(rank_, peer, tag, data, bytes, request);
    return absl::OkStatus();
  }

  absl::Status PostRecv(int peer, uint64_t tag, void* data, size_t capacity,
                        TransportRequest* request) override {
    TRIDENT_CHECK(peer >= 0 && peer < size_) << "peer " << peer;
    request->peer = peer;
    hub_->Recv(rank_, peer, tag, data, capacity, request);
    return absl::OkStatus();
  }

  absl::StatusOr<int> Progress() override { return 0; }

  void Cancel(TransportRequest* request, const absl::Status& reason) override {
    if (request->IsDone()) return;
    hub_->Cancel(rank_, request, reason);
  }

 private:
  std::shared_ptr<Hub> hub_;
  int rank_;
  int size_;
};

}  // namespace

std::vector<std::shared_ptr<Transport>> NewInprocTransports(int size) {
  auto hub = std::make_shared<Hub>(size);
  std::vector<std::shared_ptr<Transport>> out;
  for (int r = 0; r < size; ++r) out.push_back(std::make_shared<InprocTransport>(hub, r, size));
  return out;
}

}  // namespace trident
