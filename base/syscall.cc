#include "base/syscall.h"

#include <sys/random.h>

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/clock.h"
#include "base/strings.h"

namespace ipcrpc::internal {

absl::Status ErrnoStatus(int error_number, std::string_view call, std::string_view object) {
  return absl::ErrnoToStatus(error_number, absl::StrCat(Av(call), "(", Av(object), ")"));
}

void UniqueFd::Reset(int fd) {
  if (fd_ >= 0) {
    // close() must not be retried on EINTR on Linux: the descriptor is gone.
    ::close(fd_);
  }
  fd_ = fd;
}

bool ProcessExists(pid_t pid) { return pid > 0 && (::kill(pid, 0) == 0 || errno == EPERM); }

std::optional<pid_t> LeadingPid(std::string_view name) {
  const size_t dash = name.find('-');
  int pid = 0;
  if (dash == std::string_view::npos || !absl::SimpleAtoi(Av(name.substr(0, dash)), &pid) ||
      pid <= 0) {
    return std::nullopt;
  }
  return pid;
}

absl::Status SetNonBlocking(int fd, bool non_blocking, std::string_view object) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0) return ErrnoStatus(errno, "fcntl(F_GETFL)", object);
  int wanted = non_blocking ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
  if (wanted != flags && ::fcntl(fd, F_SETFL, wanted) < 0) {
    return ErrnoStatus(errno, "fcntl(F_SETFL)", object);
  }
  return absl::OkStatus();
}

absl::Status PollUntil(struct pollfd* fds, size_t count, int64_t deadline_ns, int64_t now_ns,
                       std::string_view what) {
  struct timespec timeout;
  const int64_t wait_ns = std::max<int64_t>(0, deadline_ns - now_ns);
  timeout.tv_sec = wait_ns / 1'000'000'000;
  timeout.tv_nsec = wait_ns % 1'000'000'000;
  const bool forever = deadline_ns == std::numeric_limits<int64_t>::max();
  if (::ppoll(fds, count, forever ? nullptr : &timeout, nullptr) < 0 && errno != EINTR) {
    return ErrnoStatus(errno, "poll", what);
  }
  return absl::OkStatus();
}

thread_local bool sigpipe_blocked_in_this_thread = false;
thread_local bool sigpipe_is_ours __attribute__((tls_model("initial-exec"))) = false;
std::atomic<bool> sigpipe_handled_without_mask{false};

namespace {

// SIG_DFL in substance: a SIGPIPE raised by a write inside WithoutSigpipe is
// swallowed (the write fails with EPIPE); any other one kills the process as
// the default action would. Only async-signal-safe calls.
extern "C" void SigpipeAsDefault(int) {
  if (sigpipe_is_ours) return;
  struct sigaction default_action;
  std::memset(&default_action, 0, sizeof(default_action));
  default_action.sa_handler = SIG_DFL;
  sigaction(SIGPIPE, &default_action, nullptr);
  // Blocked while this handler runs: delivered, with the default action,
  // when it returns.
  raise(SIGPIPE);
}

}  // namespace

void PrepareForSigpipe() {
  struct sigaction current;
  if (sigaction(SIGPIPE, nullptr, &current) != 0) {
    sigpipe_handled_without_mask.store(false, std::memory_order_relaxed);
    return;
  }
  const bool is_handler = (current.sa_flags & SA_SIGINFO) == 0;
  if (is_handler && current.sa_handler == SIG_DFL) {
    struct sigaction ours;
    std::memset(&ours, 0, sizeof(ours));
    ours.sa_handler = SigpipeAsDefault;
    ours.sa_flags = SA_RESTART;
    sigemptyset(&ours.sa_mask);
    // Another thread may have installed something meanwhile: keep theirs
    // (the check below then sees it on the next connection).
    struct sigaction before;
    if (sigaction(SIGPIPE, &ours, &before) != 0) {
      sigpipe_handled_without_mask.store(false, std::memory_order_relaxed);
      return;
    }
    if ((before.sa_flags & SA_SIGINFO) != 0 || before.sa_handler != SIG_DFL) {
      sigaction(SIGPIPE, &before, nullptr);
      sigpipe_handled_without_mask.store(false, std::memory_order_relaxed);
      return;
    }
    sigpipe_handled_without_mask.store(true, std::memory_order_relaxed);
    return;
  }
  sigpipe_handled_without_mask.store(
      is_handler && (current.sa_handler == SIG_IGN || current.sa_handler == SigpipeAsDefault),
      std::memory_order_relaxed);
}

