// The unix: transport's own rules: endpoint syntax, mode 0600, stale socket
// files reclaimed, live ones and foreign files never taken over.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "base/syscall.h"
#include "ipcrpc/ipcrpc.h"
#include "tests/conformance/test_service.h"
#include "tests/util/process.h"
#include "tests/transports/other_uid_check.h"
#include "tests/util/status_matchers.h"

namespace ipcrpc::testing {
namespace {

using ::testing::HasSubstr;

std::string SocketPath() { return UniqueName("/tmp/ipcrpc-unix-test") + ".sock"; }

// Leaves a socket file at `path` with nobody listening behind it.
void MakeStaleSocket(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  close(fd);
}

TEST(EndpointTest, MalformedEndpointsAreInvalidArgumentNamingTheEndpoint) {
  Server server;
  EXPECT_THAT(server.Listen("no-scheme"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'no-scheme'")));
  EXPECT_THAT(server.Listen("carrierpigeon:x"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unknown scheme")));
  EXPECT_THAT(server.Listen(":x"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(server.Listen("UNIX:/tmp/x"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(server.Listen("unix:"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'unix:'")));
  EXPECT_THAT(server.Listen("unix:/tmp/" + std::string(200, 'x')),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("over the limit")));
  EXPECT_THAT(server.Listen(std::string("unix:/tmp/a\0b", 13)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("NUL")));
  EXPECT_THAT(server.Listen("pipe:extra"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no address")));
  EXPECT_THAT(Channel::Connect("unix:"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Channel::Connect("pipe:"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("SpawnChild")));
  EXPECT_THAT(Channel::Connect("nonsense"), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(EndpointTest, PipeListenOutsideSpawnChildIsAClearError) {
  unsetenv("IPCRPC_PIPE_FDS");
  Server server;
  EXPECT_THAT(server.Listen("pipe:"),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("SpawnChild")));
  setenv("IPCRPC_PIPE_FDS", "7", 1);
  EXPECT_THAT(server.Listen("pipe:"), StatusIs(absl::StatusCode::kInvalidArgument));
  setenv("IPCRPC_PIPE_FDS", "0,1", 1);  // not pipes under gtest
  auto status = server.Listen("pipe:");
  unsetenv("IPCRPC_PIPE_FDS");
  EXPECT_FALSE(status.ok());
}

TEST(EndpointTest, SpawnChildOfAMissingProgramIsNotFound) {
  EXPECT_THAT(SpawnChild({"/nonexistent/ipcrpc-server"}),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("/nonexistent/ipcrpc-server")));
  EXPECT_THAT(SpawnChild({}), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(UnixTransportTest, NoServerIsUnavailable) {
  EXPECT_THAT(Channel::Connect("unix:" + SocketPath()),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("no server")));
}

TEST(UnixTransportTest, SocketIsCreated0600AndRemovedOnShutdown) {
  const std::string path = SocketPath();
  Server server;
  ASSERT_THAT(server.Listen("unix:" + path), IsOk());
  ASSERT_THAT(server.Start(), IsOk());
  struct stat st;
  ASSERT_EQ(lstat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  server.Shutdown(absl::ZeroDuration());
  EXPECT_NE(lstat(path.c_str(), &st), 0);
}

TEST(UnixTransportTest, ModeCanBeWidened) {
  const std::string path = SocketPath();
  ServerOptions options;
  options.mode = 0660;
  Server server(options);
  ASSERT_THAT(server.Listen("unix:" + path), IsOk());
  struct stat st;
  ASSERT_EQ(lstat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
}

TEST(UnixTransportTest, StaleSocketIsReclaimed) {
  const std::string path = SocketPath();
  MakeStaleSocket(path);
  TestService service;
  Server server;
  ASSERT_THAT(server.RegisterService(&service), IsOk());
  ASSERT_THAT(server.Listen("unix:" + path), IsOk());
  ASSERT_THAT(server.Start(), IsOk());
  auto channel = Channel::Connect("unix:" + path);
  ASSERT_THAT(channel, IsOk());
  EXPECT_THAT((*channel)->CallMethod("test.Test/Echo", "x"), IsOk());
}

TEST(UnixTransportTest, LiveServerIsNeverTakenOver) {
  const std::string path = SocketPath();
  TestService service;
  Server first;
  ASSERT_THAT(first.RegisterService(&service), IsOk());
  ASSERT_THAT(first.Listen("unix:" + path), IsOk());
  ASSERT_THAT(first.Start(), IsOk());
  Server second;
  EXPECT_THAT(second.Listen("unix:" + path),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr(path)));
  // The first still owns the file and serves.
  auto channel = Channel::Connect("unix:" + path);
  ASSERT_THAT(channel, IsOk());
  EXPECT_THAT((*channel)->CallMethod("test.Test/Echo", "x"), IsOk());
  second.Shutdown(absl::ZeroDuration());
  struct stat st;
  EXPECT_EQ(lstat(path.c_str(), &st), 0) << "the failed server removed the live one's socket";
}

TEST(UnixTransportTest, ForeignFileIsNotTouched) {
  const std::string path = SocketPath();
  int fd = open(path.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, "data", 4), 4);
  close(fd);
  Server server;
  EXPECT_THAT(server.Listen("unix:" + path),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("not a socket")));
  struct stat st;
  ASSERT_EQ(lstat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_size, 4);
  unlink(path.c_str());
}

TEST(UnixTransportTest, AbstractNamesWork) {
  const std::string endpoint = "unix:@" + UniqueName("ipcrpc-abstract");
  TestService service;
  Server server;
  ASSERT_THAT(server.RegisterService(&service), IsOk());
  ASSERT_THAT(server.Listen(endpoint), IsOk());
  ASSERT_THAT(server.Start(), IsOk());
  Server second;
  EXPECT_THAT(second.Listen(endpoint), StatusIs(absl::StatusCode::kAlreadyExists));
  auto channel = Channel::Connect(endpoint);
  ASSERT_THAT(channel, IsOk());
  EXPECT_THAT((*channel)->CallMethod("test.Test/Echo", "x"), IsOk());
}

}  // namespace
}  // namespace ipcrpc::testing

namespace ipcrpc::testing {
namespace {

TEST(UnixTransportTest, PeersOfAnotherUidAreRefusedUnlessAllowed) {
  // Abstract names have no file mode, so only the uid check stands in the way.
  const std::string skip = CheckOtherUidRefusedUnlessAllowed(
      [] { return "unix:@" + UniqueName("ipcrpc-uid"); });
  if (!skip.empty()) GTEST_SKIP() << skip;
}

}  // namespace
}  // namespace ipcrpc::testing
