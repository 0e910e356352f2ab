// Impostors: a server of another uid on the name a client connects to (a
// socket path, an abstract name, the shm: rendezvous, a FIFO, a queue). The
// client checks who the server is before it sends anything: a server of
// another uid than its own or root gets nothing (PERMISSION_DENIED naming
// the endpoint and the uid), unless ChannelOptions::allowed_server_uids
// lists it. The impostor is a real conformance_server run as uid 65534
// (setpriv). That it received nothing is read from its log (a server logs
// every connect record, CONNECT or HELLO it cannot serve) and, where a client
// of ours can be served by another uid (sockets, shm:), from its counters,
// through a channel that allows it.
#include <fcntl.h>
#include <mqueue.h>
#include <signal.h>
#include <unistd.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ipcrpc/introspection.pb.h"
#include "ipcrpc/ipcrpc.h"
#include "base/syscall.h"
#include "tests/util/process.h"
#include "tests/util/status_matchers.h"

namespace ipcrpc::testing {
namespace {

using ::testing::HasSubstr;

constexpr uid_t kImpostorUid = 65534;

struct EndpointKind {
  std::string name;
  std::function<std::string()> make;  // a fresh endpoint
  bool connects_before_checking;       // unix: the kernel completes connect() first
  // Whether a root client can be served by a server of uid 65534 at all
  // (fifo: needs the client's runtime directory, which is private, to be
  // reachable by the server; mq: a reply queue of a widened mode).
  bool other_uid_can_serve;
};

void PrintTo(const EndpointKind& kind, std::ostream* os) { *os << kind.name; }

class ImpostorTest : public ::testing::TestWithParam<EndpointKind> {};

TEST_P(ImpostorTest, AServerOfAnotherUidGetsNothing) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to run a server as another uid";
  const std::string endpoint = GetParam().make();
  int ready[2];
  ASSERT_EQ(pipe2(ready, O_CLOEXEC), 0);
  int log[2];
  ASSERT_EQ(pipe2(log, O_CLOEXEC), 0);
  auto pid = Spawn({"/usr/bin/setpriv", absl::StrCat("--reuid=", kImpostorUid),
                    absl::StrCat("--regid=", kImpostorUid), "--clear-groups",
                    IPCRPC_CONFORMANCE_SERVER, "--endpoint=" + endpoint,
                    absl::StrCat("--ready_fd=", ready[1]), "--allowed_uid=0"},
                   {ready[1]}, {}, -1, log[1]);
  close(ready[1]);
  close(log[1]);
  internal::UniqueFd log_read(log[0]);
  ASSERT_THAT(pid, IsOk());
  auto line = ReadLine(ready[0], absl::Seconds(20));
  close(ready[0]);
  if (!line.ok() || *line != "READY") {
    kill(*pid, SIGKILL);
    WaitForExit(*pid, absl::Seconds(20));
    GTEST_SKIP() << "conformance_server cannot run as uid " << kImpostorUid << ": "
                 << (line.ok() ? *line : line.status().ToString());
  }

  // A client with the default options (its own uid and root) refuses it.
  absl::StatusOr<std::shared_ptr<Channel>> refused = Channel::Connect(endpoint);
  absl::Status status = refused.status();
  if (refused.ok()) status = (*refused)->CallMethod("test.Test/Echo", "secret").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << status;
  EXPECT_THAT(status.message(), HasSubstr(endpoint));
  EXPECT_THAT(status.message(), HasSubstr(absl::StrCat("uid ", kImpostorUid)));

  // So does a client that lists other uids only.
  ChannelOptions others;
  others.allowed_server_uids = {kImpostorUid + 1};
  absl::StatusOr<std::shared_ptr<Channel>> still_refused = Channel::Connect(endpoint, others);
  status = still_refused.status();
  if (still_refused.ok()) status = (*still_refused)->CallMethod("test.Test/Echo", "x").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << status;

  if (GetParam().other_uid_can_serve) {
    // A client that allows it is served; the server's counters say it got
    // nothing from the refused clients.
    ChannelOptions allowing;
    allowing.allowed_server_uids = {kImpostorUid};
    absl::StatusOr<std::shared_ptr<Channel>> allowed = Channel::Connect(endpoint, allowing);
    ASSERT_THAT(allowed, IsOk());
    absl::StatusOr<std::string> bytes = (*allowed)->CallMethod(
        "ipcrpc.Introspection/GetStats", GetStatsRequest().SerializeAsString());
    ASSERT_THAT(bytes, IsOk());
    ServerStats stats;
    ASSERT_TRUE(stats.ParseFromString(*bytes));
    EXPECT_EQ(stats.calls_received(), 1) << "the impostor received a refused client's call";
    if (!GetParam().connects_before_checking) {
      EXPECT_EQ(stats.connections_accepted(), 1)
          << "the impostor received a refused client's connect";
    }
  }

  kill(*pid, SIGTERM);
  std::optional<int> exited = WaitForExit(*pid, absl::Seconds(20));
  EXPECT_TRUE(exited.has_value());
  if (!exited.has_value()) {
    kill(*pid, SIGKILL);
    WaitForExit(*pid, absl::Seconds(20));
  }
  // Its whole log: nothing about us (a connect record, CONNECT or HELLO it
  // got from us would be logged as refused: it cannot reach our objects, or
  // would say whom it served).
  // (Over sockets the kernel completes our connect before we can look at
  // the peer: the server may log that we left without a word.)
  std::string said;
  char buffer[4096];
  ssize_t n;
  while ((n = read(log_read.get(), buffer, sizeof(buffer))) > 0) said.append(buffer, n);
  if (!GetParam().connects_before_checking) {
    EXPECT_THAT(said, ::testing::Not(HasSubstr(absl::StrCat("pid ", getpid()))))
        << "the impostor heard from us:\n" << said;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Endpoints, ImpostorTest,
    ::testing::Values(
        EndpointKind{"unix_path",
                     [] { return "unix:" + UniqueName("/tmp/ipcrpc-impostor") + ".sock"; }, true,
                     true},
        EndpointKind{"unix_abstract", [] { return "unix:@" + UniqueName("ipcrpc-impostor"); },
                     true, true},
        EndpointKind{"shm", [] { return "shm:" + UniqueName("ipcrpc-impostor"); }, true, true},
        EndpointKind{"fifo",
                     [] { return "fifo:" + UniqueName("/tmp/ipcrpc-impostor") + ".fifo"; },
                     false, false},
        EndpointKind{"mq", [] { return "mq:" + UniqueName("ipcrpc-impostor"); }, false, false}),
    [](const auto& test_info) { return test_info.param.name; });

}  // namespace
}  // namespace ipcrpc::testing
