// The `ipcrpc` command-line tool against real server processes: ls, stats,
// call (through reflection and through --proto), gc after a SIGKILL, and the
// one-line errors and exit codes of bad input.
//
// Every test runs with its own XDG_RUNTIME_DIR, so the registry it sees holds
// only its own servers.
#include <fcntl.h>
#include <mqueue.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "base/syscall.h"
#include "gmock/gmock.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "ipcrpc/introspection.pb.h"
#include "ipcrpc/ipcrpc.h"
#include "tests/util/process.h"
#include "tests/util/status_matchers.h"
#include "base/mutex.h"

namespace ipcrpc::testing {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

struct CliResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

std::string ReadAll(int fd) {
  std::string data;
  ::lseek(fd, 0, SEEK_SET);
  char buffer[4096];
  ssize_t n;
  while ((n = ::read(fd, buffer, sizeof buffer)) > 0) data.append(buffer, static_cast<size_t>(n));
  return data;
}

// Runs the ipcrpc tool with `args`; stdout and stderr are captured whole.
CliResult RunCli(const std::vector<std::string>& args, const std::string& input = "") {
  CliResult result;
  internal::UniqueFd out(::memfd_create("cli-out", MFD_CLOEXEC));
  internal::UniqueFd err(::memfd_create("cli-err", MFD_CLOEXEC));
  internal::UniqueFd in(::memfd_create("cli-in", MFD_CLOEXEC));
  if (!out.valid() || !err.valid() || !in.valid()) return result;
  if (::write(in.get(), input.data(), input.size()) != static_cast<ssize_t>(input.size())) {
    return result;
  }
  ::lseek(in.get(), 0, SEEK_SET);
  std::vector<std::string> argv = {IPCRPC_CLI};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> raw;
  for (std::string& arg : argv) raw.push_back(arg.data());
  raw.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(in.get(), 0);
    ::dup2(out.get(), 1);
    ::dup2(err.get(), 2);
    ::execv(raw[0], raw.data());
    ::_exit(127);
  }
  std::optional<int> status = WaitForExit(pid, absl::Seconds(60));
  if (!status.has_value()) {
    ::kill(pid, SIGKILL);
    WaitForExit(pid, absl::Seconds(10));
    result.err = "the tool did not exit within 60 s";
    return result;
  }
  result.exit_code = WIFEXITED(*status) ? WEXITSTATUS(*status) : 128 + WTERMSIG(*status);
  result.out = ReadAll(out.get());
  result.err = ReadAll(err.get());
  return result;
}

int LineCount(const std::string& text) {
  return static_cast<int>(std::count(text.begin(), text.end(), '\n'));
}

// A cli_test_server process; SIGTERM (a clean shutdown) when destroyed.
class TestServer {
 public:
  static std::unique_ptr<TestServer> Start(const std::vector<std::string>& endpoints,
                                           const std::vector<std::string>& flags = {}) {
    int ready[2];
    if (::pipe2(ready, O_CLOEXEC) < 0) return nullptr;
    internal::UniqueFd read_end(ready[0]);
    internal::UniqueFd write_end(ready[1]);
    std::vector<std::string> argv = {IPCRPC_CLI_TEST_SERVER,
                                     "--endpoint=" + absl::StrJoin(endpoints, ",")};
    argv.insert(argv.end(), flags.begin(), flags.end());
    absl::StatusOr<pid_t> pid = Spawn(argv, {}, {}, ready[1]);
    if (!pid.ok()) return nullptr;
    write_end.Reset();
    auto server = std::unique_ptr<TestServer>(new TestServer(*pid, endpoints));
    absl::StatusOr<std::string> line = ReadLine(read_end.get(), absl::Seconds(30));
    if (!line.ok() || *line != "READY") return nullptr;
    return server;
  }

  ~TestServer() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    if (!WaitForExit(pid_, absl::Seconds(30)).has_value()) {
      ::kill(pid_, SIGKILL);
      WaitForExit(pid_, absl::Seconds(10));
    }
  }

  void Kill() {
    ::kill(pid_, SIGKILL);
    WaitForExit(pid_, absl::Seconds(10));
    pid_ = 0;
  }

  pid_t pid() const { return pid_; }
  const std::string& endpoint(size_t i = 0) const { return endpoints_[i]; }

 private:
  TestServer(pid_t pid, std::vector<std::string> endpoints)
      : pid_(pid), endpoints_(std::move(endpoints)) {}

  pid_t pid_;
  std::vector<std::string> endpoints_;
};

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/ipcrpc-clitest-XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    dir_ = dir;
    ::setenv("XDG_RUNTIME_DIR", dir, 1);
  }

  void TearDown() override {
    // Clean shutdowns and gc leave the registry empty.
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
    ::unsetenv("XDG_RUNTIME_DIR");
  }

  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  std::vector<std::string> RegistryFiles() const {
    std::vector<std::string> files;
    std::error_code ec;
    for (const auto& entry :
         std::filesystem::directory_iterator(dir_ + "/ipcrpc/servers", ec)) {
      files.push_back(entry.path().filename().string());
    }
    return files;
  }

  std::string dir_;
};

