#include "transports/unix/unix_transport.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <optional>

#include "absl/strings/str_cat.h"
#include "asio/io_context.hpp"
#include "asio/posix/stream_descriptor.hpp"
#include "asio/post.hpp"
#include "base/logging.h"
#include "base/status_macros.h"
#include "base/syscall.h"
#include "transports/descriptor_watch.h"
#include "transports/named_object.h"
#include "transports/stream_connection.h"

namespace ipcrpc::internal {
namespace {

constexpr size_t kMaxPathLength = sizeof(sockaddr_un::sun_path) - 1;

bool IsAbstract(const std::string& address) { return !address.empty() && address[0] == '@'; }

// Fills `addr` for `address`; returns the length to pass to bind/connect.
socklen_t MakeAddress(const std::string& address, sockaddr_un* addr) {
  std::memset(addr, 0, sizeof(*addr));
  addr->sun_family = AF_UNIX;
  if (IsAbstract(address)) {
    // Abstract: a leading NUL, then the name (no trailing NUL).
    std::memcpy(addr->sun_path + 1, address.data() + 1, address.size() - 1);
    return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + address.size());
  }
  std::memcpy(addr->sun_path, address.data(), address.size());
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + address.size() + 1);
}

absl::StatusOr<UniqueFd> NewSocket(std::string_view object) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoStatus(errno, "socket", object);
  return fd;
}

// Connects a blocking socket to `address`: the fd, or the errno.
std::pair<UniqueFd, int> ConnectTo(const std::string& address) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return {UniqueFd(), errno};
  sockaddr_un addr;
  socklen_t len = MakeAddress(address, &addr);
  if (RetryEintr([&] { return ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), len); }) <
      0) {
    return {UniqueFd(), errno};
  }
  return {std::move(fd), 0};
}

class UnixListener final : public Listener {
 public:
  UnixListener(Endpoint endpoint, TransportOptions options)
      : endpoint_(std::move(endpoint)), options_(std::move(options)) {}
  ~UnixListener() override { Close(); }

  absl::Status Start(asio::io_context& io, AcceptHandler on_accept) override {
    auto bound = IsAbstract(endpoint_.address) ? BindAbstract() : BindPath();
    if (!bound.ok()) return bound.status();
    absl::Status status = SetNonBlocking(bound->get(), true, endpoint_.text);
    if (!status.ok()) {
      RemoveOurFile();
      return status;
    }
    const int listener = bound->get();
    watch_ = DescriptorWatch::Start(
        io, *std::move(bound),
        [listener, description = endpoint_.text, options = options_,
         on_accept = std::move(on_accept)]() mutable {
          return AcceptUnixConnections(
              listener, description, options, [&](UniqueFd client, const PeerCredentials& peer) {
                auto connection = StreamConnection::Create(
                    std::move(client), UniqueFd(), /*is_socket=*/true, peer,
                    absl::StrCat(description, " peer pid ", peer.pid), options.max_message_size);
                if (!connection.ok()) {
                  IPCRPC_LOG(WARNING) << description
                                      << ": dropping a connection: " << connection.status();
                  return true;
                }
                on_accept(*std::move(connection));
                return true;
              });
        });
    return absl::OkStatus();
  }

  void Close() override {
    if (closed_) return;
    closed_ = true;
    // New connects by path fail from now on; the socket itself is closed on
    // the loop, where its watch lives.
    RemoveOurFile();
    if (watch_ != nullptr) watch_->Stop();
  }

  const std::string& endpoint() const override { return endpoint_.text; }

 private:
  absl::StatusOr<UniqueFd> BindAbstract() {
    IPCRPC_ASSIGN_OR_RETURN(UniqueFd fd, NewSocket(endpoint_.text));
    sockaddr_un addr;
    socklen_t len = MakeAddress(endpoint_.address, &addr);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), len) < 0) {
      if (errno == EADDRINUSE) {
        return absl::AlreadyExistsError(
            absl::StrCat(endpoint_.text, ": another server is listening on this name"));
      }
      return ErrnoStatus(errno, "bind", endpoint_.text);
    }
    if (::listen(fd.get(), SOMAXCONN) < 0) return ErrnoStatus(errno, "listen", endpoint_.text);
    return fd;
  }

  absl::StatusOr<UniqueFd> BindPath() {
    IPCRPC_ASSIGN_OR_RETURN(auto published,
                            BindUnixSocketFile(endpoint_.text, endpoint_.address, options_.mode));
    published_ = std::move(published.second);
    return std::move(published.first);
  }

  void RemoveOurFile() { published_.Remove(); }

  const Endpoint endpoint_;
  const TransportOptions options_;
  std::shared_ptr<DescriptorWatch> watch_;
  PublishedObject published_;
  bool closed_ = false;
};

class UnixConnector final : public Connector {
 public:
  UnixConnector(Endpoint endpoint, TransportOptions options)
      : endpoint_(std::move(endpoint)), options_(std::move(options)) {}

