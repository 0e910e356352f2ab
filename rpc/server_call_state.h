// The shared state of one incoming call: what ServerContext shows the
// handler, and the cancellation that the server's loop (CANCEL frames,
// deadline timer, client death) and Shutdown trigger.
#ifndef IPCRPC_RPC_SERVER_CALL_STATE_H_
#define IPCRPC_RPC_SERVER_CALL_STATE_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "asio/steady_timer.hpp"
#include "base/clock.h"
#include "ipcrpc/server_context.h"
#include "ipcrpc/stream.h"
#include "wire/frame.h"
#include "base/mutex.h"

namespace ipcrpc::internal {

// Calls this thread has started through any Channel (rpc/channel.cc): the
// server tells a handler that makes outgoing calls by it.
uint64_t CallsStartedOnThisThread();

// The server's side of a stream (docs/PROTOCOL.md, "Streams"); the loop
// queues the client's messages, the handler reads and writes. Window
// accounting is in totals of message costs (StreamCost) since the start.
struct ServerStreamState {
  // Held across a writer's check of the window and its send, so that
  // frames leave in the order they were counted.
  Mutex send_mu ABSL_ACQUIRED_BEFORE(mu);
  Mutex mu;
  CondVar cv;  // messages, grants, half-close, cancellation
  std::deque<std::string> inbox ABSL_GUARDED_BY(mu);
  int64_t window = 0;  // ours: ServerOptions::stream_window (fixed)
  int64_t received ABSL_GUARDED_BY(mu) = 0;
  int64_t messages_received ABSL_GUARDED_BY(mu) = 0;
  int64_t messages_sent ABSL_GUARDED_BY(mu) = 0;
  int64_t unread_bytes ABSL_GUARDED_BY(mu) = 0;   // the costs in inbox
  int64_t receive_limit ABSL_GUARDED_BY(mu) = 0;  // our window plus our grants
  int64_t consumed_ungranted ABSL_GUARDED_BY(mu) = 0;
  bool half_closed ABSL_GUARDED_BY(mu) = false;  // the client sends no more
  int64_t sent ABSL_GUARDED_BY(mu) = 0;
  int64_t send_limit ABSL_GUARDED_BY(mu) = 0;     // the client's window plus its grants
  bool failed ABSL_GUARDED_BY(mu) = false;        // GenericServerStream::Fail
  bool handler_done ABSL_GUARDED_BY(mu) = false;  // nothing reads the inbox any more
  absl::Status failure ABSL_GUARDED_BY(mu);
  size_t max_message_size = 0;  // fixed
  // Where the inbox's bytes are charged (the server's bytes in flight,
  // ServerOptions::max_bytes_in_flight): each message's cost while unread.
  std::atomic<int64_t>* charged = nullptr;  // fixed
  // Sends a MESSAGE or WINDOW of this stream on its connection (from the
  // handler's thread); false if the connection is gone. Set before the
  // handler starts.
  absl::AnyInvocable<bool(FrameType type, std::string_view payload)> send;
};

}  // namespace ipcrpc::internal

namespace ipcrpc {

// One incoming call, internal::ServerCallState to the runtime.
// ServerContext::State is its name in the public headers, which hold it
// opaque (ServerContext, GenericServerStream, CallOptions::parent_call).
class ServerContext::State {
 public:
  State(uint64_t id, int64_t deadline, int call_priority, std::string method_name,
        internal::Metadata call_metadata, pid_t pid, uid_t uid)
      : request_id(id),
        deadline_ns(deadline),
        priority(call_priority),
        method(std::move(method_name)),
        metadata(std::move(call_metadata)),
        peer_pid(pid),
        peer_uid(uid) {}

  // A finished call's state that nobody holds any more, made ready for the
  // next call on the same connection (the server's loop does this for calls
  // it runs itself: no allocation per call). Never for a call that had a
  // deadline timer (its handler may still hold a weak reference).
  void Reuse(uint64_t id, int64_t deadline, int call_priority, std::string_view method_name,
             internal::Metadata call_metadata, pid_t pid, uid_t uid) {
    request_id = id;
    deadline_ns = deadline;
    priority = call_priority;
    method.assign(method_name);
    metadata = std::move(call_metadata);
    peer_pid = pid;
    peer_uid = uid;
    started_ns = internal::MonotonicNowNs();
    cancelled_by_client.store(false, std::memory_order_relaxed);
    deadline_timer.reset();
    cancelled_.store(false, std::memory_order_relaxed);
    responded_.store(false, std::memory_order_relaxed);
    internal::MutexLock lock(&mu_);
    finished_ = false;
    callbacks_.clear();
    response_metadata_.clear();
  }

