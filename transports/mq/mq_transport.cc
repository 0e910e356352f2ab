#include "transports/mq/mq_transport.h"

#include <fcntl.h>
#include <mqueue.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <fstream>
#include <random>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "asio/io_context.hpp"
#include "asio/posix/stream_descriptor.hpp"
#include "transports/read_watch.h"
#include "asio/post.hpp"
#include "base/clock.h"
#include "base/little_endian.h"
#include "base/logging.h"
#include "base/status_macros.h"
#include "base/strings.h"
#include "base/syscall.h"
#include "transports/descriptor_watch.h"
#include "transports/named_object.h"
#include "transports/read_role.h"
#include "base/mutex.h"

namespace ipcrpc::internal {
namespace {

constexpr char kConnectMagic[4] = {'I', 'M', 'Q', 'C'};
constexpr uint32_t kMqVersion = 1;
constexpr int kConnectPriority = 31;  // new clients are not stuck behind queued work

long ReadProcLong(const char* path, long fallback) {
  std::ifstream in(path);
  long value = 0;
  if (in >> value && value > 0) return value;
  return fallback;
}

// An errno from mq_open as a status that names the limit and how to raise it.
absl::Status MqOpenError(int error, std::string_view name) {
  switch (error) {
    case EMFILE: {
      struct rlimit limit;
      getrlimit(RLIMIT_MSGQUEUE, &limit);
      return absl::ResourceExhaustedError(absl::StrCat(
          "mq_open(", Av(name), "): RLIMIT_MSGQUEUE (", limit.rlim_cur,
          " bytes of queues per user) is used up, or the process is out of descriptors; "
          "raise it with `ulimit -q` (or setrlimit(RLIMIT_MSGQUEUE)), or close other queues"));
    }
    case ENOSPC:
      return absl::ResourceExhaustedError(absl::StrCat(
          "mq_open(", Av(name), "): /proc/sys/fs/mqueue/queues_max (",
          ReadProcLong("/proc/sys/fs/mqueue/queues_max", 256),
          " queues) reached; raise it with `sysctl fs.mqueue.queues_max=N`"));
    case EINVAL:
      return absl::InvalidArgumentError(absl::StrCat(
          "mq_open(", Av(name), "): queue attributes over /proc/sys/fs/mqueue/msg_max or "
          "msgsize_max, or an invalid name"));
    case ENOENT:
      return absl::UnavailableError(
          absl::StrCat("mq_open(", Av(name), "): no such queue: no server is listening"));
    default:
      return ErrnoStatus(error, "mq_open", name);
  }
}

// Queue sizes. Every queue is charged to its creator's RLIMIT_MSGQUEUE
// (800 KiB per user by default) for maxmsg * msgsize plus about 100 bytes of
// overhead per message, so the server's queue takes the kernel's largest
// messages (8 KiB by default: about 82 KiB), and each client's reply queue
// four small ones (1 KiB: about 4.5 KiB), so that a hundred clients of one
// user fit under the default limit beside their server; larger responses are
// fragmented. When the limit is reached all the same, a reply queue of one
// message is tried before giving up (ReplyQueueFallback).
struct mq_attr QueueAttributes(bool server) {
  const MqLimits limits = ReadMqLimits();
  struct mq_attr attr = {};
  attr.mq_maxmsg = std::min<long>(limits.max_messages, server ? 10 : 4);
  attr.mq_msgsize = std::min<long>(limits.message_size, server ? 8192 : 1024);
  return attr;
}

// The abstract socket whose existence says that a live server owns /NAME:
// "@ipcrpc-mq-NAME", or a hash of NAME when it is too long for a socket name.
socklen_t MqTokenAddress(const std::string& name, sockaddr_un* addr) {
  std::memset(addr, 0, sizeof(*addr));
  addr->sun_family = AF_UNIX;
  std::string token = "ipcrpc-mq-" + name;
  if (token.size() > sizeof(addr->sun_path) - 2) {
    uint64_t hash = 1469598103934665603ull;  // FNV-1a, stable across builds
    for (unsigned char c : name) hash = (hash ^ c) * 1099511628211ull;
    token = absl::StrCat("ipcrpc-mq-#", absl::Hex(hash, absl::kZeroPad16));
  }
  std::memcpy(addr->sun_path + 1, token.data(), token.size());
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + token.size());
}

uint64_t RandomId() {
  static std::atomic<uint64_t> counter{0};
  thread_local std::mt19937_64 rng(std::random_device{}() ^ (uint64_t{static_cast<uint32_t>(::getpid())} << 32));
  return (rng() & ~uint64_t{0xffff}) | (counter.fetch_add(1) & 0xffff);
}

UniqueFd PidFd(pid_t pid) { return UniqueFd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0))); }

