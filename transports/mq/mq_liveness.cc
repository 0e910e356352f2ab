#include "transports/mq/mq_liveness.h"

#include <fcntl.h>
#include <mqueue.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/logging.h"
#include "base/strings.h"
#include "transports/mq/mq_queue.h"
#include "transports/named_object.h"

namespace ipcrpc::internal {

socklen_t MqTokenAddress(const std::string& name, sockaddr_un* addr) {
  std::memset(addr, 0, sizeof(*addr));
  addr->sun_family = AF_UNIX;
  std::string token = "ipcrpc-mq-" + name;
  if (token.size() > sizeof(addr->sun_path) - 2) {
    uint64_t hash = 1469598103934665603ull;  // FNV-1a, stable across builds
    for (unsigned char c : name) hash = (hash ^ c) * 1099511628211ull;
    token = absl::StrCat("ipcrpc-mq-#", absl::Hex(hash, absl::kZeroPad16));
  }
  std::memcpy(addr->sun_path + 1, token.data(), token.size());
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + token.size());
}

UniqueFd PidFd(pid_t pid) { return UniqueFd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0))); }

absl::Status CheckClaimedPid(pid_t pid, int pidfd, uid_t owner, std::string_view what) {
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  bool found = false;
  uid_t effective = 0;
  while (std::getline(status, line)) {
    if (line.rfind("Uid:", 0) != 0) continue;
    // Uid: real effective saved filesystem
    std::vector<absl::string_view> fields =
        absl::StrSplit(absl::string_view(line).substr(4), absl::ByAnyChar(" \t"), absl::SkipEmpty());
    found = fields.size() >= 2 && absl::SimpleAtoi(fields[1], &effective);
    break;
  }
  if (!found) {
    // Without /proc at all nothing can be checked: taken as it is. With a
    // /proc that hides this pid (hidepid=, another user's process), the
    // claim cannot be verified: refused.
    if (std::ifstream("/proc/self/status").good()) {
      return absl::PermissionDeniedError(
          absl::StrCat("it claims pid ", pid, ", whose uid cannot be read here"));
    }
    IPCRPC_LOG(WARNING) << Av(what) << ": cannot read the uid of pid " << pid
                        << " (no /proc): its claim is taken as it is";
    return absl::OkStatus();
  }
  // Still the process we opened (not a new one with a reused pid)?
  struct pollfd exited = {pidfd, POLLIN, 0};
  if (::poll(&exited, 1, 0) != 0) {
    return absl::UnavailableError(absl::StrCat("pid ", pid, " is gone"));
  }
  if (effective != owner) {
    return absl::PermissionDeniedError(absl::StrCat(
        "it claims pid ", pid, ", which runs as uid ", effective, ", but its queue belongs to uid ",
        owner));
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> MqQueueIsStale(const std::string& name) {
  const std::string path = "/" + name;
  UniqueFd queue(static_cast<int>(mq_open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC)));
  if (!queue.valid()) {
    if (errno == ENOENT) return false;
    return MqOpenError(errno, path);
  }
  UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!probe.valid()) return ErrnoStatus(errno, "socket", path);
  sockaddr_un addr;
  const socklen_t len = MqTokenAddress(name, &addr);
  if (::connect(probe.get(), reinterpret_cast<sockaddr*>(&addr), len) == 0) return false;
  if (errno == ECONNREFUSED || errno == ENOENT) return true;
  if (errno == EAGAIN || errno == EINPROGRESS) return false;  // a live server's backlog is full
  return ErrnoStatus(errno, "connect", path + "'s token");
}

absl::StatusOr<uid_t> MqQueueOwner(const std::string& name) {
  const std::string path = "/" + name;
  UniqueFd queue(static_cast<int>(mq_open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC)));
  if (!queue.valid()) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": no such queue"));
    return MqOpenError(errno, path);
  }
  struct stat st;
  if (::fstat(queue.get(), &st) < 0) return ErrnoStatus(errno, "fstat", path);
  return st.st_uid;
}

absl::Status RemoveStaleMqQueue(const std::string& name) {
  const std::string path = "/" + name;
  // Another uid's queue stays, however stale.
  absl::StatusOr<uid_t> owner = MqQueueOwner(name);
  if (!owner.ok()) {
    if (absl::IsNotFound(owner.status())) return absl::OkStatus();  // gone already
    return owner.status();
  }
  if (*owner != ::geteuid()) return NotOursError(path, "queue", path, *owner);
  UniqueFd token(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!token.valid()) return ErrnoStatus(errno, "socket", path);
  sockaddr_un addr;
  const socklen_t len = MqTokenAddress(name, &addr);
  if (::bind(token.get(), reinterpret_cast<sockaddr*>(&addr), len) < 0) {
    if (errno == EADDRINUSE) {
      return absl::FailedPreconditionError(absl::StrCat(path, ": a live server owns it"));
    }
    return ErrnoStatus(errno, "bind", path + "'s token");
  }
  // Holding the token, nobody else can start serving /NAME: it is ours to remove.
  if (mq_unlink(path.c_str()) < 0 && errno != ENOENT) return ErrnoStatus(errno, "mq_unlink", path);
  return absl::OkStatus();
}

}  // namespace ipcrpc::internal
