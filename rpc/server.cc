#include "ipcrpc/server.h"
#include "ipcrpc/scratch.h"
#include "ipcrpc/body_writer.h"

#include <algorithm>
#include <limits>
#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/cleanup/cleanup.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "asio/executor_work_guard.hpp"
#include "asio/io_context.hpp"
#include "asio/post.hpp"
#include "asio/steady_timer.hpp"
#include "base/clock.h"
#include "base/copy.h"
#include "base/logging.h"
#include "base/syscall.h"
#include "base/status_macros.h"
#include "base/strings.h"
#include "rpc/builtin_services.h"
#include "wire/frame.h"
#include "rpc/handler_scheduler.h"
#include "rpc/server_call_state.h"
#include "rpc/server_registry.h"
#include "wire/status_details.h"
#include "transports/transport.h"
#include "base/mutex.h"

namespace ipcrpc {
namespace internal {
// One accepted connection and the calls in flight on it.
struct ServerConnection {
  ServerConnection(uint64_t connection_id, std::string listener_endpoint,
                   std::shared_ptr<Connection> connection, bool ends_server_with_it)
      : id(connection_id),
        endpoint(std::move(listener_endpoint)),
        transport(std::move(connection)),
        ends_server(ends_server_with_it) {}

  const uint64_t id;
  const std::string endpoint;  // the listener's
  const int64_t connected_ns = MonotonicNowNs();
  const std::shared_ptr<Connection> transport;
  const bool ends_server;  // pipe: the server lives for this connection only

  Mutex mu;
  absl::flat_hash_map<uint64_t, std::shared_ptr<ServerCallState>> calls ABSL_GUARDED_BY(mu);
  // The loop's: the state of the last call it ran itself, for the next one.
  std::shared_ptr<ServerCallState> spare_call;
  // Answers that need no handler (rejections, PONG, HELLO) that found the
  // transport full and wait for a handler thread to send them. A peer that
  // keeps asking and never reads would otherwise queue them without end.
  std::atomic<int> queued_control{0};
  // Set when the connection ends: nothing more can be sent on it.
  std::atomic<bool> closed{false};

  // Sends that may wait for the client to read, and when one last ended or
  // began with none before it: the server's watchdog closes a connection
  // whose client has taken nothing for ServerOptions::send_timeout.
  std::atomic<int> sends_waiting{0};
  std::atomic<int64_t> send_progress_ns{0};

  // Send, counted for the watchdog.
  absl::Status Send(absl::Span<const std::string_view> parts) {
    return Counted([&] { return transport->Send(parts, 0); });
  }
  // The same, `parts` then `body` serialized by the transport.
  absl::Status SendBody(absl::Span<const std::string_view> parts, const BodyWriter& body) {
    return Counted([&] { return transport->SendBodyWithin(parts, body, 0, kNoDeadline); });
  }

 private:
  template <typename SendFn>
  absl::Status Counted(SendFn send) {
    if (sends_waiting.fetch_add(1) == 0) send_progress_ns.store(MonotonicNowNs());
    absl::Status sent = send();
    send_progress_ns.store(MonotonicNowNs());
    sends_waiting.fetch_sub(1);
    return sent;
  }
};

// Past this many queued answers that need no handler (or
// max_calls_per_connection, if more), a connection whose peer does not read
// them is closed. Generous: an honest client that fires many calls past a
// limit is owed one rejection each and reads them as it can (200 such
// against max_calls_per_connection = 3 over mq: with its 4-deep reply queue
// closed the connection at 64). At about 200 bytes each, 4096 hold ~1 MiB.
constexpr int kMinQueuedControl = 4096;

// Shutdown: how long cancelled handlers may take to return before the
// connections are closed under them.
constexpr absl::Duration kCloseStuckAfter = absl::Seconds(1);

// A request this large for a handler thread is asked of the transport to
// be kept where it was read (Connection::KeepDeliveredMessage) rather than
// copied; the transport has its own floor too.
constexpr size_t kKeepRequestMin = 64 * 1024;

// Set on every server's loop thread: it must never block on a peer.
thread_local bool on_a_server_loop = false;

// A body whose serializing is timed apart from the send around it: the time
// inside WriteFlat, or inside WriteTo less the time the transport spent in
// Next (where shm: waits for room in the ring and publishes what was
// written). A generated handler's large reply is serialized by the
// transport (SendReply); on a handler thread the server learns the
// handler's time with this serializing but without the send, as on the
// loop, whose send never waits. Counting the send (the kernel's copy, and
// any wait for the client to read) kept a method whose reply takes longer
// to send than inline_handler_limit on the handler threads for good once a
// slow run had sent it there (a 64 KiB echo over a FIFO: ~20 us to send,
// a wake-up more a call).
class TimedBody final : public BodyWriter {
 public:
  explicit TimedBody(const BodyWriter& body) : BodyWriter(body.size()), body_(body) {}

  void WriteTo(OutputSpans& out) const override {
    TimedSpans timed(out);
    const int64_t start_ns = MonotonicNowNs();
    body_.WriteTo(timed);
    serializing_ns_ += MonotonicNowNs() - start_ns - timed.waited_ns();
  }
  void WriteFlat(char* data) const override {
    const int64_t start_ns = MonotonicNowNs();
    body_.WriteFlat(data);
    serializing_ns_ += MonotonicNowNs() - start_ns;
  }
  int64_t serializing_ns() const { return serializing_ns_; }

 private:
  class TimedSpans final : public OutputSpans {
   public:
    explicit TimedSpans(OutputSpans& out) : out_(out) {}
    absl::Span<char> Next() override {
      const int64_t start_ns = MonotonicNowNs();
      absl::Span<char> piece = out_.Next();
      waited_ns_ += MonotonicNowNs() - start_ns;
      return piece;
    }
    void BackUp(size_t n) override { out_.BackUp(n); }
    int64_t waited_ns() const { return waited_ns_; }

   private:
    OutputSpans& out_;
    int64_t waited_ns_ = 0;
  };

  const BodyWriter& body_;
  mutable int64_t serializing_ns_ = 0;
};

// A registered method, and what the server has learned of its handler: a
// handler that returned within ServerOptions::inline_handler_limit the last
// kShortRunsToInline times it ran, and never made an outgoing call, runs on
// the loop thread that read its request. One slow run sends it back to the
// handler threads until it has been short that many times again; one
// outgoing call (which could need this very loop to be answered) sends it
// there for good.
struct MethodEntry {
  static constexpr int kShortRunsToInline = 8;
  static constexpr int kNeverInline = -1;

  explicit MethodEntry(const Service::Method* method)
      : handler(&method->handler), kind(method->kind), stream_handler(&method->stream_handler) {}

  bool RunsInline(int64_t limit_ns) const {
    return limit_ns > 0 && short_runs.load(std::memory_order_relaxed) >= kShortRunsToInline;
  }
  void Learn(int64_t ran_ns, int64_t limit_ns, bool made_calls) {
    // A compare-exchange, not a store: handlers of one method return on
    // several threads at once (handler threads, the loop, grpc:'s), and
    // kNeverInline, once set, must never be overwritten by a racing count.
    int runs = short_runs.load(std::memory_order_relaxed);
    for (;;) {
      if (runs == kNeverInline) return;
      int next;
      if (made_calls) {
        next = kNeverInline;
      } else if (ran_ns > limit_ns) {
        next = 0;
      } else if (runs < kShortRunsToInline) {
        next = runs + 1;
      } else {
        return;
      }
      if (short_runs.compare_exchange_weak(runs, next, std::memory_order_relaxed)) return;
    }
  }

  const Service::MethodHandler* const handler;
  const MethodKind kind;
  const Service::StreamHandler* const stream_handler;
  std::atomic<int> short_runs{0};
};

// The inside of a Server. Frames are read and dispatched on one loop thread.
// Handlers run on the handler threads (HandlerScheduler: highest priority,
// then earliest deadline first), except short ones (MethodEntry), which run
// on the loop when nothing is queued for the handler threads. grpc: hands
// a unary call's REQUEST over on gRPC's own thread (transport.h): OnRequest
// runs there as on the loop (a short handler runs there too), except that
// the loop's spare call state is left alone and rejections go through a
// handler thread.
//
// Made only as a Server::Core (below), the name Server holds it by.
class ServerCore : public IntrospectionSource {
 public:
  ~ServerCore() override;

