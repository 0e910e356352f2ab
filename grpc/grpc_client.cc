// grpc: client side: a Connector that opens a gRPC channel, and a
// Connection that turns the RPC layer's frames into gRPC calls (see
// grpc_transport.h).
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/node_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/strings/str_cat.h"
#include "asio/io_context.hpp"
#include "asio/post.hpp"
#include "asio/steady_timer.hpp"
#include "base/clock.h"
#include "base/copy.h"
#include "base/logging.h"
#include "base/status_macros.h"
#include "base/strings.h"
#include "grpc/grpc_common.h"
#include "grpc/grpc_transport.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/impl/client_unary_call.h"
#include "grpcpp/impl/rpc_method.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "wire/status_details.h"

namespace ipcrpc::internal {
namespace {

absl::Status FromGrpc(const grpc::Status& status) {
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

class GrpcClientConnection;
class UnaryClientCall;

// One call in flight on the connection: what the RPC layer's frames for
// its request id act on.
class ClientCall {
 public:
  virtual ~ClientCall() = default;
  virtual void Cancel() = 0;
  // Streams only.
  virtual void Write(std::string_view /*message*/) {}
  virtual void WritesDone() {}
  virtual void Grant(int64_t /*bytes*/) {}
};

// A connection closed from inside its own delivery on this thread (Close
// does not wait for that one): held until the delivery's Finish ends.
thread_local std::shared_ptr<Connection> closed_in_delivery;
void KeepForDelivery(std::shared_ptr<Connection> connection) {
  closed_in_delivery = std::move(connection);
}
std::shared_ptr<Connection> TakeClosedInDelivery() { return std::move(closed_in_delivery); }

class GrpcClientConnection final : public GrpcBridgeConnection {
 public:
  GrpcClientConnection(std::shared_ptr<grpc::Channel> channel, std::string endpoint,
                       size_t max_payload)
      : GrpcBridgeConnection(std::move(endpoint)),
        channel_(std::move(channel)),
        stub_(channel_),
        max_payload_(max_payload) {}
  ~GrpcClientConnection() override { Close(); }

  void Start(asio::io_context& io, MessageHandler on_message, CloseHandler on_closed) override {
    io_ = &io;
    GrpcBridgeConnection::Start(io, std::move(on_message), std::move(on_closed));
  }
  // Never waits for the peer (gRPC queues): the deadline is not needed.
  absl::Status SendWithin(absl::Span<const std::string_view> parts, int /*priority*/,
                          int64_t deadline_ns) override;
  void Close() override;
  // A sync caller's unary call is made on its thread, as gRPC's generated
  // sync stubs make theirs (a blocking call that polls on the caller's
  // thread): no hand-off from gRPC's callback thread to wake the caller.
  bool CallsHere() const override { return true; }
  absl::Status CallHere(std::string_view request, absl::FunctionRef<bool()> done) override;
  // A sync call was completed by another thread (cancelled): a call made
  // here for it is cancelled in gRPC, so that its caller returns now (its
  // CANCEL may have come before the call was in the table).
  void WakeReader() override;

  // For the calls: hands a frame to the RPC layer, on the loop, in order.
  void Deliver(std::string frame) { PostFrame(io_, std::move(frame)); }
  // gRPC may end a call DEADLINE_EXCEEDED a little before the deadline the
  // RPC layer set (its clocks and rounding, the server's): the RPC layer
  // says that only at the deadline, so the answer waits for it.
  // `here`: a unary call's RESPONSE, handed to the RPC layer on this
  // thread (gRPC's) if it can be: a sync caller is woken from here, not
  // from the loop after a hand-off to it (GrpcBridgeConnection::DeliverHere).
  void DeliverEnd(std::string frame, const grpc::Status& status, int64_t deadline_ns,
                  bool here = false) {
    if (status.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED ||
        deadline_ns == kWireNoDeadline || MonotonicNowNs() >= deadline_ns) {
      // Only a well-formed frame (ResponseFrame makes no other): the RPC
      // layer closes the connection on a bad one, which it must not do
      // from inside Finish (Close waits for Finish).
      if (here && DecodeFrame(frame, max_payload_).ok() && DeliverHere(frame)) return;
      Deliver(std::move(frame));
      return;
    }
    std::weak_ptr<Connection> weak = weak_from_this();
    auto timer = std::make_shared<asio::steady_timer>(*io_, SteadyTimeOf(deadline_ns));
    timer->async_wait([weak, timer, frame = std::move(frame)](const asio::error_code&) {
      auto self = std::static_pointer_cast<GrpcClientConnection>(weak.lock());
      if (self != nullptr) self->DeliverOnLoop(frame);
    });
  }
  // A unary call's end, with its RESPONSE frame: out of the table, then
  // the frame to the RPC layer (here, on this thread, if `here`). Close
  // waits for it, unless called from inside this very delivery (the RPC
  // layer closed the connection while handling the frame).
  void Finish(uint64_t id, std::string frame, const grpc::Status& status, int64_t deadline_ns,
              bool here) {
    std::shared_ptr<ClientCall> call;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = calls_.find(id);
      if (it != calls_.end()) {
        call = std::move(it->second);
        calls_.erase(it);
      }
      ++finishing_;
    }
    DeliverEnd(std::move(frame), status, deadline_ns, here);
    // A Close made inside that delivery left this connection alive for us
    // (ClosedInDelivery): it may go when this returns, after the unlock.
    std::shared_ptr<Connection> last;
    // Notified under the lock: Close may return (and this connection go)
    // as soon as nothing is left.
    std::lock_guard<std::mutex> lock(mu_);
    last = TakeClosedInDelivery();
    --finishing_;
    done_.notify_all();
  }
  // The call's last act: it leaves the table (Close waits for that).
  std::shared_ptr<ClientCall> Take(uint64_t id) {
    std::shared_ptr<ClientCall> call;
    {
      // Notified under the lock: Close may return (and this connection go)
      // as soon as the table is empty.
      std::lock_guard<std::mutex> lock(mu_);
      auto it = calls_.find(id);
      if (it == calls_.end()) return nullptr;
      call = std::move(it->second);
      calls_.erase(it);
      done_.notify_all();
    }
    return call;
  }
  grpc::GenericStub& stub() { return stub_; }
  size_t max_payload() const { return max_payload_; }

 private:
  void StartCall(const FrameView& frame);
  // A unary call's context set up from its REQUEST and the call put in the
  // table; null if it is not to be made (refused: its RESPONSE is on its
  // way; or the connection is closed).
  std::shared_ptr<UnaryClientCall> PrepareUnary(const FrameView& frame);
  // gRPC's method for `name` ("/pkg.Service/Method"), registered with the
  // channel once (as generated stubs do: the path is not interned again
  // per call); a name past kMaxRegisteredMethods is not kept.
  const grpc::internal::RpcMethod* RegisteredMethod(const std::string& name);
  static constexpr size_t kMaxRegisteredMethods = 1024;
  std::shared_ptr<ClientCall> Find(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = calls_.find(id);
    return it == calls_.end() ? nullptr : it->second;
  }

  const std::shared_ptr<grpc::Channel> channel_;
  grpc::GenericStub stub_;
  const size_t max_payload_;
  asio::io_context* io_ = nullptr;  // set by Start, before any Send

  std::mutex mu_;
  std::condition_variable done_;
  bool closed_ = false;  // guarded by mu_
  absl::flat_hash_map<uint64_t, std::shared_ptr<ClientCall>> calls_;  // guarded by mu_
  int finishing_ = 0;  // guarded by mu_: Finish calls between the table and their end
  // Calls being made by CallHere, with their callers' done().
  std::vector<std::pair<UnaryClientCall*, const absl::FunctionRef<bool()>*>> here_;  // guarded by mu_
  std::mutex methods_mu_;
  // Node-stable: each method's name points into its key.
  absl::node_hash_map<std::string, std::unique_ptr<grpc::internal::RpcMethod>>
      methods_;  // guarded by methods_mu_
};

// Sets up a call's context from its REQUEST: deadline and metadata. The
// error, if any, names the call ("calling M over gRPC: ...").
absl::Status Configure(const FrameView& frame, grpc::ClientContext* context) {
  Metadata metadata = DecodeMetadata(frame.metadata);
  if (absl::Status checked = CheckGrpcMetadata(metadata); !checked.ok()) {
    return absl::Status(checked.code(), absl::StrCat("calling ", Av(frame.name), " over gRPC: ",
                                                     checked.message()));
  }
  for (auto& [key, value] : metadata) context->AddMetadata(key, value);
  if (frame.header.deadline_ns != kWireNoDeadline) {
    context->set_deadline(GrpcDeadline(frame.header.deadline_ns));
  }
  return absl::OkStatus();
}

// The RESPONSE for gRPC's end of a call: its status, the server's initial
// and trailing metadata and status details, the response.
std::string ResponseFromGrpc(uint64_t id, const grpc::Status& status,
                             const grpc::ClientContext& context, std::string_view payload,
                             size_t max_payload) {
  Metadata metadata;
  AppendGrpcMetadata(context.GetServerInitialMetadata(), &metadata);
  AppendGrpcMetadata(context.GetServerTrailingMetadata(), &metadata);
  if (!status.ok() && !status.error_details().empty()) {
    metadata.emplace_back(std::string(kStatusDetailsKey), status.error_details());
  }
  return ResponseFrame(id, FromGrpc(status), metadata, payload, max_payload);
}

class UnaryClientCall final : public ClientCall {
 public:
  void Cancel() override { context.TryCancel(); }

