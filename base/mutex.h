// A mutex with Mutex's Await/Condition style, built on std::mutex and
// std::condition_variable, and a Notification on top of it.
//
// Why not absl::Mutex: Debian's libabsl is not built for ThreadSanitizer, and
// absl::Mutex synchronises through its own atomics and futexes inside that
// library, so a TSan build of ipcrpc could not see its happens-before edges
// and reported every guarded field as a race. std::mutex goes through
// pthread, which TSan intercepts in any library. The interface is the subset
// of absl's that ipcrpc uses, with the same meaning: a Condition is
// re-evaluated, with the mutex held, whenever another thread releases it.
// Mutex is a capability for clang's -Wthread-safety analysis, and so are
// the scoped locks: what ABSL_GUARDED_BY(mu) names is checked (libstdc++'s
// std::mutex carries no annotations, so a field guarded by one is not).
//
//   Mutex mu;
//   bool done ABSL_GUARDED_BY(mu) = false;
//   ...
//   MutexLock lock(&mu);
//   mu.Await(Condition(&done));
#ifndef IPCRPC_BASE_MUTEX_H_
#define IPCRPC_BASE_MUTEX_H_

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <type_traits>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace ipcrpc::internal {

class Condition {
 public:
  // True when *flag is.
  explicit Condition(const bool* flag) : eval_([flag] { return *flag; }) {}
  // True when func(arg) is.
  template <typename T>
  Condition(bool (*func)(T*), T* arg) : eval_([func, arg] { return func(arg); }) {}
  // True when (*f)() is; *f must outlive the condition. *f may be annotated
  // ABSL_EXCLUSIVE_LOCKS_REQUIRED(the mutex): Await evaluates it under that
  // mutex, which the analysis cannot follow through this wrapper.
  template <typename F, typename = std::enable_if_t<std::is_invocable_r_v<bool, const F&>>>
  explicit Condition(const F* f) : eval_([f]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return (*f)(); }) {}
  // True when f() is.
  template <typename F, typename = std::enable_if_t<std::is_invocable_r_v<bool, F&>>>
  explicit Condition(F f) : eval_(std::move(f)) {}

  bool Eval() const { return eval_(); }

 private:
  std::function<bool()> eval_;
};

class CondVar;

class ABSL_LOCKABLE Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  bool TryLock() ABSL_EXCLUSIVE_TRYLOCK_FUNCTION(true) { return mu_.try_lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() {
    // Waiters re-evaluate their conditions. Notified before unlocking: once
    // unlocked, a waiter may return and destroy this mutex (a Notification
    // on its stack), so nothing of it may be touched after.
    if (waiters_ > 0) cv_.notify_all();
    mu_.unlock();
  }
  void AssertHeld() const ABSL_ASSERT_EXCLUSIVE_LOCK() {}

  // With the mutex held: returns once `condition` is true (held again).
  void Await(const Condition& condition) ABSL_EXCLUSIVE_LOCKS_REQUIRED(this) {
    for (bool first = true; !condition.Eval(); first = false) Wait(nullptr, first);
  }

  // As Await, for at most `timeout`; returns the condition's final value.
  bool AwaitWithTimeout(const Condition& condition, absl::Duration timeout)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(this) {
    if (timeout == absl::InfiniteDuration()) {
      Await(condition);
      return true;
    }
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::nanoseconds(absl::ToInt64Nanoseconds(
                              std::max(timeout, absl::ZeroDuration())));
    for (bool first = true; !condition.Eval(); first = false) {
      if (!Wait(&deadline, first)) return condition.Eval();
    }
    return true;
  }