// A pid that a peer claims (mq: has no SO_PEERCRED) decides how its
// connection's liveness is watched, so it is checked: `pidfd` (opened on it)
// must be alive, and the process must run as `owner`, the uid that owns the
// peer's queue. (Claiming pid 1 tied a dead client's calls to init.) OK, or
// why not. Without /proc the uid cannot be read: accepted, with a warning.
absl::Status CheckClaimedPid(pid_t pid, int pidfd, uid_t owner, std::string_view what) {
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  bool found = false;
  uid_t effective = 0;
  while (std::getline(status, line)) {
    if (line.rfind("Uid:", 0) != 0) continue;
    // Uid: real effective saved filesystem
    std::vector<absl::string_view> fields =
        absl::StrSplit(absl::string_view(line).substr(4), absl::ByAnyChar(" \t"), absl::SkipEmpty());
    found = fields.size() >= 2 && absl::SimpleAtoi(fields[1], &effective);
    break;
  }
  if (!found) {
    // Without /proc at all nothing can be checked: taken as it is. With a
    // /proc that hides this pid (hidepid=, another user's process), the
    // claim cannot be verified: refused.
    if (std::ifstream("/proc/self/status").good()) {
      return absl::PermissionDeniedError(
          absl::StrCat("it claims pid ", pid, ", whose uid cannot be read here"));
    }
    IPCRPC_LOG(WARNING) << Av(what) << ": cannot read the uid of pid " << pid
                        << " (no /proc): its claim is taken as it is";
    return absl::OkStatus();
  }
  // Still the process we opened (not a new one with a reused pid)?
  struct pollfd exited = {pidfd, POLLIN, 0};
  if (::poll(&exited, 1, 0) != 0) {
    return absl::UnavailableError(absl::StrCat("pid ", pid, " is gone"));
  }
  if (effective != owner) {
    return absl::PermissionDeniedError(absl::StrCat(
        "it claims pid ", pid, ", which runs as uid ", effective, ", but its queue belongs to uid ",
        owner));
  }
  return absl::OkStatus();
}

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

// ------------------------------------------------------------- connection

// One connection, on either side. Writes go to the peer's queue, fragmented.
// Reads: the client reads its own reply queue; on the server, the listener
// reads /NAME and hands this connection its fragments (Deliver).
class MqConnection final : public Connection {
 public:
  MqConnection(UniqueFd read_queue, UniqueFd write_queue, long write_message_size,
               uint64_t connection_id, UniqueFd peer_pidfd, PeerCredentials peer,
               std::string description, size_t max_message_size, UniqueFd close_event)
      : read_queue_(std::move(read_queue)),
        write_queue_(std::move(write_queue)),
        write_message_size_(static_cast<size_t>(write_message_size)),
        connection_id_(connection_id),
        peer_pidfd_(std::move(peer_pidfd)),
        peer_(peer),
        description_(std::move(description)),
        close_event_(std::move(close_event)),
        reassembler_(max_message_size, kMqMaxPartialMessages),
        max_message_size_(max_message_size) {
    if (read_queue_.valid()) {
      struct mq_attr attr;
      mq_getattr(read_queue_.get(), &attr);
      receive_buffer_.resize(static_cast<size_t>(attr.mq_msgsize));
    }
    send_buffer_.resize(write_message_size_);
  }

  ~MqConnection() override {
    readable_.reset();
    if (peer_watch_.has_value()) peer_watch_->release();
  }

  // Server side: runs on the loop when the connection ends (to unroute it).
  void SetOnFinish(absl::AnyInvocable<void() &&> on_finish) { on_finish_ = std::move(on_finish); }

  void Start(asio::io_context& io, MessageHandler on_message, CloseHandler on_closed) override {
    on_message_ = std::move(on_message);
    on_closed_ = std::move(on_closed);
    io_.store(&io);
    auto self = std::static_pointer_cast<MqConnection>(shared_from_this());
    asio::post(io, [self, &io] {
      if (self->closing_.load()) {
        self->Finish(absl::CancelledError(absl::StrCat(self->description_, ": closed")));
        return;
      }
      self->started_ = true;
      self->peer_watch_.emplace(io, self->peer_pidfd_.get());
      self->peer_watch_->async_wait(asio::posix::stream_descriptor::wait_read,
                                    [self](const asio::error_code& ec) {
                                      if (ec || self->finished_) return;
                                      self->Finish(absl::UnavailableError(absl::StrCat(
                                          self->description_, ": peer pid ", self->peer_.pid,
                                          " exited")));
                                    });
      if (self->read_queue_.valid() && self->read_role_.LoopReadsAtStart()) {
        self->StartLoopReading();
      }
      // Fragments that came before Start.
      for (auto& [header, chunk] : self->early_) {
        if (self->finished_) break;
        self->Deliver(header, chunk);
      }
      self->early_.clear();
    });
  }

  // On the loop: one message of this connection (DATA or CLOSE).
  void Deliver(const MqHeader& header, std::string_view chunk) {
    if (finished_) return;
    if (!started_) {
      early_.emplace_back(header, std::string(chunk));
      return;
    }
    absl::Status delivered = DeliverStarted(header, chunk);
    if (!delivered.ok()) Finish(std::move(delivered));
  }

