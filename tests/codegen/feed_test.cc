// Generated code for the three streaming kinds (golden.v1.Feed in
// golden.proto): typed stubs and service bases over a real server, on
// shm: and unix:.
#include <atomic>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>
#include <utility>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "golden.ipcrpc.h"
#include "ipcrpc/body_writer.h"
#include "ipcrpc/ipcrpc.h"
#include "tests/util/process.h"
#include "tests/util/sanitizers.h"
#include "tests/util/status_matchers.h"
#include "base/mutex.h"

namespace golden::v1 {
namespace {

using ::ipcrpc::testing::IsOk;
using ::ipcrpc::testing::StatusIs;
using ::testing::HasSubstr;

// /proc/meminfo's MemAvailable, in bytes (0 if unknown).
int64_t MemAvailableBytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  int64_t kib = 0;
  std::string unit;
  while (meminfo >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib * 1024;
  }
  return 0;
}

class FeedService final : public Feed::Service {
 public:
  // Watch: request.message() is the number of events; then waits for
  // cancellation if it is "forever".
  absl::Status Watch(ipcrpc::ServerContext& context, const EchoRequest& request,
                     ipcrpc::ServerWriter<Event>& writer) override {
    if (request.message() == "forever") {
      Event event;
      while (writer.Write(event)) event.set_sequence(event.sequence() + 1);
      watch_saw_cancel = context.IsCancelled();
      return absl::CancelledError("cancelled");
    }
    const int n = std::stoi(request.message());
    for (int i = 0; i < n; ++i) {
      Event event;
      event.set_sequence(i);
      event.set_data(std::string(i % 50, 'd'));
      if (!writer.Write(event)) return absl::CancelledError("write failed");
    }
    return absl::OkStatus();
  }

  absl::Status Upload(ipcrpc::ServerContext&, ipcrpc::ServerReader<Event>& reader,
                      EchoReply& reply) override {
    Event event;
    int64_t count = 0;
    int64_t sum = 0;
    while (reader.Read(&event)) {
      ++count;
      sum += event.sequence();
    }
    reply.set_message(absl::StrCat(count, " events, sequence sum ", sum));
    return absl::OkStatus();
  }

  absl::Status Chat(ipcrpc::ServerContext& context,
                    ipcrpc::ServerReaderWriter<EchoReply, EchoRequest>& stream) override {
    EchoRequest request;
    while (stream.Read(&request)) {
      if (request.message() == "nested") {
        // A nested call from a streaming handler inherits its deadline.
        Echo::Stub echo(nested_channel());
        auto reply = echo.Echo(request, ipcrpc::CallOptions::From(context));
        EchoReply out;
        out.set_message(reply.ok() ? "nested:" + reply->message() : reply.status().ToString());
        if (!stream.Write(out)) break;
        continue;
      }
      EchoReply reply;
      reply.set_message("re:" + request.message());
      if (!stream.Write(reply)) break;
    }
    return absl::OkStatus();
  }

  // Set by the test after the server started: under a lock (ThreadSanitizer
  // does not see a socket's bytes order the handler after the test).
  std::shared_ptr<ipcrpc::Channel> nested_channel() {
    std::lock_guard<std::mutex> lock(mu_);
    return nested_channel_;
  }
  void set_nested_channel(std::shared_ptr<ipcrpc::Channel> channel) {
    std::lock_guard<std::mutex> lock(mu_);
    nested_channel_ = std::move(channel);
  }

  std::atomic<bool> watch_saw_cancel{false};

 private:
  std::mutex mu_;
  std::shared_ptr<ipcrpc::Channel> nested_channel_;
};

class EchoService final : public Echo::Service {
 public:
  absl::Status Echo(ipcrpc::ServerContext& context, const EchoRequest& request,
                    EchoReply& reply) override {
    reply.set_message(absl::StrCat(request.message(),
                                   context.deadline() == absl::InfiniteFuture() ? "" : "+deadline"));
    return absl::OkStatus();
  }
};

class FeedTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "shm") {
      endpoint_ = "shm:" + ipcrpc::testing::UniqueName("feed-test");
    } else if (GetParam() == "fifo") {
      // A FIFO is a pipe: large bodies are lent to it (vmsplice).
      endpoint_ = "fifo:" + ipcrpc::testing::UniqueName("/tmp/feed-test");
    } else {
      endpoint_ = "unix:" + ipcrpc::testing::UniqueName("/tmp/feed-test") + ".sock";
    }
    ASSERT_THAT(server_.RegisterService(&feed_), IsOk());
    ASSERT_THAT(server_.RegisterService(&echo_), IsOk());
    ASSERT_THAT(server_.Listen(endpoint_), IsOk());
    ASSERT_THAT(server_.Start(), IsOk());
    auto channel = ipcrpc::Channel::Connect(endpoint_);
    ASSERT_THAT(channel, IsOk());
    channel_ = *channel;
    auto nested = ipcrpc::Channel::Connect(endpoint_);
    ASSERT_THAT(nested, IsOk());
    feed_.set_nested_channel(*nested);
  }
  void TearDown() override {
    channel_.reset();
    feed_.set_nested_channel(nullptr);
    server_.Shutdown(absl::Seconds(1));
  }

  ipcrpc::CallOptions Within(absl::Duration timeout) {
    ipcrpc::CallOptions options;
    options.timeout = timeout;
    return options;
  }

  std::string endpoint_;
  FeedService feed_;
  EchoService echo_;
  ipcrpc::Server server_;
  std::shared_ptr<ipcrpc::Channel> channel_;
};