  grpc::ClientContext context;
  grpc::ByteBuffer request;
  grpc::ByteBuffer response;
};

// A stream, whatever its kind: gRPC's generic stub has bidirectional calls
// only, which carry the other kinds as well (they differ in how many
// messages go each way, not on the wire).
class StreamClientCall final : public ClientCall,
                               public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  StreamClientCall(GrpcClientConnection* connection, uint64_t id, int64_t window,
                   int64_t deadline_ns)
      : connection_(connection), id_(id), deadline_ns_(deadline_ns), read_limit_(window) {}

  void Begin(const std::string& method, std::optional<std::string_view> first, bool half_close) {
    connection_->stub().PrepareBidiStreamingCall(&context, method, grpc::StubOptions(), this);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (first.has_value()) writes_.emplace_back(*first);
      half_close_ = half_close;
    }
    // Held until nothing more starts from outside a reaction (the read
    // side is over, or the call is cancelled): gRPC frees its side of the
    // call once it is done, which it cannot be while held.
    AddHold();
    StartCall();
    Pump();
  }

  void Cancel() override {
    context.TryCancel();
    ReleaseHold();
  }
  void Write(std::string_view message) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (half_close_) return;  // the RPC layer never does this
      writes_.emplace_back(message);
    }
    Pump();
  }
  void WritesDone() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      half_close_ = true;
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

  void OnWriteDone(bool ok) override {
    int64_t cost;
    {
      std::lock_guard<std::mutex> lock(mu_);
      writing_ = false;
      cost = writing_cost_;
      if (!ok) writes_.clear();  // the call is ending; OnDone says how
    }
    // The RPC layer may write this much more (its window: what gRPC has not
    // taken yet).
    connection_->Deliver(WindowFrame(id_, cost));
    Pump();
  }
  void OnReadDone(bool ok) override {
    if (ok) {
      std::string message = ByteBufferToString(read_buffer_);
      const int64_t cost = StreamCost(message.size());
      connection_->Deliver(StreamFrame(FrameType::kMessage, id_, message));
      std::lock_guard<std::mutex> lock(mu_);
      delivered_ += cost;
      reading_ = false;
    } else {
      {
        std::lock_guard<std::mutex> lock(mu_);
        reading_ = false;
        read_done_ = true;
      }
      // The server sends nothing more: the call is ending.
      ReleaseHold();
      return;
    }
    Pump();
  }
  void OnDone(const grpc::Status& status) override {
    {
      std::unique_lock<std::mutex> lock(mu_);
      done_ = true;
      idle_.wait(lock, [&] { return starting_ == 0; });
    }
    connection_->DeliverEnd(ResponseFromGrpc(id_, status, context, {}, connection_->max_payload()),
                            status, deadline_ns_);
    // Last: this may be what destroys the call.
    std::shared_ptr<ClientCall> self = connection_->Take(id_);
  }

  grpc::ClientContext context;

 private:
  // Ends the hold, once: from then on nothing starts (writes still queued
  // are dropped: the call is ending), and a Start* on its way finishes first.
  void ReleaseHold() {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (hold_released_) return;
      hold_released_ = true;
      idle_.wait(lock, [&] { return starting_ == 0; });
    }
    RemoveHold();
  }

  // Starts what may start now: the next write (or WritesDone), a read if the
  // RPC layer's window has room. Decisions under mu_, gRPC's Start* outside
  // it (a reaction may run on this thread); OnDone waits for those on their
  // way (starting_), after which nothing starts.
  void Pump() {
    for (;;) {
      bool write = false, writes_done = false, read = false;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (done_ || hold_released_) return;
        if (!writing_ && !writes_.empty()) {
          writing_ = true;
          write_buffer_ = StringToByteBuffer(writes_.front());
          writing_cost_ = StreamCost(writes_.front().size());
          writes_.pop_front();
          write = true;
        } else if (!writing_ && half_close_ && !writes_done_started_) {
          writes_done_started_ = true;
          writes_done = true;
        }
        if (!reading_ && !read_done_ && delivered_ < read_limit_) {
          reading_ = true;
          read = true;
        }
        if (!write && !writes_done && !read) return;
        ++starting_;
      }
      if (write) StartWrite(&write_buffer_);
      if (writes_done) StartWritesDone();
      if (read) StartRead(&read_buffer_);
      std::lock_guard<std::mutex> lock(mu_);
      if (--starting_ == 0) idle_.notify_all();
    }
  }

  GrpcClientConnection* const connection_;  // outlives the call: Close waits for it
  const uint64_t id_;
  const int64_t deadline_ns_;
  std::mutex mu_;
  std::condition_variable idle_;     // starting_ fell to 0
  int starting_ = 0;                 // guarded by mu_: Start* calls being made
  bool done_ = false;                // guarded by mu_: OnDone ran
  bool hold_released_ = false;       // guarded by mu_: nothing starts any more
  std::deque<std::string> writes_;   // guarded by mu_
  bool writing_ = false;             // guarded by mu_
  int64_t writing_cost_ = 0;         // guarded by mu_
  bool half_close_ = false;          // guarded by mu_
  bool writes_done_started_ = false; // guarded by mu_
  bool reading_ = false;             // guarded by mu_
  bool read_done_ = false;           // guarded by mu_
  int64_t delivered_ = 0;            // guarded by mu_: costs handed to the RPC layer
  int64_t read_limit_;               // guarded by mu_: its window plus its grants
  grpc::ByteBuffer write_buffer_;
  grpc::ByteBuffer read_buffer_;
};

