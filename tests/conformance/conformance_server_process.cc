#include "tests/conformance/conformance_server_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/util/process.h"
#include "transports/fifo/fifo_transport.h"

namespace ipcrpc::testing {

using internal::UniqueFd;

absl::StatusOr<std::unique_ptr<ConformanceServerProcess>> ConformanceServerProcess::Start(
    const TransportTraits& transport) {
  std::unique_ptr<ConformanceServerProcess> server(new ConformanceServerProcess());
  server->transport_ = transport;
  if (transport.name == "unix" || transport.name == "fifo") {
    // Servers with a path: a separate process that says when it is ready.
    server->socket_path_ = UniqueName("/tmp/ipcrpc-conformance") + "." + transport.name;
    server->endpoint_ = transport.name + ":" + server->socket_path_;
    int ready[2];
    if (pipe2(ready, O_CLOEXEC) < 0) return absl::InternalError("pipe2");
    UniqueFd ready_read(ready[0]);
    UniqueFd ready_write(ready[1]);
    auto pid = Spawn({IPCRPC_CONFORMANCE_SERVER, "--endpoint=" + server->endpoint_,
                      absl::StrCat("--ready_fd=", ready_write.get())},
                     {ready_write.get()});
    if (!pid.ok()) return pid.status();
    server->pid_ = *pid;
    server->we_spawned_ = true;
    ready_write.Reset();
    auto line = ReadLine(ready_read.get(), absl::Seconds(20));
    if (!line.ok() || *line != "READY") {
      return absl::InternalError(absl::StrCat("conformance_server did not start: ",
                                              line.ok() ? *line : line.status().ToString()));
    }
    auto channel = Channel::Connect(server->endpoint_);
    if (!channel.ok()) return channel.status();
    server->channel_ = *std::move(channel);
  } else if (transport.name == "pipe") {
    server->endpoint_ = "pipe:";
    auto channel = SpawnChild({IPCRPC_CONFORMANCE_SERVER, "--endpoint=pipe:"});
    if (!channel.ok()) return channel.status();
    server->channel_ = *std::move(channel);
    auto pid = server->channel_->CallMethod("test.Test/Pid", "");
    if (!pid.ok()) return pid.status();
    if (!absl::SimpleAtoi(*pid, &server->pid_)) return absl::InternalError("bad pid");
  } else {
    return absl::UnimplementedError("no conformance server for " + transport.name);
  }
  return server;
}

ConformanceServerProcess::~ConformanceServerProcess() {
  channel_.reset();
  if (!we_spawned_) return;
  if (!killed_) {
    kill(pid_, SIGTERM);
    std::optional<int> status = WaitForExit(pid_, absl::Seconds(20));
    EXPECT_TRUE(status.has_value()) << "the server did not exit on SIGTERM";
    if (status.has_value()) {
      EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0)
          << "the server did not exit cleanly: wait status " << *status;
    } else {
      kill(pid_, SIGKILL);
      WaitForExit(pid_, absl::Seconds(20));
    }
    if (!socket_path_.empty()) {
      struct stat st;
      EXPECT_NE(lstat(socket_path_.c_str(), &st), 0)
          << socket_path_ << " was left behind by a clean shutdown";
    }
  } else {
    WaitForExit(pid_, absl::Seconds(20));
  }
  // After a SIGKILL the socket file stays (the next server reclaims it); the
  // test removes it so that nothing is left.
  if (!socket_path_.empty()) unlink(socket_path_.c_str());
}

absl::StatusOr<std::shared_ptr<Channel>> ConformanceServerProcess::NewChannel() const {
  if (!transport_.many_clients) {
    return absl::FailedPreconditionError(transport_.name + " has one client only");
  }
  return Channel::Connect(endpoint_);
}

std::vector<std::string> ConformanceServerProcess::ClientArgs() const {
  if (transport_.name == "pipe") {
    return {"--endpoint=pipe:", std::string("--server=") + IPCRPC_CONFORMANCE_SERVER};
  }
  return {"--endpoint=" + endpoint_};
}

void ConformanceServerProcess::Kill() {
  killed_ = true;
  kill(pid_, SIGKILL);
}

absl::StatusOr<ConformanceServerProcess::RawPeer> ConformanceServerProcess::OpenRawPeer() const {
  RawPeer peer;
  if (transport_.name == "unix") {
    UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr = {};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, socket_path_.c_str(), sizeof(addr.sun_path) - 1);
    if (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) < 0) {
      return absl::ErrnoToStatus(errno, "connect");
    }
    peer.from_server = UniqueFd(dup(fd.get()));
    peer.to_server = std::move(fd);
    return peer;
  }
  if (transport_.name == "pipe") {
    int to_child[2];
    int from_child[2];
    if (pipe2(to_child, O_CLOEXEC) < 0 || pipe2(from_child, O_CLOEXEC) < 0) {
      return absl::InternalError("pipe2");
    }
    UniqueFd child_read(to_child[0]);
    UniqueFd child_write(from_child[1]);
    peer.to_server = UniqueFd(to_child[1]);
    peer.from_server = UniqueFd(from_child[0]);
    auto pid = Spawn({IPCRPC_CONFORMANCE_SERVER, "--endpoint=pipe:"},
                     {child_read.get(), child_write.get()},
                     {absl::StrCat("IPCRPC_PIPE_FDS=", child_read.get(), ",", child_write.get())});
    if (!pid.ok()) return pid.status();
    peer.own_server = *pid;
    return peer;
  }
  if (transport_.name == "fifo") {
    // The fifo: handshake by hand (docs/PROTOCOL.md): a private directory with
    // two FIFOs, a connect record, an 8-byte acknowledgement.
    std::string dir = UniqueName("/tmp/ipcrpc-raw-fifo");
    if (mkdir(dir.c_str(), 0700) < 0) return absl::ErrnoToStatus(errno, "mkdir");
    const std::string c2s = dir + "/c2s";
    const std::string s2c = dir + "/s2c";
    if (mkfifo(c2s.c_str(), 0600) < 0 || mkfifo(s2c.c_str(), 0600) < 0) {
      return absl::ErrnoToStatus(errno, "mkfifo");
    }
    peer.from_server = UniqueFd(open(s2c.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
    peer.to_server = UniqueFd(open(c2s.c_str(), O_RDWR | O_CLOEXEC));
    UniqueFd server_fifo(open(socket_path_.c_str(), O_WRONLY | O_CLOEXEC));
    const std::string record = internal::MakeFifoConnectRecord(dir, getpid());
    if (write(server_fifo.get(), record.data(), record.size()) !=
        static_cast<ssize_t>(record.size())) {
      return absl::ErrnoToStatus(errno, "write connect record");
    }
    auto ack = ReadBytes(peer.from_server.get(), internal::kFifoAckSize, absl::Seconds(10));
    unlink(c2s.c_str());
    unlink(s2c.c_str());
    rmdir(dir.c_str());
    if (!ack.ok()) return ack.status();
    return peer;
  }
  return absl::UnimplementedError("no raw peer for " + transport_.name);
}

}  // namespace ipcrpc::testing
