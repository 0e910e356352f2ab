// The transport interface: how ipcrpc moves whole messages (bytes with
// boundaries) between two processes. A transport is a Listener (server side),
// a Connector (client side) and the Connection both produce; the registry in
// registry.cc maps an endpoint's scheme to them. Transports know nothing of
// RPC, frames, methods or protobuf.
//
// Every transport is driven by an asio::io_context: the connection waits for
// readability of a descriptor on the loop and hands each whole message to the
// owner's callback on the loop's thread.
#ifndef IPCRPC_TRANSPORTS_TRANSPORT_H_
#define IPCRPC_TRANSPORTS_TRANSPORT_H_

#include <sys/types.h>

#include <cstddef>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "base/clock.h"
#include "ipcrpc/body_writer.h"

namespace asio {
class io_context;
}  // namespace asio

namespace ipcrpc::internal {

// Who is at the other end, as the kernel tells it (SO_PEERCRED, the pid of a
// spawned child, the parent of a spawned child).
struct PeerCredentials {
  pid_t pid = 0;
  uid_t uid = 0;
};

// Limits and modes a transport applies. max_message_size bounds every message
// the transport accepts or sends; nothing is allocated for a message before
// its length has been checked against it.
struct TransportOptions {
  size_t max_message_size = 64u << 20;
  unsigned mode = 0600;            // mode of created named objects
  std::vector<uid_t> allowed_uids;  // peers of other uids than ours that may connect
  // pipe: how long a closed channel waits for its child to exit before
  // killing it.
  absl::Duration child_exit_grace = absl::Seconds(5);
  // shm: bytes in each of a connection's two rings (a power of two).
  size_t shm_ring_size = 256 * 1024;
  // mq client side: the reply queue asked for (ChannelOptions).
  long mq_reply_queue_messages = 4;
  long mq_reply_message_size = 1024;
  // Server side: the server's connection limit, and how many it serves now
  // (the server keeps the count). A listener whose handshakes take time
  // (shm:) counts its half-open ones against the limit too, so that peers
  // that connect and never say HELLO cannot hold more descriptors than the
  // limit allows. 0: no limit.
  int max_connections = 0;
  std::shared_ptr<const std::atomic<int>> open_connections;
  // Server side: true once the server has started (its services no longer
  // change), for a listener that answers calls off the server's loop.
  std::shared_ptr<const std::atomic<bool>> server_running;
  // Where such a listener counts what it refused (the server's
  // connections_refused).
  std::shared_ptr<std::atomic<int64_t>> refused_connections;

  // Whether a peer of `uid` may connect: our own uid, or one listed.
  bool AllowsUid(uid_t uid) const;

  // Client side: whose servers we talk to. Empty: our euid and root.
  std::vector<uid_t> allowed_server_uids;
  // Client side: how long a Connect may wait for the server's handshake.
  absl::Duration connect_timeout = absl::Seconds(5);
  // OK if a server of `uid` may be talked to; otherwise PERMISSION_DENIED
  // naming `endpoint`, the uid and how it was found (`how`). Connectors call
  // it before they send the server anything.
  absl::Status CheckServerUid(std::string_view endpoint, uid_t uid, std::string_view how) const;

  // Client side: when a handshake started now must end: connect_timeout from
  // now, or the call's deadline (monotonic ns) if earlier; `bound` says
  // which, for the message of a handshake that ran out of time.
  struct ConnectDeadline {
    int64_t ns;
    std::string bound;  // "within ChannelOptions::connect_timeout (5s)" / "before the call's deadline"
  };
  ConnectDeadline ConnectDeadlineFor(int64_t call_deadline_ns) const;

