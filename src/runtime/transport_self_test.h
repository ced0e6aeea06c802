// The transport self-test at world build, the third check of the burn-in (health/burn_in.h,
// docs/fault-tolerance.md "Burn-in before admission"): right after a world is built, each rank
// sends a known pattern (a function of the epoch, the sender and the word's index) to both of
// its ring neighbours and checks, word by word, what comes from each: the bytes went through
// the transport end to end. Then the ranks all-reduce who saw a wrong word, so that every rank
// of the world knows the outcome before training starts.
//
// Thread-compatible; collective over the world.
#ifndef TRIDENT_RUNTIME_TRANSPORT_SELF_TEST_H_
#define TRIDENT_RUNTIME_TRANSPORT_SELF_TEST_H_

#include <cstddef>
#include <cstdint>
#include <functional>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "trident/communicator.h"

namespace trident::runtime_internal {

struct TransportSelfTestOptions {
  size_t bytes = 64 << 10;  // to each neighbour
  // Test hook (TRIDENT_TEST_BURN_IN_FAIL=transport): this rank sees one wrong word.
  bool inject = false;
  // Each op's deadline (the build's), and a check polled while waiting (a rank of the world
  // died: non-OK ends the test with that status and aborts the world).
  absl::Time deadline = absl::InfiniteFuture();
  std::function<absl::Status()> interrupted;
};

// OK when every rank received its neighbours' patterns intact. On the rank that saw a wrong
// word: kDataLoss naming the neighbour, the word, what was expected and what came (this rank
// is not admitted). On the others: kAborted naming that rank (wait for the epoch that
// replaces it). The communicator's error otherwise (a peer died: the same).
absl::Status TransportSelfTest(Communicator& world, int64_t epoch,
                               const TransportSelfTestOptions& options);

}  // namespace trident::runtime_internal

#endif  // TRIDENT_RUNTIME_TRANSPORT_SELF_TEST_H_