void BlockSigpipeInThisThread() {
  sigset_t block;
  sigemptyset(&block);
  sigaddset(&block, SIGPIPE);
  if (pthread_sigmask(SIG_BLOCK, &block, nullptr) == 0) sigpipe_blocked_in_this_thread = true;
}

void BeginOwnThread(const char* name) {
  pthread_setname_np(pthread_self(), name);
  BlockSigpipeInThisThread();
}

void RequestShortTimeSlice() {
  // struct sched_attr (include/uapi/linux/sched/types.h); glibc 2.36 has
  // no wrapper.
  struct SchedAttr {
    uint32_t size;
    uint32_t sched_policy;
    uint64_t sched_flags;
    int32_t sched_nice;
    uint32_t sched_priority;
    uint64_t sched_runtime;
    uint64_t sched_deadline;
    uint64_t sched_period;
  };
  SchedAttr attr = {};
  attr.size = sizeof(attr);
  attr.sched_policy = SCHED_OTHER;
  attr.sched_nice = getpriority(PRIO_PROCESS, 0);  // keep this thread's nice value
  attr.sched_runtime = 100'000;  // ns
  // Best effort: refused (EINVAL, EPERM) leaves the thread as it was.
  syscall(SYS_sched_setattr, 0, &attr, 0u);
}

void DiscardPendingSigpipe() {
  sigset_t pending;
  sigemptyset(&pending);
  sigpending(&pending);
  if (sigismember(&pending, SIGPIPE) != 1) return;
  sigset_t sigpipe;
  sigemptyset(&sigpipe);
  sigaddset(&sigpipe, SIGPIPE);
  struct timespec zero = {0, 0};
  while (sigtimedwait(&sigpipe, nullptr, &zero) == -1 && errno == EINTR) {
  }
}

// SigpipeGuard, for an application's thread whose process has its own
// SIGPIPE handler (see PrepareForSigpipe for the other cases): block SIGPIPE
// in this thread; a write that hits a closed pipe then leaves SIGPIPE pending
// (for the thread) instead of delivering it; after the write, if it was not
// pending before, consume it with sigtimedwait. Two system calls on the
// common path (block, unblock); the pending-signal checks only when they can
// matter: before, only if SIGPIPE was blocked already (unblocked, a pending
// SIGPIPE would have been delivered); after, only if the write failed with
// EPIPE.
SigpipeGuard::SigpipeGuard() {
  sigset_t block;
  sigemptyset(&block);
  sigaddset(&block, SIGPIPE);
  sigset_t old;
  pthread_sigmask(SIG_BLOCK, &block, &old);
  was_blocked = sigismember(&old, SIGPIPE) == 1;
  was_pending = false;
  if (was_blocked) {
    sigset_t pending;
    sigemptyset(&pending);
    sigpending(&pending);
    was_pending = sigismember(&pending, SIGPIPE) == 1;
  }
  errno = 0;
}

SigpipeGuard::~SigpipeGuard() {
  int saved_errno = errno;
  if (!was_pending && saved_errno == EPIPE) {
    sigset_t pending;
    sigemptyset(&pending);
    sigpending(&pending);
    if (sigismember(&pending, SIGPIPE) == 1) {
      sigset_t sigpipe;
      sigemptyset(&sigpipe);
      sigaddset(&sigpipe, SIGPIPE);
      struct timespec zero = {0, 0};
      while (sigtimedwait(&sigpipe, nullptr, &zero) == -1 && errno == EINTR) {
      }
    }
  }
  if (!was_blocked) {
    sigset_t unblock;
    sigemptyset(&unblock);
    sigaddset(&unblock, SIGPIPE);
    pthread_sigmask(SIG_UNBLOCK, &unblock, nullptr);
  }
  errno = saved_errno;
}

uint64_t RandomU64() {
  uint64_t value = 0;
  char* at = reinterpret_cast<char*>(&value);
  size_t got = 0;
  while (got < sizeof(value)) {
    const ssize_t n = ::getrandom(at + got, sizeof(value) - got, 0);
    if (n > 0) got += static_cast<size_t>(n);
    // EINTR: again. Anything else (no getrandom: a very old kernel) leaves
    // the bits gathered so far, mixed with the time and the pid below.
    if (n < 0 && errno != EINTR) break;
  }
  if (got < sizeof(value)) {
    value ^= static_cast<uint64_t>(MonotonicNowNs()) * 0x9e3779b97f4a7c15ull ^
             (static_cast<uint64_t>(::getpid()) << 32);
  }
  return value;
}

}  // namespace ipcrpc::internal