TEST_F(CliTest, LsListsLiveServersAndForgetsThemAfterShutdown) {
  const std::string mq = UniqueName("clitest-ls");
  auto server = TestServer::Start({"unix:" + Path("ls.sock"), "fifo:" + Path("ls.fifo"),
                                   "mq:" + mq, "shm:" + mq});
  ASSERT_NE(server, nullptr);

  CliResult table = RunCli({"ls"});
  EXPECT_EQ(table.exit_code, 0) << table.err;
  EXPECT_EQ(LineCount(table.out), 2) << table.out;  // header + one server
  EXPECT_THAT(table.out, AllOf(HasSubstr(absl::StrCat(server->pid())), HasSubstr("cli_test_server"),
                               HasSubstr("unix:" + Path("ls.sock")), HasSubstr("mq:" + mq),
                               HasSubstr("shm:" + mq), HasSubstr("clitest.Tester")));

  CliResult json = RunCli({"ls", "--json"});
  ASSERT_EQ(json.exit_code, 0) << json.err;
  EXPECT_THAT(json.out, AllOf(HasSubstr(absl::StrCat("\"pid\":", server->pid())),
                              HasSubstr("\"fifo:" + Path("ls.fifo") + "\""),
                              HasSubstr("\"ipcrpc.Introspection\"")));
  EXPECT_EQ(RegistryFiles().size(), 1u);

  server.reset();  // SIGTERM: a clean shutdown removes the record
  EXPECT_TRUE(RegistryFiles().empty());
  CliResult after = RunCli({"ls"});
  EXPECT_EQ(after.exit_code, 0);
  EXPECT_EQ(LineCount(after.out), 1) << after.out;
  EXPECT_EQ(after.err, "");
}

TEST_F(CliTest, StatsShowsCountersConnectionsAndCallsInFlight) {
  const std::string endpoint = "unix:" + Path("stats.sock");
  auto server = TestServer::Start({endpoint});
  ASSERT_NE(server, nullptr);
  auto channel = Channel::Connect(endpoint);
  ASSERT_THAT(channel, IsOk());
  CliResult add = RunCli({"call", endpoint, "clitest.Tester/Add", R"({"a": 1, "b": 2})"});
  ASSERT_EQ(add.exit_code, 0) << add.err;
  // A call that stays in flight until its deadline (30 s) or cancellation.
  CallOptions options;
  options.timeout = absl::Seconds(30);
  ipcrpc::internal::Mutex mu;
  std::optional<absl::Status> waited;
  Call wait = (*channel)->CallMethodAsync("clitest.Tester/Wait", "", options,
                                          [&](absl::StatusOr<std::string> result) {
                                            ipcrpc::internal::MutexLock lock(&mu);
                                            waited = std::move(result).status();
                                          });

  // The call reaches the server asynchronously: ask until it is listed.
  ServerStats stats;
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  for (;;) {
    CliResult json = RunCli({"stats", endpoint, "--json"});
    ASSERT_EQ(json.exit_code, 0) << json.err;
    ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json.out, &stats).ok()) << json.out;
    bool listed = false;
    for (const CallInfo& call : stats.calls()) listed |= call.method() == "clitest.Tester/Wait";
    if (listed || absl::Now() > give_up) break;
  }
  const CallInfo* wait_info = nullptr;
  for (const CallInfo& call : stats.calls()) {
    if (call.method() == "clitest.Tester/Wait") wait_info = &call;
  }
  ASSERT_NE(wait_info, nullptr) << stats.DebugString();
  EXPECT_TRUE(wait_info->has_deadline());
  EXPECT_GT(wait_info->deadline_remaining_us(), 0);
  EXPECT_LE(wait_info->deadline_remaining_us(), 30'000'000);
  EXPECT_GE(wait_info->age_us(), 0);
  EXPECT_FALSE(wait_info->cancelled());
  // Our channel's connection, with our pid.
  bool ours = false;
  for (const ConnectionInfo& connection : stats.connections()) {
    if (connection.id() == wait_info->connection_id()) {
      ours = connection.peer_pid() == ::getpid() && connection.endpoint() == endpoint &&
             connection.calls_in_flight() == 1;
    }
  }
  EXPECT_TRUE(ours) << stats.DebugString();
  EXPECT_GE(stats.responses_by_code().at("OK"), 1);  // the Add, and GetStats calls
  EXPECT_GE(stats.calls_received(), 3);
  EXPECT_GE(stats.calls_in_flight(), 1);
  EXPECT_GT(stats.bytes_received(), 0);
  EXPECT_GT(stats.bytes_sent(), 0);
  EXPECT_GE(stats.connections_accepted(), 3);

  CliResult text = RunCli({"stats", endpoint});
  EXPECT_EQ(text.exit_code, 0) << text.err;
  EXPECT_THAT(text.out, AllOf(HasSubstr("clitest.Tester/Wait"), HasSubstr("deadline in"),
                              HasSubstr(absl::StrCat("peer pid ", ::getpid()))));

  wait.Cancel();
  ipcrpc::internal::MutexLock lock(&mu);
  mu.Await(ipcrpc::internal::Condition(
      +[](std::optional<absl::Status>* s) { return s->has_value(); }, &waited));
  EXPECT_EQ(waited->code(), absl::StatusCode::kCancelled);
}

