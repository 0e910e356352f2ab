// The mq: server side: the listener that owns queue /NAME and its token, and
// the acceptor that reads /NAME, answers CONNECTs and routes every other
// message to its connection.
#include <fcntl.h>
#include <mqueue.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "asio/io_context.hpp"
#include "base/copy.h"
#include "base/little_endian.h"
#include "base/logging.h"
#include "base/status_macros.h"
#include "base/syscall.h"
#include "transports/descriptor_watch.h"
#include "transports/mq/mq_connection.h"
#include "transports/mq/mq_liveness.h"
#include "base/clock.h"
#include "transports/mq/mq_queue.h"
#include "transports/mq/mq_transport.h"
#include "transports/mq/mq_wire.h"
#include "transports/named_object.h"

namespace ipcrpc::internal {
namespace {

uint64_t RandomId() {
  static std::atomic<uint64_t> counter{0};
  thread_local std::mt19937_64 rng(std::random_device{}() ^ (uint64_t{static_cast<uint32_t>(::getpid())} << 32));
  return (rng() & ~uint64_t{0xffff}) | (counter.fetch_add(1) & 0xffff);
}

// What the server queue's watch does on the loop. Loop only.
struct MqAcceptor : std::enable_shared_from_this<MqAcceptor> {
  std::string description;
  TransportOptions options;
  Listener::AcceptHandler on_accept;
  KernelBuffer buffer;  // base/copy.h: mq_receive copies fast into it
  absl::flat_hash_map<uint64_t, std::weak_ptr<MqConnection>> routes;
  // Cleared by the listener's Close: CONNECTs are refused from then on, but
  // the queue is still read for the connections it has (their requests and
  // CANCELs come through it while the server drains).
  std::atomic<bool> accepting{true};

  // The queue is watched level-triggered: a wake-up may leave messages
  // there, and the loop's next turn comes back for them at once. A wake-up
  // that finds one message (a sync caller's request: the usual case) takes
  // just that one, with no mq_receive that finds the queue empty. Wake-ups
  // that come back to back (a backlog) read to EAGAIN, until a drain finds
  // two messages or fewer (where one at a time costs no more).
  bool draining = false;
  int64_t last_return_ns = 0;
  static constexpr int64_t kBackToBackNs = 5'000;

  // Receives and handles what is there (see above); false stops serving.
  bool ReadMessages(int queue) {
    if (!draining && MonotonicNowNs() - last_return_ns < kBackToBackNs) draining = true;
    int handled = 0;
    for (;;) {
      if (!draining && handled == 1) break;
      unsigned priority = 0;
      ssize_t n = mq_receive(queue, buffer.data(), buffer.size(), &priority);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) {
          if (draining && handled <= 2) draining = false;
          break;
        }
        IPCRPC_LOG(ERROR) << description << ": stops serving: mq_receive: "
                          << std::strerror(errno);
        return false;
      }
      HandleMessage(std::string_view(buffer.data(), static_cast<size_t>(n)));
      ++handled;
    }
    last_return_ns = MonotonicNowNs();
    return true;
  }

  // A CONNECT's reply queue name: "/name", one component, at most 255 bytes.
  static bool IsReplyQueueName(const std::string& name) {
    return name.size() >= 2 && name.size() <= 255 && name[0] == '/' &&
           name.find('/', 1) == std::string::npos && name.find('\0') == std::string::npos;
  }

  // CLOSE instead of ACCEPT on a client's reply queue: refused, and told so.
  static void SendRefusal(int reply) {
    char refusal[kMqHeaderSize];
    MqHeader header;
    header.kind = MqKind::kClose;
    EncodeMqHeader(header, refusal);
    mq_send(reply, refusal, sizeof(refusal), kConnectPriority);
  }

  // A CONNECT that reached a closed listener (sent before its queue's name
  // was removed): a CLOSE on the reply queue, so the client fails at once.
  void RefuseConnect(std::string_view payload) {
    if (payload.size() < 12) return;
    const std::string reply_name(payload.substr(12));
    if (!IsReplyQueueName(reply_name)) return;
    UniqueFd reply(static_cast<int>(
        mq_open(reply_name.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC)));
    if (!reply.valid()) return;
    IPCRPC_LOG(INFO) << description << ": refusing a CONNECT on " << reply_name
                     << ": the server is shutting down";
    SendRefusal(reply.get());
  }