absl::Status GrpcClientConnection::SendWithin(absl::Span<const std::string_view> parts, int,
                                              int64_t /*deadline_ns*/) {
  std::string bytes;
  for (std::string_view part : parts) AppendBytes(&bytes, part);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return MarkNotDelivered(absl::UnavailableError(description() + ": closed"));
  }
  auto frame = DecodeFrame(bytes, max_payload_);
  if (!frame.ok()) return frame.status();
  switch (frame->header.type) {
    case FrameType::kRequest:
      StartCall(*frame);
      return absl::OkStatus();
    case FrameType::kCancel:
      if (auto call = Find(frame->header.request_id)) call->Cancel();
      return absl::OkStatus();
    case FrameType::kMessage:
      if (auto call = Find(frame->header.request_id)) call->Write(frame->payload);
      return absl::OkStatus();
    case FrameType::kHalfClose:
      if (auto call = Find(frame->header.request_id)) call->WritesDone();
      return absl::OkStatus();
    case FrameType::kWindow:
      if (auto call = Find(frame->header.request_id)) {
        call->Grant(static_cast<int64_t>(GetLe(frame->payload.data(), 8)));
      }
      return absl::OkStatus();
    default:  // HELLO, PING, PONG: gRPC has its own
      return absl::OkStatus();
  }
}

