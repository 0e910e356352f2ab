// The hot path's promises, observed from outside: a sync round trip wakes no
// thread but the caller and the server's reader (the kernel's count of
// context switches per thread tells), and the direct reads it relies on
// keep every other path working: async calls, cancellation of a caller that
// is reading, a server that left while nobody was reading.
#include <dirent.h>

#include <fstream>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "base/clock.h"
#include "base/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ipcrpc/ipcrpc.h"
#include "rpc/server_call_state.h"
#include "tests/conformance/test_service.h"
#include "tests/util/process.h"
#include "tests/util/status_matchers.h"

namespace ipcrpc::testing {
namespace {

// Context switches (voluntary and not) of this process's threads named
// `name`, as /proc/self/task/*/status counts them.
int64_t ContextSwitchesOfThreadsNamed(const std::string& name) {
  int64_t total = 0;
  DIR* tasks = opendir("/proc/self/task");
  if (tasks == nullptr) return -1;
  while (struct dirent* task = readdir(tasks)) {
    if (task->d_name[0] == '.') continue;
    const std::string dir = absl::StrCat("/proc/self/task/", task->d_name);
    std::ifstream comm(dir + "/comm");
    std::string thread_name;
    std::getline(comm, thread_name);
    if (thread_name != name) continue;
    std::ifstream status(dir + "/status");
    for (std::string line; std::getline(status, line);) {
      absl::string_view rest(line);
      if (absl::ConsumePrefix(&rest, "voluntary_ctxt_switches:") ||
          absl::ConsumePrefix(&rest, "nonvoluntary_ctxt_switches:")) {
        int64_t n = 0;
        if (absl::SimpleAtoi(absl::StripAsciiWhitespace(rest), &n)) total += n;
      }
    }
  }
  closedir(tasks);
  return total;
}

// Counts down to zero; Wait returns then. On the project's Mutex (which
// ThreadSanitizer sees), unlike absl::BlockingCounter from the system's
// uninstrumented abseil.
class Countdown {
 public:
  explicit Countdown(int n) : left_(n) {}
  void Decrement() {
    ipcrpc::internal::MutexLock lock(&mu_);
    --left_;
  }
  void Wait() {
    ipcrpc::internal::MutexLock lock(&mu_);
    mu_.Await(ipcrpc::internal::Condition(+[](int* left) { return *left == 0; }, &left_));
  }

 private:
  ipcrpc::internal::Mutex mu_;
  int left_;
};

class HotPathTest : public ::testing::TestWithParam<std::string> {
 protected:
  void StartServer() {
    const std::string transport = GetParam();
    const std::string name = UniqueName("ipcrpc-hot");
    endpoint_ = (transport == "mq" || transport == "shm") ? absl::StrCat(transport, ":", name)
                                                          : absl::StrCat(transport, ":/tmp/", name);
    // Whether Echo runs on the reading thread must not depend on how fast
    // this machine (or a sanitizer) runs it.
    ServerOptions options;
    options.inline_handler_limit = absl::Seconds(1);
    server_ = std::make_unique<Server>(options);
    ASSERT_THAT(server_->RegisterService(&service_), IsOk());
    ASSERT_THAT(server_->Listen(endpoint_), IsOk());
    ASSERT_THAT(server_->Start(), IsOk());
  }
  void SetUp() override {
    StartServer();
    auto channel = Channel::Connect(endpoint_);
    ASSERT_THAT(channel, IsOk());
    channel_ = *std::move(channel);
  }
  void TearDown() override {
    channel_.reset();
    if (server_) server_->Shutdown(absl::Seconds(5));
  }

