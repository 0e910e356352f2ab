#include "base/clock.h"

#include <time.h>

#include <atomic>

#include "absl/time/clock.h"

namespace ipcrpc::internal {

namespace {
std::atomic<int64_t> test_offset_ns{0};
}  // namespace

int64_t MonotonicNowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  // Relaxed: the offset only changes in tests, between steps they order.
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec +
         test_offset_ns.load(std::memory_order_relaxed);
}

void AdvanceClockForTesting(absl::Duration d) {
  test_offset_ns.fetch_add(absl::ToInt64Nanoseconds(d), std::memory_order_relaxed);
}

std::chrono::steady_clock::time_point SteadyTimeOf(int64_t deadline_ns) {
  return std::chrono::steady_clock::time_point(
      std::chrono::nanoseconds(deadline_ns - test_offset_ns.load(std::memory_order_relaxed)));
}

void ResetClockForTesting() { test_offset_ns.store(0, std::memory_order_relaxed); }

int64_t AddDurationNs(int64_t now_ns, absl::Duration d) {
  if (d == absl::InfiniteDuration()) return kNoDeadline;
  if (d <= absl::ZeroDuration()) {
    // Past or now: keep it in the past (clamped at 0, which is always past).
    int64_t ns = absl::ToInt64Nanoseconds(d);  // saturates at INT64_MIN
    return ns < -now_ns ? 0 : now_ns + ns;
  }
  int64_t ns = absl::ToInt64Nanoseconds(d);  // saturates at INT64_MAX
  if (ns >= kNoDeadline - now_ns) return kNoDeadline;
  return now_ns + ns;
}

int64_t WallToMonotonicNs(absl::Time t) {
  if (t == absl::InfiniteFuture()) return kNoDeadline;
  return AddDurationNs(MonotonicNowNs(), t - absl::Now());
}

absl::Time MonotonicToWall(int64_t deadline_ns) {
  if (deadline_ns == kNoDeadline) return absl::InfiniteFuture();
  return absl::Now() + absl::Nanoseconds(deadline_ns - MonotonicNowNs());
}

int PollTimeoutMs(int64_t deadline_ns) {
  if (deadline_ns == kNoDeadline) return -1;
  const int64_t left = deadline_ns - MonotonicNowNs();
  if (left <= 0) return 0;
  const int64_t ms = (left + 999'999) / 1'000'000;
  return ms > std::numeric_limits<int>::max() ? std::numeric_limits<int>::max()
                                              : static_cast<int>(ms);
}

absl::Duration RemainingUntil(int64_t deadline_ns) {
  if (deadline_ns == kNoDeadline) return absl::InfiniteDuration();
  int64_t left = deadline_ns - MonotonicNowNs();
  return left > 0 ? absl::Nanoseconds(left) : absl::ZeroDuration();
}

}  // namespace ipcrpc::internal
