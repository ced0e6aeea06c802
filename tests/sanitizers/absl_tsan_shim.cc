// ThreadSanitizer lane only (scripts/sanitize.sh tsan preloads it): Debian's Abseil is built
// without TSan, so TSan cannot see that absl::Mutex, CondVar and Notification order memory
// (they synchronise through futexes and atomics in an uninstrumented library), and it reports
// every access guarded by an absl::Mutex as a race. This library, preloaded, interposes on
// those entry points of libabsl_synchronization.so, calls the real ones, and describes them to
// TSan with its mutex annotations (tsan_interface.h), as Abseil's own TSan build does. Calls
// that Abseil makes from inside one of these (CondVar::Wait unlocking its mutex, ...) pass
// straight through. Condition functions evaluated inside Abseil run in a region TSan ignores
// (no false report; no race found inside them either). Not linked into anything; the mangled
// names are Debian 12's Abseil (absl::debian3): a missing one stops the process with a message.
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <cstdio>
#include <cstdlib>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace {

template <typename Fn>
Fn Real(const char* mangled) {
  void* f = dlsym(RTLD_NEXT, mangled);
  if (f == nullptr) {
    std::fprintf(stderr, "absl_tsan_shim: %s not found in Abseil (another version?)\n", mangled);
    std::abort();
  }
  return reinterpret_cast<Fn>(f);
}

// Depth of annotated calls on this thread: nested calls (Abseil calling itself) pass through.
thread_local int depth = 0;

struct Outer {
  const bool outer = depth++ == 0;
  ~Outer() { --depth; }
};

#define REAL(type, name) static const auto real = Real<type>(name)

// A lock taken inside a call (after it returns): TSan sees an acquire.
void Locked(void* mu, unsigned flags) {
  __tsan_mutex_pre_lock(mu, flags);
  __tsan_mutex_post_lock(mu, flags, 0);
}

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

void Mutex::Lock() {
  REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex4LockEv");
  Outer o;
  if (!o.outer) return real(this);
  __tsan_mutex_pre_lock(this, 0);
  real(this);
  __tsan_mutex_post_lock(this, 0, 0);
}
void Mutex::ReaderLock() {
  REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex10ReaderLockEv");
  Outer o;
  if (!o.outer) return real(this);
  __tsan_mutex_pre_lock(this, __tsan_mutex_read_lock);
  real(this);
  __tsan_mutex_post_lock(this, __tsan_mutex_read_lock, 0);
}
bool Mutex::TryLock() {
  REAL(bool (*)(Mutex*), "_ZN4absl7debian35Mutex7TryLockEv");
  Outer o;
  if (!o.outer) return real(this);
  __tsan_mutex_pre_lock(this, __tsan_mutex_try_lock);
  const bool locked = real(this);
  __tsan_mutex_post_lock(this, locked ? __tsan_mutex_try_lock : __tsan_mutex_try_lock_failed, 0);
  return locked;
}
bool Mutex::ReaderTryLock() {
  REAL(bool (*)(Mutex*), "_ZN4absl7debian35Mutex13ReaderTryLockEv");
  Outer o;
  if (!o.outer) return real(this);
  __tsan_mutex_pre_lock(this, __tsan_mutex_try_read_lock);
  const bool locked = real(this);
  __tsan_mutex_post_lock(
      this, locked ? __tsan_mutex_try_read_lock : __tsan_mutex_try_read_lock_failed, 0);
  return locked;
}
void Mutex::Unlock() {
  REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex6UnlockEv");
  Outer o;
  if (!o.outer) return real(this);
  __tsan_mutex_pre_unlock(this, 0);
  real(this);  // may evaluate waiters' conditions: ignored by TSan until post_unlock
  __tsan_mutex_post_unlock(this, 0);
}
void Mutex::ReaderUnlock() {
  REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex12ReaderUnlockEv");
  Outer o;
  if (!o.outer) return real(this);
  __tsan_mutex_pre_unlock(this, __tsan_mutex_read_lock);
  real(this);
  __tsan_mutex_post_unlock(this, __tsan_mutex_read_lock);
}

// LockWhen*: a lock that may wait, evaluating the condition inside (ignored).
#define TRIDENT_LOCK_WHEN(ret, call, flags)  \
  Outer o;                                   \
  if (!o.outer) return call;                 \
  __tsan_mutex_pre_lock(this, flags);        \
  ret result = call;                         \
  __tsan_mutex_post_lock(this, flags, 0);    \
  return result

