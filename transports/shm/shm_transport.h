// `shm:NAME`: shared-memory rings.
//
// The server listens on the abstract Unix socket "@ipcrpc-shm-NAME" (nothing
// on disk). Per connection the client makes one sealed memfd holding two
// single-producer single-consumer rings (requests, responses) and a Unix
// datagram socket pair, the doorbells (a datagram on one end wakes the
// holder of the other), and passes the memfd and the server's end with
// SCM_RIGHTS in a HELLO. The socket stays open as the liveness channel: EOF is the peer's
// death; SO_PEERCRED gives its pid and uid. Nothing is created in /dev/shm,
// so a SIGKILL of either side leaves nothing behind.
//
// Layout and handshake: docs/PROTOCOL.md ("shm:").
//
// Where it is: shm_region.h (the shared memory's layout and mapping),
// shm_ring.h (the rings), shm_handshake.h (the rendezvous socket, HELLO and
// ACK), shm_connection.h, shm_spinner.h (how a reader waits),
// shm_listener.cc, shm_connector.cc.
#ifndef IPCRPC_TRANSPORTS_SHM_SHM_TRANSPORT_H_
#define IPCRPC_TRANSPORTS_SHM_SHM_TRANSPORT_H_

#include <memory>

#include "absl/status/statusor.h"
#include "transports/transport.h"

namespace ipcrpc::internal {

absl::StatusOr<std::unique_ptr<Listener>> CreateShmListener(const Endpoint& endpoint,
                                                            const TransportOptions& options);
absl::StatusOr<std::unique_ptr<Connector>> CreateShmConnector(const Endpoint& endpoint,
                                                              const TransportOptions& options);

}  // namespace ipcrpc::internal

#endif  // IPCRPC_TRANSPORTS_SHM_SHM_TRANSPORT_H_
