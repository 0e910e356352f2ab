// Finding what dead processes left behind, for `ipcrpc gc`. Every check is
// the same liveness probe the transports use to reclaim their own objects, so
// nothing live is ever reported: a socket file or FIFO is stale when nobody
// serves it, a queue when its server's token is unbound, a client's private
// FIFO directory or reply queue when the process named in it is gone.
#ifndef IPCRPC_TRANSPORTS_LEFTOVERS_H_
#define IPCRPC_TRANSPORTS_LEFTOVERS_H_

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace ipcrpc::internal {

struct StaleObject {
  std::string kind;         // "socket", "FIFO", "queue", "FIFO directory", "reply queue"
  std::string name;         // the path or queue name
  std::string reason;       // why it is stale
  // Checks again that it is stale, then removes it.
  absl::AnyInvocable<absl::Status()> remove;
};

// The named object of `endpoint` if it exists and nobody serves it; nullopt
// when there is none, it is live, it is not of the transport's kind (never
// touched), or the transport leaves nothing by name (shm:, pipe:).
absl::StatusOr<std::optional<StaleObject>> FindStaleEndpointObject(std::string_view endpoint);

// Clients' objects of this user whose process is gone: private FIFO
// directories in the runtime directory and mq: reply queues. `notes` receives
// what could not be looked at (e.g. /dev/mqueue not mounted).
std::vector<StaleObject> FindStaleClientObjects(std::vector<std::string>* notes);

}  // namespace ipcrpc::internal

#endif  // IPCRPC_TRANSPORTS_LEFTOVERS_H_
