// inproc: (calls inside one process) as a transport, and the registry's seam
// for a test's own transport, used here to check the RPC layer's rules
// (exactly-once completion, resending what provably never left, reconnects,
// a draining server's refusals) without any kernel object.
#include "transports/inproc/inproc_transport.h"

#include <unistd.h>

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>
#include <utility>

#include "absl/strings/str_cat.h"
#include "asio/executor_work_guard.hpp"
#include "asio/io_context.hpp"
#include "asio/post.hpp"
#include "base/clock.h"
#include "base/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ipcrpc/ipcrpc.h"
#include "tests/util/process.h"
#include "tests/util/status_matchers.h"
#include "transports/transport.h"
#include "wire/frame.h"

namespace ipcrpc::internal {
namespace {

using ::ipcrpc::testing::IsOk;
using ::ipcrpc::testing::StatusIs;
using ::testing::HasSubstr;

std::string UniqueInproc() { return "inproc:" + ::ipcrpc::testing::UniqueName("test"); }

// An io_context run by its own thread, as a Server's or Channel's loop.
class Loop {
 public:
  Loop() : guard_(asio::make_work_guard(io_)), thread_([this] { io_.run(); }) {}
  ~Loop() {
    guard_.reset();
    io_.stop();
    thread_.join();
  }
  asio::io_context& io() { return io_; }

 private:
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> guard_;
  std::thread thread_;
};

// What one end of a connection received, and how it ended.
struct Received {
  Mutex mu;
  std::vector<std::string> messages ABSL_GUARDED_BY(mu);
  std::vector<absl::Status> ends ABSL_GUARDED_BY(mu);

