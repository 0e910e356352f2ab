// The client side: a Channel to one endpoint, on which calls are made.
//
//   auto channel = ipcrpc::Channel::Connect("unix:/run/user/1000/calc.sock");
//   if (!channel.ok()) return channel.status();
//   ipcrpc::CallOptions options;
//   options.timeout = absl::Milliseconds(100);
//   absl::StatusOr<std::string> reply =
//       (*channel)->CallMethod("calc.Calculator/Add", request_bytes, options);
//
// Generated stubs sit on the generic untyped calls below (method name plus
// serialized bytes); applications normally use the stubs.
#ifndef IPCRPC_CHANNEL_H_
#define IPCRPC_CHANNEL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "ipcrpc/options.h"

namespace ipcrpc {
namespace internal {
class BodyWriter;
}  // namespace internal

class Call;
class GenericClientStream;

// A connection to one server endpoint, with a response thread that resolves
// pending calls and enforces async deadlines. Thread-safe: any number of
// threads may call on one channel at once.
//
// Every call completes exactly once: with the response, the handler's status,
// or DEADLINE_EXCEEDED (the deadline passed, whatever the server does),
// CANCELLED, UNAVAILABLE (no server, or the connection was lost: promptly),
// UNIMPLEMENTED, RESOURCE_EXHAUSTED or INVALID_ARGUMENT. When the connection
// is lost, every pending call fails UNAVAILABLE at once and the next call
// connects again.
class Channel {
 public:
  // Connects to `endpoint` now. INVALID_ARGUMENT for a malformed endpoint,
  // UNAVAILABLE if no server is listening there.
  static absl::StatusOr<std::shared_ptr<Channel>> Connect(std::string_view endpoint,
                                                          const ChannelOptions& options = {});

  // Ends every pending call (async callbacks run, with CANCELLED, before the
  // destructor returns) and closes the connection.
  ~Channel();
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;

  // A blocking call of `method` ("package.Service/Method") with serialized
  // `request`; returns the serialized response.
  absl::StatusOr<std::string> CallMethod(std::string_view method, std::string_view request,
                                         const CallOptions& options = {});

  // As CallMethod, with the response written into `*response` (replacing its
  // contents; left alone unless the call succeeds). Its capacity is reused:
  // a warm call over shm: whose response fits it allocates nothing at all.
  absl::Status CallMethodInto(std::string_view method, std::string_view request,
                              std::string* response, const CallOptions& options = {});

  // As CallMethodInto, with the successful response handed to
  // `on_response` as a view, valid only during that call: a stub parses it
  // from there. `on_response` runs at most once, on this thread, before
  // this returns, and only if the call succeeds. When this thread reads its
  // own response (the usual case for a sync call) the view is of the
  // transport's own copy, one copy of the response fewer than
  // CallMethodInto; when another thread read it (another caller on the same
  // connection, the response thread), of a copy, as CallMethod's. It runs
  // inside this thread's read of the connection: it must not block or call
  // into the channel; an exception it throws ends the call INTERNAL.
  absl::Status CallMethodView(std::string_view method, std::string_view request,
                              absl::FunctionRef<void(std::string_view)> on_response,
                              const CallOptions& options = {});

  // As CallMethodView, with a request that serializes itself where the
  // transport says (a generated stub's message: ipcrpc/message_body.h): a
  // large one straight into an shm: ring, without a copy of its own first;
  // a small one, or on other transports, into this thread's kept buffer,
  // then sent as bytes. The message must not change until this returns:
  // on shm: one that comes out another size than it said ends the call
  // INTERNAL and closes the connection it was partly written to.
  absl::Status CallMethodView(std::string_view method, const internal::BodyWriter& request,
                              absl::FunctionRef<void(std::string_view)> on_response,
                              const CallOptions& options = {});

  // An async call: `done` runs once, on the channel's response thread, never
  // inside this function and never after the channel is destroyed.
  Call CallMethodAsync(std::string_view method, std::string_view request,
                       const CallOptions& options,
                       absl::AnyInvocable<void(absl::StatusOr<std::string>) &&> done);

  // An async call that ends before it starts, with `status` (not OK: an OK
  // one becomes INTERNAL), for a stub whose request cannot be sent (over
  // the 2 GiB protobuf serializes): `done` runs as CallMethodAsync's does,
  // once, on the response thread, never inside this function. Nothing is
  // sent and no connection is made.
  Call FailCallAsync(absl::Status status,
                     absl::AnyInvocable<void(absl::StatusOr<std::string>) &&> done);

