// `unix:PATH` (and `unix:@NAME` in the abstract namespace): Unix stream
// sockets. The socket file is created with TransportOptions::mode (0600 by
// default) without a window in which it has another mode: it is bound under
// a temporary name, chmod'ed, then hard-linked to PATH (link fails if PATH
// exists, so two servers never both win). A socket file with no listener
// behind it (connect gives ECONNREFUSED) is stale and reclaimed; a live one is
// never taken over; anything that is not a socket is never deleted.
#ifndef IPCRPC_TRANSPORTS_UNIX_UNIX_TRANSPORT_H_
#define IPCRPC_TRANSPORTS_UNIX_UNIX_TRANSPORT_H_

#include <memory>

#include "absl/status/statusor.h"
#include "transports/transport.h"

namespace ipcrpc::internal {

absl::StatusOr<std::unique_ptr<Listener>> CreateUnixListener(const Endpoint& endpoint,
                                                             const TransportOptions& options);
absl::StatusOr<std::unique_ptr<Connector>> CreateUnixConnector(const Endpoint& endpoint,
                                                               const TransportOptions& options);

// Syntax check of a `unix:` address; INVALID_ARGUMENT naming what is wrong.
absl::Status ValidateUnixAddress(const Endpoint& endpoint);

// Whether a server accepts on the socket file at `path` (false: stale or gone).
absl::StatusOr<bool> UnixSocketIsLive(const std::string& path);

// Reads SO_PEERCRED of a connected Unix socket.
absl::StatusOr<PeerCredentials> UnixPeerCredentials(int fd, std::string_view object);

}  // namespace ipcrpc::internal

#endif  // IPCRPC_TRANSPORTS_UNIX_UNIX_TRANSPORT_H_