void GrpcClientConnection::StartCall(const FrameView& frame) {
  KeepGrpcCallbackQueueAlive();  // first: every call made here uses gRPC's callback API
  const uint64_t id = frame.header.request_id;
  const std::string method = absl::StrCat("/", Av(frame.name));
  const bool stream = (frame.header.flags & kFlagStream) != 0;
  if (!stream) {
    std::shared_ptr<UnaryClientCall> call = PrepareUnary(frame);
    if (call == nullptr) return;
    UnaryClientCall* raw = call.get();
    stub_.UnaryCall(&raw->context, method, grpc::StubOptions(), &raw->request, &raw->response,
                    [this, id, raw, deadline_ns = frame.header.deadline_ns](grpc::Status status) {
                      std::string payload;
                      if (status.ok()) payload = ByteBufferToString(raw->response);
                      std::string response =
                          ResponseFromGrpc(id, status, raw->context, payload, max_payload_);
                      // `raw` goes with the table's reference: not used after this.
                      Finish(id, std::move(response), status, deadline_ns, /*here=*/true);  // last
                    });
    return;
  }
  // Streams: the head is the client's window, then maybe the first message.
  const int64_t window = static_cast<int64_t>(GetLe(frame.payload.data(), 4));
  std::optional<std::string_view> first;
  if ((frame.header.flags & kFlagWithMessage) != 0) first = frame.payload.substr(kStreamHeadSize);
  auto call = std::make_shared<StreamClientCall>(this, id, window, frame.header.deadline_ns);
  if (absl::Status configured = Configure(frame, &call->context); !configured.ok()) {
    Deliver(ResponseFrame(id, std::move(configured), {}, {}, max_payload_));
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    calls_[id] = call;
  }
  call->Begin(method, first, (frame.header.flags & kFlagHalfClose) != 0);
}

