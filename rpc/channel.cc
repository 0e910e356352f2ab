#include <algorithm>
#include <chrono>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "asio/post.hpp"
#include "base/clock.h"
#include "base/copy.h"
#include "base/logging.h"
#include "base/syscall.h"
#include "base/status_macros.h"
#include "base/strings.h"
#include "ipcrpc/body_writer.h"
#include "ipcrpc/channel.h"
#include "ipcrpc/scratch.h"
#include "ipcrpc/server_context.h"
#include "rpc/channel_core.h"
#include "wire/frame.h"
#include "wire/status_details.h"
#include "rpc/server_call_state.h"
#include "base/mutex.h"

namespace ipcrpc {
namespace internal {
namespace {

// StartCall's answer to an async call that would have to connect: the call
// goes to the connect thread instead (ChannelCore::Defer).
constexpr char kDeferConnectPayload[] = "ipcrpc.internal/defer-connect";

absl::Status DeferConnect() {
  absl::Status status = absl::UnavailableError("connecting: deferred to the connect thread");
  status.SetPayload(kDeferConnectPayload, absl::Cord("1"));
  return status;
}

thread_local uint64_t calls_started_on_this_thread = 0;

TransportOptions ToTransportOptions(const ChannelOptions& options) {
  TransportOptions transport;
  // The transport carries whole frames: payload plus header, name, metadata.
  transport.max_message_size = options.max_message_size + kMaxFrameOverhead;
  transport.mode = options.mode;
  transport.child_exit_grace = options.child_exit_grace;
  transport.shm_ring_size = options.shm_ring_size;
  transport.mq_reply_queue_messages = options.mq_reply_queue_messages;
  transport.mq_reply_message_size = static_cast<long>(
      std::min<size_t>(options.mq_reply_message_size, size_t{1} << 30));
  transport.allowed_server_uids = options.allowed_server_uids;
  transport.connect_timeout = options.connect_timeout;
  transport.grpc_certificate_chain_file = options.grpc.certificate_chain_file;
  transport.grpc_private_key_file = options.grpc.private_key_file;
  transport.grpc_root_certificates_file = options.grpc.root_certificates_file;
  transport.grpc_use_tls = options.grpc.use_tls;
  transport.grpc_allow_plaintext_off_host = options.grpc.allow_plaintext_off_host;
  return transport;
}

}  // namespace

bool IsDeferConnect(const absl::Status& status) {
  return !status.ok() && status.GetPayload(kDeferConnectPayload).has_value();
}

uint64_t CallsStartedOnThisThread() { return calls_started_on_this_thread; }

int64_t DeadlineOf(const CallOptions& options) {
  int64_t from_timeout = AddDurationNs(MonotonicNowNs(), options.timeout);
  int64_t from_deadline = WallToMonotonicNs(options.deadline);
  return std::min(from_timeout, from_deadline);
}


absl::Status DeadlineExceeded(std::string_view method) {
  return absl::DeadlineExceededError(absl::StrCat("deadline exceeded calling ", Av(method)));
}


// ------------------------------------------------------------ ClientConnection

bool ClientConnection::Insert(const std::shared_ptr<PendingCall>& call, absl::Status* why) {
  MutexLock lock(&mu_);
  if (!lost_.ok()) {
    *why = absl::UnavailableError(absl::StrCat(transport->description(), ": ", lost_.message()));
    return false;
  }
  pending_.emplace(call->id, call);
  return true;
}

std::shared_ptr<PendingCall> ClientConnection::Take(uint64_t id, bool drain, bool expect_late) {
  const int64_t late_until = expect_late ? MonotonicNowNs() + kLateResponseWindowNs : 0;
  MutexLock lock(&mu_);
  auto it = pending_.find(id);
  if (it == pending_.end()) return nullptr;
  std::shared_ptr<PendingCall> call = std::move(it->second);
  pending_.erase(it);
  // In the same step, so that HasPending never reads false in between.
  if (drain && lost_.ok()) draining_streams_.insert(id);
  if (expect_late && lost_.ok()) late_until_ns_ = late_until;
  return call;
}

bool ClientConnection::EndDraining(uint64_t id) {
  MutexLock lock(&mu_);
  return draining_streams_.erase(id) > 0;
}

bool ClientConnection::IsDraining(uint64_t id) {
  MutexLock lock(&mu_);
  return draining_streams_.contains(id);
}

std::shared_ptr<PendingCall> ClientConnection::Find(uint64_t id) {
  MutexLock lock(&mu_);
  auto it = pending_.find(id);
  return it == pending_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<PendingCall>> ClientConnection::TakeAll(absl::Status reason) {
  std::vector<std::shared_ptr<PendingCall>> calls;
  MutexLock lock(&mu_);
  if (lost_.ok()) lost_ = std::move(reason);
  calls.reserve(pending_.size());
  for (auto& [id, call] : pending_) calls.push_back(std::move(call));
  pending_.clear();
  draining_streams_.clear();
  return calls;
}

void ClientConnection::MarkLost(absl::Status reason) {
  MutexLock lock(&mu_);
  if (lost_.ok()) lost_ = std::move(reason);
}

void ClientConnection::Drain() {
  MutexLock lock(&mu_);
  draining_ = true;
}

bool ClientConnection::Lost() {
  MutexLock lock(&mu_);
  return !lost_.ok();
}

bool ClientConnection::HasPending() {
  MutexLock lock(&mu_);
  if (!pending_.empty() || !draining_streams_.empty()) return true;
  if (late_until_ns_ == 0) return false;
  if (MonotonicNowNs() < late_until_ns_) return true;
  late_until_ns_ = 0;
  return false;
}

bool ClientConnection::Usable() {
  MutexLock lock(&mu_);
  return lost_.ok() && !draining_;
}

// ----------------------------------------------------------------- ChannelCore

ChannelCore::ChannelCore(std::unique_ptr<Connector> connector, const ChannelOptions& options)
    : connector_(std::move(connector)), options_(options) {}

ChannelCore::~ChannelCore() {
  if (loop_thread_.joinable()) loop_thread_.join();
}

absl::Status ChannelCore::Start() {
  work_.emplace(asio::make_work_guard(io_));
  // The thread keeps the core alive until its loop ends, so Shutdown may
  // run on the loop thread itself (a callback dropping the last reference).
  loop_thread_ = std::thread([self = shared_from_this()] {
    BeginOwnThread("ipcrpc-channel");
    RequestShortTimeSlice();  // timers and responses wake it: its lateness is the calls'
    self->loop_thread_id_.store(std::this_thread::get_id());
    self->io_.run();
  });
  auto connection = GetConnection(kNoDeadline);
  if (!connection.ok()) {
    Shutdown();
    return connection.status();
  }
  return absl::OkStatus();
}

void ChannelCore::Shutdown() {
  std::vector<std::shared_ptr<ClientConnection>> connections;
  {
    MutexLock lock(&connect_mu_);
    if (shut_down_) return;
    shut_down_ = true;
    // A connect in progress (bounded by connect_timeout) ends first: the
    // connector is not used from two threads at once.
    connect_mu_.Await(Condition(+[](bool* connecting) { return !*connecting; }, &connecting_));
    for (auto& weak : connections_) {
      if (auto connection = weak.lock()) connections.push_back(std::move(connection));
    }
    connections_.clear();
    current_.reset();
  }
  for (auto& connection : connections) {
    for (auto& call : connection->TakeAll(absl::CancelledError("channel destroyed"))) {
      Complete(call, absl::CancelledError(absl::StrCat("channel to ", endpoint(),
                                                       " destroyed with the call pending")));
    }
    connection->transport->Close();
  }
  // The connect thread ends the calls it still holds (the channel is shut
  // down) before the loop, which runs their callbacks, goes.
  std::thread deferred;
  {
    MutexLock lock(&deferred_mu_);
    deferred_closed_ = true;
    deferred = std::move(deferred_thread_);
  }
  if (deferred.joinable()) deferred.join();
  connector_->Shutdown();
  // CANCELs still waiting for room go with their connections (closed above).
  asio::post(io_, [this] {
    cancels_stopped_ = true;
    unsent_cancels_.clear();
    if (cancel_retry_.has_value()) cancel_retry_->cancel();
  });
  work_.reset();
  if (OnLoopThread()) {
    loop_thread_.detach();  // the loop ends once its last handler returns
  } else if (loop_thread_.joinable()) {
    loop_thread_.join();
  }
}

absl::StatusOr<std::shared_ptr<ClientConnection>> ChannelCore::GetConnection(int64_t deadline_ns) {
  connect_mu_.Lock();
  for (;;) {
    if (shut_down_) {
      connect_mu_.Unlock();
      return absl::CancelledError(absl::StrCat("channel to ", endpoint(), " is shut down"));
    }
    if (current_ != nullptr && current_->Usable()) {
      std::shared_ptr<ClientConnection> current = current_;
      connect_mu_.Unlock();
      return current;
    }
    if (!connecting_) break;
    // Another caller is connecting: wait for it, never past our own
    // deadline (its connect may wait for a server that does not answer).
    const bool settled = connect_mu_.AwaitWithTimeout(
        Condition(+[](bool* connecting) { return !*connecting; }, &connecting_),
        RemainingUntil(deadline_ns));
    if (!settled) {
      connect_mu_.Unlock();
      return absl::DeadlineExceededError(absl::StrCat(
          "the deadline passed while another call was connecting to ", endpoint()));
    }
  }
  connecting_ = true;
  connect_mu_.Unlock();
  // Outside the lock: a handshake may wait (up to connect_timeout, or this
  // call's deadline), and other callers must not wait past theirs.
  absl::StatusOr<std::shared_ptr<ClientConnection>> made = Connect(deadline_ns);
  connect_mu_.Lock();
  connecting_ = false;
  if (made.ok() && shut_down_) {
    (*made)->transport->Close();
    made = absl::CancelledError(absl::StrCat("channel to ", endpoint(), " is shut down"));
  } else if (made.ok()) {
    std::erase_if(connections_, [](const std::weak_ptr<ClientConnection>& weak) {
      return weak.expired();
    });
    connections_.push_back(*made);
    current_ = *made;
  }
  connect_mu_.Unlock();  // wakes the callers that waited for this connect
  return made;
}

absl::StatusOr<std::shared_ptr<ClientConnection>> ChannelCore::Connect(int64_t deadline_ns) {
  IPCRPC_ASSIGN_OR_RETURN(std::shared_ptr<Connection> transport,
                          connector_->Connect(io_, deadline_ns));
  auto connection = std::make_shared<ClientConnection>(transport);
  connects_.fetch_add(1, std::memory_order_relaxed);
  // The loop reads only while a call waits for a response; a sync caller
  // reads its own (CallSync).
  std::weak_ptr<ClientConnection> weak_connection = connection;
  transport->SetLoopReadPolicy([weak_connection] {
    auto alive = weak_connection.lock();
    return alive != nullptr && alive->HasPending();
  });
  // Handlers run on the loop, which runs only while this core is alive.
  transport->Start(
      io_,
      [this, connection](std::string_view message) { OnMessage(connection, message); },
      [this, connection](absl::Status reason) { OnClosed(connection, std::move(reason)); });
  std::string hello;
  FrameHeader header;
  header.type = FrameType::kHello;
  IPCRPC_RETURN_IF_ERROR(EncodeFramePrefix(header, "", {}, 0, 0, &hello));
  std::string_view parts[] = {hello};
  absl::Status sent = transport->Send(parts, 0);
  if (!sent.ok()) {
    transport->Close();
    return sent;
  }
  return connection;
}

absl::Status ChannelCore::StartCall(const std::shared_ptr<PendingCall>& call,
                                    std::string_view method, std::string_view request,
                                    const CallOptions& options, int64_t deadline_ns,
                                    uint16_t flags, std::string_view head,
                                    const BodyWriter* body) {
  calls_started_.fetch_add(1, std::memory_order_relaxed);
  ++calls_started_on_this_thread;
  FrameHeader header;
  header.type = FrameType::kRequest;
  header.flags = flags;
  header.deadline_ns = deadline_ns;
  if (options.priority < 0 || options.priority > kMaxPriority) {
    return absl::InvalidArgumentError(absl::StrCat("CallOptions::priority ", options.priority,
                                                   " is outside 0..", kMaxPriority));
  }
  header.priority = static_cast<uint8_t>(options.priority);
  if (method.empty()) return absl::InvalidArgumentError("empty method name");
  // Encode before connecting so that a bad call costs no connection; the
  // request id is patched in below.
  // The prefix is encoded into this thread's buffer (Send returns once it is
  // written), so a warm call allocates nothing for it.
  thread_local std::string prefix;
  IPCRPC_RETURN_IF_ERROR(EncodeFramePrefix(header, method, options.metadata,
                                           head.size() + (body != nullptr ? body->size()
                                                                          : request.size()),
                                           options_.max_message_size + head.size(), &prefix));
  // A connect inside a call ends by the call's deadline too: then the call
  // says DEADLINE_EXCEEDED, with the connect's reason.
  auto connect = [&]() -> absl::StatusOr<std::shared_ptr<ClientConnection>> {
    if (call->defer_connect) return ConnectionOrDefer();
    absl::StatusOr<std::shared_ptr<ClientConnection>> connection = GetConnection(deadline_ns);
    if (!connection.ok() && (absl::IsDeadlineExceeded(connection.status()) ||
                             MonotonicNowNs() >= deadline_ns)) {
      return absl::DeadlineExceededError(absl::StrCat("deadline exceeded calling ", Av(method),
                                                      ": ", connection.status().message()));
    }
    return connection;
  };
  for (int attempt = 0;; ++attempt) {
    IPCRPC_ASSIGN_OR_RETURN(std::shared_ptr<ClientConnection> connection, connect());
    // Nobody may have read this connection since its last call: deliver
    // what came meanwhile (a GOAWAY, the server's EOF), so that a connection
    // the server has left is replaced before the request goes out. One
    // read(2), or nothing when the loop (or another caller) is reading
    // anyway, or on shm (a flag). Not needed by a sync call where a send to
    // a server that left fails with nothing sent (streams: EPIPE; the call
    // then goes again, below) and a draining server refuses the call
    // (kFlagRefused: CallSync sends it again). Not on the loop's own thread
    // (a call made from an async callback): there what it delivers would run
    // other calls' callbacks inside this one, and a call they make would
    // overwrite this thread's prefix before it is sent.
    // (On mq a sync call makes it and stays within raw + 2: its caller
    // then waits and receives in one mq_timedreceive. Skipping it when the
    // server was heard from recently was tried and not kept: a server that
    // says GOAWAY and closes in that window, as an idle one shutting down
    // does, would fail the next call UNAVAILABLE instead of letting it go
    // to its successor.)
    const bool probe = !OnLoopThread() &&
                       (call->is_async || !connection->transport->SendSeesPeerLeave());
    if ((probe && connection->transport->ReadUntil(0, [] { return false; }) ==
                      Connection::ReadResult::kClosed) ||
        !connection->Usable()) {
      connection->MarkLost(absl::UnavailableError("connection closed"));
      IPCRPC_ASSIGN_OR_RETURN(connection, connect());
    }
    call->SetWhere(connection->next_id.fetch_add(1, std::memory_order_relaxed), connection);
    SetFrameRequestId(call->id, &prefix);
    absl::Status why;
    if (!connection->Insert(call, &why)) return why;
    if (!call->is_async && call->stream == nullptr && head.empty() &&
        connection->transport->CallsHere()) {
      // The caller makes the exchange on its own thread (CallSync), once a
      // parent's cancellation can reach the call.
      call->here_request.assign(prefix);
      if (body != nullptr) {
        call->here_request.resize(prefix.size() + body->size());
        body->WriteFlat(call->here_request.data() + prefix.size());
      } else {
        AppendBytes(&call->here_request, request);
      }
      return absl::OkStatus();
    }
    // A unary call has no head: two parts, as before streams (an empty part
    // is no use to anyone, and its data() may be null).
    std::string_view stream_parts[] = {prefix, head, request};
    std::string_view unary_parts[] = {prefix, request};
    // Waiting for room (a server that does not read) ends at the deadline.
    // A body (a sync unary call's large request) is serialized by the
    // transport, where it says: straight into an shm: ring.
    absl::Status sent =
        body != nullptr
            ? connection->transport->SendBodyWithin(absl::MakeConstSpan(unary_parts, 1), *body,
                                                    options.priority, deadline_ns)
            : connection->transport->SendWithin(
                  head.empty() ? absl::Span<const std::string_view>(unary_parts)
                               : absl::Span<const std::string_view>(stream_parts),
                  options.priority, deadline_ns);
    if (absl::IsDeadlineExceeded(sent) && IsNotDelivered(sent)) {
      // Nothing of it went out by the deadline (the server took nothing, or
      // another send held the connection): the connection is whole, and
      // another caller's send may be in the middle of a message on it; only
      // this call ends.
      if (connection->Take(call->id) != nullptr) return DeadlineExceeded(method);
      return absl::OkStatus();  // whoever took it completes it
    }
    if (absl::IsResourceExhausted(sent) && IsNotDelivered(sent)) {
      // Nothing went out (no memory to serialize a body): the connection
      // is whole; only this call ends.
      if (connection->Take(call->id) != nullptr) return WithoutDeliveryMark(std::move(sent));
      return absl::OkStatus();
    }
    if (!sent.ok()) {
      // The connection is broken even if its loop has not seen it yet: the
      // next call must not pick it again. The call comes out before the
      // Close, whose loss would otherwise complete it first.
      connection->MarkLost(sent);
      const bool taken = connection->Take(call->id) != nullptr;
      connection->transport->Close();
      if (taken) {
        if (absl::IsDeadlineExceeded(sent)) return DeadlineExceeded(method);
        // The body came out another size than it said: the caller's
        // request changed while it was sent.
        if (body != nullptr && absl::IsInternal(sent)) return sent;
        // Nothing went out (the server left while the connection was
        // idle): once more, on a new connection.
        if (IsNotDelivered(sent) && attempt == 0) continue;
        sent = WithoutDeliveryMark(std::move(sent));
        if (absl::IsUnavailable(sent)) return sent;
        return absl::UnavailableError(sent.message());
      }
    }
    // A sync caller reads its response itself; for an async call, somebody
    // must be reading.
    if (sent.ok() && (call->is_async || call->stream != nullptr)) {
      connection->transport->EnsureReader();
    }
    // Either sent, or the connection's loss completes the call.
    return absl::OkStatus();
  }
}

void ChannelCore::Complete(const std::shared_ptr<PendingCall>& call,
                           absl::StatusOr<std::string> result) {
  if (call->stream != nullptr) {
    MutexLock lock(&call->mu);
    // Unless the server ended it, an ended stream reads nothing more.
    if (!call->stream->ended_by_server) call->stream->inbox.clear();
  }
  if (!call->is_async) {
    {
      MutexLock lock(&call->mu);
      call->result.emplace(std::move(result));
      call->done = true;
      call->completed.store(true, std::memory_order_release);
    }
    // After unlocking, so the waiter does not wake into a held mutex; `call`
    // is shared, so the condition variable outlives the waiter's return.
    call->cv.SignalAll();
    return;
  }
  auto run = [call](absl::StatusOr<std::string> value) {
    if (call->timer.has_value()) call->timer->cancel();
    if (call->callback) {
      PendingCall::Callback callback = std::move(call->callback);
      call->callback = nullptr;
      std::move(callback)(std::move(value));
    }
  };
  // An async stream's end is always posted: its messages are, and `done`
  // must come after every one of them.
  if (OnLoopThread() && call->stream == nullptr) {
    run(std::move(result));
  } else {
    asio::post(io_, [run, result = std::move(result)]() mutable { run(std::move(result)); });
  }
}

bool ChannelCore::TrySendCancel(ClientConnection& connection, uint64_t id) {
  FrameHeader header;
  header.type = FrameType::kCancel;
  header.request_id = id;
  std::string frame;
  if (!EncodeFramePrefix(header, "", {}, 0, 0, &frame).ok()) return true;
  std::string_view parts[] = {frame};
  // A send that fails is as good as sent: if the connection is gone, so is
  // the call on the server.
  absl::Status sent;
  return connection.transport->TrySend(parts, 0, &sent);
}

void ChannelCore::SendCancel(const std::shared_ptr<ClientConnection>& connection, uint64_t id,
                             CancelKind kind) {
  switch (kind) {
    case CancelKind::kExpiredOnLoop:
      if (!TrySendCancel(*connection, id)) {
        cancels_not_sent_.fetch_add(1, std::memory_order_relaxed);
      }
      return;
    case CancelKind::kExpiredByCaller:
      // Weak: a post after Shutdown never runs, and must not keep the
      // connection until the io_context goes.
      asio::post(io_, [this, weak = std::weak_ptr<ClientConnection>(connection), id] {
        if (auto alive = weak.lock()) SendCancel(alive, id, CancelKind::kExpiredOnLoop);
      });
      return;
    case CancelKind::kMustArrive:
      if (TrySendCancel(*connection, id)) return;
      if (OnLoopThread()) {
        QueueCancel(connection, id);
      } else {
        asio::post(io_, [this, weak = std::weak_ptr<ClientConnection>(connection), id] {
          QueueCancel(weak, id);
        });
      }
      return;
  }
}

void ChannelCore::QueueCancel(std::weak_ptr<ClientConnection> connection, uint64_t id) {
  if (cancels_stopped_) return;
  unsent_cancels_.push_back(UnsentCancel{std::move(connection), id, MonotonicNowNs()});
  if (unsent_cancels_.size() > 1) return;  // a retry is armed already
  cancel_backoff_ns_ = 1'000'000;
  RetryCancels();
}

void ChannelCore::RetryCancels() {
  cancel_retry_.emplace(io_, std::chrono::nanoseconds(cancel_backoff_ns_));
  cancel_retry_->async_wait([this](const asio::error_code& ec) {
    if (ec || cancels_stopped_) return;
    // In order. A connection that declined one keeps the rest of its own
    // for the next round (they would find no room either), in order.
    std::deque<UnsentCancel> left;
    std::vector<ClientConnection*> declined;
    const int64_t now = MonotonicNowNs();
    for (UnsentCancel& unsent : unsent_cancels_) {
      auto connection = unsent.connection.lock();
      if (connection == nullptr || connection->Lost()) continue;  // gone: so is the call
      if (std::find(declined.begin(), declined.end(), connection.get()) != declined.end()) {
        left.push_back(std::move(unsent));
        continue;
      }
      if (TrySendCancel(*connection, unsent.id)) continue;
      if (now - unsent.queued_ns >= kCancelGiveUpNs) {
        // A server that takes not even a CANCEL for this long reads nothing:
        // the connection ends, which cancels every call on it there.
        IPCRPC_LOG(WARNING) << connection->transport->description()
                            << ": closing the connection: the server took no CANCEL for "
                            << (now - unsent.queued_ns) / 1'000'000 << " ms";
        connection->MarkLost(absl::UnavailableError("the server took no CANCEL"));
        connection->transport->Close();
        continue;
      }
      declined.push_back(connection.get());
      left.push_back(std::move(unsent));
    }
    unsent_cancels_ = std::move(left);
    if (unsent_cancels_.empty()) return;
    cancel_backoff_ns_ = std::min<int64_t>(cancel_backoff_ns_ * 2, 100'000'000);
    RetryCancels();
  });
}

namespace {

// Runs a CallMethodView callback: INTERNAL if it throws.
absl::Status HandOver(absl::FunctionRef<void(std::string_view)> view, std::string_view response) {
  try {
    view(response);
  } catch (...) {
    return absl::InternalError("the response callback threw an exception");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> ChannelCore::CallSync(std::string_view method,
                                                  std::string_view request,
                                                  const CallOptions& options,
                                                  std::string* sink,
                                                  const absl::FunctionRef<void(std::string_view)>* view,
                                                  const BodyWriter* body) {
  // The caller may read the connection itself and, when it stops, post to
  // this core's loop: the core must outlive that, even if the Channel is
  // dropped meanwhile on another thread.
  const std::shared_ptr<ChannelCore> keep_alive = shared_from_this();
  const int64_t deadline_ns = DeadlineOf(options);
  if (options.response_metadata != nullptr) options.response_metadata->clear();
  if (deadline_ns <= MonotonicNowNs()) return DeadlineExceeded(method);
  // This thread's last PendingCall is reused if nobody else holds it any
  // more (the table let go; a completer may still hold it for a moment).
  // Not with a parent call: its cancellation holds a weak reference that
  // could reach the next call.
  thread_local std::shared_ptr<PendingCall> spare;
  std::shared_ptr<PendingCall> call;
  if (options.parent_call == nullptr && spare != nullptr && spare.use_count() == 1) {
    call = std::move(spare);
    call->Reuse(deadline_ns);
  } else {
    call = std::make_shared<PendingCall>(deadline_ns, nullptr);
  }
  call->sink = sink;
  call->view = view;
  call->view_thread = std::this_thread::get_id();
  absl::Cleanup keep_spare = [&] {
    if (options.parent_call == nullptr) spare = call;
  };
  if (options.parent_call != nullptr) {
    if (options.parent_call->IsCancelled()) {
      return absl::CancelledError(absl::StrCat("calling ", Av(method), ": the incoming call is cancelled"));
    }
  }
  for (int attempt = 0;; ++attempt) {
    IPCRPC_RETURN_IF_ERROR(StartCall(call, method, request, options, deadline_ns, 0, {}, body));
    if (options.parent_call != nullptr) {
      std::weak_ptr<PendingCall> weak = call;
      std::weak_ptr<ChannelCore> core = weak_from_this();
      options.parent_call->OnCancel([weak, core] {
        auto pending = weak.lock();
        auto self = core.lock();
        if (pending && self) self->Cancel(pending);
      });
    }
    // Read the response on this thread if nobody else reads the connection:
    // no hand-off from a response thread. Whatever the outcome (done, the
    // deadline, another reader, the connection's end) the wait below sees it.
    // On a transport that answers on threads of its own (grpc:), the whole
    // exchange is made here instead.
    if (auto connection = call->connection.lock()) {
      auto done = [&call] { return call->completed.load(std::memory_order_acquire); };
      if (!call->here_request.empty()) {
        const std::string request_frame = std::move(call->here_request);
        call->here_request.clear();
        absl::Status sent = connection->transport->CallHere(request_frame, done);
        if (!sent.ok() && connection->Take(call->id) != nullptr) {
          // Not made: as a failed send in StartCall. Nothing went out over
          // a connection that is closing: once more, on a new one.
          if (IsNotDelivered(sent)) {
            connection->MarkLost(sent);
            if (attempt == 0) continue;
          }
          return WithoutDeliveryMark(std::move(sent));
        }
      } else {
        connection->transport->ReadUntil(deadline_ns, done);
      }
    }
    ReleasableMutexLock lock(&call->mu);
    if (deadline_ns == kNoDeadline) {
      while (!call->done) call->cv.Wait(&call->mu);
    } else {
      const auto deadline = SteadyTimeOf(deadline_ns);
      bool in_time = true;
      while (!call->done && in_time) in_time = call->cv.WaitUntil(&call->mu, deadline);
    }
    if (!call->done) {
      lock.Unlock();
      if (auto connection = call->connection.lock()) {
        if (connection->Take(call->id, /*drain=*/false, /*expect_late=*/true) != nullptr) {
          SendCancel(connection, call->id, CancelKind::kExpiredByCaller);
          return DeadlineExceeded(method);
        }
      }
      // Someone else took it out and is completing it now.
      lock.Lock();
      while (!call->done) call->cv.Wait(&call->mu);
    }
    if (call->result->ok() || !IsNotDelivered(call->result->status())) {
      if (options.response_metadata != nullptr) {
        *options.response_metadata = std::move(call->response_metadata);
      }
      if (view != nullptr && call->result->ok() && !call->viewed) {
        // Read by another thread, copied: handed over here, on the caller's.
        const std::string response = std::move(**call->result);
        lock.Unlock();
        IPCRPC_RETURN_IF_ERROR(HandOver(*view, response));
        return std::string();
      }
      return std::move(*call->result);
    }
    // The server refused the call without starting it (it is leaving): once
    // more, on a new connection, within the same deadline.
    absl::Status refused = WithoutDeliveryMark(call->result->status());
    if (attempt > 0 || MonotonicNowNs() >= deadline_ns) return refused;
    lock.Unlock();
    call = std::make_shared<PendingCall>(deadline_ns, nullptr);
    call->sink = sink;
    call->view = view;
    call->view_thread = std::this_thread::get_id();
  }
}

Call ChannelCore::CallAsync(std::string_view method, std::string_view request,
                            const CallOptions& options, PendingCall::Callback done) {
  const int64_t deadline_ns = DeadlineOf(options);
  auto call = std::make_shared<PendingCall>(deadline_ns, std::move(done));
  if (auto* response_metadata = options.response_metadata; response_metadata != nullptr) {
    // Filled just before `done` runs (the call owns its callback, so the
    // raw pointer back to it is valid whenever that runs).
    response_metadata->clear();
    call->callback = [response_metadata, raw = call.get(), done = std::move(call->callback)](
                         absl::StatusOr<std::string> result) mutable {
      *response_metadata = std::move(raw->response_metadata);
      std::move(done)(std::move(result));
    };
  }
  Call handle = Channel::Core::CallHandle(*this, call);
  auto fail = [&](absl::Status status) {
    FailAsync(call, std::move(status));  // never on the caller's stack: through the loop
    return handle;
  };
  if (deadline_ns <= MonotonicNowNs()) return fail(DeadlineExceeded(method));
  if (options.parent_call != nullptr && options.parent_call->IsCancelled()) {
    return fail(absl::CancelledError(absl::StrCat("calling ", Av(method), ": the incoming call is cancelled")));
  }
  // Connecting is the connect thread's, never the caller's (nor the
  // loop's, for a call made from a callback).
  call->defer_connect = true;
  absl::Status started = StartCall(call, method, request, options, deadline_ns);
  if (IsDeferConnect(started)) {
    CallOptions kept = options;
    kept.response_metadata = nullptr;  // in the callback already
    DeferredCall deferred;
    deferred.call = call;
    deferred.method = std::string(method);
    deferred.request = std::string(request);
    deferred.options = std::move(kept);
    Defer(std::move(deferred));
  } else if (!started.ok()) {
    return fail(std::move(started));
  }
  if (deadline_ns != kNoDeadline) ArmTimer(call);
  if (options.parent_call != nullptr) {
    options.parent_call->OnCancel([handle]() mutable { handle.Cancel(); });
  }
  return handle;
}

absl::StatusOr<std::shared_ptr<ClientConnection>> ChannelCore::ConnectionOrDefer() {
  MutexLock lock(&connect_mu_);
  if (shut_down_) {
    return absl::CancelledError(absl::StrCat("channel to ", endpoint(), " is shut down"));
  }
  if (!connecting_ && current_ != nullptr && current_->Usable()) return current_;
  return DeferConnect();
}

void ChannelCore::FailAsync(const std::shared_ptr<PendingCall>& call, absl::Status status) {
  asio::post(io_, [call, status = std::move(status)]() mutable {
    if (call->timer.has_value()) call->timer->cancel();
    if (call->callback) {
      PendingCall::Callback callback = std::move(call->callback);
      call->callback = nullptr;
      std::move(callback)(std::move(status));
    }
  });
}

Call ChannelCore::FailCallAsync(absl::Status status, PendingCall::Callback done) {
  if (status.ok()) status = absl::InternalError("FailCallAsync with an OK status");
  auto call = std::make_shared<PendingCall>(kNoDeadline, std::move(done));
  Call handle = Channel::Core::CallHandle(*this, call);
  FailAsync(call, std::move(status));
  return handle;
}

void ChannelCore::Defer(DeferredCall deferred) {
  deferred.call->SetWhere(0, nullptr);  // a connection it tried and lost
  MutexLock lock(&deferred_mu_);
  if (deferred_closed_) {
    FailAsync(deferred.call, absl::CancelledError(absl::StrCat("channel to ", endpoint(),
                                                               " is shut down")));
    return;
  }
  deferred.seq = deferred_seq_++;
  deferred_.push_back(std::move(deferred));
  if (deferred_running_) return;
  deferred_running_ = true;
  // The previous thread has left its loop (deferred_running_ was false).
  if (deferred_thread_.joinable()) deferred_thread_.join();
  deferred_thread_ = std::thread([this] { RunDeferred(); });
}

bool ChannelCore::TakeDeferred(const std::shared_ptr<PendingCall>& call) {
  MutexLock lock(&deferred_mu_);
  auto it = std::find_if(deferred_.begin(), deferred_.end(),
                         [&](const DeferredCall& deferred) { return deferred.call == call; });
  if (it == deferred_.end()) return false;
  deferred_.erase(it);
  return true;
}

void ChannelCore::RunDeferred() {
  BeginOwnThread("ipcrpc-connect");
  for (;;) {
    // One connect for every call queued, bounded by connect_timeout and by
    // the latest of their deadlines (no one waits for it after that); the
    // calls' own deadlines end them in the queue meanwhile (ArmTimer).
    int64_t latest = 0;
    uint64_t attempt_seq = 0;  // calls queued from here on were not waiting for this connect
    {
      MutexLock lock(&deferred_mu_);
      if (deferred_.empty()) {  // all ended in the queue
        deferred_running_ = false;
        return;
      }
      for (const DeferredCall& deferred : deferred_) {
        latest = std::max(latest, deferred.call->deadline_ns);
      }
      attempt_seq = deferred_seq_;
    }
    absl::StatusOr<std::shared_ptr<ClientConnection>> connection = GetConnection(latest);
    if (!connection.ok()) {
      // A failed connect fails only the calls that waited for it; a call
      // queued meanwhile gets its own attempt (the next round).
      std::deque<DeferredCall> failed;
      {
        MutexLock lock(&deferred_mu_);
        while (!deferred_.empty() && deferred_.front().seq < attempt_seq) {
          failed.push_back(std::move(deferred_.front()));
          deferred_.pop_front();
        }
      }
      for (DeferredCall& deferred : failed) {
        // A connect that ended at a call's deadline (the connector says
        // UNAVAILABLE: it knows only its bound) ends that call
        // DEADLINE_EXCEEDED, as a sync call's connect does (StartCall), and
        // as its timer would have a moment later.
        absl::Status status = connection.status();
        if (!absl::IsDeadlineExceeded(status) &&
            MonotonicNowNs() >= deferred.call->deadline_ns) {
          status = absl::DeadlineExceededError(absl::StrCat(
              "deadline exceeded while connecting to ", endpoint(), ": ", status.message()));
        }
        FailAsync(deferred.call, std::move(status));
      }
      continue;  // the next round, or the end if none is left
    }
    // Started one at a time, each taken from the queue only when its turn
    // comes: a start may wait for room up to its own call's deadline, and
    // meanwhile the calls after it are still in the queue, where their own
    // deadlines and Cancel end them (before: taken out all at once, they
    // ended only when the earlier start returned).
    for (;;) {
      DeferredCall deferred;
      {
        MutexLock lock(&deferred_mu_);
        if (deferred_.empty()) break;
        deferred = std::move(deferred_.front());
        deferred_.pop_front();
      }
      const std::shared_ptr<PendingCall>& call = deferred.call;
      // Its deadline may have passed while the connect, or the start of an
      // earlier call (which may wait for room up to its own deadline), ran:
      // it ends now, unsent.
      if (call->deadline_ns <= MonotonicNowNs()) {
        FailAsync(call, DeadlineExceeded(deferred.method));
        continue;
      }
      call->defer_connect = false;
      absl::Status started = StartCall(call, deferred.method, deferred.request, deferred.options,
                                       call->deadline_ns, deferred.flags, deferred.head);
      if (!started.ok()) {
        FailAsync(call, std::move(started));
        continue;
      }
      // Its deadline may have passed while it was out of the queue, where
      // the timer looked for it: armed again (the earlier timer goes).
      if (call->deadline_ns != kNoDeadline) ArmTimer(call);
      if (call->cancel_requested.load()) Cancel(call);
    }
  }
}

void ChannelCore::ArmTimer(const std::shared_ptr<PendingCall>& call) {
  asio::post(io_, [this, call] {
    if (!call->callback) return;  // completed already
    call->timer.emplace(io_, SteadyTimeOf(call->deadline_ns));
    std::weak_ptr<PendingCall> weak = call;
    call->timer->async_wait([this, weak](const asio::error_code& ec) {
      if (ec) return;
      auto expired = weak.lock();
      if (expired == nullptr) return;
      auto [id, connection] = expired->Where();
      if (connection == nullptr) {
        // Not started: waiting for the connect thread's connection.
        if (TakeDeferred(expired)) {
          Complete(expired, absl::DeadlineExceededError(absl::StrCat(
                                "deadline exceeded while connecting to ", endpoint())));
        }
        return;
      }
      if (connection->Take(id, /*drain=*/expired->stream != nullptr,
                           /*expect_late=*/expired->stream == nullptr) == nullptr) {
        return;
      }
      // Completed first: the CANCEL wakes the server, which may take this
      // CPU from the loop before the caller hears of its deadline.
      Complete(expired, absl::DeadlineExceededError("deadline exceeded"));
      SendCancel(connection, id, CancelKind::kExpiredOnLoop);
    });
  });
}

void ChannelCore::Cancel(const std::shared_ptr<PendingCall>& call) {
  call->cancel_requested.store(true);
  auto [id, connection] = call->Where();
  if (connection == nullptr && TakeDeferred(call)) {
    Complete(call, absl::CancelledError("call cancelled by the client"));
    return;
  }
  if (connection == nullptr ||
      connection->Take(id, /*drain=*/call->stream != nullptr,
                       /*expect_late=*/call->stream == nullptr) == nullptr) {
    return;
  }
  SendCancel(connection, id, CancelKind::kMustArrive);
  Complete(call, absl::CancelledError("call cancelled by the client"));
  // Its caller may be reading the connection, waiting for the response.
  if (!call->is_async) connection->transport->WakeReader();
}

void ChannelCore::OnMessage(const std::shared_ptr<ClientConnection>& connection,
                            std::string_view message) {
  auto frame = DecodeFrame(message, options_.max_message_size);
  if (!frame.ok()) {
    IPCRPC_LOG(WARNING) << connection->transport->description()
                        << ": closing the connection: bad frame from the server: "
                        << frame.status();
    connection->transport->Close();
    return;
  }
  switch (frame->header.type) {
    case FrameType::kResponse: {
      auto call = connection->Take(frame->header.request_id);
      if (call == nullptr) {
        // A stream we ended first: the server's handler has returned.
        if (!connection->EndDraining(frame->header.request_id)) {
          late_responses_.fetch_add(1, std::memory_order_relaxed);
        }
        return;
      }
      // The server's status; its payloads and the response metadata (if
      // any) come in the metadata block. Written into the call before it
      // completes, read by its caller after.
      absl::Status status;
      if (frame->header.status_code != 0) {
        status = absl::Status(static_cast<absl::StatusCode>(frame->header.status_code),
                              Av(frame->name));
      }
      if (!frame->metadata.empty()) {
        call->response_metadata = TakeResponseMetadata(frame->metadata, &status);
      }
      if (call->deadline_ns <= MonotonicNowNs()) {
        // The deadline passed: that is the outcome, whatever the server said.
        Complete(call, absl::DeadlineExceededError("deadline exceeded"));
      } else if (call->stream != nullptr) {
        {
          MutexLock lock(&call->mu);
          call->stream->ended_by_server = true;
        }
        if ((frame->header.flags & kFlagRefused) != 0) connection->Drain();
        Complete(call, status.ok() ? absl::StatusOr<std::string>(std::string())
                                   : absl::StatusOr<std::string>(std::move(status)));
      } else if (frame->header.status_code == 0 && call->view != nullptr &&
                 std::this_thread::get_id() == call->view_thread) {
        // The caller reads its own response: handed over in place.
        call->viewed = true;
        absl::Status viewed = HandOver(*call->view, frame->payload);
        Complete(call, viewed.ok() ? absl::StatusOr<std::string>(std::string())
                                   : absl::StatusOr<std::string>(std::move(viewed)));
      } else if (frame->header.status_code == 0 && call->sink != nullptr) {
        AssignBytes(call->sink, frame->payload);  // the caller waits: see PendingCall::sink
        Complete(call, std::string());
      } else if (frame->header.status_code == 0) {
        Complete(call, StringOf(frame->payload));
      } else {
        if ((frame->header.flags & kFlagRefused) != 0) {
          // The server is leaving (its GOAWAY may still be on the way): no
          // new calls here. A sync caller sends the call again elsewhere.
          connection->Drain();
          if (!call->is_async) status = MarkNotDelivered(std::move(status));
        }
        Complete(call, std::move(status));
      }
      return;
    }
    case FrameType::kGoAway:
      IPCRPC_LOG(INFO) << connection->transport->description() << ": server going away: "
                       << frame->name;
      connection->Drain();
      return;
    case FrameType::kPing: {
      FrameHeader header;
      header.type = FrameType::kPong;
      header.request_id = frame->header.request_id;
      std::string pong;
      if (EncodeFramePrefix(header, "", {}, 0, 0, &pong).ok()) {
        std::string_view parts[] = {pong};
        connection->transport->Send(parts, 0).IgnoreError();
      }
      return;
    }
    case FrameType::kHello:
    case FrameType::kPong:
      return;
    case FrameType::kMessage:
    case FrameType::kWindow:
      OnStreamFrame(connection, *frame);
      return;
    case FrameType::kRequest:
    case FrameType::kCancel:
    case FrameType::kHalfClose:
      IPCRPC_LOG(WARNING) << connection->transport->description()
                          << ": closing the connection: the server sent a "
                          << FrameTypeName(frame->header.type) << " frame";
      connection->transport->Close();
      return;
  }
}

void ChannelCore::OnClosed(const std::shared_ptr<ClientConnection>& connection,
                           absl::Status reason) {
  if (!absl::IsCancelled(reason)) {
    IPCRPC_LOG(INFO) << "connection lost: " << reason;
  }
  for (auto& call : connection->TakeAll(reason)) {
    Complete(call, absl::UnavailableError(
                       absl::StrCat("connection to ", endpoint(), " lost: ", reason.message())));
  }
}

Channel::Stats ChannelCore::stats() const {
  Channel::Stats stats;
  stats.calls_started = calls_started_.load(std::memory_order_relaxed);
  stats.late_responses_dropped = late_responses_.load(std::memory_order_relaxed);
  stats.connects = connects_.load(std::memory_order_relaxed);
  stats.expiry_cancels_not_sent = cancels_not_sent_.load(std::memory_order_relaxed);
  return stats;
}

}  // namespace internal

// --------------------------------------------------------------------- public

void Call::Cancel() {
  auto core = core_.lock();
  auto call = call_.lock();
  if (core != nullptr && call != nullptr) core->Cancel(call);
}

absl::StatusOr<std::shared_ptr<Channel>> Channel::Core::Open(
    std::unique_ptr<internal::Connector> connector, const ChannelOptions& options) {
  auto core = std::make_shared<Core>(std::move(connector), options);
  IPCRPC_RETURN_IF_ERROR(core->Start());
  // Not make_shared: the constructor is private.
  return std::shared_ptr<Channel>(new Channel(std::move(core)));
}

Channel::Channel(std::shared_ptr<Core> core) : core_(std::move(core)) {}

Channel::~Channel() { core_->Shutdown(); }

absl::StatusOr<std::shared_ptr<Channel>> Channel::Connect(std::string_view endpoint,
                                                          const ChannelOptions& options) {
  IPCRPC_ASSIGN_OR_RETURN(
      auto connector,
      internal::CreateConnector(endpoint, internal::ToTransportOptions(options)));
  return Core::Open(std::move(connector), options);
}

absl::StatusOr<std::shared_ptr<Channel>> SpawnChild(const std::vector<std::string>& argv,
                                                    const ChannelOptions& options) {
  IPCRPC_ASSIGN_OR_RETURN(
      auto connector,
      internal::SpawnChildConnector(argv, internal::ToTransportOptions(options)));
  return Channel::Core::Open(std::move(connector), options);
}

absl::StatusOr<std::string> Channel::CallMethod(std::string_view method, std::string_view request,
                                                const CallOptions& options) {
  return core_->CallSync(method, request, options);
}

absl::Status Channel::CallMethodInto(std::string_view method, std::string_view request,
                                     std::string* response, const CallOptions& options) {
  if (response == nullptr) {
    return absl::InvalidArgumentError("CallMethodInto: response is null");
  }
  return core_->CallSync(method, request, options, response).status();
}

absl::Status Channel::CallMethodView(std::string_view method, std::string_view request,
                                     absl::FunctionRef<void(std::string_view)> on_response,
                                     const CallOptions& options) {
  return core_->CallSync(method, request, options, nullptr, &on_response).status();
}

absl::Status Channel::CallMethodView(std::string_view method, const internal::BodyWriter& request,
                                     absl::FunctionRef<void(std::string_view)> on_response,
                                     const CallOptions& options) {
  if (request.size() < internal::kBodyInPlaceMin) {
    // Small: this thread's kept buffer, then sent as bytes (as a stub did
    // before bodies), clear of glibc's slow copy distance (scratch.h).
    ScratchString buffer;
    std::string* bytes = buffer.GetSized(kSerializeHeadroom + request.size());
    request.WriteFlat(bytes->data() + kSerializeHeadroom);
    return core_->CallSync(method, std::string_view(*bytes).substr(kSerializeHeadroom), options,
                           nullptr, &on_response)
        .status();
  }
  return core_->CallSync(method, {}, options, nullptr, &on_response, &request).status();
}

Call Channel::CallMethodAsync(std::string_view method, std::string_view request,
                              const CallOptions& options,
                              absl::AnyInvocable<void(absl::StatusOr<std::string>) &&> done) {
  return core_->CallAsync(method, request, options, std::move(done));
}

Call Channel::FailCallAsync(absl::Status status,
                            absl::AnyInvocable<void(absl::StatusOr<std::string>) &&> done) {
  return core_->FailCallAsync(std::move(status), std::move(done));
}

GenericClientStream Channel::OpenStream(std::string_view method, const CallOptions& options) {
  return core_->OpenStream(method, nullptr, options);
}

GenericClientStream Channel::OpenServerStream(std::string_view method, std::string_view request,
                                              const CallOptions& options) {
  return core_->OpenStream(method, &request, options);
}

Call Channel::CallServerStreamAsync(std::string_view method, std::string_view request,
                                    const CallOptions& options,
                                    absl::AnyInvocable<void(std::string_view)> on_message,
                                    absl::AnyInvocable<void(absl::Status) &&> done) {
  return core_->CallServerStreamAsync(method, request, options, std::move(on_message),
                                      std::move(done));
}

Channel::Stats Channel::stats() const { return core_->stats(); }

const std::string& Channel::endpoint() const { return core_->endpoint(); }

CallOptions CallOptions::From(const ServerContext& parent, absl::Duration shave) {
  const std::shared_ptr<ServerContext::State>& call = ServerContext::State::Of(parent);
  CallOptions options;
  if (call->deadline_ns != internal::kNoDeadline) {
    options.deadline = internal::MonotonicToWall(call->deadline_ns) - shave;
  }
  options.priority = call->priority;
  options.parent_call = call;
  return options;
}

}  // namespace ipcrpc