  absl::Status RegisterService(Service* service);
  absl::Status Listen(std::string_view endpoint);
  absl::Status Start();
  void Wait();
  void Shutdown(absl::Duration grace);
  Server::Stats stats() const;
  std::vector<std::string> endpoints() const {
    MutexLock lock(&mu_);
    return endpoints_;
  }

  // IntrospectionSource: for the built-in services.
  ServerRecord Record() const override;
  std::vector<std::string> MethodNames() const override;
  void FillStats(ServerStats* stats) const override;

 protected:
  explicit ServerCore(const ServerOptions& options);

 private:
  enum class State { kNew, kRunning, kDone };

  absl::Status RegisterServiceLocked(Service* service) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The record with the endpoints and services as they are now.
  ServerRecord RecordLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Writes the registry record (endpoints and services as they are now).
  void UpdateRegistryLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  void OnAccept(const std::string& endpoint, bool ends_server,
                std::shared_ptr<Connection> transport);
  // Every send_timeout / 4 on the loop: closes connections whose client has
  // taken nothing the server sends for send_timeout (a client that never
  // reads must not hold handler threads).
  void WatchSends();
  void OnMessage(const std::shared_ptr<ServerConnection>& connection, std::string_view message);
  void OnRequest(const std::shared_ptr<ServerConnection>& connection, const FrameView& frame);
  void OnClosed(const std::shared_ptr<ServerConnection>& connection, absl::Status reason);
  // Streams: the state a stream REQUEST starts with, its handler on a
  // thread of its own, and the client's MESSAGE, HALF_CLOSE and WINDOW.
  std::unique_ptr<ServerStreamState> NewStreamState(
      const std::shared_ptr<ServerConnection>& connection, const FrameView& frame);
  void RunStreamHandler(const std::shared_ptr<ServerConnection>& connection,
                        const std::shared_ptr<ServerCallState>& call, MethodEntry* method);
  void OnStreamFrame(const std::shared_ptr<ServerConnection>& connection, const FrameView& frame);
  void RunHandler(const std::shared_ptr<ServerConnection>& connection,
                  const std::shared_ptr<ServerCallState>& call, MethodEntry* method,
                  std::string_view request);
  // With `body`, the response is that (serialized by the transport), not
  // `response`. Unless `release` is false, the call's place is given back
  // (then the caller must call ReleaseHeld).
  void FinishCall(const std::shared_ptr<ServerConnection>& connection,
                  const std::shared_ptr<ServerCallState>& call, const absl::Status& status,
                  std::string_view response, const BodyWriter* body = nullptr,
                  bool release = true);
  // What FinishCall gives back last: the call's bytes and its place.
  void ReleaseHeld(const ServerCallState& call) {
    bytes_in_flight_.fetch_sub(call.held_bytes);
    ReleaseCall();
  }
  // Gives back a place counted in calls_in_flight_ (and wakes Shutdown
  // when it waits for the last).
  void ReleaseCall();
  // Sends a RESPONSE (from a pool thread, or Shutdown's).
  // `flags`: kFlagRefused for a call refused without starting.
  // `rejection`: an answer that needs no handler (counted by QueueControl if
  // it must wait for a handler thread).
  // `never_wait`: Shutdown's answers: one that cannot go out without
  // waiting for the client is dropped (the client then sees the connection
  // end instead).
  void SendResponse(const std::shared_ptr<ServerConnection>& connection, uint64_t request_id,
                    const absl::Status& status, std::string_view payload, uint16_t flags = 0,
                    bool rejection = false, bool never_wait = false,
                    const Metadata* metadata = nullptr, const BodyWriter* writer = nullptr);
  // Counts one more answer queued for a handler thread; false (and the
  // connection closed) past its limit (kMinQueuedControl, or
  // max_calls_per_connection if more).
  bool QueueControl(const std::shared_ptr<ServerConnection>& connection);
  // An immediate answer to a request that does not reach a handler.
  void Reject(const std::shared_ptr<ServerConnection>& connection, uint64_t request_id,
              absl::Status status, uint16_t flags = 0);
  void SendControl(const std::shared_ptr<ServerConnection>& connection, FrameType type,
                   uint64_t request_id, std::string_view text);

  const ServerOptions options_;
  // options_.max_bytes_in_flight as compared on every call (a limit past
  // INT64_MAX is no limit).
  const int64_t max_bytes_in_flight_ = static_cast<int64_t>(
      std::min<size_t>(options_.max_bytes_in_flight, std::numeric_limits<int64_t>::max()));
  const int64_t inline_limit_ns_ = absl::ToInt64Nanoseconds(options_.inline_handler_limit);
  TransportOptions transport_options_;

  asio::io_context io_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  std::optional<asio::steady_timer> send_watch_;  // loop only
  std::thread loop_thread_;
  std::optional<HandlerScheduler> pool_;
  StreamThreads stream_threads_;
  std::atomic<int> open_streams_{0};

  // Filled before Start, read-only after (the loop starts in Start).
  absl::flat_hash_map<std::string, std::unique_ptr<MethodEntry>> methods_;
  std::vector<std::string> method_names_;  // in registration order
  std::vector<std::unique_ptr<Service>> builtin_services_;
  const ServerRecord record_ = RecordForThisProcess();
  const int64_t created_ns_ = MonotonicNowNs();

  std::atomic<bool> draining_{false};
  std::atomic<int> calls_in_flight_{0};
  std::atomic<int64_t> calls_handled_{0};
  std::atomic<int64_t> calls_rejected_{0};
  std::atomic<int64_t> calls_received_{0};
  std::atomic<int64_t> responses_by_code_[17] = {};
  std::atomic<int64_t> responses_dropped_{0};
  std::atomic<int64_t> bytes_received_{0};
  std::atomic<int64_t> bytes_sent_{0};
  std::atomic<int64_t> connections_accepted_{0};
  // connections_.size(), for listeners (TransportOptions::open_connections).
  const std::shared_ptr<std::atomic<int>> open_connections_ =
      std::make_shared<std::atomic<int>>(0);
  // Set by Start (under mu_, which RegisterService takes too): methods_
  // is final from then on (TransportOptions::server_running).
  const std::shared_ptr<std::atomic<bool>> running_ = std::make_shared<std::atomic<bool>>(false);
  // Connections a listener refused for the limit before the server saw them.
  const std::shared_ptr<std::atomic<int64_t>> listener_refusals_ =
      std::make_shared<std::atomic<int64_t>>(0);
  // Bytes held by the calls in flight (ServerOptions::max_bytes_in_flight).
  std::atomic<int64_t> bytes_in_flight_{0};
  std::atomic<int64_t> connections_refused_{0};
  std::atomic<uint64_t> next_connection_id_{1};

