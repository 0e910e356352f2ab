// Who is alive, on mq: (queues have no EOF). A live server owns /NAME by
// holding its token, an abstract Unix socket that the kernel frees at its
// death; `ipcrpc gc` (transports/leftovers.cc) asks the token whether a
// queue is stale. A peer's pid, as it claims it, is checked, then watched
// through a pidfd.
#ifndef IPCRPC_TRANSPORTS_MQ_MQ_LIVENESS_H_
#define IPCRPC_TRANSPORTS_MQ_MQ_LIVENESS_H_

#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/syscall.h"

namespace ipcrpc::internal {

// The abstract socket whose existence says that a live server owns /NAME:
// "@ipcrpc-mq-NAME", or a hash of NAME when it is too long for a socket name.
socklen_t MqTokenAddress(const std::string& name, sockaddr_un* addr);

// For `ipcrpc gc`. Whether queue /NAME exists and no live server owns it (its
// token is unbound). Names are given without the leading '/'.
absl::StatusOr<bool> MqQueueIsStale(const std::string& name);
// Removes /NAME if it is stale, holding its token meanwhile so that no server
// starts on it in between; FAILED_PRECONDITION if a live server owns it.
absl::Status RemoveStaleMqQueue(const std::string& name);

// The owner of queue /`name` (fstat of the opened queue). NOT_FOUND if there
// is none.
absl::StatusOr<uid_t> MqQueueOwner(const std::string& name);
// Clients' reply queues are "/ipcrpc-<pid>-<n>-<random>".
inline constexpr char kMqReplyQueuePrefix[] = "ipcrpc-";

// pidfd_open(pid): invalid if that fails (errno says why).
UniqueFd PidFd(pid_t pid);

// A pid that a peer claims (mq: has no SO_PEERCRED) decides how its
// connection's liveness is watched, so it is checked: `pidfd` (opened on it)
// must be alive, and the process must run as `owner`, the uid that owns the
// peer's queue. (Claiming pid 1 tied a dead client's calls to init.) OK, or
// why not. Without /proc the uid cannot be read: accepted, with a warning.
absl::Status CheckClaimedPid(pid_t pid, int pidfd, uid_t owner, std::string_view what);

}  // namespace ipcrpc::internal

#endif  // IPCRPC_TRANSPORTS_MQ_MQ_LIVENESS_H_
