#include "tests/util/process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "base/clock.h"

extern char** environ;

namespace ipcrpc::testing {

absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& argv, const std::vector<int>& keep_fds,
                            const std::vector<std::string>& env, int stdout_fd,
                            int stderr_fd) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (stdout_fd >= 0) posix_spawn_file_actions_adddup2(&actions, stdout_fd, STDOUT_FILENO);
  if (stderr_fd >= 0) posix_spawn_file_actions_adddup2(&actions, stderr_fd, STDERR_FILENO);
  for (int fd : keep_fds) posix_spawn_file_actions_adddup2(&actions, fd, fd);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t empty;
  sigemptyset(&empty);
  posix_spawnattr_setsigmask(&attr, &empty);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
  std::vector<char*> envp;
  for (char** e = environ; *e != nullptr; ++e) envp.push_back(*e);
  std::vector<std::string> extra = env;
  for (std::string& e : extra) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = 0;
  int error = posix_spawn(&pid, argv[0].c_str(), &actions, &attr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (error != 0) return absl::ErrnoToStatus(error, absl::StrCat("posix_spawn ", argv[0]));
  return pid;
}

std::optional<int> WaitForExit(pid_t pid, absl::Duration timeout) {
  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (pidfd >= 0) {
    struct pollfd pfd = {pidfd, POLLIN, 0};
    int ms = static_cast<int>(absl::ToInt64Milliseconds(timeout));
    while (poll(&pfd, 1, ms) < 0 && errno == EINTR) {
    }
    close(pidfd);
  }
  int status = 0;
  pid_t r;
  do {
    r = waitpid(pid, &status, WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == pid) return status;
  return std::nullopt;
}

bool WaitUntilGone(pid_t pid, absl::Duration timeout) {
  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) return errno == ESRCH;
  struct pollfd pfd = {pidfd, POLLIN, 0};
  int ms = static_cast<int>(absl::ToInt64Milliseconds(timeout));
  int n;
  while ((n = poll(&pfd, 1, ms)) < 0 && errno == EINTR) {
  }
  close(pidfd);
  return n == 1;
}

bool WaitUntilReaped(pid_t pid, absl::Duration timeout) {
  const int64_t deadline = internal::AddDurationNs(internal::MonotonicNowNs(), timeout);
  while (internal::MonotonicNowNs() < deadline) {
    if (kill(pid, 0) == -1 && errno == ESRCH) return true;
    usleep(1000);
  }
  return false;
}

absl::StatusOr<std::string> ReadLine(int fd, absl::Duration timeout) {
  const int64_t deadline = internal::AddDurationNs(internal::MonotonicNowNs(), timeout);
  std::string line;
  for (;;) {
    struct pollfd pfd = {fd, POLLIN, 0};
    int64_t left_ms = (deadline - internal::MonotonicNowNs()) / 1000000;
    if (left_ms <= 0) return absl::DeadlineExceededError("no line in time: '" + line + "'");
    int n = poll(&pfd, 1, static_cast<int>(left_ms));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) continue;
    char c;
    ssize_t r = read(fd, &c, 1);
    if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (r <= 0) return absl::UnavailableError("EOF before a line: '" + line + "'");
    if (c == '\n') return line;
    line.push_back(c);
  }
}

absl::StatusOr<std::string> ReadBytes(int fd, size_t n, absl::Duration timeout) {
  const int64_t deadline = internal::AddDurationNs(internal::MonotonicNowNs(), timeout);
  std::string bytes;
  while (bytes.size() < n) {
    struct pollfd pfd = {fd, POLLIN, 0};
    int64_t left_ms = (deadline - internal::MonotonicNowNs()) / 1000000;
    if (left_ms <= 0) return absl::DeadlineExceededError("not enough bytes in time");
    int ready = poll(&pfd, 1, static_cast<int>(left_ms));
    if (ready <= 0) continue;
    char buffer[256];
    ssize_t r = read(fd, buffer, std::min(sizeof(buffer), n - bytes.size()));
    if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (r <= 0) return absl::UnavailableError("EOF");
    bytes.append(buffer, static_cast<size_t>(r));
  }
  return bytes;
}

bool WaitForEof(int fd, absl::Duration timeout) {
  const int64_t deadline = internal::AddDurationNs(internal::MonotonicNowNs(), timeout);
  char buffer[4096];
  for (;;) {
    int64_t left_ms = (deadline - internal::MonotonicNowNs()) / 1000000;
    if (left_ms <= 0) return false;
    struct pollfd pfd = {fd, POLLIN, 0};
    int n = poll(&pfd, 1, static_cast<int>(left_ms));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) continue;
    ssize_t r = read(fd, buffer, sizeof(buffer));
    if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (r <= 0) return true;
  }
}

absl::StatusOr<std::string> FirstLineAsUid(const std::vector<std::string>& argv, uid_t uid,
                                           bool* cannot_run) {
  int out[2];
  if (pipe2(out, O_CLOEXEC) < 0) return absl::InternalError("pipe2");
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], STDOUT_FILENO);
    if (setgid(uid) != 0 || setuid(uid) != 0) _exit(3);
    execv(args[0], args.data());
    _exit(4);
  }
  close(out[1]);
  auto line = ReadLine(out[0], absl::Seconds(20));
  close(out[0]);
  kill(pid, SIGKILL);
  std::optional<int> status = WaitForExit(pid, absl::Seconds(20));
  *cannot_run = status.has_value() && WIFEXITED(*status) && WEXITSTATUS(*status) >= 3;
  return line;
}

int64_t ProcessCpuTicks(pid_t pid) {
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  std::string line;
  std::getline(stat, line);
  // Fields after the command name (which ends with ')'): the 14th and 15th
  // are utime and stime.
  const size_t paren = line.rfind(')');
  if (paren == std::string::npos || paren + 2 > line.size()) return 0;
  std::istringstream fields(line.substr(paren + 2));
  std::string field;
  int64_t ticks = 0;
  for (int i = 3; i <= 15 && fields >> field; ++i) {
    if (i == 14 || i == 15) ticks += std::stoll(field);
  }
  return ticks;
}

namespace {

// The number after `key` on its line of a /proc status file, or -1.
int64_t StatusNumber(const std::string& path, std::string_view key) {
  std::ifstream status(path);
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(key, 0) == 0) {
      std::istringstream fields(line.substr(key.size()));
      int64_t number = -1;
      fields >> number;
      return number;
    }
  }
  return -1;
}

}  // namespace

int64_t ProcessRssBytes(pid_t pid) {
  const int64_t kib = StatusNumber(absl::StrCat("/proc/", pid, "/status"), "VmRSS:");
  return kib < 0 ? -1 : kib * 1024;
}

int64_t ThreadVoluntarySwitches(pid_t tid) {
  return StatusNumber(absl::StrCat("/proc/self/task/", tid, "/status"),
                      "voluntary_ctxt_switches:");
}

std::string UniqueName(const std::string& prefix) {
  static std::atomic<int> counter{0};
  return absl::StrCat(prefix, "-", getpid(), "-", counter.fetch_add(1));
}

absl::Status EnsureMqueueMounted() {
  constexpr long kMqueueMagic = 0x19800202;
  struct statfs fs;
  if (::statfs("/dev/mqueue", &fs) == 0 && fs.f_type == kMqueueMagic) return absl::OkStatus();
  ::mkdir("/dev/mqueue", 01777);
  if (::mount("none", "/dev/mqueue", "mqueue", 0, nullptr) < 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "/dev/mqueue is not mounted and mounting it failed: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace ipcrpc::testing
