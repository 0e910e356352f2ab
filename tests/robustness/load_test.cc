// Load: 100 client processes × 1000 calls on one server at once, on every
// transport, every response checked against its request by the client
// (load_client.cc): nothing lost, nothing misrouted. For pipe: every client
// spawns its own server child, as pipe: means.
//
// IPCRPC_LOAD_CLIENTS and IPCRPC_LOAD_CALLS lower the counts (the sanitizer
// builds in CI use smaller ones).
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "base/syscall.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/conformance/conformance_server_process.h"
#include "tests/util/process.h"
#include "tests/util/status_matchers.h"

namespace ipcrpc::testing {

namespace {

int FromEnv(const char* name, int fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && std::atoi(value) > 0 ? std::atoi(value) : fallback;
}

class LoadTest : public ::testing::TestWithParam<TransportTraits> {};

TEST_P(LoadTest, HundredClientProcessesEachGetTheirOwnResponses) {
  const int clients = FromEnv("IPCRPC_LOAD_CLIENTS", 100);
  const int calls = FromEnv("IPCRPC_LOAD_CALLS", 1000);
  auto server = ConformanceServerProcess::Start(GetParam());
  ASSERT_THAT(server, IsOk());

  struct Client {
    pid_t pid = -1;
    internal::UniqueFd out;
  };
  std::vector<Client> running;
  for (int i = 0; i < clients; ++i) {
    int out[2];
    ASSERT_EQ(::pipe2(out, O_CLOEXEC), 0);
    internal::UniqueFd write_end(out[1]);
    std::vector<std::string> argv = {IPCRPC_LOAD_CLIENT, absl::StrCat("--calls=", calls),
                                     absl::StrCat("--id=client", i)};
    for (const std::string& arg : (*server)->ClientArgs()) argv.push_back(arg);
    absl::StatusOr<pid_t> pid = Spawn(argv, {}, {}, out[1]);
    ASSERT_THAT(pid, IsOk());
    running.push_back(Client{*pid, internal::UniqueFd(out[0])});
  }
  int ok = 0;
  for (size_t i = 0; i < running.size(); ++i) {
    Client& client = running[i];
    std::string last;
    for (;;) {
      absl::StatusOr<std::string> line = ReadLine(client.out.get(), absl::Seconds(300));
      if (!line.ok()) {
        last = absl::StrCat("no final line: ", line.status().ToString());
        break;
      }
      last = *line;
      if (!absl::StartsWith(last, "READY")) break;
    }
    std::optional<int> status = WaitForExit(client.pid, absl::Seconds(60));
    if (!status.has_value()) {
      ::kill(client.pid, SIGKILL);
      WaitForExit(client.pid, absl::Seconds(10));
    }
    const bool passed = status.has_value() && WIFEXITED(*status) && WEXITSTATUS(*status) == 0 &&
                        last == absl::StrCat("OK ", calls);
    EXPECT_TRUE(passed) << "client " << i << ": " << last;
    ok += passed;
  }
  EXPECT_EQ(ok, clients);
  // The server is still well: a call after the storm.
  EXPECT_THAT((*server)->channel()->CallMethod("test.Test/Echo", "after"), IsOk());
}

INSTANTIATE_TEST_SUITE_P(Transports, LoadTest,
                         ::testing::Values(TransportTraits{"unix", true},
                                           TransportTraits{"pipe", false},
                                           TransportTraits{"fifo", true},
                                           TransportTraits{"mq", true},
                                           TransportTraits{"shm", true}),
                         [](const auto& test_info) { return test_info.param.name; });

}  // namespace
}  // namespace ipcrpc::testing
