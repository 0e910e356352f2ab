// `inproc:NAME`: calls inside one process, with no kernel object at all. A
// server listening on inproc:NAME is found by name in a process-wide table;
// a connection is two queues of whole messages, each delivered on the
// receiving side's loop, in order. For unit tests of services (as gRPC's
// in-process channel is) and of the RPC layer's rules (exactly-once
// completion, retries, reconnects) without pipes, sockets or queues.
//
// The peer is this process: peer() is our own pid and uid. A sender waits
// (Send) or declines (TrySend) while its peer has kInprocQueueLimit bytes
// it has not yet taken, so a loop that stalls cannot make the other side
// allocate without bound.
#ifndef IPCRPC_TRANSPORTS_INPROC_INPROC_TRANSPORT_H_
#define IPCRPC_TRANSPORTS_INPROC_INPROC_TRANSPORT_H_

#include <cstddef>
#include <memory>

#include "absl/status/statusor.h"
#include "transports/transport.h"

namespace ipcrpc::internal {

// Bytes a side may have sent that its peer's loop has not yet taken (one
// message of any allowed size always goes when nothing is queued).
inline constexpr size_t kInprocQueueLimit = 8u << 20;

absl::StatusOr<std::unique_ptr<Listener>> CreateInprocListener(const Endpoint& endpoint,
                                                               const TransportOptions& options);
absl::StatusOr<std::unique_ptr<Connector>> CreateInprocConnector(const Endpoint& endpoint,
                                                                 const TransportOptions& options);

}  // namespace ipcrpc::internal

#endif  // IPCRPC_TRANSPORTS_INPROC_INPROC_TRANSPORT_H_
