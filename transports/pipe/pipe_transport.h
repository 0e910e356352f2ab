// `pipe:`: anonymous pipes between a parent and the child it spawned.
//
// The parent (SpawnChildConnector) creates two pipes with O_CLOEXEC, spawns
// the child with posix_spawnp so that only the child's two ends survive exec,
// and names them in the child's environment as IPCRPC_PIPE_FDS=<read>,<write>.
// The child's Listen("pipe:") serves that one connection; when it ends (the
// parent died or closed the channel) the child's server shuts down. The
// parent watches the child with a pidfd on its loop and reaps it as soon as it
// exits, so no zombie is left; destroying the channel closes the pipes, waits
// a grace period for the child to exit, then kills and reaps it.
#ifndef IPCRPC_TRANSPORTS_PIPE_PIPE_TRANSPORT_H_
#define IPCRPC_TRANSPORTS_PIPE_PIPE_TRANSPORT_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "transports/transport.h"

namespace ipcrpc::internal {

inline constexpr char kPipeFdsEnv[] = "IPCRPC_PIPE_FDS";

absl::StatusOr<std::unique_ptr<Listener>> CreatePipeListener(const Endpoint& endpoint,
                                                             const TransportOptions& options);
absl::StatusOr<std::unique_ptr<Connector>> CreatePipeConnector(const Endpoint& endpoint,
                                                               const TransportOptions& options);

}  // namespace ipcrpc::internal

#endif  // IPCRPC_TRANSPORTS_PIPE_PIPE_TRANSPORT_H_
