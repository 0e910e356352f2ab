// Real child processes for tests: spawn with chosen descriptors, wait with a
// bound, read a line with a bound.
#ifndef IPCRPC_TESTS_UTIL_PROCESS_H_
#define IPCRPC_TESTS_UTIL_PROCESS_H_

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace ipcrpc::testing {

// Spawns argv (argv[0] a path). `keep_fds` survive exec under the same
// numbers; `env` entries ("K=V") are added to the environment; `stdout_fd`
// and `stderr_fd`, if set, become the child's standard output and error.
absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& argv,
                            const std::vector<int>& keep_fds = {},
                            const std::vector<std::string>& env = {}, int stdout_fd = -1,
                            int stderr_fd = -1);

// Waits up to `timeout` for `pid` (a child) to exit; its wait status, or
// nullopt on timeout.
std::optional<int> WaitForExit(pid_t pid, absl::Duration timeout);

// True once `pid` (any process) has exited, within `timeout` (pidfd based).
bool WaitUntilGone(pid_t pid, absl::Duration timeout);

// True once `pid` has exited and been reaped by its parent (no zombie), within
// `timeout`. Polls: the reaping happens in another process or thread.
bool WaitUntilReaped(pid_t pid, absl::Duration timeout);

// Reads exactly `n` bytes from `fd` within `timeout`.
absl::StatusOr<std::string> ReadBytes(int fd, size_t n, absl::Duration timeout);

// Reads one '\n'-terminated line from `fd` within `timeout`.
absl::StatusOr<std::string> ReadLine(int fd, absl::Duration timeout);

// True if `fd` reaches EOF (or an error) within `timeout`, after reading and
// discarding whatever comes before it.
bool WaitForEof(int fd, absl::Duration timeout);

// Runs argv as `uid` (fork, setgid/setuid, exec) and returns the first line
// it prints, or why there was none; the process is then killed and reaped.
// Sets *cannot_run if it could not even be started as that uid.
absl::StatusOr<std::string> FirstLineAsUid(const std::vector<std::string>& argv, uid_t uid,
                                           bool* cannot_run);

// CPU time `pid` has used so far (user + system), in clock ticks (usually
// 1/100 s), from /proc/PID/stat; for tests that a process stays idle or does
// not spin.
int64_t ProcessCpuTicks(pid_t pid);

// Resident memory of `pid` (VmRSS), or -1.
int64_t ProcessRssBytes(pid_t pid);

// How many times thread `tid` of this process has slept (voluntary context
// switches, /proc/self/task/TID/status), or -1.
int64_t ThreadVoluntarySwitches(pid_t tid);

// A name unique to this process and call: "<prefix>-<pid>-<n>".
std::string UniqueName(const std::string& prefix);

// Makes sure the POSIX queue file system is mounted on /dev/mqueue, where
// `ipcrpc gc` and `ls` list queues (a fresh Debian VM may not have it):
// mounts it if not (root only). Not OK, saying why, if it is not and
// cannot be.
absl::Status EnsureMqueueMounted();

}  // namespace ipcrpc::testing

#endif  // IPCRPC_TESTS_UTIL_PROCESS_H_
