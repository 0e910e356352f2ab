// grpc: server side: a Listener that runs a gRPC server with one generic
// service, and per gRPC peer a Connection that turns each gRPC call into
// the RPC layer's frames and its answers back (see grpc_transport.h).
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "asio/io_context.hpp"
#include "asio/post.hpp"
#include "asio/steady_timer.hpp"
#include "base/copy.h"
#include "base/logging.h"
#include "base/syscall.h"
#include "base/status_macros.h"
#include "base/strings.h"
#include "grpc/grpc_common.h"
#include "grpc/grpc_transport.h"
#include "transports/descriptor_watch.h"
#include "transports/named_object.h"
#include "transports/unix/unix_transport.h"
#include "grpcpp/generic/async_generic_service.h"
#include "grpcpp/impl/codegen/server_callback_handlers.h"
#include "grpcpp/impl/rpc_service_method.h"
#include "grpcpp/impl/service_type.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "grpcpp/server_posix.h"
#include "wire/status_details.h"

namespace ipcrpc::internal {
namespace {

// What a gRPC caller may send on a stream before the server's handler
// grants more: as an ipcrpc client starts (docs/PROTOCOL.md, "Streams").
constexpr int64_t kAnnouncedWindow = 1 << 20;

// A gRPC peer's connection outlives its last call by this much, so that a
// caller making one call after another does not open (and close) a server
// connection per call: measured, that cost ~20 us a call.
constexpr auto kIdlePeerLinger = std::chrono::seconds(5);

class BridgedCall;
class PeerConnection;

// What the listener, its connections and its calls share. Outlives every
// call: the listener shuts the gRPC server down (which waits for them)
// before it goes.
struct ListenerState {
  TransportOptions options;
  std::string endpoint;
  size_t max_payload = 0;

  std::mutex mu;
  asio::io_context* io = nullptr;                  // guarded by mu; set by Start
  Listener::AcceptHandler on_accept;               // guarded by mu
  std::vector<std::shared_ptr<BridgedCall>> waiting;  // guarded by mu: calls before Start
  bool closing = false;                            // guarded by mu
  // One connection per gRPC peer with calls in flight, or idle for less
  // than kIdlePeerLinger.
  absl::flat_hash_map<std::string, std::shared_ptr<PeerConnection>> peers;  // guarded by mu
  // grpc:unix: connections the listener accepted itself and handed to gRPC
  // (their calls' peer is "fd:N"): who is at the other end (SO_PEERCRED).
  absl::flat_hash_map<std::string, PeerCredentials> fd_peers;  // guarded by mu
  // Requests being handed to the server on gRPC's threads (DeliverHere):
  // the listener, and the server with it, goes only once there are none.
  std::mutex delivering_mu;
  std::condition_variable delivered;
  int delivering = 0;  // guarded by delivering_mu
};

class PeerConnection final : public GrpcBridgeConnection {
 public:
  PeerConnection(std::shared_ptr<ListenerState> state, std::string peer,
                 std::optional<PeerCredentials> credentials)
      : GrpcBridgeConnection(
            absl::StrCat(state->endpoint, " gRPC peer ",
                         credentials.has_value() ? absl::StrCat("pid ", credentials->pid) : peer),
            credentials),
        state_(std::move(state)),
        peer_name_(std::move(peer)) {}

  // Never waits for the peer (gRPC queues): the deadline is not needed.
  absl::Status SendWithin(absl::Span<const std::string_view> parts, int priority,
                          int64_t deadline_ns) override;
  void Close() override;

  // Hands a frame to the server, on its loop (the listener's: Start, which
  // runs there first, is posted before anything is delivered).
  void Deliver(std::string frame) { PostFrame(LoopOrNull(), std::move(frame)); }
  // On the loop only: at once.
  void DeliverNow(std::string_view frame) { DeliverOnLoop(frame); }
  // A unary call's REQUEST, on gRPC's thread: handled here if the server
  // has started this connection, else posted (after its on_accept). False
  // if it went nowhere (no loop: the listener never started).
  bool DeliverHereOrPost(std::string frame) {
    {
      std::lock_guard<std::mutex> lock(state_->delivering_mu);
      ++state_->delivering;
    }
    const bool here = DeliverHere(frame);
    {
      std::lock_guard<std::mutex> lock(state_->delivering_mu);
      if (--state_->delivering == 0) state_->delivered.notify_all();
    }
    if (here) return true;
    asio::io_context* io = LoopOrNull();
    if (io == nullptr) return false;
    PostFrame(io, std::move(frame));
    return true;
  }

  // Under state_->mu.
  uint64_t AddCall(std::shared_ptr<BridgedCall> call) {
    const uint64_t id = next_id_++;
    calls_[id] = std::move(call);
    return id;
  }
  bool closed() const { return closed_; }  // under state_->mu
  // The call ended (its OnDone). The connection ends kIdlePeerLinger after
  // its last call, unless another comes.
  void RemoveCall(uint64_t id);
  // On the loop: the linger timer expired. Closes the connection if it
  // has been idle for kIdlePeerLinger, else waits again for what is left.
  void OnLinger(const std::shared_ptr<asio::steady_timer>& timer);
  // Under state_->mu: if no call is in flight, closes (the caller removes
  // it from the peers) and returns true.
  bool EvictIfIdleLocked();

  const std::string& peer_name() const { return peer_name_; }

 private:
  asio::io_context* LoopOrNull() {
    std::lock_guard<std::mutex> lock(state_->mu);
    return state_->io;
  }
  std::shared_ptr<BridgedCall> Find(uint64_t id) {
    std::lock_guard<std::mutex> lock(state_->mu);
    auto it = calls_.find(id);
    return it == calls_.end() ? nullptr : it->second;
  }