TEST_F(CliTest, CallsThroughReflectionWithMetadataAndTimeout) {
  const std::string mq = UniqueName("clitest-call");
  auto server = TestServer::Start({"mq:" + mq, "fifo:" + Path("call.fifo"), "shm:" + mq});
  ASSERT_NE(server, nullptr);
  for (const std::string& endpoint : {"mq:" + mq, "fifo:" + Path("call.fifo"), "shm:" + mq}) {
    CliResult add = RunCli({"call", endpoint, "clitest.Tester/Add", R"({"a": 40, "b": 2})"});
    EXPECT_EQ(add.exit_code, 0) << endpoint << ": " << add.err;
    EXPECT_THAT(add.out, HasSubstr(R"("sum": "42")")) << endpoint;
  }
  CliResult from_stdin = RunCli({"call", "mq:" + mq, "clitest.Tester/Add", "-"}, R"({"a": 7})");
  EXPECT_EQ(from_stdin.exit_code, 0) << from_stdin.err;
  EXPECT_THAT(from_stdin.out, HasSubstr(R"("sum": "7")"));

  CliResult metadata = RunCli({"call", "mq:" + mq, "clitest.Tester/Metadata", R"({"key": "who"})",
                               "--metadata", "who=cli", "--metadata=other=x"});
  EXPECT_EQ(metadata.exit_code, 0) << metadata.err;
  EXPECT_THAT(metadata.out, HasSubstr(R"("value": "cli")"));

  // The server's own status and its code come back as they are.
  CliResult missing = RunCli({"call", "mq:" + mq, "clitest.Tester/Metadata", R"({"key": "x"})"});
  EXPECT_EQ(missing.exit_code, static_cast<int>(absl::StatusCode::kNotFound));
  EXPECT_THAT(missing.err, HasSubstr("no such metadata key: x"));
  // ... with its payloads (JSON where the schema knows the type) and the
  // response metadata, on stderr; stdout has nothing but the response.
  EXPECT_THAT(missing.err, HasSubstr(R"(; detail type.googleapis.com/clitest.Problem: {"reason":"NO_SUCH_KEY","key":"x"})"));
  EXPECT_THAT(missing.err, HasSubstr("; detail type.example/unknown: (base64) /wA="));
  EXPECT_THAT(missing.err, HasSubstr("response metadata x-looked-for: x\n"));
  EXPECT_THAT(missing.err, HasSubstr("response metadata trace-bin: AAEC\n"));
  EXPECT_EQ(missing.out, "");
  EXPECT_THAT(metadata.err, HasSubstr("response metadata x-looked-for: who\n"));
  // The error is one line, after the two of response metadata.
  EXPECT_EQ(LineCount(missing.err), 3) << missing.err;
  EXPECT_THAT(missing.err, HasSubstr("response metadata trace-bin: AAEC\nipcrpc call: "));

  CliResult late = RunCli({"call", "shm:" + mq, "clitest.Tester/Wait", "--timeout=200ms"});
  EXPECT_EQ(late.exit_code, static_cast<int>(absl::StatusCode::kDeadlineExceeded)) << late.err;
  EXPECT_THAT(late.err, HasSubstr("DEADLINE_EXCEEDED"));
  EXPECT_EQ(LineCount(late.err), 1) << late.err;
}