  bool AwaitWithDeadline(const Condition& condition, absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(this) {
    return AwaitWithTimeout(condition, deadline == absl::InfiniteFuture()
                                           ? absl::InfiniteDuration()
                                           : deadline - absl::Now());
  }

 private:
  // One wait for a release by another thread; false once `deadline` passed.
  // Waiting releases the mutex, so on the first wait of an Await (when this
  // thread may have changed what others wait for since it locked) the other
  // waiters re-evaluate, as on Unlock. After a wake-up the thread has only
  // evaluated its condition: waking the others again would only make them
  // wake each other for nothing.
  bool Wait(const std::chrono::steady_clock::time_point* deadline, bool wake_others)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(this) {
    if (wake_others && waiters_ > 0) cv_.notify_all();
    ++waiters_;
    const bool in_time = WaitOn(cv_, deadline);
    --waiters_;
    return in_time;
  }

  // A CondVar's wait: it releases the mutex too, so Await's waiters
  // re-evaluate, as on Unlock.
  bool WaitForCondVar(std::condition_variable& cv,
                      const std::chrono::steady_clock::time_point* deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(this) {
    if (waiters_ > 0) cv_.notify_all();
    return WaitOn(cv, deadline);
  }

  // Releases mu_ while waiting on `cv`, holds it again on return; false if
  // `deadline` passed.
  bool WaitOn(std::condition_variable& cv, const std::chrono::steady_clock::time_point* deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(this) {
    std::unique_lock<std::mutex> lock(mu_, std::adopt_lock);
    bool in_time = true;
    if (deadline == nullptr) {
      cv.wait(lock);
    } else {
      in_time = cv.wait_until(lock, *deadline) == std::cv_status::no_timeout;
    }
    lock.release();
    return in_time;
  }

  friend class CondVar;

  std::mutex mu_;
  std::condition_variable cv_;
  int waiters_ ABSL_GUARDED_BY(this) = 0;
};

class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* const mu_;
};

// As MutexLock, for a scope that lets go of the mutex for a while (as
// std::unique_lock's unlock and lock): Unlock, then Lock again; the
// destructor unlocks only if held.
class ABSL_SCOPED_LOCKABLE ReleasableMutexLock {
 public:
  explicit ReleasableMutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) {
    mu_->Lock();
  }
  ~ReleasableMutexLock() ABSL_UNLOCK_FUNCTION() {
    if (held_) mu_->Unlock();
  }
  ReleasableMutexLock(const ReleasableMutexLock&) = delete;
  ReleasableMutexLock& operator=(const ReleasableMutexLock&) = delete;

  void Unlock() ABSL_UNLOCK_FUNCTION() {
    mu_->Unlock();
    held_ = false;
  }
  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() {
    mu_->Lock();
    held_ = true;
  }

 private:
  Mutex* const mu_;
  bool held_ = true;
};

// A condition variable for a Mutex, as CondVar: for code that wakes one
// waiter, or only at points it chooses (Await wakes every waiter on every
// unlock). A wait releases the mutex and holds it again when it returns; a
// wake-up may be spurious, so the caller waits in a loop on its own
// condition. Signal and SignalAll may be called with or without the mutex.
class CondVar {
 public:
  CondVar() = default;
  CondVar(const CondVar&) = delete;
  CondVar& operator=(const CondVar&) = delete;

  void Wait(Mutex* mu) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { mu->WaitForCondVar(cv_, nullptr); }
  // As Wait; false once `deadline` has passed. The steady clock is
  // CLOCK_MONOTONIC: a wall-clock jump neither shortens nor stretches it.
  bool WaitUntil(Mutex* mu, std::chrono::steady_clock::time_point deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return mu->WaitForCondVar(cv_, &deadline);
  }

  void Signal() { cv_.notify_one(); }
  void SignalAll() { cv_.notify_all(); }

 private:
  std::condition_variable cv_;
};

// A one-shot event, as Notification.
class Notification {
 public:
  void Notify() {
    MutexLock lock(&mu_);
    notified_ = true;
  }
  bool HasBeenNotified() const {
    MutexLock lock(&mu_);
    return notified_;
  }
  void WaitForNotification() const {
    MutexLock lock(&mu_);
    mu_.Await(Condition(&notified_));
  }
  bool WaitForNotificationWithTimeout(absl::Duration timeout) const {
    MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(Condition(&notified_), timeout);
  }

 private:
  mutable Mutex mu_;
  bool notified_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace ipcrpc::internal

#endif  // IPCRPC_BASE_MUTEX_H_
