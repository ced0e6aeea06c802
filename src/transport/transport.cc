#include "transport/transport.h"

#include <optional>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace trident {

absl::Status WithPeer(absl::Status status, int peer) {
  if (!status.ok()) status.SetPayload(kPeerPayloadUrl, absl::Cord(absl::StrCat(peer)));
  return status;
}

int PeerOf(const absl::Status& status) {
  auto payload = status.GetPayload(kPeerPayloadUrl);  // absl::optional in this Abseil
  int peer = -1;
  if (!payload.has_value() || !absl::SimpleAtoi(std::string(*payload), &peer)) return -1;
  return peer;
}

}  // namespace trident
