// `mq:NAME`: POSIX message queues.
//
// The server owns queue /NAME (ServerOptions::mode, 0600 by default); every
// client sends its requests there, tagged with its connection id. Each client
// creates its own reply queue, announces it in a CONNECT message, and unlinks
// it once the server has opened it (the ACCEPT message says so). A frame
// larger than a queue message is split into fragments and reassembled, within
// max_message_size and a bound on partial messages per connection. Queues
// have no EOF: each side watches the other's pid with pidfd_open on its loop.
// CallOptions::priority is the mq_send priority, so urgent calls overtake
// queued ones. Liveness of /NAME: its server holds the abstract Unix socket
// "@ipcrpc-mq-NAME" while it lives (the kernel frees it at death); a queue
// without that socket is stale.
//
// Message layout and handshake: docs/PROTOCOL.md.
//
// Where it is: mq_wire.h (the message header, CONNECT's constants, the
// reassembly of fragments), mq_queue.h (queue names, sizes, mq_open's
// errors), mq_liveness.h (the server's token, the checks `ipcrpc gc` makes,
// a peer's claimed pid), mq_connection.h, mq_listener.cc, mq_connector.cc.
#ifndef IPCRPC_TRANSPORTS_MQ_MQ_TRANSPORT_H_
#define IPCRPC_TRANSPORTS_MQ_MQ_TRANSPORT_H_

#include <memory>

#include "absl/status/statusor.h"
#include "transports/transport.h"

namespace ipcrpc::internal {

absl::StatusOr<std::unique_ptr<Listener>> CreateMqListener(const Endpoint& endpoint,
                                                           const TransportOptions& options);
absl::StatusOr<std::unique_ptr<Connector>> CreateMqConnector(const Endpoint& endpoint,
                                                             const TransportOptions& options);

}  // namespace ipcrpc::internal

#endif  // IPCRPC_TRANSPORTS_MQ_MQ_TRANSPORT_H_
