// The fifo: transport's own rules: many clients at once, modes, stale and
// foreign objects, hostile connect records, nothing left on disk.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/match.h"
#include "absl/synchronization/barrier.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "base/syscall.h"
#include "ipcrpc/ipcrpc.h"
#include "tests/conformance/test_service.h"
#include "tests/util/process.h"
#include "tests/util/status_matchers.h"
#include "transports/fifo/fifo_transport.h"

namespace ipcrpc::testing {
namespace {

using ::testing::HasSubstr;

class FifoTransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // A runtime directory of our own, to see exactly what clients leave.
    runtime_ = UniqueName("/tmp/ipcrpc-fifo-runtime");
    ASSERT_EQ(mkdir(runtime_.c_str(), 0700), 0);
    setenv("XDG_RUNTIME_DIR", runtime_.c_str(), 1);
    path_ = UniqueName("/tmp/ipcrpc-fifo-test") + ".fifo";
    endpoint_ = "fifo:" + path_;
  }
  void TearDown() override {
    server_.reset();
    unsetenv("XDG_RUNTIME_DIR");
    // The server registry's directory stays, empty once the servers are gone.
    EXPECT_EQ(Entries(runtime_ + "/ipcrpc/servers"), std::vector<std::string>{})
        << "a server's registry record outlived it";
    rmdir((runtime_ + "/ipcrpc/servers").c_str());
    EXPECT_EQ(Entries(runtime_ + "/ipcrpc"), std::vector<std::string>{})
        << "clients left objects behind";
    rmdir((runtime_ + "/ipcrpc").c_str());
    rmdir(runtime_.c_str());
    unlink(path_.c_str());
  }

  static std::vector<std::string> Entries(const std::string& dir) {
    std::vector<std::string> names;
    DIR* d = opendir(dir.c_str());
    if (d == nullptr) return names;
    while (dirent* e = readdir(d)) {
      std::string name = e->d_name;
      if (name != "." && name != "..") names.push_back(name);
    }
    closedir(d);
    return names;
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

  // Writes raw bytes into the server's FIFO, as a hostile peer would.
  void WriteToServerFifo(const std::string& bytes) {
    internal::UniqueFd fd(open(path_.c_str(), O_WRONLY | O_CLOEXEC));
    ASSERT_TRUE(fd.valid());
    ASSERT_EQ(write(fd.get(), bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  }

  std::string runtime_;
  std::string path_;
  std::string endpoint_;
  TestService service_;
  std::unique_ptr<Server> server_;
};

TEST_F(FifoTransportTest, SixtyFourClientsConnectAtOnceAndAreAllServed) {
  StartServer();
  constexpr int kClients = 64;
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
      const std::string request = "client " + std::to_string(i);
      auto response = (*channel)->CallMethod("test.Test/Echo", request);
      if (response.ok() && *response == request) served++;
    });
  }
  for (auto& client : clients) client.join();
  EXPECT_EQ(served.load(), kClients);
}

