// `fifo:PATH`: named pipes with many clients.
//
// The server owns the FIFO at PATH (ServerOptions::mode, 0600 by default) and
// reads fixed-size 256-byte connect records from it; a record is smaller than
// PIPE_BUF, so records written by many clients at once never interleave.
// Each client makes a private directory (0700) in the runtime directory with
// two FIFOs, c2s (requests) and s2c (responses), opens them, and sends a
// record naming the directory. The server opens both, checks with fstat on
// the opened descriptors that they are FIFOs owned by an allowed uid, unlinks
// them and answers an 8-byte acknowledgement on s2c; the client then unlinks
// them too. From there each FIFO has one writer, so frames larger than
// PIPE_BUF are safe; EOF on the peer's FIFO is its death.
//
// The record layout and the handshake are specified in docs/PROTOCOL.md.
#ifndef IPCRPC_TRANSPORTS_FIFO_FIFO_TRANSPORT_H_
#define IPCRPC_TRANSPORTS_FIFO_FIFO_TRANSPORT_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "transports/transport.h"

namespace ipcrpc::internal {

inline constexpr size_t kFifoRecordSize = 256;
inline constexpr size_t kFifoMaxDirLength = 240;
inline constexpr size_t kFifoAckSize = 8;

// Builds a connect record naming `dir` for a client of pid `pid`.
std::string MakeFifoConnectRecord(const std::string& dir, uint32_t pid);

// Whether a server reads the FIFO at `path` (false: stale or gone).
absl::StatusOr<bool> FifoHasReader(const std::string& path);

// The prefix of a client's private directory in the runtime directory:
// "fifo-<pid>-XXXXXX", holding its "c2s" and "s2c" FIFOs while it connects.
inline constexpr char kFifoPrivateDirPrefix[] = "fifo-";

absl::StatusOr<std::unique_ptr<Listener>> CreateFifoListener(const Endpoint& endpoint,
                                                             const TransportOptions& options);
absl::StatusOr<std::unique_ptr<Connector>> CreateFifoConnector(const Endpoint& endpoint,
                                                               const TransportOptions& options);

}  // namespace ipcrpc::internal

#endif  // IPCRPC_TRANSPORTS_FIFO_FIFO_TRANSPORT_H_
