// The inside of a Channel: the connection, its pending-call table, the
// response thread (an asio loop) and the deadline timers of async calls.
//
// Invariants:
// - A pending call lives in exactly one connection's table until it is
//   taken out; whoever takes it out (response, timeout, Cancel, connection
//   loss, channel shutdown) completes it, so every call completes once.
// - A PendingCall is shared by the table and its waiter: nobody writes into
//   memory the waiter may have released.
// - Async callbacks and timers run on the loop thread only; sync waiters
//   block on their own PendingCall.
#ifndef IPCRPC_RPC_CHANNEL_CORE_H_
#define IPCRPC_RPC_CHANNEL_CORE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/any_invocable.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "asio/executor_work_guard.hpp"
#include "asio/io_context.hpp"
#include "asio/steady_timer.hpp"
#include "ipcrpc/channel.h"
#include "wire/frame.h"
#include "transports/transport.h"
#include "base/clock.h"
#include "base/mutex.h"

namespace ipcrpc::internal {

class ClientConnection;

// A call's absolute monotonic deadline: the earlier of its timeout and deadline.
int64_t DeadlineOf(const CallOptions& options);
absl::Status DeadlineExceeded(std::string_view method);

// The client's side of a stream; every field is guarded by its
// PendingCall's `mu`. Window accounting (docs/PROTOCOL.md, "Streams") is in
// totals of message costs (StreamCost) since the stream began.
struct ClientStreamState {
  // Held across a writer's check of the window and its send (Write,
  // WritesDone), so that frames leave in the order they were counted and
  // no MESSAGE follows the HALF_CLOSE. Taken before PendingCall::mu.
  std::mutex send_mu;
  std::deque<std::string> inbox;  // received, not read yet
  int64_t window = 0;             // ours: ChannelOptions::stream_window
  int64_t received = 0;           // costs received
  int64_t receive_limit = 0;      // our window plus every grant we sent
  int64_t consumed_ungranted = 0; // read, not granted back yet
  int64_t sent = 0;               // costs sent
  int64_t send_limit = kInitialStreamWindow;  // the server's grants
  int priority = 0;
  bool writes_done = false;
  // The server ended the stream (RESPONSE before the deadline): what is in
  // the inbox may still be read. Otherwise an ended stream reads nothing.
  bool ended_by_server = false;
  // Finish: messages are dropped (and granted back) as they come.
  bool discard = false;
  // Async server streaming: runs on the loop, once per message.
  absl::AnyInvocable<void(std::string_view)> on_message;
  // CallOptions::response_metadata: filled by Finish.
  Metadata* response_metadata = nullptr;
};

}  // namespace ipcrpc::internal

namespace ipcrpc {

// One outgoing call, internal::PendingCall to the runtime. Call::State is
// its name in the public headers, which hold it opaque (Call,
// GenericClientStream).
class Call::State {
 public:
  using Callback = absl::AnyInvocable<void(absl::StatusOr<std::string>) &&>;

  State(int64_t deadline, Callback on_done)
      : deadline_ns(deadline), is_async(on_done != nullptr), callback(std::move(on_done)) {}

  // A finished sync call that nobody else holds any more, made ready for
  // the next call of the same thread (no allocation per call). No lock: no
  // other thread can reach the call, which the analysis cannot know.
  void Reuse(int64_t deadline) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    id = 0;
    deadline_ns = deadline;
    sink = nullptr;
    view = nullptr;
    viewed = false;
    connection.reset();
    done = false;
    result.reset();
    response_metadata.clear();
    completed.store(false, std::memory_order_relaxed);
    here_request.clear();
  }

  uint64_t id = 0;  // set before the call is inserted into a table
  int64_t deadline_ns;  // set before the call is inserted into a table
  const bool is_async;
  std::weak_ptr<internal::ClientConnection> connection;

  // `id` and `connection` as Cancel and the deadline timer read them: a
  // deferred call (ChannelCore::Defer) gets them on the connect thread
  // while those may run on others, so StartCall writes them under
  // `where_mu` and these read them under it.
  void SetWhere(uint64_t new_id, const std::shared_ptr<internal::ClientConnection>& where) {
    std::lock_guard<std::mutex> lock(where_mu);
    id = new_id;
    connection = where;
  }
  std::pair<uint64_t, std::shared_ptr<internal::ClientConnection>> Where() {
    std::lock_guard<std::mutex> lock(where_mu);
    return {id, connection.lock()};
  }
  std::mutex where_mu;

