// SyscallCounter: counts the system calls a set of processes makes, from the
// inside, with the kernel's raw_syscalls:sys_enter tracepoint (perf_event_open
// (2), one counter per thread of each process, each also counting the threads
// that thread starts later). The benchmark reads it before and after a
// measured loop and divides by the round trips: system calls per call are a
// figure that does not depend on the machine's speed, unlike the latency.
//
// Needs perf events for other processes of the same user: root, or
// /proc/sys/kernel/perf_event_paranoid <= 1 and tracefs readable. Where that
// is refused, Open says why and the benchmark prints "syscalls=n/a".
#ifndef IPCRPC_BENCH_SYSCALL_COUNTER_H_
#define IPCRPC_BENCH_SYSCALL_COUNTER_H_

#include <dirent.h>
#include <linux/perf_event.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace bench {

class SyscallCounter {
 public:
  SyscallCounter() = default;
  SyscallCounter(const SyscallCounter&) = delete;
  SyscallCounter& operator=(const SyscallCounter&) = delete;
  ~SyscallCounter() { Close(); }

  // Starts counting every thread of process `pid` (and the threads they
  // start from now on). False, with error() saying why, if the kernel refuses.
  bool Add(pid_t pid) {
    const int64_t id = TracepointId();
    if (id < 0) return false;
    const std::string dir = "/proc/" + std::to_string(pid) + "/task";
    DIR* tasks = opendir(dir.c_str());
    if (tasks == nullptr) {
      error_ = dir + ": " + std::strerror(errno);
      return false;
    }
    bool ok = true;
    while (struct dirent* entry = readdir(tasks)) {
      if (entry->d_name[0] == '.') continue;
      const pid_t tid = static_cast<pid_t>(std::atoi(entry->d_name));
      struct perf_event_attr attr;
      std::memset(&attr, 0, sizeof(attr));
      attr.size = sizeof(attr);
      attr.type = PERF_TYPE_TRACEPOINT;
      attr.config = static_cast<uint64_t>(id);
      attr.inherit = 1;  // threads this one starts later count too
      attr.exclude_hv = 1;
      const int fd = static_cast<int>(syscall(SYS_perf_event_open, &attr, tid, -1, -1, 0));
      if (fd < 0) {
        // A thread that has just exited is no loss; anything else is.
        if (errno == ESRCH) continue;
        error_ = "perf_event_open(raw_syscalls:sys_enter, tid " + std::to_string(tid) +
                 "): " + std::strerror(errno);
        ok = false;
        break;
      }
      fds_.push_back(fd);
    }
    closedir(tasks);
    return ok;
  }

  // The system calls counted so far, all threads together.
  uint64_t Read() const {
    uint64_t total = 0;
    for (int fd : fds_) {
      uint64_t value = 0;
      if (read(fd, &value, sizeof(value)) == sizeof(value)) total += value;
    }
    return total;
  }

  void Close() {
    for (int fd : fds_) close(fd);
    fds_.clear();
  }

  const std::string& error() const { return error_; }
  int64_t fds() const { return static_cast<int64_t>(fds_.size()); }

 private:
  int64_t TracepointId() {
    for (const char* path : {"/sys/kernel/tracing/events/raw_syscalls/sys_enter/id",
                             "/sys/kernel/debug/tracing/events/raw_syscalls/sys_enter/id"}) {
      if (FILE* f = std::fopen(path, "r")) {
        long long id = -1;
        const bool ok = std::fscanf(f, "%lld", &id) == 1;
        std::fclose(f);
        if (ok) return id;
      }
    }
    error_ = "raw_syscalls:sys_enter: no tracefs id (is tracefs mounted and readable?)";
    return -1;
  }

  std::vector<int> fds_;
  std::string error_;
};

// The children of process `parent` (from /proc/*/stat), for a server started
// by a library call that does not return its pid.
inline std::vector<pid_t> ChildrenOf(pid_t parent) {
  std::vector<pid_t> children;
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return children;
  while (struct dirent* entry = readdir(proc)) {
    const pid_t pid = static_cast<pid_t>(std::atoi(entry->d_name));
    if (pid <= 0) continue;
    const std::string path = "/proc/" + std::to_string(pid) + "/stat";
    FILE* f = std::fopen(path.c_str(), "r");
    if (f == nullptr) continue;
    char line[512] = {};
    const size_t n = std::fread(line, 1, sizeof(line) - 1, f);
    std::fclose(f);
    line[n] = '\0';
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    const char* close_paren = std::strrchr(line, ')');
    if (close_paren == nullptr) continue;
    char state = 0;
    int ppid = 0;
    if (std::sscanf(close_paren + 1, " %c %d", &state, &ppid) == 2 && ppid == parent) {
      children.push_back(pid);
    }
  }
  closedir(proc);
  return children;
}

}  // namespace bench

#endif  // IPCRPC_BENCH_SYSCALL_COUNTER_H_
