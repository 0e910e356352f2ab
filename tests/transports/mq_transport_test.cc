// The mq: transport's own rules: many clients, priorities, stale and live
// queues, the kernel's limits, hostile messages.
#include <dirent.h>
#include <fcntl.h>
#include <mqueue.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "asio/io_context.hpp"
#include "absl/synchronization/barrier.h"
#include "absl/synchronization/blocking_counter.h"
#include "base/syscall.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ipcrpc/ipcrpc.h"
#include "rpc/server_call_state.h"
#include "tests/conformance/test_service.h"
#include "tests/util/process.h"
#include "tests/transports/other_uid_check.h"
#include "tests/util/status_matchers.h"
#include "transports/mq/mq_queue.h"
#include "transports/mq/mq_wire.h"
#include "transports/transport.h"

namespace ipcrpc::testing {
namespace {

using internal::MqHeader;
using internal::MqKind;
using ::testing::HasSubstr;


// A CONNECT from this process (its own pid) naming `reply_name`, as the
// wire has it (docs/PROTOCOL.md), for tests that play the client by hand.
std::string ConnectMessage(const std::string& reply_name) {
  std::string connect(internal::kMqHeaderSize, '\0');
  MqHeader header;
  header.kind = MqKind::kConnect;
  internal::EncodeMqHeader(header, connect.data());
  char payload[12] = {'I', 'M', 'Q', 'C', 1, 0, 0, 0};
  const uint32_t pid = static_cast<uint32_t>(::getpid());
  std::memcpy(payload + 8, &pid, 4);  // little-endian host
  connect.append(payload, sizeof(payload));
  connect += reply_name;
  return connect;
}

class MqTransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    name_ = UniqueName("ipcrpc-mq-test");
    endpoint_ = "mq:" + name_;
  }
  void TearDown() override {
    server_.reset();
    mq_unlink(("/" + name_).c_str());
  }
  void StartServer(ServerOptions options = {}) {
    options.handler_threads = 4;
    server_ = std::make_unique<Server>(options);
    ASSERT_THAT(server_->RegisterService(&service_), IsOk());
    ASSERT_THAT(server_->Listen(endpoint_), IsOk());
    ASSERT_THAT(server_->Start(), IsOk());
  }
  void ExpectServed() {
    auto channel = Channel::Connect(endpoint_);
    ASSERT_THAT(channel, IsOk());
    EXPECT_THAT((*channel)->CallMethod("test.Test/Echo", "still serving"), IsOk());
  }
  // Sends raw bytes into the server's queue, as a hostile peer would.
  void SendRaw(const std::string& message) {
    internal::UniqueFd queue(static_cast<int>(mq_open(("/" + name_).c_str(), O_WRONLY | O_CLOEXEC)));
    ASSERT_TRUE(queue.valid());
    ASSERT_EQ(mq_send(queue.get(), message.data(), message.size(), 0), 0);
  }

  std::string name_;
  std::string endpoint_;
  TestService service_;
  std::unique_ptr<Server> server_;
};