  const std::shared_ptr<ListenerState> state_;
  const std::string peer_name_;
  // Guarded by state_->mu.
  absl::flat_hash_map<uint64_t, std::shared_ptr<BridgedCall>> calls_;
  uint64_t next_id_ = 1;
  bool closed_ = false;
  std::chrono::steady_clock::time_point idle_since_;  // when calls_ last became empty
  // Armed when the connection first goes idle, and kept armed (one wait at
  // a time, not one per call) until it closes; waited on and cancelled on
  // the loop only (asio timers are not safe across threads).
  std::shared_ptr<asio::steady_timer> linger_;
};

// A gRPC call handed to the server: what its connection knows of it.
// Owned by itself (self_) until gRPC's OnDone, and by its connection's
// table while it is in it: a frame for it that races with its end finds it
// alive, and finished (every method is then a no-op).
class BridgedCall : public std::enable_shared_from_this<BridgedCall> {
 public:
  virtual ~BridgedCall() = default;

  // On the loop: a call that came before the listener started begins.
  virtual void Begin() = 0;
  // Frames from the server for this call.
  virtual void OnResponse(const FrameView& frame) = 0;
  virtual void QueueWrite(std::string_view /*message*/) {}  // streams only
  virtual void Grant(int64_t /*bytes*/) {}                   // streams only
  // Ends the call with `status` now (the connection closed, the listener
  // is shutting down).
  virtual void Abort(grpc::Status status) = 0;

  std::shared_ptr<BridgedCall> self_;

 protected:
  explicit BridgedCall(std::shared_ptr<ListenerState> state) : state_(std::move(state)) {}

  enum class Joined {
    kRefused,  // not admitted: *refusal says why (the caller aborts the call)
    kWaiting,  // the listener has not started: its Start posts Begin
    kJoined,   // in its connection, whose on_accept is posted to *io
  };
  // On the thread gRPC made the call on: joins the connection of the
  // call's `peer`, making one within the server's connection limit (an idle
  // peer's lingering connection makes room).
  Joined Join(const std::string& peer, asio::io_context** io, grpc::Status* refusal);
  // The RESPONSE's status, and the metadata gRPC can carry (`trailing`).
  grpc::Status ToGrpcStatus(const FrameView& frame, std::string_view method, Metadata* trailing);

  const std::shared_ptr<ListenerState> state_;
  // Set by Join, before the call's first frame.
  std::shared_ptr<PeerConnection> connection_;
  uint64_t id_ = 0;
};

// A call of a method the listener hands over as a bidirectional stream
// (gRPC's generic callback service): streams, unary methods the server did
// not have yet when the listener was made, and names it does not have.
class ServerCall final : public BridgedCall,
                         public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  ServerCall(std::shared_ptr<ListenerState> state, grpc::GenericCallbackServerContext* context)
      : BridgedCall(std::move(state)), context_(context) {
    method_ = context->method();
    if (!method_.empty() && method_[0] == '/') method_.erase(0, 1);
    deadline_ns_ = WireDeadline(context->deadline());
    AppendGrpcMetadata(context->client_metadata(), &metadata_);
  }

  // Joins a connection (on the thread gRPC made it on), or is answered.
  void Admit();
  // On the loop: the call starts.
  void Begin() override;

  void OnResponse(const FrameView& frame) override;
  void QueueWrite(std::string_view message) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_ || finish_.has_value()) return;
      writes_.emplace_back(message);
    }
    Pump();
  }
  void Grant(int64_t bytes) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      read_limit_ += bytes;
    }
    Pump();
  }
  void Abort(grpc::Status status) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_ || finish_.has_value()) return;
      writes_.clear();
      finish_ = std::move(status);
    }
    Pump();
  }

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override {
    int64_t cost;
    {
      std::lock_guard<std::mutex> lock(mu_);
      writing_ = false;
      cost = writing_cost_;
      if (!ok) writes_.clear();
    }
    // The server's writer may send this much more.
    if (connection_ != nullptr) connection_->Deliver(WindowFrame(id_, cost));
    Pump();
  }
  void OnCancel() override {
    {
      // The CANCEL follows the REQUEST, or neither goes (a call cancelled
      // before its REQUEST went never reaches the server).
      std::lock_guard<std::mutex> lock(mu_);
      if (delivering_) {
        // The REQUEST is being handed over on another thread: the CANCEL
        // follows once it is in (OnReadDone).
        cancel_after_delivery_ = true;
      } else if (request_sent_ && connection_ != nullptr) {
        connection_->Deliver(StreamFrame(FrameType::kCancel, id_, ""));
      }
      // In the same critical section: a REQUEST not sent by now never goes
      // (each sender looks at finish_ under this lock).
      if (!finished_ && !finish_.has_value()) {
        writes_.clear();
        finish_ = grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the gRPC client");
      }
    }
    Pump();
  }
  void OnDone() override {
    {
      // No Start* of ours may still be on its way into gRPC.
      std::unique_lock<std::mutex> lock(mu_);
      done_ = true;
      idle_.wait(lock, [&] { return starting_ == 0; });
    }
    if (connection_ != nullptr) connection_->RemoveCall(id_);
    std::shared_ptr<BridgedCall> last = std::move(self_);  // may free this: last
  }

 private:
  // Starts what may start now: a write, the finish once writes are done, a
  // read within the server's window (streams).
  void Pump();

  grpc::GenericCallbackServerContext* const context_;
  std::string method_;
  int64_t deadline_ns_;
  Metadata metadata_;
  bool streaming_ = false;  // guarded by mu_: set by Begin

  std::mutex mu_;
  std::condition_variable idle_;            // starting_ fell to 0
  int starting_ = 0;                        // guarded by mu_: Start* calls being made
  bool done_ = false;                       // guarded by mu_: OnDone ran
  bool begun_ = false;                      // guarded by mu_
  bool request_sent_ = false;               // guarded by mu_: the REQUEST went to the server
  bool delivering_ = false;                 // guarded by mu_: OnReadDone hands it over here
  bool cancel_after_delivery_ = false;      // guarded by mu_: OnCancel came meanwhile
  bool finished_ = false;                   // guarded by mu_: Finish called
  std::optional<grpc::Status> finish_;      // guarded by mu_: to call once writes are done
  std::optional<grpc::ByteBuffer> unary_response_;  // guarded by mu_
  std::deque<std::string> writes_;          // guarded by mu_
  bool writing_ = false;                    // guarded by mu_
  int64_t writing_cost_ = 0;                // guarded by mu_
  bool reading_ = false;                    // guarded by mu_
  bool read_done_ = false;                  // guarded by mu_
  int64_t delivered_ = 0;                   // guarded by mu_
  int64_t read_limit_ = kInitialStreamWindow;  // guarded by mu_
  grpc::ByteBuffer read_buffer_;
  grpc::ByteBuffer write_buffer_;
};

