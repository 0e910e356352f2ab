// How a reader of an shm: ring waits for data: it spins (looks again) for a
// while before it sleeps on its doorbell, within a budget that adapts to
// how soon its peer answers (Spinner).
#ifndef IPCRPC_TRANSPORTS_SHM_SHM_SPINNER_H_
#define IPCRPC_TRANSPORTS_SHM_SHM_SPINNER_H_

#include <sched.h>

#include <algorithm>
#include <cstdint>

#include "base/clock.h"

namespace ipcrpc::internal {

// A reader that finds its ring empty looks again for a while before it
// sleeps on its doorbell: a peer that answers within that time costs no
// wake-up at all (a wake-up costs 20-45 us on a 2-vCPU VM, a look at the
// ring 0.1 us). The time is bounded (an idle connection costs no CPU once
// it has passed) and adapts (Spinner), between these bounds.
inline constexpr int64_t kMaxSpinNs = 50'000;
inline constexpr int64_t kMinSpinNs = 2'000;
// Looks (each after a `pause`) between two readings of the clock.
inline constexpr int kLooksPerClockRead = 8;
// A reader yields its CPU at every clock reading once it has waited this
// long, in case its peer needs the CPU to answer; it learns to yield sooner
// when answers come right after yields that let another thread run (both on
// one CPU), see Spinner.
inline constexpr int64_t kYieldAfterNs = 10'000;
// A sched_yield that returns sooner than this found nothing else to run on
// this CPU: it cannot have helped the peer (which then runs on another CPU).
// One that let another thread run takes a time slice's share, far longer.
inline constexpr int64_t kYieldRanOtherNs = 5'000;
// A reader in the middle of a message (larger than the ring, or not yet
// wholly written) looks for the rest this long before it sleeps, whatever
// its budget: the writer is at work (a writer publishes every
// kPublishEvery bytes, 10-20 us of copying), and a sleep would cost a
// wake-up per ring's worth. Bounded, because a peer that stops in the middle
// of a message and rings the doorbell holds the loop this long per ring
// (four times the longest ordinary look).
inline constexpr int64_t kInMessageSpinNs = 200'000;

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// One reader's spin-then-sleep policy (see kMaxSpinNs): the budget halves
// when a wait ends in sleep and the sleep was long (the peer is idle or
// slow: spinning would have been wasted), and doubles when data comes while
// looking, or soon after the reader gave up (it should have looked longer).
class Spinner {
 public:
  // The clock and the yield are the real ones; a test gives its own.
  Spinner() = default;
  Spinner(int64_t (*now_ns)(), void (*yield)()) : now_ns_(now_ns), yield_(yield) {}

  // A wait for data begins.
  void Begin() {
    started_ns_ = 0;
    looks_ = 0;
    yielded_ = false;
  }
  // The ring was empty: true to look again, false to sleep now.
  // `in_message`: a message is partly read (kInMessageSpinNs).
  bool KeepLooking(bool in_message = false) {
    ++looks_;
    if (looks_ % kLooksPerClockRead != 0) {
      CpuRelax();
      yielded_ = false;
      return true;
    }
    const int64_t now = now_ns_();
    if (started_ns_ == 0) started_ns_ = now;
    if (now - started_ns_ >= (in_message ? std::max(budget_ns_, kInMessageSpinNs) : budget_ns_)) {
      slept_at_ns_ = now;
      return false;
    }
    // A yield costs about 0.5 us: only where the peer may need this CPU.
    yielded_ = now - started_ns_ >= yield_after_ns_;
    if (yielded_) {
      yield_();
      // Did it let someone else run? If not, it did not help the peer, and
      // data found right after it says nothing about sharing a CPU.
      yielded_ = now_ns_() - now >= kYieldRanOtherNs;
    } else {
      CpuRelax();
    }
    return true;
  }
  // Data came.
  void Found() {
    if (slept_at_ns_ != 0) {
      const int64_t slept_ns = now_ns_() - slept_at_ns_;
      budget_ns_ = slept_ns < kMaxSpinNs ? std::min(kMaxSpinNs, budget_ns_ * 2)
                                         : std::max(kMinSpinNs, budget_ns_ / 2);
      slept_at_ns_ = 0;
    } else if (started_ns_ != 0) {
      budget_ns_ = std::min(kMaxSpinNs, budget_ns_ * 2);
      // Data that shows up just after a yield that let another thread run
      // suggests a peer that runs only when we yield (one CPU for both):
      // yield sooner. Data that came while we only paused, or after a yield
      // that found nothing else to run: the peer runs beside us, yield
      // later. (Counting every yield collapsed the wait to a yield at every
      // clock reading on two CPUs: 6 system calls a 4 KiB call, not 0.2.)
      yield_after_ns_ = yielded_ ? yield_after_ns_ / 2
                                 : std::min(kYieldAfterNs, yield_after_ns_ * 2 + 100);
    }
    Begin();
  }

  // How long a wait looks before it sleeps, and after how long it yields.
  int64_t budget_ns() const { return budget_ns_; }
  int64_t yield_after_ns() const { return yield_after_ns_; }

 private:
  static void YieldCpu() { ::sched_yield(); }

  int64_t (*now_ns_)() = &MonotonicNowNs;
  void (*yield_)() = &YieldCpu;
  int64_t budget_ns_ = kMaxSpinNs;
  int64_t yield_after_ns_ = kYieldAfterNs;
  int64_t started_ns_ = 0;
  int64_t slept_at_ns_ = 0;
  int looks_ = 0;
  bool yielded_ = false;  // the last look yielded, and another thread ran
};

}  // namespace ipcrpc::internal

#endif  // IPCRPC_TRANSPORTS_SHM_SHM_SPINNER_H_
