// How an shm: connection is made: the client connects to the server's
// abstract socket and sends a HELLO that carries the region's memfd and the
// server's end of the doorbell pair; the server answers with an ACK.
// Handshake: docs/PROTOCOL.md ("shm:").
#ifndef IPCRPC_TRANSPORTS_SHM_SHM_HANDSHAKE_H_
#define IPCRPC_TRANSPORTS_SHM_SHM_HANDSHAKE_H_

#include <sys/socket.h>
#include <sys/un.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "transports/transport.h"

namespace ipcrpc::internal {

inline constexpr size_t kShmHelloSize = 24;
inline constexpr char kHelloMagic[4] = {'I', 'S', 'H', 'M'};
inline constexpr char kAckMagic[4] = {'I', 'S', 'H', 'A'};
// 2: the doorbells are a datagram socket pair, not eventfds (1 is refused:
// an eventfd's O_NONBLOCK is the peer's to clear, see RingPeer).
inline constexpr uint32_t kVersion = 2;

// The address of the socket a server of `shm:NAME` listens on:
// "@ipcrpc-shm-NAME".
socklen_t AbstractAddress(const std::string& name, sockaddr_un* addr);

// INVALID_ARGUMENT unless the endpoint's address can name that socket.
absl::Status ValidateShmName(const Endpoint& endpoint);

}  // namespace ipcrpc::internal

#endif  // IPCRPC_TRANSPORTS_SHM_SHM_HANDSHAKE_H_
