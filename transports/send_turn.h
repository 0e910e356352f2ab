// SendTurn: one sender at a time on a connection, and a sender that waits
// for its turn waits no later than its own deadline.
//
// A connection's write lock is held by a sender for as long as it waits for
// room (a server that does not read: up to that sender's deadline, or for
// good without one). Callers queued behind it on the lock alone would wait
// as long, whatever their own deadlines. So a sender first takes the turn
// (Acquire, bounded by its deadline), then the write lock, which only the
// turn's holder and non-waiting TrySends contend for.
//
//   if (!turn_.Acquire(deadline_ns)) return ...;  // DEADLINE_EXCEEDED, nothing sent
//   SendTurn::Holder held(&turn_);
//   MutexLock lock(&write_mu_); ...
#ifndef IPCRPC_TRANSPORTS_SEND_TURN_H_
#define IPCRPC_TRANSPORTS_SEND_TURN_H_

#include <cstdint>

#include "base/clock.h"
#include "base/mutex.h"

namespace ipcrpc::internal {

class SendTurn {
 public:
  // True once the caller has the turn; false if `deadline_ns` (base/clock.h;
  // kNoDeadline: none) passed first.
  bool Acquire(int64_t deadline_ns) {
    MutexLock lock(&mu_);
    if (!busy_) {
      busy_ = true;
      return true;
    }
    if (deadline_ns == kNoDeadline) {
      mu_.Await(Condition(+[](bool* busy) { return !*busy; }, &busy_));
    } else if (!mu_.AwaitWithTimeout(Condition(+[](bool* busy) { return !*busy; }, &busy_),
                                     RemainingUntil(deadline_ns))) {
      return false;
    }
    busy_ = true;
    return true;
  }

  // The turn if nobody has it (for a send that must not wait).
  bool TryAcquire() {
    MutexLock lock(&mu_);
    if (busy_) return false;
    busy_ = true;
    return true;
  }

  void Release() {
    MutexLock lock(&mu_);  // its Unlock wakes a waiter, if any
    busy_ = false;
  }

  // Releases the turn at the end of a scope.
  class Holder {
   public:
    explicit Holder(SendTurn* turn) : turn_(turn) {}
    ~Holder() { turn_->Release(); }
    Holder(const Holder&) = delete;
    Holder& operator=(const Holder&) = delete;

   private:
    SendTurn* const turn_;
  };

 private:
  Mutex mu_;
  bool busy_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace ipcrpc::internal

#endif  // IPCRPC_TRANSPORTS_SEND_TURN_H_
