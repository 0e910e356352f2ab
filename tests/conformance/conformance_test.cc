// The conformance suite: one set of behaviours every transport must show,
// against a real server process. Each later transport adds itself to
// kTransports (and to ConformanceServerProcess) and must pass unchanged.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ipcrpc/ipcrpc.h"
#include "wire/frame.h"
#include "tests/conformance/conformance_server_process.h"
#include "tests/conformance/test_service.h"
#include "tests/util/process.h"
#include "tests/util/status_matchers.h"
#include "base/mutex.h"

namespace ipcrpc::testing {
namespace {

using ::testing::HasSubstr;

}  // namespace

namespace {

const TransportTraits kTransports[] = {
    {"unix", true},
    {"pipe", false},
    {"fifo", true},
    {"mq", true},
    {"shm", true},
};

bool IsGrpc(const TransportTraits& transport) { return transport.name.substr(0, 4) == "grpc"; }

std::string Pattern(size_t size, uint32_t seed) {
  std::string bytes(size, '\0');
  std::mt19937 rng(seed);
  for (char& c : bytes) c = static_cast<char>(rng());
  return bytes;
}

class ConformanceTest : public ::testing::TestWithParam<TransportTraits> {
 protected:
  void SetUp() override {
    auto server = ConformanceServerProcess::Start(GetParam());
    ASSERT_THAT(server, IsOk());
    server_ = *std::move(server);
  }
  void TearDown() override { server_.reset(); }

  Channel& channel() { return *server_->channel(); }

