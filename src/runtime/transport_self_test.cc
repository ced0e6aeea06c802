#include "runtime/transport_self_test.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"

namespace trident::runtime_internal {
namespace {

constexpr int kTagToRight = 0xC4C000;  // what a rank sends to rank + 1
constexpr int kTagToLeft = 0xC4C001;   // ... and to rank - 1

// SplitMix64 of (epoch, sender, word): every word differs from its neighbours and from the
// same word of another sender or epoch, so a shifted, stale or misrouted buffer shows.
uint64_t Word(int64_t epoch, int sender, uint64_t i) {
  uint64_t z = static_cast<uint64_t>(epoch) * 0x9E3779B97F4A7C15ull ^
               (static_cast<uint64_t>(sender) << 40) ^ i;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace

absl::Status TransportSelfTest(Communicator& world, int64_t epoch,
                               const TransportSelfTestOptions& options) {
  const int n = world.size();
  const int me = world.rank();
  if (n < 2) return absl::OkStatus();
  const int right = (me + 1) % n, left = (me + n - 1) % n;
  const size_t words = std::max<size_t>(1, options.bytes / 8);
  std::vector<uint64_t> out(words), from_left(words), from_right(words);
  for (size_t i = 0; i < words; ++i) out[i] = Word(epoch, me, i);
  auto view = [](std::vector<uint64_t>& v) {
    return Tensor(v.data(), DType::kU8, {static_cast<int64_t>(v.size() * 8)});
  };
  OpOptions op;
  if (options.deadline != absl::InfiniteFuture()) {
    op.timeout = std::max(options.deadline - absl::Now(), absl::Milliseconds(1));
  }
  // Bounded by the op deadline; ended early when the world is over (a rank died).
  auto wait = [&](const std::shared_ptr<Work>& w) -> absl::Status {
    while (true) {
      absl::Status s = w->Wait(absl::Now() + absl::Milliseconds(20));
      if (!absl::IsDeadlineExceeded(s) || w->IsCompleted()) return s;
      if (options.interrupted) {
        if (absl::Status over = options.interrupted(); !over.ok()) {
          world.Abort(over);
          return over;
        }
      }
    }
  };
  std::vector<std::shared_ptr<Work>> works = {
      world.Recv(view(from_left), left, kTagToRight, op),
      world.Recv(view(from_right), right, kTagToLeft, op),
      world.Send(view(out), right, kTagToRight, op), world.Send(view(out), left, kTagToLeft, op)};
  for (const auto& w : works) RETURN_IF_ERROR(wait(w));
  if (options.inject) from_left[words / 2] ^= uint64_t{1} << 17;
  std::string wrong;
  for (auto [sender, got] : {std::pair{left, &from_left}, std::pair{right, &from_right}}) {
    for (size_t i = 0; i < words && wrong.empty(); ++i) {
      const uint64_t want = Word(epoch, sender, i);
      if ((*got)[i] != want) {
        wrong = absl::StrFormat("word %d of the %d bytes from rank %d is %016x, sent %016x", i,
                                words * 8, sender, (*got)[i], want);
      }
    }
  }
  // Who failed, on every rank: the lowest such rank + 1 (0: none).
  int64_t failed = wrong.empty() ? 0 : -(me + 1);
  Tensor f = Tensor::Of(&failed, 1);
  RETURN_IF_ERROR(wait(world.AllReduce(f, f, ReduceOp::kMin, op)));
  if (!wrong.empty()) {
    return absl::DataLossError(absl::StrCat("check=transport ", wrong));
  }
  if (failed != 0) {
    return absl::AbortedError(absl::StrCat("rank ", -failed - 1,
                                           " failed its transport self-test in epoch ", epoch,
                                           "; waiting for the epoch that replaces it"));
  }
  return absl::OkStatus();
}

}  // namespace trident::runtime_internal