// This process's descriptors of reply queues (named /ipcrpc-<pid>-...):
// each queue's inode, with its attributes.
std::vector<std::pair<ino_t, struct mq_attr>> ReplyQueuesOpenHere() {
  std::vector<std::pair<ino_t, struct mq_attr>> found;
  DIR* fds = opendir("/proc/self/fd");
  if (fds == nullptr) return found;
  const std::string prefix = absl::StrCat("/ipcrpc-", getpid(), "-");
  while (struct dirent* entry = readdir(fds)) {
    if (entry->d_name[0] == '.') continue;
    char target[512];
    const std::string link = absl::StrCat("/proc/self/fd/", entry->d_name);
    const ssize_t n = readlink(link.c_str(), target, sizeof(target) - 1);
    if (n <= 0 || std::string_view(target, n).substr(0, prefix.size()) != prefix) continue;
    // Not the descriptor itself: the server's side of an earlier case may
    // close it on its own thread at any moment (and the number be taken
    // again). A descriptor of our own, opened through the link, names the
    // same queue; O_NONBLOCK so that a number reused by a FIFO cannot block.
    internal::UniqueFd own(open(link.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
    if (!own.valid()) continue;
    const std::string own_link = absl::StrCat("/proc/self/fd/", own.get());
    const ssize_t m = readlink(own_link.c_str(), target, sizeof(target) - 1);
    if (m <= 0 || std::string_view(target, m).substr(0, prefix.size()) != prefix) continue;
    struct mq_attr attr;
    struct stat st;
    if (mq_getattr(own.get(), &attr) == 0 && fstat(own.get(), &st) == 0) {
      found.emplace_back(st.st_ino, attr);
    }
  }
  closedir(fds);
  return found;
}

// ChannelOptions choose the client's reply queue, within the kernel's
// limits (at least 1 message of 512 bytes); the server fragments its
// answers to fit whatever the client made, and large answers arrive whole.
TEST_F(MqTransportTest, TheReplyQueueIsWhatTheChannelOptionsAsk) {
  StartServer();
  const internal::MqLimits limits = internal::ReadMqLimits();
  struct Case {
    int messages;
    size_t size;
    long want_messages;
    long want_size;
  };
  const Case cases[] = {
      {4, 1024, 4, 1024},
      {std::min<int>(8, static_cast<int>(limits.max_messages)),
       std::min<size_t>(8192, static_cast<size_t>(limits.message_size)),
       std::min<long>(8, limits.max_messages), std::min<long>(8192, limits.message_size)},
      {1000000, size_t{1} << 40, limits.max_messages, limits.message_size},
      {0, 1, 1, std::min<long>(512, limits.message_size)},
  };
  // What the kernel charges a queue against RLIMIT_MSGQUEUE (about 100
  // bytes a message besides its bytes), and this user's limit: a case that
  // would take more than a quarter of it (sysctls raised on this machine;
  // other tests' queues at the same time) is not asked for.
  struct rlimit limit;
  ASSERT_EQ(getrlimit(RLIMIT_MSGQUEUE, &limit), 0);
  const std::string large(100 * 1024 + 7, 'q');
  for (const Case& c : cases) {
    SCOPED_TRACE(absl::StrCat(c.messages, " x ", c.size));
    if (limit.rlim_cur != RLIM_INFINITY &&
        static_cast<rlim_t>(c.want_messages * (c.want_size + 128)) > limit.rlim_cur / 4) {
      std::printf("not asked: a queue of %ld x %ld is over a quarter of RLIMIT_MSGQUEUE\n",
                  c.want_messages, c.want_size);
      continue;
    }
    ChannelOptions options;
    options.mq_reply_queue_messages = c.messages;
    options.mq_reply_message_size = c.size;
    // Queues of earlier cases may still be open on the server's side (it
    // lets go when it sees their connection close): only new ones count.
    std::set<ino_t> before;
    for (const auto& [inode, attr] : ReplyQueuesOpenHere()) before.insert(inode);
    auto channel = Channel::Connect(endpoint_, options);
    ASSERT_THAT(channel, IsOk());
    int seen = 0;
    for (const auto& [inode, attr] : ReplyQueuesOpenHere()) {
      if (before.count(inode) != 0) continue;
      ++seen;
      EXPECT_EQ(attr.mq_maxmsg, c.want_messages);
      EXPECT_EQ(attr.mq_msgsize, c.want_size);
    }
    // The client's three descriptors (its reads, its caller's blocking
    // wait, its wake-ups) and the server's: all in this process.
    EXPECT_EQ(seen, 4);
    EXPECT_THAT((*channel)->CallMethod("test.Test/Echo", large), IsOkAndHolds(large));
  }
}

// /proc/self/task/TID: the system call the thread is in (-1: running or
// unknown).
long SyscallOf(pid_t tid) {
  std::ifstream file(absl::StrCat("/proc/self/task/", tid, "/syscall"));
  long number = -1;
  if (!(file >> number)) return -1;
  return number;
}

// A caller waits for its answer in mq_timedreceive, whose timeout is on the
// realtime clock: when that clock is set (here to what it reads: the time
// does not move, though every timer that watches for sets on the machine
// fires), the caller is woken to take its timeout again from its monotonic
// deadline, instead of sleeping on past a clock set back. Needs
// CAP_SYS_TIME (skipped without).
TEST_F(MqTransportTest, ACallerWaitingForItsAnswerWakesWhenTheClockIsSet) {
  StartServer();
  auto channel = Channel::Connect(endpoint_);
  ASSERT_THAT(channel, IsOk());
  ASSERT_THAT((*channel)->CallMethod("test.Test/Echo", "warm"), IsOk());
  auto parent = std::make_shared<internal::ServerCallState>(
      1, internal::kNoDeadline, 0, "parent.Parent/Call", internal::Metadata{}, getpid(), getuid());
  CallOptions options;
  options.parent_call = parent;  // to end the call when done
  options.timeout = absl::Seconds(60);
  std::atomic<pid_t> tid{0};
  absl::StatusOr<std::string> result;
  std::thread caller([&] {
    tid = static_cast<pid_t>(::syscall(SYS_gettid));
    result = (*channel)->CallMethod("test.Test/Sleep", "30000", options);
  });
  // Until the caller is asleep in mq_timedreceive, its call running.
  auto asleep = [&] {
    const absl::Time give_up = absl::Now() + absl::Seconds(10);
    while (absl::Now() < give_up) {
      if (tid != 0 && server_->stats().calls_in_flight >= 1 &&
          SyscallOf(tid) == SYS_mq_timedreceive) {
        return true;
      }
      absl::SleepFor(absl::Milliseconds(1));
    }
    return false;
  };
  // However the test ends, the call ends and the caller is joined.
  absl::Cleanup end_call = [&] {
    parent->Cancel();
    caller.join();
  };
  ASSERT_TRUE(asleep()) << "the caller did not wait in mq_timedreceive";
  const int64_t sleeps = ThreadVoluntarySwitches(tid);
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  if (clock_settime(CLOCK_REALTIME, &now) != 0) {
    GTEST_SKIP() << "cannot set the realtime clock: " << std::strerror(errno);
  }
  // Woken: it sleeps once more, within a bound far below the Sleep's 30 s
  // and the deadline's 60 s (nothing else comes to its queue meanwhile).
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (ThreadVoluntarySwitches(tid) <= sleeps && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  EXPECT_GT(ThreadVoluntarySwitches(tid), sleeps) << "the caller was not woken";
  std::move(end_call).Invoke();
  EXPECT_THAT(result, StatusIs(absl::StatusCode::kCancelled));
}

TEST_F(MqTransportTest, ThirtyTwoClientsAtOnce) {
  // Within the default RLIMIT_MSGQUEUE (800 KiB per user): the reply queues
  // are small.
  StartServer();
  constexpr int kClients = 32;
  absl::Barrier* start = new absl::Barrier(kClients);
  std::atomic<int> served{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      if (start->Block()) delete start;
      auto channel = Channel::Connect(endpoint_);
      if (!channel.ok()) {
        ADD_FAILURE() << "client " << i << ": " << channel.status();
        return;
      }
      for (int call = 0; call < 20; ++call) {
        const std::string request = absl::StrCat("client ", i, " call ", call);
        auto response = (*channel)->CallMethod("test.Test/Echo", request);
        if (!response.ok() || *response != request) return;
      }
      served++;
    });
  }
  for (auto& client : clients) client.join();
  EXPECT_EQ(served.load(), kClients);
}

TEST_F(MqTransportTest, HighPriorityCallOvertakesQueuedOnes) {
  // A server process with one handler thread, stopped while the calls queue
  // up in /NAME; it then takes them in priority order.
  int ready[2];
  ASSERT_EQ(pipe2(ready, O_CLOEXEC), 0);
  internal::UniqueFd ready_read(ready[0]);
  internal::UniqueFd ready_write(ready[1]);
  auto server = Spawn({IPCRPC_CONFORMANCE_SERVER, "--endpoint=" + endpoint_,
                       "--handler_threads=1", absl::StrCat("--ready_fd=", ready[1])},
                      {ready[1]});
  ASSERT_THAT(server, IsOk());
  ready_write.Reset();
  ASSERT_THAT(ReadLine(ready_read.get(), absl::Seconds(20)), IsOk());
  auto channel = Channel::Connect(endpoint_);
  ASSERT_THAT(channel, IsOk());
  ASSERT_THAT((*channel)->CallMethod("test.Test/Echo", "warm"), IsOk());

  kill(*server, SIGSTOP);
  int stopped = 0;
  ASSERT_EQ(waitpid(*server, &stopped, WUNTRACED), *server);  // stopped for sure
  ASSERT_TRUE(WIFSTOPPED(stopped));
  absl::BlockingCounter done(6);
  for (int i = 0; i < 5; ++i) {
    (*channel)->CallMethodAsync("test.Test/Record", absl::StrCat("low", i), {},
                                [&](absl::StatusOr<std::string>) { done.DecrementCount(); });
  }
  CallOptions urgent;
  urgent.priority = 31;
  (*channel)->CallMethodAsync("test.Test/Record", "high", urgent,
                              [&](absl::StatusOr<std::string>) { done.DecrementCount(); });
  kill(*server, SIGCONT);
  done.Wait();
  auto log = (*channel)->CallMethod("test.Test/Log", "");
  ASSERT_THAT(log, IsOk());
  EXPECT_EQ(*log, "high,low0,low1,low2,low3,low4");
  channel->reset();
  kill(*server, SIGTERM);
  auto status = WaitForExit(*server, absl::Seconds(20));
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0);
}

