// The mq: client side: the connector, which creates the client's reply
// queue, sends CONNECT to /NAME and waits for the server's ACCEPT.
#include <fcntl.h>
#include <mqueue.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "asio/io_context.hpp"
#include "base/clock.h"
#include "base/little_endian.h"
#include "base/status_macros.h"
#include "base/strings.h"
#include "base/syscall.h"
#include "transports/mq/mq_connection.h"
#include "transports/mq/mq_liveness.h"
#include "transports/mq/mq_queue.h"
#include "transports/mq/mq_transport.h"
#include "transports/mq/mq_wire.h"

namespace ipcrpc::internal {
namespace {

// Waits until `fd` is ready for `events` or `close_event` is signalled.
absl::Status WaitFor(int fd, short events, int close_event, int timeout_ms,
                     std::string_view what) {
  struct pollfd fds[2] = {{fd, events, 0}, {close_event, POLLIN, 0}};
  int n = RetryEintr([&] { return ::poll(fds, close_event >= 0 ? 2 : 1, timeout_ms); });
  if (n < 0) return ErrnoStatus(errno, "poll", what);
  if (n == 0) return absl::DeadlineExceededError(absl::StrCat(Av(what), ": timed out"));
  if (close_event >= 0 && fds[1].revents != 0) {
    return absl::UnavailableError(absl::StrCat(Av(what), ": connection closed"));
  }
  return absl::OkStatus();
}

// Connects to the liveness token of the queue named `name` (PROTOCOL.md):
// 0 with *connected set when a server listens, else the connect's errno
// (ECONNREFUSED: nobody holds the token).
int ProbeToken(const std::string& name, UniqueFd* connected) {
  UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!probe.valid()) return errno;
  sockaddr_un addr;
  const socklen_t len = MqTokenAddress(name, &addr);
  if (::connect(probe.get(), reinterpret_cast<sockaddr*>(&addr), len) < 0) return errno;
  *connected = std::move(probe);
  return 0;
}

bool TokenRefused(const std::string& name) {
  UniqueFd ignored;
  return ProbeToken(name, &ignored) == ECONNREFUSED;
}

// Another open of the queue `queue`, which this process made as `name`:
// opened by name, and refused unless it is the same queue (its device and
// inode), so that one put in the name since cannot stand in for it.
absl::StatusOr<UniqueFd> ReopenOwnQueue(const UniqueFd& queue, const std::string& name,
                                        int flags) {
  UniqueFd again(static_cast<int>(mq_open(name.c_str(), flags | O_CLOEXEC)));
  if (!again.valid()) return ErrnoStatus(errno, "mq_open", name);
  struct stat made, opened;
  if (::fstat(queue.get(), &made) < 0) return ErrnoStatus(errno, "fstat", name);
  if (::fstat(again.get(), &opened) < 0) return ErrnoStatus(errno, "fstat", name);
  if (made.st_dev != opened.st_dev || made.st_ino != opened.st_ino) {
    return absl::PermissionDeniedError(
        absl::StrCat("reply queue ", name, " was replaced by another before it was opened again"));
  }
  return again;
}

class MqConnector final : public Connector {
 public:
  MqConnector(Endpoint endpoint, TransportOptions options)
      : endpoint_(std::move(endpoint)), options_(std::move(options)) {}