  // Async calls: run on the loop by whoever completes the call.
  Callback callback;
  std::optional<asio::steady_timer> timer;  // loop only

  // Sync calls: the waiter blocks here. CondVar waits on CLOCK_MONOTONIC
  // (WaitUntil with steady_clock), so a wall-clock jump neither shortens
  // nor stretches a deadline.
  internal::Mutex mu;
  internal::CondVar cv;
  bool done ABSL_GUARDED_BY(mu) = false;
  // Sync calls through CallMethodInto: where a successful response goes.
  // Written only by whoever took the call out of its table, while the
  // caller waits.
  std::string* sink = nullptr;
  // Sync calls through CallMethodView: what a successful response is handed
  // to, in place, when the caller's own thread reads it (`view_thread`);
  // read by another thread (the loop, another caller), the response is
  // copied into `result` as for CallMethod and the caller hands that over
  // itself, so that no thread parses another caller's response.
  const absl::FunctionRef<void(std::string_view)>* view = nullptr;
  std::thread::id view_thread;
  bool viewed = false;  // written with `view` by the reader, read by the caller after done
  // Set with `done`: what a caller reading its own response polls.
  std::atomic<bool> completed{false};
  // A sync unary call on a transport that makes a caller's call on its
  // thread (Connection::CallsHere, grpc:): the REQUEST, which StartCall
  // leaves to the caller, who sends it with CallHere once its cancellation
  // is wired. Empty otherwise (and once sent).
  std::string here_request;
  std::optional<absl::StatusOr<std::string>> result ABSL_GUARDED_BY(mu);
  // The RESPONSE's metadata (ServerContext::AddResponseMetadata): written,
  // like `sink`, only by whoever took the call out of its table, before it
  // completes; read by the caller after.
  internal::Metadata response_metadata;

  // An async unary call does not connect on its caller's thread: when it
  // finds no usable connection, the channel's connect thread starts it
  // (ChannelCore::Defer). Cleared by that thread, which connects.
  bool defer_connect = false;
  // Cancel was asked (set before anything else Cancel does): the connect
  // thread, having started a deferred call, cancels it if this is set, so a
  // Cancel that came while the call was between the queue and its
  // connection is not lost.
  std::atomic<bool> cancel_requested{false};

  // Streams only.
  std::unique_ptr<internal::ClientStreamState> stream;
  std::string method;  // for messages
};

}  // namespace ipcrpc

namespace ipcrpc::internal {

// The runtime's name for Call::State.
using PendingCall = Call::State;

// One transport connection and the calls pending on it.
class ClientConnection : public std::enable_shared_from_this<ClientConnection> {
 public:
  explicit ClientConnection(std::shared_ptr<Connection> connection)
      : transport(std::move(connection)) {}

  const std::shared_ptr<Connection> transport;

  // Inserts `call`; false if the connection is lost or draining.
  bool Insert(const std::shared_ptr<PendingCall>& call, absl::Status* why);
  // Takes the call with `id` out of the table, or nullptr if it is gone.
  // `drain`: a stream ended here before the server ended it; until the
  // server's RESPONSE for `id` comes, the loop keeps reading and drops what
  // arrives for it (so that a server writer blocked on a full transport
  // gets through to its cancellation).
  std::shared_ptr<PendingCall> Take(uint64_t id, bool drain = false, bool expect_late = false);
  // The server's RESPONSE to a drained stream came: true if `id` was one.
  bool EndDraining(uint64_t id);
  bool IsDraining(uint64_t id);
  // The call with `id`, left in the table, or nullptr.
  std::shared_ptr<PendingCall> Find(uint64_t id);
  // Marks the connection lost and takes every pending call out.
  std::vector<std::shared_ptr<PendingCall>> TakeAll(absl::Status reason);
  // A send failed: no new calls here (pending ones end when the loop sees it).
  void MarkLost(absl::Status reason);
  // The server said GOAWAY: no new calls here.
  void Drain();
  bool Usable();
  // Whether it failed or ended (MarkLost, TakeAll): nothing more goes on it.
  bool Lost();
  // Whether any call waits for a response here (the loop keeps reading).
  bool HasPending();
  // Take(..., expect_late): a unary call here ends before its response came
  // (cancelled, or its deadline passed), and responses the server had
  // sent, or was sending, before it saw the CANCEL may still come. The loop
  // keeps reading for kLateResponseWindowNs after the last such end
  // (HasPending says so; set in the same step as the call leaves, so that
  // HasPending never reads false in between), so that they are taken off
  // the transport: unread, they would fill a small one (mq:'s reply queue
  // holds four messages) and hold the server's threads that send them
  // until its send timeout closed the connection.
  static constexpr int64_t kLateResponseWindowNs = 1'000'000'000;

