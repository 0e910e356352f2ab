// The streaming part of the conformance suite: server, client and
// bidirectional streams against a real server process on every transport,
// with flow control, deadlines, cancellation and the death of either side.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ipcrpc/ipcrpc.h"
#include "tests/conformance/conformance_server_process.h"
#include "tests/util/process.h"
#include "tests/util/status_matchers.h"
#include "base/mutex.h"

namespace ipcrpc::testing {
namespace {

using ::testing::HasSubstr;

const TransportTraits kTransports[] = {
    {"unix", true}, {"pipe", false}, {"fifo", true}, {"mq", true}, {"shm", true},
};

class StreamConformanceTest : public ::testing::TestWithParam<TransportTraits> {
 protected:
  void SetUp() override {
    auto server = ConformanceServerProcess::Start(GetParam());
    ASSERT_THAT(server, IsOk());
    server_ = *std::move(server);
  }
  void TearDown() override { server_.reset(); }

  Channel& channel() { return *server_->channel(); }

  bool IsGrpc() const { return GetParam().name.substr(0, 4) == "grpc"; }
  // Over gRPC, bytes HTTP/2's flow control holds besides ipcrpc's windows:
  // gRPC's stream windows, which its BDP probe grows (to 16 MiB or so).
  int64_t GrpcBuffering() const { return IsGrpc() ? int64_t{24} << 20 : 0; }

  CallOptions Within(absl::Duration timeout) {
    CallOptions options;
    options.timeout = timeout;
    return options;
  }

  int64_t Written() {
    auto written = channel().CallMethod("test.Test/Written", "", Within(absl::Seconds(10)));
    int64_t n = -1;
    if (written.ok()) {
      EXPECT_TRUE(absl::SimpleAtoi(*written, &n));
    }
    return n;
  }

