// The one seam through which ipcrpc talks to the kernel: helpers that retry
// EINTR and turn errno into an absl::Status whose message names the call and
// the object ("connect(unix:/run/x.sock): Connection refused").
#ifndef IPCRPC_BASE_SYSCALL_H_
#define IPCRPC_BASE_SYSCALL_H_

#include <poll.h>
#include <sys/types.h>

#include <atomic>
#include <cerrno>
#include <optional>
#include <string_view>

#include "absl/status/status.h"

namespace ipcrpc::internal {

// Calls `f()` until it does not fail with EINTR; returns its last result.
template <typename F>
auto RetryEintr(F&& f) -> decltype(f()) {
  decltype(f()) result;
  do {
    result = f();
  } while (result == -1 && errno == EINTR);
  return result;
}

// absl::ErrnoToStatus with a message "<call>(<object>): <strerror>".
absl::Status ErrnoStatus(int error_number, std::string_view call, std::string_view object);

// An owned file descriptor, closed on destruction. Move-only.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.Release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) Reset(other.Release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { Reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int Release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void Reset(int fd = -1);

 private:
  int fd_ = -1;
};

// Sets or clears O_NONBLOCK.
absl::Status SetNonBlocking(int fd, bool non_blocking, std::string_view object);

// 64 unpredictable bits from the kernel (getrandom), for names another user
// must not guess.
uint64_t RandomU64();

// Whether process `pid` exists (also one we may not signal).
bool ProcessExists(pid_t pid);

// The pid a name starts with, "<pid>-<rest>" (names of objects that carry
// their owner's pid); nullopt if it does not start with one.
std::optional<pid_t> LeadingPid(std::string_view name);

// ppoll(2) until `deadline_ns` (CLOCK_MONOTONIC, as MonotonicNowNs; the
// kNoDeadline of base/clock.h: no limit), with `now_ns` the time now. OK when
// it returned (events, the deadline, or EINTR: look again); an error status
// naming `what` otherwise.
absl::Status PollUntil(struct pollfd* fds, size_t count, int64_t deadline_ns, int64_t now_ns,
                       std::string_view what);

// Runs the write `f` so that writing to a pipe whose reader died returns
// EPIPE instead of killing the process by SIGPIPE, and leaves no SIGPIPE
// behind. Costs no system call on ipcrpc's own threads (SIGPIPE blocked for
// good), nor on others once PrepareForSigpipe has found the disposition
// SIG_IGN or SIG_DFL; with an application's own SIGPIPE handler, SIGPIPE is
// blocked around the write (two system calls), so that handler never sees
// ipcrpc's.
template <typename F>
auto WithoutSigpipe(F&& f) -> decltype(f());

// Called once per connection that writes to pipes or FIFOs, before its first
// write (the SIGPIPE question is decided there, not per write): looks at the
// process's SIGPIPE disposition (one sigaction(2)). When it is SIG_DFL,
// installs a handler that behaves exactly as SIG_DFL (the process dies of
// SIGPIPE) for every SIGPIPE except one raised by a write inside
// WithoutSigpipe, which it swallows (the write returns EPIPE). The default
// is kept in substance, but the disposition the application reads back is
// that handler. A program that sets SIG_DFL again after connecting gets the
// masking back at its next connection.
void PrepareForSigpipe();

// The start of every thread ipcrpc runs (its loops and handler threads):
// names it (`name`, at most 15 characters: what ps and /proc show) and
// blocks SIGPIPE in it (BlockSigpipeInThisThread).
void BeginOwnThread(const char* name);

// Asks the kernel to run the calling thread with a short time slice
// (sched_setattr's sched_runtime for SCHED_OTHER, 100 us): on Linux 6.6 and
// later (EEVDF), a thread with a shorter slice has an earlier virtual
// deadline, so when it wakes (a timer, a message) it preempts a CPU-bound
// process instead of waiting for that one's slice to end. For the loop
// threads, whose work is short and whose lateness is a call's. No privilege
// needed; elsewhere a no-op (older kernels ignore the field or refuse).
void RequestShortTimeSlice();

// For the threads ipcrpc starts (its loops and handler threads): blocks
// SIGPIPE in the calling thread for good, so that WithoutSigpipe costs no
// system call there (it only discards the SIGPIPE of a write that failed
// with EPIPE). Handlers and async callbacks run on these threads: their own
// writes to a dead pipe fail with EPIPE instead of raising SIGPIPE.
void BlockSigpipeInThisThread();

// Implementation details of WithoutSigpipe.
extern thread_local bool sigpipe_blocked_in_this_thread;
// Set around a write on a thread whose SIGPIPE is not blocked, when the
// disposition is SIG_IGN or PrepareForSigpipe's handler (which swallows the
// SIGPIPE of such a write).
extern thread_local bool sigpipe_is_ours __attribute__((tls_model("initial-exec")));
extern std::atomic<bool> sigpipe_handled_without_mask;
void DiscardPendingSigpipe();
struct SigpipeGuard {
  SigpipeGuard();
  ~SigpipeGuard();
  bool was_pending;
  bool was_blocked;
};

template <typename F>
auto WithoutSigpipe(F&& f) -> decltype(f()) {
  if (sigpipe_blocked_in_this_thread) {
    errno = 0;
    auto result = f();
    if (errno == EPIPE) {
      const int saved_errno = errno;
      DiscardPendingSigpipe();
      errno = saved_errno;
    }
    return result;
  }
  if (sigpipe_handled_without_mask.load(std::memory_order_relaxed)) {
    sigpipe_is_ours = true;
    errno = 0;
    auto result = f();
    sigpipe_is_ours = false;
    if (errno == EPIPE) {
      // Where the application blocked SIGPIPE in this thread, it is pending
      // now instead of handled: take it back.
      const int saved_errno = errno;
      DiscardPendingSigpipe();
      errno = saved_errno;
    }
    return result;
  }
  SigpipeGuard guard;
  return f();
}

}  // namespace ipcrpc::internal

#endif  // IPCRPC_BASE_SYSCALL_H_
