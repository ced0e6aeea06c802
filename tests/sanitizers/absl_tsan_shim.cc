// ThreadSanitizer lane only (scripts/sanitize.sh tsan preloads it): Debian's Abseil is built
// without TSan, so TSan cannot see that absl::Mutex, CondVar and Notification order memory
// (they synchronise through futexes and atomics in an uninstrumented library), and it reports
// every access guarded by an absl::Mutex as a race. This library, preloaded, interposes on
// those entry points of libabsl_synchronization.so, calls the real ones, and describes them to
// TSan with its mutex annotations (tsan_interface.h), as Abseil's own TSan build does. Calls
// that Abseil makes from inside one of these (CondVar::Wait unlocking its mutex, ...) pass
// straight through. Condition functions evaluated inside Abseil run in a region TSan ignores
// (no false report; no race found inside them either). The same for absl::Status's shared
// representation (libabsl_status.so), below. Not linked into anything; the mangled
// names are Debian 12's Abseil (absl::debian3): a missing one stops the process with a message.
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <cstdio>
#include <cstdlib>
#include <type_traits>

#include "absl/status/status.h"
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

// Runs `call`, a lock of `mu` (which may wait, evaluating a condition inside Abseil: TSan
// ignores what happens between pre and post), and tells TSan it acquired mu.
template <typename Call>
auto AsLock(void* mu, unsigned flags, Call call) {
  Outer o;
  if (!o.outer) return call();
  __tsan_mutex_pre_lock(mu, flags);
  if constexpr (std::is_void_v<decltype(call())>) {
    call();
    __tsan_mutex_post_lock(mu, flags, 0);
  } else {
    auto result = call();
    __tsan_mutex_post_lock(mu, flags, 0);
    return result;
  }
}

// A try-lock: acquired only when `call` returns true.
template <typename Call>
bool AsTryLock(void* mu, unsigned flags, Call call) {
  Outer o;
  if (!o.outer) return call();
  __tsan_mutex_pre_lock(mu, flags);
  const bool locked = call();
  __tsan_mutex_post_lock(mu, locked ? flags : flags | __tsan_mutex_try_lock_failed, 0);
  return locked;
}

// Runs `call`, an unlock of `mu` (Abseil may evaluate waiters' conditions in it: ignored).
template <typename Call>
void AsUnlock(void* mu, unsigned flags, Call call) {
  Outer o;
  if (!o.outer) return call();
  __tsan_mutex_pre_unlock(mu, flags);
  call();
  __tsan_mutex_post_unlock(mu, flags);
}

// Runs `call`, which unlocks `mu`, waits, and locks it again (Await, CondVar::Wait).
template <typename Call>
auto AsUnlockWaitLock(void* mu, Call call) {
  Outer o;
  if (!o.outer) return call();
  __tsan_mutex_pre_unlock(mu, 0);
  auto relock = [mu] {
    __tsan_mutex_post_unlock(mu, 0);
    __tsan_mutex_pre_lock(mu, 0);
    __tsan_mutex_post_lock(mu, 0, 0);
  };
  if constexpr (std::is_void_v<decltype(call())>) {
    call();
    relock();
  } else {
    auto result = call();
    relock();
    return result;
  }
}

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

void Mutex::Lock() {
  REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex4LockEv");
  AsLock(this, 0, [&] { real(this); });
}
void Mutex::ReaderLock() {
  REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex10ReaderLockEv");
  AsLock(this, __tsan_mutex_read_lock, [&] { real(this); });
}
bool Mutex::TryLock() {
  REAL(bool (*)(Mutex*), "_ZN4absl7debian35Mutex7TryLockEv");
  return AsTryLock(this, __tsan_mutex_try_lock, [&] { return real(this); });
}
bool Mutex::ReaderTryLock() {
  REAL(bool (*)(Mutex*), "_ZN4absl7debian35Mutex13ReaderTryLockEv");
  return AsTryLock(this, __tsan_mutex_try_read_lock, [&] { return real(this); });
}
void Mutex::Unlock() {
  REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex6UnlockEv");
  AsUnlock(this, 0, [&] { real(this); });
}
void Mutex::ReaderUnlock() {
  REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex12ReaderUnlockEv");
  AsUnlock(this, __tsan_mutex_read_lock, [&] { real(this); });
}
void Mutex::LockWhen(const Condition& cond) {
  REAL(void (*)(Mutex*, const Condition&), "_ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE");
  AsLock(this, 0, [&] { real(this, cond); });
}
void Mutex::ReaderLockWhen(const Condition& cond) {
  REAL(void (*)(Mutex*, const Condition&),
       "_ZN4absl7debian35Mutex14ReaderLockWhenERKNS0_9ConditionE");
  AsLock(this, __tsan_mutex_read_lock, [&] { real(this, cond); });
}
bool Mutex::LockWhenWithTimeout(const Condition& cond, Duration timeout) {
  REAL(bool (*)(Mutex*, const Condition&, Duration),
       "_ZN4absl7debian35Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  return AsLock(this, 0, [&] { return real(this, cond, timeout); });  // held either way
}
bool Mutex::LockWhenWithDeadline(const Condition& cond, Time deadline) {
  REAL(bool (*)(Mutex*, const Condition&, Time),
       "_ZN4absl7debian35Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  return AsLock(this, 0, [&] { return real(this, cond, deadline); });
}
void Mutex::Await(const Condition& cond) {
  REAL(void (*)(Mutex*, const Condition&), "_ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE");
  AsUnlockWaitLock(this, [&] { real(this, cond); });
}
bool Mutex::AwaitWithTimeout(const Condition& cond, Duration timeout) {
  REAL(bool (*)(Mutex*, const Condition&, Duration),
       "_ZN4absl7debian35Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  return AsUnlockWaitLock(this, [&] { return real(this, cond, timeout); });
}
bool Mutex::AwaitWithDeadline(const Condition& cond, Time deadline) {
  REAL(bool (*)(Mutex*, const Condition&, Time),
       "_ZN4absl7debian35Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  return AsUnlockWaitLock(this, [&] { return real(this, cond, deadline); });
}

void CondVar::Wait(Mutex* mu) {
  REAL(void (*)(CondVar*, Mutex*), "_ZN4absl7debian37CondVar4WaitEPNS0_5MutexE");
  AsUnlockWaitLock(mu, [&] { real(this, mu); });
}
bool CondVar::WaitWithTimeout(Mutex* mu, Duration timeout) {
  REAL(bool (*)(CondVar*, Mutex*, Duration),
       "_ZN4absl7debian37CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
  return AsUnlockWaitLock(mu, [&] { return real(this, mu, timeout); });
}
bool CondVar::WaitWithDeadline(Mutex* mu, Time deadline) {
  REAL(bool (*)(CondVar*, Mutex*, Time),
       "_ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  return AsUnlockWaitLock(mu, [&] { return real(this, mu, deadline); });
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

// absl::Status shares its heap representation by reference count: Ref is inline (TSan sees
// a relaxed increment), the decrement and the delete of the last reference happen inside
// libabsl_status.so, where TSan sees neither the decrement's ordering nor anything but the
// delete itself. Every unref is a release, and an acquire before a possible delete, as the
// atomic decrement inside does.
void Status::UnrefNonInlined(uintptr_t rep) {
  REAL(void (*)(uintptr_t), "_ZN4absl7debian36Status15UnrefNonInlinedEm");
  void* shared = reinterpret_cast<void*>(rep - 1);
  __tsan_release(shared);
  __tsan_acquire(shared);
  real(rep);
}

ABSL_NAMESPACE_END
}  // namespace absl
