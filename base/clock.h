// Time on the wire and inside ipcrpc is CLOCK_MONOTONIC: every peer is on the
// same host, so one clock serves both sides and wall-clock jumps change
// nothing. A deadline is an absolute monotonic time in nanoseconds;
// kNoDeadline (INT64_MAX) means none. absl::Time / absl::Duration are the
// public types; these helpers convert at the API boundary, once.
#ifndef IPCRPC_BASE_CLOCK_H_
#define IPCRPC_BASE_CLOCK_H_

#include <chrono>
#include <cstdint>
#include <limits>

#include "absl/time/time.h"

namespace ipcrpc::internal {

inline constexpr int64_t kNoDeadline = std::numeric_limits<int64_t>::max();

// CLOCK_MONOTONIC now, in ns (plus the test offset below, normally 0).
int64_t MonotonicNowNs();

// Tests: moves this process's view of the clock forward by `d` (on top of
// CLOCK_MONOTONIC), so that deadline checks (expiry on arrival, while
// queued, of a response) see time pass without waiting for it. Timers still
// fire in real time. Reset with ResetClockForTesting.
void AdvanceClockForTesting(absl::Duration d);
void ResetClockForTesting();

// now_ns + d, saturating at kNoDeadline (and at 0 below).
int64_t AddDurationNs(int64_t now_ns, absl::Duration d);

// The monotonic deadline for an absolute wall time `t` (InfiniteFuture → none).
int64_t WallToMonotonicNs(absl::Time t);

// The wall time for a monotonic deadline (kNoDeadline → InfiniteFuture).
absl::Time MonotonicToWall(int64_t deadline_ns);

// The steady_clock (CLOCK_MONOTONIC on Linux) time point of a deadline, for
// timers and condition-variable waits (less the test offset). Not for
// kNoDeadline.
std::chrono::steady_clock::time_point SteadyTimeOf(int64_t deadline_ns);

// Remaining time until `deadline_ns` (never negative; Infinite for none).
absl::Duration RemainingUntil(int64_t deadline_ns);

// The same as a poll(2) timeout: milliseconds, rounded up (so a wait never
// ends before the deadline), 0 once it has passed, -1 for none.
int PollTimeoutMs(int64_t deadline_ns);

}  // namespace ipcrpc::internal

#endif  // IPCRPC_BASE_CLOCK_H_