  // The read role's holder: one message; not OK if the connection ended.
  absl::Status DeliverStarted(const MqHeader& header, std::string_view chunk) {
    if (header.kind == MqKind::kClose) {
      return absl::UnavailableError(absl::StrCat(description_, ": the peer closed the connection"));
    }
    if (header.kind != MqKind::kData) {
      IPCRPC_LOG(WARNING) << description_ << ": closing: unexpected message kind "
                          << static_cast<int>(header.kind);
      return absl::DataLossError(absl::StrCat(description_, ": unexpected message kind"));
    }
    auto message = reassembler_.Add(header, chunk);
    if (!message.ok()) {
      IPCRPC_LOG(WARNING) << description_ << ": closing: " << message.status();
      return message.status();
    }
    if (message->has_value()) on_message_(**message);
    if (closing_.load() || finished_) {
      return absl::CancelledError(absl::StrCat(description_, ": closed"));
    }
    return absl::OkStatus();
  }

  void SetLoopReadPolicy(absl::AnyInvocable<bool()> keep_loop_reading) override {
    read_role_.SetPolicy(std::move(keep_loop_reading));
  }

  // Client side only (the reply queue is this connection's own).
  ReadResult ReadUntil(int64_t deadline_ns, absl::FunctionRef<bool()> done) override {
    if (!has_reply_queue_) return ReadResult::kUnsupported;
    if (!read_role_.TryTakeForCaller()) {
      return finished_ || closing_.load() ? ReadResult::kClosed : ReadResult::kBusy;
    }
    ReadResult result = ReadResult::kTimeout;
    absl::Status ended;
    // Wait first, receive after (see StreamConnection::ReadUntil).
    bool readable = deadline_ns <= MonotonicNowNs();
    for (;;) {
      if (done()) {
        result = ReadResult::kDone;
        break;
      }
      const Got got = readable ? ReceiveOne(&ended) : Got::kNothing;
      readable = true;
      if (got == Got::kEnded) {
        result = ReadResult::kClosed;
        break;
      }
      if (got == Got::kMessage) continue;
      const int64_t now = MonotonicNowNs();
      if (now >= deadline_ns) break;
      struct pollfd fds[4] = {{read_queue_.get(), POLLIN, 0},
                              {close_event_.get(), POLLIN, 0},
                              {peer_pidfd_.get(), POLLIN, 0},
                              {wake_event_.get(), POLLIN, 0}};
      ended = PollUntil(fds, 4, deadline_ns, now, description_);
      if (!ended.ok()) {
        result = ReadResult::kClosed;
        break;
      }
      if (fds[3].revents != 0) {
        uint64_t count;
        ssize_t ignored = ::read(wake_event_.get(), &count, sizeof(count));
        (void)ignored;
      }
      if (fds[2].revents != 0 && fds[0].revents == 0) {
        ended = absl::UnavailableError(
            absl::StrCat(description_, ": peer pid ", peer_.pid, " exited"));
        result = ReadResult::kClosed;
        break;
      }
    }
    auto self = std::static_pointer_cast<MqConnection>(shared_from_this());
    asio::io_context& io = *io_.load();
    return read_role_.EndCallerRead(
        result,
        [&] {
          // Finish left the reading state to us (its handler holds the owner).
          on_message_ = nullptr;
        },
        [&] { asio::post(io, [self, ended] { self->Finish(ended); }); },
        [&] { asio::post(io, [self] { self->StartLoopReading(); }); });
  }

  void EnsureReader() override {
    if (!has_reply_queue_ || !read_role_.EnsureReader()) return;
    auto self = std::static_pointer_cast<MqConnection>(shared_from_this());
    asio::post(*io_.load(), [self] { self->StartLoopReading(); });
  }

  void WakeReader() override {
    uint64_t one = 1;
    ssize_t ignored = ::write(wake_event_.get(), &one, sizeof(one));
    (void)ignored;
  }

  // One fragment only (a message in several could be left half sent), and
  // only if the peer's queue has room now.
  bool TrySend(absl::Span<const std::string_view> parts, int priority,
               absl::Status* error) override {
    size_t total = 0;
    for (std::string_view part : parts) total += part.size();
    if (total > write_message_size_ - kMqHeaderSize) return false;
    if (!write_mu_.TryLock()) return false;
    const bool done = TrySendLocked(parts, total, priority, error);
    write_mu_.Unlock();
    return done;
  }

  absl::Status Send(absl::Span<const std::string_view> parts, int priority) override {
    return SendWithin(parts, priority, kNoDeadline);
  }

  absl::Status SendWithin(absl::Span<const std::string_view> parts, int priority,
                          int64_t deadline_ns) override {
    bool broken = false;
    absl::Status sent = SendMessage(parts, priority, deadline_ns, &broken);
    if (broken) {
      // Part of the message is in the peer's queue: the connection cannot
      // carry another (the caller closes it, see SendWithin).
      IPCRPC_LOG(WARNING) << description_
                          << ": the peer took only part of a message before its deadline";
    }
    return sent;
  }