  std::unique_ptr<ConformanceServerProcess> server_;
};

TEST_P(StreamConformanceTest, TenThousandMessagesArriveInOrder) {
  GenericClientStream reader =
      channel().OpenServerStream("test.Test/Count", "10000 0", Within(absl::Seconds(60)));
  std::string message;
  int expected = 0;
  while (reader.Read(&message)) {
    ASSERT_EQ(message, std::to_string(expected)) << "message " << expected;
    ++expected;
  }
  EXPECT_THAT(reader.Finish(), IsOk());
  EXPECT_EQ(expected, 10000);
}

TEST_P(StreamConformanceTest, FinishAndDoneFillTheResponseMetadata) {
  using Entries = std::vector<std::pair<std::string, std::string>>;
  Entries response_metadata = {{"stale", "entry"}};
  CallOptions options = Within(absl::Seconds(60));
  options.response_metadata = &response_metadata;
  GenericClientStream reader = channel().OpenServerStream("test.Test/Count", "3 1", options);
  std::string message;
  int messages = 0;
  while (reader.Read(&message)) ++messages;
  EXPECT_EQ(messages, 3);
  EXPECT_THAT(reader.Finish(), IsOk());
  EXPECT_EQ(response_metadata, (Entries{{"x-count", "3"}}));

  Entries async_metadata;
  options.response_metadata = &async_metadata;
  ipcrpc::internal::Notification done;
  absl::Status status;
  Entries seen_in_done;
  std::atomic<int> async_messages{0};
  channel().CallServerStreamAsync(
      "test.Test/Count", "5 1", options, [&](std::string_view) { ++async_messages; },
      [&](absl::Status final_status) {
        status = std::move(final_status);
        seen_in_done = async_metadata;
        done.Notify();
      });
  done.WaitForNotification();
  EXPECT_THAT(status, IsOk());
  EXPECT_EQ(async_messages.load(), 5);
  EXPECT_EQ(seen_in_done, (Entries{{"x-count", "5"}}));
}

TEST_P(StreamConformanceTest, MessagesFromZeroBytesToFourMebibytesEchoWhole) {
  GenericClientStream stream = channel().OpenStream("test.Test/EchoStream", Within(absl::Seconds(60)));
  for (size_t size : {size_t{0}, size_t{1}, size_t{4096}, size_t{64} << 10, size_t{1} << 20,
                      size_t{4} << 20}) {
    std::string sent(size, '\0');
    for (size_t i = 0; i < size; ++i) sent[i] = static_cast<char>(i * 131 + size);
    ASSERT_TRUE(stream.Write(sent)) << size;
    std::string got;
    ASSERT_TRUE(stream.Read(&got)) << size;
    EXPECT_TRUE(got == sent) << "the echo of " << size << " bytes differs";
  }
  ASSERT_TRUE(stream.WritesDone());
  std::string extra;
  EXPECT_FALSE(stream.Read(&extra));
  EXPECT_THAT(stream.Finish(), IsOk());
}

TEST_P(StreamConformanceTest, ClientStreamingSumsWhatWasWritten) {
  GenericClientStream writer = channel().OpenStream("test.Test/Sum", Within(absl::Seconds(60)));
  int64_t bytes = 0;
  for (int i = 0; i < 3000; ++i) {
    const std::string message(i % 700, 'a');
    bytes += static_cast<int64_t>(message.size());
    ASSERT_TRUE(writer.Write(message)) << i;
  }
  ASSERT_TRUE(writer.WritesDone());
  std::string reply;
  ASSERT_TRUE(writer.Read(&reply));
  EXPECT_EQ(reply, absl::StrCat(3000, " ", bytes));
  EXPECT_THAT(writer.Finish(), IsOk());
}

TEST_P(StreamConformanceTest, AServerWriterWaitsForASlowReaderWithinTheWindow) {
  // 64 KiB messages against the default 1 MiB window: the server's
  // handler must stop after about 16 while nobody reads.
  const int64_t writer_rss_before = ProcessRssBytes(server_->pid());
  GenericClientStream reader =
      channel().OpenServerStream("test.Test/Forever", "65536", Within(absl::Seconds(60)));
  std::string message;
  ASSERT_TRUE(reader.Read(&message));
  // The window lets the writer run ahead (however slowly the machine runs
  // it); then give it every chance to run further (it must not): poll until
  // the count has not grown for 200 ms.
  int64_t last = Written();
  for (const absl::Time until = absl::Now() + absl::Seconds(10);
       last < 8 && absl::Now() < until; last = Written()) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  EXPECT_GE(last, 8) << "the window should let the writer run ahead";
  for (int stable = 0, i = 0; stable < 10 && i < 500; ++i) {
    absl::SleepFor(absl::Milliseconds(20));
    const int64_t now = Written();
    stable = now == last ? stable + 1 : 0;
    last = now;
  }
  const int64_t cost = 65536 + 64;
  // Window in messages, plus one that may overshoot it, plus the one read;
  // over gRPC also what HTTP/2's flow control holds.
  const int64_t bound = ((int64_t{1} << 20) + GrpcBuffering()) / cost + 2;
  EXPECT_LE(Written(), bound);
  // The writer process (the server) holds no more than that either.
  EXPECT_LT(ProcessRssBytes(server_->pid()) - writer_rss_before,
            (int64_t{32} << 20) + GrpcBuffering());
  // Reading lets it go on.
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(reader.Read(&message));
  // The handler counts a message once its Write has returned, a moment
  // after the client can read it: wait for the count to catch up.
  int64_t written = Written();
  for (const absl::Time until = absl::Now() + absl::Seconds(10);
       written <= 100 && absl::Now() < until; written = Written()) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  EXPECT_GT(written, 100);
  reader.Cancel();
  EXPECT_THAT(reader.Finish(), StatusIs(absl::StatusCode::kCancelled));
}

TEST_P(StreamConformanceTest, AClientWriterBlocksOnAServerThatDoesNotReadAndMemoryStaysBounded) {
  const int64_t rss_before = ProcessRssBytes(server_->pid());
  ASSERT_GT(rss_before, 0);
  const int64_t own_rss_before = ProcessRssBytes(getpid());  // the writer's
  GenericClientStream writer = channel().OpenStream("test.Test/Stall", Within(absl::Seconds(2)));
  const std::string message(1 << 20, 'w');
  int written = 0;
  const absl::Time start = absl::Now();
  while (writer.Write(message)) ++written;
  // The window (1 MiB) lets one or two 1 MiB messages through (over gRPC,
  // also what HTTP/2's flow control holds); then Write waits, and returns
  // false at the deadline.
  EXPECT_LE(written, 2 + GrpcBuffering() / (1 << 20));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(1500));
  EXPECT_THAT(writer.Finish(), StatusIs(absl::StatusCode::kDeadlineExceeded));
  const int64_t rss_after = ProcessRssBytes(server_->pid());
  EXPECT_LT(rss_after - rss_before, (int64_t{32} << 20) + GrpcBuffering());
  // The writer (this process) kept nothing of what it could not send.
  EXPECT_LT(ProcessRssBytes(getpid()) - own_rss_before, (int64_t{32} << 20) + GrpcBuffering());
}

TEST_P(StreamConformanceTest, DeadlineEndsAStreamOnBothSides) {
  GenericClientStream reader =
      channel().OpenServerStream("test.Test/Forever", "100", Within(absl::Milliseconds(300)));
  std::string message;
  int read = 0;
  const absl::Time start = absl::Now();
  while (reader.Read(&message)) ++read;
  EXPECT_GT(read, 0);
  EXPECT_THAT(reader.Finish(), StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_THAT(channel().CallMethod("test.Test/WaitForCancellations", "1", Within(absl::Seconds(10))),
              IsOk());
}

TEST_P(StreamConformanceTest, CancelEndsAStreamOnBothSidesAndUnblocksARead) {
  GenericClientStream stream = channel().OpenStream("test.Test/EchoStream", Within(absl::Seconds(60)));
  ASSERT_TRUE(stream.Write("one"));
  std::string message;
  ASSERT_TRUE(stream.Read(&message));
  std::atomic<bool> returned{false};
  std::thread reader([&] {
    std::string more;
    EXPECT_FALSE(stream.Read(&more));  // blocks: nothing was written
    returned = true;
  });
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_FALSE(returned.load());
  stream.Cancel();
  reader.join();
  EXPECT_FALSE(stream.Write("two"));
  EXPECT_THAT(stream.Finish(), StatusIs(absl::StatusCode::kCancelled));
  // Cancelling a stream the server handler waits on (Stall counts it).
  GenericClientStream stall = channel().OpenStream("test.Test/Stall", Within(absl::Seconds(60)));
  ASSERT_THAT(channel().CallMethod("test.Test/WaitForActive", "1", Within(absl::Seconds(10))),
              IsOk());
  stall.Cancel();
  EXPECT_THAT(channel().CallMethod("test.Test/WaitForCancellations", "1", Within(absl::Seconds(10))),
              IsOk());
}

// The server's writer must wait where a cancellation reaches it (the
// window), not in the transport: a client that stopped reading, then
// cancels, ends the handler promptly.
TEST_P(StreamConformanceTest, CancelReachesAWriterWhoseReaderStoppedReading) {
  GenericClientStream reader =
      channel().OpenServerStream("test.Test/Forever", "65536", Within(absl::Seconds(60)));
  std::string message;
  ASSERT_TRUE(reader.Read(&message));
  for (int64_t last = -1, i = 0; i < 100; ++i) {  // until the writer is stuck
    absl::SleepFor(absl::Milliseconds(10));
    const int64_t now = Written();
    if (now == last) break;
    last = now;
  }
  reader.Cancel();
  EXPECT_THAT(channel().CallMethod("test.Test/WaitForCancellations", "1", Within(absl::Seconds(10))),
              IsOk());
}

// A writer in the middle of a message larger than the transport holds
// (a pipe holds 64 KiB) when its reader cancels: the client reads on until
// the server answers the cancelled stream, so the writer gets through to its
// cancellation. Watched from another channel: a call on the same one would
// read the connection anyway.
TEST_P(StreamConformanceTest, CancelReachesAWriterBlockedInTheMiddleOfAMessage) {
  if (!GetParam().many_clients) GTEST_SKIP() << "pipe: one channel only";
  absl::StatusOr<std::shared_ptr<Channel>> observer = server_->NewChannel();
  ASSERT_THAT(observer, IsOk());
  for (int round = 1; round <= 5; ++round) {
    GenericClientStream reader =
        channel().OpenServerStream("test.Test/Forever", "300000", Within(absl::Seconds(60)));
    std::string message;
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(reader.Read(&message));
    reader.Cancel();
    EXPECT_THAT((*observer)->CallMethod("test.Test/WaitForCancellations", std::to_string(round),
                                        Within(absl::Seconds(10))),
                IsOk())
        << "round " << round;
  }
}

TEST_P(StreamConformanceTest, DestroyingAnUnfinishedStreamCancelsIt) {
  {
    GenericClientStream stall = channel().OpenStream("test.Test/Stall", Within(absl::Seconds(60)));
    ASSERT_THAT(channel().CallMethod("test.Test/WaitForActive", "1", Within(absl::Seconds(10))),
                IsOk());
  }
  EXPECT_THAT(channel().CallMethod("test.Test/WaitForCancellations", "1", Within(absl::Seconds(10))),
              IsOk());
}

TEST_P(StreamConformanceTest, ServerKilledMidStreamEndsItUnavailablePromptly) {
  GenericClientStream reader =
      channel().OpenServerStream("test.Test/Forever", "100", Within(absl::Seconds(60)));
  std::string message;
  ASSERT_TRUE(reader.Read(&message));
  std::atomic<int64_t> ended_ns{0};
  std::thread draining([&] {
    std::string more;
    while (reader.Read(&more)) {
    }
    ended_ns = absl::GetCurrentTimeNanos();
  });
  absl::SleepFor(absl::Milliseconds(20));
  const int64_t killed_ns = absl::GetCurrentTimeNanos();
  server_->Kill();
  draining.join();
  EXPECT_LT(absl::Nanoseconds(ended_ns - killed_ns), absl::Seconds(2));
  EXPECT_THAT(reader.Finish(), StatusIs(absl::StatusCode::kUnavailable));
}

// Shutdown(grace) (conformance_server: SIGTERM, a grace of 1 s) ends every
// open stream within the grace plus a little, whatever each handler waits
// for: a handler waiting for cancellation, a writer waiting for the
// window, a reader waiting for messages.
TEST_P(StreamConformanceTest, ServerShutdownEndsOpenStreamsWithinItsGrace) {
  GenericClientStream stall = channel().OpenStream("test.Test/Stall", Within(absl::Seconds(60)));
  GenericClientStream forever =
      channel().OpenServerStream("test.Test/Forever", "65536", Within(absl::Seconds(60)));
  GenericClientStream echo = channel().OpenStream("test.Test/EchoStream", Within(absl::Seconds(60)));
  std::string message;
  ASSERT_TRUE(echo.Write("x"));
  ASSERT_TRUE(echo.Read(&message));
  ASSERT_TRUE(forever.Read(&message));
  ASSERT_THAT(channel().CallMethod("test.Test/WaitForActive", "1", Within(absl::Seconds(10))),
              IsOk());
  const absl::Time start = absl::Now();
  ASSERT_EQ(kill(server_->pid(), SIGTERM), 0);
  for (GenericClientStream* stream : {&stall, &forever, &echo}) {
    while (stream->Read(&message)) {
    }
    absl::Status status = stream->Finish();
    EXPECT_TRUE(absl::IsCancelled(status) || absl::IsUnavailable(status)) << status;
  }
  EXPECT_LT(absl::Now() - start, absl::Seconds(1) + absl::Seconds(3));
  EXPECT_TRUE(WaitUntilGone(server_->pid(), absl::Seconds(10)));
}

TEST_P(StreamConformanceTest, ClientKilledMidStreamCancelsTheHandler) {
  if (!GetParam().many_clients) GTEST_SKIP() << "pipe: the client would be the server's parent";
  int out[2];
  ASSERT_EQ(pipe2(out, O_CLOEXEC), 0);
  internal::UniqueFd out_read(out[0]);
  internal::UniqueFd out_write(out[1]);
  std::vector<std::string> argv = {IPCRPC_CONFORMANCE_CLIENT, "--stream"};
  for (const std::string& arg : server_->ClientArgs()) argv.push_back(arg);
  auto client = Spawn(argv, {}, {}, out_write.get());
  ASSERT_THAT(client, IsOk());
  out_write.Reset();
  auto line = ReadLine(out_read.get(), absl::Seconds(20));
  ASSERT_THAT(line, IsOk());
  ASSERT_THAT(*line, ::testing::StartsWith("PID "));
  ASSERT_THAT(channel().CallMethod("test.Test/WaitForActive", "1", Within(absl::Seconds(10))),
              IsOk());
  kill(*client, SIGKILL);
  ASSERT_TRUE(WaitForExit(*client, absl::Seconds(10)).has_value());
  EXPECT_THAT(channel().CallMethod("test.Test/WaitForCancellations", "1", Within(absl::Seconds(10))),
              IsOk());
  EXPECT_THAT(channel().CallMethod("test.Test/Echo", "still here"), IsOk());
}

TEST_P(StreamConformanceTest, ManyStreamsAndUnaryCallsShareOneConnection) {
  constexpr int kStreams = 8;
  constexpr int kMessages = 500;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int s = 0; s < kStreams; ++s) {
    threads.emplace_back([&, s] {
      GenericClientStream stream =
          channel().OpenStream("test.Test/EchoStream", Within(absl::Seconds(60)));
      for (int i = 0; i < kMessages; ++i) {
        const std::string sent = absl::StrCat(s, ":", i, std::string(i % 300, '.'));
        std::string got;
        if (!stream.Write(sent) || !stream.Read(&got) || got != sent) {
          failures.fetch_add(1);
          return;
        }
      }
      stream.WritesDone();
      if (!stream.Finish().ok()) failures.fetch_add(1);
    });
  }
  // A stalled stream on the same connection holds nobody up.
  GenericClientStream stalled = channel().OpenStream("test.Test/Stall", Within(absl::Seconds(60)));
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 300; ++i) {
        const std::string request = absl::StrCat("unary ", t, " ", i);
        auto response = channel().CallMethod("test.Test/Echo", request, Within(absl::Seconds(30)));
        if (!response.ok() || *response != request) {
          failures.fetch_add(1);
          return;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  stalled.Cancel();
}

TEST_P(StreamConformanceTest, AsyncServerStreamDeliversInOrderThenDoneOnce) {
  ipcrpc::internal::Notification done;
  std::atomic<int> messages{0};
  std::atomic<int> out_of_order{0};
  std::atomic<int> after_done{0};
  std::atomic<int> dones{0};
  absl::Status final_status;
  channel().CallServerStreamAsync(
      "test.Test/Count", "2000 10", Within(absl::Seconds(60)),
      [&](std::string_view message) {
        if (dones.load() > 0) after_done.fetch_add(1);
        std::string expected = std::to_string(messages.load());
        expected.resize(10, 'x');
        if (message != expected) out_of_order.fetch_add(1);
        messages.fetch_add(1);
      },
      [&](absl::Status status) {
        final_status = std::move(status);
        dones.fetch_add(1);
        done.Notify();
      });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(60)));
  EXPECT_THAT(final_status, IsOk());
  EXPECT_EQ(messages.load(), 2000);
  EXPECT_EQ(out_of_order.load(), 0);
  EXPECT_EQ(after_done.load(), 0);
  EXPECT_EQ(dones.load(), 1);
}

