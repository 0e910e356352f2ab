// Hostile peers against a real server process, on every transport with
// named servers: raw peers (not the library) that flood it with connections,
// start messages they never finish, or cancel calls that do not exist. The
// server stays within its limits (memory, connections), keeps serving
// everyone else, and counts what it refused (read through its own
// ipcrpc.Introspection service). Garbage frames, oversized lengths and
// garbage in shm: rings are in the conformance suite and shm_transport_test.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <sstream>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ipcrpc/introspection.pb.h"
#include "base/mutex.h"
#include "wire/frame.h"
#include "tests/conformance/conformance_server_process.h"
#include "tests/util/process.h"
#include "tests/util/sanitizers.h"
#include "tests/util/status_matchers.h"

namespace ipcrpc::testing {

namespace {

// Resident memory of `pid` in KiB (VmRSS), or -1.
long ResidentKib(pid_t pid) {
  const int64_t bytes = ProcessRssBytes(pid);
  return bytes < 0 ? -1 : static_cast<long>(bytes / 1024);
}

absl::StatusOr<ServerStats> Stats(Channel& channel) {
  absl::StatusOr<std::string> bytes =
      channel.CallMethod("ipcrpc.Introspection/GetStats", GetStatsRequest().SerializeAsString());
  if (!bytes.ok()) return bytes.status();
  ServerStats stats;
  if (!stats.ParseFromString(*bytes)) return absl::DataLossError("GetStats does not parse");
  return stats;
}

class HostileTest : public ::testing::TestWithParam<TransportTraits> {};

TEST_P(HostileTest, ConnectFloodIsCappedAndOthersAreServed) {
  constexpr int kLimit = 16;
  constexpr int kFlood = 64;
  auto server = ConformanceServerProcess::Start(GetParam(),
                                                {absl::StrCat("--max_connections=", kLimit)});
  ASSERT_THAT(server, IsOk());
  // The fixture's channel holds one connection; the flood tries 64 more and
  // holds on to what it gets.
  std::vector<ConformanceServerProcess::RawPeer> peers;
  for (int i = 0; i < kFlood; ++i) {
    absl::StatusOr<ConformanceServerProcess::RawPeer> peer = (*server)->OpenRawPeer();
    if (peer.ok()) peers.push_back(*std::move(peer));
  }
  // The refused ones are closed by the server; the ones it took stay open.
  absl::StatusOr<ServerStats> stats;
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  do {
    stats = Stats(*(*server)->channel());
    ASSERT_THAT(stats, IsOk());
  } while (stats->connections_accepted() + stats->connections_refused() < kFlood + 1 &&
           absl::Now() < give_up);
  EXPECT_LE(stats->connections_size(), kLimit);
  EXPECT_EQ(stats->connections_accepted(), kLimit);
  EXPECT_EQ(stats->connections_refused(), kFlood + 1 - kLimit);
  // The server still answers the connection it had.
  EXPECT_THAT((*server)->channel()->CallMethod("test.Test/Echo", "still here"), IsOk());
  // Once the flood goes, newcomers are served again.
  for (auto& peer : peers) peer.Finish();
  peers.clear();
  absl::StatusOr<std::shared_ptr<Channel>> fresh;
  const absl::Time retry_until = absl::Now() + absl::Seconds(30);
  absl::StatusOr<std::string> echoed = absl::UnavailableError("not tried");
  while (!echoed.ok() && absl::Now() < retry_until) {
    fresh = (*server)->NewChannel();
    if (fresh.ok()) echoed = (*fresh)->CallMethod("test.Test/Echo", "newcomer");
  }
  EXPECT_THAT(echoed, IsOk());
}

TEST_P(HostileTest, EndlessPartialMessagesCostOnlyWhatWasSent) {
  constexpr int kPeers = 32;
  // Each peer announces a 60 MiB message (under the 64 MiB limit) and sends a
  // few KiB of it, then nothing more. A server that made room for what was
  // announced would need 32 × 60 MiB.
  const uint32_t announced = 60u << 20;
  // mq: one fragment; shm: the raw peer's ring is 4 KiB.
  const bool stream = GetParam().name == "unix" || GetParam().name == "fifo";
  const size_t sent = stream ? 64 * 1024 : 2000;
  auto server = ConformanceServerProcess::Start(GetParam());
  ASSERT_THAT(server, IsOk());
  ASSERT_THAT((*server)->channel()->CallMethod("test.Test/Echo", "warm"), IsOk());
  const long before = ResidentKib((*server)->pid());
  ASSERT_GT(before, 0);
  std::vector<ConformanceServerProcess::RawPeer> peers;
  for (int i = 0; i < kPeers; ++i) {
    absl::StatusOr<ConformanceServerProcess::RawPeer> peer = (*server)->OpenRawPeer();
    ASSERT_THAT(peer, IsOk());
    ASSERT_TRUE(peer->SendPartial(announced, sent));
    peers.push_back(*std::move(peer));
  }
  // Calls on an honest connection go through while the partial messages
  // wait; by then the server has read what the peers sent.
  for (int i = 0; i < 20; ++i) {
    ASSERT_THAT((*server)->channel()->CallMethod("test.Test/Echo", absl::StrCat("call ", i)),
                IsOk());
  }
  absl::StatusOr<ServerStats> stats = Stats(*(*server)->channel());
  ASSERT_THAT(stats, IsOk());
  EXPECT_GE(stats->connections_size(), kPeers + 1) << "the partial senders were dropped early";
  const long growth = ResidentKib((*server)->pid()) - before;
  // What was sent is 2 MiB; with buffers, bookkeeping and the sanitizers'
  // shadow memory the growth is a few tens of MiB. A server that made room for
  // what was announced would grow by 1.9 GiB: the bound, 4 MiB a peer, sits
  // far between the two.
  EXPECT_LT(growth, kPeers * 4 * 1024) << "resident memory grew by " << growth << " KiB";
}

TEST_P(HostileTest, CancelsForCallsThatDoNotExistAreIgnored) {
  auto server = ConformanceServerProcess::Start(GetParam());
  ASSERT_THAT(server, IsOk());
  absl::StatusOr<ConformanceServerProcess::RawPeer> peer = (*server)->OpenRawPeer();
  ASSERT_THAT(peer, IsOk());
  for (uint64_t id = 1; id <= 1000; ++id) {
    internal::FrameHeader header;
    header.type = internal::FrameType::kCancel;
    header.request_id = id * 7919;
    std::string frame;
    ASSERT_THAT(internal::EncodeFramePrefix(header, "", {}, 0, 0, &frame), IsOk());
    ASSERT_TRUE(peer->SendMessage(frame)) << "cancel " << id;
  }
  EXPECT_THAT((*server)->channel()->CallMethod("test.Test/Echo", "unharmed"), IsOk());
  // A CANCEL for nothing is not a protocol violation: the peer stays.
  EXPECT_FALSE(peer->WaitClosed(absl::Milliseconds(300)));
  absl::StatusOr<ServerStats> stats = Stats(*(*server)->channel());
  ASSERT_THAT(stats, IsOk());
  EXPECT_EQ(stats->calls_in_flight(), 1);  // GetStats itself
}

// Many slow calls, each with as many empty metadata entries as a call may
// carry: decoded, an entry costs far more than its 8 wire bytes. What the
// calls hold is charged as decoded against ServerOptions::max_bytes_in_flight,
// so past it calls fail at once (RESOURCE_EXHAUSTED naming the limit) and
// the server's memory stays near the limit. (Before: 1000 such calls, 62.6
// MiB on the wire, grew the server by about 500 MiB.)
TEST_P(HostileTest, DecodedMetadataIsChargedAgainstTheServersByteLimit) {
  constexpr size_t kLimit = 4u << 20;
  auto server = ConformanceServerProcess::Start(
      GetParam(), {absl::StrCat("--max_bytes_in_flight=", kLimit)});
  ASSERT_THAT(server, IsOk());
  ASSERT_THAT((*server)->channel()->CallMethod("test.Test/Echo", "warm"), IsOk());
  const long before = ResidentKib((*server)->pid());
  absl::StatusOr<std::shared_ptr<Channel>> channel = (*server)->NewChannel();
  ASSERT_THAT(channel, IsOk());
  CallOptions options;
  options.timeout = absl::Seconds(60);
  for (size_t i = 0; i < internal::kMaxMetadataEntries; ++i) options.metadata.emplace_back("", "");
  // 256 entries: 2 KiB on the wire, 16 KiB as charged: the limit takes
  // about 250 of these calls; 600 are sent.
  constexpr int kCalls = 600;
  internal::Mutex mu;
  int done = 0;
  int exhausted = 0;
  std::string first_refusal;
  std::vector<Call> calls;
  for (int i = 0; i < kCalls; ++i) {
    // 3 s each: long enough to stay in flight while measured. (A refusal
    // that finds the client's transport full goes to a handler thread,
    // which these sleeps hold for 3 s at most: mq's reply queue is 4 deep.)
    calls.push_back((*channel)->CallMethodAsync(
        "test.Test/Sleep", "3000", options, [&](absl::StatusOr<std::string> result) {
          internal::MutexLock lock(&mu);
          ++done;
          if (absl::IsResourceExhausted(result.status())) {
            if (++exhausted == 1) first_refusal = std::string(result.status().message());
          }
        }));
  }
  {
    // The refusals come within seconds (the admitted calls queue for minutes).
    internal::MutexLock lock(&mu);
    auto enough = [&] { return exhausted >= kCalls / 4; };
    EXPECT_TRUE(mu.AwaitWithTimeout(internal::Condition(&enough), absl::Seconds(30)))
        << exhausted << " calls refused";
    EXPECT_THAT(first_refusal, ::testing::HasSubstr("max_bytes_in_flight"));
  }
  // A sanity bound only (the refusals above are what fails without the
  // limit): 4 MiB held, plus buffers, the queue and a sanitizer's shadow.
  const long growth = ResidentKib((*server)->pid()) - before;
  EXPECT_LT(growth, 128 * 1024) << "resident memory grew by " << growth << " KiB";
  for (Call& call : calls) call.Cancel();
  {
    internal::MutexLock lock(&mu);
    auto all_done = [&] { return done == kCalls; };
    EXPECT_TRUE(mu.AwaitWithTimeout(internal::Condition(&all_done), absl::Seconds(30)));
  }
  // Others are served (once the sleeping calls, which hold every handler
  // thread, are cancelled), soon: refusals the server sent before it saw
  // the CANCELs are still read by this channel, which has nothing pending.
  // (Before: left unread, they filled mq:'s reply queue, and the server's
  // threads that sent them waited up to 15 s for their send timeout.)
  const absl::Time echo_start = absl::Now();
  EXPECT_THAT((*server)->channel()->CallMethod("test.Test/Echo", "unharmed"), IsOk());
  const absl::Duration echo_took = absl::Now() - echo_start;
  EXPECT_LT(echo_took, absl::Seconds(6)) << "the next call waited " << echo_took;
  // No callback after this scope (they use its locals): the channel goes
  // first.
  calls.clear();
  channel->reset();
}

// Answers that need no handler (here UNIMPLEMENTED) come from the thread
// that read the request, at once, even while every handler thread is busy.
// (Before, they waited in the handler threads' queue: 5 s and more.)
TEST_P(HostileTest, RejectionsDoNotWaitForBusyHandlerThreads) {
  auto server = ConformanceServerProcess::Start(GetParam(), {"--handler_threads=1"});
  ASSERT_THAT(server, IsOk());
  const std::shared_ptr<Channel>& channel = (*server)->channel();
  CallOptions slow;
  slow.timeout = absl::Seconds(120);
  internal::Notification slept;
  Call sleeper = channel->CallMethodAsync("test.Test/Sleep", "60000", slow,
                                          [&](absl::StatusOr<std::string>) { slept.Notify(); });
  // The handler thread takes the Sleep at once; every rejection after the
  // first round trip finds it busy.
  for (int i = 0; i < 20; ++i) {
    CallOptions options;
    options.timeout = absl::Seconds(4);
    absl::StatusOr<std::string> result = channel->CallMethod("test.Test/NoSuchMethod", "", options);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kUnimplemented)
        << "call " << i << ": " << result.status();
  }
  sleeper.Cancel();
  EXPECT_TRUE(slept.WaitForNotificationWithTimeout(absl::Seconds(30)));
}

int OpenDescriptors(pid_t pid) {
  int n = 0;
  for (const auto& entry : std::filesystem::directory_iterator(absl::StrCat("/proc/", pid, "/fd"))) {
    (void)entry;
    ++n;
  }
  return n;
}

// Peers that connect and never finish their handshake (shm: never sends its
// HELLO) count against ServerOptions::max_connections while they wait, so
// they hold no more descriptors than the limit allows (before, 1,100 of them
// took 1,100 descriptors for 5 s each, whatever the limit).
// (shm: only: the one transport with a handshake after accept.)
TEST(HostileShmTest, HalfOpenHandshakesCountAgainstTheConnectionLimit) {
  constexpr int kLimit = 16;
  auto server = ConformanceServerProcess::Start(TransportTraits{"shm", true},
                                                {absl::StrCat("--max_connections=", kLimit)});
  ASSERT_THAT(server, IsOk());
  ASSERT_THAT((*server)->channel()->CallMethod("test.Test/Echo", "warm"), IsOk());
  const int before = OpenDescriptors((*server)->pid());
  // Sockets connected to the rendezvous that never say HELLO.
  absl::StatusOr<ConformanceServerProcess::RawPeer> probe = (*server)->OpenRawPeer();
  ASSERT_THAT(probe, IsOk());  // (one honest raw peer, to learn the address)
  sockaddr_un addr = {};
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getpeername(probe->shm_socket.get(), reinterpret_cast<sockaddr*>(&addr), &len), 0);
  std::vector<internal::UniqueFd> silent;
  for (int i = 0; i < 4 * kLimit; ++i) {
    internal::UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    ASSERT_EQ(connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), len), 0);
    silent.push_back(std::move(fd));
  }
  // The server answers the ones over the limit by closing them: wait until
  // it has (the refused see EOF), then count what it holds.
  // The last one is over the limit whatever happens: once it is refused,
  // the server has looked at all of them.
  int refused = WaitForEof(silent.back().get(), absl::Seconds(10)) ? 1 : 0;
  for (size_t i = 0; i + 1 < silent.size(); ++i) {
    refused += WaitForEof(silent[i].get(), absl::Milliseconds(10)) ? 1 : 0;
  }
  EXPECT_GE(refused, 4 * kLimit - kLimit) << "half-open connections were not counted";
  const int held = OpenDescriptors((*server)->pid()) - before;
  // The raw peer's connection takes 3 (socket, doorbell, memfd mapping's fd
  // is closed after mmap: 2); the silent ones one each, at most the limit.
  EXPECT_LE(held, kLimit + 4) << "the server holds " << held << " more descriptors";
  silent.clear();
  EXPECT_THAT((*server)->channel()->CallMethod("test.Test/Echo", "unharmed"), IsOk());
}

