// Communicator::SendRecv's default: each op issued on its own, one Work over all of them.
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "trident/communicator.h"

namespace trident {
namespace {

// Complete when every part is; its status is the first failure in batch order.
class BatchWork : public Work {
 public:
  explicit BatchWork(std::vector<std::shared_ptr<Work>> parts) : parts_(std::move(parts)) {}

  absl::Status Wait(absl::Time deadline) override {
    absl::Status first;
    for (const auto& part : parts_) {
      absl::Status s = part->Wait(deadline);
      if (!part->IsCompleted()) return s;  // the caller's deadline passed
      if (first.ok()) first = s;
    }
    return first;
  }
  bool IsCompleted() const override {
    for (const auto& part : parts_) {
      if (!part->IsCompleted()) return false;
    }
    return true;
  }
  absl::Status status() const override {
    if (!IsCompleted()) return absl::UnavailableError("SendRecv batch still running");
    for (const auto& part : parts_) {
      if (absl::Status s = part->status(); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

 private:
  const std::vector<std::shared_ptr<Work>> parts_;
};

}  // namespace

std::shared_ptr<Work> Communicator::SendRecv(const std::vector<P2POp>& ops,
                                             const OpOptions& options) {
  std::vector<std::shared_ptr<Work>> parts;
  parts.reserve(ops.size());
  for (const P2POp& op : ops) {
    parts.push_back(op.kind == P2POp::Kind::kSend ? Send(op.tensor, op.peer, op.tag, options)
                                                  : Recv(op.tensor, op.peer, op.tag, options));
  }
  return std::make_shared<BatchWork>(std::move(parts));
}

}  // namespace trident