  void HandleConnect(std::string_view payload) {
    // CONNECT payload: u32 version, u32 pid, then the reply queue's name.
    if (payload.size() < 12 || std::memcmp(payload.data(), kConnectMagic, 4) != 0 ||
        GetLe(payload.data() + 4, 4) != kMqVersion) {
      IPCRPC_LOG(WARNING) << description << ": dropping a CONNECT that is not well formed";
      return;
    }
    const pid_t pid = static_cast<pid_t>(GetLe(payload.data() + 8, 4));
    const std::string reply_name(payload.substr(12));
    if (!IsReplyQueueName(reply_name)) {
      IPCRPC_LOG(WARNING) << description << ": dropping a CONNECT from pid " << pid
                          << ": bad reply queue name";
      return;
    }
    UniqueFd reply(static_cast<int>(
        mq_open(reply_name.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC)));
    if (!reply.valid()) {
      IPCRPC_LOG(WARNING) << description << ": refusing pid " << pid << ": "
                          << MqOpenError(errno, reply_name);
      return;
    }
    struct stat st;
    if (::fstat(reply.get(), &st) < 0 || !options.AllowsUid(st.st_uid)) {
      IPCRPC_LOG(WARNING) << description << ": refusing pid " << pid << ": reply queue "
                          << reply_name << " belongs to uid " << st.st_uid
                          << ", which is not ours and not in ServerOptions::allowed_uids";
      SendRefusal(reply.get());  // so the client need not time out
      return;
    }
    UniqueFd pidfd = PidFd(pid);
    if (!pidfd.valid()) {
      IPCRPC_LOG(WARNING) << description << ": refusing pid " << pid << ": "
                          << ErrnoStatus(errno, "pidfd_open", "the client");
      SendRefusal(reply.get());
      return;
    }
    if (absl::Status claim = CheckClaimedPid(pid, pidfd.get(), st.st_uid, description);
        !claim.ok()) {
      IPCRPC_LOG(WARNING) << description << ": refusing a CONNECT: " << claim;
      SendRefusal(reply.get());
      return;
    }
    // The reply queue's messages must hold the ACCEPT, and carry enough
    // of a response each that a large one is not thousands of fragments:
    // at least 128 bytes, the least msgsize_max the kernel allows (an
    // ipcrpc client asks for min(512, msgsize_max)). A smaller queue is
    // told CLOSE when a CLOSE fits, so that its client fails at once.
    struct mq_attr attr;
    if (mq_getattr(reply.get(), &attr) < 0) {
      IPCRPC_LOG(WARNING) << description << ": refusing pid " << pid << ": "
                          << ErrnoStatus(errno, "mq_getattr", reply_name);
      SendRefusal(reply.get());
      return;
    }
    if (attr.mq_msgsize < kMqMinReplyMessageSize) {
      IPCRPC_LOG(WARNING) << description << ": refusing pid " << pid << ": reply queue "
                          << reply_name << " takes messages of " << attr.mq_msgsize
                          << " bytes, fewer than the " << kMqMinReplyMessageSize
                          << " a connection needs";
      if (attr.mq_msgsize >= static_cast<long>(kMqHeaderSize)) SendRefusal(reply.get());
      return;
    }
    auto close_event = NewCloseEvent(description);
    if (!close_event.ok()) {
      IPCRPC_LOG(WARNING) << description << ": refusing pid " << pid << ": "
                          << close_event.status();
      SendRefusal(reply.get());
      return;
    }
    uint64_t id = RandomId();
    while (id == 0 || routes.contains(id)) id = RandomId();
    // ACCEPT: the connection id, our pid.
    char accept[kMqHeaderSize + 4];
    MqHeader header;
    header.kind = MqKind::kAccept;
    header.connection = id;
    EncodeMqHeader(header, accept);
    PutLe(accept + kMqHeaderSize, static_cast<uint32_t>(::getpid()), 4);
    if (mq_send(reply.get(), accept, sizeof(accept), kConnectPriority) < 0) {
      IPCRPC_LOG(WARNING) << description << ": refusing pid " << pid
                          << ": cannot answer on its reply queue: " << std::strerror(errno);
      return;
    }
    auto connection = std::make_shared<MqConnection>(
        UniqueFd(), std::move(reply), attr.mq_msgsize, id, std::move(pidfd),
        PeerCredentials{pid, st.st_uid}, absl::StrCat(description, " peer pid ", pid),
        options.max_message_size, *std::move(close_event));
    routes.emplace(id, connection);
    // Weak: the acceptor may be gone (the listener closed) before the
    // connection ends.
    connection->SetOnFinish([weak = weak_from_this(), id] {
      if (auto self = weak.lock()) self->routes.erase(id);
    });
    on_accept(std::move(connection));
  }

  void HandleMessage(std::string_view message) {
    auto header = DecodeMqHeader(message);
    if (!header.ok()) {
      IPCRPC_LOG(WARNING) << description << ": dropping a message: " << header.status();
      return;
    }
    if (header->kind == MqKind::kConnect) {
      if (accepting.load(std::memory_order_acquire)) {
        HandleConnect(message.substr(kMqHeaderSize));
      } else {
        RefuseConnect(message.substr(kMqHeaderSize));
      }
      return;
    }
    auto route = routes.find(header->connection);
    std::shared_ptr<MqConnection> connection =
        route == routes.end() ? nullptr : route->second.lock();
    if (connection == nullptr) {
      IPCRPC_LOG(INFO) << description << ": dropping a message for connection "
                       << header->connection << ", which does not exist";
      return;
    }
    connection->Deliver(*header, message.substr(kMqHeaderSize));
  }
};

class MqListener final : public Listener {
 public:
  MqListener(Endpoint endpoint, TransportOptions options)
      : endpoint_(std::move(endpoint)), options_(std::move(options)) {}
  ~MqListener() override {
    Close();
    if (watch_ != nullptr) watch_->Stop();
  }

