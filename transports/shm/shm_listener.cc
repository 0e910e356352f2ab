// The shm: server side: the listener on the abstract socket, and the
// acceptor that takes each client's HELLO (within kHandshakeTimeoutMs),
// checks it, maps the region and answers with an ACK.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "asio/io_context.hpp"
#include "asio/posix/stream_descriptor.hpp"
#include "asio/steady_timer.hpp"
#include "base/little_endian.h"
#include "base/logging.h"
#include "base/status_macros.h"
#include "base/syscall.h"
#include "transports/descriptor_watch.h"
#include "transports/shm/shm_connection.h"
#include "transports/shm/shm_handshake.h"
#include "transports/shm/shm_region.h"
#include "transports/shm/shm_transport.h"
#include "transports/unix/unix_transport.h"

namespace ipcrpc::internal {
namespace {

constexpr int kHandshakeTimeoutMs = 5000;

// Whether `fd` is a Unix datagram socket (a doorbell end).
bool IsDatagramSocket(int fd) {
  struct stat st;
  if (::fstat(fd, &st) < 0 || !S_ISSOCK(st.st_mode)) return false;
  int domain = 0;
  int type = 0;
  socklen_t len = sizeof(int);
  if (::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0) return false;
  len = sizeof(int);
  if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0) return false;
  return domain == AF_UNIX && type == SOCK_DGRAM;
}

// One accepted socket waiting for its HELLO.
struct Handshake {
  UniqueFd socket;
  PeerCredentials peer;
  std::optional<asio::posix::stream_descriptor> readable;
  std::optional<asio::steady_timer> timeout;
};

// What the listening socket's watch does on the loop.
struct ShmAcceptor : std::enable_shared_from_this<ShmAcceptor> {
  std::string description;
  TransportOptions options;
  Listener::AcceptHandler on_accept;
  std::atomic<bool> closed{false};
  asio::io_context* io = nullptr;
  // Accepted sockets whose HELLO has not come yet (loop only): they hold
  // descriptors, so they count against the server's connection limit.
  int half_open = 0;

  // Accepts everything pending and starts each one's handshake.
  bool AcceptAll(int listener);

