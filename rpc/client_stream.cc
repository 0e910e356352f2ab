// The client's side of streams: a stream is a PendingCall with a
// ClientStreamState, in its connection's table like a unary call, so that
// whoever takes it out (the server's RESPONSE, Cancel, the deadline, the
// connection's loss, the channel's end) ends it, once.
//
// Messages from the server are queued by whoever reads the connection (the
// loop, or a sync caller reading its own response) and read by the owner of
// the stream; an async server stream's messages and its end are posted to
// the loop in order, so that `on_message` never runs after `done`.
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "asio/post.hpp"
#include "base/clock.h"
#include "base/copy.h"
#include "base/logging.h"
#include "base/status_macros.h"
#include "base/strings.h"
#include "ipcrpc/server_context.h"
#include "ipcrpc/stream.h"
#include "rpc/channel_core.h"
#include "wire/frame.h"
#include "rpc/server_call_state.h"

namespace ipcrpc {
namespace internal {
namespace {

// With call->mu held: what the reader has consumed and not granted back,
// if it is time to grant it (half the window, as HTTP/2 implementations
// do: one WINDOW per half window, not one per message). The grant counts
// as sent from here on.
int64_t TakeGrant(ClientStreamState& stream) {
  if (stream.consumed_ungranted < stream.window / 2) return 0;
  const int64_t grant = stream.consumed_ungranted;
  stream.consumed_ungranted = 0;
  stream.receive_limit += grant;
  return grant;
}

// Waits for a notification, or until the call's deadline. False once the
// deadline has passed.
bool WaitForProgress(PendingCall& call) ABSL_EXCLUSIVE_LOCKS_REQUIRED(call.mu) {
  if (call.deadline_ns == kNoDeadline) {
    call.cv.Wait(&call.mu);
    return true;
  }
  if (MonotonicNowNs() >= call.deadline_ns) return false;
  call.cv.WaitUntil(&call.mu, SteadyTimeOf(call.deadline_ns));
  return MonotonicNowNs() < call.deadline_ns;
}

}  // namespace

absl::Status ChannelCore::StartStream(const std::shared_ptr<PendingCall>& call,
                                      std::string_view method, const std::string_view* request,
                                      const CallOptions& options,
                                      absl::AnyInvocable<void(std::string_view)> on_message) {
  call->method = std::string(method);
  call->stream = std::make_unique<ClientStreamState>();
  ClientStreamState& stream = *call->stream;
  stream.window = ClampStreamWindow(options_.stream_window);
  stream.receive_limit = stream.window;
  stream.priority = options.priority;
  stream.writes_done = request != nullptr;
  stream.on_message = std::move(on_message);  // before anything can arrive
  stream.response_metadata = options.response_metadata;
  if (options.response_metadata != nullptr) options.response_metadata->clear();
  if (call->deadline_ns <= MonotonicNowNs()) return DeadlineExceeded(method);
  if (options.parent_call != nullptr && options.parent_call->IsCancelled()) {
    return absl::CancelledError(
        absl::StrCat("calling ", Av(method), ": the incoming call is cancelled"));
  }
  std::string head;
  PutLe(&head, static_cast<uint64_t>(stream.window), 4);
  const uint16_t flags =
      kFlagStream | (request != nullptr ? kFlagWithMessage | kFlagHalfClose : 0);
  const std::string_view request_bytes = request != nullptr ? *request : std::string_view();
  absl::Status started = StartCall(call, method, request_bytes, options, call->deadline_ns, flags,
                                   head);
  if (IsDeferConnect(started)) {
    // An async stream (call->defer_connect): the connect thread starts it.
    CallOptions kept = options;
    kept.response_metadata = nullptr;  // in the stream's state already
    kept.parent_call = nullptr;        // hooked below
    DeferredCall deferred;
    deferred.call = call;
    deferred.method = std::string(method);
    deferred.request = std::string(request_bytes);
    deferred.options = std::move(kept);
    deferred.flags = flags;
    deferred.head = std::move(head);
    Defer(std::move(deferred));
  } else if (!started.ok()) {
    return started;
  }
  if (options.parent_call != nullptr) {
    std::weak_ptr<PendingCall> weak = call;
    std::weak_ptr<ChannelCore> core = weak_from_this();
    options.parent_call->OnCancel([weak, core] {
      auto pending = weak.lock();
      auto self = core.lock();
      if (pending && self) self->Cancel(pending);
    });
  }
  return absl::OkStatus();
}

GenericClientStream ChannelCore::OpenStream(std::string_view method,
                                            const std::string_view* request,
                                            const CallOptions& options) {
  auto call = std::make_shared<PendingCall>(DeadlineOf(options), nullptr);
  GenericClientStream handle = Channel::Core::StreamHandle(*this, call);
  absl::Status started = StartStream(call, method, request, options);
  // Never started: its Finish says why.
  if (!started.ok()) Complete(call, std::move(started));
  return handle;
}

Call ChannelCore::CallServerStreamAsync(std::string_view method, std::string_view request,
                                        const CallOptions& options,
                                        absl::AnyInvocable<void(std::string_view)> on_message,
                                        absl::AnyInvocable<void(absl::Status) &&> done) {
  auto call = std::make_shared<PendingCall>(
      DeadlineOf(options), [done = std::move(done)](absl::StatusOr<std::string> result) mutable {
        std::move(done)(result.status());
      });
  if (auto* response_metadata = options.response_metadata; response_metadata != nullptr) {
    // Filled just before `done` runs (the call owns its callback, so the
    // raw pointer back to it is valid whenever that runs).
    call->callback = [response_metadata, raw = call.get(), done = std::move(call->callback)](
                         absl::StatusOr<std::string> result) mutable {
      *response_metadata = raw->response_metadata;
      std::move(done)(std::move(result));
    };
  }
  Call handle = Channel::Core::CallHandle(*this, call);
  // Connecting is the connect thread's, never the caller's (as CallAsync).
  call->defer_connect = true;
  absl::Status started = StartStream(call, method, &request, options, std::move(on_message));
  if (!started.ok()) {
    Complete(call, std::move(started));  // posted to the loop: never on this stack
    return handle;
  }
  if (call->deadline_ns != kNoDeadline) ArmTimer(call);
  return handle;
}

bool ChannelCore::SendStreamFrame(const std::shared_ptr<PendingCall>& call, FrameType type,
                                  std::string_view payload) {
  auto connection = call->connection.lock();
  if (connection == nullptr) return false;
  FrameHeader header;
  header.type = type;
  header.request_id = call->id;
  // The call's priority (fixed when it opened): on mq: every frame of a
  // stream must keep its place behind the REQUEST.
  header.priority = static_cast<uint8_t>(call->stream->priority);
  thread_local std::string prefix;
  if (!EncodeFramePrefix(header, "", {}, payload.size(), options_.max_message_size, &prefix)
           .ok()) {
    return false;
  }
  std::string_view parts[] = {prefix, payload};
  // Waiting for room (a server that does not read) ends at the call's
  // deadline, as for its REQUEST.
  absl::Status sent =
      connection->transport->SendWithin(parts, header.priority, call->deadline_ns);
  if (sent.ok()) return true;
  if (absl::IsDeadlineExceeded(sent) && IsNotDelivered(sent)) {
    // Nothing of it went out: the connection is whole; only this call ends.
    ExpireStream(call);
    return false;
  }
  // As StartCall: the connection is broken (or holds half a message); its
  // loss ends the other calls. A stream whose deadline passed comes out
  // first, so that it ends with its own status.
  connection->MarkLost(sent);
  const bool expired = absl::IsDeadlineExceeded(sent) &&
                       connection->Take(call->id, /*drain=*/true) != nullptr;
  connection->transport->Close();
  if (expired) Complete(call, DeadlineExceeded(call->method));
  return false;
}

void ChannelCore::SendGrant(const std::shared_ptr<PendingCall>& call, int64_t grant) {
  if (grant <= 0) return;
  std::string payload;
  PutLe(&payload, static_cast<uint64_t>(grant), 8);
  SendStreamFrame(call, FrameType::kWindow, payload);
}

void ChannelCore::ExpireStream(const std::shared_ptr<PendingCall>& call) {
  auto connection = call->connection.lock();
  if (connection == nullptr || connection->Take(call->id, /*drain=*/true) == nullptr) {
    // Somebody else took it and is completing it (perhaps blocked in a
    // send). An async call's completion never sets `done` (its callback
    // runs instead), and the loop must not wait for anyone: return.
    if (call->is_async || OnLoopThread()) return;
    // A sync caller waits for that, without spinning on a passed deadline.
    MutexLock lock(&call->mu);
    while (!call->done) call->cv.Wait(&call->mu);
    return;
  }
  SendCancel(connection, call->id, CancelKind::kExpiredByCaller);
  Complete(call, DeadlineExceeded(call->method));
}

bool ChannelCore::StreamWrite(const std::shared_ptr<PendingCall>& call,
                              std::string_view message) {
  ClientStreamState& stream = *call->stream;
  if (message.size() > options_.max_message_size) {
    // The call ends: the server must not see a stream with a hole in it.
    auto connection = call->connection.lock();
    if (connection != nullptr && connection->Take(call->id, /*drain=*/true) != nullptr) {
      SendCancel(connection, call->id, CancelKind::kMustArrive);
      Complete(call, absl::ResourceExhaustedError(absl::StrCat(
                         call->method, ": stream message of ", message.size(),
                         " bytes exceeds ChannelOptions::max_message_size ",
                         options_.max_message_size)));
    }
    return false;
  }
  std::lock_guard<std::mutex> send_lock(stream.send_mu);
  {
    ReleasableMutexLock lock(&call->mu);
    for (;;) {
      if (call->done || stream.writes_done) return false;
      // Room while anything of the window is left (the message may use
      // more than what is left: a writer never waits for room that a
      // large message could never get).
      if (stream.sent < stream.send_limit) break;
      if (!WaitForProgress(*call)) {
        lock.Unlock();
        ExpireStream(call);
        return false;
      }
    }
    stream.sent += StreamCost(message.size());
  }
  return SendStreamFrame(call, FrameType::kMessage, message);
}

bool ChannelCore::StreamWritesDone(const std::shared_ptr<PendingCall>& call) {
  std::lock_guard<std::mutex> send_lock(call->stream->send_mu);
  {
    MutexLock lock(&call->mu);
    if (call->done) return false;
    if (call->stream->writes_done) return true;
    call->stream->writes_done = true;
  }
  return SendStreamFrame(call, FrameType::kHalfClose, "");
}

bool ChannelCore::StreamRead(const std::shared_ptr<PendingCall>& call, std::string* message) {
  ClientStreamState& stream = *call->stream;
  ReleasableMutexLock lock(&call->mu);
  for (;;) {
    if (!stream.inbox.empty() && (!call->done || stream.ended_by_server)) {
      message->swap(stream.inbox.front());
      stream.inbox.pop_front();
      stream.consumed_ungranted += StreamCost(message->size());
      const int64_t grant = call->done ? 0 : TakeGrant(stream);
      lock.Unlock();
      SendGrant(call, grant);
      return true;
    }
    if (call->done) return false;
    if (!WaitForProgress(*call)) {
      lock.Unlock();
      ExpireStream(call);
      lock.Lock();
    }
  }
}

absl::Status ChannelCore::StreamFinish(const std::shared_ptr<PendingCall>& call) {
  StreamWritesDone(call);
  ClientStreamState& stream = *call->stream;
  int64_t grant = 0;
  {
    MutexLock lock(&call->mu);
    // What is not read is dropped, and granted back, so that a server
    // blocked on its window can finish.
    stream.discard = true;
    for (const std::string& unread : stream.inbox) {
      stream.consumed_ungranted += StreamCost(unread.size());
    }
    stream.inbox.clear();
    if (!call->done && stream.consumed_ungranted > 0) {
      grant = stream.consumed_ungranted;
      stream.consumed_ungranted = 0;
      stream.receive_limit += grant;
    }
  }
  SendGrant(call, grant);
  ReleasableMutexLock lock(&call->mu);
  while (!call->done) {
    if (!WaitForProgress(*call)) {
      lock.Unlock();
      ExpireStream(call);
      lock.Lock();
    }
  }
  if (stream.response_metadata != nullptr) *stream.response_metadata = call->response_metadata;
  return call->result->status();
}

void ChannelCore::OnStreamFrame(const std::shared_ptr<ClientConnection>& connection,
                                const FrameView& frame) {
  auto call = connection->Find(frame.header.request_id);
  if (call == nullptr) {
    // The stream ended here first (cancelled, expired): what the server
    // sent before it saw that is dropped.
    if (!connection->IsDraining(frame.header.request_id)) {
      late_responses_.fetch_add(1, std::memory_order_relaxed);
    }
    return;
  }
  if (call->stream == nullptr) {
    IPCRPC_LOG(WARNING) << connection->transport->description()
                        << ": closing the connection: the server sent a "
                        << FrameTypeName(frame.header.type) << " frame for unary call "
                        << frame.header.request_id;
    connection->transport->Close();
    return;
  }
  ClientStreamState& stream = *call->stream;
  if (frame.header.type == FrameType::kWindow) {
    {
      MutexLock lock(&call->mu);
      stream.send_limit += static_cast<int64_t>(GetLe(frame.payload.data(), 8));
    }
    call->cv.SignalAll();
    return;
  }
  const int64_t cost = StreamCost(frame.payload.size());
  int64_t grant = 0;
  bool deliver = false;
  bool over_window = false;
  {
    MutexLock lock(&call->mu);
    over_window = stream.received >= stream.receive_limit;
    if (!over_window) stream.received += cost;
    if (over_window) {
      // Closed below, outside the lock (the loss completes this call).
    } else if (stream.discard) {
      stream.consumed_ungranted += cost;
      grant = TakeGrant(stream);
    } else if (call->is_async) {
      deliver = true;
    } else {
      stream.inbox.emplace_back(frame.payload);
    }
  }
  if (over_window) {
    // The server had no window left: it does not follow the protocol.
    IPCRPC_LOG(WARNING) << connection->transport->description()
                        << ": closing the connection: the server sent past the window of "
                        << call->method;
    connection->transport->Close();
    return;
  }
  if (deliver) {
    // Through the loop, in order with the call's end (also posted): never
    // after `done`, always on the response thread.
    asio::post(io_, [this, call, message = StringOf(frame.payload), cost] {
      if (call->callback && call->stream->on_message) call->stream->on_message(message);
      int64_t granted = 0;
      {
        MutexLock lock(&call->mu);
        call->stream->consumed_ungranted += cost;
        granted = TakeGrant(*call->stream);
      }
      if (call->callback) SendGrant(call, granted);
    });
    return;
  }
  if (grant == 0) {
    call->cv.SignalAll();
  } else {
    SendGrant(call, grant);
  }
}

}  // namespace internal

// ------------------------------------------------------- GenericClientStream

GenericClientStream& GenericClientStream::operator=(GenericClientStream&& other) noexcept {
  if (this != &other) {
    if (call_ != nullptr && !finished_) core_->Cancel(call_);
    core_ = std::move(other.core_);
    call_ = std::move(other.call_);
    finished_ = other.finished_;
  }
  return *this;
}

GenericClientStream::~GenericClientStream() {
  if (call_ != nullptr && !finished_) core_->Cancel(call_);
}

bool GenericClientStream::Write(std::string_view message) {
  return call_ != nullptr && core_->StreamWrite(call_, message);
}

bool GenericClientStream::WritesDone() {
  return call_ != nullptr && core_->StreamWritesDone(call_);
}

bool GenericClientStream::Read(std::string* message) {
  return call_ != nullptr && core_->StreamRead(call_, message);
}

absl::Status GenericClientStream::Finish() {
  if (call_ == nullptr) return absl::FailedPreconditionError("Finish on an empty stream object");
  absl::Status status = core_->StreamFinish(call_);
  finished_ = true;
  return status;
}

void GenericClientStream::Cancel() {
  if (call_ != nullptr) core_->Cancel(call_);
}

}  // namespace ipcrpc