  absl::StatusOr<std::shared_ptr<Connection>> Connect(asio::io_context&,
                                                      int64_t call_deadline_ns) override {
    const std::string& text = endpoint_.text;
    const TransportOptions::ConnectDeadline deadline = options_.ConnectDeadlineFor(call_deadline_ns);
    const int64_t deadline_ns = deadline.ns;
    const std::string server_name = "/" + endpoint_.address;
    UniqueFd server(static_cast<int>(
        mq_open(server_name.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC)));
    if (!server.valid()) return MqOpenError(errno, server_name);
    struct mq_attr server_attr;
    struct stat server_st;
    if (mq_getattr(server.get(), &server_attr) < 0 || ::fstat(server.get(), &server_st) < 0) {
      return ErrnoStatus(errno, "mq_getattr", server_name);
    }
    // A queue squatted by another uid would read our CONNECT.
    IPCRPC_RETURN_IF_ERROR(
        options_.CheckServerUid(text, server_st.st_uid, "the owner of the queue"));
    if (server_attr.mq_msgsize < static_cast<long>(kMqHeaderSize) + 256 + 12) {
      return absl::FailedPreconditionError(
          absl::StrCat(text, ": the server queue's messages are too small"));
    }
    // A queue whose server's token (docs/PROTOCOL.md) is gone has no
    // server: say so now rather than after the handshake's timeout. One
    // that answers tells us its server's pid (SO_PEERCRED: the kernel's
    // word, the process that listens), whose pidfd the wait for ACCEPT
    // watches, so that a server that dies before it answers fails the
    // connect at once, not at connect_timeout.
    UniqueFd server_alive;
    pid_t token_pid = 0;
    {
      UniqueFd probe;
      if (ProbeToken(endpoint_.address, &probe) == ECONNREFUSED) {
        return absl::UnavailableError(absl::StrCat(
            text, ": no server is listening (queue ", server_name, " is stale)"));
      }
      struct ucred cred = {};
      socklen_t cred_len = sizeof(cred);
      if (probe.valid() &&
          ::getsockopt(probe.get(), SOL_SOCKET, SO_PEERCRED, &cred, &cred_len) == 0 &&
          cred.pid > 0) {
        token_pid = cred.pid;
        server_alive = PidFd(cred.pid);
      }
    }

    static std::atomic<unsigned> counter{0};
    // Unpredictable (getrandom), so that nobody can take the name first; if
    // somebody has all the same, another name.
    std::string reply_name;
    struct mq_attr attr = ReplyQueueAttributes(options_.mq_reply_queue_messages,
                                               options_.mq_reply_message_size);
    // The default, and the smallest queue (one fragment at a time), for
    // ReplyQueueFallback below; read before any mq_open, whose errno counts.
    const struct mq_attr usual = QueueAttributes(/*server=*/false);
    struct mq_attr one = usual;
    one.mq_maxmsg = 1;
    UniqueFd reply;
    int error = 0;
    for (int attempt = 0; attempt < 4 && !reply.valid(); ++attempt) {
      reply_name = absl::StrCat("/ipcrpc-", ::getpid(), "-", counter.fetch_add(1), "-",
                                RandomU64() % 1'000'000'000'000);
      reply.Reset(static_cast<int>(mq_open(
          reply_name.c_str(), O_CREAT | O_EXCL | O_RDONLY | O_NONBLOCK | O_CLOEXEC, 0600, &attr)));
      error = reply.valid() ? 0 : errno;
      if (!reply.valid() && error != EEXIST) break;
    }
    // ReplyQueueFallback: RLIMIT_MSGQUEUE (or descriptors) ran out. The
    // default, then one message, each only if smaller in both ways than
    // what was tried.
    for (const struct mq_attr& smaller : {usual, one}) {
      if (reply.valid() || error != EMFILE) break;
      if (smaller.mq_maxmsg > attr.mq_maxmsg || smaller.mq_msgsize > attr.mq_msgsize ||
          (smaller.mq_maxmsg == attr.mq_maxmsg && smaller.mq_msgsize == attr.mq_msgsize)) {
        continue;
      }
      attr = smaller;
      reply.Reset(static_cast<int>(mq_open(
          reply_name.c_str(), O_CREAT | O_EXCL | O_RDONLY | O_NONBLOCK | O_CLOEXEC, 0600, &attr)));
      error = reply.valid() ? 0 : errno;
    }
    if (!reply.valid()) return MqOpenError(error, reply_name);
    // The name goes as soon as the server has opened it, or on any failure.
    absl::Cleanup unlink_reply = [&] { mq_unlink(reply_name.c_str()); };
    // The caller's wait (blocking: one mq_timedreceive waits and receives)
    // and its wake-ups, each its own open of the same queue (O_NONBLOCK is
    // a property of the open), opened while the mode is still 0600 and
    // checked to be the queue made above, not one put in its name since.
    IPCRPC_ASSIGN_OR_RETURN(UniqueFd wait_queue, ReopenOwnQueue(reply, reply_name, O_RDONLY));
    IPCRPC_ASSIGN_OR_RETURN(UniqueFd wake_queue,
                            ReopenOwnQueue(reply, reply_name, O_WRONLY | O_NONBLOCK));
    if (::fchmod(reply.get(), options_.mode) < 0) return ErrnoStatus(errno, "fchmod", reply_name);

    std::string connect(kMqHeaderSize + 12 + reply_name.size(), '\0');
    MqHeader header;
    header.kind = MqKind::kConnect;
    EncodeMqHeader(header, connect.data());
    std::memcpy(connect.data() + kMqHeaderSize, kConnectMagic, 4);
    PutLe(connect.data() + kMqHeaderSize + 4, kMqVersion, 4);
    PutLe(connect.data() + kMqHeaderSize + 8, static_cast<uint32_t>(::getpid()), 4);
    std::memcpy(connect.data() + kMqHeaderSize + 12, reply_name.data(), reply_name.size());
    for (;;) {
      if (mq_send(server.get(), connect.data(), connect.size(), kConnectPriority) == 0) break;
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        IPCRPC_RETURN_IF_ERROR(WaitFor(server.get(), POLLOUT, -1, PollTimeoutMs(deadline_ns),
                                       absl::StrCat(text, ": waiting for room to connect")));
        continue;
      }
      return ErrnoStatus(errno, "mq_send", text);
    }
    std::vector<char> buffer(static_cast<size_t>(attr.mq_msgsize));
    ssize_t n;
    for (;;) {
      // The pidfd as WaitFor's close event: UNAVAILABLE once it has exited.
      absl::Status waited =
          WaitFor(reply.get(), POLLIN, server_alive.valid() ? server_alive.get() : -1,
                  PollTimeoutMs(deadline_ns), text);
      const bool server_gone = absl::IsUnavailable(waited);
      if (!waited.ok() && !server_gone) {
        return absl::UnavailableError(absl::StrCat(text,
                                                   ": the server did not accept the connection ",
                                                   deadline.bound, " (its log may say why)"));
      }
      n = mq_receive(reply.get(), buffer.data(), buffer.size(), nullptr);
      if (n >= 0) break;
      if (errno != EINTR && errno != EAGAIN) return ErrnoStatus(errno, "mq_receive", reply_name);
      // Its answer, had it sent one, would have been there (the reply
      // queue was looked at after the pidfd said so). The token is looked
      // at again too: the process that listened may have handed it on (a
      // server that forks after Listen) and the holder live on; then the
      // wait goes on as before, without the pidfd.
      if (server_gone) {
        if (TokenRefused(endpoint_.address)) {
          return absl::UnavailableError(absl::StrCat(
              text, ": the server (pid ", token_pid, ") went away before it answered the CONNECT"));
        }
        server_alive.Reset();
      }
    }
    auto accept = DecodeMqHeader(std::string_view(buffer.data(), static_cast<size_t>(n)));
    if (accept.ok() && accept->kind == MqKind::kClose) {
      return absl::UnavailableError(
          absl::StrCat(text, ": the server refused the connection (its log says why)"));
    }
    if (!accept.ok() || accept->kind != MqKind::kAccept ||
        static_cast<size_t>(n) < kMqHeaderSize + 4) {
      return absl::UnavailableError(absl::StrCat(text, ": bad ACCEPT from the server"));
    }
    std::move(unlink_reply).Invoke();
    const pid_t server_pid = static_cast<pid_t>(GetLe(buffer.data() + kMqHeaderSize, 4));
    UniqueFd pidfd = PidFd(server_pid);
    if (pidfd.valid()) {
      // The server's pid is as it says, too: checked like a client's.
      if (absl::Status claim = CheckClaimedPid(server_pid, pidfd.get(), server_st.st_uid, text);
          !claim.ok()) {
        return absl::PermissionDeniedError(
            absl::StrCat(text, ": the server's ACCEPT is not believable: ", claim.message()));
      }
    }
    if (!pidfd.valid()) {
      return absl::UnavailableError(absl::StrCat(text, ": server pid ", server_pid, " is gone"));
    }
    IPCRPC_ASSIGN_OR_RETURN(UniqueFd close_event, NewCloseEvent(text));
    auto connection = std::make_shared<MqConnection>(
        std::move(reply), std::move(server), server_attr.mq_msgsize, accept->connection,
        std::move(pidfd), PeerCredentials{server_pid, server_st.st_uid},
        absl::StrCat(text, " server pid ", server_pid), options_.max_message_size,
        std::move(close_event));
    connection->SetCallerWait(std::move(wait_queue), std::move(wake_queue));
    return connection;
  }

  const std::string& endpoint() const override { return endpoint_.text; }

 private:
  const Endpoint endpoint_;
  const TransportOptions options_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Connector>> CreateMqConnector(const Endpoint& endpoint,
                                                             const TransportOptions& options) {
  IPCRPC_RETURN_IF_ERROR(ValidateMqName(endpoint));
  return std::make_unique<MqConnector>(endpoint, options);
}

}  // namespace ipcrpc::internal
