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
#include <string>
#include <utility>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "base/syscall.h"
#include "transports/named_object.h"
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

// A listening Unix socket at the file `path`, for `what` (an endpoint, for
// messages): a stale socket file there is replaced, a live one is not
// (ALREADY_EXISTS); the file gets `mode`. Its owner removes the file
// (PublishedObject::Remove) when it stops listening.
absl::StatusOr<std::pair<UniqueFd, PublishedObject>> BindUnixSocketFile(const std::string& what,
                                                                        const std::string& path,
                                                                        unsigned mode);

// A listening socket's DescriptorWatch handler: accepts every connection
// pending on the non-blocking `listener`, reads its SO_PEERCRED, refuses
// (with a log line naming `what`) a uid that `options` does not allow, and
// hands the others to `on_connection`, which returns false to stop
// accepting. Out of descriptors, it looks again in 100 ms. False: stop
// watching (an accept error, logged, or on_connection said so).
bool AcceptUnixConnections(
    int listener, const std::string& what, const TransportOptions& options,
    absl::FunctionRef<bool(UniqueFd connection, const PeerCredentials& peer)> on_connection);

}  // namespace ipcrpc::internal

#endif  // IPCRPC_TRANSPORTS_UNIX_UNIX_TRANSPORT_H_