  std::atomic<uint64_t> next_id{1};

 private:
  Mutex mu_;
  absl::flat_hash_map<uint64_t, std::shared_ptr<PendingCall>> pending_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<uint64_t> draining_streams_ ABSL_GUARDED_BY(mu_);
  absl::Status lost_ ABSL_GUARDED_BY(mu_);
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  int64_t late_until_ns_ ABSL_GUARDED_BY(mu_) = 0;
};

// How long a CANCEL that must arrive waits for room before its connection is
// closed instead (ChannelCore::CancelKind::kMustArrive).
inline constexpr int64_t kCancelGiveUpNs = 10'000'000'000;

// Whether StartCall's status says the call must wait for the connect thread
// (an async call or stream with no usable connection): then Defer it.
bool IsDeferConnect(const absl::Status& status);

// Made only as a Channel::Core (below), the name the public handles hold
// it by.
class ChannelCore : public std::enable_shared_from_this<ChannelCore> {
 public:
  ~ChannelCore();

  // Starts the loop thread and connects.
  absl::Status Start();
  // Ends every pending call with CANCELLED, closes the connection, stops the
  // loop. Called by ~Channel.
  void Shutdown();

  // With `sink`, a successful response is written there; with `view`, it
  // is handed to that (the result holds an empty string). With `body`, the
  // request is that (serialized where the transport says), not `request`.
  absl::StatusOr<std::string> CallSync(
      std::string_view method, std::string_view request, const CallOptions& options,
      std::string* sink = nullptr,
      const absl::FunctionRef<void(std::string_view)>* view = nullptr,
      const BodyWriter* body = nullptr);
  Call CallAsync(std::string_view method, std::string_view request, const CallOptions& options,
                 PendingCall::Callback done);
  // Channel::FailCallAsync.
  Call FailCallAsync(absl::Status status, PendingCall::Callback done);
  void Cancel(const std::shared_ptr<PendingCall>& call);

  // Streams (rpc/client_stream.cc). `request` is the one request of a
  // server-streaming call (then the client half-closes at once), or null.
  GenericClientStream OpenStream(std::string_view method, const std::string_view* request,
                                 const CallOptions& options);
  Call CallServerStreamAsync(std::string_view method, std::string_view request,
                             const CallOptions& options,
                             absl::AnyInvocable<void(std::string_view)> on_message,
                             absl::AnyInvocable<void(absl::Status) &&> done);
  // Sets up `call` (made by the caller, sync or async) as a stream of
  // `method` and sends its REQUEST; `request` as for OpenStream. On error
  // nothing was sent and the call is not completed yet.
  absl::Status StartStream(const std::shared_ptr<PendingCall>& call, std::string_view method,
                           const std::string_view* request, const CallOptions& options,
                           absl::AnyInvocable<void(std::string_view)> on_message = nullptr);
  bool StreamWrite(const std::shared_ptr<PendingCall>& call, std::string_view message);
  bool StreamWritesDone(const std::shared_ptr<PendingCall>& call);
  bool StreamRead(const std::shared_ptr<PendingCall>& call, std::string* message);
  absl::Status StreamFinish(const std::shared_ptr<PendingCall>& call);

  Channel::Stats stats() const;
  const std::string& endpoint() const { return connector_->endpoint(); }

 protected:
  ChannelCore(std::unique_ptr<Connector> connector, const ChannelOptions& options);