  // grpc: (grpc/grpc_transport.h), both sides: TLS and plaintext.
  std::string grpc_certificate_chain_file;
  std::string grpc_private_key_file;
  std::string grpc_root_certificates_file;
  bool grpc_require_client_certificate = false;
  bool grpc_use_tls = false;
  bool grpc_allow_plaintext_off_host = false;
  // grpc: server side: calls at once on one HTTP/2 connection (0: gRPC's).
  int grpc_max_concurrent_streams = 0;
  // grpc: server side: whether `method` ("package.Service/Method") streams,
  // or nullopt if the server has no such method. gRPC's wire does not say
  // how a call is to be framed; the server's methods do.
  std::function<std::optional<bool>(std::string_view method)> grpc_method_streams;
  // grpc: server side: the unary methods the server has now (a listener
  // registers them with gRPC as unary methods; others it serves as
  // streams, and learns which they are from grpc_method_streams).
  std::function<std::vector<std::string>()> grpc_unary_methods;
};

// A parsed endpoint "scheme:address".
struct Endpoint {
  std::string scheme;
  std::string address;
  std::string text;  // the whole endpoint as given, for messages
};

// Splits and validates an endpoint's syntax. INVALID_ARGUMENT naming the
// endpoint and what is wrong; UNIMPLEMENTED for a scheme reserved for a
// transport that is not built yet.
absl::StatusOr<Endpoint> ParseEndpoint(std::string_view endpoint);

// A failure that provably delivered nothing (a send that failed before its
// first byte went out; a call the server refused without starting it): the
// same message may go again on another connection. A status payload marks
// it; the marks are internal and removed before a status reaches the user.
absl::Status MarkNotDelivered(absl::Status status);
bool IsNotDelivered(const absl::Status& status);
absl::Status WithoutDeliveryMark(absl::Status status);

// The size of the message `parts` make up (and `body_size` bytes after
// them: SendBodyWithin's body), or RESOURCE_EXHAUSTED naming
// `description` if it is over `max_message_size`: what every Send checks
// before anything goes out.
absl::StatusOr<size_t> SendSize(absl::Span<const std::string_view> parts,
                                size_t max_message_size, std::string_view description,
                                size_t body_size = 0);

// One connection: a stream of whole messages in each direction.
//
// Thread-safety: Send and Close may be called from any thread, concurrently.
// Start is called once. The callbacks run on the io_context's thread, with
// two exceptions the RPC layer is written for: a caller's direct read
// (ReadUntil) delivers on the caller's thread, and grpc: delivers a unary
// call's one REQUEST (server) or RESPONSE (client) on gRPC's own thread,
// concurrently with the loop and with other such deliveries (the frames
// whose order against the connection's others does not matter).
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  // `message` is valid only during the call.
  using MessageHandler = absl::AnyInvocable<void(std::string_view message)>;
  using CloseHandler = absl::AnyInvocable<void(absl::Status reason) &&>;

  virtual ~Connection() = default;

  // Begins reading on `io`. `on_message` runs for every whole message, in
  // order; `on_closed` runs exactly once when the connection ends (peer gone:
  // UNAVAILABLE; garbage from the peer: DATA_LOSS or RESOURCE_EXHAUSTED;
  // Close(): CANCELLED), after which neither callback runs again.
  virtual void Start(asio::io_context& io, MessageHandler on_message,
                     CloseHandler on_closed) = 0;

  // Sends one message: the concatenation of `parts`, whole; concurrent sends
  // are never interleaved. `priority` (0..31, higher first) orders messages
  // where the transport can (mq:); others ignore it. Blocks until written.
  // UNAVAILABLE if the peer is gone or the connection closed (marked
  // MarkNotDelivered if nothing of the message went out),
  // RESOURCE_EXHAUSTED if the message is over max_message_size.
  absl::Status Send(absl::Span<const std::string_view> parts, int priority) {
    return SendWithin(parts, priority, kNoDeadline);
  }

  // Send, but waiting for room (a peer that does not read: stopped, stuck)
  // no later than `deadline_ns` (base/clock.h; kNoDeadline: as Send): past
  // it, DEADLINE_EXCEEDED, marked MarkNotDelivered if nothing of the message
  // went out; also when another send held the connection past the deadline
  // (a send waits for its turn no later than its own deadline:
  // transports/send_turn.h). A connection left in the middle of a message
  // cannot carry another: the caller must Close it (the channel closes a
  // connection after any failed send that may have delivered part of one,
  // once it has taken the call out, so that the call ends with its own
  // status and not the connection's loss; one that delivered nothing by its
  // deadline leaves the connection as it is). For a call's request, bounded
  // by the call's deadline. A transport whose sends never wait for the peer
  // (grpc:) ignores the deadline.
  virtual absl::Status SendWithin(absl::Span<const std::string_view> parts, int priority,
                                  int64_t deadline_ns) = 0;