 private:
  // Send's work, under write_mu_; `*broken`: the deadline passed after part
  // of the message went out.
  absl::Status SendMessage(absl::Span<const std::string_view> parts, int priority,
                           int64_t deadline_ns, bool* broken) {
    size_t total = 0;
    for (std::string_view part : parts) total += part.size();
    if (total > max_message_size_) {
      return absl::ResourceExhaustedError(absl::StrCat(description_, ": message of ", total,
                                                       " bytes exceeds max_message_size ",
                                                       max_message_size_));
    }
    const unsigned mq_priority = static_cast<unsigned>(std::clamp(priority, 0, 31));
    MutexLock lock(&write_mu_);
    if (closing_.load()) {
      return absl::UnavailableError(absl::StrCat(description_, ": connection closed"));
    }
    MqHeader header;
    header.kind = MqKind::kData;
    header.sequence = next_sequence_++;
    header.connection = connection_id_;
    header.total_length = static_cast<uint32_t>(total);
    const size_t room = write_message_size_ - kMqHeaderSize;
    size_t part = 0;
    size_t part_offset = 0;
    size_t offset = 0;
    do {
      const size_t chunk = std::min(room, total - offset);
      header.offset = static_cast<uint32_t>(offset);
      header.last = offset + chunk == total;
      EncodeMqHeader(header, send_buffer_.data());
      // Gather the chunk from the parts (mq_send takes one buffer).
      size_t filled = 0;
      while (filled < chunk) {
        const size_t n = std::min(chunk - filled, parts[part].size() - part_offset);
        // (An empty part's data() may be null: memcpy must not see it.)
        if (n > 0) {
          std::memcpy(send_buffer_.data() + kMqHeaderSize + filled,
                      parts[part].data() + part_offset, n);
        }
        filled += n;
        part_offset += n;
        if (part_offset == parts[part].size()) {
          ++part;
          part_offset = 0;
        }
      }
      while (part < parts.size() && parts[part].size() == part_offset) {
        ++part;
        part_offset = 0;
      }
      absl::Status sent =
          SendOne(send_buffer_.data(), kMqHeaderSize + chunk, mq_priority, deadline_ns);
      if (absl::IsDeadlineExceeded(sent)) {
        if (offset == 0) return MarkNotDelivered(std::move(sent));
        *broken = true;
        return sent;
      }
      IPCRPC_RETURN_IF_ERROR(sent);
      offset += chunk;
    } while (offset < total);
    return absl::OkStatus();
  }

 public:
  void Close() override {
    if (closing_.exchange(true)) return;
    uint64_t one = 1;
    ssize_t ignored = ::write(close_event_.get(), &one, sizeof(one));
    (void)ignored;
    SayClose();
    if (asio::io_context* io = io_.load(); io != nullptr) {
      auto self = std::static_pointer_cast<MqConnection>(shared_from_this());
      asio::post(*io, [self] {
        self->Finish(absl::CancelledError(absl::StrCat(self->description_, ": closed")));
      });
    }
  }

  const PeerCredentials& peer() const override { return peer_; }
  const std::string& description() const override { return description_; }