  // The HELLO arrived (or not): validate, map, answer, hand over.
  absl::StatusOr<std::shared_ptr<Connection>> Complete(Handshake& handshake) {
    char hello[kShmHelloSize];
    struct iovec iov = {hello, sizeof(hello)};
    alignas(struct cmsghdr) char control[CMSG_SPACE(4 * sizeof(int))];
    struct msghdr msg = {};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    ssize_t n = RetryEintr([&] {
      return ::recvmsg(handshake.socket.get(), &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    });
    std::vector<UniqueFd> fds;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
        const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; ++i) {
          int fd;
          std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
          fds.emplace_back(fd);
        }
      }
    }
    if (n < 0) return ErrnoStatus(errno, "recvmsg(HELLO)", description);
    if (n == 0) return absl::UnavailableError("the client left before its HELLO");
    if (msg.msg_flags & MSG_CTRUNC) {
      return absl::ResourceExhaustedError(
          "HELLO's descriptors did not fit (too many, or this process is out of descriptors)");
    }
    if (n != static_cast<ssize_t>(sizeof(hello)) || (msg.msg_flags & MSG_TRUNC)) {
      return absl::DataLossError(absl::StrCat("HELLO has ", n, " bytes, not ", sizeof(hello)));
    }
    if (std::memcmp(hello, kHelloMagic, 4) != 0) return absl::DataLossError("HELLO has a bad magic");
    if (const uint64_t version = GetLe(hello + 4, 4); version != kVersion) {
      return absl::FailedPreconditionError(absl::StrCat(
          "HELLO has version ", version, "; this server speaks version ", kVersion,
          version == 1 ? " only (version 1's eventfd doorbells let a peer block the server)"
                       : " only"));
    }
    if (fds.size() != 2) {
      return absl::DataLossError(absl::StrCat("HELLO carries ", fds.size(),
                                              " descriptors, not 2"));
    }
    const uint64_t ring_size = GetLe(hello + 8, 8);
    if (ring_size < kShmMinRingSize || ring_size > kShmMaxRingSize ||
        (ring_size & (ring_size - 1)) != 0) {
      return absl::DataLossError(absl::StrCat("HELLO's ring size ", ring_size,
                                              " is not a power of two in [", kShmMinRingSize,
                                              ", ", kShmMaxRingSize, "]"));
    }
    const int memfd = fds[0].get();
    struct stat st;
    if (::fstat(memfd, &st) < 0 || !S_ISREG(st.st_mode) ||
        static_cast<uint64_t>(st.st_size) != kShmHeaderSize + 2 * ring_size) {
      return absl::DataLossError("the shared memory's size does not match the HELLO");
    }
    // Sealed against shrinking, so the peer cannot pull pages from under us
    // (an access to a truncated mapping would be SIGBUS).
    const int seals = ::fcntl(memfd, F_GET_SEALS);
    if (seals < 0 || (seals & F_SEAL_SHRINK) == 0 || (seals & F_SEAL_SEAL) == 0) {
      return absl::DataLossError("the shared memory is not sealed against shrinking");
    }
    if (!IsDatagramSocket(fds[1].get())) {
      return absl::DataLossError("the doorbell is not a Unix datagram socket");
    }
    IPCRPC_ASSIGN_OR_RETURN(auto region, MapRegion(memfd, ring_size, description));
    if (std::memcmp(region->base, kRegionMagic, 4) != 0) {
      return absl::DataLossError("the shared memory's header has a bad magic");
    }
    char ack[8];
    std::memcpy(ack, kAckMagic, 4);
    PutLe(ack + 4, static_cast<uint32_t>(::getpid()), 4);
    if (::send(handshake.socket.get(), ack, sizeof(ack), MSG_NOSIGNAL | MSG_DONTWAIT) !=
        static_cast<ssize_t>(sizeof(ack))) {
      return absl::UnavailableError("the client went away during the handshake");
    }
    // Ring 0 carries requests (client to server), ring 1 responses; fds[1]
    // is the server's end of the doorbell pair.
    return std::static_pointer_cast<Connection>(std::make_shared<ShmConnection>(
        std::move(handshake.socket), std::move(region), /*in=*/0, /*out=*/1,
        std::move(fds[1]), UniqueFd(), handshake.peer,
        absl::StrCat(description, " peer pid ", handshake.peer.pid),
        options.max_message_size));
  }
};

void WaitForHello(const std::shared_ptr<ShmAcceptor>& state,
                  const std::shared_ptr<Handshake>& handshake);

void StartHandshake(const std::shared_ptr<ShmAcceptor>& state, UniqueFd socket,
                    PeerCredentials peer) {
  auto handshake = std::make_shared<Handshake>();
  handshake->socket = std::move(socket);
  handshake->peer = peer;
  handshake->readable.emplace(*state->io, handshake->socket.get());
  handshake->timeout.emplace(*state->io,
                             std::chrono::milliseconds(kHandshakeTimeoutMs));
  ++state->half_open;
  handshake->timeout->async_wait([handshake, state](const asio::error_code& ec) {
    if (ec || !handshake->readable.has_value()) return;
    IPCRPC_LOG(WARNING) << state->description << ": dropping pid " << handshake->peer.pid
                        << ": no HELLO within " << kHandshakeTimeoutMs << " ms";
    --state->half_open;
    handshake->readable->release();
    handshake->readable.reset();
    handshake->socket.Reset();
  });
  WaitForHello(state, handshake);
}