  // SendWithin of `parts` then `body` (ipcrpc/body_writer.h), serialized
  // where the transport says. The default serializes it into this thread's
  // kept buffer and sends that; shm: writes a large one straight into its
  // ring. A body that writes other than its size() bytes (its message
  // changed meanwhile; shm: sees it): INTERNAL, and the connection carries
  // nothing more (what went out is not what its length says): the caller
  // must Close it, as after any failed send that may have delivered part
  // of a message.
  virtual absl::Status SendBodyWithin(absl::Span<const std::string_view> parts,
                                      const BodyWriter& body, int priority, int64_t deadline_ns);

  // Whether Send to a peer that has left fails, with nothing sent, rather
  // than queueing the message where nobody reads (a pipe, FIFO or stream
  // socket whose reader closed: EPIPE). If so, a client need not look for
  // the peer's EOF before it sends.
  virtual bool SendSeesPeerLeave() const { return false; }

  // Sends one message as Send does, if that needs no waiting: true when
  // done (sent, or failed: *error says why), false when it would have to
  // wait for room, and nothing was sent (then Send it from a thread that
  // may wait). For a thread that must never block on a peer (a server's
  // loop). The default never sends.
  virtual bool TrySend(absl::Span<const std::string_view> /*parts*/, int /*priority*/,
                       absl::Status* /*error*/) {
    return false;
  }

  // Ends the connection: blocked senders return, the peer sees it closed,
  // on_closed runs (on the loop) if Start was called. Idempotent.
  virtual void Close() = 0;

  virtual const PeerCredentials& peer() const = 0;

  // Inside on_message, on its thread: keeps the message being delivered
  // where it lies, valid for as long as the returned owner lives (on any
  // thread), instead of the handler copying it; the transport reads on into
  // another buffer. Null when it will not (the handler copies): a transport
  // without the means, a message too small to be worth it, or no spare
  // buffer (a connection holds at most two). For a large request handed to
  // a handler thread (rpc/server.cc).
  virtual std::shared_ptr<const void> KeepDeliveredMessage() { return nullptr; }

  // ---- Direct reads (optional; transports/read_role.h tells the design).
  // The owner may let the loop stop reading while nothing is expected:
  // `keep_loop_reading` (asked on any thread, under a transport lock; it
  // must not call into the connection) returns false when nothing is. Call
  // before Start. Without it the loop reads for good.
  virtual void SetLoopReadPolicy(absl::AnyInvocable<bool()> /*keep_loop_reading*/) {}

  enum class ReadResult {
    kDone,         // done() became true
    kTimeout,      // deadline_ns passed first
    kBusy,         // another thread reads this connection: wait to be handed the message
    kClosed,       // the connection ended; on_closed runs (on the loop)
    kUnsupported,  // this transport has no direct reads: the loop reads everything
  };
  // On the calling thread: reads and delivers messages (through on_message,
  // as the loop would) until `done()` or `deadline_ns` (monotonic), if
  // nobody else reads this connection. Afterwards the loop reads again if
  // the policy says something is still expected. With a deadline in the
  // past it delivers what is already there and returns (a cheap check,
  // before a send, for a GOAWAY or EOF that came while nobody read).
  virtual ReadResult ReadUntil(int64_t /*deadline_ns*/, absl::FunctionRef<bool()> /*done*/) {
    return ReadResult::kUnsupported;
  }

  // Something is expected (an async call was sent): make sure the loop
  // reads if nobody does.
  virtual void EnsureReader() {}

  // Wakes a thread inside ReadUntil so that it asks done() again (its call
  // was completed by another thread: cancelled).
  virtual void WakeReader() {}

