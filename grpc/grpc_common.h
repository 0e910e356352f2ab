// What both sides of the grpc: transport share: endpoint syntax and the
// plaintext rule, metadata and deadline conversions, byte buffers, TLS files.
#ifndef IPCRPC_GRPC_GRPC_COMMON_H_
#define IPCRPC_GRPC_GRPC_COMMON_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/string_ref.h"
#include "wire/frame.h"
#include "transports/transport.h"

namespace ipcrpc::internal {

// "grpc:HOST:PORT" (HOST: a name, an IPv4 address or [an IPv6 address]) or
// "grpc:unix:PATH".
struct GrpcAddress {
  std::string target;  // as gRPC takes it: "127.0.0.1:50051", "unix:/run/x.sock"
  std::string host;    // empty for unix:
  int port = -1;       // -1 for unix:
  bool is_unix = false;
  std::string path;    // unix: only
  // Loopback (127.0.0.0/8, ::1, localhost) or unix:: plaintext is allowed.
  bool local = false;
};

// INVALID_ARGUMENT naming the endpoint and what is wrong; also for plaintext
// to an address that is not local, unless TLS is configured (`tls`) or
// plaintext off the host is allowed.
absl::StatusOr<GrpcAddress> ParseGrpcAddress(const Endpoint& endpoint, bool tls,
                                             bool allow_plaintext_off_host);

// The endpoint as bound: port 0 replaced by the port gRPC picked.
std::string GrpcEndpointText(const GrpcAddress& address, int port);

// Headers of gRPC and HTTP/2 themselves, never metadata: pseudo-headers,
// grpc-*, content-type, te, user-agent.
bool IsGrpcTransportHeader(std::string_view key);

// OK if every entry can go on gRPC's wire: keys of lowercase letters,
// digits, '-', '_', '.', not a transport header; values printable ASCII
// unless the key ends in "-bin". Else INVALID_ARGUMENT naming the entry.
absl::Status CheckGrpcMetadata(const Metadata& metadata);

// gRPC's metadata without its transport headers, appended to `out`.
void AppendGrpcMetadata(const std::multimap<grpc::string_ref, grpc::string_ref>& metadata,
                        Metadata* out);

// A monotonic wire deadline as gRPC's system-clock time, and back
// (kWireNoDeadline: none).
std::chrono::system_clock::time_point GrpcDeadline(int64_t deadline_ns);
int64_t WireDeadline(std::chrono::system_clock::time_point deadline);

std::string ByteBufferToString(const grpc::ByteBuffer& buffer);
grpc::ByteBuffer StringToByteBuffer(std::string_view bytes);

// A whole frame: the prefix EncodeFramePrefix writes, then the payload.
// RESPONSE frames that would break the metadata limits become
// RESOURCE_EXHAUSTED without the metadata.
std::string ResponseFrame(uint64_t request_id, absl::Status status, const Metadata& metadata,
                          std::string_view payload, size_t max_payload);
std::string StreamFrame(FrameType type, uint64_t request_id, std::string_view payload);
// A WINDOW frame granting `credit` more bytes of the stream `request_id`.
std::string WindowFrame(uint64_t request_id, int64_t credit);

// What the client's and the server's gRPC connections share: the RPC
// layer's handlers, used on its loop only; frames posted there in order;
// the close that drops the handlers (they hold the RPC layer's side of the
// connection, which holds it); sends that never wait (gRPC queues); and no
// process to name as the peer.
class GrpcBridgeConnection : public Connection {
 public:
  // `peer`: who is at the other end, where the kernel told us (a
  // grpc:unix: connection the server accepted itself); else pid -1.
  explicit GrpcBridgeConnection(std::string description,
                                std::optional<PeerCredentials> peer = std::nullopt);

  // Called on the loop before anything is delivered.
  void Start(asio::io_context& io, MessageHandler on_message, CloseHandler on_closed) override;
  bool TrySend(absl::Span<const std::string_view> parts, int priority,
               absl::Status* error) final {
    *error = Send(parts, priority);
    return true;
  }
  const PeerCredentials& peer() const final { return peer_; }
  const std::string& description() const final { return description_; }

 protected:
  // Hands `frame` to the RPC layer on `io` (null: never started, dropped).
  void PostFrame(asio::io_context* io, std::string frame);
  // On the loop: at once.
  void DeliverOnLoop(std::string_view frame) {
    if (on_message_ != nullptr && !closed_on_loop_) (*on_message_)(frame);
  }
  // Off the loop, on gRPC's thread: hands `frame` to the RPC layer here and
  // now, and returns true; false if the connection has not started or is
  // closing (then post it). No hand-off to the loop and back, which gRPC's
  // own servers and stubs do not make either (docs/GRPC.md, "What the
  // bridge costs"). Only for a unary call's one REQUEST (server) or
  // RESPONSE (client): frames whose order against the connection's others
  // does not matter, and which the RPC layer handles on any thread
  // (Connection::Start).
  bool DeliverHere(std::string_view frame);
  // No DeliverHere after this (nor after a Start that comes later). With
  // `wait`, returns once those running have returned, unless called from
  // inside one on this thread (its handler closed the connection): then
  // at once.
  void StopDeliveringHere(bool wait);
  // Whether this thread is inside DeliverHere on this connection.
  bool DeliveringHereOnThisThread() const;
  // Ends the connection for the RPC layer, on `io`: on_closed runs once,
  // nothing is delivered after it, and the handlers are dropped.
  void PostClosed(asio::io_context* io, absl::Status reason);

 private:
  const std::string description_;
  PeerCredentials peer_;
  // Shared with DeliverHere (direct_, a copy of the pointer): the loop's
  // copy is dropped on close, DeliverHere's by StopDeliveringHere.
  std::shared_ptr<MessageHandler> on_message_;  // loop only
  CloseHandler on_closed_;                      // loop only
  bool closed_on_loop_ = false;                 // loop only: on_closed ran
  std::mutex direct_mu_;
  std::condition_variable direct_idle_;
  std::shared_ptr<MessageHandler> direct_;  // guarded by direct_mu_
  int direct_running_ = 0;                  // guarded by direct_mu_
  bool direct_stopped_ = false;             // guarded by direct_mu_
};

// gRPC 1.51 runs callback-API calls (on Linux, where its I/O manager does
// not poll in the background) on one shared completion queue that it shuts
// down when the last user goes and creates again for the next; that cycle
// can free the queue twice (seen under AddressSanitizer when channels come
// and go). One channel that uses the queue and is never destroyed keeps it
// up for the life of the process. Idempotent.
void KeepGrpcCallbackQueueAlive();

// The contents of a PEM file named by an option (`what`, for messages).
absl::StatusOr<std::string> ReadPemFile(const std::string& path, std::string_view what);

}  // namespace ipcrpc::internal

#endif  // IPCRPC_GRPC_GRPC_COMMON_H_
