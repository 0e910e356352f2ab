#include "tests/conformance/conformance_server_process.h"

#include <fcntl.h>
#include <mqueue.h>
#include <sys/mman.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/syscall.h"
#include "gtest/gtest.h"
#include "rpc/server_registry.h"
#include "tests/util/process.h"
#include "transports/fifo/fifo_transport.h"
#include "transports/mq/mq_wire.h"
#include "transports/shm/shm_handshake.h"
#include "transports/shm/shm_region.h"
#include "transports/shm/shm_ring.h"

namespace ipcrpc::testing {

using internal::UniqueFd;

absl::StatusOr<std::unique_ptr<ConformanceServerProcess>> ConformanceServerProcess::Start(
    const TransportTraits& transport, const std::vector<std::string>& server_args,
    const std::string& name) {
  std::unique_ptr<ConformanceServerProcess> server(new ConformanceServerProcess());
  server->transport_ = transport;
  if (transport.name == "unix" || transport.name == "fifo" || transport.name == "mq" ||
      transport.name == "shm" || transport.name == "grpc" || transport.name == "grpcunix") {
    // Servers with a name: a separate process that says when it is ready.
    server->socket_path_ = !name.empty() ? name
                           : (transport.name == "mq" || transport.name == "shm")
                               ? UniqueName("ipcrpc-conformance")
                               : UniqueName("/tmp/ipcrpc-conformance") + "." + transport.name;
    server->endpoint_ = transport.name + ":" + server->socket_path_;
    // gRPC over TCP on a port the server picks, or over a Unix socket.
    if (transport.name == "grpc") server->endpoint_ = "grpc:127.0.0.1:0";
    if (transport.name == "grpcunix") server->endpoint_ = "grpc:unix:" + server->socket_path_;
    int ready[2];
    if (pipe2(ready, O_CLOEXEC) < 0) return absl::InternalError("pipe2");
    UniqueFd ready_read(ready[0]);
    UniqueFd ready_write(ready[1]);
    std::vector<std::string> argv = {IPCRPC_CONFORMANCE_SERVER,
                                     "--endpoint=" + server->endpoint_,
                                     absl::StrCat("--ready_fd=", ready_write.get())};
    argv.insert(argv.end(), server_args.begin(), server_args.end());
    auto pid = Spawn(argv, {ready_write.get()});
    if (!pid.ok()) return pid.status();
    server->pid_ = *pid;
    server->we_spawned_ = true;
    ready_write.Reset();
    auto line = ReadLine(ready_read.get(), absl::Seconds(20));
    if (!line.ok() || *line != "READY") {
      return absl::InternalError(absl::StrCat("conformance_server did not start: ",
                                              line.ok() ? *line : line.status().ToString()));
    }
    auto bound = ReadLine(ready_read.get(), absl::Seconds(20));
    if (!bound.ok()) return bound.status();
    server->endpoint_ = *bound;
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
  // A SIGKILLed server could not remove its registry record; retire it as
  // the next server on the endpoint would (`ipcrpc gc` otherwise).
  absl::Cleanup retire_record = [this] {
    if (killed_) internal::RemoveStaleRecordsSharing({endpoint_});
  };
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
    if (transport_.name == "shm") {
      // Nothing on disk to check: the name is abstract, the memory a memfd.
    } else if (transport_.name == "mq") {
      UniqueFd queue(static_cast<int>(mq_open(("/" + socket_path_).c_str(), O_RDONLY | O_CLOEXEC)));
      EXPECT_FALSE(queue.valid()) << "queue /" << socket_path_ << " was left behind";
    } else if (!socket_path_.empty()) {
      struct stat st;
      EXPECT_NE(lstat(socket_path_.c_str(), &st), 0)
          << socket_path_ << " was left behind by a clean shutdown";
    }
  } else {
    WaitForExit(pid_, absl::Seconds(20));
  }
  // After a SIGKILL the socket file stays (the next server reclaims it); the
  // test removes it so that nothing is left.
  if (transport_.name == "mq") {
    mq_unlink(("/" + socket_path_).c_str());
  } else if (transport_.name == "shm") {
  } else if (!socket_path_.empty()) {
    unlink(socket_path_.c_str());
  }
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

namespace {

// shm: writes `bytes` into ring 0 of a raw peer's region by hand, publishes,
// rings the server's doorbell.
bool ShmWrite(ConformanceServerProcess::RawPeer& peer, std::string_view bytes) {
  char* base = peer.shm_region.get();
  auto* control = reinterpret_cast<internal::ShmRingControl*>(base + 64);
  char* data = base + internal::kShmHeaderSize;
  if (bytes.size() > peer.shm_ring_size) return false;
  // Wait (10 s at most) for the server to have read enough to make room.
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (peer.shm_position + bytes.size() -
             control->consumer_position.load(std::memory_order_acquire) >
         peer.shm_ring_size) {
    if (absl::Now() > give_up) return false;
    // The server closed this connection: no room will come.
    struct pollfd closed = {peer.shm_socket.get(), POLLRDHUP, 0};
    if (poll(&closed, 1, 0) > 0) return false;
    usleep(100);
  }
  for (size_t i = 0; i < bytes.size(); ++i) {
    data[(peer.shm_position + i) & (peer.shm_ring_size - 1)] = bytes[i];
  }
  peer.shm_position += bytes.size();
  control->producer_position.store(peer.shm_position, std::memory_order_release);
  return peer.RingShm();
}

}  // namespace

bool ConformanceServerProcess::RawPeer::RingShm() {
  // A full queue (EAGAIN) holds rings the server has yet to take.
  return send(shm_doorbell.get(), "!", 1, MSG_DONTWAIT | MSG_NOSIGNAL) == 1 || errno == EAGAIN;
}

// A raw peer's write to a server that may have closed the connection (what
// several hostile tests provoke): EPIPE, not death by SIGPIPE. Before, a
// write after the server's close killed the test (seen under ASan with the
// other CPU busy, where ctest then waited for the server child until its
// timeout).
namespace {
bool RawWrite(int fd, std::string_view bytes) {
  internal::PrepareForSigpipe();
  return internal::WithoutSigpipe([&] { return ::write(fd, bytes.data(), bytes.size()); }) ==
         static_cast<ssize_t>(bytes.size());
}
}  // namespace

bool ConformanceServerProcess::RawPeer::SendMessage(std::string_view frame) {
  return SendAnnounced(static_cast<uint32_t>(frame.size()), frame);
}

bool ConformanceServerProcess::RawPeer::SendPartial(uint32_t announced, size_t sent) {
  return SendAnnounced(announced, std::string(sent, 'p'));
}

// A message announced as `announced` bytes long, of which `body` is sent (the
// whole message when they agree): a length prefix, or an mq: DATA fragment.
bool ConformanceServerProcess::RawPeer::SendAnnounced(uint32_t announced, std::string_view body) {
  if (mq_server.valid()) {
    std::string message(internal::kMqHeaderSize, '\0');
    internal::MqHeader header;
    header.kind = internal::MqKind::kData;
    header.connection = mq_connection;
    header.total_length = announced;
    header.last = body.size() == announced;
    internal::EncodeMqHeader(header, message.data());
    message.append(body);
    // Bounded, as on unix: (see OpenRawPeer).
    timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 20;
    return mq_timedsend(mq_server.get(), message.data(), message.size(), 0, &until) == 0;
  }
  std::string message(reinterpret_cast<const char*>(&announced), 4);
  message.append(body);
  if (shm_region != nullptr) return ShmWrite(*this, message);
  return RawWrite(to_server.get(), message);
}

bool ConformanceServerProcess::RawPeer::SendOversized() {
  if (shm_region != nullptr) return ShmWrite(*this, std::string_view("\xff\xff\xff\xffxxxx", 8));
  if (mq_server.valid()) {
    std::string message(internal::kMqHeaderSize, '\0');
    internal::MqHeader header;
    header.kind = internal::MqKind::kData;
    header.connection = mq_connection;
    header.total_length = 0xffffffff;
    header.last = false;
    internal::EncodeMqHeader(header, message.data());
    message.append("xxxx");
    return mq_send(mq_server.get(), message.data(), message.size(), 0) == 0;
  }
  return RawWrite(to_server.get(), std::string_view("\xff\xff\xff\xffxxxx", 8));
}

bool ConformanceServerProcess::RawPeer::WaitClosed(absl::Duration timeout) {
  if (mq_reply.valid()) {
    // The server says CLOSE on our reply queue.
    const absl::Time give_up = absl::Now() + timeout;
    std::vector<char> buffer(65536);
    while (absl::Now() < give_up) {
      struct pollfd pfd = {mq_reply.get(), POLLIN, 0};
      if (poll(&pfd, 1, 100) <= 0) continue;
      ssize_t n = mq_receive(mq_reply.get(), buffer.data(), buffer.size(), nullptr);
      if (n >= static_cast<ssize_t>(internal::kMqHeaderSize) &&
          buffer[0] == static_cast<char>(internal::MqKind::kClose)) {
        return true;
      }
    }
    return false;
  }
  if (shm_socket.valid()) return WaitForEof(shm_socket.get(), timeout);
  return WaitForEof(from_server.get(), timeout);
}

void ConformanceServerProcess::RawPeer::Finish() {
  if (mq_server.valid()) {
    // mq: has no EOF (and our pid lives on): say CLOSE.
    std::string message(internal::kMqHeaderSize, '\0');
    internal::MqHeader header;
    header.kind = internal::MqKind::kClose;
    header.connection = mq_connection;
    internal::EncodeMqHeader(header, message.data());
    mq_send(mq_server.get(), message.data(), message.size(), 0);
  }
  to_server.Reset();
  mq_server.Reset();
  shm_socket.Reset();
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
    // A send the server never makes room for fails after 20 s (the test
    // then says what it saw) instead of hanging until ctest's timeout.
    const timeval send_timeout = {20, 0};
    setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof(send_timeout));
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
  if (transport_.name == "shm") {
    // The shm: handshake by hand (docs/PROTOCOL.md): a sealed memfd and the
    // server's end of a datagram socket pair in a HELLO over the abstract
    // socket.
    peer.shm_ring_size = 4096;
    peer.shm_socket = UniqueFd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr = {};
    addr.sun_family = AF_UNIX;
    const std::string name = "ipcrpc-shm-" + socket_path_;
    std::memcpy(addr.sun_path + 1, name.data(), name.size());
    if (connect(peer.shm_socket.get(), reinterpret_cast<sockaddr*>(&addr),
                offsetof(sockaddr_un, sun_path) + 1 + name.size()) < 0) {
      return absl::ErrnoToStatus(errno, "connect");
    }
    UniqueFd memfd(memfd_create("raw", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    const size_t length = internal::kShmHeaderSize + 2 * peer.shm_ring_size;
    if (ftruncate(memfd.get(), length) < 0 ||
        fcntl(memfd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
      return absl::ErrnoToStatus(errno, "memfd");
    }
    void* base = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED, memfd.get(), 0);
    if (base == MAP_FAILED) return absl::ErrnoToStatus(errno, "mmap");
    peer.shm_region = std::shared_ptr<char>(static_cast<char*>(base),
                                            [length](char* p) { munmap(p, length); });
    std::memcpy(peer.shm_region.get(), "ISHR\x02\x00\x00\x00", 8);
    uint64_t ring = peer.shm_ring_size;
    std::memcpy(peer.shm_region.get() + 8, &ring, 8);
    int bell[2];
    if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, bell) < 0) {
      return absl::ErrnoToStatus(errno, "socketpair");
    }
    peer.shm_doorbell = UniqueFd(bell[0]);
    peer.shm_server_end = UniqueFd(bell[1]);
    char hello[internal::kShmHelloSize] = {'I', 'S', 'H', 'M', 2, 0, 0, 0};
    std::memcpy(hello + 8, &ring, 8);
    struct iovec iov = {hello, sizeof(hello)};
    alignas(struct cmsghdr) char control[CMSG_SPACE(2 * sizeof(int))] = {};
    struct msghdr msg = {};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(2 * sizeof(int));
    const int fds[2] = {memfd.get(), peer.shm_server_end.get()};
    std::memcpy(CMSG_DATA(c), fds, sizeof(fds));
    if (sendmsg(peer.shm_socket.get(), &msg, MSG_NOSIGNAL) != sizeof(hello)) {
      return absl::ErrnoToStatus(errno, "sendmsg");
    }
    auto ack = ReadBytes(peer.shm_socket.get(), 8, absl::Seconds(10));
    if (!ack.ok()) return ack.status();
    return peer;
  }
  if (transport_.name == "mq") {
    // The mq: handshake by hand (docs/PROTOCOL.md).
    const std::string server_name = "/" + socket_path_;
    const std::string reply_name = "/" + UniqueName("ipcrpc-raw-mq");
    struct mq_attr attr = {};
    // Small, so that many raw peers fit in RLIMIT_MSGQUEUE (hostile_test).
    attr.mq_maxmsg = 4;
    attr.mq_msgsize = 1024;
    peer.mq_reply = UniqueFd(static_cast<int>(
        mq_open(reply_name.c_str(), O_CREAT | O_EXCL | O_RDONLY | O_CLOEXEC, 0600, &attr)));
    peer.mq_server = UniqueFd(static_cast<int>(mq_open(server_name.c_str(), O_WRONLY | O_CLOEXEC)));
    if (!peer.mq_reply.valid() || !peer.mq_server.valid()) {
      mq_unlink(reply_name.c_str());
      return absl::ErrnoToStatus(errno, "mq_open");
    }
    std::string connect(internal::kMqHeaderSize, '\0');
    internal::MqHeader header;
    header.kind = internal::MqKind::kConnect;
    internal::EncodeMqHeader(header, connect.data());
    uint32_t fields[2] = {1, static_cast<uint32_t>(getpid())};
    connect.append("IMQC");
    connect.append(reinterpret_cast<const char*>(fields), sizeof(fields));
    connect.append(reply_name);
    mq_send(peer.mq_server.get(), connect.data(), connect.size(), 31);
    std::vector<char> buffer(8192);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 10;
    ssize_t n = mq_timedreceive(peer.mq_reply.get(), buffer.data(), buffer.size(), nullptr,
                                &deadline);
    mq_unlink(reply_name.c_str());
    if (n < static_cast<ssize_t>(internal::kMqHeaderSize)) return absl::InternalError("no ACCEPT");
    auto accept = internal::DecodeMqHeader(std::string_view(buffer.data(), n));
    if (!accept.ok()) return accept.status();
    peer.mq_connection = accept->connection;
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
