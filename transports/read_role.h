// Who reads a connection: its loop, a thread waiting for a response (a
// "direct read", see Connection::ReadUntil), or nobody.
//
// The loop reads at first (or nobody, if the owner has a policy). Once what it read leaves nothing to wait for
// (the owner's keep-reading policy says so: on a client, no call pending),
// it stops watching the connection altogether, so a caller that then sends a
// request and reads its own response wakes nobody else: a round trip costs
// the two wake-ups of a raw ping-pong. A caller that finishes while other
// calls are still pending hands the reading back to the loop. Without a
// policy (a server's connections) the loop reads for good.
//
// Thread-safe: every transition happens under one mutex.
#ifndef IPCRPC_TRANSPORTS_READ_ROLE_H_
#define IPCRPC_TRANSPORTS_READ_ROLE_H_

#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/functional/function_ref.h"
#include "base/mutex.h"
#include "transports/transport.h"

namespace ipcrpc::internal {

class ReadRole {
 public:
  enum class Holder { kNobody, kLoop, kCaller };

  // Before the connection starts. `keep_loop_reading` is asked under the
  // role's mutex and must not call back into the connection. With a policy
  // nobody reads at first: nothing is expected yet (the first caller reads
  // what the connection's start brought).
  void SetPolicy(absl::AnyInvocable<bool()> keep_loop_reading) {
    MutexLock lock(&mu_);
    keep_loop_reading_ = std::move(keep_loop_reading);
    holder_ = Holder::kNobody;
  }

  // On the loop, when the connection starts: whether the loop reads now.
  bool LoopReadsAtStart() {
    MutexLock lock(&mu_);
    return holder_ == Holder::kLoop;
  }

  // Whether the loop holds the role now. Only the loop itself gives it up
  // (LoopKeepsReading) and nobody takes it from the loop, so on the loop
  // the answer stays true until the loop acts: a posted start of the loop's
  // reading that finds the role given away meanwhile does nothing.
  bool LoopHolds() {
    MutexLock lock(&mu_);
    return holder_ == Holder::kLoop && !finished_;
  }

  // A caller takes the role if nobody holds it (and the connection has not
  // finished).
  bool TryTakeForCaller() {
    MutexLock lock(&mu_);
    if (holder_ != Holder::kNobody || finished_) return false;
    holder_ = Holder::kCaller;
    return true;
  }

  enum class AfterCaller {
    kNobodyReads,  // nothing expected
    kLoopReads,    // the role is the loop's now: the caller makes it start
    kFinished,     // the connection ended while the caller read: the caller
                   // was the last to use the reading state, and releases it
  };
  // The caller is done reading.
  AfterCaller ReleaseFromCaller() {
    MutexLock lock(&mu_);
    if (finished_) {
      holder_ = Holder::kNobody;
      return AfterCaller::kFinished;
    }
    holder_ = KeepLoopReadingLocked() ? Holder::kLoop : Holder::kNobody;
    return holder_ == Holder::kLoop ? AfterCaller::kLoopReads : AfterCaller::kNobodyReads;
  }

  // The loop has read everything there was: true if it goes on watching,
  // false if it stops (nobody reads until a caller or EnsureReader).
  bool LoopKeepsReading() {
    MutexLock lock(&mu_);
    if (holder_ == Holder::kLoop && !KeepLoopReadingLocked()) holder_ = Holder::kNobody;
    return holder_ == Holder::kLoop;
  }

  // Something now waits for a message (an async call was sent): true if
  // nobody was reading, and the role is now the loop's (the caller makes the
  // loop start). A caller reading hands over when it is done.
  bool EnsureReader() {
    MutexLock lock(&mu_);
    if (holder_ != Holder::kNobody || finished_) return false;
    holder_ = Holder::kLoop;
    return true;
  }

  // The end of a caller's ReadUntil that ended with `result`: releases the
  // role and does what comes next. If the connection finished while the
  // caller read, `release_state` lets go of the reading state (the caller was
  // its last user); else if it ended (kClosed), `finish_on_loop` posts the
  // connection's end to its loop; else if calls are still pending,
  // `start_loop` posts the loop's reading.
  Connection::ReadResult EndCallerRead(Connection::ReadResult result,
                                       absl::FunctionRef<void()> release_state,
                                       absl::FunctionRef<void()> finish_on_loop,
                                       absl::FunctionRef<void()> start_loop) {
    switch (ReleaseFromCaller()) {
      case AfterCaller::kFinished:
        release_state();
        return Connection::ReadResult::kClosed;
      case AfterCaller::kLoopReads:
        if (result == Connection::ReadResult::kClosed) break;
        start_loop();
        return result;
      case AfterCaller::kNobodyReads:
        break;
    }
    if (result == Connection::ReadResult::kClosed) finish_on_loop();
    return result;
  }

  // The connection ended (on the loop): true if a caller is reading right
  // now, so the reading state must be left alone until it lets go.
  bool Finish() {
    MutexLock lock(&mu_);
    finished_ = true;
    return holder_ == Holder::kCaller;
  }

 private:
  bool KeepLoopReadingLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !keep_loop_reading_ || keep_loop_reading_();
  }

  Mutex mu_;
  Holder holder_ ABSL_GUARDED_BY(mu_) = Holder::kLoop;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  absl::AnyInvocable<bool()> keep_loop_reading_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ipcrpc::internal

#endif  // IPCRPC_TRANSPORTS_READ_ROLE_H_