BridgedCall::Joined BridgedCall::Join(const std::string& peer, asio::io_context** io,
                                      grpc::Status* refusal) {
  std::lock_guard<std::mutex> lock(state_->mu);
  if (state_->closing) {
    *refusal = grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down");
    return Joined::kRefused;
  }
  auto it = state_->peers.find(peer);
  bool accepted = false;
  if (it == state_->peers.end() || it->second->closed()) {
    const TransportOptions& options = state_->options;
    bool room = options.max_connections <= 0 || options.open_connections == nullptr ||
                options.open_connections->load() < options.max_connections;
    if (!room) {
      // An idle peer's lingering connection makes room: it closes (posted
      // before this peer's on_accept, so the server counts it gone first).
      for (auto idle = state_->peers.begin(); idle != state_->peers.end(); ++idle) {
        if (idle->second->EvictIfIdleLocked()) {
          state_->peers.erase(idle);
          room = true;
          break;
        }
      }
    }
    if (!room) {
      if (options.refused_connections != nullptr) options.refused_connections->fetch_add(1);
      IPCRPC_LOG(WARNING) << state_->endpoint << ": refusing gRPC peer " << peer
                          << ": ServerOptions::max_connections (" << options.max_connections
                          << ") reached";
      *refusal = grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                              absl::StrCat("server overloaded: ServerOptions::max_connections (",
                                           options.max_connections, ") reached"));
      return Joined::kRefused;
    }
    std::optional<PeerCredentials> credentials;
    if (auto known = state_->fd_peers.find(peer); known != state_->fd_peers.end()) {
      credentials = known->second;
    }
    auto connection = std::make_shared<PeerConnection>(state_, peer, credentials);
    state_->peers[peer] = connection;
    connection_ = connection;
    accepted = true;
  } else {
    connection_ = it->second;
  }
  id_ = connection_->AddCall(shared_from_this());
  if (state_->io == nullptr) {
    // Listen has bound the port, Start has not run yet: Start posts
    // on_accept for the connection, then Begin.
    state_->waiting.push_back(shared_from_this());
    return Joined::kWaiting;
  }
  *io = state_->io;
  if (accepted) {
    // Under the lock: whatever is posted for this connection after it
    // (on any thread) comes after its on_accept.
    asio::post(**io, [state = state_, connection = connection_] {
      // Set once, by Start, before anything is posted.
      state->on_accept(connection);
    });
  }
  return Joined::kJoined;
}

void ServerCall::Admit() {
  asio::io_context* io = nullptr;
  grpc::Status refusal;
  switch (Join(context_->peer(), &io, &refusal)) {
    case Joined::kRefused:
      Abort(std::move(refusal));
      return;
    case Joined::kWaiting:
      return;
    case Joined::kJoined:
      break;
  }
  // A unary method the server has begins here, on gRPC's thread: it only
  // starts the read, and its REQUEST is posted after the on_accept above.
  // Only once the server has started: its method table changes until then
  // (Listen, which starts this listener, may come before RegisterService).
  // Streams and unknown methods begin on the loop, where their REQUEST is
  // delivered at once.
  const TransportOptions& options = state_->options;
  const bool unary = options.server_running != nullptr &&
                     options.server_running->load(std::memory_order_acquire) &&
                     !method_.empty() && method_.size() <= kMaxNameSize &&
                     options.grpc_method_streams &&
                     options.grpc_method_streams(method_) == std::optional<bool>(false);
  if (unary) {
    Begin();
    return;
  }
  asio::post(*io, [call = shared_from_this()] { call->Begin(); });
}