std::shared_ptr<UnaryClientCall> GrpcClientConnection::PrepareUnary(const FrameView& frame) {
  const uint64_t id = frame.header.request_id;
  auto call = std::make_shared<UnaryClientCall>();
  if (absl::Status configured = Configure(frame, &call->context); !configured.ok()) {
    Deliver(ResponseFrame(id, std::move(configured), {}, {}, max_payload_));
    return nullptr;
  }
  call->request = StringToByteBuffer(frame.payload);
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) return nullptr;
  calls_[id] = call;
  return call;
}

const grpc::internal::RpcMethod* GrpcClientConnection::RegisteredMethod(const std::string& name) {
  std::lock_guard<std::mutex> lock(methods_mu_);
  auto it = methods_.find(name);
  if (it != methods_.end()) return it->second.get();
  if (methods_.size() >= kMaxRegisteredMethods) return nullptr;
  it = methods_.emplace(name, nullptr).first;
  it->second = std::make_unique<grpc::internal::RpcMethod>(
      it->first.c_str(), grpc::internal::RpcMethod::NORMAL_RPC, channel_);
  return it->second.get();
}

absl::Status GrpcClientConnection::CallHere(std::string_view request,
                                            absl::FunctionRef<bool()> done) {
  auto frame = DecodeFrame(request, max_payload_);
  if (!frame.ok() || frame->header.type != FrameType::kRequest ||
      (frame->header.flags & kFlagStream) != 0) {
    return absl::InternalError(absl::StrCat(description(), ": CallHere given no unary REQUEST"));
  }
  if (done()) return absl::OkStatus();  // cancelled before it went: nothing to send
  const uint64_t id = frame->header.request_id;
  auto call = std::make_shared<UnaryClientCall>();
  IPCRPC_RETURN_IF_ERROR(Configure(*frame, &call->context));
  call->request = StringToByteBuffer(frame->payload);
  {
    // From here a cancellation reaches it: a CANCEL through the table, or
    // WakeReader, which comes after the call is completed.
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) {
      return MarkNotDelivered(absl::UnavailableError(description() + ": closed"));
    }
    calls_[id] = call;
    here_.emplace_back(call.get(), &done);
  }
  if (done()) call->context.TryCancel();  // cancelled meanwhile: gRPC ends it at once
  const std::string name = absl::StrCat("/", Av(frame->name));
  const grpc::internal::RpcMethod* registered = RegisteredMethod(name);
  const grpc::internal::RpcMethod unregistered(name.c_str(),
                                               grpc::internal::RpcMethod::NORMAL_RPC);
  // On this thread, until gRPC's answer (a CANCEL from another thread
  // cancels it through the table, as for any call).
  const grpc::Status status = grpc::internal::BlockingUnaryCall(
      channel_.get(), registered != nullptr ? *registered : unregistered, &call->context,
      call->request, &call->response);
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::erase_if(here_, [&](const auto& entry) { return entry.first == call.get(); });
  }
  std::string payload;
  if (status.ok()) payload = ByteBufferToString(call->response);
  Finish(id, ResponseFromGrpc(id, status, call->context, payload, max_payload_), status,
         frame->header.deadline_ns, /*here=*/true);
  return absl::OkStatus();
}