 private:
  // The current connection, connecting first if there is none usable. One
  // caller connects at a time, without the lock; the others wait for it, at
  // most until `deadline_ns` (then DEADLINE_EXCEEDED). The connect itself
  // ends by connect_timeout or `deadline_ns`, the earlier.
  absl::StatusOr<std::shared_ptr<ClientConnection>> GetConnection(int64_t deadline_ns);
  // A new connection, started, its HELLO sent.
  absl::StatusOr<std::shared_ptr<ClientConnection>> Connect(int64_t deadline_ns);
  // Common start of a call: inserted and sent; on error the call is already
  // completed and the status is returned.
  // A stream's REQUEST has `flags` (kFlagStream...) and `head` (its
  // window) before the request. With `body` (a sync unary call), the
  // request is that, not `request`.
  absl::Status StartCall(const std::shared_ptr<PendingCall>& call, std::string_view method,
                         std::string_view request, const CallOptions& options, int64_t deadline_ns,
                         uint16_t flags = 0, std::string_view head = {},
                         const BodyWriter* body = nullptr);
  // Stream frames of `call` on its connection: a MESSAGE, HALF_CLOSE or
  // WINDOW. False if the connection is gone (its loss ends the call).
  bool SendStreamFrame(const std::shared_ptr<PendingCall>& call, FrameType type,
                       std::string_view payload);
  // Sends a WINDOW for what the reader of `call` consumed, if due (at least
  // half the window); `grant` is what StreamConsumed returned.
  void SendGrant(const std::shared_ptr<PendingCall>& call, int64_t grant);
  // The deadline of a sync stream passed while its owner waited: ends it
  // DEADLINE_EXCEEDED (if nobody else ended it first).
  void ExpireStream(const std::shared_ptr<PendingCall>& call);
  void OnStreamFrame(const std::shared_ptr<ClientConnection>& connection, const FrameView& frame);
  // Completes a call that was taken out of its table.
  void Complete(const std::shared_ptr<PendingCall>& call, absl::StatusOr<std::string> result);
  // Tells the server that call `id` is abandoned. Never waits for room in
  // the transport, on any thread (a server's loop cancelling a call it made
  // downstream included): neither a caller nor a loop may wait for a stopped
  // or busy server.
  enum class CancelKind {
    // Its deadline passed, seen on the loop: sent now if the transport has
    // room (nobody else sending), else dropped: the server's own timer ends
    // the call at the same deadline (counted: expiry_cancels_not_sent).
    kExpiredOnLoop,
    // Its deadline passed, seen by a caller about to return: the loop sends
    // it as kExpiredOnLoop, after the caller has gone (off its path).
    kExpiredByCaller,
    // Cancel(), or a stream the client ends: the server has no timer for
    // it, so it must arrive. Sent now if there is room, else the loop tries
    // again (backing off, 1 to 100 ms) until it goes or the connection ends;
    // a server that takes none for kCancelGiveUpNs loses the connection
    // (whose end cancels every call on it there).
    kMustArrive,
  };
  void SendCancel(const std::shared_ptr<ClientConnection>& connection, uint64_t id,
                  CancelKind kind);
  // True when the CANCEL went (or the connection failed), false when the
  // transport has no room now. Any thread; never waits.
  bool TrySendCancel(ClientConnection& connection, uint64_t id);
  // The loop's: queues a kMustArrive CANCEL that found no room, and retries.
  void QueueCancel(std::weak_ptr<ClientConnection> connection, uint64_t id);
  void RetryCancels();
  void OnMessage(const std::shared_ptr<ClientConnection>& connection, std::string_view message);
  void OnClosed(const std::shared_ptr<ClientConnection>& connection, absl::Status reason);
  void ArmTimer(const std::shared_ptr<PendingCall>& call);

  // Async calls waiting for a connection, which the connect thread makes
  // (one connect for all of them, bounded by connect_timeout), then starts
  // them; a deferred call's deadline or Cancel ends it in the queue.
  struct DeferredCall {
    std::shared_ptr<PendingCall> call;
    std::string method;
    std::string request;
    CallOptions options;
    uint64_t seq = 0;  // order of queueing (deferred_seq_)
    // A stream's REQUEST (StartStream): its flags and head.
    uint16_t flags = 0;
    std::string head;
  };
  // The current connection if a call can start on it without connecting;
  // the DeferConnect() mark otherwise; CANCELLED if the channel is shut
  // down. Never waits (one look under connect_mu_).
  absl::StatusOr<std::shared_ptr<ClientConnection>> ConnectionOrDefer();
  void Defer(DeferredCall deferred);
  // Takes `call` out of the queue: true if it was there (then the caller
  // completes it).
  bool TakeDeferred(const std::shared_ptr<PendingCall>& call);
  void RunDeferred();  // the connect thread
  // Ends an async call that never started, through the loop.
  void FailAsync(const std::shared_ptr<PendingCall>& call, absl::Status status);

