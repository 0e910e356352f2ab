// The shm: transport's own rules: a hostile peer's ring or HELLO breaks only
// its own connection; an idle connection costs no CPU.
#include <fcntl.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <sys/wait.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/syscall.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ipcrpc/ipcrpc.h"
#include "wire/frame.h"
#include "tests/conformance/conformance_server_process.h"
#include "tests/conformance/test_service.h"
#include "tests/util/cpus.h"
#include "tests/util/process.h"
#include "tests/transports/other_uid_check.h"
#include "tests/util/status_matchers.h"
#include "transports/shm/shm_handshake.h"
#include "transports/shm/shm_region.h"
#include "transports/shm/shm_ring.h"

namespace ipcrpc::testing {
namespace {

using internal::UniqueFd;

class ShmTransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = ConformanceServerProcess::Start({"shm", true});
    ASSERT_THAT(server, IsOk());
    server_ = *std::move(server);
  }
  void ExpectServed() {
    EXPECT_THAT(server_->channel()->CallMethod("test.Test/Echo", "unharmed"), IsOk());
  }
  std::unique_ptr<ConformanceServerProcess> server_;
};

TEST_F(ShmTransportTest, GarbagePositionsInTheRingCloseOnlyThatConnection) {
  auto peer = server_->OpenRawPeer();
  ASSERT_THAT(peer, IsOk());
  auto* control = reinterpret_cast<internal::ShmRingControl*>(peer->shm_region.get() + 64);
  control->producer_position.store(uint64_t{1} << 40);  // far beyond the ring
  ASSERT_TRUE(peer->RingShm());
  EXPECT_TRUE(peer->WaitClosed(absl::Seconds(10)));
  ExpectServed();
}

TEST_F(ShmTransportTest, GarbageBytesInTheRingCloseOnlyThatConnection) {
  auto peer = server_->OpenRawPeer();
  ASSERT_THAT(peer, IsOk());
  // A record whose length is plausible but whose frame is garbage.
  ASSERT_TRUE(peer->SendMessage(std::string(100, '\x5a')));
  EXPECT_TRUE(peer->WaitClosed(absl::Seconds(10)));
  ExpectServed();
}

// Spurious doorbells are part of the protocol (a reader that stays awake may
// still be rung once), so a doorbell with nothing written costs a wake-up,
// not the connection.
TEST_F(ShmTransportTest, ADoorbellWithNothingWrittenIsHarmless) {
  auto peer = server_->OpenRawPeer();
  ASSERT_THAT(peer, IsOk());
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(peer->RingShm()) << "ring " << i;
  EXPECT_FALSE(peer->WaitClosed(absl::Milliseconds(100)));
  ExpectServed();
}

// A HELLO built by hand, with the mistakes a faulty peer might make.
struct BadHello {
  const char* what;
  uint64_t ring_size;      // announced
  uint64_t memfd_rings;    // actual
  bool seal;
  int fds;
  uint32_t version = 2;
  bool eventfd_doorbells = false;  // version 1's
  bool good = false;               // the control: accepted
};