void GrpcClientConnection::WakeReader() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [call, done] : here_) {
    if ((*done)()) call->context.TryCancel();
  }
}

void GrpcClientConnection::Close() {
  std::vector<std::shared_ptr<ClientCall>> calls;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    closed_ = true;
    for (auto& [id, call] : calls_) calls.push_back(call);
  }
  // The RPC layer goes once this returns (and PostClosed ran): nothing of
  // gRPC's threads may be inside it by then.
  StopDeliveringHere(/*wait=*/true);
  for (auto& call : calls) call->Cancel();
  calls.clear();
  // Every call's last act is to leave the table (and, for a unary one, to
  // finish its delivery); after that gRPC calls nothing of ours. Cancelled
  // calls end at once. A Close from inside a delivery (the RPC layer closed
  // the connection handling its frame) does not wait for that one.
  {
    // (They refer to this connection until then: no time limit.)
    const int mine = DeliveringHereOnThisThread() ? 1 : 0;
    // Then the delivery's Finish goes on after this returns: it keeps the
    // connection alive until it is done (the RPC layer may drop its own
    // reference as soon as it sees the close).
    if (mine == 1) KeepForDelivery(shared_from_this());
    std::unique_lock<std::mutex> lock(mu_);
    while (!done_.wait_for(lock, std::chrono::seconds(10),
                           [&] { return calls_.empty() && finishing_ <= mine; })) {
      IPCRPC_LOG(ERROR) << description() << ": " << calls_.size()
                        << " gRPC calls have not ended 10 s after their cancellation";
    }
  }
  PostClosed(io_, absl::CancelledError("connection closed"));
}

class GrpcConnector final : public Connector {
 public:
  GrpcConnector(Endpoint endpoint, GrpcAddress address, TransportOptions options,
                std::shared_ptr<grpc::ChannelCredentials> credentials)
      : endpoint_(std::move(endpoint)),
        address_(std::move(address)),
        options_(std::move(options)),
        credentials_(std::move(credentials)) {}

