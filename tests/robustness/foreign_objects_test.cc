// Objects of another uid are never deleted or replaced: a server that finds
// a stale socket file, FIFO or queue of another owner on its endpoint leaves
// it and says whose it is (FAILED_PRECONDITION), and `ipcrpc gc`'s helpers
// neither list nor remove it, even as root. The objects are real, made by
// root and given to uid 65534 (chown/fchown), as another user's server that
// died would have left them.
#include <fcntl.h>
#include <mqueue.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "base/syscall.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ipcrpc/ipcrpc.h"
#include "tests/conformance/test_service.h"
#include "tests/util/process.h"
#include "tests/util/status_matchers.h"
#include "transports/leftovers.h"
#include "base/runtime_dir.h"
#include "transports/mq/mq_liveness.h"

namespace ipcrpc::testing {
namespace {

using ::testing::HasSubstr;

constexpr uid_t kOtherUid = 65534;

// Listen + Start on `endpoint` must fail FAILED_PRECONDITION naming the owner.
void ExpectRefusedAsNotOurs(const std::string& endpoint) {
  TestService service;
  Server server;
  ASSERT_THAT(server.RegisterService(&service), IsOk());
  absl::Status status = server.Listen(endpoint);
  if (status.ok()) status = server.Start();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_THAT(status.message(), HasSubstr("belongs to uid 65534"));
  server.Shutdown(absl::ZeroDuration());
}

class ForeignObjectsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root to give objects to another uid";
  }
};

