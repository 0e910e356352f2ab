// Time bounds while connecting: a server that is alive but does not answer
// (here SIGSTOPped, a real process) holds Channel::Connect for
// ChannelOptions::connect_timeout at most, not for a fixed 5 s. (unix:
// needs no answer from the server to connect: the kernel's backlog takes
// the connection.)
#include <fcntl.h>
#include <mqueue.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/functional/function_ref.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ipcrpc/ipcrpc.h"
#include "tests/conformance/conformance_server_process.h"
#include "tests/util/process.h"
#include "tests/util/status_matchers.h"
#include "base/mutex.h"
#include "base/syscall.h"

namespace ipcrpc::testing {
namespace {

// kill(SIGSTOP) returns before every thread of the target has stopped: a
// thread already running on the other CPU may still answer. True once every
// thread of `pid` is stopped (state T in /proc), within `timeout`.
bool WaitStopped(pid_t pid, absl::Duration timeout) {
  const absl::Time give_up = absl::Now() + timeout;
  while (absl::Now() < give_up) {
    bool all = true;
    for (const auto& task :
         std::filesystem::directory_iterator(absl::StrCat("/proc/", pid, "/task"))) {
      std::ifstream stat(task.path() / "stat");
      std::string line;
      std::getline(stat, line);
      const size_t paren = line.rfind(')');
      if (paren == std::string::npos || paren + 2 >= line.size() || line[paren + 2] != 'T') {
        all = false;
        break;
      }
    }
    if (all) return true;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return false;
}

class TimeBoundsTest : public ::testing::TestWithParam<TransportTraits> {
 protected:
  // A channel whose server has died (after one call), and that server's
  // successor on the same name, stopped: the next call must reconnect to a
  // server that does not answer. Only the calls' deadlines bound the
  // connects (connect_timeout 20 s).
  void ConnectThenStickTheSuccessor() {
    auto first = ConformanceServerProcess::Start(GetParam());
    ASSERT_THAT(first, IsOk());
    // Kept until the test ends: its cleanup would remove the name the
    // successor serves on.
    first_ = *std::move(first);
    const std::string name = first_->name();
    ChannelOptions options;
    options.connect_timeout = absl::Seconds(20);
    auto channel = Channel::Connect(GetParam().name + ":" + name, options);
    ASSERT_THAT(channel, IsOk());
    channel_ = *std::move(channel);
    ASSERT_THAT(channel_->CallMethod("test.Test/Echo", "x"), IsOk());
    first_->Kill();
    ASSERT_TRUE(WaitUntilGone(first_->pid(), absl::Seconds(10)));
    auto successor = ConformanceServerProcess::Start(GetParam(), {}, name);
    ASSERT_THAT(successor, IsOk());
    successor_ = *std::move(successor);
    ASSERT_EQ(kill(successor_->pid(), SIGSTOP), 0);
    ASSERT_TRUE(WaitStopped(successor_->pid(), absl::Seconds(10)));
  }

  // A channel (8 MiB messages) that has made one call to its server, which
  // is now stopped: its transport fills and is never read.
  void ConnectThenStopTheServer() {
    auto server = ConformanceServerProcess::Start(GetParam());
    ASSERT_THAT(server, IsOk());
    server_ = *std::move(server);
    ChannelOptions options;
    options.max_message_size = 8 << 20;
    auto channel = Channel::Connect(
        server_->ClientArgs()[0].substr(std::string("--endpoint=").size()), options);
    ASSERT_THAT(channel, IsOk());
    channel_ = *std::move(channel);
    ASSERT_THAT(channel_->CallMethod("test.Test/Echo", "warm"), IsOk());
    ASSERT_EQ(kill(server_->pid(), SIGSTOP), 0);
    ASSERT_TRUE(WaitStopped(server_->pid(), absl::Seconds(10)));
  }

  std::unique_ptr<ConformanceServerProcess> server_;
  std::unique_ptr<ConformanceServerProcess> first_;
  std::unique_ptr<ConformanceServerProcess> successor_;
  std::shared_ptr<Channel> channel_;
};

TEST_P(TimeBoundsTest, ConnectingToAStoppedServerEndsAtConnectTimeout) {
  auto server = ConformanceServerProcess::Start(GetParam());
  ASSERT_THAT(server, IsOk());
  ASSERT_EQ(kill((*server)->pid(), SIGSTOP), 0);
  ASSERT_TRUE(WaitStopped((*server)->pid(), absl::Seconds(10)));
  ChannelOptions options;
  options.connect_timeout = absl::Milliseconds(300);
  const absl::Time start = absl::Now();
  absl::StatusOr<std::shared_ptr<Channel>> channel =
      Channel::Connect((*server)->ClientArgs()[0].substr(std::string("--endpoint=").size()),
                       options);
  const absl::Duration took = absl::Now() - start;
  kill((*server)->pid(), SIGCONT);
  EXPECT_EQ(channel.status().code(), absl::StatusCode::kUnavailable) << channel.status();
  EXPECT_THAT(channel.status().message(), ::testing::HasSubstr("connect_timeout"));
  EXPECT_GE(took, absl::Milliseconds(290)) << "gave up before the timeout";
  // Generous (another process may hold the other CPU), yet far below the
  // fixed 5 s of before.
  EXPECT_LT(took, absl::Seconds(3)) << "Connect took " << took;
}

// A server of `transport`, stopped, is killed once the client's connect
// record (a CONNECT on mq:) has reached it (`queued`, looking at what its
// endpoint holds, shows one more than before: the readiness check's own
// record may still be there); the connect must fail UNAVAILABLE at once,
// not at its 60 s connect_timeout.
void ExpectConnectFailsAtOnceWhenTheServerDiesBeforeAnswering(
    const char* transport, absl::FunctionRef<long(const std::string& address)> queued) {
  auto server = ConformanceServerProcess::Start(TransportTraits{transport, true});
  ASSERT_THAT(server, IsOk());
  const std::string endpoint =
      (*server)->ClientArgs()[0].substr(std::string("--endpoint=").size());
  const std::string address = endpoint.substr(endpoint.find(':') + 1);
  ASSERT_EQ(kill((*server)->pid(), SIGSTOP), 0);
  ASSERT_TRUE(WaitStopped((*server)->pid(), absl::Seconds(10)));
  const long before = queued(address);
  ASSERT_GE(before, 0) << address;
  ChannelOptions options;
  options.connect_timeout = absl::Seconds(60);
  absl::Status connected;
  std::thread client([&] { connected = Channel::Connect(endpoint, options).status(); });
  // The record is at the server (read by nobody: it is stopped).
  bool pending = false;
  for (const absl::Time give_up = absl::Now() + absl::Seconds(20);
       !pending && absl::Now() < give_up;) {
    pending = queued(address) > before;
    if (!pending) absl::SleepFor(absl::Milliseconds(1));
  }
  const absl::Time killed = absl::Now();
  (*server)->Kill();
  client.join();
  const absl::Duration took = absl::Now() - killed;
  ASSERT_TRUE(pending) << "the client's connect record never reached " << address;
  EXPECT_EQ(connected.code(), absl::StatusCode::kUnavailable) << connected;
  EXPECT_THAT(connected.message(), ::testing::HasSubstr("went away"));
  // Generous (another process may hold the other CPU); the timeout is 60 s.
  EXPECT_LT(took, absl::Seconds(10)) << "Connect took " << took << " after the kill";
}

// fifo: a server killed after the client's connect record went in, before
// it answered, fails the connect at once (its FIFO has no reader left),
// not at connect_timeout. (Before: the full timeout, 5 s by default, which
// a call right after a server's kill -9 sometimes met: the FIFO still open
// by the dying server when the client opened it.)
TEST(FifoTimeBoundsTest, AServerKilledBeforeItAnswersFailsTheConnectAtOnce) {
  // The bytes in the server's FIFO, looked at through a descriptor of our
  // own, closed before the kill, so that the server's is its only reader.
  ExpectConnectFailsAtOnceWhenTheServerDiesBeforeAnswering("fifo", [](const std::string& path) {
    internal::UniqueFd look(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
    int bytes = 0;
    return look.valid() && ::ioctl(look.get(), FIONREAD, &bytes) == 0 ? long{bytes} : -1L;
  });
}

// mq: likewise. The client learns the server's pid from its liveness
// token (SO_PEERCRED) before it sends CONNECT, and its wait for ACCEPT
// watches that pid, so a server killed with the CONNECT in its queue fails
// the connect at once. (Before: the full connect_timeout.)
TEST(MqTimeBoundsTest, AServerKilledBeforeItAnswersFailsTheConnectAtOnce) {
  // The messages in the server's queue.
  ExpectConnectFailsAtOnceWhenTheServerDiesBeforeAnswering("mq", [](const std::string& name) {
    const std::string queue = "/" + name;
    const mqd_t look = mq_open(queue.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (look == static_cast<mqd_t>(-1)) return -1L;
    struct mq_attr attr = {};
    const long count = mq_getattr(look, &attr) == 0 ? attr.mq_curmsgs : -1L;
    mq_close(look);
    return count;
  });
}

// The server died; its successor on the same endpoint is stuck (stopped).
// The next call must reconnect: that connect is bounded by the call's own
// deadline (before: the fixed handshake time, 5 s, 100x a 50 ms deadline),
// and another caller on the channel is not held past its deadline by a
// connect that someone else started.
TEST_P(TimeBoundsTest, AReconnectInsideACallEndsAtTheCallsDeadline) {
  ASSERT_NO_FATAL_FAILURE(ConnectThenStickTheSuccessor());

  // A caller without a deadline starts the reconnect and waits in it.
  std::thread patient([&] {
    CallOptions forever;
    forever.timeout = absl::Seconds(15);
    channel_->CallMethod("test.Test/Echo", "patient", forever).IgnoreError();
  });
  for (int i = 0; i < 2; ++i) {
    CallOptions options_50ms;
    options_50ms.timeout = absl::Milliseconds(50);
    const absl::Time start = absl::Now();
    absl::StatusOr<std::string> reply =
        channel_->CallMethod("test.Test/Echo", "hurried", options_50ms);
    const absl::Duration took = absl::Now() - start;
    EXPECT_EQ(reply.status().code(), absl::StatusCode::kDeadlineExceeded) << reply.status();
    // Generous (the other CPU may be busy), yet far below the 5 s of before.
    EXPECT_LT(took, absl::Seconds(1)) << "call " << i << " took " << took;
  }
  kill(successor_->pid(), SIGCONT);
  patient.join();
  // Once the successor runs, the channel works again.
  CallOptions soon;
  soon.timeout = absl::Seconds(10);
  EXPECT_THAT(channel_->CallMethod("test.Test/Echo", "again", soon), IsOk());
}

// An async call's deadline passes while the transport to a stopped server
// is full (another caller is in the middle of a large request, holding the
// connection's send): the call ends DEADLINE_EXCEEDED at its deadline. Its
// CANCEL does not wait for room; the server's own timer ends the call.
// (Before: the response thread waited in that send, and no callback of the
// channel ran until the server did.)
TEST_P(TimeBoundsTest, AnExpiryNeverWaitsForAFullTransport) {
  auto server = ConformanceServerProcess::Start(GetParam());
  ASSERT_THAT(server, IsOk());
  Channel& channel = *(*server)->channel();
  ASSERT_THAT(channel.CallMethod("test.Test/Echo", "warm"), IsOk());
  ASSERT_EQ(kill((*server)->pid(), SIGSTOP), 0);
  ASSERT_TRUE(WaitStopped((*server)->pid(), absl::Seconds(10)));
  ipcrpc::internal::Notification done;
  absl::Status result;
  CallOptions options;
  options.timeout = absl::Milliseconds(300);
  const absl::Time start = absl::Now();
  channel.CallMethodAsync("test.Test/Echo", "hurried", options,
                          [&](absl::StatusOr<std::string> reply) {
                            result = std::move(reply).status();
                            done.Notify();
                          });
  std::thread big([&] {
    CallOptions patient;
    patient.timeout = absl::Seconds(30);
    channel.CallMethod("test.Test/Echo", std::string(16 << 20, 'x'), patient).IgnoreError();
  });
  const bool ended = done.WaitForNotificationWithTimeout(absl::Seconds(5));
  const absl::Duration took = absl::Now() - start;
  kill((*server)->pid(), SIGCONT);
  big.join();
  ASSERT_TRUE(ended) << "the expired call's callback did not run while the server was stopped";
  EXPECT_EQ(result.code(), absl::StatusCode::kDeadlineExceeded) << result;
  EXPECT_LT(took, absl::Seconds(2));
}

// An async call never connects on its caller's thread: the server died and
// its successor is stuck, so the next call must reconnect. CallAsync returns
// at once (before: it connected inside, for up to the call's deadline), the
// callback says DEADLINE_EXCEEDED at the deadline, a Cancel ends a waiting
// call at once, and once the successor runs the channel works again.
// What an async call or stream reported, and when.
struct Outcome {
  ipcrpc::internal::Notification done;
  absl::Status status;
  absl::Time at;
  std::atomic<int> messages{0};

  void Record(absl::Status ended) {
    status = std::move(ended);
    at = absl::Now();
    done.Notify();
  }
};

CallOptions WithTimeout(absl::Duration timeout) {
  CallOptions options;
  options.timeout = timeout;
  return options;
}

// With the server dead and its successor stopped: `start(outcome, timeout)`
// (an async call or stream) returns at once, ends at its deadline or at
// Cancel, and works once the successor runs; `*after` is how that last one
// ended.
void ExpectNeverWaitsToConnect(
    const std::function<Call(Outcome*, absl::Duration)>& start, pid_t successor,
    Outcome* after) {
  Outcome timed, cancelled;
  const absl::Time begin = absl::Now();
  start(&timed, absl::Seconds(2));
  const absl::Duration returned = absl::Now() - begin;
  Call to_cancel = start(&cancelled, absl::Seconds(30));
  // Generous (the other CPU may be busy), yet far below the 2 s it spent
  // connecting before.
  EXPECT_LT(returned, absl::Milliseconds(500)) << "the async start took " << returned;
  const absl::Time cancel_at = absl::Now();
  to_cancel.Cancel();
  ASSERT_TRUE(cancelled.done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(cancelled.status.code(), absl::StatusCode::kCancelled) << cancelled.status;
  EXPECT_LT(cancelled.at - cancel_at, absl::Seconds(1));
  ASSERT_TRUE(timed.done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(timed.status.code(), absl::StatusCode::kDeadlineExceeded) << timed.status;
  EXPECT_GE(timed.at - begin, absl::Seconds(2));
  EXPECT_LT(timed.at - begin, absl::Seconds(3)) << "the deadline's callback came late";
  EXPECT_EQ(timed.messages.load(), 0);

  kill(successor, SIGCONT);
  start(after, absl::Seconds(10));
  ASSERT_TRUE(after->done.WaitForNotificationWithTimeout(absl::Seconds(15)));
  EXPECT_TRUE(after->status.ok()) << after->status;
}

TEST_P(TimeBoundsTest, AnAsyncCallNeverWaitsToConnect) {
  ASSERT_NO_FATAL_FAILURE(ConnectThenStickTheSuccessor());
  Outcome after;
  ExpectNeverWaitsToConnect(
      [&](Outcome* outcome, absl::Duration timeout) {
        return channel_->CallMethodAsync(
            "test.Test/Echo", "async", WithTimeout(timeout),
            [outcome](absl::StatusOr<std::string> reply) { outcome->Record(reply.status()); });
      },
      successor_->pid(), &after);
}

// The same for an async server stream (CallServerStreamAsync): its start
// waits for the connect thread, never on the caller's thread.
TEST_P(TimeBoundsTest, AnAsyncStreamNeverWaitsToConnect) {
  ASSERT_NO_FATAL_FAILURE(ConnectThenStickTheSuccessor());
  Outcome after;
  ExpectNeverWaitsToConnect(
      [&](Outcome* outcome, absl::Duration timeout) {
        return channel_->CallServerStreamAsync(
            "test.Test/Count", "3 8", WithTimeout(timeout),
            [outcome](std::string_view) { outcome->messages.fetch_add(1); },
            [outcome](absl::Status status) { outcome->Record(std::move(status)); });
      },
      successor_->pid(), &after);
  EXPECT_EQ(after.messages.load(), 3);
}

// A caller waiting for its answer (inside its own read: on mq: blocked in
// mq_timedreceive, which the server's death does not end) learns at once
// that the server was killed, and its call ends UNAVAILABLE, not at its
// deadline a minute later.
TEST_P(TimeBoundsTest, ACallerWaitingForItsAnswerLearnsAtOnceThatTheServerDied) {
  auto server = ConformanceServerProcess::Start(GetParam());
  ASSERT_THAT(server, IsOk());
  server_ = *std::move(server);
  auto channel = server_->NewChannel();
  ASSERT_THAT(channel, IsOk());
  channel_ = *std::move(channel);
  ASSERT_THAT(channel_->CallMethod("test.Test/Echo", "warm"), IsOk());
  Outcome sleeper;
  std::thread caller([&] {
    CallOptions options;
    options.timeout = absl::Seconds(60);
    sleeper.Record(channel_->CallMethod("test.Test/Sleep", "60000", options).status());
  });
  // The Sleep runs on the server (so its caller waits in its read).
  auto other = server_->NewChannel();
  ASSERT_THAT(other, IsOk());
  ASSERT_THAT((*other)->CallMethod("test.Test/WaitForActive", "1"), IsOk());
  const absl::Time killed = absl::Now();
  server_->Kill();
  caller.join();
  const absl::Duration took = absl::Now() - killed;
  EXPECT_EQ(sleeper.status.code(), absl::StatusCode::kUnavailable) << sleeper.status;
  // Generous (another process may hold the other CPU); the deadline is 60 s.
  EXPECT_LT(took, absl::Seconds(10)) << "the call took " << took;
}

// A request the server does not take (stopped, with the transport full of
// it): the sync call returns at its deadline; before, it waited in its send
// until the server read again, whatever its deadline. The connection, left
// in the middle of a message, is closed; the channel goes on.
TEST_P(TimeBoundsTest, ARequestTheServerDoesNotTakeEndsAtTheCallsDeadline) {
  ASSERT_NO_FATAL_FAILURE(ConnectThenStopTheServer());
  // Larger than any transport holds (a pipe 64 KiB, a ring 256 KiB, a
  // queue ten messages).
  const std::string big(2 << 20, 'b');
  CallOptions call;
  call.timeout = absl::Milliseconds(300);
  const absl::Time start = absl::Now();
  absl::StatusOr<std::string> reply = channel_->CallMethod("test.Test/Echo", big, call);
  const absl::Duration took = absl::Now() - start;
  kill(server_->pid(), SIGCONT);
  EXPECT_EQ(reply.status().code(), absl::StatusCode::kDeadlineExceeded) << reply.status();
  EXPECT_GE(took, absl::Milliseconds(290)) << "gave up before the deadline";
  // Generous (another process may hold the other CPU).
  EXPECT_LT(took, absl::Seconds(3)) << "the call took " << took;
  // The channel goes on, on a new connection if that one was closed.
  CallOptions later;
  later.timeout = absl::Seconds(20);
  EXPECT_THAT(channel_->CallMethod("test.Test/Echo", "after", later), IsOk());
}

// Two callers on one connection to a stopped server: the first one's send
// waits for room, holding the connection, up to its deadline (3 s); the
// second waits behind it no later than its own (300 ms; before: until the
// first send returned), and the connection is left to the first.
TEST_P(TimeBoundsTest, ASendBehindAWaitingSendEndsAtItsOwnDeadline) {
  ASSERT_NO_FATAL_FAILURE(ConnectThenStopTheServer());
  Outcome first;
  std::atomic<pid_t> first_tid{0};
  std::atomic<int64_t> first_switches{-1};
  std::thread first_caller([&] {
    const pid_t tid = static_cast<pid_t>(::syscall(SYS_gettid));
    first_switches = ThreadVoluntarySwitches(tid);
    first_tid = tid;
    first.Record(channel_
                     ->CallMethod("test.Test/Echo", std::string(2 << 20, 'b'),
                                  WithTimeout(absl::Seconds(3)))
                     .status());
  });
  // Once the first caller has slept, it is waiting for room inside its send
  // (nothing else in a call to a ready connection sleeps). Should the
  // second take the connection first after all, its request fits and it
  // still ends at its deadline: the test cannot fail for that, only test
  // less.
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (absl::Now() < give_up &&
         (first_tid.load() == 0 || ThreadVoluntarySwitches(first_tid.load()) <= first_switches.load())) {
    std::this_thread::yield();
  }
  const absl::Time begin = absl::Now();
  absl::StatusOr<std::string> second =
      channel_->CallMethod("test.Test/Echo", "second", WithTimeout(absl::Milliseconds(300)));
  const absl::Duration took = absl::Now() - begin;
  EXPECT_EQ(second.status().code(), absl::StatusCode::kDeadlineExceeded) << second.status();
  EXPECT_GE(took, absl::Milliseconds(290));
  // Generous (another process may hold the other CPU), yet far below 3 s.
  EXPECT_LT(took, absl::Milliseconds(1500)) << "the second call took " << took;
  first_caller.join();
  EXPECT_EQ(first.status.code(), absl::StatusCode::kDeadlineExceeded) << first.status;
  kill(server_->pid(), SIGCONT);
}

// The same for a stream's later message: a Write the server does not take
// ends at the call's deadline (before: it waited until the server read
// again), and the stream ends DEADLINE_EXCEEDED.
TEST_P(TimeBoundsTest, AStreamMessageTheServerDoesNotTakeEndsAtTheCallsDeadline) {
  auto server = ConformanceServerProcess::Start(GetParam());
  ASSERT_THAT(server, IsOk());
  ChannelOptions options;
  options.max_message_size = 8 << 20;
  auto channel = Channel::Connect(
      (*server)->ClientArgs()[0].substr(std::string("--endpoint=").size()), options);
  ASSERT_THAT(channel, IsOk());
  ASSERT_THAT((*channel)->CallMethod("test.Test/Echo", "warm"), IsOk());
  CallOptions call;
  call.deadline = absl::Now() + absl::Seconds(1);
  GenericClientStream stream = (*channel)->OpenStream("test.Test/Sum", call);
  ASSERT_TRUE(stream.Write("first"));
  ASSERT_EQ(kill((*server)->pid(), SIGSTOP), 0);
  ASSERT_TRUE(WaitStopped((*server)->pid(), absl::Seconds(10)));
  // Larger than any transport holds (see above).
  const bool written = stream.Write(std::string(2 << 20, 'b'));
  const absl::Time returned = absl::Now();
  kill((*server)->pid(), SIGCONT);
  EXPECT_FALSE(written);
  EXPECT_GE(returned, call.deadline - absl::Milliseconds(10)) << "gave up before the deadline";
  // Generous (another process may hold the other CPU).
  EXPECT_LT(returned, call.deadline + absl::Seconds(2))
      << "returned " << (returned - call.deadline) << " after the deadline";
  EXPECT_THAT(stream.Finish(), StatusIs(absl::StatusCode::kDeadlineExceeded));
  // The channel goes on, on a new connection if that one was closed.
  CallOptions later;
  later.timeout = absl::Seconds(20);
  EXPECT_THAT((*channel)->CallMethod("test.Test/Echo", "after", later), IsOk());
}

// Async calls queued while the channel connects start one at a time once it
// has; a start waits for room up to its own call's deadline. A call queued
// behind one whose start waits ends at its own deadline (before: only when
// that start returned, here 3 s instead of 300 ms). If the connect thread
// was quicker and the second call started on the caller's thread, its send
// waits for the first one's turn on the connection, also no later than its
// own deadline (before: until the first send returned). unix: only: a
// stopped server's kernel backlog takes the connection, so the connect
// succeeds and the start is what waits.
class TimeBoundsQueueTest : public TimeBoundsTest {};

TEST_P(TimeBoundsQueueTest, ACallQueuedBehindAWaitingStartEndsAtItsOwnDeadline) {
  ASSERT_NO_FATAL_FAILURE(ConnectThenStickTheSuccessor());
  Outcome big, small;
  const absl::Time begin = absl::Now();
  // Larger than the socket's buffer: its start waits for the stopped server.
  channel_->CallMethodAsync("test.Test/Echo", std::string(2 << 20, 'b'),
                            WithTimeout(absl::Seconds(3)),
                            [&big](absl::StatusOr<std::string> reply) { big.Record(reply.status()); });
  channel_->CallMethodAsync(
      "test.Test/Echo", "small", WithTimeout(absl::Milliseconds(300)),
      [&small](absl::StatusOr<std::string> reply) { small.Record(reply.status()); });
  ASSERT_TRUE(small.done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(small.status.code(), absl::StatusCode::kDeadlineExceeded) << small.status;
  EXPECT_GE(small.at - begin, absl::Milliseconds(290));
  // Generous (the other CPU may be busy), yet far below the 3 s of the
  // start it was queued behind.
  EXPECT_LT(small.at - begin, absl::Milliseconds(1500))
      << "ended " << (small.at - begin) << " after it was made";
  ASSERT_TRUE(big.done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(big.status.code(), absl::StatusCode::kDeadlineExceeded) << big.status;
  kill(successor_->pid(), SIGCONT);
}

INSTANTIATE_TEST_SUITE_P(Unix, TimeBoundsQueueTest,
                         ::testing::Values(TransportTraits{"unix", true}),
                         [](const auto& test_info) { return test_info.param.name; });

INSTANTIATE_TEST_SUITE_P(Transports, TimeBoundsTest,
                         ::testing::Values(TransportTraits{"fifo", true},
                                           TransportTraits{"mq", true},
                                           TransportTraits{"shm", true}),
                         [](const auto& test_info) { return test_info.param.name; });

}  // namespace
}  // namespace ipcrpc::testing