void Mutex::LockWhen(const Condition& cond) {
  REAL(void (*)(Mutex*, const Condition&), "_ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE");
  Outer o;
  if (!o.outer) return real(this, cond);
  __tsan_mutex_pre_lock(this, 0);
  real(this, cond);
  __tsan_mutex_post_lock(this, 0, 0);
}
void Mutex::ReaderLockWhen(const Condition& cond) {
  REAL(void (*)(Mutex*, const Condition&),
       "_ZN4absl7debian35Mutex14ReaderLockWhenERKNS0_9ConditionE");
  Outer o;
  if (!o.outer) return real(this, cond);
  __tsan_mutex_pre_lock(this, __tsan_mutex_read_lock);
  real(this, cond);
  __tsan_mutex_post_lock(this, __tsan_mutex_read_lock, 0);
}
bool Mutex::LockWhenWithTimeout(const Condition& cond, Duration timeout) {
  REAL(bool (*)(Mutex*, const Condition&, Duration),
       "_ZN4absl7debian35Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  TRIDENT_LOCK_WHEN(bool, real(this, cond, timeout), 0);  // held either way
}
bool Mutex::LockWhenWithDeadline(const Condition& cond, Time deadline) {
  REAL(bool (*)(Mutex*, const Condition&, Time),
       "_ZN4absl7debian35Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  TRIDENT_LOCK_WHEN(bool, real(this, cond, deadline), 0);
}

// Await* and CondVar::Wait*: an unlock, a wait, and a lock again, as TSan sees them.
#define TRIDENT_UNLOCK_WAIT_LOCK(mu, ret, call) \
  Outer o;                                      \
  if (!o.outer) return call;                    \
  __tsan_mutex_pre_unlock(mu, 0);               \
  ret result = call;                            \
  __tsan_mutex_post_unlock(mu, 0);              \
  Locked(mu, 0);                                \
  return result

void Mutex::Await(const Condition& cond) {
  REAL(void (*)(Mutex*, const Condition&), "_ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE");
  Outer o;
  if (!o.outer) return real(this, cond);
  __tsan_mutex_pre_unlock(this, 0);
  real(this, cond);
  __tsan_mutex_post_unlock(this, 0);
  Locked(this, 0);
}
bool Mutex::AwaitWithTimeout(const Condition& cond, Duration timeout) {
  REAL(bool (*)(Mutex*, const Condition&, Duration),
       "_ZN4absl7debian35Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  TRIDENT_UNLOCK_WAIT_LOCK(this, bool, real(this, cond, timeout));
}
bool Mutex::AwaitWithDeadline(const Condition& cond, Time deadline) {
  REAL(bool (*)(Mutex*, const Condition&, Time),
       "_ZN4absl7debian35Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  TRIDENT_UNLOCK_WAIT_LOCK(this, bool, real(this, cond, deadline));
}

void CondVar::Wait(Mutex* mu) {
  REAL(void (*)(CondVar*, Mutex*), "_ZN4absl7debian37CondVar4WaitEPNS0_5MutexE");
  Outer o;
  if (!o.outer) return real(this, mu);
  __tsan_mutex_pre_unlock(mu, 0);
  real(this, mu);
  __tsan_mutex_post_unlock(mu, 0);
  Locked(mu, 0);
}
bool CondVar::WaitWithTimeout(Mutex* mu, Duration timeout) {
  REAL(bool (*)(CondVar*, Mutex*, Duration),
       "_ZN4absl7debian37CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
  TRIDENT_UNLOCK_WAIT_LOCK(mu, bool, real(this, mu, timeout));
}
bool CondVar::WaitWithDeadline(Mutex* mu, Time deadline) {
  REAL(bool (*)(CondVar*, Mutex*, Time),
       "_ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  TRIDENT_UNLOCK_WAIT_LOCK(mu, bool, real(this, mu, deadline));
}

// Notification: Notify happens before every wait that returns notified.
void Notification::Notify() {
  REAL(void (*)(Notification*), "_ZN4absl7debian312Notification6NotifyEv");
  Outer o;
  if (o.outer) __tsan_release(this);
  real(this);
}
void Notification::WaitForNotification() const {
  REAL(void (*)(const Notification*), "_ZNK4absl7debian312Notification19WaitForNotificationEv");
  Outer o;
  real(this);
  if (o.outer) __tsan_acquire(const_cast<Notification*>(this));
}
bool Notification::WaitForNotificationWithTimeout(Duration timeout) const {
  REAL(bool (*)(const Notification*, Duration),
       "_ZNK4absl7debian312Notification30WaitForNotificationWithTimeoutENS0_8DurationE");
  Outer o;
  const bool notified = real(this, timeout);
  if (o.outer && notified) __tsan_acquire(const_cast<Notification*>(this));
  return notified;
}
bool Notification::WaitForNotificationWithDeadline(Time deadline) const {
  REAL(bool (*)(const Notification*, Time),
       "_ZNK4absl7debian312Notification31WaitForNotificationWithDeadlineENS0_4TimeE");
  Outer o;
  const bool notified = real(this, deadline);
  if (o.outer && notified) __tsan_acquire(const_cast<Notification*>(this));
  return notified;
}

ABSL_NAMESPACE_END
}  // namespace absl