TEST_P(FeedTest, ServerStreamingSyncAndAsync) {
  Feed::Stub stub(channel_);
  EchoRequest request;
  request.set_message("1000");
  ipcrpc::ClientReader<Event> reader = stub.Watch(request, Within(absl::Seconds(30)));
  Event event;
  int64_t expected = 0;
  while (reader.Read(&event)) {
    ASSERT_EQ(event.sequence(), expected);
    EXPECT_EQ(event.data().size(), static_cast<size_t>(expected % 50));
    ++expected;
  }
  EXPECT_THAT(reader.Finish(), IsOk());
  EXPECT_EQ(expected, 1000);

  ipcrpc::internal::Notification done;
  std::atomic<int64_t> received{0};
  std::atomic<bool> in_order{true};
  absl::Status status;
  stub.WatchAsync(
      request, Within(absl::Seconds(30)),
      [&](const Event& message) {
        if (message.sequence() != received.load()) in_order = false;
        received.fetch_add(1);
      },
      [&](absl::Status final_status) {
        status = std::move(final_status);
        done.Notify();
      });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_THAT(status, IsOk());
  EXPECT_EQ(received.load(), 1000);
  EXPECT_TRUE(in_order.load());
}

TEST_P(FeedTest, ClientStreamingReturnsTheReply) {
  Feed::Stub stub(channel_);
  ipcrpc::ClientWriter<Event, EchoReply> writer = stub.Upload(Within(absl::Seconds(30)));
  int64_t sum = 0;
  for (int i = 0; i < 500; ++i) {
    Event event;
    event.set_sequence(i);
    sum += i;
    ASSERT_TRUE(writer.Write(event));
  }
  absl::StatusOr<EchoReply> reply = writer.Finish();  // implies WritesDone
  ASSERT_THAT(reply, IsOk());
  EXPECT_EQ(reply->message(), absl::StrCat(500, " events, sequence sum ", sum));
}

TEST_P(FeedTest, BidirectionalAndANestedCallFromAStreamingHandler) {
  Feed::Stub stub(channel_);
  ipcrpc::ClientReaderWriter<EchoRequest, EchoReply> stream = stub.Chat(Within(absl::Seconds(30)));
  for (const char* text : {"a", "nested", "b"}) {
    EchoRequest request;
    request.set_message(text);
    ASSERT_TRUE(stream.Write(request));
    EchoReply reply;
    ASSERT_TRUE(stream.Read(&reply));
    if (std::string(text) == "nested") {
      // CallOptions::From carried the stream's deadline to the nested call.
      EXPECT_EQ(reply.message(), "nested:nested+deadline");
    } else {
      EXPECT_EQ(reply.message(), std::string("re:") + text);
    }
  }
  ASSERT_TRUE(stream.WritesDone());
  EchoReply extra;
  EXPECT_FALSE(stream.Read(&extra));
  EXPECT_THAT(stream.Finish(), IsOk());
}