  std::unique_ptr<ConformanceServerProcess> server_;
};

TEST_P(ConformanceTest, RoundTripsCheckTheBytes) {
  for (size_t size : {size_t{0}, size_t{1}, size_t{64} << 10, size_t{4} << 20}) {
    const std::string request = Pattern(size, static_cast<uint32_t>(size));
    auto response = channel().CallMethod("test.Test/Echo", request);
    ASSERT_THAT(response, IsOk()) << "size " << size;
    EXPECT_EQ(response->size(), size);
    EXPECT_TRUE(*response == request) << "bytes differ at size " << size;
  }
}

TEST_P(ConformanceTest, SixteenThreadsOfConcurrentCallsGetTheirOwnResponses) {
  constexpr int kThreads = 16;
  constexpr int kCalls = 500;
  std::atomic<int> wrong{0};
  std::atomic<int> failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kCalls; ++i) {
        const std::string request =
            absl::StrCat("thread ", t, " call ", i, " ", Pattern(i % 97, t * kCalls + i));
        auto response = channel().CallMethod("test.Test/Echo", request);
        if (!response.ok()) {
          failed.fetch_add(1);
        } else if (*response != request) {
          wrong.fetch_add(1);
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(wrong.load(), 0);
}

TEST_P(ConformanceTest, ThousandAsyncCallsInFlightEachCompleteExactlyOnce) {
  constexpr int kCalls = 1000;
  std::vector<std::atomic<int>> completions(kCalls);
  std::atomic<int> wrong{0};
  std::atomic<int> on_caller_thread{0};
  absl::BlockingCounter all_done(kCalls);
  const std::thread::id caller = std::this_thread::get_id();
  for (int i = 0; i < kCalls; ++i) {
    const std::string request = absl::StrCat("async ", i);
    channel().CallMethodAsync("test.Test/Echo", request, {},
                              [&, i, request](absl::StatusOr<std::string> response) {
                                if (std::this_thread::get_id() == caller) on_caller_thread++;
                                if (!response.ok() || *response != request) {
                                  if (wrong++ == 0) {
                                    ADD_FAILURE() << "call " << i << ": "
                                                  << (response.ok() ? *response
                                                                    : response.status().ToString());
                                  }
                                }
                                if (completions[i].fetch_add(1) == 0) all_done.DecrementCount();
                              });
  }
  all_done.Wait();
  // Every callback ran once, on the response thread; none twice.
  for (int i = 0; i < kCalls; ++i) EXPECT_EQ(completions[i].load(), 1) << "call " << i;
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(on_caller_thread.load(), 0);
  // Late duplicates would show up as a second completion: make one more round
  // trip so that anything still queued has been delivered.
  ASSERT_THAT(channel().CallMethod("test.Test/Echo", "sync"), IsOk());
  for (int i = 0; i < kCalls; ++i) EXPECT_EQ(completions[i].load(), 1) << "call " << i;
}

TEST_P(ConformanceTest, SyncDeadlineExpiresAgainstASleepingHandler) {
  // 300 ms, not less: a request that reaches the server after its deadline
  // is never run (so never cancelled), which with both CPUs busy under a
  // sanitizer took a request over 50 ms (ctest -j4 under ASan, grpc:).
  CallOptions options;
  options.timeout = absl::Milliseconds(300);
  const absl::Time start = absl::Now();
  auto response = channel().CallMethod("test.Test/Sleep", "10000", options);
  const absl::Duration elapsed = absl::Now() - start;
  EXPECT_THAT(response, StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_GE(elapsed, absl::Milliseconds(300));
  EXPECT_LT(elapsed, absl::Milliseconds(750));
  // The server saw the deadline too: the handler was cancelled.
  CallOptions wait;
  wait.timeout = absl::Seconds(10);
  EXPECT_THAT(channel().CallMethod("test.Test/WaitForCancellations", "1", wait), IsOk());
  EXPECT_THAT(channel().CallMethod("test.Test/Echo", "still fine"), IsOk());
}

TEST_P(ConformanceTest, AsyncDeadlineIsEnforcedWithoutAWaiter) {
  CallOptions options;
  options.timeout = absl::Milliseconds(50);
  ipcrpc::internal::Notification done;
  absl::Status result;
  absl::Time finished;
  const absl::Time start = absl::Now();
  channel().CallMethodAsync("test.Test/Sleep", "10000", options,
                            [&](absl::StatusOr<std::string> response) {
                              result = std::move(response).status();
                              finished = absl::Now();
                              done.Notify();
                            });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_THAT(result, StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_GE(finished - start, absl::Milliseconds(50));
  EXPECT_LT(finished - start, absl::Milliseconds(500));
}

TEST_P(ConformanceTest, CancelEndsTheCallAndReachesTheHandler) {
  ipcrpc::internal::Notification done;
  absl::Status result;
  int runs = 0;
  Call call = channel().CallMethodAsync("test.Test/Sleep", "60000", {},
                                        [&](absl::StatusOr<std::string> response) {
                                          result = std::move(response).status();
                                          ++runs;
                                          done.Notify();
                                        });
  CallOptions wait;
  wait.timeout = absl::Seconds(10);
  ASSERT_THAT(channel().CallMethod("test.Test/WaitForActive", "1", wait), IsOk());
  call.Cancel();
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_THAT(result, StatusIs(absl::StatusCode::kCancelled));
  EXPECT_THAT(channel().CallMethod("test.Test/WaitForCancellations", "1", wait), IsOk());
  call.Cancel();  // again: nothing happens
  ASSERT_THAT(channel().CallMethod("test.Test/Echo", "after"), IsOk());
  EXPECT_EQ(runs, 1);
}

TEST_P(ConformanceTest, UnknownMethodIsUnimplemented) {
  EXPECT_THAT(channel().CallMethod("test.Test/NoSuchMethod", "x"),
              StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("test.Test/NoSuchMethod")));
  EXPECT_THAT(channel().CallMethod("test.Test/Echo", "x"), IsOk());
}

TEST_P(ConformanceTest, ServerKilledMidCallFailsPendingCallsPromptly) {
  std::atomic<int64_t> failed_at_ns{0};
  absl::Status sync_result;
  std::thread caller([&] {
    auto response = channel().CallMethod("test.Test/Sleep", "60000");
    failed_at_ns = absl::GetCurrentTimeNanos();
    sync_result = response.status();
  });
  ipcrpc::internal::Notification async_done;
  absl::Status async_result;
  channel().CallMethodAsync("test.Test/Sleep", "60000", {},
                            [&](absl::StatusOr<std::string> response) {
                              async_result = std::move(response).status();
                              async_done.Notify();
                            });
  CallOptions wait;
  wait.timeout = absl::Seconds(10);
  ASSERT_THAT(channel().CallMethod("test.Test/WaitForActive", "2", wait), IsOk());
  const int64_t killed_at_ns = absl::GetCurrentTimeNanos();
  server_->Kill();
  caller.join();
  ASSERT_TRUE(async_done.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_THAT(sync_result, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(async_result, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_LT(absl::Nanoseconds(failed_at_ns - killed_at_ns), absl::Milliseconds(200));
  // The next call finds no server: UNAVAILABLE at once, no crash (for pipe:
  // it writes to a pipe with no reader, which must not raise SIGPIPE).
  EXPECT_THAT(channel().CallMethod("test.Test/Echo", "x"),
              StatusIs(absl::StatusCode::kUnavailable));
  if (!GetParam().many_clients) {
    // pipe: the channel reaps its child: no zombie stays.
    EXPECT_TRUE(WaitUntilReaped(server_->pid(), absl::Seconds(5)));
  }
}

TEST_P(ConformanceTest, ClientKilledMidCallLeavesTheServerServing) {
  int out[2];
  ASSERT_EQ(pipe2(out, O_CLOEXEC), 0);
  internal::UniqueFd out_read(out[0]);
  internal::UniqueFd out_write(out[1]);
  std::vector<std::string> argv = {IPCRPC_CONFORMANCE_CLIENT};
  for (const std::string& arg : server_->ClientArgs()) argv.push_back(arg);
  // The client's stdout is our pipe.
  auto client = Spawn(argv, {}, {}, out_write.get());
  ASSERT_THAT(client, IsOk());
  out_write.Reset();
  auto line = ReadLine(out_read.get(), absl::Seconds(20));
  ASSERT_THAT(line, IsOk());
  ASSERT_THAT(*line, ::testing::StartsWith("PID "));
  pid_t client_server = 0;
  ASSERT_TRUE(absl::SimpleAtoi(line->substr(4), &client_server));
  if (GetParam().many_clients) {
    // The client is in its Sleep call on our server: kill it there.
    ASSERT_EQ(client_server, server_->pid());
    CallOptions wait;
    wait.timeout = absl::Seconds(10);
    ASSERT_THAT(channel().CallMethod("test.Test/WaitForActive", "1", wait), IsOk());
    kill(*client, SIGKILL);
    ASSERT_TRUE(WaitForExit(*client, absl::Seconds(10)).has_value());
    // The server saw the client's death as the cancellation of its call, and
    // serves others.
    EXPECT_THAT(channel().CallMethod("test.Test/WaitForCancellations", "1", wait), IsOk());
    EXPECT_THAT(channel().CallMethod("test.Test/Echo", "still here"), IsOk());
  } else {
    // pipe: the client is the server's parent: its death ends the server,
    // which exits instead of lingering as an orphan.
    kill(*client, SIGKILL);
    ASSERT_TRUE(WaitForExit(*client, absl::Seconds(10)).has_value());
    EXPECT_TRUE(WaitUntilGone(client_server, absl::Seconds(10)))
        << "the pipe: server outlived its parent";
    // Our own server is another child, unharmed.
    EXPECT_THAT(channel().CallMethod("test.Test/Echo", "still here"), IsOk());
  }
}

TEST_P(ConformanceTest, MalformedFramesCloseOnlyThatConnection) {
  struct Garbage {
    const char* what;
    std::string bytes;
  };
  // A well-framed message whose frame header lies about its lengths.
  std::string lying;
  internal::FrameHeader header;
  ASSERT_THAT(internal::EncodeFramePrefix(header, "test.Test/Echo", {}, 0, 100, &lying), IsOk());
  lying[36] = 100;  // claims a payload that is not there
  const Garbage cases[] = {
      {"bad magic", "garbage!"},
      {"oversized length", ""},  // announced longer than any limit
      {"lying frame", lying},
  };
  if (IsGrpc(GetParam())) {
    GTEST_SKIP() << "gRPC frames its own messages: bad HTTP/2 is gRPC's to refuse";
  }
  for (const Garbage& garbage : cases) {
    SCOPED_TRACE(garbage.what);
    auto peer = server_->OpenRawPeer();
    ASSERT_THAT(peer, IsOk());
    ASSERT_TRUE(garbage.bytes.empty() ? peer->SendOversized() : peer->SendMessage(garbage.bytes));
    EXPECT_TRUE(peer->WaitClosed(absl::Seconds(10))) << "the server kept the connection open";
    if (peer->own_server > 0) {
      // pipe: the garbage peer's own server ends cleanly, not by a crash.
      peer->Finish();
      std::optional<int> status = WaitForExit(peer->own_server, absl::Seconds(10));
      ASSERT_TRUE(status.has_value());
      EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << "wait status " << *status;
    }
    EXPECT_THAT(channel().CallMethod("test.Test/Echo", "unharmed"), IsOk());
  }
}

TEST_P(ConformanceTest, MetadataReachesTheHandler) {
  CallOptions options;
  options.metadata = {{"trace-id", "abc123"}, {"empty", ""}};
  auto response = channel().CallMethod("test.Test/Metadata", "", options);
  ASSERT_THAT(response, IsOk());
  // gRPC's C++ API hands metadata over sorted by key.
  EXPECT_EQ(*response, IsGrpc(GetParam()) ? "empty=;trace-id=abc123;" : "trace-id=abc123;empty=;");
}

using Entries = std::vector<std::pair<std::string, std::string>>;

std::string DetailOf(const absl::Status& status) {
  auto payload = status.GetPayload(kDetailTypeUrl);
  return payload.has_value() ? std::string(*payload) : "<none>";
}

TEST_P(ConformanceTest, AHandlersStatusArrivesWholeWithItsResponseMetadata) {
  const std::string detail(kDetailBytes, sizeof(kDetailBytes) - 1);
  Entries expected = {{"x-served-by", "conformance"}, {"trace-bin", std::string("\0\x01", 2)}};
  // gRPC's C++ API hands metadata over sorted by key.
  if (IsGrpc(GetParam())) std::swap(expected[0], expected[1]);
  std::string request = "9;x-served-by=conformance;trace-bin=";
  request.append("\0\x01", 2);
  // Sync.
  Entries response_metadata = {{"stale", "entry"}};
  CallOptions options;
  options.response_metadata = &response_metadata;
  auto response = channel().CallMethod("test.Test/Reply", request, options);
  EXPECT_THAT(response, StatusIs(absl::StatusCode::kFailedPrecondition, "failed on purpose"));
  EXPECT_EQ(DetailOf(response.status()), detail);
  EXPECT_EQ(response_metadata, expected);
  // Async: filled before the callback runs.
  Entries async_metadata;
  options.response_metadata = &async_metadata;
  ipcrpc::internal::Notification done;
  absl::Status async_status;
  Entries seen_in_callback;
  channel().CallMethodAsync("test.Test/Reply", request, options,
                            [&](absl::StatusOr<std::string> result) {
                              async_status = std::move(result).status();
                              seen_in_callback = async_metadata;
                              done.Notify();
                            });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(60)));
  EXPECT_THAT(async_status, StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(DetailOf(async_status), detail);
  EXPECT_EQ(seen_in_callback, expected);
}

TEST_P(ConformanceTest, ResponseMetadataComesWithAnAnswerAndReservedKeysDoNot) {
  Entries response_metadata;
  CallOptions options;
  options.response_metadata = &response_metadata;
  auto response = channel().CallMethod(
      "test.Test/Reply", "0;a=1;grpc-status=0;a=2;:path=/x;b-bin=", options);
  ASSERT_THAT(response, IsOk());
  EXPECT_EQ(*response, "replied");
  EXPECT_EQ(response_metadata, (Entries{{"a", "1"}, {"a", "2"}, {"b-bin", ""}}));
  // A call that gets no answer has none.
  options.timeout = absl::Milliseconds(50);
  EXPECT_THAT(channel().CallMethod("test.Test/Sleep", "10000", options),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_TRUE(response_metadata.empty());
}

TEST_P(ConformanceTest, ResponseMetadataOverTheLimitsIsResourceExhaustedForThatCallOnly) {
  Entries response_metadata;
  CallOptions options;
  options.response_metadata = &response_metadata;
  EXPECT_THAT(channel().CallMethod("test.Test/Reply", "0;many", options),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("metadata")));
  EXPECT_TRUE(response_metadata.empty());
  EXPECT_THAT(channel().CallMethod("test.Test/Echo", "unharmed"), IsOkAndHolds("unharmed"));
}

INSTANTIATE_TEST_SUITE_P(Transports, ConformanceTest, ::testing::ValuesIn(kTransports),
                         [](const ::testing::TestParamInfo<TransportTraits>& param) {
                           return param.param.name;
                         });

#ifdef IPCRPC_TEST_GRPC
// The same behaviours over real gRPC: TCP on loopback, and a Unix socket.
INSTANTIATE_TEST_SUITE_P(Grpc, ConformanceTest,
                         ::testing::Values(TransportTraits{"grpc", true},
                                           TransportTraits{"grpcunix", true}),
                         [](const ::testing::TestParamInfo<TransportTraits>& param) {
                           return param.param.name;
                         });
#endif

}  // namespace
}  // namespace ipcrpc::testing

int main(int argc, char** argv) {
  // Orphaned grandchildren (a pipe: server whose parent we killed) are
  // re-parented to us, so we can see them exit and nothing is left.
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