  // The kernel's backlog completes a connect: no handshake to wait for.
  absl::StatusOr<std::shared_ptr<Connection>> Connect(asio::io_context&, int64_t) override {
    auto [fd, error] = ConnectTo(endpoint_.address);
    if (!fd.valid()) {
      if (error == ENOENT || error == ECONNREFUSED) {
        return absl::UnavailableError(absl::StrCat(endpoint_.text, ": no server is listening (",
                                                   std::strerror(error), ")"));
      }
      return ErrnoStatus(error, "connect", endpoint_.text);
    }
    IPCRPC_ASSIGN_OR_RETURN(PeerCredentials peer, UnixPeerCredentials(fd.get(), endpoint_.text));
    // Whoever listens there (an impostor may have taken a path or an
    // abstract name) gets nothing before we know who it is.
    IPCRPC_RETURN_IF_ERROR(
        options_.CheckServerUid(endpoint_.text, peer.uid, "SO_PEERCRED of the socket"));
    IPCRPC_ASSIGN_OR_RETURN(
        auto connection,
        StreamConnection::Create(std::move(fd), UniqueFd(), /*is_socket=*/true, peer,
                                 absl::StrCat(endpoint_.text, " server pid ", peer.pid),
                                 options_.max_message_size));
    return connection;
  }

  const std::string& endpoint() const override { return endpoint_.text; }

 private:
  const Endpoint endpoint_;
  const TransportOptions options_;
};

}  // namespace

absl::StatusOr<bool> UnixSocketIsLive(const std::string& path) {
  auto [probe, error] = ConnectTo(path);
  if (probe.valid()) return true;
  if (error == ECONNREFUSED || error == ENOENT) return false;
  return ErrnoStatus(error, "connect", path);
}

absl::StatusOr<std::pair<UniqueFd, PublishedObject>> BindUnixSocketFile(const std::string& what,
                                                                        const std::string& path,
                                                                        unsigned mode) {
  NamedObjectKind kind;
  kind.type = S_IFSOCK;
  kind.noun = "socket";
  kind.is_live = &UnixSocketIsLive;
  kind.create = [&what](const std::string& at) -> absl::StatusOr<UniqueFd> {
    IPCRPC_ASSIGN_OR_RETURN(UniqueFd fd, NewSocket(what));
    sockaddr_un addr;
    socklen_t len = MakeAddress(at, &addr);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), len) < 0) {
      if (errno == EADDRINUSE) {
        return absl::AlreadyExistsError(absl::StrCat(what, ": ", at, " is taken"));
      }
      return ErrnoStatus(errno, "bind", absl::StrCat(what, " at ", at));
    }
    if (::listen(fd.get(), SOMAXCONN) < 0) return ErrnoStatus(errno, "listen", what);
    return fd;
  };
  return PublishNamedObject(what, path, mode, kind, kMaxPathLength);
}

bool AcceptUnixConnections(
    int listener, const std::string& what, const TransportOptions& options,
    absl::FunctionRef<bool(UniqueFd connection, const PeerCredentials& peer)> on_connection) {
  for (;;) {
    UniqueFd client(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!client.valid()) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // Out of descriptors: the pending connection stays queued (and the
        // socket readable: waiting for readability would spin). Look again
        // in a while.
        IPCRPC_LOG(ERROR) << what << ": accept: " << std::strerror(errno)
                          << " (raise the limit with ulimit -n); trying again in 100 ms";
        DescriptorWatch::BackOffFromHandler(absl::Milliseconds(100));
        return true;
      }
      IPCRPC_LOG(ERROR) << what << ": stops accepting: accept: " << std::strerror(errno);
      return false;
    }
    auto peer = UnixPeerCredentials(client.get(), what);
    if (!peer.ok()) {
      IPCRPC_LOG(WARNING) << what << ": refusing a connection: " << peer.status();
      continue;
    }
    if (!options.AllowsUid(peer->uid)) {
      IPCRPC_LOG(WARNING) << what << ": refusing a connection from pid " << peer->pid << ": uid "
                          << peer->uid << " is not ours and not in ServerOptions::allowed_uids";
      continue;
    }
    if (!on_connection(std::move(client), *peer)) return false;
  }
}

absl::Status ValidateUnixAddress(const Endpoint& endpoint) {
  const std::string& address = endpoint.address;
  if (address.empty() || address == "@") {
    return absl::InvalidArgumentError(
        absl::StrCat("endpoint '", endpoint.text, "': unix: needs a socket path or @name"));
  }
  if (address.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("endpoint '", endpoint.text, "': the path contains a NUL byte"));
  }
  if (address.size() > kMaxPathLength) {
    return absl::InvalidArgumentError(absl::StrCat("endpoint '", endpoint.text, "': the path is ",
                                                   address.size(), " bytes, over the limit of ",
                                                   kMaxPathLength, " for a Unix socket"));
  }
  if (!IsAbstract(address) && address.back() == '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("endpoint '", endpoint.text, "': the path names a directory"));
  }
  return absl::OkStatus();
}

absl::StatusOr<PeerCredentials> UnixPeerCredentials(int fd, std::string_view object) {
  struct ucred cred;
  socklen_t len = sizeof(cred);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
    return ErrnoStatus(errno, "getsockopt(SO_PEERCRED)", object);
  }
  return PeerCredentials{cred.pid, cred.uid};
}

absl::StatusOr<std::unique_ptr<Listener>> CreateUnixListener(const Endpoint& endpoint,
                                                             const TransportOptions& options) {
  IPCRPC_RETURN_IF_ERROR(ValidateUnixAddress(endpoint));
  return std::make_unique<UnixListener>(endpoint, options);
}

absl::StatusOr<std::unique_ptr<Connector>> CreateUnixConnector(const Endpoint& endpoint,
                                                               const TransportOptions& options) {
  IPCRPC_RETURN_IF_ERROR(ValidateUnixAddress(endpoint));
  return std::make_unique<UnixConnector>(endpoint, options);
}

}  // namespace ipcrpc::internal