TEST_P(FeedTest, CancelReachesAStreamingHandler) {
  Feed::Stub stub(channel_);
  EchoRequest request;
  request.set_message("forever");
  ipcrpc::ClientReader<Event> reader = stub.Watch(request, Within(absl::Seconds(30)));
  Event event;
  ASSERT_TRUE(reader.Read(&event));
  reader.Cancel();
  EXPECT_FALSE(reader.Read(&event));
  EXPECT_THAT(reader.Finish(), StatusIs(absl::StatusCode::kCancelled));
  for (int i = 0; i < 500 && !feed_.watch_saw_cancel.load(); ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_TRUE(feed_.watch_saw_cancel.load());
}

TEST_P(FeedTest, AStreamMessageThatDoesNotParseEndsOnlyThatStreamInvalidArgument) {
  // Bytes that are not an Event (a truncated varint), through the untyped API.
  ipcrpc::GenericClientStream raw =
      channel_->OpenStream("golden.v1.Feed/Upload", Within(absl::Seconds(30)));
  ASSERT_TRUE(raw.Write(std::string("\x08\xff", 2)));
  EXPECT_THAT(raw.Finish(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("golden.v1.Event")));
  // The connection and other calls are unharmed.
  Echo::Stub echo(channel_);
  EchoRequest request;
  request.set_message("still");
  EXPECT_THAT(echo.Echo(request), IsOk());
  // A request of a server stream that does not parse, likewise.
  ipcrpc::GenericClientStream bad_request = channel_->OpenServerStream(
      "golden.v1.Feed/Watch", std::string("\x0a\x05", 2), Within(absl::Seconds(30)));
  EXPECT_THAT(bad_request.Finish(), StatusIs(absl::StatusCode::kInvalidArgument));
}

// Unary requests and replies around and above the size the transport
// serializes itself (kBodyInPlaceMin: on shm: straight into the ring, from
// the stub and from the handler's thread), larger than the 256 KiB ring
// too, one after another and from four threads at once: every reply is
// the request's message, whole.
TEST_P(FeedTest, LargeUnaryMessagesArriveWholeFromStubAndHandler) {
  Echo::Stub echo(channel_);
  auto message_of = [](size_t size, size_t seed) {
    std::string message(size, '\0');
    for (size_t i = 0; i < size; ++i) message[i] = static_cast<char>('a' + (i * 13 + seed) % 26);
    return message;
  };
  const size_t sizes[] = {ipcrpc::internal::kBodyInPlaceMin - 8, ipcrpc::internal::kBodyInPlaceMin,
                          100'000, 300 * 1024, size_t{1} << 20, (size_t{3} << 20) + 17};
  for (size_t size : sizes) {
    for (size_t call = 0; call < 5; ++call) {
      EchoRequest request;
      request.set_message(message_of(size, call));
      absl::StatusOr<EchoReply> reply = echo.Echo(request);
      ASSERT_THAT(reply, IsOk()) << size << " bytes, call " << call;
      ASSERT_EQ(reply->message(), request.message()) << size << " bytes, call " << call;
    }
  }
  std::atomic<int> wrong{0};
  std::vector<std::thread> callers;
  for (size_t t = 0; t < 4; ++t) {
    callers.emplace_back([&, t] {
      for (size_t call = 0; call < 10; ++call) {
        EchoRequest request;
        request.set_message(message_of(sizes[(t + call) % std::size(sizes)], t * 100 + call));
        absl::StatusOr<EchoReply> reply = echo.Echo(request);
        if (!reply.ok() || reply->message() != request.message()) wrong++;
      }
    });
  }
  for (auto& caller : callers) caller.join();
  EXPECT_EQ(wrong.load(), 0);
}

// A message over the 2 GiB protobuf serializes is never sent as an empty
// one: every kind of stub ends its call INVALID_ARGUMENT at once, and the
// channel goes on serving. (Before, the streaming stubs sent the empty
// string SerializePartialToString leaves, and Write returned true.)
TEST_P(FeedTest, AMessageOverTwoGiBFailsItsCallInvalidArgumentAndNothingElse) {
#if IPCRPC_TEST_SANITIZED
  GTEST_SKIP() << "2 GiB of message under a sanitizer";
#endif
  if (GetParam() != "shm") GTEST_SKIP() << "the stubs' check, not the transport's: once is enough";
  if (MemAvailableBytes() < (int64_t{6} << 30)) GTEST_SKIP() << "less than 6 GiB of memory free";
  Feed::Stub feed(channel_);
  Echo::Stub echo(channel_);
  EchoRequest huge;
  huge.set_message(std::string(size_t{1} << 31, 'h'));
  const auto over_2_gib = StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("2 GiB"));

  EXPECT_THAT(echo.Echo(huge, Within(absl::Seconds(30))), over_2_gib);

  ipcrpc::ClientReader<Event> reader = feed.Watch(huge, Within(absl::Seconds(30)));
  Event event;
  EXPECT_FALSE(reader.Read(&event));
  EXPECT_THAT(reader.Finish(), over_2_gib);

  ipcrpc::internal::Notification done;
  absl::Status async_status;
  feed.WatchAsync(
      huge, Within(absl::Seconds(30)), [](const Event&) {},
      [&](absl::Status status) {
        async_status = std::move(status);
        done.Notify();
      });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_THAT(async_status, over_2_gib);

  ipcrpc::ClientReaderWriter<EchoRequest, EchoReply> chat = feed.Chat(Within(absl::Seconds(30)));
  EXPECT_FALSE(chat.Write(huge));
  EXPECT_THAT(chat.Finish(), over_2_gib);

  Event large_event;
  large_event.set_data(std::move(*huge.mutable_message()));
  ipcrpc::ClientWriter<Event, EchoReply> writer = feed.Upload(Within(absl::Seconds(30)));
  Event small_event;
  small_event.set_sequence(1);
  ASSERT_TRUE(writer.Write(small_event));
  EXPECT_FALSE(writer.Write(large_event));
  EXPECT_THAT(writer.Finish(), over_2_gib);

  EchoRequest request;
  request.set_message("after");
  absl::StatusOr<EchoReply> reply = echo.Echo(request, Within(absl::Seconds(30)));
  ASSERT_THAT(reply, IsOk());
  EXPECT_EQ(reply->message(), "after+deadline");
}

INSTANTIATE_TEST_SUITE_P(Transports, FeedTest, ::testing::Values("shm", "unix", "fifo"),
                         [](const ::testing::TestParamInfo<std::string>& param) {
                           return param.param;
                         });

}  // namespace
}  // namespace golden::v1
