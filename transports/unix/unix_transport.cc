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

// The listening socket, shared with the handlers on the loop so that the
// listener object can go away while a wait is still pending.
struct AcceptorState {
  UniqueFd fd;
  std::optional<asio::posix::stream_descriptor> readable;
  Listener::AcceptHandler on_accept;
  std::atomic<bool> closed{false};
  std::string description;
  size_t max_message_size = 0;
  std::vector<uid_t> allowed_uids;

  // On the loop.
  void ShutdownOnLoop() {
    if (readable.has_value()) {
      readable->release();
      readable.reset();
    }
    fd.Reset();
    on_accept = nullptr;
  }
};

bool UidAllowed(uid_t uid, const std::vector<uid_t>& allowed) {
  return uid == ::geteuid() || std::find(allowed.begin(), allowed.end(), uid) != allowed.end();
}

void AcceptAll(const std::shared_ptr<AcceptorState>& state);

void WaitForConnections(const std::shared_ptr<AcceptorState>& state) {
  state->readable->async_wait(asio::posix::stream_descriptor::wait_read,
                              [state](const asio::error_code& ec) {
                                if (state->closed.load()) {
                                  state->ShutdownOnLoop();
                                  return;
                                }
                                if (ec) {
                                  IPCRPC_LOG(ERROR) << state->description
                                                    << ": stops accepting: " << ec.message();
                                  state->ShutdownOnLoop();
                                  return;
                                }
                                AcceptAll(state);
                              });
}

void AcceptAll(const std::shared_ptr<AcceptorState>& state) {
  for (;;) {
    if (state->closed.load()) {
      state->ShutdownOnLoop();
      return;
    }
    UniqueFd client(::accept4(state->fd.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!client.valid()) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // Out of descriptors: the pending connection stays queued; try again
        // when woken next rather than spinning.
        IPCRPC_LOG(ERROR) << state->description << ": accept: " << std::strerror(errno)
                          << " (raise the limit with ulimit -n)";
        break;
      }
      IPCRPC_LOG(ERROR) << state->description << ": stops accepting: accept: "
                        << std::strerror(errno);
      state->ShutdownOnLoop();
      return;
    }
    auto peer = UnixPeerCredentials(client.get(), state->description);
    if (!peer.ok()) {
      IPCRPC_LOG(WARNING) << state->description << ": refusing a connection: " << peer.status();
      continue;
    }
    if (!UidAllowed(peer->uid, state->allowed_uids)) {
      IPCRPC_LOG(WARNING) << state->description << ": refusing a connection from pid " << peer->pid
                          << ": uid " << peer->uid
                          << " is not ours and not in ServerOptions::allowed_uids";
      continue;
    }
    auto connection = StreamConnection::Create(
        std::move(client), UniqueFd(), /*is_socket=*/true, *peer,
        absl::StrCat(state->description, " peer pid ", peer->pid), state->max_message_size);
    if (!connection.ok()) {
      IPCRPC_LOG(WARNING) << state->description << ": dropping a connection: "
                          << connection.status();
      continue;
    }
    state->on_accept(*std::move(connection));
  }
  WaitForConnections(state);
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
    state_ = std::make_shared<AcceptorState>();
    state_->fd = *std::move(bound);
    state_->on_accept = std::move(on_accept);
    state_->description = endpoint_.text;
    state_->max_message_size = options_.max_message_size;
    state_->allowed_uids = options_.allowed_uids;
    io_ = &io;
    auto state = state_;
    // The descriptor wrapper is created and used on the loop only.
    asio::post(io, [state, &io] {
      if (state->closed.load()) {
        state->ShutdownOnLoop();
        return;
      }
      state->readable.emplace(io, state->fd.get());
      AcceptAll(state);
    });
    return absl::OkStatus();
  }

  void Close() override {
    if (closed_) return;
    closed_ = true;
    // New connects by path fail from now on; the socket itself is closed on
    // the loop, where its descriptor wrapper lives.
    RemoveOurFile();
    if (state_ != nullptr) {
      state_->closed.store(true);
      auto state = state_;
      asio::post(*io_, [state] { state->ShutdownOnLoop(); });
    }
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
    NamedObjectKind kind;
    kind.type = S_IFSOCK;
    kind.noun = "socket";
    kind.is_live = [](const std::string& path) -> absl::StatusOr<bool> {
      auto [probe, error] = ConnectTo(path);
      if (probe.valid()) return true;
      if (error == ECONNREFUSED || error == ENOENT) return false;
      return ErrnoStatus(error, "connect", path);
    };
    kind.create = [this](const std::string& path) -> absl::StatusOr<UniqueFd> {
      IPCRPC_ASSIGN_OR_RETURN(UniqueFd fd, NewSocket(endpoint_.text));
      sockaddr_un addr;
      socklen_t len = MakeAddress(path, &addr);
      if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), len) < 0) {
        if (errno == EADDRINUSE) {
          return absl::AlreadyExistsError(absl::StrCat(endpoint_.text, ": ", path, " is taken"));
        }
        return ErrnoStatus(errno, "bind", absl::StrCat(endpoint_.text, " at ", path));
      }
      if (::listen(fd.get(), SOMAXCONN) < 0) return ErrnoStatus(errno, "listen", endpoint_.text);
      return fd;
    };
    IPCRPC_ASSIGN_OR_RETURN(
        auto published,
        PublishNamedObject(endpoint_.text, endpoint_.address, options_.mode, kind, kMaxPathLength));
    published_ = std::move(published.second);
    return std::move(published.first);
  }

  void RemoveOurFile() { published_.Remove(); }

  const Endpoint endpoint_;
  const TransportOptions options_;
  asio::io_context* io_ = nullptr;
  std::shared_ptr<AcceptorState> state_;
  PublishedObject published_;
  bool closed_ = false;
};

class UnixConnector final : public Connector {
 public:
  UnixConnector(Endpoint endpoint, TransportOptions options)
      : endpoint_(std::move(endpoint)), options_(std::move(options)) {}

  absl::StatusOr<std::shared_ptr<Connection>> Connect(asio::io_context&) override {
    auto [fd, error] = ConnectTo(endpoint_.address);
    if (!fd.valid()) {
      if (error == ENOENT || error == ECONNREFUSED) {
        return absl::UnavailableError(absl::StrCat(endpoint_.text, ": no server is listening (",
                                                   std::strerror(error), ")"));
      }
      return ErrnoStatus(error, "connect", endpoint_.text);
    }
    IPCRPC_ASSIGN_OR_RETURN(PeerCredentials peer, UnixPeerCredentials(fd.get(), endpoint_.text));
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
