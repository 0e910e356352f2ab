// Hostile peers against a real server process, on every transport with
// named servers: raw peers (not the library) that flood it with connections,
// start messages they never finish, or cancel calls that do not exist. The
// server stays within its limits (memory, connections), keeps serving
// everyone else, and counts what it refused (read through its own
// ipcrpc.Introspection service). Garbage frames, oversized lengths and
// garbage in shm: rings are in the conformance suite and shm_transport_test.
#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ipcrpc/introspection.pb.h"
#include "rpc/frame.h"
#include "tests/conformance/conformance_server_process.h"
#include "tests/util/process.h"
#include "tests/util/status_matchers.h"

namespace ipcrpc::testing {

namespace {

// Resident memory of `pid` in KiB (VmRSS), or -1.
long ResidentKib(pid_t pid) {
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) {
      long kib = -1;
      std::string number = line.substr(6);
      number.erase(0, number.find_first_not_of(" \t"));
      number = number.substr(0, number.find(' '));
      return absl::SimpleAtoi(number, &kib) ? kib : -1;
    }
  }
  return -1;
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

INSTANTIATE_TEST_SUITE_P(Transports, HostileTest,
                         ::testing::Values(TransportTraits{"unix", true},
                                           TransportTraits{"fifo", true},
                                           TransportTraits{"mq", true},
                                           TransportTraits{"shm", true}),
                         [](const auto& test_info) { return test_info.param.name; });

}  // namespace
}  // namespace ipcrpc::testing