void ServerCall::Begin() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    begun_ = true;
    // Answered already (refused, cancelled): it never reaches the server.
    if (done_ || finished_ || finish_.has_value()) return;
  }
  if (method_.empty() || method_.size() > kMaxNameSize) {
    // Not a name the server can have (gRPC lets a client send any path).
    Abort(grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                       absl::StrCat("no method '", method_.substr(0, 200), "'")));
    return;
  }
  const std::optional<bool> streams = state_->options.grpc_method_streams
                                          ? state_->options.grpc_method_streams(method_)
                                          : std::nullopt;
  {
    std::lock_guard<std::mutex> lock(mu_);
    streaming_ = streams.value_or(false);
  }
  if (!streams.has_value()) {
    // No such method: its REQUEST at once, without waiting for a message
    // (the server answers UNIMPLEMENTED naming it, as gRPC servers do).
    FrameHeader header;
    header.type = FrameType::kRequest;
    header.request_id = id_;
    header.deadline_ns = deadline_ns_;
    std::string frame;
    if (EncodeFramePrefix(header, method_, {}, 0, state_->max_payload, &frame).ok()) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (finished_ || finish_.has_value()) return;  // cancelled meanwhile
        read_done_ = true;  // nothing of the client's is read
        request_sent_ = true;
      }
      connection_->DeliverNow(frame);
      return;
    }
  }
  if (streams.value_or(false)) {
    // A stream: its REQUEST now (window, no message); messages as they come.
    FrameHeader header;
    header.type = FrameType::kRequest;
    header.flags = kFlagStream;
    header.request_id = id_;
    header.deadline_ns = deadline_ns_;
    std::string head;
    PutLe(&head, static_cast<uint64_t>(kAnnouncedWindow), 4);
    std::string frame;
    absl::Status encoded =
        EncodeFramePrefix(header, method_, metadata_, head.size(), state_->max_payload, &frame);
    if (!encoded.ok()) {
      Abort(grpc::Status(static_cast<grpc::StatusCode>(encoded.code()),
                         std::string(encoded.message())));
      return;
    }
    AppendBytes(&frame, head);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_ || finish_.has_value()) return;  // cancelled meanwhile
      request_sent_ = true;
    }
    connection_->DeliverNow(frame);
  }
  // Unary (or a method the server does not have, which it answers
  // UNIMPLEMENTED): the one message, then the REQUEST.
  Pump();
}

void ServerCall::OnReadDone(bool ok) {
  bool streaming;
  {
    std::lock_guard<std::mutex> lock(mu_);
    streaming = streaming_;
  }
  if (!streaming) {
    if (!ok) {
      Abort(grpc::Status(grpc::StatusCode::INTERNAL, "no request message"));
      return;
    }
    FrameHeader header;
    header.type = FrameType::kRequest;
    header.request_id = id_;
    header.deadline_ns = deadline_ns_;
    std::string request = ByteBufferToString(read_buffer_);
    std::string frame;
    absl::Status encoded = EncodeFramePrefix(header, method_, metadata_, request.size(),
                                             state_->max_payload, &frame);
    if (!encoded.ok()) {
      Abort(grpc::Status(static_cast<grpc::StatusCode>(encoded.code()),
                         std::string(encoded.message())));
      return;
    }
    AppendBytes(&frame, request);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_ || finish_.has_value()) return;  // cancelled meanwhile: never runs
      request_sent_ = true;
      delivering_ = true;
    }
    // Here, on gRPC's thread: a short handler runs here and answers (its
    // RESPONSE comes back to OnResponse on this thread), a longer one is
    // queued for a handler thread. Posted to the loop only while the
    // connection has not started there.
    const bool delivered = connection_->DeliverHereOrPost(std::move(frame));
    bool cancelled;
    {
      // A cancellation that came meanwhile waited for the REQUEST to be in.
      std::lock_guard<std::mutex> lock(mu_);
      delivering_ = false;
      cancelled = cancel_after_delivery_;
    }
    if (delivered && cancelled) connection_->Deliver(StreamFrame(FrameType::kCancel, id_, ""));
    return;
  }
  if (ok) {
    std::string message = ByteBufferToString(read_buffer_);
    const int64_t cost = StreamCost(message.size());
    connection_->Deliver(StreamFrame(FrameType::kMessage, id_, message));
    std::lock_guard<std::mutex> lock(mu_);
    delivered_ += cost;
    reading_ = false;
  } else {
    connection_->Deliver(StreamFrame(FrameType::kHalfClose, id_, ""));
    std::lock_guard<std::mutex> lock(mu_);
    reading_ = false;
    read_done_ = true;
  }
  Pump();
}

grpc::Status BridgedCall::ToGrpcStatus(const FrameView& frame, std::string_view method,
                                       Metadata* trailing) {
  absl::StatusCode code = static_cast<absl::StatusCode>(frame.header.status_code);
  std::string message(frame.name);
  if ((frame.header.flags & kFlagRefused) != 0) code = absl::StatusCode::kUnavailable;
  std::string details;
  for (auto& [key, value] : DecodeMetadata(frame.metadata)) {
    if (key == kStatusDetailsKey) {
      details = std::move(value);
      continue;
    }
    if (absl::Status valid = CheckGrpcMetadata({{key, value}}); !valid.ok()) {
      IPCRPC_LOG(WARNING) << state_->endpoint << ": " << method
                          << ": response metadata not sent to the gRPC client: "
                          << valid.message();
      continue;
    }
    trailing->emplace_back(std::move(key), std::move(value));
  }
  return grpc::Status(static_cast<grpc::StatusCode>(code), message, details);
}

void ServerCall::OnResponse(const FrameView& frame) {
  Metadata trailing;
  grpc::Status status = ToGrpcStatus(frame, method_, &trailing);
  {
    // The context is gRPC's until OnDone: touched only while this call is
    // not finished, under the lock that finishing takes.
    std::lock_guard<std::mutex> lock(mu_);
    if (done_ || finished_ || finish_.has_value()) return;
    for (auto& [key, value] : trailing) context_->AddTrailingMetadata(key, value);
    if (!streaming_ && status.ok()) unary_response_ = StringToByteBuffer(frame.payload);
    finish_ = std::move(status);
  }
  Pump();
}

