// Channel and Server behaviour in one process, over unix: sockets, and
// built a second time (channel_server_inproc_test, IPCRPC_TEST_INPROC) over
// inproc:, where the same rules hold without any kernel object.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <google/protobuf/wrappers.pb.h>

#include "absl/time/clock.h"
#include "base/syscall.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ipcrpc/ipcrpc.h"
#include "wire/frame.h"
#include "tests/conformance/test_service.h"
#include "tests/util/process.h"
#include "tests/util/status_matchers.h"
#include "base/mutex.h"

namespace ipcrpc::testing {
namespace {

using internal::UniqueFd;
using ::testing::HasSubstr;

#ifdef IPCRPC_TEST_INPROC
constexpr bool kInproc = true;
std::string Endpoint() { return "inproc:" + UniqueName("rpc-test"); }
#else
constexpr bool kInproc = false;
std::string Endpoint() { return "unix:" + UniqueName("/tmp/ipcrpc-rpc-test") + ".sock"; }
#endif
// Tests whose peer is a raw Unix socket run only in the unix: build.
#define SKIP_UNLESS_UNIX() \
  if (kInproc) GTEST_SKIP() << "a raw unix: socket peer; runs in channel_server_test"

// A server with TestService plus methods for these tests.
class ExtraService : public Service {
 public:
  ExtraService() {
    AddMethod("extra.Extra/Count", [this](ServerContext&, std::string_view, std::string& out) {
      out = std::to_string(++runs_);
      return absl::OkStatus();
    });
    AddMethod("extra.Extra/Block", [this](ServerContext&, std::string_view, std::string&) {
      if (!block_started.HasBeenNotified()) block_started.Notify();
      release_.WaitForNotification();
      return absl::OkStatus();
    });
    AddMethod("extra.Extra/Big", [](ServerContext&, std::string_view, std::string& out) {
      out.assign(200 * 1024, 'b');
      return absl::OkStatus();
    });
    // A reply through ipcrpc::SerializeReply (the server's kept buffer), then,
    // if asked, bytes written into `out` after it: those are what is sent.
    AddMethod("extra.Extra/Reply", [](ServerContext&, std::string_view request, std::string& out) {
      google::protobuf::StringValue reply;
      reply.set_value(std::string(request.size() * 1000, 'r'));
      if (!SerializeReply(reply, &out)) return absl::InternalError("not serialized");
      if (request == "overwrite") out = "written after";
      return absl::OkStatus();
    });
    AddMethod("extra.Extra/Context",
              [this](ServerContext& context, std::string_view, std::string&) {
                peer_pid = context.peer_pid();
                peer_uid = context.peer_uid();
                deadline = context.deadline();
                method = context.method();
                return absl::OkStatus();
              });
    AddMethod("extra.Extra/Outer",
              [this](ServerContext& context, std::string_view, std::string&) {
                // A nested call that inherits this call's deadline and cancellation.
                return inner_channel->CallMethod("test.Test/Sleep", "60000",
                                                 CallOptions::From(context)).status();
              });
  }
  void Release() {
    if (!release_.HasBeenNotified()) release_.Notify();
  }

  std::atomic<int> runs_{0};
  pid_t peer_pid = 0;
  uid_t peer_uid = 0;
  absl::Time deadline;
  std::string method;
  std::shared_ptr<Channel> inner_channel;
  ipcrpc::internal::Notification block_started;

 private:
  ipcrpc::internal::Notification release_;
};

class ChannelServerTest : public ::testing::Test {
 protected:
  void StartServer(ServerOptions options = {}) {
    endpoint_ = Endpoint();
    server_ = std::make_unique<Server>(options);
    ASSERT_THAT(server_->RegisterService(&test_), IsOk());
    ASSERT_THAT(server_->RegisterService(&extra_), IsOk());
    ASSERT_THAT(server_->Listen(endpoint_), IsOk());
    ASSERT_THAT(server_->Start(), IsOk());
    auto channel = Channel::Connect(endpoint_);
    ASSERT_THAT(channel, IsOk());
    channel_ = *std::move(channel);
  }
  void TearDown() override {
    extra_.Release();
    channel_.reset();
    if (server_) server_->Shutdown(absl::Seconds(5));
  }