  TestService service_;
  std::string endpoint_;
  std::unique_ptr<Server> server_;
  std::shared_ptr<Channel> channel_;
};

TEST_P(HotPathTest, ASyncRoundTripWakesNeitherTheResponseThreadNorAHandlerThread) {
  // Warm up: the server learns that Echo is short; the channel's loop has
  // read the connection's first frames and stopped watching it.
  for (int i = 0; i < 20; ++i) ASSERT_THAT(channel_->CallMethod("test.Test/Echo", "warm"), IsOk());
  const int64_t response_thread = ContextSwitchesOfThreadsNamed("ipcrpc-channel");
  const int64_t handler_threads = ContextSwitchesOfThreadsNamed("ipcrpc-handler");
  ASSERT_GE(response_thread, 0);
  constexpr int kCalls = 200;
  for (int i = 0; i < kCalls; ++i) {
    ASSERT_THAT(channel_->CallMethod("test.Test/Echo", absl::StrCat(i)),
                IsOkAndHolds(absl::StrCat(i)));
  }
  // Each would be woken once per call if it were on the path; a handful of
  // switches from elsewhere (the scheduler) is allowed.
  EXPECT_LT(ContextSwitchesOfThreadsNamed("ipcrpc-channel") - response_thread, kCalls / 10);
  EXPECT_LT(ContextSwitchesOfThreadsNamed("ipcrpc-handler") - handler_threads, kCalls / 10);
}

TEST_P(HotPathTest, AsyncCallsAfterDirectReadsAreAnsweredByTheResponseThread) {
  for (int i = 0; i < 20; ++i) ASSERT_THAT(channel_->CallMethod("test.Test/Echo", "sync"), IsOk());
  constexpr int kCalls = 100;
  Countdown done(kCalls);
  std::atomic<int> ok{0};
  for (int i = 0; i < kCalls; ++i) {
    channel_->CallMethodAsync("test.Test/Echo", absl::StrCat(i), {},
                              [&, i](absl::StatusOr<std::string> reply) {
                                if (reply.ok() && *reply == absl::StrCat(i)) ok.fetch_add(1);
                                done.Decrement();
                              });
  }
  done.Wait();
  EXPECT_EQ(ok.load(), kCalls);
  // And sync calls, mixed with async ones in flight, still end.
  ipcrpc::internal::Notification slow_done;
  channel_->CallMethodAsync("test.Test/Sleep", "200", {},
                            [&](absl::StatusOr<std::string>) { slow_done.Notify(); });
  for (int i = 0; i < 20; ++i) {
    ASSERT_THAT(channel_->CallMethod("test.Test/Echo", "mixed"), IsOkAndHolds("mixed"));
  }
  slow_done.WaitForNotification();
}

TEST_P(HotPathTest, CallMethodIntoWritesTheResponseIntoTheCallersBuffer) {
  std::string response = "old";
  ASSERT_THAT(channel_->CallMethodInto("test.Test/Echo", "first", &response), IsOk());
  EXPECT_EQ(response, "first");
  ASSERT_THAT(channel_->CallMethodInto("test.Test/Echo", std::string(1000, 'x'), &response),
              IsOk());
  EXPECT_EQ(response, std::string(1000, 'x'));
  // A failed call leaves the buffer alone.
  EXPECT_THAT(channel_->CallMethodInto("test.Test/Nope", "x", &response),
              StatusIs(absl::StatusCode::kUnimplemented));
  EXPECT_EQ(response, std::string(1000, 'x'));
  EXPECT_THAT(channel_->CallMethodInto("test.Test/Echo", "x", nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

// CallMethodView hands a successful response to its callback once, as a
// view, on the caller's thread, before it returns, whichever thread read it
// (several callers share the connection, and one may read another's
// response); a failed call, and one whose deadline passed, never reach it;
// a callback that throws ends its call INTERNAL and the channel goes on.
TEST_P(HotPathTest, CallMethodViewHandsEachSuccessfulResponseToItsCallbackOnce) {
  std::atomic<int> elsewhere{0};
  auto call = [&](std::string_view method, const std::string& request, int* calls,
                  std::string* seen, const CallOptions& options = {}) {
    const std::thread::id caller = std::this_thread::get_id();
    return channel_->CallMethodView(
        method, request,
        [calls, seen, caller, &elsewhere](std::string_view bytes) {
          ++*calls;
          seen->assign(bytes);
          if (std::this_thread::get_id() != caller) elsewhere.fetch_add(1);
        },
        options);
  };
  for (const std::string& request :
       {std::string("first"), std::string(), std::string(300 * 1024, 'v')}) {
    int calls = 0;
    std::string seen = "old";
    ASSERT_THAT(call("test.Test/Echo", request, &calls, &seen), IsOk());
    EXPECT_EQ(calls, 1);
    EXPECT_EQ(seen, request);
  }
  int calls = 0;
  std::string seen;
  EXPECT_THAT(call("test.Test/Nope", "x", &calls, &seen),
              StatusIs(absl::StatusCode::kUnimplemented));
  CallOptions short_deadline;
  short_deadline.timeout = absl::Milliseconds(20);
  EXPECT_THAT(call("test.Test/Sleep", "2000", &calls, &seen, short_deadline),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_EQ(calls, 0);

  // Callers on four threads at once, each with its own payload.
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) {
        const std::string request = absl::StrCat(t, "-", i, "-", std::string(i * 97, 'p'));
        int n = 0;
        std::string got;
        if (!call("test.Test/Echo", request, &n, &got).ok() || n != 1 || got != request) {
          wrong.fetch_add(1);
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(elsewhere.load(), 0);

  EXPECT_THAT(channel_->CallMethodView("test.Test/Echo", "boom",
                                       [](std::string_view) { throw std::runtime_error("boom"); }),
              StatusIs(absl::StatusCode::kInternal, ::testing::HasSubstr("threw")));
  EXPECT_THAT(channel_->CallMethod("test.Test/Echo", "after"), IsOkAndHolds("after"));
}

// FailCallAsync (a stub whose request cannot be serialized) ends the call
// with its status through the response thread, never inside the function,
// once; an OK status is not passed off as success.
TEST_P(HotPathTest, FailCallAsyncEndsTheCallOnTheResponseThreadOnce) {
  for (absl::Status status : {absl::InvalidArgumentError("too large"), absl::OkStatus()}) {
    ipcrpc::internal::Notification done;
    std::atomic<int> runs{0};
    std::atomic<bool> here{false};
    absl::Status got;
    const std::thread::id caller = std::this_thread::get_id();
    channel_->FailCallAsync(status, [&](absl::StatusOr<std::string> result) {
      runs.fetch_add(1);
      here = std::this_thread::get_id() == caller;
      // Moved out, not shared: `result` is destroyed on this thread after
      // Notify, and the last reference dropped there (inside libabsl, which
      // ThreadSanitizer does not see) would free what the test reads.
      got = std::move(result).status();
      done.Notify();
    });
    ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(30)));
    EXPECT_EQ(runs.load(), 1);
    EXPECT_FALSE(here.load());
    if (status.ok()) {
      EXPECT_THAT(got, StatusIs(absl::StatusCode::kInternal));
    } else {
      EXPECT_EQ(got, status);
    }
  }
  // The channel goes on as before.
  EXPECT_THAT(channel_->CallMethod("test.Test/Echo", "after"), IsOkAndHolds("after"));
}

// The caller sits in its own read (poll or doorbell) when its call is
// cancelled from another thread: it must wake and return at once.
TEST_P(HotPathTest, CancellingACallWakesItsCallerWhileItReads) {
  auto parent = std::make_shared<internal::ServerCallState>(
      1, internal::kNoDeadline, 0, "parent.Parent/Call", internal::Metadata{}, getpid(), getuid());
  CallOptions options;
  options.parent_call = parent;
  absl::StatusOr<std::string> result;
  const int64_t started_ns = internal::MonotonicNowNs();
  std::thread caller(
      [&] { result = channel_->CallMethod("test.Test/Sleep", "20000", options); });
  // Wait (bounded) until the call runs on the server, then cancel it.
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (server_->stats().calls_in_flight < 1 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  ASSERT_EQ(server_->stats().calls_in_flight, 1);
  parent->Cancel();
  caller.join();
  EXPECT_THAT(result, StatusIs(absl::StatusCode::kCancelled));
  EXPECT_LT(internal::MonotonicNowNs() - started_ns, 10'000'000'000);  // not the 20 s sleep
}

// Nobody reads an idle connection: the next call sees that its server left
// (its EOF or GOAWAY) before sending, and goes to the new server.
TEST_P(HotPathTest, AServerThatLeftWhileNobodyReadIsReplacedByTheNextCall) {
  for (int round = 0; round < 3; ++round) {
    ASSERT_THAT(channel_->CallMethod("test.Test/Echo", "before"), IsOkAndHolds("before"));
    server_->Shutdown(absl::Seconds(5));
    server_ = std::make_unique<Server>();  // the same endpoint
    ASSERT_THAT(server_->RegisterService(&service_), IsOk());
    ASSERT_THAT(server_->Listen(endpoint_), IsOk());
    ASSERT_THAT(server_->Start(), IsOk());
    EXPECT_THAT(channel_->CallMethod("test.Test/Echo", "after"), IsOkAndHolds("after"));
  }
  EXPECT_EQ(channel_->stats().connects, 4u);
}

// A server that is leaving while the client is idle: another client's call
// keeps it draining, its GOAWAY waits unread, and a successor has taken the
// endpoint over. The next call reaches the successor: either the client sees
// the GOAWAY before sending (mq, shm), or the old server refuses the call
// without starting it (kFlagRefused) and the client sends it again (streams,
// which send without looking first).
TEST_P(HotPathTest, ACallToALeavingServerGoesToItsSuccessor) {
  ASSERT_THAT(channel_->CallMethod("test.Test/Echo", "before"), IsOkAndHolds("before"));
  auto other = Channel::Connect(endpoint_);
  ASSERT_THAT(other, IsOk());
  Countdown sleeper_done(1);
  Call sleeper = (*other)->CallMethodAsync("test.Test/Sleep", "60000", {},
                                           [&](absl::StatusOr<std::string>) {
                                             sleeper_done.Decrement();
                                           });
  ASSERT_THAT((*other)->CallMethod("test.Test/WaitForActive", "1"), IsOk());
  std::unique_ptr<Server> leaving = std::move(server_);
  // The CANCEL below must reach the draining server (mq: through the queue
  // its closed listener still reads); else the grace period ends the Sleep.
  std::thread shutdown([&] { leaving->Shutdown(absl::Seconds(30)); });
  // The endpoint is free once the old server has closed its listener
  // (Shutdown's first step); until then Listen fails.
  const int64_t give_up = internal::MonotonicNowNs() + 10'000'000'000;
  absl::Status listening = absl::UnknownError("not tried");
  while (!listening.ok() && internal::MonotonicNowNs() < give_up) {
    server_ = std::make_unique<Server>();
    ASSERT_THAT(server_->RegisterService(&service_), IsOk());
    listening = server_->Listen(endpoint_);
    if (!listening.ok()) std::this_thread::yield();
  }
  ASSERT_THAT(listening, IsOk());
  ASSERT_THAT(server_->Start(), IsOk());
  auto after = channel_->CallMethod("test.Test/Echo", "after");
  EXPECT_THAT(after, IsOkAndHolds("after"));
  EXPECT_EQ(channel_->stats().connects, 2u);
  sleeper.Cancel();
  sleeper_done.Wait();
  shutdown.join();
  other->reset();
}

// Short handlers run on the server's loop, and their responses are sent
// from it. A client whose callbacks send the next call at once can block in
// that send (the server's input is full) while its own input is full of
// responses nobody reads: the loop must never wait for it (it hands the
// response to a handler thread instead), or both wait forever. (mq: reply
// queues hold 4 messages, so this comes at once.)
TEST_P(HotPathTest, CallbacksThatCallAgainNeverDeadlockWithTheServersLoop) {
  for (int i = 0; i < 20; ++i) ASSERT_THAT(channel_->CallMethod("test.Test/Echo", "x"), IsOk());
  constexpr int kChains = 64;
  constexpr int kCallsPerChain = 100;
  Countdown done(kChains);
  std::atomic<int> failures{0};
  std::function<void(int)> next = [&](int left) {
    channel_->CallMethodAsync("test.Test/Echo", std::string(64, 'x'), {},
                              [&, left](absl::StatusOr<std::string> reply) {
                                if (!reply.ok()) failures.fetch_add(1);
                                if (left > 1 && reply.ok()) {
                                  next(left - 1);
                                } else {
                                  done.Decrement();
                                }
                              });
  };
  for (int i = 0; i < kChains; ++i) next(kCallsPerChain);
  done.Wait();  // a deadlock hangs here (ctest's timeout ends it)
  EXPECT_EQ(failures.load(), 0);
}

INSTANTIATE_TEST_SUITE_P(Transports, HotPathTest, ::testing::Values("unix", "fifo", "mq", "shm"),
                         [](const ::testing::TestParamInfo<std::string>& param) {
                           return param.param;
                         });

}  // namespace
}  // namespace ipcrpc::testing