void ServerCall::Pump() {
  // Decisions under mu_, gRPC's Start* outside it (a reaction may run on
  // this thread and take mu_). Finish waits until no Start* is on its way
  // (starting_), and whoever brings that to zero decides again.
  for (;;) {
    bool write = false, read = false;
    std::optional<grpc::Status> finish;
    std::optional<grpc::ByteBuffer>* last = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (done_ || finished_) return;
      if (!writing_ && !writes_.empty()) {
        writing_ = true;
        write_buffer_ = StringToByteBuffer(writes_.front());
        writing_cost_ = StreamCost(writes_.front().size());
        writes_.pop_front();
        write = true;
      }
      if (begun_ && !finish_.has_value() && !reading_ && !read_done_ &&
          (streaming_ ? delivered_ < read_limit_ : delivered_ == 0)) {
        reading_ = true;
        read = true;
        if (!streaming_) delivered_ = 1;  // a unary call reads once
      }
      if (!write && !read && !writing_ && finish_.has_value() && starting_ == 0) {
        finished_ = true;
        finish = std::move(finish_);
        if (unary_response_.has_value()) last = &unary_response_;
      }
      if (write || read) ++starting_;
    }
    if (finish.has_value()) {
      if (last != nullptr) {
        StartWriteAndFinish(&**last, grpc::WriteOptions(), *finish);
      } else {
        Finish(*finish);
      }
      return;
    }
    if (!write && !read) return;
    if (write) StartWrite(&write_buffer_);
    if (read) StartRead(&read_buffer_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (--starting_ == 0) idle_.notify_all();
    }
  }
}

absl::Status PeerConnection::SendWithin(absl::Span<const std::string_view> parts, int,
                                        int64_t /*deadline_ns*/) {
  std::string bytes;
  for (std::string_view part : parts) AppendBytes(&bytes, part);
  auto frame = DecodeFrame(bytes, state_->max_payload);
  if (!frame.ok()) return frame.status();
  switch (frame->header.type) {
    case FrameType::kResponse:
      if (auto call = Find(frame->header.request_id)) call->OnResponse(*frame);
      break;
    case FrameType::kMessage:
      if (auto call = Find(frame->header.request_id)) call->QueueWrite(frame->payload);
      break;
    case FrameType::kWindow:
      if (auto call = Find(frame->header.request_id)) {
        call->Grant(static_cast<int64_t>(GetLe(frame->payload.data(), 8)));
      }
      break;
    default:  // HELLO, PONG, GOAWAY: gRPC has its own
      break;
  }
  return absl::OkStatus();
}

void PeerConnection::RemoveCall(uint64_t id) {
  bool last = false;
  asio::io_context* io = nullptr;
  std::shared_ptr<asio::steady_timer> old_timer;
  std::shared_ptr<asio::steady_timer> timer;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    calls_.erase(id);
    if (calls_.empty() && !closed_) {
      io = state_->io;
      if (io == nullptr || state_->closing) {
        // Before Start, or shutting down: its calls are over, so is it.
        closed_ = true;
        last = true;
        old_timer = std::move(linger_);
        auto it = state_->peers.find(peer_name_);
        if (it != state_->peers.end() && it->second.get() == this) state_->peers.erase(it);
      } else {
        // Idle: it stays for the peer's next call, kIdlePeerLinger at most.
        // A call that ends costs no more than this: the timer, once armed,
        // looks at idle_since_ when it expires.
        idle_since_ = std::chrono::steady_clock::now();
        if (linger_ == nullptr) {
          timer = std::make_shared<asio::steady_timer>(*io);
          linger_ = timer;
        }
      }
    }
  }
  if (last) {
    if (old_timer != nullptr && io != nullptr) asio::post(*io, [old_timer] { old_timer->cancel(); });
    PostClosed(io, absl::CancelledError("gRPC peer's calls ended"));
    return;
  }
  if (timer == nullptr) return;
  auto self = std::static_pointer_cast<PeerConnection>(shared_from_this());
  asio::post(*io, [self, timer] {
    {
      // Closed since: no wait, which would hold the server's loop (and its
      // Shutdown) for nothing.
      std::lock_guard<std::mutex> lock(self->state_->mu);
      if (self->closed_ || self->linger_ != timer) return;
    }
    timer->expires_after(kIdlePeerLinger);
    timer->async_wait([self, timer](const asio::error_code& ec) {
      if (!ec) self->OnLinger(timer);
    });
  });
}

void PeerConnection::OnLinger(const std::shared_ptr<asio::steady_timer>& timer) {
  std::chrono::steady_clock::duration wait = kIdlePeerLinger;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (closed_ || linger_ != timer) return;
    if (calls_.empty()) {
      const auto idle = std::chrono::steady_clock::now() - idle_since_;
      if (idle < kIdlePeerLinger) {
        wait = kIdlePeerLinger - idle;
      } else {
        closed_ = true;
        linger_.reset();
        auto it = state_->peers.find(peer_name_);
        if (it != state_->peers.end() && it->second.get() == this) state_->peers.erase(it);
        wait = std::chrono::steady_clock::duration::zero();
      }
    }
    // Busy: look again in kIdlePeerLinger.
  }
  if (wait == std::chrono::steady_clock::duration::zero()) {
    PostClosed(LoopOrNull(), absl::CancelledError("gRPC peer idle"));
    return;
  }
  auto self = std::static_pointer_cast<PeerConnection>(shared_from_this());
  timer->expires_after(wait);
  timer->async_wait([self, timer](const asio::error_code& ec) {
    if (!ec) self->OnLinger(timer);
  });
}

bool PeerConnection::EvictIfIdleLocked() {
  if (closed_ || !calls_.empty() || state_->io == nullptr) return false;
  closed_ = true;
  if (std::shared_ptr<asio::steady_timer> timer = std::move(linger_)) {
    asio::post(*state_->io, [timer] { timer->cancel(); });
  }
  PostClosed(state_->io, absl::CancelledError("gRPC peer idle, its place taken by another"));
  return true;
}