 private:
  // TrySend's work, with write_mu_ held: `total` bytes of `parts`.
  bool TrySendLocked(absl::Span<const std::string_view> parts, size_t total, int priority,
                     absl::Status* error) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_) {
    if (closing_.load()) {
      *error = absl::UnavailableError(absl::StrCat(description_, ": connection closed"));
      return true;
    }
    MqHeader header;
    header.kind = MqKind::kData;
    header.sequence = next_sequence_;
    header.connection = connection_id_;
    header.total_length = static_cast<uint32_t>(total);
    header.offset = 0;
    header.last = true;
    EncodeMqHeader(header, send_buffer_.data());
    size_t filled = kMqHeaderSize;
    for (std::string_view part : parts) {
      if (part.empty()) continue;  // its data() may be null
      std::memcpy(send_buffer_.data() + filled, part.data(), part.size());
      filled += part.size();
    }
    const unsigned mq_priority = static_cast<unsigned>(std::clamp(priority, 0, 31));
    for (;;) {
      if (mq_send(write_queue_.get(), send_buffer_.data(), filled, mq_priority) == 0) {
        ++next_sequence_;
        *error = absl::OkStatus();
        return true;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return false;  // full: nothing sent
      *error = ErrnoStatus(errno, "mq_send", description_);
      return true;
    }
  }

  absl::Status SendOne(const char* data, size_t size, unsigned priority, int64_t deadline_ns)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_) {
    for (;;) {
      if (closing_.load()) {
        return absl::UnavailableError(absl::StrCat(description_, ": connection closed"));
      }
      if (mq_send(write_queue_.get(), data, size, priority) == 0) return absl::OkStatus();
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        // The peer's queue is full: wait for room, or for the end. In the
        // kernel's own line of senders (it wakes one per freed slot), not in
        // poll(POLLOUT), which wakes every waiting sender for each slot: a
        // hundred clients of one full server queue made that a storm that
        // starved the server. Slices of 10 ms, to notice Close and the
        // peer's death.
        absl::Status waited = WaitInLine(data, size, priority, deadline_ns);
        if (waited.ok() || !absl::IsDeadlineExceeded(waited)) return waited;
        if (MonotonicNowNs() >= deadline_ns) {
          return absl::DeadlineExceededError(
              absl::StrCat(description_, ": the peer's queue stayed full"));
        }
        continue;
      }
      return ErrnoStatus(errno, "mq_send", description_);
    }
  }

  // One blocking mq_timedsend of up to 10 ms (the descriptor is made
  // blocking for it: senders hold write_mu_). DEADLINE_EXCEEDED: try again.
  absl::Status WaitInLine(const char* data, size_t size, unsigned priority, int64_t deadline_ns)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_) {
    struct mq_attr blocking = {};
    struct mq_attr nonblocking = {};
    nonblocking.mq_flags = O_NONBLOCK;
    // 10 ms, or what is left before the deadline.
    const int64_t slice_ns =
        std::clamp<int64_t>(deadline_ns - MonotonicNowNs(), 0, 10'000'000);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);  // mq_timedsend's clock
    until.tv_nsec += static_cast<long>(slice_ns);
    if (until.tv_nsec >= 1'000'000'000) {
      until.tv_nsec -= 1'000'000'000;
      ++until.tv_sec;
    }
    mq_setattr(write_queue_.get(), &blocking, nullptr);
    const int sent = mq_timedsend(write_queue_.get(), data, size, priority, &until);
    const int error = errno;
    mq_setattr(write_queue_.get(), &nonblocking, nullptr);
    if (sent == 0) return absl::OkStatus();
    if (error != ETIMEDOUT && error != EINTR) return ErrnoStatus(error, "mq_send", description_);
    if (closing_.load()) {
      return absl::UnavailableError(absl::StrCat(description_, ": connection closed"));
    }
    struct pollfd peer = {peer_pidfd_.get(), POLLIN, 0};
    if (peer.fd >= 0 && ::poll(&peer, 1, 0) > 0) {
      return absl::UnavailableError(absl::StrCat(description_, ": the peer exited"));
    }
    return absl::DeadlineExceededError("no room yet");
  }

  // Tells the peer the connection is over, once, at once (best effort: if
  // its queue is full it learns from our pid instead).
  void SayClose() {
    MutexLock lock(&write_mu_);
    if (said_close_ || !write_queue_.valid()) return;
    said_close_ = true;
    MqHeader header;
    header.kind = MqKind::kClose;
    header.connection = connection_id_;
    char message[kMqHeaderSize];
    EncodeMqHeader(header, message);
    mq_send(write_queue_.get(), message, sizeof(message), 0);
  }

  enum class Got { kMessage, kNothing, kEnded };
  // The read role's holder: one mq_receive and its delivery.
  Got ReceiveOne(absl::Status* why) {
    for (;;) {
      if (finished_ || closing_.load()) {
        *why = absl::CancelledError(absl::StrCat(description_, ": closed"));
        return Got::kEnded;
      }
      unsigned priority = 0;
      ssize_t n = mq_receive(read_queue_.get(), receive_buffer_.data(), receive_buffer_.size(),
                             &priority);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) return Got::kNothing;
        *why = ErrnoStatus(errno, "mq_receive", description_);
        return Got::kEnded;
      }
      std::string_view message(receive_buffer_.data(), static_cast<size_t>(n));
      auto header = DecodeMqHeader(message);
      if (!header.ok()) {
        IPCRPC_LOG(WARNING) << description_ << ": closing: " << header.status();
        *why = header.status();
        return Got::kEnded;
      }
      *why = DeliverStarted(*header, message.substr(kMqHeaderSize));
      return why->ok() ? Got::kMessage : Got::kEnded;
    }
  }

  // On the loop: starts (again) to watch the reply queue and reads it.
  void StartLoopReading() {
    if (finished_) return;
    // Already reading (see StreamConnection::StartLoopReading).
    if (readable_.has_value()) return;
    readable_.emplace(*io_.load(), read_queue_.get());
    ReadQueue();
  }

  void ReadQueue() {
    for (;;) {
      absl::Status why;
      const Got got = ReceiveOne(&why);
      if (got == Got::kMessage) continue;
      if (got == Got::kEnded) {
        Finish(std::move(why));
        return;
      }
      break;
    }
    if (!read_role_.LoopKeepsReading()) {
      // Nothing expected: stop watching; a direct reader or EnsureReader
      // starts again.
      readable_.reset();
      return;
    }
    // The queue is empty (EAGAIN above): the wait costs no system call.
    auto self = std::static_pointer_cast<MqConnection>(shared_from_this());
    readable_->AsyncWait([self](const asio::error_code& ec) {
      if (ec || self->finished_) return;
      self->ReadQueue();
    });
  }

  void Finish(absl::Status reason) {
    if (finished_) return;
    finished_ = true;
    closing_.store(true);
    // A direct reader may be inside ReceiveOne: the queue, the pidfd it
    // polls and the handler stay until the connection is destroyed.
    const bool caller_reads = read_role_.Finish();
    uint64_t one = 1;
    ssize_t ignored = ::write(close_event_.get(), &one, sizeof(one));
    (void)ignored;
    readable_.reset();
    if (peer_watch_.has_value()) {
      peer_watch_->release();
      peer_watch_.reset();
    }
    SayClose();
    {
      MutexLock lock(&write_mu_);
      write_queue_.Reset();
      if (!caller_reads) {
        read_queue_.Reset();
        peer_pidfd_.Reset();
      }
    }
    if (!caller_reads) on_message_ = nullptr;
    if (on_finish_) std::move(on_finish_)();
    on_finish_ = nullptr;
    if (on_closed_) {
      CloseHandler on_closed = std::move(on_closed_);
      on_closed_ = nullptr;
      std::move(on_closed)(std::move(reason));
    }
  }

  UniqueFd read_queue_;
  UniqueFd write_queue_;
  const size_t write_message_size_;
  const uint64_t connection_id_;
  UniqueFd peer_pidfd_;
  const PeerCredentials peer_;
  const std::string description_;
  UniqueFd close_event_;

  std::atomic<bool> closing_{false};
  std::atomic<asio::io_context*> io_{nullptr};

  const bool has_reply_queue_ = read_queue_.valid();  // a client's connection
  UniqueFd wake_event_{::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)};  // WakeReader (-1: none)
  std::atomic<bool> finished_{false};
  ReadRole read_role_;

  // Loop only.
  bool started_ = false;
  std::optional<ReadWatch> readable_;
  std::optional<asio::posix::stream_descriptor> peer_watch_;
  MessageHandler on_message_;
  CloseHandler on_closed_;
  absl::AnyInvocable<void() &&> on_finish_;
  MqReassembler reassembler_;
  std::vector<char> receive_buffer_;
  std::vector<std::pair<MqHeader, std::string>> early_;
  const size_t max_message_size_;

  Mutex write_mu_;
  uint32_t next_sequence_ ABSL_GUARDED_BY(write_mu_) = 0;
  bool said_close_ ABSL_GUARDED_BY(write_mu_) = false;
  std::vector<char> send_buffer_ ABSL_GUARDED_BY(write_mu_);
};