#ifdef IPCRPC_TEST_GRPC
// Over grpc:, `call` finds the method through the server's own reflection
// service, called over gRPC like any other method.
TEST_F(CliTest, CallsOverGrpcThroughTheServersReflection) {
  const std::string endpoint = "grpc:unix:" + Path("grpc.sock");
  auto server = TestServer::Start({endpoint});
  ASSERT_NE(server, nullptr);
  CliResult add = RunCli({"call", endpoint, "clitest.Tester/Add", R"({"a": 40, "b": 2})"});
  EXPECT_EQ(add.exit_code, 0) << add.err;
  EXPECT_THAT(add.out, HasSubstr(R"("sum": "42")"));
  CliResult count = RunCli({"call", endpoint, "clitest.Tester/Count", R"({"n": 3})"});
  EXPECT_EQ(count.exit_code, 0) << count.err;
  EXPECT_EQ(LineCount(count.out), 3) << count.out;
  CliResult missing = RunCli({"call", endpoint, "clitest.Tester/Metadata", R"({"key": "x"})"});
  EXPECT_EQ(missing.exit_code, static_cast<int>(absl::StatusCode::kNotFound)) << missing.err;
  EXPECT_THAT(missing.err, HasSubstr(R"(; detail type.googleapis.com/clitest.Problem: {"reason":"NO_SUCH_KEY","key":"x"})"));
  EXPECT_THAT(missing.err, HasSubstr("response metadata x-looked-for: x\n"));
}

// A grpc_interop_peer server: a plain gRPC server (gRPC's generated code, no
// ipcrpc) with gRPC's standard server reflection, on 127.0.0.1 at a port it
// picks; SIGTERM when destroyed.
class GrpcPeer {
 public:
  static std::unique_ptr<GrpcPeer> Start() {
    int out[2];
    if (::pipe2(out, O_CLOEXEC) < 0) return nullptr;
    internal::UniqueFd read_end(out[0]);
    internal::UniqueFd write_end(out[1]);
    absl::StatusOr<pid_t> pid = Spawn({IPCRPC_GRPC_PEER, "server"}, {}, {}, out[1]);
    if (!pid.ok()) return nullptr;
    write_end.Reset();
    auto peer = std::unique_ptr<GrpcPeer>(new GrpcPeer(*pid));
    absl::StatusOr<std::string> line = ReadLine(read_end.get(), absl::Seconds(30));
    absl::string_view port = line.ok() ? absl::string_view(*line) : absl::string_view();
    if (!absl::ConsumePrefix(&port, "PORT ") || !absl::SimpleAtoi(port, &peer->port_)) {
      return nullptr;
    }
    return peer;
  }

  ~GrpcPeer() {
    ::kill(pid_, SIGTERM);
    if (!WaitForExit(pid_, absl::Seconds(30)).has_value()) {
      ::kill(pid_, SIGKILL);
      WaitForExit(pid_, absl::Seconds(10));
    }
  }

  std::string endpoint() const { return absl::StrCat("grpc:127.0.0.1:", port_); }

 private:
  explicit GrpcPeer(pid_t pid) : pid_(pid) {}

  pid_t pid_;
  int port_ = 0;
};