TEST_F(ShmTransportTest, HellosWithWrongSizesOrDescriptorsAreRefused) {
  // Each case breaks one rule (the region's header is right in all); the
  // first breaks none and must be accepted, so the others are refused for
  // what they break.
  const BadHello cases[] = {
      {"a good HELLO (the control)", 4096, 4096, true, 2, 2, false, true},
      {"ring size not a power of two", 5000, 5000, true, 2},
      {"memory smaller than announced", 8192, 4096, true, 2},
      {"memory not sealed", 4096, 4096, false, 2},
      {"too few descriptors", 4096, 4096, true, 1},
      {"too many descriptors", 4096, 4096, true, 3},
      // Version 1's eventfds: a peer could make them blocking (below).
      {"version 1 with eventfd doorbells", 4096, 4096, true, 3, 1, true},
      {"an eventfd for a doorbell", 4096, 4096, true, 2, 2, true},
  };
  // The server's abstract name, as the conformance fixture made it.
  auto raw = server_->OpenRawPeer();
  ASSERT_THAT(raw, IsOk());
  for (const BadHello& bad : cases) {
    SCOPED_TRACE(bad.what);
    UniqueFd socket(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    // Reuse the raw peer's address: the same server.
    sockaddr_un addr = {};
    socklen_t len = sizeof(addr);
    ASSERT_EQ(getpeername(raw->shm_socket.get(), reinterpret_cast<sockaddr*>(&addr), &len), 0);
    ASSERT_EQ(connect(socket.get(), reinterpret_cast<sockaddr*>(&addr), len), 0);
    UniqueFd memfd(memfd_create("bad", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    const size_t length = internal::kShmHeaderSize + 2 * bad.memfd_rings;
    ASSERT_EQ(ftruncate(memfd.get(), length), 0);
    {
      void* base = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED, memfd.get(), 0);
      ASSERT_NE(base, MAP_FAILED);
      std::memcpy(base, "ISHR\x02\x00\x00\x00", 8);
      std::memcpy(static_cast<char*>(base) + 8, &bad.ring_size, 8);
      munmap(base, length);
    }
    if (bad.seal) {
      ASSERT_EQ(fcntl(memfd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), 0);
    }
    UniqueFd a, b;
    if (bad.eventfd_doorbells) {
      a = UniqueFd(eventfd(0, EFD_CLOEXEC));
      b = UniqueFd(eventfd(0, EFD_CLOEXEC));
    } else {
      int bell[2];
      ASSERT_EQ(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, bell), 0);
      a = UniqueFd(bell[1]);
      b = UniqueFd(bell[0]);
    }
    char hello[internal::kShmHelloSize] = {'I', 'S', 'H', 'M'};
    std::memcpy(hello + 4, &bad.version, 4);
    std::memcpy(hello + 8, &bad.ring_size, 8);
    struct iovec iov = {hello, sizeof(hello)};
    alignas(struct cmsghdr) char control[CMSG_SPACE(3 * sizeof(int))] = {};
    struct msghdr msg = {};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(bad.fds * sizeof(int));
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(bad.fds * sizeof(int));
    const int fds[3] = {memfd.get(), a.get(), b.get()};
    std::memcpy(CMSG_DATA(c), fds, bad.fds * sizeof(int));
    ASSERT_EQ(sendmsg(socket.get(), &msg, MSG_NOSIGNAL), static_cast<ssize_t>(sizeof(hello)));
    if (bad.good) {
      auto ack = ReadBytes(socket.get(), 8, absl::Seconds(10));
      ASSERT_THAT(ack, IsOk()) << "a good HELLO was refused";
      EXPECT_EQ(ack->substr(0, 4), "ISHA");
    } else {
      EXPECT_TRUE(WaitForEof(socket.get(), absl::Seconds(10))) << "the server accepted it";
    }
  }
  ExpectServed();
}

// ring 1 (server to client) of a raw peer: consumes whatever the server has
// written there; returns how many bytes.
uint64_t ConsumeResponses(ConformanceServerProcess::RawPeer& peer, uint64_t* consumed) {
  auto* control = reinterpret_cast<internal::ShmRingControl*>(peer.shm_region.get() + 256);
  const uint64_t produced = control->producer_position.load(std::memory_order_acquire);
  const uint64_t n = produced - *consumed;
  *consumed = produced;
  control->consumer_position.store(produced, std::memory_order_release);
  return n;
}

std::string EchoRequestFrame(uint64_t id, const internal::Metadata& metadata,
                             size_t payload_size) {
  internal::FrameHeader header;
  header.type = internal::FrameType::kRequest;
  header.request_id = id;
  std::string frame;
  EXPECT_THAT(internal::EncodeFramePrefix(header, "test.Test/Echo", metadata, payload_size,
                                          64u << 20, &frame),
              IsOk());
  frame.append(payload_size, 'e');
  return frame;
}

// A peer that rewrites its ring while the server decodes from it (here: a
// metadata length that is valid when looked at, then points past the block) must
// never crash the server: the server reads the ring once, into memory of
// its own, and decodes only that. Before, the metadata block was checked in
// the ring and parsed again there later, and the server aborted
// (basic_string_view::substr out of range) within a second.
TEST_F(ShmTransportTest, ARingRewrittenWhileTheServerDecodesCannotCrashIt) {
  // Records of a quarter of the raw peer's 4 KiB ring each: every record's
  // first metadata length lies at one of four fixed places in the ring.
  constexpr size_t kRecord = 1024;
  const internal::Metadata metadata = {{"key", "value"}};
  const size_t overhead = EchoRequestFrame(0, metadata, 0).size();
  const size_t key_length_at = 4 + internal::kHeaderSize + std::strlen("test.Test/Echo");
  const absl::Time until = absl::Now() + absl::Seconds(2);
  int records = 0;
  while (absl::Now() < until) {
    auto peer = server_->OpenRawPeer();
    ASSERT_THAT(peer, IsOk());
    // The flipper writes through a second mapping of the same pages
    // (mremap of size 0 duplicates a shared mapping): to ThreadSanitizer its
    // writes and this thread's are then to different addresses, as the
    // peer's and the server's are (another process), not a race in the test.
    const size_t length = internal::kShmHeaderSize + 2 * peer->shm_ring_size;
    void* alias = mremap(peer->shm_region.get(), 0, length, MREMAP_MAYMOVE);
    ASSERT_NE(alias, MAP_FAILED) << std::strerror(errno);
    absl::Cleanup unmap = [alias, length] { munmap(alias, length); };
    char* ring = static_cast<char*>(alias) + internal::kShmHeaderSize;
    std::atomic<bool> stop{false};
    std::thread flipper([&] {
      auto byte = [&](int slot) {
        return reinterpret_cast<volatile char*>(ring + slot * kRecord + key_length_at);
      };
      while (!stop.load(std::memory_order_relaxed)) {
        // 10: the value's length field would start 2 bytes before the end
        // of the 16-byte block (3 is "key"'s true length).
        for (int slot = 0; slot < 4; ++slot) *byte(slot) = 10;
        for (int slot = 0; slot < 4; ++slot) *byte(slot) = 3;
      }
    });
    uint64_t consumed = 0;
    for (int i = 0; i < 200 && absl::Now() < until; ++i) {
      const std::string frame = EchoRequestFrame(++records, metadata, kRecord - 4 - overhead);
      ASSERT_EQ(frame.size() + 4, kRecord);
      if (!peer->SendMessage(frame)) break;  // the server closed it (saw 0xff)
      ConsumeResponses(*peer, &consumed);
      if (peer->WaitClosed(absl::ZeroDuration())) break;
    }
    stop.store(true);
    flipper.join();
  }
  EXPECT_EQ(waitpid(server_->pid(), nullptr, WNOHANG), 0) << "the server died";
  ExpectServed();
}

// A peer holds the server's end of the doorbell pair too (it made the pair).
// It makes that end blocking and never takes its own wake-ups, so that the
// server's rings pile up; it keeps asking the server to ring it (sleeping =
// 1 before each request). The server's rings never wait: every call is
// answered, others are served, and the server shuts down cleanly (checked
// when the fixture ends). Version 1's eventfd doorbells blocked the server's
// write for good here (with the counter filled), holding the connection's
// write lock: every client and Shutdown hung.
TEST_F(ShmTransportTest, APeerThatMakesItsDoorbellBlockingCannotStallTheServer) {
  auto peer = server_->OpenRawPeer();
  ASSERT_THAT(peer, IsOk());
  const int flags = fcntl(peer->shm_server_end.get(), F_GETFL);
  ASSERT_EQ(fcntl(peer->shm_server_end.get(), F_SETFL, flags & ~O_NONBLOCK), 0);
  auto* responses = reinterpret_cast<internal::ShmRingControl*>(peer->shm_region.get() + 256);
  uint64_t consumed = 0;
  // The server's send buffer holds a few hundred rings: well past it.
  for (int i = 1; i <= 2000; ++i) {
    responses->consumer_sleeping.store(1, std::memory_order_seq_cst);
    ASSERT_TRUE(peer->SendMessage(EchoRequestFrame(i, {}, 8))) << "request " << i;
    const absl::Time give_up = absl::Now() + absl::Seconds(10);
    while (ConsumeResponses(*peer, &consumed) == 0) {
      ASSERT_LT(absl::Now(), give_up) << "no answer to request " << i << ": the server stalled";
      sched_yield();
    }
  }
  ExpectServed();
}

TEST_F(ShmTransportTest, AnIdleConnectionCostsNoCpu) {
  ExpectServed();  // connected and warm
  const int64_t server_before = ProcessCpuTicks(server_->pid());
  struct timespec ours_before;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ours_before);
  absl::SleepFor(absl::Milliseconds(500));  // the measurement window, not synchronisation
  struct timespec ours_after;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ours_after);
  const int64_t server_after = ProcessCpuTicks(server_->pid());
  const int64_t ours_ns = (ours_after.tv_sec - ours_before.tv_sec) * 1'000'000'000 +
                          (ours_after.tv_nsec - ours_before.tv_nsec);
  // A spinning reader would use the whole window (500 ms = 50 ticks).
  EXPECT_LE(server_after - server_before, 2) << "the idle server used CPU";
  EXPECT_LT(ours_ns, 20'000'000) << "the idle client used CPU";
}