absl::StatusOr<UniqueFd> NewCloseEvent(std::string_view what) {
  UniqueFd fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!fd.valid()) return ErrnoStatus(errno, "eventfd", what);
  return fd;
}

// ----------------------------------------------------------------- server

// What the server queue's watch does on the loop. Loop only.
struct MqAcceptor : std::enable_shared_from_this<MqAcceptor> {
  std::string description;
  TransportOptions options;
  Listener::AcceptHandler on_accept;
  std::vector<char> buffer;
  absl::flat_hash_map<uint64_t, std::weak_ptr<MqConnection>> routes;
  // Cleared by the listener's Close: CONNECTs are refused from then on, but
  // the queue is still read for the connections it has (their requests and
  // CANCELs come through it while the server drains).
  std::atomic<bool> accepting{true};

  // Receives and handles every message that is there; false stops serving.
  bool ReadMessages(int queue) {
    for (;;) {
      unsigned priority = 0;
      ssize_t n = mq_receive(queue, buffer.data(), buffer.size(), &priority);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) return true;
        IPCRPC_LOG(ERROR) << description << ": stops serving: mq_receive: "
                          << std::strerror(errno);
        return false;
      }
      HandleMessage(std::string_view(buffer.data(), static_cast<size_t>(n)));
    }
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
    struct mq_attr attr;
    if (mq_getattr(reply.get(), &attr) < 0 ||
        attr.mq_msgsize < static_cast<long>(kMqHeaderSize) + 1) {
      IPCRPC_LOG(WARNING) << description << ": refusing pid " << pid
                          << ": reply queue messages too small";
      return;
    }
    auto close_event = NewCloseEvent(description);
    if (!close_event.ok()) return;
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
    acceptor->buffer.resize(static_cast<size_t>(attr.mq_msgsize));
    acceptor->on_accept = std::move(on_accept);
    const int fd = queue.get();
    acceptor_ = acceptor;
    watch_ = DescriptorWatch::Start(io, std::move(queue),
                                    [acceptor, fd] { return acceptor->ReadMessages(fd); });
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