// A plain gRPC server has no ipcrpc.Reflection: `call` learns the method
// from gRPC's standard server reflection instead.
TEST_F(CliTest, CallsAPlainGrpcServerThroughGrpcServerReflection) {
  auto peer = GrpcPeer::Start();
  ASSERT_NE(peer, nullptr);
  const std::string endpoint = peer->endpoint();

  CliResult echo = RunCli({"call", endpoint, "interop.Interop/Echo", R"({"text": "hello"})"});
  ASSERT_EQ(echo.exit_code, 0) << echo.err;
  google::protobuf::Struct reply;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(echo.out, &reply).ok()) << echo.out;
  EXPECT_EQ(reply.fields_size(), 1) << echo.out;
  EXPECT_EQ(reply.fields().at("text").string_value(), "hello") << echo.out;
  EXPECT_EQ(echo.err, "");

  CliResult count = RunCli({"call", endpoint, "interop.Interop/Count", R"({"n": 3})"});
  EXPECT_EQ(count.exit_code, 0) << count.err;
  EXPECT_EQ(count.out, "{\"text\":\"0\"}\n{\"text\":\"1\"}\n{\"text\":\"2\"}\n");

  // The server's status, with its payload shown as JSON: the reflected
  // schema knows interop.Msg.
  CliResult failed = RunCli({"call", endpoint, "interop.Interop/Fail"});
  EXPECT_EQ(failed.exit_code, static_cast<int>(absl::StatusCode::kFailedPrecondition))
      << failed.err;
  EXPECT_THAT(
      failed.err,
      HasSubstr(R"(failed on purpose; detail type.googleapis.com/interop.Msg: {"text":"detail"})"));

  // What the server does not have: named, one line, NOT_FOUND.
  CliResult no_method = RunCli({"call", endpoint, "interop.Interop/Nope", "{}"});
  EXPECT_EQ(no_method.exit_code, static_cast<int>(absl::StatusCode::kNotFound)) << no_method.err;
  EXPECT_THAT(no_method.err,
              HasSubstr("service interop.Interop has no method Nope (it has Echo, Count, Sleep, "
                        "Cancellations, Sleeping, Fail)"));
  EXPECT_EQ(LineCount(no_method.err), 1) << no_method.err;
  EXPECT_EQ(no_method.out, "");
  CliResult no_service = RunCli({"call", endpoint, "interop.Nope/Echo", "{}"});
  EXPECT_EQ(no_service.exit_code, static_cast<int>(absl::StatusCode::kNotFound)) << no_service.err;
  EXPECT_THAT(no_service.err,
              AllOf(HasSubstr(endpoint + ": gRPC server reflection answered "
                                         "file_containing_symbol interop.Nope with error 5 "
                                         "(NOT_FOUND)"),
                    HasSubstr("Symbol not found")));
  EXPECT_EQ(LineCount(no_service.err), 1) << no_service.err;
  EXPECT_EQ(no_service.out, "");
}