TEST_P(StreamConformanceTest, AStreamToAUnaryMethodAndTheReverseAreUnimplemented) {
  if (IsGrpc()) {
    // gRPC's wire does not say how a call is framed: a gRPC server serves a
    // call as its method declares (docs/GRPC.md). A method it lacks is
    // UNIMPLEMENTED all the same.
    GenericClientStream missing = channel().OpenStream("test.Test/NoSuchStream");
    EXPECT_THAT(missing.Finish(), StatusIs(absl::StatusCode::kUnimplemented));
    EXPECT_THAT(channel().CallMethod("test.Test/NoSuchMethod", ""),
                StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("test.Test/NoSuchMethod")));
    return;
  }
  GenericClientStream wrong = channel().OpenStream("test.Test/Echo", Within(absl::Seconds(10)));
  std::string message;
  EXPECT_FALSE(wrong.Read(&message));
  EXPECT_THAT(wrong.Finish(),
              StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("test.Test/Echo")));
  EXPECT_THAT(channel().CallMethod("test.Test/Count", "1 1", Within(absl::Seconds(10))),
              StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("test.Test/Count")));
  GenericClientStream missing = channel().OpenStream("test.Test/NoSuchStream");
  EXPECT_THAT(missing.Finish(), StatusIs(absl::StatusCode::kUnimplemented));
}

INSTANTIATE_TEST_SUITE_P(Transports, StreamConformanceTest, ::testing::ValuesIn(kTransports),
                         [](const ::testing::TestParamInfo<TransportTraits>& param) {
                           return param.param.name;
                         });

#ifdef IPCRPC_TEST_GRPC
// The same behaviours over real gRPC: TCP on loopback, and a Unix socket.
INSTANTIATE_TEST_SUITE_P(Grpc, StreamConformanceTest,
                         ::testing::Values(TransportTraits{"grpc", true},
                                           TransportTraits{"grpcunix", true}),
                         [](const ::testing::TestParamInfo<TransportTraits>& param) {
                           return param.param.name;
                         });
#endif

}  // namespace
}  // namespace ipcrpc::testing