// ----------------------------------------------------------------- client

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
    // server: say so now rather than after the handshake's timeout.
    {
      UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
      sockaddr_un addr;
      const socklen_t len = MqTokenAddress(endpoint_.address, &addr);
      if (probe.valid() &&
          ::connect(probe.get(), reinterpret_cast<sockaddr*>(&addr), len) < 0 &&
          errno == ECONNREFUSED) {
        return absl::UnavailableError(absl::StrCat(
            text, ": no server is listening (queue ", server_name, " is stale)"));
      }
    }

    static std::atomic<unsigned> counter{0};
    // Unpredictable (getrandom), so that nobody can take the name first; if
    // somebody has all the same, another name.
    std::string reply_name;
    struct mq_attr attr = QueueAttributes(/*server=*/false);
    UniqueFd reply;
    for (int attempt = 0; attempt < 4 && !reply.valid(); ++attempt) {
      reply_name = absl::StrCat("/ipcrpc-", ::getpid(), "-", counter.fetch_add(1), "-",
                                RandomU64() % 1'000'000'000'000);
      reply.Reset(static_cast<int>(mq_open(
          reply_name.c_str(), O_CREAT | O_EXCL | O_RDONLY | O_NONBLOCK | O_CLOEXEC, 0600, &attr)));
      if (!reply.valid() && errno != EEXIST) break;
    }
    if (!reply.valid() && errno == EMFILE && attr.mq_maxmsg > 1) {
      // ReplyQueueFallback: RLIMIT_MSGQUEUE (or descriptors) ran out; the
      // smallest queue still works, one fragment at a time.
      attr.mq_maxmsg = 1;
      reply.Reset(static_cast<int>(mq_open(
          reply_name.c_str(), O_CREAT | O_EXCL | O_RDONLY | O_NONBLOCK | O_CLOEXEC, 0600, &attr)));
    }
    if (!reply.valid()) return MqOpenError(errno, reply_name);
    // The name goes as soon as the server has opened it, or on any failure.
    absl::Cleanup unlink_reply = [&] { mq_unlink(reply_name.c_str()); };
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
      absl::Status waited = WaitFor(reply.get(), POLLIN, -1, PollTimeoutMs(deadline_ns), text);
      if (!waited.ok()) {
        return absl::UnavailableError(absl::StrCat(
            text, ": the server did not accept the connection ", deadline.bound,
            " (its log may say why)"));
      }
      n = mq_receive(reply.get(), buffer.data(), buffer.size(), nullptr);
      if (n >= 0) break;
      if (errno != EINTR && errno != EAGAIN) return ErrnoStatus(errno, "mq_receive", reply_name);
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
    return std::make_shared<MqConnection>(
        std::move(reply), std::move(server), server_attr.mq_msgsize, accept->connection,
        std::move(pidfd), PeerCredentials{server_pid, server_st.st_uid},
        absl::StrCat(text, " server pid ", server_pid), options_.max_message_size,
        std::move(close_event));
  }

  const std::string& endpoint() const override { return endpoint_.text; }

 private:
  const Endpoint endpoint_;
  const TransportOptions options_;
};

absl::Status ValidateMqName(const Endpoint& endpoint) {
  const std::string& name = endpoint.address;
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos ||
      name.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "endpoint '", endpoint.text, "': mq: needs a queue name without '/' (e.g. mq:calc)"));
  }
  if (name.size() > 200) {
    return absl::InvalidArgumentError(absl::StrCat("endpoint '", endpoint.text,
                                                   "': the queue name is over 200 bytes"));
  }
  return absl::OkStatus();
}

}  // namespace

void EncodeMqHeader(const MqHeader& header, char* out) {
  out[0] = static_cast<char>(header.kind);
  out[1] = header.last ? 1 : 0;
  out[2] = out[3] = 0;
  PutLe(out + 4, header.sequence, 4);
  PutLe(out + 8, header.connection, 8);
  PutLe(out + 16, header.total_length, 4);
  PutLe(out + 20, header.offset, 4);
}

absl::StatusOr<MqHeader> DecodeMqHeader(std::string_view message) {
  if (message.size() < kMqHeaderSize) {
    return absl::DataLossError(absl::StrCat("queue message of ", message.size(),
                                            " bytes is shorter than its ", kMqHeaderSize,
                                            "-byte header"));
  }
  const uint8_t kind = static_cast<uint8_t>(message[0]);
  if (kind < 1 || kind > 4) return absl::DataLossError(absl::StrCat("unknown message kind ", kind));
  MqHeader header;
  header.kind = static_cast<MqKind>(kind);
  header.last = (message[1] & 1) != 0;
  header.sequence = static_cast<uint32_t>(GetLe(message.data() + 4, 4));
  header.connection = GetLe(message.data() + 8, 8);
  header.total_length = static_cast<uint32_t>(GetLe(message.data() + 16, 4));
  header.offset = static_cast<uint32_t>(GetLe(message.data() + 20, 4));
  return header;
}

