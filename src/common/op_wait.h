// How many threads of this process are blocked in Work::Wait right now. The runtime's hang
// check (TRIDENT_HANG_TIMEOUT_MS) counts a thread that waits on an op as alive: the op's own
// deadline bounds that wait, and a peer's hang must not make its waiting partners look hung.
#ifndef TRIDENT_COMMON_OP_WAIT_H_
#define TRIDENT_COMMON_OP_WAIT_H_

#include <atomic>

namespace trident {

inline std::atomic<int> g_threads_in_op_wait{0};

// For the duration of a blocking Work::Wait.
class ScopedOpWait {
 public:
  ScopedOpWait() { g_threads_in_op_wait.fetch_add(1, std::memory_order_relaxed); }
  ~ScopedOpWait() { g_threads_in_op_wait.fetch_sub(1, std::memory_order_relaxed); }
  ScopedOpWait(const ScopedOpWait&) = delete;
  ScopedOpWait& operator=(const ScopedOpWait&) = delete;
};

inline bool AnyThreadInOpWait() { return g_threads_in_op_wait.load(std::memory_order_relaxed) > 0; }

}  // namespace trident

#endif  // TRIDENT_COMMON_OP_WAIT_H_