  void Start(Connection& connection, asio::io_context& io) {
    connection.Start(
        io,
        [this](std::string_view message) {
          MutexLock lock(&mu);
          messages.emplace_back(message);
        },
        [this](absl::Status reason) {
          MutexLock lock(&mu);
          ends.push_back(std::move(reason));
        });
  }
  bool WaitFor(size_t messages_wanted, size_t ends_wanted) {
    auto enough = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
      return messages.size() >= messages_wanted && ends.size() >= ends_wanted;
    };
    MutexLock lock(&mu);
    return mu.AwaitWithTimeout(Condition(&enough), absl::Seconds(30));
  }
};

TEST(InprocTransportTest, BadEndpointsAreNamed) {
  EXPECT_THAT(CreateListener("inproc:", {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty name")));
  EXPECT_THAT(CreateConnector("inproc:a b", {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'inproc:a b'")));
  EXPECT_THAT(CreateListener(absl::StrCat("inproc:", std::string(300, 'x')), {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("over 255")));
}

TEST(InprocTransportTest, ANameHasOneListenerAtATimeAndIsFreedByClose) {
  const std::string endpoint = UniqueInproc();
  auto first = CreateListener(endpoint, {});
  ASSERT_THAT(first, IsOk());
  EXPECT_THAT(CreateListener(endpoint, {}),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr(endpoint)));
  (*first)->Close();
  EXPECT_THAT(CreateListener(endpoint, {}), IsOk());
}

TEST(InprocTransportTest, ConnectingToANameNobodyListensOnIsUnavailable) {
  Loop loop;
  const std::string endpoint = UniqueInproc();
  auto connector = CreateConnector(endpoint, {});
  ASSERT_THAT(connector, IsOk());
  EXPECT_THAT((*connector)->Connect(loop.io(), kNoDeadline),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr(endpoint)));
}

// A connected pair: the client's end started on `client_loop`, the
// server's on `server_loop`.
struct Pair {
  std::unique_ptr<Listener> listener;
  std::shared_ptr<Connection> client;
  std::shared_ptr<Connection> server;
};
Pair Connect(Loop& server_loop, Loop& client_loop, TransportOptions options = {},
             std::optional<TransportOptions> client_options = std::nullopt) {
  Pair pair;
  const std::string endpoint = UniqueInproc();
  auto listener = CreateListener(endpoint, options);
  EXPECT_THAT(listener, IsOk());
  if (!listener.ok()) return pair;
  pair.listener = *std::move(listener);
  // Shared with the accept handler, which the listener keeps.
  struct Accepted {
    Mutex mu;
    std::shared_ptr<Connection> connection;
  };
  auto accepted = std::make_shared<Accepted>();
  EXPECT_THAT(pair.listener->Start(server_loop.io(),
                                   [accepted](std::shared_ptr<Connection> connection) {
                                     MutexLock lock(&accepted->mu);
                                     accepted->connection = std::move(connection);
                                   }),
              IsOk());
  auto connector = CreateConnector(endpoint, client_options.value_or(options));
  EXPECT_THAT(connector, IsOk());
  if (!connector.ok()) return pair;
  auto client = (*connector)->Connect(client_loop.io(), kNoDeadline);
  EXPECT_THAT(client, IsOk());
  if (!client.ok()) return pair;
  pair.client = *std::move(client);
  MutexLock lock(&accepted->mu);
  EXPECT_TRUE(accepted->mu.AwaitWithTimeout(Condition(+[](std::shared_ptr<Connection>* c) {
                                                        return *c != nullptr;
                                                      },
                                                      &accepted->connection),
                                            absl::Seconds(30)));
  pair.server = std::move(accepted->connection);
  return pair;
}

// Runs everything posted to `loop` before now.
void Flush(Loop& loop) {
  Notification done;
  asio::post(loop.io(), [&done] { done.Notify(); });
  EXPECT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(30)));
}

TEST(InprocTransportTest, MessagesArriveWholeAndInOrderBothWays) {
  // Outlives the loops, whose handlers write into it.
  Received at_server, at_client;
  Loop server_loop, client_loop;
  Pair pair = Connect(server_loop, client_loop);
  ASSERT_NE(pair.server, nullptr);
  // Sent before the server's end starts: kept, then delivered in order.
  for (int i = 0; i < 3; ++i) {
    std::string n = std::to_string(i);
    std::string_view parts[] = {"m", n};
    ASSERT_THAT(pair.client->Send(parts, 0), IsOk());
  }
  at_server.Start(*pair.server, server_loop.io());
  at_client.Start(*pair.client, client_loop.io());
  for (int i = 3; i < 100; ++i) {
    std::string n = std::to_string(i);
    std::string_view parts[] = {"m", n};
    ASSERT_THAT(pair.client->Send(parts, 0), IsOk());
  }
  std::string_view back[] = {"reply"};
  ASSERT_THAT(pair.server->Send(back, 0), IsOk());
  std::string_view again[] = {"again"};
  ASSERT_THAT(pair.server->Send(again, 0), IsOk());
  ASSERT_TRUE(at_server.WaitFor(100, 0));
  ASSERT_TRUE(at_client.WaitFor(2, 0));
  {
    MutexLock lock(&at_client.mu);
    EXPECT_THAT(at_client.messages, ::testing::ElementsAre("reply", "again"));
  }
  MutexLock lock(&at_server.mu);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(at_server.messages[i], absl::StrCat("m", i));
  EXPECT_EQ(pair.server->peer().pid, getpid());
  EXPECT_EQ(pair.server->peer().uid, geteuid());
}

TEST(InprocTransportTest, CloseEndsBothSidesOnceAndStopsSends) {
  // Outlives the loops, whose handlers write into it.
  Received at_server, at_client;
  Loop server_loop, client_loop;
  Pair pair = Connect(server_loop, client_loop);
  ASSERT_NE(pair.server, nullptr);
  at_server.Start(*pair.server, server_loop.io());
  at_client.Start(*pair.client, client_loop.io());
  std::string_view parts[] = {"last"};
  ASSERT_THAT(pair.client->Send(parts, 0), IsOk());
  pair.client->Close();
  pair.client->Close();  // idempotent
  // What was sent before the close arrives before the end.
  ASSERT_TRUE(at_server.WaitFor(1, 1));
  ASSERT_TRUE(at_client.WaitFor(0, 1));
  pair.server->Close();
  absl::Status sent = pair.server->Send(parts, 0);
  EXPECT_THAT(sent, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_TRUE(IsNotDelivered(sent));
  // A second end, had one been posted by the later Closes, would run now.
  Flush(server_loop);
  Flush(client_loop);
  {
    MutexLock lock(&at_server.mu);
    EXPECT_THAT(at_server.messages, ::testing::ElementsAre("last"));
    ASSERT_EQ(at_server.ends.size(), 1u);
    EXPECT_THAT(at_server.ends[0],
                StatusIs(absl::StatusCode::kUnavailable, HasSubstr("peer closed")));
  }
  MutexLock lock(&at_client.mu);
  ASSERT_EQ(at_client.ends.size(), 1u);
  EXPECT_THAT(at_client.ends[0], StatusIs(absl::StatusCode::kCancelled));
}

TEST(InprocTransportTest, NothingIsDeliveredAfterThisEndsOwnClose) {
  // A server closes a connection from inside its message handler (a bad
  // frame): what the client sent after that frame is never handled.
  std::atomic<int> handled{0};
  Notification ended;
  Loop server_loop, client_loop;
  Pair pair = Connect(server_loop, client_loop);
  ASSERT_NE(pair.server, nullptr);
  std::string_view parts[] = {"frame"};
  for (int i = 0; i < 5; ++i) ASSERT_THAT(pair.client->Send(parts, 0), IsOk());
  Connection* server = pair.server.get();
  pair.server->Start(
      server_loop.io(),
      [&handled, server](std::string_view) {
        handled.fetch_add(1);
        server->Close();
      },
      [&ended](absl::Status) { ended.Notify(); });
  ASSERT_TRUE(ended.WaitForNotificationWithTimeout(absl::Seconds(30)));
  Flush(server_loop);
  EXPECT_EQ(handled.load(), 1);
  pair.client->Close();
  Flush(server_loop);
  Flush(client_loop);
}

TEST(InprocTransportTest, AMessageOverTheSendersLimitIsRefusedUnsent) {
  Loop server_loop, client_loop;
  TransportOptions small;
  small.max_message_size = 100;
  Pair pair = Connect(server_loop, client_loop, small);
  ASSERT_NE(pair.server, nullptr);
  std::string big(101, 'x');
  std::string_view parts[] = {big};
  absl::Status sent = pair.client->Send(parts, 0);
  EXPECT_THAT(sent, StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("101 bytes")));
  EXPECT_TRUE(IsNotDelivered(sent));
}

TEST(InprocTransportTest, AMessageOverTheReceiversLimitEndsTheConnection) {
  // Outlives the loops, whose handlers write into it.
  Received at_server, at_client;
  Loop server_loop, client_loop;
  TransportOptions small;
  small.max_message_size = 100;
  Pair pair = Connect(server_loop, client_loop, small, TransportOptions{});
  ASSERT_NE(pair.server, nullptr);
  at_server.Start(*pair.server, server_loop.io());
  at_client.Start(*pair.client, client_loop.io());
  std::string big(101, 'x');
  std::string_view parts[] = {big};
  ASSERT_THAT(pair.client->Send(parts, 0), IsOk());  // the client's limit is larger
  std::string_view after[] = {"small"};
  (void)pair.client->Send(after, 0);  // may go before the server refuses; never delivered
  ASSERT_TRUE(at_server.WaitFor(0, 1));
  ASSERT_TRUE(at_client.WaitFor(0, 1));
  MutexLock lock(&at_server.mu);
  EXPECT_TRUE(at_server.messages.empty());
  EXPECT_THAT(at_server.ends[0],
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("101 bytes")));
}

TEST(InprocTransportTest, ASenderWaitsForALoopThatDoesNotTakeOnlyUntilItsDeadline) {
  // Outlives the loops, whose handlers write into it.
  Received at_server;
  Loop server_loop, client_loop;
  TransportOptions options;
  options.max_message_size = kInprocQueueLimit;
  Pair pair = Connect(server_loop, client_loop, options);
  ASSERT_NE(pair.server, nullptr);
  // The server's end never starts: nothing is taken.
  std::string chunk(kInprocQueueLimit / 4, 'x');
  std::string_view parts[] = {chunk};
  for (int i = 0; i < 4; ++i) ASSERT_THAT(pair.client->Send(parts, 0), IsOk());
  absl::Status error;
  EXPECT_FALSE(pair.client->TrySend(parts, 0, &error));
  const int64_t deadline = AddDurationNs(MonotonicNowNs(), absl::Milliseconds(50));
  absl::Status sent = pair.client->SendWithin(parts, 0, deadline);
  EXPECT_THAT(sent, StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_TRUE(IsNotDelivered(sent));
  EXPECT_GE(MonotonicNowNs(), deadline);
  // Once the server's loop takes them, there is room again.
  at_server.Start(*pair.server, server_loop.io());
  ASSERT_TRUE(at_server.WaitFor(4, 0));
  EXPECT_THAT(pair.client->Send(parts, 0), IsOk());
}

// ---- The registry's seam: a test's own transport ----------------------

// "cut:NAME": inproc: underneath, with connections the test can break, and
// sends it can make fail as provably undelivered.
struct CutControl {
  std::atomic<int> connects{0};
  std::atomic<int> fail_next_sends_undelivered{0};
  // CANCEL frames: while `hold_cancels`, a send of one (TrySend or Send)
  // waits until `cancels_released`, as a transport with no room would make
  // a Send wait; while `decline_cancels`, TrySend finds no room for one.
  // Every attempt's thread is recorded.
  std::atomic<bool> hold_cancels{false};
  std::atomic<bool> decline_cancels{false};
  Notification cancels_released;
  Notification cancel_attempted;
  Mutex mu;
  std::vector<std::weak_ptr<Connection>> clients ABSL_GUARDED_BY(mu);
  std::vector<std::thread::id> cancel_threads ABSL_GUARDED_BY(mu);

  static bool IsCancel(absl::Span<const std::string_view> parts) {
    std::string bytes;
    for (std::string_view part : parts) bytes.append(part);
    auto frame = DecodeFrame(bytes, 1 << 20);
    return frame.ok() && frame->header.type == FrameType::kCancel;
  }
  void OnCancelSend() {
    {
      MutexLock lock(&mu);
      cancel_threads.push_back(std::this_thread::get_id());
    }
    if (!cancel_attempted.HasBeenNotified()) cancel_attempted.Notify();
    if (hold_cancels.load()) cancels_released.WaitForNotificationWithTimeout(absl::Seconds(60));
  }
  std::vector<std::thread::id> CancelThreads() {
    MutexLock lock(&mu);
    return cancel_threads;
  }

  void CutAll() {
    std::vector<std::shared_ptr<Connection>> live;
    {
      MutexLock lock(&mu);
      for (auto& weak : clients) {
        if (auto connection = weak.lock()) live.push_back(std::move(connection));
      }
    }
    for (auto& connection : live) connection->Close();
  }
};

class CutConnection final : public Connection {
 public:
  CutConnection(std::shared_ptr<Connection> inner, CutControl* control)
      : inner_(std::move(inner)), control_(control) {}
  void Start(asio::io_context& io, MessageHandler on_message, CloseHandler on_closed) override {
    inner_->Start(io, std::move(on_message), std::move(on_closed));
  }
  absl::Status SendWithin(absl::Span<const std::string_view> parts, int priority,
                          int64_t deadline_ns) override {
    int left = control_->fail_next_sends_undelivered.load();
    while (left > 0 && !control_->fail_next_sends_undelivered.compare_exchange_weak(left, left - 1)) {
    }
    if (left > 0) {
      return MarkNotDelivered(absl::UnavailableError("cut: this send failed before a byte went"));
    }
    if (CutControl::IsCancel(parts)) control_->OnCancelSend();
    return inner_->SendWithin(parts, priority, deadline_ns);
  }
  bool TrySend(absl::Span<const std::string_view> parts, int priority,
               absl::Status* error) override {
    if (CutControl::IsCancel(parts)) {
      if (control_->decline_cancels.load()) return false;
      control_->OnCancelSend();
    }
    return inner_->TrySend(parts, priority, error);
  }
  bool SendSeesPeerLeave() const override { return inner_->SendSeesPeerLeave(); }
  void Close() override { inner_->Close(); }
  const PeerCredentials& peer() const override { return inner_->peer(); }
  const std::string& description() const override { return inner_->description(); }

 private:
  const std::shared_ptr<Connection> inner_;
  CutControl* const control_;
};

class CutConnector final : public Connector {
 public:
  CutConnector(std::unique_ptr<Connector> inner, CutControl* control)
      : inner_(std::move(inner)), control_(control) {}
  absl::StatusOr<std::shared_ptr<Connection>> Connect(asio::io_context& io,
                                                      int64_t deadline_ns) override {
    auto inner = inner_->Connect(io, deadline_ns);
    if (!inner.ok()) return inner.status();
    control_->connects.fetch_add(1);
    auto connection = std::make_shared<CutConnection>(*std::move(inner), control_);
    MutexLock lock(&control_->mu);
    control_->clients.push_back(connection);
    return connection;
  }
  const std::string& endpoint() const override { return inner_->endpoint(); }

 private:
  const std::unique_ptr<Connector> inner_;
  CutControl* const control_;
};

Endpoint AsInproc(const Endpoint& endpoint) {
  return Endpoint{"inproc", endpoint.address, "inproc:" + endpoint.address};
}

class CutTransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_THAT(
        RegisterTransport(
            "cut",
            [](const Endpoint& endpoint, const TransportOptions& options) {
              return CreateInprocListener(AsInproc(endpoint), options);
            },
            [this](const Endpoint& endpoint,
                   const TransportOptions& options) -> absl::StatusOr<std::unique_ptr<Connector>> {
              auto inner = CreateInprocConnector(AsInproc(endpoint), options);
              if (!inner.ok()) return inner.status();
              return std::make_unique<CutConnector>(*std::move(inner), &control_);
            }),
        IsOk());
    endpoint_ = "cut:" + ::ipcrpc::testing::UniqueName("cut");
    service_.AddMethod("t.T/Count", [this](ServerContext&, std::string_view, std::string& out) {
      out = std::to_string(++runs_);
      return absl::OkStatus();
    });
    service_.AddMethod("t.T/AwaitCancel", [this](ServerContext& context, std::string_view,
                                                 std::string&) {
      auto cancelled = std::make_shared<Notification>();
      context.OnCancel([cancelled] { cancelled->Notify(); });
      blocked_.Notify();
      if (cancelled->WaitForNotificationWithTimeout(absl::Seconds(60))) server_saw_cancel_.Notify();
      return absl::CancelledError("cancelled");
    });
    service_.AddMethod("t.T/Block", [this](ServerContext&, std::string_view, std::string&) {
      blocked_.Notify();
      release_.WaitForNotification();
      return absl::OkStatus();
    });
  }
  void TearDown() override {
    if (!release_.HasBeenNotified()) release_.Notify();
    if (!control_.cancels_released.HasBeenNotified()) control_.cancels_released.Notify();
    UnregisterTransport("cut");
  }
  std::unique_ptr<Server> StartServer() {
    auto server = std::make_unique<Server>(ServerOptions{});
    EXPECT_THAT(server->RegisterService(&service_), IsOk());
    EXPECT_THAT(server->Listen(endpoint_), IsOk());
    EXPECT_THAT(server->Start(), IsOk());
    return server;
  }

  CutControl control_;
  std::string endpoint_;
  Service service_;
  std::atomic<int> runs_{0};
  Notification blocked_, release_, server_saw_cancel_;
};

TEST_F(CutTransportTest, ASchemeIsRegisteredOnceAndBuiltInsCannotBeTaken) {
  auto any = [](const Endpoint&, const TransportOptions&)
      -> absl::StatusOr<std::unique_ptr<Listener>> { return absl::InternalError("unused"); };
  auto none = [](const Endpoint&, const TransportOptions&)
      -> absl::StatusOr<std::unique_ptr<Connector>> { return absl::InternalError("unused"); };
  EXPECT_THAT(RegisterTransport("cut", any, none), StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_THAT(RegisterTransport("unix", any, none), StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_THAT(RegisterTransport("Bad", any, none), StatusIs(absl::StatusCode::kInvalidArgument));
  UnregisterTransport("unix");  // built-in: stays
  EXPECT_THAT(ParseEndpoint("unix:/tmp/x.sock"), IsOk());
}

TEST_F(CutTransportTest, AnUndeliveredSendGoesAgainAndTheCallRunsOnce) {
  auto server = StartServer();
  auto channel = Channel::Connect(endpoint_);
  ASSERT_THAT(channel, IsOk());
  control_.fail_next_sends_undelivered = 1;
  EXPECT_THAT((*channel)->CallMethod("t.T/Count", ""), IsOk());
  EXPECT_EQ(runs_.load(), 1);
  EXPECT_EQ(control_.fail_next_sends_undelivered.load(), 0);
  // It went again on a new connection (a failed send closes the old one).
  EXPECT_EQ(control_.connects.load(), 2);
  server->Shutdown(absl::Seconds(5));
}

TEST_F(CutTransportTest, ACallInFlightOnACutConnectionEndsOnceAndTheNextReconnects) {
  auto server = StartServer();
  auto channel = Channel::Connect(endpoint_);
  ASSERT_THAT(channel, IsOk());
  std::atomic<int> completions{0};
  Notification done;
  absl::Status result;
  (*channel)->CallMethodAsync("t.T/Block", "", {}, [&](absl::StatusOr<std::string> r) {
    result = std::move(r).status();
    if (completions.fetch_add(1) == 0) done.Notify();
  });
  ASSERT_TRUE(blocked_.WaitForNotificationWithTimeout(absl::Seconds(30)));
  const int connects = control_.connects.load();
  control_.CutAll();
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_THAT(result, StatusIs(absl::StatusCode::kUnavailable));
  // The handler finishing later answers nobody; the call ended once.
  release_.Notify();
  auto next = (*channel)->CallMethod("t.T/Count", "");
  ASSERT_THAT(next, IsOk());
  EXPECT_EQ(control_.connects.load(), connects + 1);
  EXPECT_EQ(completions.load(), 1);
  server->Shutdown(absl::Seconds(5));
  // The channel's loop runs (or drops) what it still holds as it goes.
  channel->reset();
  EXPECT_EQ(completions.load(), 1);
}

// A sync caller past its deadline returns first; the loop sends its CANCEL
// afterwards (before: the caller sent it, and returned only once the
// transport had taken it).
TEST_F(CutTransportTest, ACallerPastItsDeadlineReturnsBeforeItsCancelIsSent) {
  auto server = StartServer();
  auto channel = Channel::Connect(endpoint_);
  ASSERT_THAT(channel, IsOk());
  control_.hold_cancels = true;
  Notification returned;
  absl::Status status;
  std::thread::id caller_thread;
  std::thread caller([&] {
    caller_thread = std::this_thread::get_id();
    CallOptions options;
    options.timeout = absl::Milliseconds(100);
    status = (*channel)->CallMethod("t.T/Block", "", options).status();
    returned.Notify();
  });
  const bool in_time = returned.WaitForNotificationWithTimeout(absl::Seconds(20));
  control_.cancels_released.Notify();
  caller.join();
  EXPECT_TRUE(in_time) << "the caller waited for its CANCEL to be sent";
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kDeadlineExceeded));
  // The CANCEL still went, from another thread (the channel's loop).
  ASSERT_TRUE(control_.cancel_attempted.WaitForNotificationWithTimeout(absl::Seconds(20)));
  for (std::thread::id sender : control_.CancelThreads()) EXPECT_NE(sender, caller_thread);
  release_.Notify();
  server->Shutdown(absl::Seconds(5));
}

// Cancel() never waits for room in the transport (it may run on a server's
// loop, cancelling a call made downstream); the CANCEL goes once there is.
TEST_F(CutTransportTest, CancelNeverWaitsForRoomAndItsCancelArrivesOnceThereIs) {
  // Before the channel, whose end may run the callback that writes them.
  Notification done;
  absl::Status status;
  auto server = StartServer();
  auto channel = Channel::Connect(endpoint_);
  ASSERT_THAT(channel, IsOk());
  control_.decline_cancels = true;  // no room now ...
  control_.hold_cancels = true;     // ... and a Send would wait
  Call call = (*channel)->CallMethodAsync("t.T/AwaitCancel", "", {},
                                          [&](absl::StatusOr<std::string> result) {
                                            status = std::move(result).status();
                                            done.Notify();
                                          });
  ASSERT_TRUE(blocked_.WaitForNotificationWithTimeout(absl::Seconds(20)));
  Notification cancel_returned;
  std::thread canceller([&] {
    call.Cancel();
    cancel_returned.Notify();
  });
  const bool in_time = cancel_returned.WaitForNotificationWithTimeout(absl::Seconds(20));
  control_.cancels_released.Notify();
  canceller.join();
  EXPECT_TRUE(in_time) << "Cancel waited for room in the transport";
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(20)));
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kCancelled));
  EXPECT_FALSE(server_saw_cancel_.HasBeenNotified());
  // Room again: the channel's loop sends it, and the handler sees it.
  control_.hold_cancels = false;
  control_.decline_cancels = false;
  EXPECT_TRUE(server_saw_cancel_.WaitForNotificationWithTimeout(absl::Seconds(20)));
  server->Shutdown(absl::Seconds(5));
}