void PeerConnection::Close() {
  // Nothing new reaches the server from gRPC's threads; those on their way
  // finish (the listener waits for them before it goes: the loop, which
  // may close a connection, must not wait for a handler).
  StopDeliveringHere(/*wait=*/false);
  std::vector<std::shared_ptr<BridgedCall>> calls;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    // A linger timer would hold the server's loop (and its Shutdown).
    if (std::shared_ptr<asio::steady_timer> timer = std::move(linger_);
        timer != nullptr && state_->io != nullptr) {
      asio::post(*state_->io, [timer] { timer->cancel(); });
    }
    if (closed_) return;
    closed_ = true;
    for (auto& [id, call] : calls_) calls.push_back(call);
    auto it = state_->peers.find(peer_name_);
    if (it != state_->peers.end() && it->second.get() == this) state_->peers.erase(it);
  }
  // The calls stay alive until their OnDone, which needs the Finish.
  for (auto& call : calls) {
    call->Abort(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server closed the connection"));
  }
  PostClosed(LoopOrNull(), absl::CancelledError("gRPC peer's calls ended"));
}

class GenericService final : public grpc::CallbackGenericService {
 public:
  explicit GenericService(std::shared_ptr<ListenerState> state) : state_(std::move(state)) {}
  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext* context) override {
    auto call = std::make_shared<ServerCall>(state_, context);
    call->self_ = call;
    call->Admit();
    return call.get();
  }

 private:
  const std::shared_ptr<ListenerState> state_;
};

// A call of a unary method the server had when the listener was made,
// which the listener registers with gRPC as a unary callback method: gRPC
// hands over the request whole, on its thread, and runs this reactor's
// OnCancel and OnDone on the thread that ends the call. A generic
// (bidirectional) reactor's OnDone always goes to gRPC's executor thread:
// one more thread switch a call (docs/GRPC.md, "What the bridge costs").
class UnaryCall final : public BridgedCall, public grpc::ServerUnaryReactor {
 public:
  // `method` belongs to the listener's UnaryMethods, which outlive every
  // call; `response` to gRPC, until OnDone.
  UnaryCall(std::shared_ptr<ListenerState> state, grpc::CallbackServerContext* context,
            const std::string& method, grpc::ByteBuffer* response)
      : BridgedCall(std::move(state)), context_(context), method_(method), response_(response) {}

  // In the method's handler, on gRPC's thread: joins a connection and hands
  // the REQUEST to the server, here if it can (DeliverHereOrPost), or is
  // answered.
  void Start(const grpc::ByteBuffer& request);
  // On the loop: the REQUEST of a call that came before the listener started.
  void Begin() override;
  void OnResponse(const FrameView& frame) override;
  void Abort(grpc::Status status) override;

  void OnCancel() override;
  void OnDone() override {
    if (connection_ != nullptr) connection_->RemoveCall(id_);
    std::shared_ptr<BridgedCall> last = std::move(self_);  // may free this: last
  }
  // Lets gRPC run OnCancel and OnDone where the call ends instead of on its
  // executor: both only take short locks and post to the loop. (gRPC marks
  // this "not API, for internal reactors with trivial reactions"; its own
  // default unary reactor does the same. Checked against gRPC 1.51's
  // CallbackUnaryHandler, the version Debian 12 ships.)
  bool InternalInlineable() override { return true; }

 private:
  // Finishes the call once (the first of a RESPONSE and an abort).
  void FinishOnce(grpc::Status status, const Metadata& trailing, std::string_view payload);

  grpc::CallbackServerContext* const context_;
  const std::string& method_;
  grpc::ByteBuffer* const response_;

  std::mutex mu_;  // before state_->mu
  bool finished_ = false;      // guarded by mu_: Finish called
  bool request_sent_ = false;  // guarded by mu_: the REQUEST went to the server
  std::string frame_;          // guarded by mu_: the REQUEST, until Begin
};

void UnaryCall::Start(const grpc::ByteBuffer& request) {
  if (!request.Valid()) {
    // The client half-closed without a message (gRPC hands a raw method
    // an empty buffer then), as the generic path answers it.
    Abort(grpc::Status(grpc::StatusCode::INTERNAL, "no request message"));
    return;
  }
  FrameHeader header;
  header.type = FrameType::kRequest;
  header.deadline_ns = WireDeadline(context_->deadline());
  Metadata metadata;
  AppendGrpcMetadata(context_->client_metadata(), &metadata);
  const std::string payload = ByteBufferToString(request);
  std::string frame;
  absl::Status encoded =
      EncodeFramePrefix(header, method_, metadata, payload.size(), state_->max_payload, &frame);
  if (!encoded.ok()) {
    Abort(grpc::Status(static_cast<grpc::StatusCode>(encoded.code()),
                       std::string(encoded.message())));
    return;
  }
  AppendBytes(&frame, payload);
  asio::io_context* io = nullptr;
  grpc::Status refusal;
  bool joined = false;
  {
    // Held across Join: a Begin the listener's Start posts meanwhile finds
    // the frame.
    std::lock_guard<std::mutex> lock(mu_);
    switch (Join(context_->peer(), &io, &refusal)) {
      case Joined::kRefused:
        break;
      case Joined::kWaiting:
        SetFrameRequestId(id_, &frame);
        frame_ = std::move(frame);
        return;
      case Joined::kJoined:
        SetFrameRequestId(id_, &frame);
        request_sent_ = true;
        joined = true;
        break;
    }
  }
  if (!joined) {
    Abort(std::move(refusal));
    return;
  }
  // Here, on gRPC's thread: a short handler runs here and answers (its
  // RESPONSE comes back to OnResponse on this thread, and gRPC sends it
  // once this handler returns), a longer one is queued for a handler
  // thread. Posted to the loop while the server has not started the
  // connection. gRPC calls OnCancel only after this returns: its CANCEL
  // follows the REQUEST.
  connection_->DeliverHereOrPost(std::move(frame));
}

void UnaryCall::Begin() {
  std::string frame;
  {
    std::lock_guard<std::mutex> lock(mu_);
    // Answered already (refused, cancelled): it never reaches the server.
    if (finished_ || frame_.empty()) return;
    frame = std::move(frame_);
    request_sent_ = true;
  }
  connection_->DeliverNow(frame);
}

