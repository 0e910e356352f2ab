// The shm: transport's own rules: a hostile peer's ring or HELLO breaks only
// its own connection; an idle connection costs no CPU.
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/syscall.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ipcrpc/ipcrpc.h"
#include "tests/conformance/conformance_server_process.h"
#include "tests/conformance/test_service.h"
#include "tests/util/process.h"
#include "tests/transports/other_uid_check.h"
#include "tests/util/status_matchers.h"
#include "transports/shm/shm_ring.h"
#include "transports/shm/shm_transport.h"

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
  uint64_t one = 1;
  ASSERT_EQ(write(peer->shm_server_doorbell.get(), &one, sizeof(one)), 8);
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
  for (int i = 0; i < 1000; ++i) {
    uint64_t one = 1;
    ASSERT_EQ(write(peer->shm_server_doorbell.get(), &one, sizeof(one)), 8);
  }
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
};

TEST_F(ShmTransportTest, HellosWithWrongSizesOrDescriptorsAreRefused) {
  const BadHello cases[] = {
      {"ring size not a power of two", 5000, 5000, true, 3},
      {"memory smaller than announced", 8192, 4096, true, 3},
      {"memory not sealed", 4096, 4096, false, 3},
      {"too few descriptors", 4096, 4096, true, 1},
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
    ASSERT_EQ(ftruncate(memfd.get(), internal::kShmHeaderSize + 2 * bad.memfd_rings), 0);
    if (bad.seal) {
      ASSERT_EQ(fcntl(memfd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), 0);
    }
    UniqueFd a(eventfd(0, EFD_CLOEXEC));
    UniqueFd b(eventfd(0, EFD_CLOEXEC));
    char hello[internal::kShmHelloSize] = {'I', 'S', 'H', 'M', 1, 0, 0, 0};
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
    EXPECT_TRUE(WaitForEof(socket.get(), absl::Seconds(10))) << "the server accepted it";
  }
  ExpectServed();
}

int64_t ProcessCpuTicks(pid_t pid) {
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  std::string line;
  std::getline(stat, line);
  // Fields after the command name (which ends with ')'): 14th and 15th are
  // utime and stime.
  std::istringstream fields(line.substr(line.rfind(')') + 2));
  std::string field;
  int64_t utime = 0, stime = 0;
  for (int i = 3; i <= 15 && fields >> field; ++i) {
    if (i == 14) utime = std::stoll(field);
    if (i == 15) stime = std::stoll(field);
  }
  return utime + stime;
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