TEST_F(MqTransportTest, StaleQueueIsReclaimedLiveOneIsNot) {
  // A server killed with SIGKILL leaves /NAME behind, but not its lock.
  int ready[2];
  ASSERT_EQ(pipe2(ready, O_CLOEXEC), 0);
  internal::UniqueFd ready_read(ready[0]);
  internal::UniqueFd ready_write(ready[1]);
  auto server = Spawn({IPCRPC_CONFORMANCE_SERVER, "--endpoint=" + endpoint_,
                       absl::StrCat("--ready_fd=", ready[1])},
                      {ready[1]});
  ASSERT_THAT(server, IsOk());
  ready_write.Reset();
  ASSERT_THAT(ReadLine(ready_read.get(), absl::Seconds(20)), IsOk());
  Server second;
  EXPECT_THAT(second.Listen(endpoint_), StatusIs(absl::StatusCode::kAlreadyExists));
  kill(*server, SIGKILL);
  ASSERT_TRUE(WaitForExit(*server, absl::Seconds(20)).has_value());
  internal::UniqueFd left(static_cast<int>(mq_open(("/" + name_).c_str(), O_RDONLY | O_CLOEXEC)));
  EXPECT_TRUE(left.valid()) << "expected the killed server's queue to be left";
  left.Reset();
  StartServer();
  ExpectServed();
  server_->Shutdown(absl::ZeroDuration());
  left.Reset(static_cast<int>(mq_open(("/" + name_).c_str(), O_RDONLY | O_CLOEXEC)));
  EXPECT_FALSE(left.valid()) << "Shutdown left the queue";
}