void WaitForHello(const std::shared_ptr<ShmAcceptor>& state,
                  const std::shared_ptr<Handshake>& handshake) {
  handshake->readable->async_wait(
      asio::posix::stream_descriptor::wait_read,
      [handshake, state](const asio::error_code& ec) {
        if (ec || !handshake->readable.has_value()) return;
        // Readiness can be spurious (asio reuses a closed descriptor's
        // state, and an event already fetched for it lands here): wait
        // again if nothing is there.
        char byte;
        if (::recv(handshake->socket.get(), &byte, 1, MSG_PEEK | MSG_DONTWAIT) < 0 &&
            (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
          WaitForHello(state, handshake);
          return;
        }
        --state->half_open;
        handshake->readable->release();
        handshake->readable.reset();
        handshake->timeout->cancel();
        if (state->closed.load() || !state->on_accept) return;
        auto connection = state->Complete(*handshake);
        if (!connection.ok()) {
          IPCRPC_LOG(WARNING) << state->description << ": refusing pid " << handshake->peer.pid
                              << ": " << connection.status();
          return;
        }
        state->on_accept(*std::move(connection));
      });
}

bool ShmAcceptor::AcceptAll(int listener) {
  for (;;) {
    if (closed.load()) return false;
    UniqueFd client(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!client.valid()) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
      // Out of descriptors (EMFILE, ENFILE) or memory: the connection stays
      // in the backlog and the socket readable; waiting for readability
      // would spin. Look again in a while.
      IPCRPC_LOG(ERROR) << description << ": accept: " << std::strerror(errno)
                        << (errno == EMFILE ? " (raise the limit with ulimit -n)" : "")
                        << "; trying again in 100 ms";
      DescriptorWatch::BackOffFromHandler(absl::Milliseconds(100));
      return true;
    }
    auto peer = UnixPeerCredentials(client.get(), description);
    if (!peer.ok()) continue;
    const int open = options.open_connections != nullptr ? options.open_connections->load() : 0;
    if (options.max_connections > 0 && open + half_open >= options.max_connections) {
      IPCRPC_LOG(WARNING) << description << ": refusing pid " << peer->pid
                          << ": ServerOptions::max_connections (" << options.max_connections
                          << ") reached, counting " << half_open
                          << " connections still in their handshake";
      if (options.refused_connections != nullptr) options.refused_connections->fetch_add(1);
      continue;  // closed: the client's HELLO fails at once
    }
    if (!options.AllowsUid(peer->uid)) {
      IPCRPC_LOG(WARNING) << description << ": refusing pid " << peer->pid << ": uid "
                          << peer->uid << " is not ours and not in ServerOptions::allowed_uids";
      continue;
    }
    StartHandshake(shared_from_this(), std::move(client), *peer);
  }
}

class ShmListener final : public Listener {
 public:
  ShmListener(Endpoint endpoint, TransportOptions options)
      : endpoint_(std::move(endpoint)), options_(std::move(options)) {}
  ~ShmListener() override { Close(); }

  absl::Status Start(asio::io_context& io, AcceptHandler on_accept) override {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd.valid()) return ErrnoStatus(errno, "socket", endpoint_.text);
    sockaddr_un addr;
    socklen_t len = AbstractAddress(endpoint_.address, &addr);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), len) < 0) {
      if (errno == EADDRINUSE) {
        return absl::AlreadyExistsError(
            absl::StrCat(endpoint_.text, ": another server is listening on this name"));
      }
      return ErrnoStatus(errno, "bind", endpoint_.text);
    }
    if (::listen(fd.get(), SOMAXCONN) < 0) return ErrnoStatus(errno, "listen", endpoint_.text);
    acceptor_ = std::make_shared<ShmAcceptor>();
    acceptor_->description = endpoint_.text;
    acceptor_->options = options_;
    acceptor_->on_accept = std::move(on_accept);
    acceptor_->io = &io;
    const int listener = fd.get();
    watch_ = DescriptorWatch::Start(
        io, std::move(fd), [acceptor = acceptor_, listener] { return acceptor->AcceptAll(listener); });
    return absl::OkStatus();
  }

  void Close() override {
    if (closed_) return;
    closed_ = true;
    if (acceptor_ != nullptr) {
      acceptor_->closed.store(true);
      // New connects are refused from now: shut the listening socket down
      // (the watch closes it on the loop).
      watch_->ShutdownSocket();
      watch_->Stop();
    }
  }

  const std::string& endpoint() const override { return endpoint_.text; }

 private:
  const Endpoint endpoint_;
  const TransportOptions options_;
  std::shared_ptr<ShmAcceptor> acceptor_;
  std::shared_ptr<DescriptorWatch> watch_;
  bool closed_ = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Listener>> CreateShmListener(const Endpoint& endpoint,
                                                            const TransportOptions& options) {
  IPCRPC_RETURN_IF_ERROR(ValidateShmName(endpoint));
  return std::make_unique<ShmListener>(endpoint, options);
}

}  // namespace ipcrpc::internal
