// Options of channels, servers and calls.
//
//   ipcrpc::CallOptions options;
//   options.timeout = absl::Milliseconds(50);
//   absl::StatusOr<std::string> reply = channel->CallMethod("echo.Echo/Echo", "hi", options);
#ifndef IPCRPC_OPTIONS_H_
#define IPCRPC_OPTIONS_H_

#include <sys/types.h>

#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "ipcrpc/server_context.h"

namespace ipcrpc {

// grpc: endpoints (docs/GRPC.md). Plaintext is allowed on loopback
// addresses (127.0.0.0/8, ::1, localhost) and on grpc:unix:; any other
// address needs TLS, or allow_plaintext_off_host.
struct GrpcOptions {
  // PEM files. A server serves TLS when certificate_chain_file and
  // private_key_file are set; with require_client_certificate it also
  // demands a client certificate signed by root_certificates_file (mutual
  // TLS). A client uses TLS when use_tls is set or root_certificates_file is
  // (the CAs it trusts; empty: the system's), and presents
  // certificate_chain_file/private_key_file if set.
  std::string certificate_chain_file;
  std::string private_key_file;
  std::string root_certificates_file;
  bool require_client_certificate = false;
  bool use_tls = false;
  // Plaintext on an address other than loopback: anyone on the network can
  // read and forge the calls. Off: such an endpoint fails INVALID_ARGUMENT.
  bool allow_plaintext_off_host = false;
};

// Limits and settings of a client channel.
struct ChannelOptions {
  // Largest request or response payload; a larger request fails
  // RESOURCE_EXHAUSTED, a larger response from the server closes the
  // connection. Nothing a peer sends makes the channel allocate more.
  size_t max_message_size = 64u << 20;
  // Mode of named objects the client creates (reply queues, private FIFOs).
  unsigned mode = 0600;
  // pipe: when the channel is destroyed, how long to wait for the child to
  // exit after its pipes close before killing it.
  absl::Duration child_exit_grace = absl::Seconds(5);
  // shm: bytes in each of the connection's two rings (a power of two,
  // 4 KiB..64 MiB). Larger messages are streamed through the ring.
  size_t shm_ring_size = 256 * 1024;
  // mq: the reply queue this client creates: up to this many messages of
  // this many bytes (each capped by /proc/sys/fs/mqueue/msg_max and
  // msgsize_max, 10 and 8 KiB by default; a size below 512 is raised). A
  // response larger than a message goes in pieces, so larger messages make
  // large responses faster (a 64 KiB one is 65 pieces through the default
  // queue, 9 through 8 × 8 KiB). The kernel counts messages × size, and
  // about 100 bytes a message, against the user's RLIMIT_MSGQUEUE (800 KiB
  // by default) beside its servers' queues: the default (4 × 1 KiB, about
  // 4.5 KiB) lets a hundred clients of one user connect; 8 × 8 KiB (about
  // 66 KiB) a handful. Past the limit, the default and then a queue of one
  // 1 KiB message are tried before the connect fails.
  int mq_reply_queue_messages = 4;
  size_t mq_reply_message_size = 1024;
  // Whose servers this channel talks to. Empty: this process's effective uid
  // and root. The server's uid is checked before anything is sent to it
  // (SO_PEERCRED on unix: and shm:, the owner of the FIFO or queue on fifo:
  // and mq:); any other is PERMISSION_DENIED naming the endpoint and the uid.
  // (pipe: talks to the child it spawned.)
  std::vector<uid_t> allowed_server_uids;
  // Bounds Channel::Connect, and each later connect (a reconnect after the
  // server left): a server that is alive but does not answer the handshake
  // (stopped, stuck) makes it fail UNAVAILABLE after this long. A connect
  // inside a call also ends at the call's deadline (the call then fails
  // DEADLINE_EXCEEDED), and other calls on the channel wait for someone
  // else's connect only until their own deadlines.
  absl::Duration connect_timeout = absl::Seconds(5);
  // Streams: bytes of messages (each counted as its size plus 64) a server
  // may send on one stream that this client has not consumed yet (read, or
  // passed to on_message). At least 64 KiB; smaller values are raised.
  size_t stream_window = 1u << 20;
  // grpc: endpoints: TLS and plaintext.
  GrpcOptions grpc;
};

// Limits and settings of a server.
struct ServerOptions {
  // Threads that run handlers. 0: the number of CPUs, at least 2.
  int handler_threads = 0;
  // A handler that has returned within this time the last 8 times it ran, and
  // never made an outgoing call, runs on the thread that read its request
  // (when no call is queued for the handler threads): no hand-off, one
  // wake-up less per call. While it runs, that thread reads nothing else, so
  // keep it well below the latency you promise. Zero: every handler runs on
  // the handler threads.
  absl::Duration inline_handler_limit = absl::Microseconds(20);
  // Largest request or response payload (see ChannelOptions).
  size_t max_message_size = 64u << 20;
  // Connections served at once; more are refused with a logged reason.
  int max_connections = 1024;
  // Calls in flight on one connection, and on the whole server; past either,
  // a call fails at once with RESOURCE_EXHAUSTED naming the limit.
  int max_calls_per_connection = 1024;
  int max_calls_in_flight = 16384;
  // Bytes held by the requests of the calls in flight on the whole server,
  // running or queued: payload, method name and metadata as decoded (each
  // metadata entry counts 64 bytes besides its key and value, and each call
  // 512, so that many small entries cannot hold more memory than their
  // wire size suggests). Past it a call fails at once with
  // RESOURCE_EXHAUSTED naming the limit. (A call also carries at most
  // 256 metadata entries.)
  size_t max_bytes_in_flight = 256u << 20;
  // Mode of the named objects the server creates (socket files, FIFOs, queues).
  unsigned mode = 0600;
  // Peers of a uid other than the server's are refused unless listed here.
  std::vector<uid_t> allowed_uids;
  // Built-in services (docs/PROTOCOL.md): ipcrpc.Introspection (who the
  // server is, its counters, connections and calls in flight: `ipcrpc stats`)
  // and ipcrpc.Reflection (the .proto files of its services: `ipcrpc call`).
  bool introspection = true;
  bool reflection = true;
  // Streams: bytes of messages (each counted as its size plus 64) a client
  // may send on one stream that the handler has not read yet. At least
  // 64 KiB; smaller values are raised.
  size_t stream_window = 1u << 20;
  // Streams open at once on the whole server (each has a handler thread of
  // its own while it lasts); past it a stream fails at once with
  // RESOURCE_EXHAUSTED naming the limit.
  int max_open_streams = 1024;
  // Record the server in the registry under the runtime directory while it
  // runs (`ipcrpc ls`, `ipcrpc gc`).
  bool registry = true;
  // A client that takes nothing the server sends it (a response, a stream
  // message) for this long, while a send to it waits for room, loses its
  // connection, with a logged reason: a client that never reads cannot hold
  // handler threads. A single answer must be taken within it. Infinite: no
  // bound.
  absl::Duration send_timeout = absl::Seconds(10);
  // grpc: endpoints: TLS and plaintext.
  GrpcOptions grpc;
};

// Options of one call.
struct CallOptions {
  absl::Duration timeout = absl::InfiniteDuration();  // relative ...
  absl::Time deadline = absl::InfiniteFuture();       // ... or absolute: the earlier wins
  int priority = 0;                                   // 0..31, higher served first where the transport can
  std::vector<std::pair<std::string, std::string>> metadata;
  // If set, filled with the metadata the server attached to its answer
  // (ServerContext::AddResponseMetadata), whatever the call's outcome (empty
  // if no answer came): before a sync call returns, before an async call's
  // callback runs, by a stream's Finish. Must outlive the call.
  std::vector<std::pair<std::string, std::string>>* response_metadata = nullptr;

  // Inside a handler: options for a nested call that inherit the caller's
  // deadline (less `shave`) and are cancelled when the incoming call is.
  static CallOptions From(const ServerContext& parent,
                          absl::Duration shave = absl::ZeroDuration());

  // Set by From(): the incoming call whose cancellation cancels this one.
  // Opaque; a public member so that CallOptions stays an aggregate
  // (designated initializers: `{.timeout = absl::Milliseconds(50)}`).
  std::shared_ptr<ServerContext::State> parent_call;
};

}  // namespace ipcrpc

#endif  // IPCRPC_OPTIONS_H_