TEST_F(MqTransportTest, QueueIsCreated0600) {
  StartServer();
  internal::UniqueFd queue(static_cast<int>(mq_open(("/" + name_).c_str(), O_RDONLY | O_CLOEXEC)));
  ASSERT_TRUE(queue.valid());
  struct stat st;
  ASSERT_EQ(fstat(queue.get(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(MqTransportTest, NamesAreValidated) {
  Server server;
  EXPECT_THAT(server.Listen("mq:"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(server.Listen("mq:a/b"), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'/'")));
  EXPECT_THAT(server.Listen("mq:.."), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(server.Listen("mq:" + std::string(300, 'q')),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("200")));
  EXPECT_THAT(Channel::Connect(endpoint_),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("no server")));
}

TEST_F(MqTransportTest, TheQueueLimitIsNamedWhenHit) {
  struct rlimit saved;
  ASSERT_EQ(getrlimit(RLIMIT_MSGQUEUE, &saved), 0);
  struct rlimit tiny = {1024, saved.rlim_max};
  ASSERT_EQ(setrlimit(RLIMIT_MSGQUEUE, &tiny), 0);
  Server server;
  absl::Status status = server.Listen(endpoint_);
  setrlimit(RLIMIT_MSGQUEUE, &saved);
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("RLIMIT_MSGQUEUE")));
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("ulimit -q")));
}

TEST_F(MqTransportTest, HostileMessagesAreDroppedAndOnlyTheirConnectionSuffers) {
  StartServer();
  auto bystander = Channel::Connect(endpoint_);
  ASSERT_THAT(bystander, IsOk());
  // Not even a header; an unknown kind; a CONNECT that is not one; data for a
  // connection that does not exist.
  SendRaw("short");
  SendRaw(std::string(internal::kMqHeaderSize, '\x09'));
  std::string connect(internal::kMqHeaderSize, '\0');
  MqHeader header;
  header.kind = MqKind::kConnect;
  internal::EncodeMqHeader(header, connect.data());
  SendRaw(connect + "garbage");
  std::string data(internal::kMqHeaderSize, '\0');
  header.kind = MqKind::kData;
  header.connection = 12345;
  header.total_length = 4;
  internal::EncodeMqHeader(header, data.data());
  SendRaw(data + "abcd");
  EXPECT_THAT((*bystander)->CallMethod("test.Test/Echo", "unharmed"), IsOk());
  ExpectServed();
}

// A CONNECT that reaches a server's queue after its listener closed (it was
// sent before the name went) is answered CLOSE at once, so its client does
// not wait out the handshake; one sent before the Close is accepted.
TEST_F(MqTransportTest, AConnectAfterTheListenerClosedIsRefusedAtOnce) {
  for (const bool close_first : {false, true}) {
    SCOPED_TRACE(close_first ? "CONNECT read after Close" : "CONNECT read before Close");
    auto listener = internal::CreateListener(endpoint_, internal::TransportOptions());
    ASSERT_THAT(listener, IsOk());
    asio::io_context io;
    std::mutex accepted_mu;  // the loop thread adds, this one closes
    std::vector<std::shared_ptr<internal::Connection>> accepted;
    ASSERT_THAT((*listener)->Start(io, [&](std::shared_ptr<internal::Connection> connection) {
      std::lock_guard<std::mutex> lock(accepted_mu);
      accepted.push_back(std::move(connection));
    }), IsOk());
    // The loop does not run yet: the CONNECT waits in the queue.
    const std::string reply_name = absl::StrCat("/", name_, "-reply");
    struct mq_attr attr = {};
    attr.mq_maxmsg = 4;
    attr.mq_msgsize = 1024;
    internal::UniqueFd reply(static_cast<int>(
        mq_open(reply_name.c_str(), O_CREAT | O_EXCL | O_RDONLY | O_CLOEXEC, 0600, &attr)));
    ASSERT_TRUE(reply.valid()) << std::strerror(errno);
    SendRaw(ConnectMessage(reply_name));
    if (close_first) (*listener)->Close();
    std::thread loop([&] { io.run_for(std::chrono::seconds(10)); });
    std::vector<char> answer(1024);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 5;
    ssize_t n = mq_timedreceive(reply.get(), answer.data(), answer.size(), nullptr, &until);
    mq_unlink(reply_name.c_str());
    ASSERT_GT(n, 0) << "no answer within 5 s: " << std::strerror(errno);
    auto got = internal::DecodeMqHeader(std::string_view(answer.data(), static_cast<size_t>(n)));
    ASSERT_THAT(got, IsOk());
    EXPECT_EQ(got->kind, close_first ? MqKind::kClose : MqKind::kAccept);
    {
      std::lock_guard<std::mutex> lock(accepted_mu);
      for (auto& connection : accepted) connection->Close();
    }
    listener->reset();  // stops reading the queue
    io.stop();
    loop.join();
  }
}

// A reply queue whose messages cannot hold the ACCEPT (or hold so little
// that a response would be thousands of fragments) is refused with a CLOSE,
// which fits: the client learns at once instead of waiting out its connect
// timeout. Before, a queue of 25-27 bytes was accepted and then sent
// nothing (the ACCEPT's mq_send failed), and one of 64 was served.
TEST_F(MqTransportTest, AReplyQueueOfTooSmallMessagesIsToldCloseAtOnce) {
  StartServer();
  for (const long size : {static_cast<long>(internal::kMqHeaderSize) + 2, 64L,
                          internal::kMqMinReplyMessageSize - 1}) {
    SCOPED_TRACE(absl::StrCat("messages of ", size, " bytes"));
    const std::string reply_name = absl::StrCat("/", name_, "-small-", size);
    struct mq_attr attr = {};
    attr.mq_maxmsg = 4;
    attr.mq_msgsize = size;
    internal::UniqueFd reply(static_cast<int>(
        mq_open(reply_name.c_str(), O_CREAT | O_EXCL | O_RDONLY | O_CLOEXEC, 0600, &attr)));
    ASSERT_TRUE(reply.valid()) << std::strerror(errno);
    SendRaw(ConnectMessage(reply_name));
    std::vector<char> answer(static_cast<size_t>(size));
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 20;  // far beyond "at once"; the old code never answered
    const ssize_t n = mq_timedreceive(reply.get(), answer.data(), answer.size(), nullptr, &until);
    const int error = errno;
    mq_unlink(reply_name.c_str());
    ASSERT_GT(n, 0) << "no answer within 20 s: " << std::strerror(error);
    auto got = internal::DecodeMqHeader(std::string_view(answer.data(), static_cast<size_t>(n)));
    ASSERT_THAT(got, IsOk());
    EXPECT_EQ(got->kind, MqKind::kClose);
  }
  ExpectServed();
}

// mq: has no SO_PEERCRED: a CONNECT says which pid the client is, and the
// server watches that pid for the client's death. A client of another uid
// (65534, allowed) that claims pid 1 (init, uid 0) would have tied its
// connection to init for good (a dead client's calls in flight for ever).
// The claimed pid must run as the owner of the client's reply queue, or the
// CONNECT is refused (CLOSE); the client's own pid is accepted.
TEST_F(MqTransportTest, AClaimedPidMustRunAsTheReplyQueuesOwner) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to run a client as another uid";
  constexpr uid_t kNobody = 65534;
  ServerOptions options;
  options.allowed_uids = {kNobody};
  options.mode = 0666;  // the other uid writes to the server's queue
  StartServer(options);
  for (const bool claim_init : {true, false}) {
    SCOPED_TRACE(claim_init ? "claims pid 1" : "claims its own pid");
    const std::string reply_name = absl::StrCat("/", name_, "-reply-", claim_init);
    const std::string server_name = "/" + name_;
    const pid_t child = fork();
    if (child == 0) {
      // The child: raw system calls only, then _exit with what it got:
      // 0 ACCEPT, 1 CLOSE, 2 anything else.
      if (setgid(kNobody) != 0 || setuid(kNobody) != 0) _exit(3);
      struct mq_attr attr = {};
      attr.mq_maxmsg = 4;
      attr.mq_msgsize = 1024;
      const int reply = static_cast<int>(
          mq_open(reply_name.c_str(), O_CREAT | O_EXCL | O_RDONLY, 0600, &attr));
      const int server = static_cast<int>(mq_open(server_name.c_str(), O_WRONLY));
      if (reply < 0 || server < 0) _exit(4);
      char connect[internal::kMqHeaderSize + 12 + 64] = {};
      connect[0] = static_cast<char>(MqKind::kConnect);
      std::memcpy(connect + internal::kMqHeaderSize, "IMQC\x01\0\0\0", 8);
      const uint32_t pid = claim_init ? 1u : static_cast<uint32_t>(getpid());
      std::memcpy(connect + internal::kMqHeaderSize + 8, &pid, 4);  // little-endian host
      std::memcpy(connect + internal::kMqHeaderSize + 12, reply_name.data(), reply_name.size());
      const size_t size = internal::kMqHeaderSize + 12 + reply_name.size();
      if (mq_send(server, connect, size, 31) != 0) _exit(5);
      char answer[1024];
      struct timespec until;
      clock_gettime(CLOCK_REALTIME, &until);
      until.tv_sec += 10;
      const ssize_t n = mq_timedreceive(reply, answer, sizeof(answer), nullptr, &until);
      mq_unlink(reply_name.c_str());
      if (n < static_cast<ssize_t>(internal::kMqHeaderSize)) _exit(2);
      if (answer[0] == static_cast<char>(MqKind::kAccept)) _exit(0);
      if (answer[0] == static_cast<char>(MqKind::kClose)) _exit(1);
      _exit(2);
    }
    ASSERT_GT(child, 0);
    std::optional<int> status = WaitForExit(child, absl::Seconds(30));
    mq_unlink(reply_name.c_str());
    ASSERT_TRUE(status.has_value() && WIFEXITED(*status)) << "the child did not finish";
    if (WEXITSTATUS(*status) >= 3) GTEST_SKIP() << "cannot act as uid 65534 here";
    EXPECT_EQ(WEXITSTATUS(*status), claim_init ? 1 : 0)
        << (claim_init ? "a CONNECT claiming pid 1 was accepted" : "an honest CONNECT was refused");
  }
  ExpectServed();
}

TEST(MqReassemblerTest, RulesForFragments) {
  internal::MqReassembler reassembler(100, 2);
  MqHeader header;
  header.sequence = 1;
  header.total_length = 6;
  header.last = false;
  ASSERT_THAT(reassembler.Add(header, "abc"), IsOk());
  // Another message interleaves (a different priority).
  MqHeader other;
  other.sequence = 2;
  other.total_length = 2;
  auto whole = reassembler.Add(other, "xy");
  ASSERT_THAT(whole, IsOk());
  EXPECT_EQ(whole->value_or(""), "xy");
  header.offset = 3;
  header.last = true;
  auto done = reassembler.Add(header, "def");
  ASSERT_THAT(done, IsOk());
  EXPECT_EQ(done->value_or(""), "abcdef");

  // Out of order, over the limit, a wrong 'last', too many partial messages.
  MqHeader gap;
  gap.sequence = 3;
  gap.total_length = 10;
  gap.offset = 5;
  gap.last = false;
  EXPECT_THAT(reassembler.Add(gap, "zz"), StatusIs(absl::StatusCode::kDataLoss, HasSubstr("order")));
  MqHeader huge;
  huge.sequence = 4;
  huge.total_length = 101;
  huge.last = false;
  EXPECT_THAT(reassembler.Add(huge, "z"), StatusIs(absl::StatusCode::kResourceExhausted));
  MqHeader liar;
  liar.sequence = 5;
  liar.total_length = 10;
  liar.last = true;
  EXPECT_THAT(reassembler.Add(liar, "z"), StatusIs(absl::StatusCode::kDataLoss));
  for (uint32_t s = 10; s < 12; ++s) {
    MqHeader part;
    part.sequence = s;
    part.total_length = 10;
    part.last = false;
    ASSERT_THAT(reassembler.Add(part, "a"), IsOk());
  }
  MqHeader third;
  third.sequence = 12;
  third.total_length = 10;
  third.last = false;
  EXPECT_THAT(reassembler.Add(third, "a"),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("partially")));
}

}  // namespace
}  // namespace ipcrpc::testing

namespace ipcrpc::testing {
namespace {

// mq: with the server queue widened so that another uid can write to it, a
// client of that uid (the owner of its reply queue) is still refused unless
// allowed, and is told so at once.
TEST(MqUidTest, PeersOfAnotherUidAreRefusedUnlessAllowed) {
  // The server queue is widened so that the other uid can write to it; the
  // refusal must come at once (CLOSE), not after the handshake's timeout.
  const std::string skip = CheckOtherUidRefusedUnlessAllowed(
      [] { return "mq:" + UniqueName("ipcrpc-mq-uid"); }, 0666, absl::Seconds(4));
  if (!skip.empty()) GTEST_SKIP() << skip;
}

}  // namespace
}  // namespace ipcrpc::testing