// A grpc: server with neither ipcrpc.Reflection nor gRPC server reflection:
// the error says so, and what to do.
TEST_F(CliTest, ProtoFileReplacesReflectionOverGrpcWhenTheServerOffersNone) {
  const std::string endpoint = "grpc:unix:" + Path("noreflect-grpc.sock");
  auto server = TestServer::Start({endpoint}, {"--reflection=false"});
  ASSERT_NE(server, nullptr);
  CliResult without = RunCli({"call", endpoint, "clitest.Tester/Add", R"({"a": 1, "b": 1})"});
  EXPECT_EQ(without.exit_code, static_cast<int>(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(without.err,
              HasSubstr(endpoint + ": the server offers neither ipcrpc.Reflection nor gRPC "
                                   "server reflection; pass the service's --proto FILE"));
  EXPECT_EQ(LineCount(without.err), 1) << without.err;
  CliResult with = RunCli({"call", endpoint, "clitest.Tester/Add", R"({"a": 1, "b": 1})", "--proto",
                           IPCRPC_CLI_TEST_PROTO});
  EXPECT_EQ(with.exit_code, 0) << with.err;
  EXPECT_THAT(with.out, HasSubstr(R"("sum": "2")"));
}
#endif

TEST_F(CliTest, CallsStreamsPrintingOneJsonObjectPerLine) {
  const std::string shm = UniqueName("clitest-stream");
  auto server = TestServer::Start({"shm:" + shm, "unix:" + Path("stream.sock")});
  ASSERT_NE(server, nullptr);
  for (const std::string& endpoint : {"shm:" + shm, "unix:" + Path("stream.sock")}) {
    CliResult count = RunCli({"call", endpoint, "clitest.Tester/Count", R"({"n": 3})"});
    EXPECT_EQ(count.exit_code, 0) << endpoint << ": " << count.err;
    // Ticks 0, 1, 2, one compact object per line (n 0 is the default: {}).
    EXPECT_EQ(count.out, "{}\n{\"n\":\"1\"}\n{\"n\":\"2\"}\n") << endpoint;

    CliResult total = RunCli({"call", endpoint, "clitest.Tester/Total"},
                             "{\"n\": 1}\n\n{\"n\": 2}\n{\"n\": 39}\n");
    EXPECT_EQ(total.exit_code, 0) << endpoint << ": " << total.err;
    EXPECT_EQ(total.out, "{\"sum\":\"42\"}\n") << endpoint;

    CliResult doubled = RunCli({"call", endpoint, "clitest.Tester/Double"},
                               "{\"n\": 1}\n{\"n\": 21}\n");
    EXPECT_EQ(doubled.exit_code, 0) << endpoint << ": " << doubled.err;
    EXPECT_EQ(doubled.out, "{\"n\":\"2\"}\n{\"n\":\"42\"}\n") << endpoint;
  }
  // A line that is not a Tick: one line naming it, INVALID_ARGUMENT.
  CliResult bad = RunCli({"call", "shm:" + shm, "clitest.Tester/Total"}, "{\"n\": 1}\nnot json\n");
  EXPECT_EQ(bad.exit_code, static_cast<int>(absl::StatusCode::kInvalidArgument)) << bad.err;
  EXPECT_THAT(bad.err, HasSubstr("clitest.Tick"));
  EXPECT_EQ(LineCount(bad.err), 1) << bad.err;
  // A deadline given ends a stream that would not end.
  CliResult flood = RunCli({"call", "shm:" + shm, "clitest.Tester/Flood", "--timeout=300ms"});
  EXPECT_EQ(flood.exit_code, static_cast<int>(absl::StatusCode::kDeadlineExceeded)) << flood.err;
  EXPECT_GT(LineCount(flood.out), 0);
}

TEST_F(CliTest, StatsListsOpenStreamsWithTheirWindows) {
  const std::string shm = UniqueName("clitest-stream-stats");
  auto server = TestServer::Start({"shm:" + shm});
  ASSERT_NE(server, nullptr);
  auto channel = Channel::Connect("shm:" + shm);
  ASSERT_THAT(channel, IsOk());
  // A reader that reads one tick and then nothing: the server's writer uses
  // up the window and waits.
  GenericClientStream flood =
      (*channel)->OpenServerStream("clitest.Tester/Flood", "", CallOptions());
  std::string first;
  ASSERT_TRUE(flood.Read(&first));
  CliResult stats;
  for (int i = 0; i < 100; ++i) {
    stats = RunCli({"stats", "shm:" + shm});
    if (absl::StrContains(stats.out, "waiting for the client to read")) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(stats.exit_code, 0) << stats.err;
  EXPECT_THAT(stats.out, HasSubstr("clitest.Tester/Flood"));
  EXPECT_THAT(stats.out, HasSubstr("stream: 1 received"));
  EXPECT_THAT(stats.out, HasSubstr("(waiting for the client to read)")) << stats.out;
  flood.Cancel();
}

TEST_F(CliTest, BadInputGetsOneLineNamingTheProblemAndAnExitCode) {
  const std::string endpoint = "unix:" + Path("bad.sock");
  auto server = TestServer::Start({endpoint});
  ASSERT_NE(server, nullptr);
  struct Case {
    std::vector<std::string> args;
    int exit_code;
    std::string says;
  };
  const Case cases[] = {
      {{"call", "unix:" + Path("nobody.sock"), "clitest.Tester/Add"}, 14, "nobody.sock"},
      {{"call", "bogus", "clitest.Tester/Add"}, 3, "no scheme"},
      {{"stats", "tcp:1.2.3.4"}, 3, "unknown scheme 'tcp'"},
      {{"call", endpoint, "clitest.Nope/Add"}, 5, "service clitest.Nope is unknown"},
      {{"call", endpoint, "clitest.Tester/Nope"}, 5, "has no method Nope (it has Add, Wait, Metadata, Count, Total, Double, Flood)"},
      {{"call", endpoint, "clitest.Tester/Add", R"({"a": "x"})"}, 3, "not a clitest.AddRequest"},
      {{"call", endpoint, "clitest.Tester/Add", R"({"c": 1})"}, 3, "not a clitest.AddRequest"},
      {{"call", endpoint, "clitest.Tester/Add", "{not json"}, 3, "not a clitest.AddRequest"},
      {{"call", endpoint, "clitest.Tester/Add", "--proto=" + Path("missing.proto")}, 5,
       "missing.proto"},
  };
  for (const Case& c : cases) {
    CliResult result = RunCli(c.args);
    const std::string what = absl::StrJoin(c.args, " ");
    EXPECT_EQ(result.exit_code, c.exit_code) << what << ": " << result.err;
    EXPECT_THAT(result.err, HasSubstr(c.says)) << what;
    EXPECT_EQ(LineCount(result.err), 1) << what << ": " << result.err;
    EXPECT_EQ(result.out, "") << what;
  }
  // Command lines that make no sense: 64 and the usage.
  const std::vector<std::vector<std::string>> usage_errors = {
      {},
      {"frobnicate"},
      {"call", endpoint},
      {"call", endpoint, "NoSlash"},
      {"call", endpoint, "clitest.Tester/Add", "--timeout=soon"},
      {"call", endpoint, "clitest.Tester/Add", "--metadata=novalue"},
      {"stats"},
      {"ls", "--verbose"},
  };
  for (const auto& args : usage_errors) {
    CliResult result = RunCli(args);
    EXPECT_EQ(result.exit_code, 64) << absl::StrJoin(args, " ") << ": " << result.err;
    EXPECT_THAT(result.err, HasSubstr("usage:")) << absl::StrJoin(args, " ");
  }
  // The server served everyone through all this.
  CliResult add = RunCli({"call", endpoint, "clitest.Tester/Add", R"({"a": 1})"});
  EXPECT_EQ(add.exit_code, 0) << add.err;
}

TEST_F(CliTest, ProtoFileReplacesReflectionWhenItIsOff) {
  const std::string endpoint = "unix:" + Path("noreflect.sock");
  auto server = TestServer::Start({endpoint}, {"--reflection=false", "--introspection=false"});
  ASSERT_NE(server, nullptr);
  CliResult without = RunCli({"call", endpoint, "clitest.Tester/Add", R"({"a": 1, "b": 1})"});
  EXPECT_EQ(without.exit_code, static_cast<int>(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(without.err, AllOf(HasSubstr("reflection is off"), HasSubstr("--proto")));

  CliResult with = RunCli({"call", endpoint, "clitest.Tester/Add", R"({"a": 1, "b": 1})",
                           "--proto", IPCRPC_CLI_TEST_PROTO});
  EXPECT_EQ(with.exit_code, 0) << with.err;
  EXPECT_THAT(with.out, HasSubstr(R"("sum": "2")"));

  CliResult stats = RunCli({"stats", endpoint});
  EXPECT_EQ(stats.exit_code, static_cast<int>(absl::StatusCode::kUnimplemented));
  EXPECT_THAT(stats.err, HasSubstr("introspection is off"));
  EXPECT_EQ(LineCount(stats.err), 1) << stats.err;

  // A .proto that does not compile is named, with protoc's complaint.
  const std::string broken = Path("broken.proto");
  FILE* file = std::fopen(broken.c_str(), "w");
  ASSERT_NE(file, nullptr);
  std::fputs("syntax = \"proto3\";\nmessage {\n", file);
  std::fclose(file);
  CliResult bad = RunCli({"call", endpoint, "clitest.Tester/Add", "--proto", broken});
  EXPECT_EQ(bad.exit_code, static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(bad.err, HasSubstr("broken.proto:2"));
  EXPECT_EQ(LineCount(bad.err), 1) << bad.err;
}

TEST_F(CliTest, GcRemovesWhatAKilledServerLeftAndNeverALiveOne) {
  const std::string dead_mq = UniqueName("clitest-gc-dead");
  const std::string live_mq = UniqueName("clitest-gc-live");
  const std::vector<std::string> dead_endpoints = {
      "unix:" + Path("dead.sock"), "fifo:" + Path("dead.fifo"), "mq:" + dead_mq, "shm:" + dead_mq};
  auto dead = TestServer::Start(dead_endpoints);
  ASSERT_NE(dead, nullptr);
  auto live = TestServer::Start({"unix:" + Path("live.sock"), "fifo:" + Path("live.fifo"),
                                 "mq:" + live_mq});
  ASSERT_NE(live, nullptr);
  const pid_t dead_pid = dead->pid();
  dead->Kill();
  ASSERT_EQ(RegistryFiles().size(), 2u);

  CliResult ls = RunCli({"ls"});
  EXPECT_THAT(ls.out, Not(HasSubstr(Path("dead.sock"))));
  EXPECT_THAT(ls.err, HasSubstr("1 stale record"));

  CliResult dry = RunCli({"gc", "--dry-run"});
  EXPECT_EQ(dry.exit_code, 0) << dry.err;
  EXPECT_THAT(dry.out, AllOf(HasSubstr("would remove socket " + Path("dead.sock")),
                             HasSubstr("would remove FIFO " + Path("dead.fifo")),
                             HasSubstr("would remove queue /" + dead_mq),
                             HasSubstr(absl::StrCat("server pid ", dead_pid, " is gone"))));
  EXPECT_THAT(dry.out, AllOf(Not(HasSubstr("live.")), Not(HasSubstr(live_mq))));
  EXPECT_TRUE(std::filesystem::exists(Path("dead.sock")));  // dry: nothing removed
  EXPECT_EQ(RegistryFiles().size(), 2u);

  CliResult gc = RunCli({"gc"});
  EXPECT_EQ(gc.exit_code, 0) << gc.err;
  // Socket, FIFO, queue, record; dead clients' leftovers anywhere on the
  // machine (reply queues are global) may come on top.
  int ours = 0;
  for (absl::string_view line : absl::StrSplit(gc.out, '\n', absl::SkipEmpty())) {
    ours += !absl::StrContains(line, "reply queue") && !absl::StrContains(line, "FIFO directory");
  }
  EXPECT_EQ(ours, 4) << gc.out;
  EXPECT_FALSE(std::filesystem::exists(Path("dead.sock")));
  EXPECT_FALSE(std::filesystem::exists(Path("dead.fifo")));
  mqd_t queue = mq_open(("/" + dead_mq).c_str(), O_RDONLY);
  EXPECT_EQ(queue, static_cast<mqd_t>(-1));
  if (queue != static_cast<mqd_t>(-1)) mq_close(queue);
  EXPECT_EQ(RegistryFiles().size(), 1u);

  // The live server keeps everything and still serves on every endpoint.
  EXPECT_TRUE(std::filesystem::exists(Path("live.sock")));
  EXPECT_TRUE(std::filesystem::exists(Path("live.fifo")));
  for (const std::string& endpoint :
       {"unix:" + Path("live.sock"), "fifo:" + Path("live.fifo"), "mq:" + live_mq}) {
    CliResult add = RunCli({"call", endpoint, "clitest.Tester/Add", R"({"a": 3})"});
    EXPECT_EQ(add.exit_code, 0) << endpoint << ": " << add.err;
  }
  CliResult again = RunCli({"gc"});
  EXPECT_EQ(again.exit_code, 0);
  EXPECT_THAT(again.out, Not(HasSubstr("removed"))) << again.out;
}

TEST_F(CliTest, GcRemovesDeadClientsPrivateObjects) {
  // gc lists reply queues in /dev/mqueue.
  if (absl::Status mounted = EnsureMqueueMounted(); !mounted.ok()) GTEST_SKIP() << mounted;
  // A pid that is certainly gone: a child we reaped.
  absl::StatusOr<pid_t> child = Spawn({"/bin/true"});
  ASSERT_THAT(child, IsOk());
  ASSERT_TRUE(WaitForExit(*child, absl::Seconds(10)).has_value());
  const pid_t gone = *child;

  // What a fifo: client and an mq: client killed mid-connect leave.
  const std::string runtime = Path("ipcrpc");
  ASSERT_TRUE(::mkdir(runtime.c_str(), 0700) == 0 || errno == EEXIST);
  const std::string dead_dir = absl::StrCat(runtime, "/fifo-", gone, "-AbC123");
  const std::string live_dir = absl::StrCat(runtime, "/fifo-", ::getpid(), "-XyZ789");
  for (const std::string& d : {dead_dir, live_dir}) {
    ASSERT_EQ(::mkdir(d.c_str(), 0700), 0);
    ASSERT_EQ(::mkfifo((d + "/c2s").c_str(), 0600), 0);
  }
  const std::string dead_queue = absl::StrCat("/ipcrpc-", gone, "-0-123456");
  struct mq_attr attr = {};
  attr.mq_maxmsg = 1;
  attr.mq_msgsize = 64;
  mqd_t queue = mq_open(dead_queue.c_str(), O_CREAT | O_EXCL | O_RDONLY, 0600, &attr);
  ASSERT_NE(queue, static_cast<mqd_t>(-1)) << std::strerror(errno);
  mq_close(queue);

  CliResult dry = RunCli({"gc", "--dry-run"});
  EXPECT_EQ(dry.exit_code, 0) << dry.err;
  EXPECT_THAT(dry.out, AllOf(HasSubstr("would remove FIFO directory " + dead_dir),
                             HasSubstr("would remove reply queue " + dead_queue),
                             Not(HasSubstr(live_dir))));
  CliResult gc = RunCli({"gc"});
  EXPECT_EQ(gc.exit_code, 0) << gc.err;
  EXPECT_FALSE(std::filesystem::exists(dead_dir));
  EXPECT_TRUE(std::filesystem::exists(live_dir + "/c2s"));
  queue = mq_open(dead_queue.c_str(), O_RDONLY);
  EXPECT_EQ(queue, static_cast<mqd_t>(-1));
  if (queue != static_cast<mqd_t>(-1)) {
    mq_close(queue);
    mq_unlink(dead_queue.c_str());
  }
}

}  // namespace
}  // namespace ipcrpc::testing