  bool OnLoopThread() const { return std::this_thread::get_id() == loop_thread_id_.load(); }

  const std::unique_ptr<Connector> connector_;
  const ChannelOptions options_;

  asio::io_context io_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  std::thread loop_thread_;
  std::atomic<std::thread::id> loop_thread_id_{};

  Mutex connect_mu_;
  std::shared_ptr<ClientConnection> current_ ABSL_GUARDED_BY(connect_mu_);
  // Every connection that may still have pending calls (a draining one too).
  std::vector<std::weak_ptr<ClientConnection>> connections_ ABSL_GUARDED_BY(connect_mu_);
  bool shut_down_ ABSL_GUARDED_BY(connect_mu_) = false;
  // A caller is connecting (without holding connect_mu_).
  bool connecting_ ABSL_GUARDED_BY(connect_mu_) = false;

  Mutex deferred_mu_;
  std::deque<DeferredCall> deferred_ ABSL_GUARDED_BY(deferred_mu_);
  bool deferred_running_ ABSL_GUARDED_BY(deferred_mu_) = false;  // the thread works
  uint64_t deferred_seq_ ABSL_GUARDED_BY(deferred_mu_) = 0;       // next DeferredCall::seq
  bool deferred_closed_ ABSL_GUARDED_BY(deferred_mu_) = false;   // Shutdown ran
  std::thread deferred_thread_ ABSL_GUARDED_BY(deferred_mu_);

  // kMustArrive CANCELs that found no room, and their retry timer: the
  // loop's alone.
  struct UnsentCancel {
    std::weak_ptr<ClientConnection> connection;
    uint64_t id = 0;
    int64_t queued_ns = 0;
  };
  std::deque<UnsentCancel> unsent_cancels_;
  std::optional<asio::steady_timer> cancel_retry_;
  int64_t cancel_backoff_ns_ = 0;
  bool cancels_stopped_ = false;

  std::atomic<uint64_t> calls_started_{0};
  std::atomic<uint64_t> late_responses_{0};
  std::atomic<uint64_t> connects_{0};
  std::atomic<uint64_t> cancels_not_sent_{0};
};

}  // namespace ipcrpc::internal

namespace ipcrpc {

// The core as the public headers name it, opaque (Channel, Call,
// GenericClientStream hold it). Everything is internal::ChannelCore's: the
// members of a class nested in Channel could only be defined in namespace
// ipcrpc, outside internal, where none of the runtime's names are found.
// Being nested, it may use Channel's private members, and the handles
// befriend it: their constructors are the runtime's only.
class Channel::Core final : public internal::ChannelCore {
 public:
  Core(std::unique_ptr<internal::Connector> connector, const ChannelOptions& options)
      : ChannelCore(std::move(connector), options) {}

  // Connect and SpawnChild: a channel on `connector`, started.
  static absl::StatusOr<std::shared_ptr<Channel>> Open(
      std::unique_ptr<internal::Connector> connector, const ChannelOptions& options);

  // The handles of `call`, a call on `core`.
  static Call CallHandle(internal::ChannelCore& core, const std::shared_ptr<Call::State>& call) {
    return Call(Of(core), call);
  }
  static GenericClientStream StreamHandle(internal::ChannelCore& core,
                                          std::shared_ptr<Call::State> call) {
    return GenericClientStream(Of(core), std::move(call));
  }

 private:
  // Every ChannelCore is a Core (its constructor is protected; Core is final).
  static std::shared_ptr<Core> Of(internal::ChannelCore& core) {
    return std::static_pointer_cast<Core>(core.shared_from_this());
  }
};

}  // namespace ipcrpc

#endif  // IPCRPC_RPC_CHANNEL_CORE_H_