TEST_F(FifoTransportTest, ServerFifoIs0600AndRemovedOnShutdown) {
  StartServer();
  struct stat st;
  ASSERT_EQ(lstat(path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ExpectServed();
  server_->Shutdown(absl::ZeroDuration());
  EXPECT_NE(lstat(path_.c_str(), &st), 0);
}

TEST_F(FifoTransportTest, StaleFifoIsReclaimedAndLiveOneIsNotTakenOver) {
  ASSERT_EQ(mkfifo(path_.c_str(), 0600), 0);  // nobody reads it: stale
  StartServer();
  ExpectServed();
  Server second;
  EXPECT_THAT(second.Listen(endpoint_),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr(path_)));
  ExpectServed();
}

TEST_F(FifoTransportTest, PathThatIsNotAFifoIsLeftAlone) {
  int fd = open(path_.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  close(fd);
  Server server;
  EXPECT_THAT(server.Listen(endpoint_),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr(path_)));
  struct stat st;
  ASSERT_EQ(lstat(path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_THAT(Channel::Connect(endpoint_), StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST_F(FifoTransportTest, NoServerIsUnavailable) {
  EXPECT_THAT(Channel::Connect(endpoint_), StatusIs(absl::StatusCode::kUnavailable));
  ASSERT_EQ(mkfifo(path_.c_str(), 0600), 0);  // a FIFO nobody reads
  EXPECT_THAT(Channel::Connect(endpoint_), StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(FifoTransportTest, BadConnectRecordsAreRefusedAndTheServerIsUnharmed) {
  StartServer();
  // Short, garbage, and records that name what is not there or not FIFOs.
  WriteToServerFifo(std::string(100, 'x'));
  WriteToServerFifo("IFCR" + std::string(20, '\x01'));  // a record's start, then junk
  WriteToServerFifo(std::string(internal::kFifoRecordSize, '\xab'));
  WriteToServerFifo(internal::MakeFifoConnectRecord("/nonexistent/dir", 1));
  WriteToServerFifo(internal::MakeFifoConnectRecord("relative/dir", 1));
  WriteToServerFifo(internal::MakeFifoConnectRecord("/tmp/../etc", 1));
  const std::string files = UniqueName("/tmp/ipcrpc-fifo-files");
  ASSERT_EQ(mkdir(files.c_str(), 0700), 0);
  for (const char* name : {"/c2s", "/s2c"}) {
    int fd = open((files + name).c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0);
    close(fd);
  }
  WriteToServerFifo(internal::MakeFifoConnectRecord(files, 1));
  ExpectServed();
  // Nothing that is not a FIFO was deleted.
  struct stat st;
  EXPECT_EQ(lstat((files + "/c2s").c_str(), &st), 0);
  EXPECT_EQ(lstat((files + "/s2c").c_str(), &st), 0);
  unlink((files + "/c2s").c_str());
  unlink((files + "/s2c").c_str());
  rmdir(files.c_str());
}

TEST_F(FifoTransportTest, FifosOfAnotherUidAreRefusedUnlessAllowed) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to make FIFOs of another uid";
  constexpr uid_t kNobody = 65534;
  for (bool allowed : {false, true}) {
    SCOPED_TRACE(allowed ? "allowed" : "refused");
    ServerOptions options;
    if (allowed) options.allowed_uids = {kNobody};
    StartServer(options);
    const std::string dir = UniqueName("/tmp/ipcrpc-fifo-other");
    ASSERT_EQ(mkdir(dir.c_str(), 0700), 0);
    for (const char* name : {"/c2s", "/s2c"}) {
      ASSERT_EQ(mkfifo((dir + name).c_str(), 0600), 0);
      ASSERT_EQ(chown((dir + name).c_str(), kNobody, kNobody), 0);
    }
    internal::UniqueFd s2c(open((dir + "/s2c").c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
    internal::UniqueFd c2s(open((dir + "/c2s").c_str(), O_RDWR | O_CLOEXEC));
    WriteToServerFifo(internal::MakeFifoConnectRecord(dir, getpid()));
    // Accepted: an acknowledgement; refused: EOF (the server closed s2c).
    auto ack = ReadBytes(s2c.get(), internal::kFifoAckSize, absl::Seconds(10));
    if (allowed) {
      EXPECT_THAT(ack, IsOk());
    } else {
      EXPECT_THAT(ack, StatusIs(absl::StatusCode::kUnavailable));
    }
    unlink((dir + "/c2s").c_str());
    unlink((dir + "/s2c").c_str());
    rmdir(dir.c_str());
    ExpectServed();
    server_->Shutdown(absl::ZeroDuration());
    server_.reset();
  }
}

TEST_F(FifoTransportTest, AClientKilledLeavesNothingOnDisk) {
  StartServer();
  int out[2];
  ASSERT_EQ(pipe2(out, O_CLOEXEC), 0);
  internal::UniqueFd out_read(out[0]);
  internal::UniqueFd out_write(out[1]);
  auto client = Spawn({IPCRPC_CONFORMANCE_CLIENT, "--endpoint=" + endpoint_}, {},
                      {"XDG_RUNTIME_DIR=" + runtime_}, out_write.get());
  ASSERT_THAT(client, IsOk());
  out_write.Reset();
  ASSERT_THAT(ReadLine(out_read.get(), absl::Seconds(20)), IsOk());  // connected, in its call
  kill(*client, SIGKILL);
  ASSERT_TRUE(WaitForExit(*client, absl::Seconds(10)).has_value());
  ExpectServed();
  // TearDown checks that the runtime directory is empty.
}

}  // namespace
}  // namespace ipcrpc::testing