// A server out of descriptors (RLIMIT_NOFILE reached) cannot accept what
// waits in its backlog. The listening socket's readiness is reported once
// (asio's epoll is edge-triggered), so a server that just waited for it
// again left those connections in the backlog for good once descriptors were
// free, unless yet another client connected. It looks again every 100 ms
// instead; and it does not spin meanwhile.
// (unix: only: raw stream peers can wait in its backlog and then ask. The
// shm: listener backs off the same way.)
// One try; false if it proved nothing (see below).
bool BacklogServedOnceDescriptorsAreFree() {
  auto server = ConformanceServerProcess::Start(TransportTraits{"unix", true});
  EXPECT_THAT(server, IsOk());
  if (!server.ok()) return true;
  EXPECT_THAT((*server)->channel()->CallMethod("test.Test/Echo", "warm"), IsOk());
  const pid_t pid = (*server)->pid();
  // No descriptor to spare: the soft limit at what it has open (the hard
  // limit stays, so that the soft one can go back up without privilege).
  struct rlimit original;
  EXPECT_EQ(prlimit(pid, RLIMIT_NOFILE, nullptr, &original), 0) << std::strerror(errno);
  // (The limit is on descriptor numbers: the lowest free one is the limit
  // at which nothing more can be opened.)
  std::set<int> numbers;
  for (const auto& entry : std::filesystem::directory_iterator(absl::StrCat("/proc/", pid, "/fd"))) {
    numbers.insert(std::stoi(entry.path().filename().string()));
  }
  int lowest_free = 0;
  while (numbers.contains(lowest_free)) ++lowest_free;
  struct rlimit none = original;
  none.rlim_cur = static_cast<rlim_t>(lowest_free);
  EXPECT_EQ(prlimit(pid, RLIMIT_NOFILE, &none, nullptr), 0) << std::strerror(errno);
  // The socket's path (getpeername would say the temporary name it was
  // bound under before it was published).
  const std::string endpoint = (*server)->ClientArgs()[0].substr(std::strlen("--endpoint=unix:"));
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, endpoint.c_str(), sizeof(addr.sun_path) - 1);
  internal::UniqueFd waiting(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  EXPECT_EQ(connect(waiting.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0)
      << std::strerror(errno);  // accepted by the kernel, into the backlog
  // The request goes out now; the server cannot accept the connection yet.
  internal::FrameHeader header;
  header.type = internal::FrameType::kRequest;
  header.request_id = 1;
  std::string frame;
  EXPECT_THAT(internal::EncodeFramePrefix(header, "test.Test/Echo", {}, 5, 1 << 20, &frame),
              IsOk());
  frame += "hello";
  const uint32_t size = static_cast<uint32_t>(frame.size());
  std::string message(reinterpret_cast<const char*>(&size), 4);
  message += frame;
  const ssize_t sent = send(waiting.get(), message.data(), message.size(), MSG_NOSIGNAL);
  if (sent < 0 && (errno == EPIPE || errno == ECONNRESET)) {
    // The server freed a descriptor of its own in the window and accepted
    // the connection early, then had none for its state and dropped it
    // before the request went (as the EOF below, seen sooner): this try
    // proved nothing. (Seen once in CI: the server's log said "dropping a
    // connection: ... eventfd ...: Too many open files".)
    EXPECT_EQ(prlimit(pid, RLIMIT_NOFILE, &original, nullptr), 0) << std::strerror(errno);
    return false;
  }
  EXPECT_EQ(sent, static_cast<ssize_t>(message.size())) << std::strerror(errno);
  // Out of descriptors, the server must not spin.
  const int64_t ticks_before = ProcessCpuTicks(pid);
  absl::SleepFor(absl::Milliseconds(500));  // a measurement window, not synchronisation
  const int64_t used = ProcessCpuTicks(pid) - ticks_before;
  EXPECT_LT(used, 25) << "the server used " << used << " ticks of 50 while out of descriptors";
  // Descriptors again; nobody connects any more. The waiting connection is
  // accepted and answered.
  EXPECT_EQ(prlimit(pid, RLIMIT_NOFILE, &original, nullptr), 0) << std::strerror(errno);
  absl::StatusOr<std::string> answer = ReadBytes(waiting.get(), 4, absl::Seconds(10));
  // EOF: the server freed a descriptor of its own in the window (its ready
  // pipe, say) and accepted the connection early, then had none for its
  // connection state and dropped it: this try proved nothing. No answer at
  // all is the failure: the connection stayed in the backlog.
  if (!answer.ok() && absl::StrContains(answer.status().message(), "EOF")) return false;
  EXPECT_THAT(answer, IsOk()) << "a connection left in the backlog was never accepted";
  return true;
}

TEST(HostileUnixTest, AServerOutOfDescriptorsServesItsBacklogOnceItHasSome) {
#ifdef IPCRPC_TEST_SANITIZED
  // The sanitizers' runtimes need descriptors of their own (UBSan's vptr
  // check makes a pipe to probe memory, and reports an invalid vptr when it
  // cannot): a process without any left fails in them, not in ipcrpc.
  GTEST_SKIP() << "a process out of descriptors breaks the sanitizer runtime";
#endif
  bool proved = false;
  for (int attempt = 0; attempt < 5 && !proved && !HasFailure(); ++attempt) {
    proved = BacklogServedOnceDescriptorsAreFree();
  }
  EXPECT_TRUE(proved) << "five tries were spoiled by the server freeing descriptors";
}

// A peer that asks and asks (PINGs, calls to methods that do not exist)
// and never reads the answers: once its transport is full, the answers wait
// for a handler thread, and a few of them hold those threads until the peer
// reads. Past max_calls_per_connection waiting answers (at least 4096) its
// connection is closed (a logged reason), so the handler threads go back to
// the others.
TEST_P(HostileTest, APeerThatNeverReadsItsAnswersLosesItsConnection) {
  auto server = ConformanceServerProcess::Start(GetParam(), {"--handler_threads=2"});
  ASSERT_THAT(server, IsOk());
  absl::StatusOr<ConformanceServerProcess::RawPeer> peer = (*server)->OpenRawPeer();
  ASSERT_THAT(peer, IsOk());
  // Our writes must not wait for a server that stopped reading us (a fifo:
  // raw peer is a reader of its own FIFO: its writes never fail), nor kill
  // us (EPIPE).
  signal(SIGPIPE, SIG_IGN);
  if (peer->to_server.valid()) {
    ASSERT_EQ(fcntl(peer->to_server.get(), F_SETFL,
                    fcntl(peer->to_server.get(), F_GETFL) | O_NONBLOCK), 0);
  }
  internal::FrameHeader header;
  header.type = internal::FrameType::kRequest;
  std::string frame;
  bool stopped = false;
  for (uint64_t id = 1; id <= 20000 && !stopped; ++id) {
    header.request_id = id;
    ASSERT_THAT(internal::EncodeFramePrefix(header, "test.Test/NoSuchMethod", {}, 0, 0, &frame),
                IsOk());
    // A send that fails: no room (the server is behind), or closed.
    for (int tries = 0; !peer->SendMessage(frame); ++tries) {
      if (tries == 10) {
        stopped = true;
        break;
      }
      struct pollfd room = {peer->to_server.get(), POLLOUT, 0};
      poll(&room, peer->to_server.valid() ? 1 : 0, 100);
    }
  }
  // The server's own count: only the fixture's connection is left.
  absl::StatusOr<ServerStats> stats;
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  do {
    stats = Stats(*(*server)->channel());
    ASSERT_THAT(stats, IsOk());
  } while (stats->connections_size() > 1 && absl::Now() < give_up);
  EXPECT_EQ(stats->connections_size(), 1) << "a peer that never reads kept its connection";
  // The handler threads serve the others.
  CallOptions options;
  options.timeout = absl::Seconds(10);
  EXPECT_THAT((*server)->channel()->CallMethod("test.Test/Sleep", "1", options), IsOk());
  EXPECT_THAT((*server)->channel()->CallMethod("test.Test/Sleep", "1", options), IsOk());
}

// A frame with more metadata entries than a call may carry costs its sender
// the connection, and nothing else.
TEST_P(HostileTest, TooManyMetadataEntriesCloseOnlyThatConnection) {
  auto server = ConformanceServerProcess::Start(GetParam());
  ASSERT_THAT(server, IsOk());
  absl::StatusOr<ConformanceServerProcess::RawPeer> peer = (*server)->OpenRawPeer();
  ASSERT_THAT(peer, IsOk());
  internal::FrameHeader header;
  header.type = internal::FrameType::kRequest;
  header.request_id = 1;
  std::string frame;
  ASSERT_THAT(internal::EncodeFramePrefix(header, "test.Test/Echo", {}, 0, 0, &frame), IsOk());
  // The metadata block by hand (the encoder refuses this many entries).
  const size_t entries = internal::kMaxMetadataEntries + 1;
  const uint32_t block = static_cast<uint32_t>(entries * 8);
  std::memcpy(frame.data() + 32, &block, 4);
  frame.append(block, '\0');
  // mq: over one fragment would need fragmenting; keep it within one.
  ASSERT_TRUE(peer->SendMessage(frame));
  EXPECT_TRUE(peer->WaitClosed(absl::Seconds(10)));
  EXPECT_THAT((*server)->channel()->CallMethod("test.Test/Echo", "unharmed"), IsOk());
}

// A client that sends calls and never reads their answers: once the
// server's sends to it have waited ServerOptions::send_timeout, it loses its
// connection, and the handler threads it held serve others again. (Before,
// they waited for it for good.)
TEST_P(HostileTest, AClientThatNeverReadsLosesItsConnectionAfterTheSendTimeout) {
  auto server = ConformanceServerProcess::Start(GetParam(), {"--send_timeout_ms=500"});
  ASSERT_THAT(server, IsOk());
  absl::StatusOr<ConformanceServerProcess::RawPeer> peer = (*server)->OpenRawPeer();
  ASSERT_THAT(peer, IsOk());
  // 400 answers of 4000 bytes: more than any transport holds unread (a
  // socket's buffer, the reply queue, the ring). Each request fits one mq:
  // message.
  const std::string payload(4000, 'r');
  for (uint64_t id = 1; id <= 400; ++id) {
    internal::FrameHeader header;
    header.type = internal::FrameType::kRequest;
    header.request_id = id;
    std::string frame;
    ASSERT_THAT(internal::EncodeFramePrefix(header, "test.Test/Echo", {}, payload.size(),
                                            1 << 20, &frame),
                IsOk());
    frame.append(payload);
    if (!peer->SendMessage(frame)) break;  // closed already
  }
  // (Not peer->WaitClosed: it reads what the server sends.) Only the
  // honest channel's connection remains.
  int connections = -1;
  for (const absl::Time give_up = absl::Now() + absl::Seconds(30); absl::Now() < give_up;
       absl::SleepFor(absl::Milliseconds(50))) {
    absl::StatusOr<ServerStats> stats = Stats(*(*server)->channel());
    if (stats.ok()) connections = stats->connections_size();
    if (connections == 1) break;
  }
  EXPECT_EQ(connections, 1) << "the server kept a client that never reads";
  CallOptions options;
  options.timeout = absl::Seconds(30);
  EXPECT_THAT((*server)->channel()->CallMethod("test.Test/Echo", "unharmed", options), IsOk());
}

// A stream REQUEST of `method` (window 64 KiB) with `flags` added.
std::string StreamRequest(const std::string& method, uint64_t id, uint16_t flags = 0) {
  internal::FrameHeader header;
  header.type = internal::FrameType::kRequest;
  header.request_id = id;
  header.flags = internal::kFlagStream | flags;
  std::string frame;
  EXPECT_THAT(internal::EncodeFramePrefix(header, method, {}, internal::kStreamHeadSize, 1 << 20,
                                          &frame),
              IsOk());
  internal::PutLe(&frame, 64 * 1024, 4);
  return frame;
}

std::string StreamMessage(uint64_t id, size_t size) {
  internal::FrameHeader header;
  header.type = internal::FrameType::kMessage;
  header.request_id = id;
  std::string frame;
  EXPECT_THAT(internal::EncodeFramePrefix(header, "", {}, size, 1 << 20, &frame), IsOk());
  frame.append(size, 'm');
  return frame;
}

// A peer that writes to a stream whose handler reads nothing (test.Test/Stall)
// may send its window (the server's: 1 MiB) and one message more; past that
// it loses its connection, and nothing else does. 4000-byte messages fit
// one mq: fragment.
TEST_P(HostileTest, StreamMessagesPastTheWindowCloseOnlyThatConnection) {
  auto server = ConformanceServerProcess::Start(GetParam());
  ASSERT_THAT(server, IsOk());
  constexpr size_t kSize = 4000;
  const int64_t cost = internal::StreamCost(kSize);
  const int within = static_cast<int>((int64_t{1} << 20) / cost);  // 258: all within the window
  {
    // Control: a peer that stays within the window keeps its connection.
    absl::StatusOr<ConformanceServerProcess::RawPeer> peer = (*server)->OpenRawPeer();
    ASSERT_THAT(peer, IsOk());
    ASSERT_TRUE(peer->SendMessage(StreamRequest("test.Test/Stall", 1)));
    for (int i = 0; i < within; ++i) ASSERT_TRUE(peer->SendMessage(StreamMessage(1, kSize))) << i;
    EXPECT_FALSE(peer->WaitClosed(absl::Milliseconds(300)));
  }
  absl::StatusOr<ConformanceServerProcess::RawPeer> peer = (*server)->OpenRawPeer();
  ASSERT_THAT(peer, IsOk());
  ASSERT_TRUE(peer->SendMessage(StreamRequest("test.Test/Stall", 1)));
  bool sent_all = true;
  for (int i = 0; i < within + 3 && sent_all; ++i) {
    sent_all = peer->SendMessage(StreamMessage(1, kSize));
  }
  EXPECT_TRUE(peer->WaitClosed(absl::Seconds(10)));
  // Bounded: a server that stopped serving fails here, not at ctest's timeout.
  CallOptions bounded;
  bounded.timeout = absl::Seconds(20);
  EXPECT_THAT((*server)->channel()->CallMethod("test.Test/Echo", "unharmed", bounded), IsOk());
}

TEST_P(HostileTest, AStreamMessageAfterTheClientsHalfCloseClosesTheConnection) {
  auto server = ConformanceServerProcess::Start(GetParam());
  ASSERT_THAT(server, IsOk());
  absl::StatusOr<ConformanceServerProcess::RawPeer> peer = (*server)->OpenRawPeer();
  ASSERT_THAT(peer, IsOk());
  ASSERT_TRUE(peer->SendMessage(StreamRequest("test.Test/Stall", 5, internal::kFlagHalfClose)));
  EXPECT_FALSE(peer->WaitClosed(absl::Milliseconds(200)));
  ASSERT_TRUE(peer->SendMessage(StreamMessage(5, 10)));
  EXPECT_TRUE(peer->WaitClosed(absl::Seconds(10)));
  // A MESSAGE for a stream id the server does not know (ended, or never
  // started) is dropped: the sender may not have seen its end yet.
  absl::StatusOr<ConformanceServerProcess::RawPeer> other = (*server)->OpenRawPeer();
  ASSERT_THAT(other, IsOk());
  ASSERT_TRUE(other->SendMessage(StreamMessage(77, 10)));
  EXPECT_FALSE(other->WaitClosed(absl::Milliseconds(300)));
  // Bounded: a server that stopped serving fails here, not at ctest's timeout.
  CallOptions bounded;
  bounded.timeout = absl::Seconds(20);
  EXPECT_THAT((*server)->channel()->CallMethod("test.Test/Echo", "unharmed", bounded), IsOk());
}

// A peer that starts a stream and never reads: the handler's send of a
// message larger than the transport holds blocks, and no cancellation
// reaches a blocked send. Shutdown (conformance_server: SIGTERM, a grace
// of 1 s) closes the connections of handlers that have not returned a
// second after it cancelled them, so the server exits (before: it waited
// for the peer for good).
TEST_P(HostileTest, ShutdownEndsWhileAPeerNeverReadsItsStream) {
  auto server = ConformanceServerProcess::Start(GetParam());
  ASSERT_THAT(server, IsOk());
  absl::StatusOr<ConformanceServerProcess::RawPeer> peer = (*server)->OpenRawPeer();
  ASSERT_THAT(peer, IsOk());
  std::string request = StreamRequest("test.Test/Count", 9,
                                      internal::kFlagWithMessage | internal::kFlagHalfClose);
  const std::string body = "1000 300000";
  const uint32_t payload = static_cast<uint32_t>(internal::kStreamHeadSize + body.size());
  std::memcpy(request.data() + 36, &payload, 4);
  request += body;
  ASSERT_TRUE(peer->SendMessage(request));
  // The handler runs (and blocks in its first send) while the peer reads nothing.
  absl::SleepFor(absl::Milliseconds(200));
  const absl::Time start = absl::Now();
  ASSERT_EQ(kill((*server)->pid(), SIGTERM), 0);
  EXPECT_TRUE(WaitUntilGone((*server)->pid(), absl::Seconds(15)))
      << "the server did not exit while a peer held its handler";
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
}

INSTANTIATE_TEST_SUITE_P(Transports, HostileTest,
                         ::testing::Values(TransportTraits{"unix", true},
                                           TransportTraits{"fifo", true},
                                           TransportTraits{"mq", true},
                                           TransportTraits{"shm", true}),
                         [](const auto& test_info) { return test_info.param.name; });

}  // namespace
}  // namespace ipcrpc::testing