TEST_F(CutTransportTest, ACallToADrainingServerRunsOnceOnItsSuccessor) {
  auto first = StartServer();
  auto channel = Channel::Connect(endpoint_);
  ASSERT_THAT(channel, IsOk());
  ASSERT_THAT((*channel)->CallMethod("t.T/Count", ""), IsOk());
  // A handler holds the first server in its drain.
  Notification block_done;
  (*channel)->CallMethodAsync("t.T/Block", "", {},
                              [&](absl::StatusOr<std::string>) { block_done.Notify(); });
  ASSERT_TRUE(blocked_.WaitForNotificationWithTimeout(absl::Seconds(30)));
  std::thread drain([&] { first->Shutdown(absl::Seconds(30)); });
  // The name is free once the first server stopped listening, at the start
  // of its drain.
  std::unique_ptr<Server> second;
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (second == nullptr && absl::Now() < give_up) {
    auto candidate = std::make_unique<Server>(ServerOptions{});
    ASSERT_THAT(candidate->RegisterService(&service_), IsOk());
    if (candidate->Listen(endpoint_).ok()) {
      ASSERT_THAT(candidate->Start(), IsOk());
      second = std::move(candidate);
    } else {
      std::this_thread::yield();
    }
  }
  ASSERT_NE(second, nullptr);
  const int before = runs_.load();
  EXPECT_THAT((*channel)->CallMethod("t.T/Count", ""), IsOk());
  EXPECT_EQ(runs_.load(), before + 1);
  release_.Notify();
  ASSERT_TRUE(block_done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  drain.join();
  second->Shutdown(absl::Seconds(5));
}

}  // namespace
}  // namespace ipcrpc::internal