  // Set when the call is read (or reused), read-only while it runs.
  // What the call holds, as charged against ServerOptions::max_bytes_in_flight.
  int64_t held_bytes = 0;
  uint64_t request_id;
  int64_t deadline_ns;
  int priority;
  std::string method;
  internal::Metadata metadata;
  pid_t peer_pid;
  uid_t peer_uid;
  int64_t started_ns = internal::MonotonicNowNs();  // when the request was read

  bool WasCancelled() const { return cancelled_.load(std::memory_order_acquire); }

  // Cancelled, or past the deadline (also before the loop's timer has fired
  // and run the OnCancel callbacks).
  bool IsCancelled() const {
    return cancelled_.load(std::memory_order_acquire) ||
           (deadline_ns != internal::kNoDeadline && internal::MonotonicNowNs() >= deadline_ns);
  }

  // Marks the call cancelled and runs the OnCancel callbacks on this thread.
  // Returns false if it was cancelled or finished already.
  bool Cancel() {
    std::vector<absl::AnyInvocable<void() &&>> callbacks;
    {
      internal::MutexLock lock(&mu_);
      if (finished_ || cancelled_.load(std::memory_order_relaxed)) return false;
      cancelled_.store(true, std::memory_order_release);
      callbacks.swap(callbacks_);
    }
    for (auto& callback : callbacks) std::move(callback)();
    return true;
  }

  void OnCancel(absl::AnyInvocable<void() &&> callback) {
    {
      internal::MutexLock lock(&mu_);
      if (finished_) return;
      if (!cancelled_.load(std::memory_order_relaxed)) {
        callbacks_.push_back(std::move(callback));
        return;
      }
    }
    std::move(callback)();
  }

  // The handler returned: later cancellations run no callbacks.
  void Finish() {
    std::vector<absl::AnyInvocable<void() &&>> dropped;
    internal::MutexLock lock(&mu_);
    finished_ = true;
    dropped.swap(callbacks_);
  }

  // ServerContext::AddResponseMetadata: sent with the RESPONSE.
  void AddResponseMetadata(std::string key, std::string value) {
    internal::MutexLock lock(&mu_);
    response_metadata_.emplace_back(std::move(key), std::move(value));
  }
  internal::Metadata TakeResponseMetadata() {
    internal::MutexLock lock(&mu_);
    return std::move(response_metadata_);
  }

  // Claims the right to send the one response of this call.
  bool ClaimResponse() { return !responded_.exchange(true, std::memory_order_acq_rel); }

  // The client withdrew the call (CANCEL frame): no response is sent.
  std::atomic<bool> cancelled_by_client{false};

  // The deadline timer: made and armed by the thread that takes the
  // request (the server's loop, or gRPC's for a grpc: unary call), before
  // its handler is queued; after that touched only on the server's loop.
  std::optional<asio::steady_timer> deadline_timer;

  // Streams only (set before the call is in its connection's table).
  std::unique_ptr<internal::ServerStreamState> stream;

  // The public objects on a call (their constructors are the runtime's: a
  // class nested in ServerContext may use its private members, and
  // GenericServerStream befriends this one).
  static ServerContext MakeContext(std::shared_ptr<State> call) {
    return ServerContext(std::move(call));
  }
  static GenericServerStream MakeStream(std::shared_ptr<State> call) {
    return GenericServerStream(std::move(call));
  }
  // The call `context` is on (CallOptions::From).
  static const std::shared_ptr<State>& Of(const ServerContext& context) { return context.state_; }

 private:
  std::atomic<bool> cancelled_{false};
  std::atomic<bool> responded_{false};
  internal::Mutex mu_;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<absl::AnyInvocable<void() &&>> callbacks_ ABSL_GUARDED_BY(mu_);
  internal::Metadata response_metadata_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ipcrpc

namespace ipcrpc::internal {

// The runtime's name for ServerContext::State.
using ServerCallState = ServerContext::State;

}  // namespace ipcrpc::internal

#endif  // IPCRPC_RPC_SERVER_CALL_STATE_H_