  absl::StatusOr<std::shared_ptr<Connection>> Connect(asio::io_context&,
                                                      int64_t deadline_ns) override {
    const TransportOptions::ConnectDeadline deadline = options_.ConnectDeadlineFor(deadline_ns);
    if (address_.is_unix) IPCRPC_RETURN_IF_ERROR(CheckUnixServer());
    const size_t max_payload = options_.max_message_size - kMaxFrameOverhead;
    grpc::ChannelArguments arguments;
    arguments.SetMaxReceiveMessageSize(static_cast<int>(std::min<size_t>(max_payload, INT32_MAX)));
    arguments.SetMaxSendMessageSize(static_cast<int>(std::min<size_t>(max_payload, INT32_MAX)));
    std::shared_ptr<grpc::Channel> channel =
        grpc::CreateCustomChannel(address_.target, credentials_, arguments);
    if (!channel->WaitForConnected(GrpcDeadline(deadline.ns))) {
      const bool by_call = MonotonicNowNs() >= deadline_ns;
      const std::string why = absl::StrCat(endpoint_.text, ": no gRPC server answered ",
                                           deadline.bound);
      return by_call ? absl::DeadlineExceededError(why) : absl::UnavailableError(why);
    }
    return std::make_shared<GrpcClientConnection>(std::move(channel), endpoint_.text,
                                                  max_payload);
  }
  const std::string& endpoint() const override { return endpoint_.text; }

 private:
  // grpc:unix:: who the server is, before gRPC sends it anything: the uid
  // of a probe connection's peer (SO_PEERCRED).
  absl::Status CheckUnixServer() const {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return absl::InternalError(absl::StrCat(endpoint_.text, ": socket failed"));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::copy(address_.path.begin(), address_.path.end(), addr.sun_path);
    ucred cred{};
    socklen_t length = sizeof(cred);
    const bool connected =
        ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0 &&
        ::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &length) == 0;
    const int error = errno;
    ::close(fd);
    if (!connected) {
      return absl::UnavailableError(absl::StrCat(endpoint_.text, ": no server listens there (",
                                                 std::strerror(error), ")"));
    }
    return options_.CheckServerUid(endpoint_.text, cred.uid, "SO_PEERCRED");
  }

  const Endpoint endpoint_;
  const GrpcAddress address_;
  const TransportOptions options_;
  const std::shared_ptr<grpc::ChannelCredentials> credentials_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Connector>> CreateGrpcConnector(const Endpoint& endpoint,
                                                               const TransportOptions& options) {
  // (KeepGrpcCallbackQueueAlive: at a connection's first call through
  // gRPC's callback API, StartCall. A process that makes only sync unary
  // calls never starts the callback queue's threads, which would otherwise
  // take every answer off the socket and hand it to the caller.)
  const bool tls = options.grpc_use_tls || !options.grpc_root_certificates_file.empty();
  IPCRPC_ASSIGN_OR_RETURN(GrpcAddress address,
                          ParseGrpcAddress(endpoint, tls, options.grpc_allow_plaintext_off_host));
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (tls) {
    grpc::SslCredentialsOptions ssl;
    if (!options.grpc_root_certificates_file.empty()) {
      IPCRPC_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPemFile(options.grpc_root_certificates_file,
                                                              "root_certificates_file"));
    }
    if (!options.grpc_certificate_chain_file.empty() || !options.grpc_private_key_file.empty()) {
      IPCRPC_ASSIGN_OR_RETURN(ssl.pem_cert_chain, ReadPemFile(options.grpc_certificate_chain_file,
                                                              "certificate_chain_file"));
      IPCRPC_ASSIGN_OR_RETURN(ssl.pem_private_key,
                              ReadPemFile(options.grpc_private_key_file, "private_key_file"));
    }
    credentials = grpc::SslCredentials(ssl);
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  return std::make_unique<GrpcConnector>(endpoint, std::move(address), options,
                                         std::move(credentials));
}

}  // namespace ipcrpc::internal