  TestService test_;
  ExtraService extra_;
  std::string endpoint_;
  std::unique_ptr<Server> server_;
  std::shared_ptr<Channel> channel_;
};

// A generic handler that serializes with SerializeReply: its reply goes out
// from the server's kept buffer, at every size (the buffer keeps the
// length of the reply before it); bytes the handler writes into its
// response afterwards replace it.
TEST_F(ChannelServerTest, AReplyFromSerializeReplyIsSentUnlessTheHandlerWritesAfterIt) {
  StartServer();
  for (const std::string& request :
       std::vector<std::string>{"abc", "a", std::string(300, 'x'), "ab", "overwrite", "a"}) {
    SCOPED_TRACE(request.size());
    absl::StatusOr<std::string> response = channel_->CallMethod("extra.Extra/Reply", request);
    ASSERT_THAT(response, IsOk());
    if (request == "overwrite") {
      EXPECT_EQ(*response, "written after");
      continue;
    }
    google::protobuf::StringValue reply;
    ASSERT_TRUE(reply.ParseFromString(*response));
    EXPECT_EQ(reply.value(), std::string(request.size() * 1000, 'r'));
  }
}

TEST_F(ChannelServerTest, PastDeadlineFailsAtOnce) {
  StartServer();
  CallOptions options;
  options.deadline = absl::Now() - absl::Seconds(1);
  EXPECT_THAT(channel_->CallMethod("extra.Extra/Count", "", options),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  options = {};
  options.timeout = absl::ZeroDuration();
  ipcrpc::internal::Notification done;
  absl::Status result;
  channel_->CallMethodAsync("extra.Extra/Count", "", options, [&](absl::StatusOr<std::string> r) {
    result = std::move(r).status();
    done.Notify();
  });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_THAT(result, StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_EQ(extra_.runs_.load(), 0);
}

TEST_F(ChannelServerTest, TheEarlierOfTimeoutAndDeadlineWins) {
  StartServer();
  CallOptions options;
  options.timeout = absl::Seconds(60);
  options.deadline = absl::Now() + absl::Milliseconds(50);
  const absl::Time start = absl::Now();
  EXPECT_THAT(channel_->CallMethod("test.Test/Sleep", "10000", options),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

TEST_F(ChannelServerTest, ExpiredRequestIsAnsweredWithoutRunningTheHandler) {
  SKIP_UNLESS_UNIX();
  StartServer();
  // A raw peer sends a REQUEST whose deadline (1 ns after boot) has passed.
  std::string path = endpoint_.substr(5);
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  internal::FrameHeader header;
  header.type = internal::FrameType::kRequest;
  header.request_id = 42;
  header.deadline_ns = 1;
  std::string frame;
  ASSERT_THAT(internal::EncodeFramePrefix(header, "extra.Extra/Count", {}, 0, 1024, &frame),
              IsOk());
  uint32_t size = static_cast<uint32_t>(frame.size());
  std::string message = std::string(reinterpret_cast<const char*>(&size), 4) + frame;
  ASSERT_EQ(write(fd.get(), message.data(), message.size()),
            static_cast<ssize_t>(message.size()));
  char buffer[4096];
  ssize_t n = 0;
  size_t got = 0;
  while (got < 4 + internal::kHeaderSize &&
         (n = read(fd.get(), buffer + got, sizeof(buffer) - got)) > 0) {
    got += n;
  }
  ASSERT_GE(got, 4 + internal::kHeaderSize);
  uint32_t length;
  std::memcpy(&length, buffer, 4);
  while (got < 4 + length && (n = read(fd.get(), buffer + got, sizeof(buffer) - got)) > 0) {
    got += n;
  }
  auto response = internal::DecodeFrame(std::string_view(buffer + 4, length), 1024);
  ASSERT_THAT(response, IsOk());
  EXPECT_EQ(response->header.type, internal::FrameType::kResponse);
  EXPECT_EQ(response->header.request_id, 42u);
  EXPECT_EQ(response->header.status_code,
            static_cast<uint16_t>(absl::StatusCode::kDeadlineExceeded));
  EXPECT_EQ(extra_.runs_.load(), 0);
}

TEST_F(ChannelServerTest, RequestThatExpiresWhileQueuedNeverRuns) {
  ServerOptions options;
  options.handler_threads = 1;
  StartServer(options);
  ipcrpc::internal::Notification blocked_done;
  channel_->CallMethodAsync("extra.Extra/Block", "", {},
                            [&](absl::StatusOr<std::string>) { blocked_done.Notify(); });
  extra_.block_started.WaitForNotification();  // the only handler thread is taken
  CallOptions short_deadline;
  short_deadline.timeout = absl::Milliseconds(50);
  // Queued behind Block on the only handler thread until its deadline passes.
  EXPECT_THAT(channel_->CallMethod("extra.Extra/Count", "", short_deadline),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  extra_.Release();
  ASSERT_TRUE(blocked_done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  // Only this call ran Count: the expired one was skipped.
  auto count = channel_->CallMethod("extra.Extra/Count", "");
  ASSERT_THAT(count, IsOk());
  EXPECT_EQ(*count, "1");
}

TEST_F(ChannelServerTest, ServerContextShowsPeerDeadlineAndMethod) {
  StartServer();
  CallOptions options;
  options.timeout = absl::Seconds(30);
  const absl::Time before = absl::Now();
  ASSERT_THAT(channel_->CallMethod("extra.Extra/Context", "", options), IsOk());
  EXPECT_EQ(extra_.peer_pid, getpid());
  EXPECT_EQ(extra_.peer_uid, getuid());
  EXPECT_EQ(extra_.method, "extra.Extra/Context");
  EXPECT_GT(extra_.deadline, before + absl::Seconds(29));
  EXPECT_LT(extra_.deadline, absl::Now() + absl::Seconds(31));
  ASSERT_THAT(channel_->CallMethod("extra.Extra/Context", ""), IsOk());
  EXPECT_EQ(extra_.deadline, absl::InfiniteFuture());
}

TEST_F(ChannelServerTest, ShutdownLetsHandlersFinishWithinGrace) {
  StartServer();
  ipcrpc::internal::Notification done;
  absl::Status result;
  channel_->CallMethodAsync("test.Test/Sleep", "100", {}, [&](absl::StatusOr<std::string> r) {
    result = std::move(r).status();
    done.Notify();
  });
  CallOptions wait;
  wait.timeout = absl::Seconds(10);
  ASSERT_THAT(channel_->CallMethod("test.Test/WaitForActive", "1", wait), IsOk());
  server_->Shutdown(absl::Seconds(10));
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_THAT(result, IsOk());
  EXPECT_EQ(test_.cancellations(), 0);
}

TEST_F(ChannelServerTest, ShutdownCancelsHandlersPastGrace) {
  StartServer();
  ipcrpc::internal::Notification done;
  absl::Status result;
  channel_->CallMethodAsync("test.Test/Sleep", "60000", {}, [&](absl::StatusOr<std::string> r) {
    result = std::move(r).status();
    done.Notify();
  });
  CallOptions wait;
  wait.timeout = absl::Seconds(10);
  ASSERT_THAT(channel_->CallMethod("test.Test/WaitForActive", "1", wait), IsOk());
  const absl::Time start = absl::Now();
  server_->Shutdown(absl::Milliseconds(100));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_THAT(result, StatusIs(absl::StatusCode::kCancelled, HasSubstr("shut down")));
  EXPECT_EQ(test_.cancellations(), 1);
  // New calls find no server.
  EXPECT_THAT(channel_->CallMethod("test.Test/Echo", "x"),
              StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(ChannelServerTest, ChannelDestroyedCompletesPendingAsyncCalls) {
  StartServer();
  std::atomic<int> runs{0};
  absl::Status result;
  channel_->CallMethodAsync("test.Test/Sleep", "60000", {}, [&](absl::StatusOr<std::string> r) {
    result = std::move(r).status();
    runs++;
  });
  CallOptions wait;
  wait.timeout = absl::Seconds(10);
  ASSERT_THAT(channel_->CallMethod("test.Test/WaitForActive", "1", wait), IsOk());
  channel_.reset();
  // The callback ran before the destructor returned.
  EXPECT_EQ(runs.load(), 1);
  EXPECT_THAT(result, StatusIs(absl::StatusCode::kCancelled));
}

TEST_F(ChannelServerTest, NextCallReconnectsAfterTheServerComesBack) {
  StartServer();
  ASSERT_THAT(channel_->CallMethod("test.Test/Echo", "x"), IsOk());
  server_->Shutdown(absl::ZeroDuration());
  EXPECT_THAT(channel_->CallMethod("test.Test/Echo", "x"),
              StatusIs(absl::StatusCode::kUnavailable));
  Server again;
  ASSERT_THAT(again.RegisterService(&test_), IsOk());
  ASSERT_THAT(again.Listen(endpoint_), IsOk());
  ASSERT_THAT(again.Start(), IsOk());
  EXPECT_THAT(channel_->CallMethod("test.Test/Echo", "x"), IsOk());
  EXPECT_EQ(channel_->stats().connects, 2u);
  channel_.reset();
  again.Shutdown();
}

TEST_F(ChannelServerTest, OversizedMessagesAreRefused) {
  StartServer();
  ChannelOptions small;
  small.max_message_size = 1024;
  auto channel = Channel::Connect(endpoint_, small);
  ASSERT_THAT(channel, IsOk());
  EXPECT_THAT((*channel)->CallMethod("test.Test/Echo", std::string(2048, 'x')),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("max_message_size")));
  // A response over the client's limit closes that connection: the call
  // fails at once instead of allocating.
  EXPECT_THAT((*channel)->CallMethod("extra.Extra/Big", ""),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT((*channel)->CallMethod("test.Test/Echo", "small again"), IsOk());
}

TEST_F(ChannelServerTest, BadPriorityIsInvalidArgument) {
  StartServer();
  CallOptions options;
  options.priority = 32;
  EXPECT_THAT(channel_->CallMethod("test.Test/Echo", "x", options),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("priority")));
}

TEST_F(ChannelServerTest, CallsPerConnectionAreLimited) {
  ServerOptions options;
  options.max_calls_per_connection = 2;
  options.handler_threads = 4;
  StartServer(options);
  std::vector<ipcrpc::internal::Notification> done(2);
  for (auto& notification : done) {
    channel_->CallMethodAsync("test.Test/Sleep", "60000", {},
                              [&](absl::StatusOr<std::string>) { notification.Notify(); });
  }
  auto other = Channel::Connect(endpoint_);
  ASSERT_THAT(other, IsOk());
  CallOptions wait;
  wait.timeout = absl::Seconds(10);
  ASSERT_THAT((*other)->CallMethod("test.Test/WaitForActive", "2", wait), IsOk());
  EXPECT_THAT(channel_->CallMethod("test.Test/Echo", "x"),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("max_calls_per_connection")));
  // Another connection is still served.
  EXPECT_THAT((*other)->CallMethod("test.Test/Echo", "x"), IsOk());
  channel_.reset();  // ends the sleeping calls
}

TEST_F(ChannelServerTest, NestedCallInheritsDeadlineAndCancellation) {
  // Server B runs Sleep; server A's Outer calls B with CallOptions::From.
  TestService inner_service;
  Server inner;
  const std::string inner_endpoint = Endpoint();
  ASSERT_THAT(inner.RegisterService(&inner_service), IsOk());
  ASSERT_THAT(inner.Listen(inner_endpoint), IsOk());
  ASSERT_THAT(inner.Start(), IsOk());
  auto inner_channel = Channel::Connect(inner_endpoint);
  ASSERT_THAT(inner_channel, IsOk());
  extra_.inner_channel = *inner_channel;
  StartServer();

  CallOptions options;
  options.timeout = absl::Milliseconds(100);
  const absl::Time start = absl::Now();
  EXPECT_THAT(channel_->CallMethod("extra.Extra/Outer", "", options),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  // The inner handler was cancelled too.
  CallOptions wait;
  wait.timeout = absl::Seconds(10);
  EXPECT_THAT((*inner_channel)->CallMethod("test.Test/WaitForCancellations", "1", wait), IsOk());
  extra_.inner_channel.reset();
  inner_channel->reset();
  channel_.reset();
  server_->Shutdown();
  server_.reset();
  inner.Shutdown();
}

// A server that is a raw peer: it answers an id nobody asked for, then
// sends garbage.
TEST(HostileServerTest, LateResponsesAreCountedAndGarbageClosesTheConnection) {
  SKIP_UNLESS_UNIX();
  const std::string path = UniqueName("/tmp/ipcrpc-hostile") + ".sock";
  UniqueFd listener(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(listener.get(), 4), 0);
  auto channel = Channel::Connect("unix:" + path);
  ASSERT_THAT(channel, IsOk());
  UniqueFd peer(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(peer.valid());
  unlink(path.c_str());

  auto send_frame = [&](const internal::FrameHeader& header, std::string_view payload) {
    std::string frame;
    ASSERT_THAT(internal::EncodeFramePrefix(header, "", {}, payload.size(), 1 << 20, &frame),
                IsOk());
    frame.append(payload);
    uint32_t size = static_cast<uint32_t>(frame.size());
    std::string message = std::string(reinterpret_cast<const char*>(&size), 4) + frame;
    ASSERT_EQ(write(peer.get(), message.data(), message.size()),
              static_cast<ssize_t>(message.size()));
  };
  // A call in flight, answered by hand after a response to an unknown id.
  ipcrpc::internal::Notification done;
  absl::StatusOr<std::string> result;
  (*channel)->CallMethodAsync("x.Y/Z", "req", {}, [&](absl::StatusOr<std::string> r) {
    result = std::move(r);
    done.Notify();
  });
  internal::FrameHeader header;
  header.type = internal::FrameType::kResponse;
  header.request_id = 999;
  send_frame(header, "nobody asked");
  header.request_id = 1;  // the first call on a connection has id 1
  send_frame(header, "answer");
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_THAT(result, IsOk());
  EXPECT_EQ(*result, "answer");
  EXPECT_EQ((*channel)->stats().late_responses_dropped, 1u);

  // Now garbage: the pending call fails UNAVAILABLE at once.
  ipcrpc::internal::Notification failed;
  absl::Status failure;
  (*channel)->CallMethodAsync("x.Y/Z", "req", {}, [&](absl::StatusOr<std::string> r) {
    failure = std::move(r).status();
    failed.Notify();
  });
  const char garbage[] = "\x10\x00\x00\x00this is garbage!";
  ASSERT_EQ(write(peer.get(), garbage, sizeof(garbage) - 1), 20);
  ASSERT_TRUE(failed.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_THAT(failure, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_TRUE(WaitForEof(peer.get(), absl::Seconds(10)));
}

}  // namespace
}  // namespace ipcrpc::testing