  // Starts a client-streaming or bidirectional stream on `method`
  // ("package.Service/Method"); for server streaming use OpenServerStream,
  // which sends the one request. Never fails here: a stream that cannot
  // start reads nothing, and its Finish says why.
  GenericClientStream OpenStream(std::string_view method, const CallOptions& options = {});
  // A server-streaming call: `request` goes with the call, and the client
  // half-closes at once.
  GenericClientStream OpenServerStream(std::string_view method, std::string_view request,
                                       const CallOptions& options = {});
  // A server-streaming call, async: `on_message` runs on the channel's
  // response thread once per message, in order, never after `done`; `done`
  // runs once, last, with the call's final status, never inside this
  // function. Consumption (and so the server's window) follows
  // `on_message`: a slow callback slows the server's writer.
  Call CallServerStreamAsync(std::string_view method, std::string_view request,
                             const CallOptions& options,
                             absl::AnyInvocable<void(std::string_view message)> on_message,
                             absl::AnyInvocable<void(absl::Status) &&> done);

  struct Stats {
    uint64_t calls_started = 0;
    uint64_t late_responses_dropped = 0;  // responses that came after their call ended
    uint64_t connects = 0;                // connections made, the first included
    // CANCELs of expired calls not sent because the transport had no room
    // at once (the server ends such calls at their deadline itself).
    uint64_t expiry_cancels_not_sent = 0;
  };
  Stats stats() const;

  const std::string& endpoint() const;

  // The runtime's side of a channel (rpc/channel_core.h). Opaque: declared
  // here only so that the handles below can hold it.
  class Core;

 private:
  explicit Channel(std::shared_ptr<Core> core);

  std::shared_ptr<Core> core_;
};

// Handle of an async call; cheap to copy or drop. Dropping it does not
// cancel the call.
class Call {
 public:
  Call() = default;

  // The callback then runs with CANCELLED, unless it already ran (or is
  // running). The server is told (best effort) and its handler sees
  // IsCancelled(). Safe from any thread, any number of times.
  void Cancel();

  // The runtime's state of one outgoing call (rpc/channel_core.h). Opaque,
  // as Channel::Core.
  class State;

 private:
  friend class Channel::Core;
  Call(std::weak_ptr<Channel::Core> core, std::weak_ptr<State> call)
      : core_(std::move(core)), call_(std::move(call)) {}

  std::weak_ptr<Channel::Core> core_;
  std::weak_ptr<State> call_;
};

// The client end of a stream, untyped (Channel::OpenStream); the typed
// streams of ipcrpc/stream.h sit on it. Move-only. Destroying it before
// Finish returned cancels the call. Thread-safety: one thread writes (Write,
// WritesDone, Finish) while another may Read; Cancel from any thread.
// (Finish from a second thread while a Write waits for the window waits for
// that Write to return.)
class GenericClientStream {
 public:
  GenericClientStream() = default;
  GenericClientStream(GenericClientStream&& other) noexcept = default;
  GenericClientStream& operator=(GenericClientStream&& other) noexcept;
  ~GenericClientStream();

  // Sends one message; blocks while the server's window is used up. False
  // once the call has ended (then call Finish) or after WritesDone.
  bool Write(std::string_view message);
  // Tells the server no more messages come. False if the call has ended.
  bool WritesDone();
  // The next message, in order; blocks. False once the stream has ended
  // (the server finished it, or it was cancelled, or its deadline passed):
  // then call Finish.
  bool Read(std::string* message);
  // Implies WritesDone, drops messages not read, and waits for the call's
  // final status (at most until the deadline).
  absl::Status Finish();
  // Ends the call CANCELLED (unless it has ended already); the server's
  // handler sees IsCancelled(). Safe from any thread.
  void Cancel();

 private:
  friend class Channel::Core;
  GenericClientStream(std::shared_ptr<Channel::Core> core, std::shared_ptr<Call::State> call)
      : core_(std::move(core)), call_(std::move(call)) {}

  std::shared_ptr<Channel::Core> core_;
  std::shared_ptr<Call::State> call_;
  bool finished_ = false;
};

// pipe: starts argv[0] (searched in PATH) as a child process connected by two
// pipes and returns a channel to the server it runs (`Listen("pipe:")`).
// The child's death fails pending calls UNAVAILABLE, and the child is reaped
// (no zombie). Destroying the channel closes the pipes, which ends the
// child's server; a child still running after ChannelOptions::
// child_exit_grace is killed.
absl::StatusOr<std::shared_ptr<Channel>> SpawnChild(const std::vector<std::string>& argv,
                                                    const ChannelOptions& options = {});

}  // namespace ipcrpc

#endif  // IPCRPC_CHANNEL_H_
