// grpc: endpoints: real gRPC (HTTP/2) as a transport, so that one Server
// serves its services to any gRPC client and a Channel calls any gRPC
// server, with the RPC layer above unchanged (docs/GRPC.md).
//
// This is the one transport that reads frames: the RPC layer hands it
// frames as it would to any connection, and it turns each call's frames
// into gRPC operations and gRPC's events back into frames. A REQUEST starts
// a gRPC call, CANCEL cancels it, a stream's MESSAGE, HALF_CLOSE and WINDOW
// become writes, WritesDone and read credit; gRPC's answer becomes the
// RESPONSE, with its initial and trailing metadata and its
// grpc-status-details-bin in the metadata block (docs/PROTOCOL.md).
// On the server, each gRPC peer with calls in flight is one connection
// (ServerOptions::max_connections, max_calls_per_connection apply).
//
// Built only with IPCRPC_GRPC (CMake finds libgrpc++); transports/registry.cc
// lists it then.
#ifndef IPCRPC_GRPC_GRPC_TRANSPORT_H_
#define IPCRPC_GRPC_GRPC_TRANSPORT_H_

#include <memory>

#include "absl/status/statusor.h"
#include "transports/transport.h"

namespace ipcrpc::internal {

absl::StatusOr<std::unique_ptr<Listener>> CreateGrpcListener(const Endpoint& endpoint,
                                                             const TransportOptions& options);
absl::StatusOr<std::unique_ptr<Connector>> CreateGrpcConnector(const Endpoint& endpoint,
                                                               const TransportOptions& options);

}  // namespace ipcrpc::internal

#endif  // IPCRPC_GRPC_GRPC_TRANSPORT_H_