  absl::Status Start(asio::io_context& io, AcceptHandler on_accept) override {
    const std::string name = "/" + endpoint_.address;
    IPCRPC_RETURN_IF_ERROR(TakeLock(io));
    struct mq_attr attr = QueueAttributes(/*server=*/true);
    UniqueFd queue;
    for (int attempt = 0; attempt < 2 && !queue.valid(); ++attempt) {
      queue.Reset(static_cast<int>(mq_open(name.c_str(),
                                           O_CREAT | O_EXCL | O_RDONLY | O_NONBLOCK | O_CLOEXEC,
                                           0600, &attr)));
      if (!queue.valid() && errno == EEXIST) {
        // We hold the lock, so the queue's server is gone: it is stale. But
        // another uid's queue is not ours to remove.
        absl::StatusOr<uid_t> owner = MqQueueOwner(endpoint_.address);
        if (owner.ok() && *owner != ::geteuid()) {
          ReleaseLock();
          return NotOursError(endpoint_.text, "stale queue", name, *owner);
        }
        if (!owner.ok() && !absl::IsNotFound(owner.status())) {
          ReleaseLock();
          return owner.status();
        }
        IPCRPC_LOG(INFO) << endpoint_.text << ": reclaiming stale queue " << name;
        mq_unlink(name.c_str());
        continue;
      }
      if (!queue.valid()) {
        absl::Status status = MqOpenError(errno, name);
        ReleaseLock();
        return status;
      }
    }
    if (!queue.valid() || ::fchmod(queue.get(), options_.mode) < 0) {
      absl::Status status = queue.valid() ? ErrnoStatus(errno, "fchmod", name)
                                          : absl::AlreadyExistsError(name + " keeps reappearing");
      if (queue.valid()) mq_unlink(name.c_str());
      ReleaseLock();
      return status;
    }
    created_ = true;
    auto acceptor = std::make_shared<MqAcceptor>();
    acceptor->description = endpoint_.text;
    acceptor->options = options_;
    acceptor->buffer.Resize(static_cast<size_t>(attr.mq_msgsize), 0);
    acceptor->on_accept = std::move(on_accept);
    const int fd = queue.get();
    acceptor_ = acceptor;
    watch_ = DescriptorWatch::Start(
        io, std::move(queue), [acceptor, fd] { return acceptor->ReadMessages(fd); },
        ReadWatch::kLevel);
    return absl::OkStatus();
  }

  // Stops accepting: the name goes (a successor may take it), but the queue
  // is read until the listener is destroyed, because the connections made
  // through it send their messages there. (The server destroys its
  // listeners once every connection has closed.)
  void Close() override {
    if (closed_) return;
    closed_ = true;
    if (acceptor_ != nullptr) acceptor_->accepting.store(false, std::memory_order_release);
    if (created_) mq_unlink(("/" + endpoint_.address).c_str());
    ReleaseLock();
  }

  const std::string& endpoint() const override { return endpoint_.text; }

 private:
  // The token that says "a live server owns /NAME": an abstract Unix socket
  // bound to a name derived from NAME. The kernel frees it when the process
  // dies, so nothing is left behind and a dead server's queue is seen as
  // stale at once. Connections to it (clients checking liveness) are
  // accepted and closed on the loop.
  absl::Status TakeLock(asio::io_context& io) {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd.valid()) return ErrnoStatus(errno, "socket", endpoint_.text);
    sockaddr_un addr;
    const socklen_t len = MqTokenAddress(endpoint_.address, &addr);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), len) < 0) {
      if (errno == EADDRINUSE) {
        return absl::AlreadyExistsError(
            absl::StrCat(endpoint_.text, ": a live server owns queue /", endpoint_.address));
      }
      return ErrnoStatus(errno, "bind", endpoint_.text);
    }
    if (::listen(fd.get(), 64) < 0) return ErrnoStatus(errno, "listen", endpoint_.text);
    const int raw = fd.get();
    token_ = DescriptorWatch::Start(io, std::move(fd), [raw] {
      for (;;) {
        UniqueFd probe(::accept4(raw, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
        if (probe.valid() || errno == EINTR || errno == ECONNABORTED) continue;
        return errno == EAGAIN || errno == EWOULDBLOCK;
      }
    });
    return absl::OkStatus();
  }

  void ReleaseLock() {
    if (token_ == nullptr) return;
    token_->Stop();
    token_.reset();
  }

  const Endpoint endpoint_;
  const TransportOptions options_;
  std::shared_ptr<MqAcceptor> acceptor_;
  std::shared_ptr<DescriptorWatch> watch_;
  std::shared_ptr<DescriptorWatch> token_;
  bool created_ = false;
  bool closed_ = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Listener>> CreateMqListener(const Endpoint& endpoint,
                                                           const TransportOptions& options) {
  IPCRPC_RETURN_IF_ERROR(ValidateMqName(endpoint));
  return std::make_unique<MqListener>(endpoint, options);
}

}  // namespace ipcrpc::internal