absl::StatusOr<std::optional<std::string_view>> MqReassembler::Add(const MqHeader& header,
                                                                   std::string_view chunk) {
  const size_t total = header.total_length;
  if (total > max_message_size_) {
    return absl::ResourceExhaustedError(absl::StrCat("fragmented message of ", total,
                                                     " bytes exceeds max_message_size ",
                                                     max_message_size_));
  }
  if (static_cast<uint64_t>(header.offset) + chunk.size() > total) {
    return absl::DataLossError("fragment runs past its message's length");
  }
  const bool ends = header.offset + chunk.size() == total;
  if (ends != header.last) return absl::DataLossError("fragment's 'last' flag is wrong");
  auto it = partial_.find(header.sequence);
  if (header.offset == 0) {
    if (it != partial_.end()) {
      return absl::DataLossError(absl::StrCat("message ", header.sequence, " started twice"));
    }
    if (ends) return std::optional<std::string_view>(chunk);  // the common case: no copy
    if (partial_.size() >= max_partial_) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "more than ", max_partial_, " partially received messages on one connection"));
    }
    std::string& data = partial_[header.sequence];
    // Grows with the fragments that come, not to the length announced.
    data.reserve(std::min<size_t>(total, 64 * 1024));
    data.append(chunk);
    return std::optional<std::string_view>();
  }
  if (it == partial_.end() || it->second.size() != header.offset) {
    return absl::DataLossError(absl::StrCat("fragment of message ", header.sequence, " at offset ",
                                            header.offset, " is out of order"));
  }
  it->second.append(chunk);
  if (!ends) return std::optional<std::string_view>();
  complete_ = std::move(it->second);
  partial_.erase(it);
  return std::optional<std::string_view>(complete_);
}

MqLimits ReadMqLimits() {
  return MqLimits{ReadProcLong("/proc/sys/fs/mqueue/msg_max", 10),
                  ReadProcLong("/proc/sys/fs/mqueue/msgsize_max", 8192)};
}

absl::StatusOr<bool> MqQueueIsStale(const std::string& name) {
  const std::string path = "/" + name;
  UniqueFd queue(static_cast<int>(mq_open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC)));
  if (!queue.valid()) {
    if (errno == ENOENT) return false;
    return MqOpenError(errno, path);
  }
  UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!probe.valid()) return ErrnoStatus(errno, "socket", path);
  sockaddr_un addr;
  const socklen_t len = MqTokenAddress(name, &addr);
  if (::connect(probe.get(), reinterpret_cast<sockaddr*>(&addr), len) == 0) return false;
  if (errno == ECONNREFUSED || errno == ENOENT) return true;
  if (errno == EAGAIN || errno == EINPROGRESS) return false;  // a live server's backlog is full
  return ErrnoStatus(errno, "connect", path + "'s token");
}

absl::StatusOr<uid_t> MqQueueOwner(const std::string& name) {
  const std::string path = "/" + name;
  UniqueFd queue(static_cast<int>(mq_open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC)));
  if (!queue.valid()) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": no such queue"));
    return MqOpenError(errno, path);
  }
  struct stat st;
  if (::fstat(queue.get(), &st) < 0) return ErrnoStatus(errno, "fstat", path);
  return st.st_uid;
}

absl::Status RemoveStaleMqQueue(const std::string& name) {
  const std::string path = "/" + name;
  // Another uid's queue stays, however stale.
  absl::StatusOr<uid_t> owner = MqQueueOwner(name);
  if (!owner.ok()) {
    if (absl::IsNotFound(owner.status())) return absl::OkStatus();  // gone already
    return owner.status();
  }
  if (*owner != ::geteuid()) return NotOursError(path, "queue", path, *owner);
  UniqueFd token(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!token.valid()) return ErrnoStatus(errno, "socket", path);
  sockaddr_un addr;
  const socklen_t len = MqTokenAddress(name, &addr);
  if (::bind(token.get(), reinterpret_cast<sockaddr*>(&addr), len) < 0) {
    if (errno == EADDRINUSE) {
      return absl::FailedPreconditionError(absl::StrCat(path, ": a live server owns it"));
    }
    return ErrnoStatus(errno, "bind", path + "'s token");
  }
  // Holding the token, nobody else can start serving /NAME: it is ours to remove.
  if (mq_unlink(path.c_str()) < 0 && errno != ENOENT) return ErrnoStatus(errno, "mq_unlink", path);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Listener>> CreateMqListener(const Endpoint& endpoint,
                                                           const TransportOptions& options) {
  IPCRPC_RETURN_IF_ERROR(ValidateMqName(endpoint));
  return std::make_unique<MqListener>(endpoint, options);
}

absl::StatusOr<std::unique_ptr<Connector>> CreateMqConnector(const Endpoint& endpoint,
                                                             const TransportOptions& options) {
  IPCRPC_RETURN_IF_ERROR(ValidateMqName(endpoint));
  return std::make_unique<MqConnector>(endpoint, options);
}

}  // namespace ipcrpc::internal