  mutable Mutex mu_;
  State state_ ABSL_GUARDED_BY(mu_) = State::kNew;
  bool shutdown_started_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::unique_ptr<Listener>> listeners_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<std::shared_ptr<ServerConnection>> connections_ ABSL_GUARDED_BY(mu_);
  std::thread auto_shutdown_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> endpoints_ ABSL_GUARDED_BY(mu_);
  std::optional<RegistryEntry> registry_ ABSL_GUARDED_BY(mu_);
};

ServerCore::ServerCore(const ServerOptions& options) : options_(options) {
  transport_options_.max_message_size = options.max_message_size + kMaxFrameOverhead;
  transport_options_.mode = options.mode;
  transport_options_.allowed_uids = options.allowed_uids;
  transport_options_.max_connections = options.max_connections;
  transport_options_.open_connections = open_connections_;
  transport_options_.server_running = running_;
  transport_options_.refused_connections = listener_refusals_;
  transport_options_.grpc_certificate_chain_file = options.grpc.certificate_chain_file;
  transport_options_.grpc_private_key_file = options.grpc.private_key_file;
  transport_options_.grpc_root_certificates_file = options.grpc.root_certificates_file;
  transport_options_.grpc_require_client_certificate = options.grpc.require_client_certificate;
  transport_options_.grpc_allow_plaintext_off_host = options.grpc.allow_plaintext_off_host;
  transport_options_.grpc_max_concurrent_streams = options.max_calls_per_connection;
  // Asked on the server's loop, which runs from Start on, or on gRPC's
  // threads once running_ says the server has started: when methods_ no
  // longer changes.
  transport_options_.grpc_method_streams = [this](std::string_view name) -> std::optional<bool> {
    auto method = methods_.find(Av(name));
    if (method == methods_.end()) return std::nullopt;
    return method->second->kind != MethodKind::kUnary;
  };
  // Asked by Listen, which holds no lock while it makes a listener.
  transport_options_.grpc_unary_methods = [this] {
    MutexLock lock(&mu_);
    std::vector<std::string> names;
    for (const auto& [name, method] : methods_) {
      if (method->kind == MethodKind::kUnary) names.push_back(name);
    }
    std::sort(names.begin(), names.end());
    return names;
  };
  int threads = options.handler_threads;
  if (threads <= 0) {
    threads = std::max(2, static_cast<int>(std::thread::hardware_concurrency()));
  }
  pool_.emplace(threads);
  work_.emplace(asio::make_work_guard(io_));
  if (options.introspection) builtin_services_.push_back(NewIntrospectionService(this));
  if (options.reflection) builtin_services_.push_back(NewReflectionService(this));
  MutexLock lock(&mu_);
  for (auto& service : builtin_services_) RegisterServiceLocked(service.get()).IgnoreError();
}

ServerCore::~ServerCore() {
  Shutdown(absl::ZeroDuration());
  std::thread auto_shutdown;
  {
    MutexLock lock(&mu_);
    auto_shutdown = std::move(auto_shutdown_);
  }
  if (auto_shutdown.joinable()) auto_shutdown.join();
}

absl::Status ServerCore::RegisterService(Service* service) {
  MutexLock lock(&mu_);
  return RegisterServiceLocked(service);
}

absl::Status ServerCore::RegisterServiceLocked(Service* service) {
  if (state_ != State::kNew) {
    return absl::FailedPreconditionError("RegisterService: the server has already started");
  }
  for (const Service::Method& method : service->methods()) {
    if (methods_.contains(method.name)) {
      return absl::AlreadyExistsError(
          absl::StrCat("RegisterService: method ", method.name, " is registered already"));
    }
  }
  for (const Service::Method& method : service->methods()) {
    methods_.emplace(method.name, std::make_unique<MethodEntry>(&method));
    method_names_.push_back(method.name);
  }
  return absl::OkStatus();
}

void ServerCore::UpdateRegistryLocked() {
  if (!options_.registry) return;
  const ServerRecord record = RecordLocked();
  if (!registry_.has_value()) registry_.emplace();
  RemoveStaleRecordsSharing(endpoints_);
  absl::Status written = registry_->Write(record);
  if (!written.ok()) {
    IPCRPC_LOG(WARNING) << "server registry: cannot record this server (ipcrpc ls will not "
                        << "show it): " << written;
  }
}

absl::Status ServerCore::Listen(std::string_view endpoint) {
  IPCRPC_ASSIGN_OR_RETURN(std::unique_ptr<Listener> listener,
                          CreateListener(endpoint, transport_options_));
  MutexLock lock(&mu_);
  if (shutdown_started_) {
    return absl::FailedPreconditionError(
        absl::StrCat("Listen(", Av(endpoint), "): the server is shut down"));
  }
  const bool ends_server = listener->EndsServerWithConnection();
  IPCRPC_RETURN_IF_ERROR(listener->Start(
      io_, [this, ends_server, name = listener->endpoint()](std::shared_ptr<Connection> c) {
        OnAccept(name, ends_server, std::move(c));
      }));
  endpoints_.push_back(listener->endpoint());
  listeners_.push_back(std::move(listener));
  if (state_ == State::kRunning) UpdateRegistryLocked();
  return absl::OkStatus();
}

absl::Status ServerCore::Start() {
  MutexLock lock(&mu_);
  if (state_ != State::kNew || shutdown_started_) {
    return absl::FailedPreconditionError("Start: the server was started or shut down already");
  }
  state_ = State::kRunning;
  running_->store(true, std::memory_order_release);
  if (options_.send_timeout > absl::ZeroDuration() &&
      options_.send_timeout < absl::InfiniteDuration()) {
    asio::post(io_, [this] { WatchSends(); });
  }
  loop_thread_ = std::thread([this] {
    BeginOwnThread("ipcrpc-server");
    RequestShortTimeSlice();
    on_a_server_loop = true;
    io_.run();
  });
  UpdateRegistryLocked();
  return absl::OkStatus();
}

void ServerCore::Wait() {
  MutexLock lock(&mu_);
  mu_.Await(Condition(
      +[](State* state) { return *state == State::kDone; }, &state_));
}

void ServerCore::WatchSends() {
  const int64_t timeout_ns = absl::ToInt64Nanoseconds(options_.send_timeout);
  std::vector<std::shared_ptr<ServerConnection>> stuck;
  {
    MutexLock lock(&mu_);
    if (shutdown_started_) return;  // Shutdown bounds its own sends
    const int64_t now = MonotonicNowNs();
    for (const auto& connection : connections_) {
      if (connection->sends_waiting.load() > 0 &&
          now - connection->send_progress_ns.load() > timeout_ns) {
        stuck.push_back(connection);
      }
    }
  }
  for (const auto& connection : stuck) {
    IPCRPC_LOG(WARNING) << connection->transport->description()
                        << ": closing the connection: the client has taken nothing the server "
                           "sent for "
                        << absl::FormatDuration(options_.send_timeout)
                        << " (ServerOptions::send_timeout)";
    connection->transport->Close();
  }
  send_watch_.emplace(io_, std::chrono::steady_clock::now() +
                               std::chrono::nanoseconds(std::max<int64_t>(timeout_ns / 4, 1000000)));
  send_watch_->async_wait([this](const asio::error_code& ec) {
    if (!ec) WatchSends();
  });
}

void ServerCore::OnAccept(const std::string& endpoint, bool ends_server,
                          std::shared_ptr<Connection> transport) {
  auto connection = std::make_shared<ServerConnection>(next_connection_id_.fetch_add(1), endpoint,
                                                       transport, ends_server);
  {
    MutexLock lock(&mu_);
    if (shutdown_started_) {
      transport->Close();
      return;
    }
    if (static_cast<int>(connections_.size()) >= options_.max_connections) {
      connections_refused_.fetch_add(1, std::memory_order_relaxed);
      IPCRPC_LOG(WARNING) << transport->description() << ": refusing the connection: "
                          << "ServerOptions::max_connections (" << options_.max_connections
                          << ") reached";
      transport->Close();
      return;
    }
    connections_.insert(connection);
    open_connections_->store(static_cast<int>(connections_.size()), std::memory_order_relaxed);
    connections_accepted_.fetch_add(1, std::memory_order_relaxed);
  }
  transport->Start(
      io_, [this, connection](std::string_view message) { OnMessage(connection, message); },
      [this, connection](absl::Status reason) { OnClosed(connection, std::move(reason)); });
}

void ServerCore::OnMessage(const std::shared_ptr<ServerConnection>& connection,
                           std::string_view message) {
  bytes_received_.fetch_add(static_cast<int64_t>(message.size()), std::memory_order_relaxed);
  auto frame = DecodeFrame(message, options_.max_message_size);
  if (!frame.ok()) {
    IPCRPC_LOG(WARNING) << connection->transport->description()
                        << ": closing the connection: bad frame: " << frame.status();
    connection->transport->Close();
    return;
  }
  switch (frame->header.type) {
    case FrameType::kRequest:
      OnRequest(connection, *frame);
      return;
    case FrameType::kCancel: {
      std::shared_ptr<ServerCallState> call;
      {
        MutexLock lock(&connection->mu);
        auto it = connection->calls.find(frame->header.request_id);
        if (it != connection->calls.end()) call = it->second;
      }
      if (call != nullptr) {
        call->cancelled_by_client.store(true);
        call->Cancel();
      }
      return;
    }
    case FrameType::kHello:
      SendControl(connection, FrameType::kHello, 0, "");
      return;
    case FrameType::kPing:
      SendControl(connection, FrameType::kPong, frame->header.request_id, "");
      return;
    case FrameType::kPong:
      return;
    case FrameType::kMessage:
    case FrameType::kHalfClose:
    case FrameType::kWindow:
      OnStreamFrame(connection, *frame);
      return;
    case FrameType::kResponse:
    case FrameType::kGoAway:
      IPCRPC_LOG(WARNING) << connection->transport->description()
                          << ": closing the connection: a client sent a "
                          << FrameTypeName(frame->header.type) << " frame";
      connection->transport->Close();
      return;
  }
}

void ServerCore::OnRequest(const std::shared_ptr<ServerConnection>& connection,
                           const FrameView& frame) {
  const uint64_t id = frame.header.request_id;
  calls_received_.fetch_add(1, std::memory_order_relaxed);
  if (draining_.load()) {
    // Refused, not started: the client may send it again elsewhere.
    Reject(connection, id, absl::UnavailableError("the server is shutting down"), kFlagRefused);
    return;
  }
  if (frame.header.deadline_ns <= MonotonicNowNs()) {
    Reject(connection, id,
           absl::DeadlineExceededError(absl::StrCat(
               "deadline passed before ", Av(frame.name), " started on the server")));
    return;
  }
  auto method = methods_.find(Av(frame.name));
  if (method == methods_.end()) {
    Reject(connection, id,
           absl::UnimplementedError(
               absl::StrCat("method ", Av(frame.name), " is not implemented by this server")));
    return;
  }
  MethodEntry* const found = method->second.get();
  const bool is_stream = (frame.header.flags & kFlagStream) != 0;
  if (is_stream != (found->kind != MethodKind::kUnary)) {
    Reject(connection, id,
           absl::UnimplementedError(absl::StrCat(
               "method ", Av(frame.name), is_stream ? " is unary: it cannot be called as a stream"
                                                   : " streams: it cannot be called as unary")));
    return;
  }
  if (is_stream && open_streams_.load() >= options_.max_open_streams) {
    Reject(connection, id,
           absl::ResourceExhaustedError(
               absl::StrCat("server overloaded: ServerOptions::max_open_streams (",
                            options_.max_open_streams, ") reached")));
    return;
  }
  // Counted before it is checked: requests may be taken on several threads
  // at once (grpc:), and the limit holds all the same. Every refusal below
  // gives the place back (ReleaseCall).
  if (calls_in_flight_.fetch_add(1) >= options_.max_calls_in_flight) {
    ReleaseCall();
    Reject(connection, id,
           absl::ResourceExhaustedError(
               absl::StrCat("server overloaded: ServerOptions::max_calls_in_flight (",
                            options_.max_calls_in_flight, ") reached")));
    return;
  }
  if (draining_.load()) {
    // Shutdown began since the check above (on another thread: grpc:).
    // Counted first, then checked again, as Shutdown sets draining_ and then
    // reads the count (both seq_cst): either it waits for this call, or
    // this call sees it and is refused.
    ReleaseCall();
    Reject(connection, id, absl::UnavailableError("the server is shutting down"), kFlagRefused);
    return;
  }
  const PeerCredentials& peer = connection->transport->peer();
  MethodEntry* entry = method->second.get();
  // A short handler runs here, on the thread that read the request: no
  // hand-off to a handler thread (a wake-up) for it, and nothing queued
  // that it would overtake.
  const bool run_here =
      !is_stream && entry->RunsInline(inline_limit_ns_) && pool_->queued_calls() == 0;
  std::shared_ptr<ServerCallState> call;
  if (run_here && on_a_server_loop && connection->spare_call != nullptr &&
      connection->spare_call.use_count() == 1) {
    call = std::move(connection->spare_call);
    call->Reuse(id, frame.header.deadline_ns, frame.header.priority, frame.name,
                DecodeMetadata(frame.metadata), peer.pid, peer.uid);
  } else {
    call = std::make_shared<ServerCallState>(id, frame.header.deadline_ns, frame.header.priority,
                                             std::string(frame.name),
                                             DecodeMetadata(frame.metadata), peer.pid, peer.uid);
  }
  if (is_stream) call->stream = NewStreamState(connection, frame);
  // Charged as decoded, not as sent (see ServerOptions::max_bytes_in_flight).
  // A stream's first message is checked with the rest, but once accepted
  // its charge belongs to the stream's inbox (released as it is read).
  int64_t held = 512 + static_cast<int64_t>((is_stream ? 0 : frame.payload.size()) +
                                            frame.name.size());
  for (const auto& [key, value] : call->metadata) {
    held += 64 + static_cast<int64_t>(key.size() + value.size());
  }
  int64_t first_message = 0;
  if (is_stream) {
    MutexLock lock(&call->stream->mu);  // uncontended: nobody else has the stream yet
    first_message = call->stream->unread_bytes;
  }
  held += first_message;
  if (bytes_in_flight_.fetch_add(held) + held > max_bytes_in_flight_) {
    bytes_in_flight_.fetch_sub(held);
    ReleaseCall();
    Reject(connection, id,
           absl::ResourceExhaustedError(absl::StrCat(
               "server overloaded: ServerOptions::max_bytes_in_flight (",
               options_.max_bytes_in_flight, " bytes) reached")));
    return;
  }
  call->held_bytes = held - first_message;
  bool over_connection_limit = false;
  bool duplicate = false;
  bool closed = false;
  {
    MutexLock lock(&connection->mu);
    over_connection_limit =
        static_cast<int>(connection->calls.size()) >= options_.max_calls_per_connection;
    // Either is answered below, outside the lock (Close may wait for a
    // thread that waits for it: grpc:'s direct deliveries).
    if (!over_connection_limit) duplicate = !connection->calls.emplace(id, call).second;
    // Ended meanwhile (OnClosed sets `closed` before it cancels what is in
    // the table, under this lock): not started, as nobody would cancel it.
    if (!over_connection_limit && !duplicate && connection->closed.load()) {
      connection->calls.erase(id);
      closed = true;
    }
  }
  if (closed) {
    bytes_in_flight_.fetch_sub(held);
    ReleaseCall();
    return;  // nobody to answer
  }
  if (duplicate) {
    IPCRPC_LOG(WARNING) << connection->transport->description()
                        << ": closing the connection: request id " << id
                        << " is already in flight";
    bytes_in_flight_.fetch_sub(held);
    ReleaseCall();
    connection->transport->Close();
    return;
  }
  if (over_connection_limit) {
    bytes_in_flight_.fetch_sub(held);
    ReleaseCall();
    Reject(connection, id,
           absl::ResourceExhaustedError(absl::StrCat(
               "server overloaded: ServerOptions::max_calls_per_connection (",
               options_.max_calls_per_connection, ") reached")));
    return;
  }
  if (is_stream) open_streams_.fetch_add(1);
  if (run_here) {
    // No deadline timer: the loop could not fire it before the handler
    // returns; IsCancelled() and FinishCall check the deadline themselves.
    RunHandler(connection, call, entry, frame.payload);
    // Nobody else holds the state now (FinishCall took it out of the
    // table; no timer ever referred to it): keep it for the next call.
    // (The spare is the loop's: not kept by a transport's own thread.)
    if (on_a_server_loop && call.use_count() == 1) connection->spare_call = std::move(call);
    return;
  }
  if (call->deadline_ns != kNoDeadline) {
    call->deadline_timer.emplace(io_, SteadyTimeOf(call->deadline_ns));
    std::weak_ptr<ServerCallState> weak = call;
    call->deadline_timer->async_wait([weak](const asio::error_code& ec) {
      if (ec) return;
      if (auto expired = weak.lock()) expired->Cancel();
    });
  }
  if (is_stream) {
    // Read and Write wait on the stream: wake them when it is cancelled.
    ServerStreamState* stream = call->stream.get();
    call->OnCancel([stream] {
      { MutexLock lock(&stream->mu); }
      stream->cv.SignalAll();
    });
    if (!stream_threads_.Run([this, connection, call, entry] {
          RunStreamHandler(connection, call, entry);
        })) {
      // Never started: answered at once, like a call over a limit.
      IPCRPC_LOG(WARNING) << "cannot start a thread for a stream of " << call->method;
      {
        MutexLock lock(&call->stream->mu);
        call->stream->handler_done = true;
        bytes_in_flight_.fetch_sub(call->stream->unread_bytes);
        call->stream->unread_bytes = 0;
        call->stream->inbox.clear();
      }
      call->Finish();
      static const std::string kNoPayload;
      FinishCall(connection, call,
                 absl::ResourceExhaustedError(absl::StrCat(
                     "server overloaded: no thread for a stream of ", call->method)),
                 kNoPayload);
      open_streams_.fetch_sub(1);
    }
    return;
  }
  // The handler thread's copy of the request; a large one stays where the
  // transport read it instead, when the transport keeps it there for the
  // handler (KeepDeliveredMessage: a 1 MiB copy is 80-100 us).
  std::shared_ptr<const void> kept;
  if (frame.payload.size() >= kKeepRequestMin) {
    kept = connection->transport->KeepDeliveredMessage();
  }
  std::string copy = kept == nullptr ? StringOf(frame.payload) : std::string();
  pool_->Post(call->priority, call->deadline_ns,
              [this, connection, call, entry, kept = std::move(kept), copy = std::move(copy),
               view = frame.payload] {
    RunHandler(connection, call, entry, kept != nullptr ? view : std::string_view(copy));
  });
}

std::unique_ptr<ServerStreamState> ServerCore::NewStreamState(
    const std::shared_ptr<ServerConnection>& connection, const FrameView& frame) {
  auto stream = std::make_unique<ServerStreamState>();
  stream->window = ClampStreamWindow(options_.stream_window);
  stream->max_message_size = options_.max_message_size;
  stream->charged = &bytes_in_flight_;
  {
    // Nobody else has the stream yet: the lock is uncontended, and keeps
    // the fields' annotations checked here too.
    MutexLock lock(&stream->mu);
    stream->receive_limit = stream->window;
    // DecodeFrame checked the head: the client's window, then the message.
    stream->send_limit = static_cast<int64_t>(GetLe(frame.payload.data(), 4));
    if ((frame.header.flags & kFlagWithMessage) != 0) {
      std::string_view first = frame.payload.substr(kStreamHeadSize);
      stream->received = StreamCost(first.size());
      stream->unread_bytes = stream->received;
      stream->messages_received = 1;
      stream->inbox.emplace_back(first);
    }
    stream->half_closed = (frame.header.flags & kFlagHalfClose) != 0;
  }
  std::weak_ptr<ServerConnection> weak = connection;
  stream->send = [this, weak, id = frame.header.request_id](FrameType type,
                                                            std::string_view payload) {
    auto alive = weak.lock();
    if (alive == nullptr) return false;
    FrameHeader header;
    header.type = type;
    header.request_id = id;
    thread_local std::string prefix;
    if (!EncodeFramePrefix(header, "", {}, payload.size(), options_.max_message_size, &prefix)
             .ok()) {
      return false;
    }
    std::string_view parts[] = {prefix, payload};
    // Not bounded by the call's deadline: past it the client drains the
    // stream (reads and drops until the RESPONSE), so the send completes;
    // one cut at the deadline would leave half a message and cost the
    // connection. A client that takes nothing loses its connection after
    // ServerOptions::send_timeout (the watchdog).
    if (!alive->Send(parts).ok()) return false;
    bytes_sent_.fetch_add(static_cast<int64_t>(prefix.size() + payload.size()),
                          std::memory_order_relaxed);
    return true;
  };
  return stream;
}

void ServerCore::RunStreamHandler(const std::shared_ptr<ServerConnection>& connection,
                                  const std::shared_ptr<ServerCallState>& call,
                                  MethodEntry* method) {
  absl::Status status;
  ServerStreamState& stream = *call->stream;
  const bool expired = MonotonicNowNs() >= call->deadline_ns;
  if (expired || call->IsCancelled()) {
    calls_rejected_.fetch_add(1);
    status = expired
                 ? absl::DeadlineExceededError(absl::StrCat(
                       "deadline passed before ", call->method, " started on the server"))
                 : absl::CancelledError(absl::StrCat(call->method, " cancelled before it started"));
  } else {
    calls_handled_.fetch_add(1);
    bool grant = false;
    {
      MutexLock lock(&stream.mu);
      grant = !stream.half_closed && stream.window > kInitialStreamWindow;
    }
    if (grant) {
      // The client started with kInitialStreamWindow; the rest of ours.
      std::string payload;
      PutLe(&payload, static_cast<uint64_t>(stream.window - kInitialStreamWindow), 8);
      stream.send(FrameType::kWindow, payload);
    }
    ServerContext context = ServerCallState::MakeContext(call);
    GenericServerStream server_stream = ServerCallState::MakeStream(call);
    try {
      status = (*method->stream_handler)(context, server_stream);
    } catch (const std::exception& e) {
      status = absl::InternalError(absl::StrCat(call->method, " threw: ", e.what()));
    } catch (...) {
      status = absl::InternalError(absl::StrCat(call->method, " threw an exception"));
    }
  }
  {
    MutexLock lock(&stream.mu);
    if (stream.failed) status = stream.failure;
    // From here on messages are dropped uncharged (OnStreamFrame): the call
    // leaves its connection's table only in FinishCall.
    stream.handler_done = true;
    stream.inbox.clear();
    bytes_in_flight_.fetch_sub(stream.unread_bytes);
    stream.unread_bytes = 0;
  }
  call->Finish();
  static const std::string kNoPayload;
  FinishCall(connection, call, status, kNoPayload);
  // Only now: until its RESPONSE is sent (which may wait for the client),
  // the stream holds this thread, and the limit bounds threads.
  open_streams_.fetch_sub(1);
}

void ServerCore::OnStreamFrame(const std::shared_ptr<ServerConnection>& connection,
                               const FrameView& frame) {
  std::shared_ptr<ServerCallState> call;
  {
    MutexLock lock(&connection->mu);
    auto it = connection->calls.find(frame.header.request_id);
    if (it != connection->calls.end()) call = it->second;
  }
  // Ended here already (the handler returned, or it was refused): the client
  // may not know yet. Dropped; nothing of it is kept.
  if (call == nullptr) return;
  const char* violation = nullptr;
  bool over_limit = false;
  if (call->stream == nullptr) {
    violation = "a stream frame for a unary call";
  } else {
    ServerStreamState& stream = *call->stream;
    MutexLock lock(&stream.mu);
    switch (frame.header.type) {
      case FrameType::kWindow:
        stream.send_limit += static_cast<int64_t>(GetLe(frame.payload.data(), 8));
        break;
      case FrameType::kHalfClose:
        if (stream.half_closed) violation = "HALF_CLOSE on a stream it had half-closed already";
        stream.half_closed = true;
        break;
      default:  // kMessage
        if (stream.half_closed) {
          violation = "a MESSAGE on a stream it had half-closed";
        } else if (stream.received >= stream.receive_limit) {
          violation = "a MESSAGE past the stream's window";
        } else {
          const int64_t cost = StreamCost(frame.payload.size());
          stream.received += cost;
          ++stream.messages_received;
          // A cancelled stream's handler reads nothing more.
          if (call->WasCancelled() || stream.failed || stream.handler_done) {
            // dropped
          } else if (bytes_in_flight_.fetch_add(cost) + cost > max_bytes_in_flight_) {
            // The server's memory limit, across every call and stream: this
            // stream ends (not the connection: its peer broke no rule).
            bytes_in_flight_.fetch_sub(cost);
            stream.failed = true;
            stream.failure = absl::ResourceExhaustedError(absl::StrCat(
                "server overloaded: ServerOptions::max_bytes_in_flight (",
                options_.max_bytes_in_flight, " bytes) reached by ", call->method, "'s messages"));
            over_limit = true;
          } else {
            stream.unread_bytes += cost;
            stream.inbox.emplace_back(frame.payload);
          }
        }
        break;
    }
  }
  if (violation != nullptr) {
    IPCRPC_LOG(WARNING) << connection->transport->description()
                        << ": closing the connection: the client sent " << violation
                        << " (request id " << frame.header.request_id << ")";
    connection->transport->Close();
    return;
  }
  if (over_limit) call->Cancel();  // wakes the handler (OnCancel), outside the stream's lock
  call->stream->cv.SignalAll();
}

void ServerCore::RunHandler(const std::shared_ptr<ServerConnection>& connection,
                            const std::shared_ptr<ServerCallState>& call,
                            MethodEntry* method, std::string_view request) {
  absl::Status status;
  // This thread's response buffer: a warm call's response reuses its
  // capacity (a thread runs one handler at a time; the loop's inline ones
  // never nest). A buffer grown past ScratchString::kKeptBytes (2 MiB)
  // is given back afterwards; up to that, a large response's pages are
  // faulted in once per thread, not once per call (include/ipcrpc/scratch.h).
  thread_local std::string response;
  response.clear();
  // And its buffer for a generated handler's reply (ipcrpc::SerializeReply),
  // which keeps its length between calls so that it is not zeroed first.
  thread_local std::string reply_buffer;
  ReplySlot slot;
  slot.response = &response;
  slot.buffer = &reply_buffer;
  // A generated handler's large reply is sent by SendReply, from inside
  // the handler (ipcrpc/message_body.h): the call ends there. What the
  // server learns of the handler's time counts the reply's serializing but
  // not its sending (TimedBody), as a run on the loop counts its
  // serializing and never waits to send, and is learned before the call's
  // place is given back: from then on Shutdown may go on and destroy the
  // server. Not on a loop, which must never wait for a peer to read.
  struct BodySender {
    ServerCore* core;
    const std::shared_ptr<ServerConnection>* connection;
    const std::shared_ptr<ServerCallState>* call;
    MethodEntry* method;
    uint64_t calls_before = 0;
    int64_t started_ns = 0;
    bool sent = false;

    void Learn() const {
      method->Learn(MonotonicNowNs() - started_ns, core->inline_limit_ns_,
                    CallsStartedOnThisThread() != calls_before);
    }
  } sender{this, &connection, &call, method};
  if (!on_a_server_loop) {
    slot.send_context = &sender;
    slot.send_body = [](ReplySlot* used, const BodyWriter& body) {
      auto* sending = static_cast<BodySender*>(used->send_context);
      used->send_body = nullptr;  // once
      sending->sent = true;
      // The handler's own time ends here; of the send, only the
      // serializing counts (as on the loop, whose send never waits).
      const int64_t handler_ns = MonotonicNowNs() - sending->started_ns;
      (*sending->call)->Finish();
      TimedBody timed(body);
      // (Sending cannot throw: a failure is a status, counted and logged.)
      sending->core->FinishCall(*sending->connection, *sending->call, absl::OkStatus(), {}, &timed,
                                /*release=*/false);
      sending->method->Learn(handler_ns + timed.serializing_ns(), sending->core->inline_limit_ns_,
                             CallsStartedOnThisThread() != sending->calls_before);
      sending->core->ReleaseHeld(**sending->call);
    };
  }
  ReplySlot*& current_slot = CurrentReplySlot();
  ReplySlot* const outer_slot = current_slot;
  // (The slot is this thread's until RunHandler returns, however it does.)
  absl::Cleanup trim = [&current_slot, outer_slot] {
    current_slot = outer_slot;
    if (response.capacity() > ScratchString::kKeptBytes) std::string().swap(response);
    if (reply_buffer.capacity() > ScratchString::kKeptBytes) std::string().swap(reply_buffer);
  };
  const bool expired = MonotonicNowNs() >= call->deadline_ns;
  if (expired || call->IsCancelled()) {
    calls_rejected_.fetch_add(1);
    // Expired or cancelled while it waited for a thread: never run. (The
    // deadline is checked here too: the loop's timer may not have fired yet.)
    status = expired
                 ? absl::DeadlineExceededError(absl::StrCat(
                       "deadline passed before ", call->method, " started on the server"))
                 : absl::CancelledError(absl::StrCat(call->method, " cancelled before it started"));
  } else {
    calls_handled_.fetch_add(1);
    ServerContext context = ServerCallState::MakeContext(call);
    sender.calls_before = CallsStartedOnThisThread();
    sender.started_ns = MonotonicNowNs();
    current_slot = &slot;
    try {
      status = (*method->handler)(context, request, response);
    } catch (const std::exception& e) {
      status = absl::InternalError(absl::StrCat(call->method, " threw: ", e.what()));
    } catch (...) {
      status = absl::InternalError(absl::StrCat(call->method, " threw an exception"));
    }
    // Ended already, by SendReply (whatever the handler returned after):
    // nothing of the server may be touched now.
    if (sender.sent) return;
    sender.Learn();
  }
  call->Finish();
  // The reply SerializeReply put in the slot, unless the handler wrote into
  // `response` after it.
  const bool from_slot = slot.used && response.empty();
  FinishCall(connection, call, status, from_slot ? slot.bytes : std::string_view(response));
}

ReplySlot*& CurrentReplySlot() {
  thread_local ReplySlot* slot = nullptr;
  return slot;
}

void ServerCore::FinishCall(const std::shared_ptr<ServerConnection>& connection,
                            const std::shared_ptr<ServerCallState>& call,
                            const absl::Status& status, std::string_view response,
                            const BodyWriter* body, bool release) {
  {
    MutexLock lock(&connection->mu);
    connection->calls.erase(call->request_id);
  }
  if (call->deadline_timer.has_value()) {
    // The timer belongs to the loop; cancel it there.
    asio::post(io_, [call] {
      if (call->deadline_timer.has_value()) call->deadline_timer->cancel();
    });
  }
  // A stream the client cancelled is answered all the same (CANCELLED):
  // the client reads until this RESPONSE, so that a writer blocked on a
  // full transport gets through to its cancellation (docs/PROTOCOL.md).
  const bool answer = !call->cancelled_by_client.load() ||
                      (call->stream != nullptr && !connection->closed.load());
  if (answer && call->ClaimResponse()) {
    // The handler's response metadata goes with whatever the answer is.
    const Metadata response_metadata = call->TakeResponseMetadata();
    if (MonotonicNowNs() >= call->deadline_ns) {
      // Past the deadline the answer is DEADLINE_EXCEEDED, whatever the
      // handler made of its cancellation.
      SendResponse(connection, call->request_id,
                   absl::DeadlineExceededError(
                       absl::StrCat(call->method, ": deadline exceeded on the server")),
                   "", 0, false, false, &response_metadata);
    } else if (const size_t size = body != nullptr ? body->size() : response.size();
               status.ok() && size > options_.max_message_size) {
      SendResponse(connection, call->request_id,
                   absl::ResourceExhaustedError(absl::StrCat(
                       call->method, ": response of ", size,
                       " bytes exceeds the server's max_message_size ", options_.max_message_size)),
                   "", 0, false, false, &response_metadata);
    } else {
      SendResponse(connection, call->request_id, status,
                   status.ok() ? response : std::string_view(), 0, false,
                   false, &response_metadata, status.ok() ? body : nullptr);
    }
  } else if (call->cancelled_by_client.load()) {
    responses_dropped_.fetch_add(1, std::memory_order_relaxed);
  }
  if (release) ReleaseHeld(*call);
}

void ServerCore::ReleaseCall() {
  // Only Shutdown waits for the count (to reach zero, under mu_): take the
  // lock, which wakes it, only then. seq_cst on both sides: either this sees
  // draining_, or Shutdown (which sets it first) sees the count.
  if (calls_in_flight_.fetch_sub(1) == 1 && draining_.load()) {
    MutexLock lock(&mu_);
  }
}

void ServerCore::SendResponse(const std::shared_ptr<ServerConnection>& connection,
                              uint64_t request_id, const absl::Status& status,
                              std::string_view payload, uint16_t flags, bool rejection,
                              bool never_wait, const Metadata* metadata,
                              const BodyWriter* writer) {
  // A body (`writer`) comes only from FinishCall on a thread that may wait
  // for the peer (ReplySlot's send_body is never set on a loop), so never
  // with never_wait or rejection: it goes to the transport to serialize,
  // below.
  const size_t payload_size = writer != nullptr ? writer->size() : payload.size();
  FrameHeader header;
  header.type = FrameType::kResponse;
  header.flags = flags;
  header.request_id = request_id;
  header.status_code = static_cast<uint16_t>(status.code());
  std::string_view message = Sv(status.message());
  if (message.size() > kMaxNameSize) message = message.substr(0, kMaxNameSize);
  // This thread's buffer: Send returns once it is written (no allocation
  // per response once warm).
  thread_local std::string prefix;
  // The metadata block: the handler's response metadata, then the status's
  // payloads (docs/PROTOCOL.md). Usually neither: nothing is built.
  static const Metadata kNone;
  const Metadata* block = metadata != nullptr ? metadata : &kNone;
  Metadata with_details;
  if (std::string details = EncodeStatusDetails(status); !details.empty()) {
    with_details = *block;
    with_details.emplace_back(std::string(kStatusDetailsKey), std::move(details));
    block = &with_details;
  }
  absl::Status encoded = EncodeFramePrefix(header, message, *block, payload_size,
                                           options_.max_message_size, &prefix);
  if (!encoded.ok() && !block->empty()) {
    // Over the metadata limits: the caller learns that instead of the answer.
    IPCRPC_LOG(WARNING) << connection->transport->description() << ": response to request "
                        << request_id << " not sent as it was: " << encoded.message();
    SendResponse(connection, request_id,
                 absl::ResourceExhaustedError(absl::StrCat(
                     "the server's response metadata and status details are over the limits: ",
                     encoded.message())),
                 "", flags, rejection, never_wait);
    return;
  }
  if (!encoded.ok()) {
    IPCRPC_LOG(ERROR) << "cannot encode a response: " << encoded;
    return;
  }
  std::string_view parts[] = {prefix, payload};
  absl::Status sent;
  if (never_wait && !on_a_server_loop) {
    // TrySend also fails while another thread sends on the connection (its
    // lock): a few short tries, about 1 ms in all, before giving up.
    bool done = connection->transport->TrySend(parts, 0, &sent);
    for (int i = 0; i < 10 && !done; ++i) {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
      done = connection->transport->TrySend(parts, 0, &sent);
    }
    if (!done) {
      responses_dropped_.fetch_add(1, std::memory_order_relaxed);
      IPCRPC_LOG(INFO) << connection->transport->description() << ": response to request "
                       << request_id << " not sent: the client does not read";
      return;
    }
  } else if (on_a_server_loop || rejection) {
    // An inline handler's response, or a rejection. The loop must never wait
    // for a peer to read: a client whose own send waits for this loop to
    // read would wait forever. If the transport has no room now, a handler
    // thread sends it (rejections counted: a peer that never reads must not
    // queue them without end).
    if (!connection->transport->TrySend(parts, 0, &sent)) {
      if (rejection && !QueueControl(connection)) return;
      pool_->Post(HandlerScheduler::kControlPriority, 0,
                  [this, connection, request_id, status, body = StringOf(payload), flags,
                   rejection, kept = metadata != nullptr ? *metadata : Metadata()] {
        SendResponse(connection, request_id, status, body, flags, false, false, &kept);
        if (rejection) connection->queued_control.fetch_sub(1);
      });
      return;
    }
  } else if (writer != nullptr) {
    sent = connection->SendBody(absl::MakeConstSpan(parts, 1), *writer);
    // The reply came out another size than it said (changed while it was
    // sent): what went out is not what its length says, and the client
    // must not wait for the rest.
    if (absl::IsInternal(sent)) connection->transport->Close();
  } else {
    sent = connection->Send(parts);
  }
  if (sent.ok()) {
    const size_t code = std::min<size_t>(static_cast<size_t>(status.code()), 16);
    responses_by_code_[code].fetch_add(1, std::memory_order_relaxed);
    bytes_sent_.fetch_add(static_cast<int64_t>(prefix.size() + payload_size),
                          std::memory_order_relaxed);
  } else {
    responses_dropped_.fetch_add(1, std::memory_order_relaxed);
    IPCRPC_LOG(INFO) << connection->transport->description() << ": response to request "
                     << request_id << " not sent: " << sent;
  }
}

void ServerCore::Reject(const std::shared_ptr<ServerConnection>& connection, uint64_t request_id,
                        absl::Status status, uint16_t flags) {
  calls_rejected_.fetch_add(1);
  // Answered at once, from the thread that read the request (the loop, or
  // a transport's own: grpc:) if the transport has room: a rejection never
  // waits for a handler thread, however busy they all are.
  SendResponse(connection, request_id, status, "", flags, /*rejection=*/true);
}

void ServerCore::SendControl(const std::shared_ptr<ServerConnection>& connection, FrameType type,
                             uint64_t request_id, std::string_view text) {
  FrameHeader header;
  header.type = type;
  header.request_id = request_id;
  std::string frame;
  if (!EncodeFramePrefix(header, text, {}, 0, 0, &frame).ok()) return;
  if (on_a_server_loop) {
    // As Reject: from the loop at once if the transport has room now.
    std::string_view parts[] = {frame};
    absl::Status sent;
    if (connection->transport->TrySend(parts, 0, &sent)) {
      if (sent.ok()) {
        bytes_sent_.fetch_add(static_cast<int64_t>(frame.size()), std::memory_order_relaxed);
      }
      return;
    }
  }
  const bool counted = on_a_server_loop;
  if (counted && !QueueControl(connection)) return;
  pool_->Post(HandlerScheduler::kControlPriority, 0,
              [this, connection, frame = std::move(frame), counted] {
    std::string_view parts[] = {frame};
    if (connection->Send(parts).ok()) {
      bytes_sent_.fetch_add(static_cast<int64_t>(frame.size()), std::memory_order_relaxed);
    }
    if (counted) connection->queued_control.fetch_sub(1);
  });
}

bool ServerCore::QueueControl(const std::shared_ptr<ServerConnection>& connection) {
  const int limit = std::max(kMinQueuedControl, options_.max_calls_per_connection);
  if (connection->queued_control.fetch_add(1) < limit) return true;
  connection->queued_control.fetch_sub(1);
  IPCRPC_LOG(WARNING) << connection->transport->description()
                      << ": closing the connection: its peer does not read its answers ("
                      << limit << " answers wait for room)";
  connection->transport->Close();
  return false;
}

void ServerCore::OnClosed(const std::shared_ptr<ServerConnection>& connection,
                          absl::Status reason) {
  if (!absl::IsCancelled(reason)) {
    IPCRPC_LOG(INFO) << connection->transport->description() << ": connection ended: " << reason;
  }
  connection->closed.store(true);
  std::vector<std::shared_ptr<ServerCallState>> calls;
  {
    MutexLock lock(&connection->mu);
    for (auto& [id, call] : connection->calls) calls.push_back(call);
  }
  for (auto& call : calls) {
    call->cancelled_by_client.store(true);  // nobody to answer
    call->Cancel();
  }
  MutexLock lock(&mu_);
  connections_.erase(connection);
  open_connections_->store(static_cast<int>(connections_.size()), std::memory_order_relaxed);
  if (connection->ends_server && !shutdown_started_ && !auto_shutdown_.joinable()) {
    // pipe: the parent is gone or closed the channel; the server ends. Not on
    // the loop: Shutdown waits for the loop.
    auto_shutdown_ = std::thread([this] { Shutdown(absl::ZeroDuration()); });
  }
}

void ServerCore::Shutdown(absl::Duration grace) {
  std::vector<std::unique_ptr<Listener>> listeners;
  std::vector<std::shared_ptr<ServerConnection>> connections;
  bool loop_running;
  {
    MutexLock lock(&mu_);
    if (shutdown_started_) {
      mu_.Await(Condition(
          +[](State* state) { return *state == State::kDone; }, &state_));
      return;
    }
    shutdown_started_ = true;
    draining_.store(true);
    listeners = std::move(listeners_);
    connections.assign(connections_.begin(), connections_.end());
    loop_running = state_ == State::kRunning;
    registry_.reset();  // removes the record: the server is going
  }
  // 1. Stop accepting; tell clients to take new calls elsewhere.
  for (auto& listener : listeners) listener->Close();
  for (auto& connection : connections) {
    SendControl(connection, FrameType::kGoAway, 0, "server shutting down");
  }
  // 2. Let running handlers finish within the grace period.
  const int64_t grace_end = AddDurationNs(MonotonicNowNs(), grace);
  {
    MutexLock lock(&mu_);
    while (calls_in_flight_.load() > 0) {
      absl::Duration left = RemainingUntil(grace_end);
      if (left <= absl::ZeroDuration()) break;
      mu_.AwaitWithTimeout(Condition(
                               +[](std::atomic<int>* n) { return n->load() == 0; },
                               &calls_in_flight_),
                           std::min(left, absl::Milliseconds(100)));
    }
  }
  // 3. Cancel the rest; their clients get CANCELLED now.
  for (auto& connection : connections) {
    std::vector<std::shared_ptr<ServerCallState>> calls;
    {
      MutexLock lock(&connection->mu);
      for (auto& [id, in_flight] : connection->calls) calls.push_back(in_flight);
    }
    for (auto& call : calls) {
      // Claim the response first, so that the handler's own reaction to the
      // cancellation is not what the client sees.
      if (!call->cancelled_by_client.load() && call->ClaimResponse()) {
        SendResponse(connection, call->request_id,
                     absl::CancelledError(absl::StrCat(
                         call->method, ": the server shut down before the call finished")),
                     "", 0, false, /*never_wait=*/true);
      }
      call->Cancel();
    }
  }
  // 4. Wait for the handlers to return, then close every connection. A
  // handler still running after kCloseStuckAfter is stuck in a send to a
  // client that does not read (a cancellation cannot reach a blocked
  // send): closing the connections makes such sends fail, so Shutdown
  // returns within the grace plus that bound whatever clients do.
  {
    MutexLock lock(&mu_);
    auto all_returned = Condition(+[](std::atomic<int>* n) { return n->load() == 0; },
                                  &calls_in_flight_);
    if (!mu_.AwaitWithTimeout(all_returned, kCloseStuckAfter)) {
      connections.assign(connections_.begin(), connections_.end());
      IPCRPC_LOG(WARNING) << "Shutdown: " << calls_in_flight_.load()
                          << " cancelled handlers have not returned after "
                          << absl::FormatDuration(kCloseStuckAfter)
                          << "; closing every connection (a client that does not read holds "
                             "their sends)";
      mu_.Unlock();
      for (auto& connection : connections) connection->transport->Close();
      mu_.Lock();
    }
    while (!mu_.AwaitWithTimeout(all_returned, absl::Seconds(5))) {
      IPCRPC_LOG(WARNING) << "Shutdown: waiting for " << calls_in_flight_.load()
                          << " cancelled handlers to return";
    }
    connections.assign(connections_.begin(), connections_.end());
  }
  for (auto& connection : connections) connection->transport->Close();
  // A closed listener may still read for its connections (mq:); now that
  // they are closed, it goes, before the loop is left to run dry.
  listeners.clear();
  // 5. Stop the loop once everything on it has finished, and the pool.
  asio::post(io_, [this] {
    if (send_watch_.has_value()) send_watch_->cancel();
  });
  work_.reset();
  if (loop_running) {
    loop_thread_.join();
  } else {
    io_.run();  // never started: run what Listen and Close queued
  }
  pool_->Join();
  stream_threads_.Join();
  MutexLock lock(&mu_);
  state_ = State::kDone;
}

}  // namespace internal

// The core as Server holds it (opaque in the public header). Everything is
// internal::ServerCore's: the members of a class nested in Server could only
// be defined outside namespace internal, where the runtime's names are not
// found.
class Server::Core final : public internal::ServerCore {
 public:
  explicit Core(const ServerOptions& options) : ServerCore(options) {}
};

Server::Stats internal::ServerCore::stats() const {
  Server::Stats stats;
  stats.calls_in_flight = calls_in_flight_.load();
  stats.calls_queued = pool_->queued_calls();
  stats.calls_handled = calls_handled_.load();
  stats.calls_rejected = calls_rejected_.load();
  return stats;
}

ServerRecord internal::ServerCore::Record() const {
  MutexLock lock(&mu_);
  return RecordLocked();
}

ServerRecord internal::ServerCore::RecordLocked() const {
  ServerRecord record = record_;
  for (const std::string& endpoint : endpoints_) record.add_endpoints(endpoint);
  for (const ServiceInfo& service : GroupMethods(method_names_)) record.add_services(service.name());
  return record;
}

std::vector<std::string> internal::ServerCore::MethodNames() const { return method_names_; }

void internal::ServerCore::FillStats(ServerStats* out) const {
  out->set_calls_received(calls_received_.load(std::memory_order_relaxed));
  out->set_calls_in_flight(calls_in_flight_.load());
  out->set_calls_queued(pool_->queued_calls());
  out->set_calls_handled(calls_handled_.load());
  out->set_calls_rejected(calls_rejected_.load());
  for (size_t code = 0; code < std::size(responses_by_code_); ++code) {
    const int64_t n = responses_by_code_[code].load(std::memory_order_relaxed);
    if (n == 0) continue;
    (*out->mutable_responses_by_code())[absl::StatusCodeToString(
        static_cast<absl::StatusCode>(code))] = n;
  }
  out->set_responses_dropped(responses_dropped_.load(std::memory_order_relaxed));
  out->set_bytes_received(bytes_received_.load(std::memory_order_relaxed));
  out->set_bytes_sent(bytes_sent_.load(std::memory_order_relaxed));
  out->set_connections_accepted(connections_accepted_.load(std::memory_order_relaxed));
  out->set_connections_refused(connections_refused_.load(std::memory_order_relaxed) +
                               listener_refusals_->load(std::memory_order_relaxed));
  const int64_t now = MonotonicNowNs();
  out->set_uptime_ms((now - created_ns_) / 1'000'000);
  std::vector<std::shared_ptr<ServerConnection>> connections;
  {
    MutexLock lock(&mu_);
    connections.assign(connections_.begin(), connections_.end());
  }
  std::sort(connections.begin(), connections.end(),
            [](const auto& a, const auto& b) { return a->id < b->id; });
  for (const auto& connection : connections) {
    ConnectionInfo* info = out->add_connections();
    info->set_id(connection->id);
    info->set_endpoint(connection->endpoint);
    info->set_description(connection->transport->description());
    info->set_peer_pid(connection->transport->peer().pid);
    info->set_peer_uid(connection->transport->peer().uid);
    info->set_age_ms((now - connection->connected_ns) / 1'000'000);
    std::vector<std::shared_ptr<ServerCallState>> calls;
    {
      MutexLock lock(&connection->mu);
      for (const auto& [id, call] : connection->calls) calls.push_back(call);
    }
    info->set_calls_in_flight(static_cast<int32_t>(calls.size()));
    std::sort(calls.begin(), calls.end(),
              [](const auto& a, const auto& b) { return a->request_id < b->request_id; });
    for (const auto& call : calls) {
      CallInfo* call_info = out->add_calls();
      call_info->set_connection_id(connection->id);
      call_info->set_request_id(call->request_id);
      call_info->set_method(call->method);
      call_info->set_age_us((now - call->started_ns) / 1000);
      call_info->set_has_deadline(call->deadline_ns != kNoDeadline);
      if (call->deadline_ns != kNoDeadline) {
        call_info->set_deadline_remaining_us((call->deadline_ns - now) / 1000);
      }
      call_info->set_priority(call->priority);
      call_info->set_cancelled(call->WasCancelled() || call->cancelled_by_client.load());
      if (call->stream != nullptr) {
        ServerStreamState& stream = *call->stream;
        MutexLock lock(&stream.mu);
        StreamInfo* stream_info = call_info->mutable_stream();
        stream_info->set_messages_received(stream.messages_received);
        stream_info->set_messages_sent(stream.messages_sent);
        stream_info->set_client_half_closed(stream.half_closed);
        stream_info->set_unread_bytes(stream.unread_bytes);
        stream_info->set_send_window_left(stream.send_limit - stream.sent);
        stream_info->set_receive_window_left(stream.receive_limit - stream.received);
      }
    }
  }
}

// --------------------------------------------------------------------- public

Server::Stats Server::stats() const { return core_->stats(); }

std::vector<std::string> Server::endpoints() const { return core_->endpoints(); }

Server::Server(const ServerOptions& options) : core_(std::make_shared<Core>(options)) {}

Server::~Server() = default;

absl::Status Server::RegisterService(Service* service) { return core_->RegisterService(service); }

absl::Status Server::Listen(std::string_view endpoint) { return core_->Listen(endpoint); }

absl::Status Server::Start() { return core_->Start(); }

void Server::Wait() { core_->Wait(); }

void Server::Shutdown(absl::Duration grace) { core_->Shutdown(grace); }

// -------------------------------------------------------------- ServerContext

ServerContext::ServerContext(std::shared_ptr<State> state) : state_(std::move(state)) {}

absl::Time ServerContext::deadline() const { return internal::MonotonicToWall(state_->deadline_ns); }

bool ServerContext::IsCancelled() const { return state_->IsCancelled(); }

pid_t ServerContext::peer_pid() const { return state_->peer_pid; }

uid_t ServerContext::peer_uid() const { return state_->peer_uid; }

const std::vector<std::pair<std::string, std::string>>& ServerContext::metadata() const {
  return state_->metadata;
}

const std::string& ServerContext::method() const { return state_->method; }

void ServerContext::OnCancel(absl::AnyInvocable<void() &&> callback) {
  state_->OnCancel(std::move(callback));
}

void ServerContext::AddResponseMetadata(std::string key, std::string value) {
  if (internal::IsReservedResponseKey(key)) {
    IPCRPC_LOG(WARNING) << state_->method << ": response metadata key \"" << absl::CHexEscape(key)
                        << "\" is reserved: not sent";
    return;
  }
  state_->AddResponseMetadata(std::move(key), std::move(value));
}

}  // namespace ipcrpc