void UnaryCall::OnResponse(const FrameView& frame) {
  Metadata trailing;
  grpc::Status status = ToGrpcStatus(frame, method_, &trailing);
  FinishOnce(std::move(status), trailing, frame.payload);
}

void UnaryCall::Abort(grpc::Status status) { FinishOnce(std::move(status), {}, {}); }

void UnaryCall::OnCancel() {
  bool sent;
  {
    std::lock_guard<std::mutex> lock(mu_);
    sent = request_sent_;
    // A REQUEST not sent by now (waiting for Begin) never goes.
    frame_.clear();
  }
  // The CANCEL follows the REQUEST (posted after it), or neither goes.
  if (sent) connection_->Deliver(StreamFrame(FrameType::kCancel, id_, ""));
  Abort(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the gRPC client"));
}

void UnaryCall::FinishOnce(grpc::Status status, const Metadata& trailing,
                           std::string_view payload) {
  {
    // The context is gRPC's until OnDone: touched only before Finish, under
    // the lock that decides who finishes.
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return;
    finished_ = true;
    for (const auto& [key, value] : trailing) context_->AddTrailingMetadata(key, value);
    if (status.ok()) *response_ = StringToByteBuffer(payload);
  }
  Finish(std::move(status));
}

// The unary methods the server had when the listener was made, as gRPC
// unary callback methods (UnaryCall); everything else reaches the generic
// service.
class UnaryMethods final : public grpc::Service {
 public:
  UnaryMethods(const std::shared_ptr<ListenerState>& state, const std::vector<std::string>& names) {
    for (const std::string& name : names) {
      names_.push_back(name);
      paths_.push_back(absl::StrCat("/", name));
      const std::string* method = &names_.back();
      AddMethod(new grpc::internal::RpcServiceMethod(
          paths_.back().c_str(), grpc::internal::RpcMethod::NORMAL_RPC, nullptr));
      MarkMethodRawCallback(
          static_cast<int>(names_.size() - 1),
          new grpc::internal::CallbackUnaryHandler<grpc::ByteBuffer, grpc::ByteBuffer>(
              [state, method](grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                              grpc::ByteBuffer* response) -> grpc::ServerUnaryReactor* {
                auto call = std::make_shared<UnaryCall>(state, context, *method, response);
                call->self_ = call;
                call->Start(*request);
                return call.get();
              }));
    }
  }
  bool empty() const { return names_.empty(); }

 private:
  std::deque<std::string> names_;  // a deque: what the handlers point at stays put
  std::deque<std::string> paths_;  // RpcServiceMethod keeps the pointer
};

// grpc:unix: without TLS: the listener accepts the connections itself, so
// that it knows who is at the other end (SO_PEERCRED; ServerOptions::
// allowed_uids applies as on unix:), and hands each to gRPC
// (AddInsecureChannelFromFd), whose calls on it then say "fd:N" as their
// peer: one server connection per client connection, with its pid and uid.
// (gRPC 1.51's own Unix listener gives every call the same peer, and keeps
// no credentials.)
struct UnixAcceptState {
  std::shared_ptr<ListenerState> state;
  std::mutex mu;
  grpc::Server* server = nullptr;  // guarded by mu; null once the listener closes

  // One connection: its peer recorded for Admit, then handed to gRPC.
  bool Take(UniqueFd client, const PeerCredentials& peer) {
    const std::string name = absl::StrCat("fd:", client.get());
    {
      std::lock_guard<std::mutex> lock(state->mu);
      // The descriptor's number may have served a connection gRPC has
      // closed since: what is left of that one goes now.
      if (auto old = state->peers.find(name); old != state->peers.end()) {
        old->second->EvictIfIdleLocked();
        state->peers.erase(old);
      }
      state->fd_peers[name] = peer;
    }
    std::lock_guard<std::mutex> lock(mu);
    if (server == nullptr) return false;  // closed meanwhile: the descriptor closes
    grpc::AddInsecureChannelFromFd(server, client.Release());
    return true;
  }
};

class GrpcListener final : public Listener {
 public:
  GrpcListener(std::shared_ptr<ListenerState> state, std::unique_ptr<GenericService> service,
               std::unique_ptr<UnaryMethods> unary_methods, std::unique_ptr<grpc::Server> server,
               UniqueFd unix_socket = UniqueFd(), PublishedObject published = PublishedObject())
      : state_(std::move(state)),
        service_(std::move(service)),
        unary_methods_(std::move(unary_methods)),
        server_(std::move(server)),
        unix_socket_(std::move(unix_socket)),
        published_(std::move(published)) {}
  ~GrpcListener() override {
    Close();
    // Every call has been answered by now (the server closed its
    // connections first); gRPC cancels any left.
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    server_->Wait();
    // gRPC runs nothing of ours after its Wait; a request handed over on
    // one of its threads is over by then as well, made sure of here.
    std::unique_lock<std::mutex> lock(state_->delivering_mu);
    state_->delivered.wait(lock, [&] { return state_->delivering == 0; });
  }

  absl::Status Start(asio::io_context& io, AcceptHandler on_accept) override {
    // Under the lock: a call that Admit takes from now on posts after these.
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->io = &io;
    state_->on_accept = std::move(on_accept);
    for (auto& [name, peer] : state_->peers) {
      asio::post(io, [state = state_, peer = peer] { state->on_accept(peer); });
    }
    for (auto& call : state_->waiting) asio::post(io, [call = call] { call->Begin(); });
    state_->waiting.clear();
    if (unix_socket_.valid()) {
      IPCRPC_RETURN_IF_ERROR(SetNonBlocking(unix_socket_.get(), true, state_->endpoint));
      acceptor_ = std::make_shared<UnixAcceptState>();
      acceptor_->state = state_;
      acceptor_->server = server_.get();
      const int listener = unix_socket_.get();
      watch_ = DescriptorWatch::Start(io, std::move(unix_socket_), [acceptor = acceptor_, listener] {
        return AcceptUnixConnections(listener, acceptor->state->endpoint, acceptor->state->options,
                                     [&](UniqueFd client, const PeerCredentials& peer) {
                                       return acceptor->Take(std::move(client), peer);
                                     });
      });
    }
    return absl::OkStatus();
  }
  void Close() override {
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      state_->closing = true;  // new calls: UNAVAILABLE; calls in flight go on
    }
    // New connects fail from now on; no connection reaches gRPC after this.
    published_.Remove();
    if (watch_ != nullptr) watch_->Stop();
    if (acceptor_ != nullptr) {
      std::lock_guard<std::mutex> lock(acceptor_->mu);
      acceptor_->server = nullptr;
    }
  }
  const std::string& endpoint() const override { return state_->endpoint; }

 private:
  const std::shared_ptr<ListenerState> state_;
  // Both outlive the gRPC server (destroyed after it).
  const std::unique_ptr<GenericService> service_;
  const std::unique_ptr<UnaryMethods> unary_methods_;
  const std::unique_ptr<grpc::Server> server_;
  UniqueFd unix_socket_;  // until Start
  PublishedObject published_;
  std::shared_ptr<UnixAcceptState> acceptor_;
  std::shared_ptr<DescriptorWatch> watch_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Listener>> CreateGrpcListener(const Endpoint& endpoint,
                                                             const TransportOptions& options) {
  KeepGrpcCallbackQueueAlive();
  const bool tls = !options.grpc_certificate_chain_file.empty() ||
                   !options.grpc_private_key_file.empty();
  IPCRPC_ASSIGN_OR_RETURN(GrpcAddress address,
                          ParseGrpcAddress(endpoint, tls, options.grpc_allow_plaintext_off_host));
  std::shared_ptr<grpc::ServerCredentials> credentials;
  if (tls) {
    grpc::SslServerCredentialsOptions ssl(
        options.grpc_require_client_certificate
            ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
            : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
    grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
    IPCRPC_ASSIGN_OR_RETURN(pair.cert_chain, ReadPemFile(options.grpc_certificate_chain_file,
                                                         "certificate_chain_file"));
    IPCRPC_ASSIGN_OR_RETURN(pair.private_key,
                            ReadPemFile(options.grpc_private_key_file, "private_key_file"));
    ssl.pem_key_cert_pairs.push_back(std::move(pair));
    if (options.grpc_require_client_certificate) {
      if (options.grpc_root_certificates_file.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "endpoint '", endpoint.text,
            "': GrpcOptions::require_client_certificate needs root_certificates_file (the CAs "
            "that sign client certificates)"));
      }
      IPCRPC_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPemFile(options.grpc_root_certificates_file,
                                                              "root_certificates_file"));
    }
    credentials = grpc::SslServerCredentials(ssl);
  } else if (options.grpc_require_client_certificate) {
    return absl::InvalidArgumentError(absl::StrCat(
        "endpoint '", endpoint.text,
        "': GrpcOptions::require_client_certificate needs TLS (certificate_chain_file and "
        "private_key_file)"));
  } else {
    credentials = grpc::InsecureServerCredentials();
  }

  auto state = std::make_shared<ListenerState>();
  state->options = options;
  state->max_payload = options.max_message_size - kMaxFrameOverhead;
  auto service = std::make_unique<GenericService>(state);
  auto unary_methods = std::make_unique<UnaryMethods>(
      state, options.grpc_unary_methods ? options.grpc_unary_methods()
                                        : std::vector<std::string>());
  // grpc:unix: in plaintext: our own socket, whose connections we hand to
  // gRPC (UnixAcceptState); with TLS, gRPC's own listener.
  const bool own_unix_socket = address.is_unix && !tls;
  std::pair<UniqueFd, PublishedObject> unix_socket;
  if (own_unix_socket) {
    IPCRPC_ASSIGN_OR_RETURN(unix_socket,
                            BindUnixSocketFile(endpoint.text, address.path, options.mode));
  }
  grpc::ServerBuilder builder;
  int port = 0;
  if (!own_unix_socket) {
    builder.AddListeningPort(address.target, credentials, address.is_unix ? nullptr : &port);
  }
  if (!unary_methods->empty()) builder.RegisterService(unary_methods.get());
  builder.RegisterCallbackGenericService(service.get());
  const int max = static_cast<int>(std::min<size_t>(state->max_payload, INT32_MAX));
  builder.SetMaxReceiveMessageSize(max);
  builder.SetMaxSendMessageSize(max);
  // Calls at once on one HTTP/2 connection: gRPC refuses more streams before
  // any state of ours exists for them (a unary call reaches the server's
  // limits only once its message has come).
  if (options.grpc_max_concurrent_streams > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                               options.grpc_max_concurrent_streams);
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || (!address.is_unix && port == 0)) {
    return absl::UnavailableError(absl::StrCat(
        "endpoint '", endpoint.text, "': gRPC cannot listen on ", address.target,
        " (in use, or not an address of this host; gRPC logs why)"));
  }
  if (address.is_unix && !own_unix_socket) {
    // gRPC creates the socket file with the process's umask: the server's
    // mode, as for unix: (the directory's permissions bound it meanwhile).
    ::chmod(address.path.c_str(), options.mode);
  }
  state->endpoint = GrpcEndpointText(address, port);
  return std::make_unique<GrpcListener>(std::move(state), std::move(service),
                                        std::move(unary_methods), std::move(server),
                                        std::move(unix_socket.first),
                                        std::move(unix_socket.second));
}

}  // namespace ipcrpc::internal