TEST_F(ForeignObjectsTest, AStaleSocketFileOfAnotherUidIsLeftAlone) {
  const std::string path = UniqueName("/tmp/ipcrpc-foreign") + ".sock";
  absl::Cleanup remove = [&] { unlink(path.c_str()); };
  {
    internal::UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr = {};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    ASSERT_EQ(bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  }  // closed: nobody serves it, the file stays (stale)
  ASSERT_EQ(chown(path.c_str(), kOtherUid, kOtherUid), 0);
  struct stat before;
  ASSERT_EQ(lstat(path.c_str(), &before), 0);
  ExpectRefusedAsNotOurs("unix:" + path);
  struct stat after;
  ASSERT_EQ(lstat(path.c_str(), &after), 0) << "the other uid's socket file was deleted";
  EXPECT_EQ(after.st_ino, before.st_ino) << "the other uid's socket file was replaced";
  absl::StatusOr<std::optional<internal::StaleObject>> stale =
      internal::FindStaleEndpointObject("unix:" + path);
  ASSERT_THAT(stale, IsOk());
  EXPECT_FALSE(stale->has_value()) << "gc would remove the other uid's socket file";
}

TEST_F(ForeignObjectsTest, AStaleFifoOfAnotherUidIsLeftAlone) {
  const std::string path = UniqueName("/tmp/ipcrpc-foreign") + ".fifo";
  absl::Cleanup remove = [&] { unlink(path.c_str()); };
  ASSERT_EQ(mkfifo(path.c_str(), 0600), 0);
  ASSERT_EQ(chown(path.c_str(), kOtherUid, kOtherUid), 0);
  struct stat before;
  ASSERT_EQ(lstat(path.c_str(), &before), 0);
  ExpectRefusedAsNotOurs("fifo:" + path);
  struct stat after;
  ASSERT_EQ(lstat(path.c_str(), &after), 0) << "the other uid's FIFO was deleted";
  EXPECT_EQ(after.st_ino, before.st_ino) << "the other uid's FIFO was replaced";
}

TEST_F(ForeignObjectsTest, AStaleQueueOfAnotherUidIsLeftAlone) {
  const std::string name = UniqueName("ipcrpc-foreign");
  const std::string path = "/" + name;
  struct mq_attr attr = {};
  attr.mq_maxmsg = 1;
  attr.mq_msgsize = 64;
  internal::UniqueFd queue(static_cast<int>(
      mq_open(path.c_str(), O_CREAT | O_EXCL | O_RDONLY | O_CLOEXEC, 0600, &attr)));
  ASSERT_TRUE(queue.valid()) << std::strerror(errno);
  absl::Cleanup remove = [&] { mq_unlink(path.c_str()); };
  ASSERT_EQ(fchown(queue.get(), kOtherUid, kOtherUid), 0);
  queue.Reset();
  ExpectRefusedAsNotOurs("mq:" + name);
  absl::StatusOr<uid_t> owner = internal::MqQueueOwner(name);
  ASSERT_THAT(owner, IsOk()) << "the other uid's queue was deleted";
  EXPECT_EQ(*owner, kOtherUid) << "the other uid's queue was replaced";
  // gc: not listed, and not removed if asked.
  absl::StatusOr<std::optional<internal::StaleObject>> stale =
      internal::FindStaleEndpointObject("mq:" + name);
  ASSERT_THAT(stale, IsOk());
  EXPECT_FALSE(stale->has_value()) << "gc would remove the other uid's queue";
  absl::Status removed = internal::RemoveStaleMqQueue(name);
  EXPECT_EQ(removed.code(), absl::StatusCode::kFailedPrecondition) << removed;
  EXPECT_THAT(internal::MqQueueOwner(name), IsOk()) << "RemoveStaleMqQueue deleted it";
}

// Another user of a shared directory (here /tmp-like: world-writable,
// sticky) pre-creates the temporary names a server of ours would use to
// publish its socket (before: ".ipcrpc-<pid>-<n>.tmp", predictable). The
// names are unpredictable now, and one found taken is tried again, so the
// server starts all the same; the other user's files stay.
TEST_F(ForeignObjectsTest, PreCreatedTemporaryNamesDoNotStopAServer) {
  char dir_template[] = "/tmp/ipcrpc-squat-XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string dir = dir_template;
  ASSERT_EQ(chmod(dir.c_str(), 01777), 0);
  std::vector<std::string> squatted;
  for (int n = 0; n < 1000; ++n) {
    squatted.push_back(absl::StrCat(dir, "/.ipcrpc-", getpid(), "-", n, ".tmp"));
    internal::UniqueFd fd(open(squatted.back().c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644));
    ASSERT_TRUE(fd.valid());
    ASSERT_EQ(fchown(fd.get(), kOtherUid, kOtherUid), 0);
  }
  const std::string endpoint = "unix:" + dir + "/server.sock";
  absl::Cleanup remove = [&] {
    for (const std::string& path : squatted) unlink(path.c_str());
    unlink((dir + "/server.sock").c_str());
    rmdir(dir.c_str());
  };
  {
    TestService service;
    Server server;
    ASSERT_THAT(server.RegisterService(&service), IsOk());
    ASSERT_THAT(server.Listen(endpoint), IsOk());
    ASSERT_THAT(server.Start(), IsOk());
    auto channel = Channel::Connect(endpoint);
    ASSERT_THAT(channel, IsOk());
    EXPECT_THAT((*channel)->CallMethod("test.Test/Echo", "served"), IsOk());
    server.Shutdown(absl::ZeroDuration());
  }
  for (const std::string& path : squatted) {
    struct stat st;
    ASSERT_EQ(lstat(path.c_str(), &st), 0) << path << " (the other user's) was removed";
  }
}

// Another user creates /tmp/ipcrpc-<uid> for a uid before it ever runs,
// which made every fifo: client and server registry record of that uid fail
// (FAILED_PRECONDITION). That uid's processes use $HOME/.ipcrpc-runtime
// instead; the other user's directory stays.
TEST_F(ForeignObjectsTest, ARuntimeDirectoryTakenInTmpGivesWayToTheHomeDirectory) {
  constexpr uid_t kVictim = 65533;
  const std::string taken = absl::StrCat("/tmp/ipcrpc-", kVictim);
  struct stat st;
  if (lstat(taken.c_str(), &st) == 0) GTEST_SKIP() << taken << " exists already";
  ASSERT_EQ(mkdir(taken.c_str(), 0700), 0);
  ASSERT_EQ(chown(taken.c_str(), kOtherUid, kOtherUid), 0);
  char home_template[] = "/tmp/ipcrpc-home-XXXXXX";
  ASSERT_NE(mkdtemp(home_template), nullptr);
  const std::string home = home_template;
  ASSERT_EQ(chown(home.c_str(), kVictim, kVictim), 0);
  const std::string expected = home + "/.ipcrpc-runtime";
  absl::Cleanup remove = [&] {
    rmdir(expected.c_str());
    rmdir(home.c_str());
    rmdir(taken.c_str());
  };
  const pid_t child = fork();
  if (child == 0) {
    unsetenv("XDG_RUNTIME_DIR");
    setenv("HOME", home.c_str(), 1);
    if (setgid(kVictim) != 0 || setuid(kVictim) != 0) _exit(3);
    absl::StatusOr<std::string> dir = internal::RuntimeDirectory();
    _exit(dir.ok() && *dir == expected ? 0 : 1);
  }
  ASSERT_GT(child, 0);
  std::optional<int> status = WaitForExit(child, absl::Seconds(30));
  ASSERT_TRUE(status.has_value() && WIFEXITED(*status));
  if (WEXITSTATUS(*status) == 3) GTEST_SKIP() << "cannot act as uid " << kVictim;
  EXPECT_EQ(WEXITSTATUS(*status), 0) << "the runtime directory did not fall back to " << expected;
  ASSERT_EQ(lstat(taken.c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, kOtherUid) << "the other user's directory was touched";
  EXPECT_EQ(lstat(expected.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
}

}  // namespace
}  // namespace ipcrpc::testing