  // ---- A sync caller's call on its own thread (optional).
  // Whether this transport answers a call on threads of its own (grpc:), so
  // that a sync caller would be woken by a hand-off from one, and offers
  // CallHere instead. Then the RPC layer sends a sync unary call's REQUEST
  // only through CallHere.
  virtual bool CallsHere() const { return false; }
  // A sync unary call's whole exchange on the calling thread: sends
  // `request` (a REQUEST frame) and delivers the RESPONSE through
  // on_message on this thread before it returns OK; unless done() is true
  // already (the call ended, cancelled), then nothing is sent. A CANCEL for
  // it sent from another thread meanwhile cancels it. Bounded by the
  // request's deadline. An error if the call was not made (the caller takes
  // it out and ends it with that): marked MarkNotDelivered if nothing went
  // out because the connection is closing. (gRPC's own sync stubs make a
  // call on the caller's thread the same way.)
  virtual absl::Status CallHere(std::string_view /*request*/,
                                absl::FunctionRef<bool()> /*done*/) {
    return absl::UnimplementedError("CallHere");
  }

  // For logs: "unix:/run/x.sock peer pid 123".
  virtual const std::string& description() const = 0;
};

// Server side of a transport.
class Listener {
 public:
  using AcceptHandler = absl::AnyInvocable<void(std::shared_ptr<Connection>)>;

  virtual ~Listener() = default;

  // Begins accepting on `io`; `on_accept` runs on the loop for each new
  // connection (not yet started).
  virtual absl::Status Start(asio::io_context& io, AcceptHandler on_accept) = 0;

  // Stops accepting and removes the named objects this listener created (and
  // only those). Idempotent; safe from any thread.
  virtual void Close() = 0;

  // True when the server exists to serve this listener's single connection
  // (`pipe:`): when that connection ends, the server shuts down.
  virtual bool EndsServerWithConnection() const { return false; }

  virtual const std::string& endpoint() const = 0;
};

// Client side of a transport.
class Connector {
 public:
  virtual ~Connector() = default;

  // Opens a new connection (not yet started). UNAVAILABLE if nobody listens,
  // or if the server does not answer the handshake within
  // TransportOptions::connect_timeout or before `deadline_ns` (monotonic;
  // a call's deadline), whichever comes first.
  virtual absl::StatusOr<std::shared_ptr<Connection>> Connect(asio::io_context& io,
                                                              int64_t deadline_ns) = 0;

  // Stops anything the connector watches on the loop it was given. Called
  // before the loop stops; idempotent.
  virtual void Shutdown() {}

  virtual const std::string& endpoint() const = 0;
};

// The registry: by scheme.
using ListenerFactory = std::function<absl::StatusOr<std::unique_ptr<Listener>>(
    const Endpoint& endpoint, const TransportOptions& options)>;
using ConnectorFactory = std::function<absl::StatusOr<std::unique_ptr<Connector>>(
    const Endpoint& endpoint, const TransportOptions& options)>;

// Adds a transport for endpoints "scheme:..." to this process's registry:
// the seam through which a test puts a transport of its own (one that fails
// on cue, or wraps inproc:) under a Server and a Channel. INVALID_ARGUMENT
// for a scheme that is not lower-case letters, ALREADY_EXISTS for a scheme
// taken (the built-in ones included). Thread-safe.
absl::Status RegisterTransport(std::string_view scheme, ListenerFactory listen,
                               ConnectorFactory connect);
// Removes a scheme RegisterTransport added (built-in ones stay). Endpoints
// already created keep working.
void UnregisterTransport(std::string_view scheme);

absl::StatusOr<std::unique_ptr<Listener>> CreateListener(std::string_view endpoint,
                                                         const TransportOptions& options);
absl::StatusOr<std::unique_ptr<Connector>> CreateConnector(std::string_view endpoint,
                                                           const TransportOptions& options);

// `pipe:` parent side: spawns argv[0] (searched in PATH) with a pair of pipes
// named in IPCRPC_PIPE_FDS; the connector yields one connection to it.
absl::StatusOr<std::unique_ptr<Connector>> SpawnChildConnector(
    const std::vector<std::string>& argv, const TransportOptions& options);

}  // namespace ipcrpc::internal

#endif  // IPCRPC_TRANSPORTS_TRANSPORT_H_
