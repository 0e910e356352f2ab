// The shm: client side: the connector, which makes the region and the
// doorbell pair, passes them to the server in a HELLO and waits for its ACK.
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <new>
#include <string>

#include "absl/strings/str_cat.h"
#include "asio/io_context.hpp"
#include "base/clock.h"
#include "base/little_endian.h"
#include "base/status_macros.h"
#include "base/syscall.h"
#include "transports/shm/shm_connection.h"
#include "transports/shm/shm_handshake.h"
#include "transports/shm/shm_region.h"
#include "transports/shm/shm_ring.h"
#include "transports/shm/shm_transport.h"
#include "transports/unix/unix_transport.h"

namespace ipcrpc::internal {
namespace {

class ShmConnector final : public Connector {
 public:
  ShmConnector(Endpoint endpoint, TransportOptions options)
      : endpoint_(std::move(endpoint)), options_(std::move(options)) {}

  absl::StatusOr<std::shared_ptr<Connection>> Connect(asio::io_context&,
                                                      int64_t call_deadline_ns) override {
    const std::string& text = endpoint_.text;
    const TransportOptions::ConnectDeadline deadline = options_.ConnectDeadlineFor(call_deadline_ns);
    const int64_t deadline_ns = deadline.ns;
    size_t ring_size = options_.shm_ring_size;
    if (ring_size < kShmMinRingSize || ring_size > kShmMaxRingSize ||
        (ring_size & (ring_size - 1)) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          text, ": ChannelOptions::shm_ring_size ", ring_size, " is not a power of two in [",
          kShmMinRingSize, ", ", kShmMaxRingSize, "]"));
    }
    UniqueFd socket(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!socket.valid()) return ErrnoStatus(errno, "socket", text);
    sockaddr_un addr;
    socklen_t len = AbstractAddress(endpoint_.address, &addr);
    if (RetryEintr([&] { return ::connect(socket.get(), reinterpret_cast<sockaddr*>(&addr), len); }) < 0) {
      if (errno == ECONNREFUSED || errno == ENOENT) {
        return absl::UnavailableError(absl::StrCat(text, ": no server is listening"));
      }
      return ErrnoStatus(errno, "connect", text);
    }
    IPCRPC_ASSIGN_OR_RETURN(PeerCredentials server, UnixPeerCredentials(socket.get(), text));
    // An impostor on the name must not get our memory: check first.
    IPCRPC_RETURN_IF_ERROR(
        options_.CheckServerUid(text, server.uid, "SO_PEERCRED of the rendezvous socket"));

    // The region: header, two ring controls, two rings; sealed so that its
    // size cannot change under either side.
    UniqueFd memfd(static_cast<int>(::memfd_create("ipcrpc-shm", MFD_CLOEXEC | MFD_ALLOW_SEALING)));
    if (!memfd.valid()) return ErrnoStatus(errno, "memfd_create", text);
    const size_t length = kShmHeaderSize + 2 * ring_size;
    if (::ftruncate(memfd.get(), static_cast<off_t>(length)) < 0) {
      return ErrnoStatus(errno, "ftruncate", text);
    }
    if (::fcntl(memfd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
      return ErrnoStatus(errno, "fcntl(F_ADD_SEALS)", text);
    }
    IPCRPC_ASSIGN_OR_RETURN(auto region, MapRegion(memfd.get(), ring_size, text));
    std::memcpy(region->base, kRegionMagic, 4);
    PutLe(region->base + 4, kVersion, 4);
    PutLe(region->base + 8, ring_size, 8);
    for (int ring = 0; ring < 2; ++ring) new (region->control(ring)) ShmRingControl{};

    int bell[2];
    if (::socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, bell) < 0) {
      return ErrnoStatus(errno, "socketpair", text);
    }
    UniqueFd client_doorbell(bell[0]);
    UniqueFd server_doorbell(bell[1]);
    char hello[kShmHelloSize] = {};
    std::memcpy(hello, kHelloMagic, 4);
    PutLe(hello + 4, kVersion, 4);
    PutLe(hello + 8, ring_size, 8);
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
    const int fds[2] = {memfd.get(), server_doorbell.get()};
    std::memcpy(CMSG_DATA(c), fds, sizeof(fds));
    if (RetryEintr([&] { return ::sendmsg(socket.get(), &msg, MSG_NOSIGNAL); }) !=
        static_cast<ssize_t>(sizeof(hello))) {
      return absl::UnavailableError(absl::StrCat(text, ": the server went away"));
    }
    char ack[8];
    size_t got = 0;
    while (got < sizeof(ack)) {
      struct pollfd pfd = {socket.get(), POLLIN, 0};
      if (RetryEintr([&] { return ::poll(&pfd, 1, PollTimeoutMs(deadline_ns)); }) == 0) {
        return absl::UnavailableError(
            absl::StrCat(text, ": no answer from the server ", deadline.bound));
      }
      ssize_t n = RetryEintr([&] { return ::recv(socket.get(), ack + got, sizeof(ack) - got, 0); });
      if (n <= 0) {
        return absl::UnavailableError(
            absl::StrCat(text, ": the server refused the connection (its log says why)"));
      }
      got += static_cast<size_t>(n);
    }
    if (std::memcmp(ack, kAckMagic, 4) != 0) {
      return absl::UnavailableError(absl::StrCat(text, ": bad answer from the server"));
    }
    IPCRPC_RETURN_IF_ERROR(SetNonBlocking(socket.get(), true, text));
    // Ring 1 carries responses to us, ring 0 requests to the server. We keep
    // the server's end of the doorbell pair too: WakeReader rings through it.
    return std::static_pointer_cast<Connection>(std::make_shared<ShmConnection>(
        std::move(socket), std::move(region), /*in=*/1, /*out=*/0, std::move(client_doorbell),
        std::move(server_doorbell), server, absl::StrCat(text, " server pid ", server.pid),
        options_.max_message_size));
  }

  const std::string& endpoint() const override { return endpoint_.text; }

 private:
  const Endpoint endpoint_;
  const TransportOptions options_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Connector>> CreateShmConnector(const Endpoint& endpoint,
                                                              const TransportOptions& options) {
  IPCRPC_RETURN_IF_ERROR(ValidateShmName(endpoint));
  return std::make_unique<ShmConnector>(endpoint, options);
}

}  // namespace ipcrpc::internal