// Both processes on one CPU (pinned before the server is spawned and the
// channel's threads start, so every thread of both inherits it): each
// reader sees from the ring that its peer wrote from its own CPU and sleeps
// on its doorbell at once instead of looking (shm_ring.h, producer_cpu),
// and a writer publishes a large message whole, giving up the CPU when the
// ring is full. Every size arrives intact, those larger than the ring too,
// with several callers at once. (What the hints are is ShmRingTest's; this
// is the whole transport in that mode: no wake-up lost, nothing stalls.)
TEST(ShmOneCpuTest, BothPeersOnOneCpuExchangeEveryMessageSize) {
  cpu_set_t before;
  ASSERT_EQ(sched_getaffinity(0, sizeof(before), &before), 0);
  const int cpu = FirstCpuOf(before);
  ASSERT_GE(cpu, 0);
  const cpu_set_t one = OnlyCpu(cpu);
  if (sched_setaffinity(0, sizeof(one), &one) != 0) {
    GTEST_SKIP() << "cannot pin this thread: " << std::strerror(errno);
  }
  absl::Cleanup restore = [&] { sched_setaffinity(0, sizeof(before), &before); };
  auto server = ConformanceServerProcess::Start({"shm", true});
  ASSERT_THAT(server, IsOk());
  std::shared_ptr<Channel> channel = (*server)->channel();
  const size_t sizes[] = {0, 64, 4096, 65536, 300 * 1024, 1 << 20};
  for (size_t size : sizes) {
    std::string request(size, '\0');
    for (size_t i = 0; i < size; ++i) request[i] = static_cast<char>('a' + (i * 7 + size) % 26);
    for (int call = 0; call < 20; ++call) {
      ASSERT_THAT(channel->CallMethod("test.Test/Echo", request), IsOkAndHolds(request))
          << size << " bytes, call " << call;
    }
  }
  // Callers on four threads (all on the one CPU) share the connection.
  std::atomic<int> wrong{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 4; ++t) {
    callers.emplace_back([&, t] {
      for (int call = 0; call < 50; ++call) {
        const std::string request(static_cast<size_t>((t * 50 + call) * 997 % 70000), 'x');
        absl::StatusOr<std::string> response = channel->CallMethod("test.Test/Echo", request);
        if (!response.ok() || *response != request) wrong++;
      }
    });
  }
  for (auto& caller : callers) caller.join();
  EXPECT_EQ(wrong.load(), 0);
}

}  // namespace
}  // namespace ipcrpc::testing

namespace ipcrpc::testing {
namespace {

// shm: peers of another uid are refused unless allowed (SO_PEERCRED on the
// rendezvous socket: its abstract name has no file mode to stop them).
TEST(ShmUidTest, PeersOfAnotherUidAreRefusedUnlessAllowed) {
  const std::string skip = CheckOtherUidRefusedUnlessAllowed(
      [] { return "shm:" + UniqueName("ipcrpc-shm-uid"); });
  if (!skip.empty()) GTEST_SKIP() << skip;
}

}  // namespace
}  // namespace ipcrpc::testing
