#include "transports/stream_connection.h"

#include <fcntl.h>
#include <limits.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <new>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "base/clock.h"
#include "base/little_endian.h"
#include "base/logging.h"
#include "base/mutex.h"
#include "base/status_macros.h"

namespace ipcrpc::internal {
namespace {

constexpr size_t kPrefixSize = 4;
// Room before a lent body (which starts on a page) for its length prefix
// and frame (StreamConnection::SendBodyWithin; more: copied instead).
constexpr size_t kLendHeadroom = 4096;
// How long the lending buffer is kept after its last use (FitPipeLocked).
constexpr int64_t kLendIdleNs = 1'000'000'000;
constexpr size_t kInitialBuffer = 64 * 1024;
// A buffer grown past this for one large message is released once empty.
// Up to it (a 1 MiB message grows it to 2 MiB), it is kept: with glibc's
// malloc a buffer released and grown again per message is faulted in afresh
// each time (include/ipcrpc/scratch.h says more).
constexpr size_t kKeepBuffer = 2 * 1024 * 1024;
constexpr size_t kPageSize = 4096;
// The most a pipe or FIFO grows to for a large message (FitPipeLocked): 64
// pages. 1 MiB (the default pipe-max-size) measured no faster for 1 MiB
// messages.
constexpr size_t kMaxPipeCapacity = 256 * 1024;

// A send that waited for its turn (SendTurn) past its deadline: nothing
// went out.
absl::Status TurnNotTaken(const std::string& description) {
  return MarkNotDelivered(absl::DeadlineExceededError(
      absl::StrCat(description, ": another send held the connection past the deadline")));
}

// Part of the message went out before its deadline: the stream cannot carry
// another (the caller closes it, see Connection::SendWithin).
void WarnIfCutShort(const absl::Status& result, const std::string& description, size_t total) {
  if (absl::IsDeadlineExceeded(result) && !IsNotDelivered(result)) {
    IPCRPC_LOG(WARNING) << description << ": the peer took only part of a " << total
                        << "-byte message before its deadline";
  }
}

using Iovecs = absl::InlinedVector<struct iovec, 8>;

// The length prefix (written into `prefix`) and the parts, as one writev.
Iovecs Gather(size_t total, absl::Span<const std::string_view> parts,
              unsigned char (&prefix)[kPrefixSize]) {
  PutLe(reinterpret_cast<char*>(prefix), total, kPrefixSize);
  Iovecs iov;
  iov.push_back({prefix, kPrefixSize});
  for (std::string_view part : parts) {
    if (!part.empty()) iov.push_back({const_cast<char*>(part.data()), part.size()});
  }
  return iov;
}

// The largest message that a non-blocking write takes whole when nothing
// is queued (EmptyForWriting): an empty pipe takes its capacity (its pages,
// each filled whole by one write; 0: unknown); an idle Unix stream socket
// `fd` takes one buffer of up to half its send buffer (less the kernel's
// overhead, for which a page is kept). PIPE_BUF where unknown.
size_t PipeWholeWriteLimit(size_t capacity) { return std::max<size_t>(capacity, PIPE_BUF); }
size_t SocketWholeWriteLimit(int fd) {
  int send_buffer = 0;
  socklen_t length = sizeof(send_buffer);
  if (::getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &send_buffer, &length) != 0 ||
      send_buffer / 2 <= 4096 + PIPE_BUF) {
    return PIPE_BUF;
  }
  return static_cast<size_t>(send_buffer / 2 - 4096);
}

}  // namespace

absl::StatusOr<std::shared_ptr<StreamConnection>> StreamConnection::Create(
    UniqueFd read_fd, UniqueFd write_fd, bool is_socket, PeerCredentials peer,
    std::string description, size_t max_message_size) {
  absl::Status status = SetNonBlocking(read_fd.get(), true, description);
  if (!status.ok()) return status;
  if (write_fd.valid()) {
    status = SetNonBlocking(write_fd.get(), true, description);
    if (!status.ok()) return status;
  }
  if (!is_socket) PrepareForSigpipe();  // writes go through WithoutSigpipe
  UniqueFd close_event(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!close_event.valid()) return ErrnoStatus(errno, "eventfd", description);
  UniqueFd wake_event(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake_event.valid()) return ErrnoStatus(errno, "eventfd", description);
  auto connection = std::make_shared<StreamConnection>(
      std::move(read_fd), std::move(write_fd), std::move(close_event), std::move(wake_event),
      is_socket, peer, std::move(description), max_message_size);
  {
    MutexLock lock(&connection->write_mu_);
    if (is_socket) {
      connection->whole_write_limit_ = SocketWholeWriteLimit(connection->write_fd_);
    } else {
      const int capacity = ::fcntl(connection->write_fd_, F_GETPIPE_SZ);
      connection->pipe_capacity_ = capacity > 0 ? static_cast<size_t>(capacity) : 0;
      connection->whole_write_limit_ = PipeWholeWriteLimit(connection->pipe_capacity_);
    }
    connection->first_pipe_capacity_ = connection->pipe_capacity_;
  }
  return connection;
}

StreamConnection::StreamConnection(UniqueFd read_fd, UniqueFd write_fd, UniqueFd close_event,
                                   UniqueFd wake_event, bool is_socket, PeerCredentials peer, std::string description,
                                   size_t max_message_size)
    : PolledConnection(std::move(description)),
      read_fd_(read_fd.get()),
      write_fd_(write_fd.valid() ? write_fd.get() : read_fd.get()),
      is_socket_(is_socket),
      peer_(peer),
      max_message_size_(max_message_size),
      owned_read_fd_(std::move(read_fd)),
      owned_write_fd_(std::move(write_fd)),
      close_event_(std::move(close_event)),
      wake_event_(std::move(wake_event)),
      loans_(std::make_shared<Loans>(kKeepBuffer)) {}

StreamConnection::~StreamConnection() {
  // Not started, or finished: the descriptor wrapper is gone already, and
  // UniqueFd closes what is left.
  readable_.reset();
  MutexLock lock(&write_mu_);
  ReleaseLendingBufferLocked();
}

bool StreamConnection::BeginWatching() {
  if (readable_.has_value()) return false;
  // Level-triggered: LoopRead may stop after a short read (see there); it
  // always waits again or stops watching before it returns.
  readable_.emplace(io(), read_fd_, ReadWatch::kLevel);
  return true;
}

void StreamConnection::AwaitReadable() { readable_->AsyncWait(ReadableHandler()); }

PolledConnection::Got StreamConnection::ReceiveOnce(Reader /*reader*/, absl::Status* why,
                                                    bool* drained) {
  for (;;) {
    if (closing_.load(std::memory_order_acquire)) {
      *why = absl::CancelledError(absl::StrCat(description_, ": closed"));
      return Got::kEnded;
    }
    if (buffer_.empty()) buffer_.Resize(kInitialBuffer, 0);
    if (end_ == buffer_.size()) {
      // The message in progress needs more room: compact, then grow by
      // doubling. The buffer grows with what the peer has actually sent (at
      // most twice that), never to the length it merely announced. Bytes
      // move by whole pages, so the next read lands at the same offset in
      // its page relative to the kernel's (base/copy.h, KernelBuffer).
      const size_t to = begin_ % kPageSize;
      if (begin_ > to) {
        std::memmove(buffer_.data() + to, buffer_.data() + begin_, end_ - begin_);
        end_ -= begin_ - to;
        begin_ = to;
      }
      if (end_ == buffer_.size()) buffer_.Resize(buffer_.size() * 2, end_);
    }
    const size_t room = buffer_.size() - end_;
    ssize_t n = ::read(read_fd_, buffer_.data() + end_, room);
    if (n > 0) {
      end_ += static_cast<size_t>(n);
      *drained = static_cast<size_t>(n) < room;
      *why = DeliverMessages();
      return why->ok() ? Got::kMessages : Got::kEnded;
    }
    if (n == 0) {
      *why = absl::UnavailableError(absl::StrCat(description_, ": peer closed the connection"));
      return Got::kEnded;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Got::kNothing;
    *why = ErrnoStatus(errno, "read", description_);
    return Got::kEnded;
  }
}

absl::Status StreamConnection::WaitForMore(int64_t deadline_ns, int64_t now) {
  struct pollfd fds[3] = {
      {read_fd_, POLLIN, 0}, {close_event_.get(), POLLIN, 0}, {wake_event_.get(), POLLIN, 0}};
  IPCRPC_RETURN_IF_ERROR(PollUntil(fds, 3, deadline_ns, now, description_));
  if (fds[2].revents != 0) {
    uint64_t count;
    ssize_t ignored = ::read(wake_event_.get(), &count, sizeof(count));
    (void)ignored;
  }
  return absl::OkStatus();
}

void StreamConnection::ReleaseReadState() {
  buffer_.Resize(0, 0);
  loans_->DropSpare();
}

std::shared_ptr<const void> StreamConnection::KeepDeliveredMessage() {
  if (!delivering_ || kept_) return nullptr;
  const size_t record = delivering_end_ - begin_;
  if (!WorthLending(record - kPrefixSize, record, buffer_.size())) return nullptr;
  std::optional<KernelBuffer> next = loans_->TakeSpare();
  if (!next.has_value()) return nullptr;  // the other buffer is still out
  // What came after the message moves to the next buffer, at the same
  // offset in its page (so reads land as before: ReceiveOnce). The next
  // buffer is as large as this one (which holds at + rest, as that is at
  // most end_), so the next large message need not grow it again.
  const size_t rest = end_ - delivering_end_;
  const size_t at = delivering_end_ % kPageSize;
  if (next->size() < buffer_.size()) {
    try {
      next->Resize(buffer_.size(), 0);
    } catch (const std::bad_alloc&) {
      loans_->Untake(std::move(*next));
      return nullptr;  // copied instead
    }
  }
  CopyBytes(next->data() + at, buffer_.data() + delivering_end_, rest);
  std::shared_ptr<const void> owner = loans_->Lend(&buffer_, std::move(*next));
  if (owner == nullptr) return nullptr;  // copied instead; nothing moved
  begin_ = at;
  end_ = at + rest;
  kept_ = true;
  return owner;
}

void StreamConnection::WakeReader() {
  uint64_t one = 1;
  ssize_t ignored = ::write(wake_event_.get(), &one, sizeof(one));
  (void)ignored;
}

absl::Status StreamConnection::DeliverMessages() {
  while (end_ - begin_ >= kPrefixSize) {
    const uint32_t length = static_cast<uint32_t>(GetLe(buffer_.data() + begin_, kPrefixSize));
    if (length > max_message_size_) {
      IPCRPC_LOG(WARNING) << description_ << ": closing: peer announced a message of " << length
                          << " bytes, over max_message_size " << max_message_size_;
      return absl::ResourceExhaustedError(
          absl::StrCat(description_, ": message of ", length, " bytes exceeds max_message_size ",
                       max_message_size_));
    }
    const size_t whole = kPrefixSize + length;
    if (end_ - begin_ < whole) return absl::OkStatus();  // more bytes to come
    delivering_ = true;
    delivering_end_ = begin_ + whole;
    on_message_(std::string_view(buffer_.data() + begin_ + kPrefixSize, length));
    delivering_ = false;
    if (kept_) {
      kept_ = false;  // begin_ is already past it, in the next buffer
    } else {
      begin_ += whole;
    }
    if (closing_.load(std::memory_order_acquire) || finished_) {
      return absl::CancelledError(absl::StrCat(description_, ": closed"));
    }
  }
  if (begin_ == end_) {
    begin_ = end_ = 0;
    if (buffer_.size() > kKeepBuffer) buffer_.Resize(kInitialBuffer, 0);
  }
  return absl::OkStatus();
}

absl::Status StreamConnection::SendWithin(absl::Span<const std::string_view> parts,
                                          int /*priority*/, int64_t deadline_ns) {
  IPCRPC_ASSIGN_OR_RETURN(const size_t total, SendSize(parts, max_message_size_, description_));
  unsigned char prefix[kPrefixSize];
  Iovecs iov = Gather(total, parts, prefix);
  // Behind another sender that waits for room, no later than our deadline.
  if (!turn_.Acquire(deadline_ns)) return TurnNotTaken(description_);
  absl::Status result;
  {
    SendTurn::Holder turn(&turn_);
    MutexLock lock(&write_mu_);
    FitPipeLocked(kPrefixSize + total);
    WriteLocked(absl::MakeSpan(iov), /*try_first=*/false, &result, deadline_ns);
  }
  WarnIfCutShort(result, description_, total);
  return result;
}

bool StreamConnection::TrySend(absl::Span<const std::string_view> parts, int /*priority*/,
                               absl::Status* error) {
  size_t total = 0;
  for (std::string_view part : parts) total += part.size();
  // Up to PIPE_BUF bytes a non-blocking write to a pipe or FIFO is all or
  // nothing, and so is one to a Unix stream socket (a single buffer): never
  // half a message left for somebody else to finish. A larger message goes
  // only where it is sure to go whole (EmptyForWriting, under write_mu_).
  const bool small = kPrefixSize + total <= PIPE_BUF;
  if (!write_mu_.TryLock()) return false;  // another sender, maybe waiting for room
  FitPipeLocked(kPrefixSize + total);
  if (!small && (kPrefixSize + total > whole_write_limit_ || !EmptyForWriting())) {
    write_mu_.Unlock();
    return false;
  }
  unsigned char prefix[kPrefixSize];
  Iovecs iov = Gather(total, parts, prefix);
  // A large message was checked to go whole. Should the kernel still take
  // only part of it (memory pressure on a socket; a client that shrank its
  // pipe with F_SETPIPE_SZ), the loop does not wait for the rest: a stream
  // left in the middle of a message can only be closed, at once.
  const int64_t give_up_ns = small ? kNoDeadline : 0;
  const bool done = WriteLocked(absl::MakeSpan(iov), /*try_first=*/true, error, give_up_ns);
  write_mu_.Unlock();
  if (done && !small && !error->ok() && absl::IsDeadlineExceeded(*error)) {
    IPCRPC_LOG(WARNING) << description_ << ": closing: the client took only part of a " << total
                        << "-byte message";
    Close();
  }
  return done;
}

// Lending pages (vmsplice) instead of copying them into the pipe: the
// writer's copy of a large message into the pipe is the one copy a pipe
// round trip can do without; the reader's read still copies once. The raw
// ping-pong with 256 KiB pipes (ipcrpc_bench --vmsplice --raw_pipe_size
// 262144, split, p50): 16 KiB 27-31 against 29-36 us with write, 64 KiB
// 27-44 against 36-55, 1 MiB 411-538 against 618-864 (docs/PERFORMANCE.md).
// The catch: the pipe holds the buffer's pages, not a copy, until they are
// read, so the buffer must not be written into until then. Hence a buffer
// of the connection's own (a mapping of its own: unmapped at any time
// without harm, never reused by malloc for other data a peer could then
// read), written into again only once the pipe has been seen empty; else
// the message is copied as before. Sync calls find the pipe empty every
// time (the answer means the request was read); a client that keeps
// several large calls in flight copies all but one.
absl::Status StreamConnection::SendBodyWithin(absl::Span<const std::string_view> parts,
                                              const BodyWriter& body, int priority,
                                              int64_t deadline_ns) {
  size_t head = kPrefixSize;
  for (std::string_view part : parts) head += part.size();
  if (is_socket_ || body.size() < kLendMin || body.size() > kLendMax || head > kLendHeadroom) {
    return Connection::SendBodyWithin(parts, body, priority, deadline_ns);
  }
  IPCRPC_ASSIGN_OR_RETURN(const size_t total,
                          SendSize(parts, max_message_size_, description_, body.size()));
  if (!turn_.Acquire(deadline_ns)) return TurnNotTaken(description_);
  absl::Status result;
  bool lent = false;
  {
    SendTurn::Holder turn(&turn_);
    MutexLock lock(&write_mu_);
    FitPipeLocked(kPrefixSize + total);
    char* buffer = LendingBufferLocked(kLendHeadroom + body.size());
    lent = buffer != nullptr;
    if (lent) {
      // The body starts on a page, its length prefix and frame just before.
      char* at = buffer + kLendHeadroom - head;
      PutLe(at, total, kPrefixSize);
      char* next = at + kPrefixSize;
      for (std::string_view part : parts) {
        if (!part.empty()) std::memcpy(next, part.data(), part.size());
        next += part.size();
      }
      body.WriteFlat(buffer + kLendHeadroom);
      struct iovec iov = {at, head + body.size()};
      // Lent from the first byte the pipe takes, whatever happens next.
      lend_in_pipe_ = true;
      lend_last_ns_ = MonotonicNowNs();
      WriteLocked(absl::MakeSpan(&iov, 1), /*try_first=*/false, &result, deadline_ns,
                  /*lend=*/true);
      // vmsplice refused outright (a seccomp filter, a kernel without it):
      // nothing went out, and this connection copies from now on.
      if (lend_refused_) lent = false;
    }
  }
  // The buffer is in the pipe still (or there is no memory for one, or no
  // vmsplice): copied, as any message.
  if (!lent) return Connection::SendBodyWithin(parts, body, priority, deadline_ns);
  lent_messages_.fetch_add(1, std::memory_order_relaxed);
  WarnIfCutShort(result, description_, total);
  return result;
}

char* StreamConnection::LendingBufferLocked(size_t bytes) {
  if (write_fd_closed_ || write_broken_ || pipe_capacity_ == 0 || lend_refused_) return nullptr;
  if (bytes <= lend_capacity_) {
    if (lend_in_pipe_) {
      if (!EmptyForWriting()) return nullptr;
      lend_in_pipe_ = false;
    }
    return lend_data_;
  }
  ReleaseLendingBufferLocked();
  const size_t capacity = (bytes + 4095) / 4096 * 4096;
  void* mapped =
      ::mmap(nullptr, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapped == MAP_FAILED) return nullptr;
  // Not in a child this process forks: its pages are for the pipe alone.
  ::madvise(mapped, capacity, MADV_DONTFORK);
  lend_data_ = static_cast<char*>(mapped);
  lend_capacity_ = capacity;
  return lend_data_;
}

void StreamConnection::ReleaseLendingBufferLocked() {
  // Safe with pages still in the pipe: they stay, unchanged, until read.
  if (lend_data_ != nullptr) ::munmap(lend_data_, lend_capacity_);
  lend_data_ = nullptr;
  lend_capacity_ = 0;
  lend_in_pipe_ = false;
}

// A pipe holds 64 KiB unless told otherwise, so a 64 KiB message with its
// frame does not fit: the writer fills it, waits for the reader to take
// that, then writes the rest, and the reader wakes twice. Each is a wake-up
// across CPUs (20-45 us on a VM): measured, a 64 KiB echo over pipe: took
// 137 us at p50 with the default pipe and 88-100 us with one that holds the
// message (docs/PERFORMANCE.md). Grown only while large messages come, and
// given back after: the kernel counts a pipe's pages against its user's
// pipe-user-pages-soft (16384 by default), past which every new pipe of
// that user gets 2 pages, so idle connections keep the default 16.
void StreamConnection::FitPipeLocked(size_t frame) {
  // The lending buffer goes with the first smaller message a while after
  // the last large one (kept meanwhile: a connection that alternates large
  // and small messages would otherwise map and fault it in every time).
  if (lend_data_ != nullptr && frame < kLendMin &&
      MonotonicNowNs() - lend_last_ns_ > kLendIdleNs) {
    ReleaseLendingBufferLocked();
  }
  // A socket; or a closed descriptor, whose number may be someone else's
  // by now (the write that follows fails without touching it).
  if (pipe_capacity_ == 0 || write_fd_closed_ || write_broken_ ||
      closing_.load(std::memory_order_acquire)) {
    return;
  }
  size_t want = 0;
  if (frame > pipe_capacity_ && pipe_capacity_ < kMaxPipeCapacity && !grow_refused_) {
    want = std::min(std::bit_ceil(frame), kMaxPipeCapacity);
  } else if (frame <= first_pipe_capacity_ && pipe_capacity_ > first_pipe_capacity_) {
    // Refused (EBUSY) while the pipe holds more than that: the reader has
    // not taken it all yet; the next such message tries again.
    want = first_pipe_capacity_;
  } else {
    return;
  }
  const int capacity = ::fcntl(write_fd_, F_SETPIPE_SZ, static_cast<int>(want));
  if (capacity > 0) {
    pipe_capacity_ = static_cast<size_t>(capacity);
    whole_write_limit_ = PipeWholeWriteLimit(pipe_capacity_);
  } else if (errno == EPERM && want > pipe_capacity_) {
    // Beyond /proc/sys/fs/pipe-max-size or the user's pipe limits: large
    // messages go as before, a pipe's worth at a time, and this connection
    // does not ask again.
    grow_refused_ = true;
  }
}

bool StreamConnection::EmptyForWriting() {
  if (write_fd_closed_ || write_broken_) return false;
  int queued = -1;
  // A pipe's or FIFO's unread bytes (FIONREAD works on its write end too);
  // a socket's bytes not yet taken by the peer (SIOCOUTQ, which is TIOCOUTQ).
  if (::ioctl(write_fd_, is_socket_ ? TIOCOUTQ : FIONREAD, &queued) != 0) return false;
  return queued == 0;
}

bool StreamConnection::WriteLocked(absl::Span<struct iovec> iov, bool try_first,
                                   absl::Status* result, int64_t give_up_ns, bool lend) {
  size_t first = 0;
  bool first_write = true;
  while (first < iov.size()) {
    if (write_fd_closed_ || write_broken_ || closing_.load(std::memory_order_acquire)) {
      *result = absl::UnavailableError(absl::StrCat(description_, ": connection closed"));
      if (first_write) *result = MarkNotDelivered(std::move(*result));
      return true;
    }
    ssize_t n;
    if (is_socket_) {
      struct msghdr msg = {};
      msg.msg_iov = iov.data() + first;
      msg.msg_iovlen = iov.size() - first;
      n = ::sendmsg(write_fd_, &msg, MSG_NOSIGNAL);
    } else {
      n = WithoutSigpipe([&] {
        return lend ? ::vmsplice(write_fd_, iov.data() + first, iov.size() - first,
                                 SPLICE_F_NONBLOCK)
                    : ::writev(write_fd_, iov.data() + first, static_cast<int>(iov.size() - first));
      });
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (try_first && first_write) return false;
        if (!WaitForRoom(give_up_ns, first_write, result)) return true;
        continue;
      }
      if (errno == EPIPE || errno == ECONNRESET) {
        *result = absl::UnavailableError(absl::StrCat(description_, ": peer closed the connection"));
        // EPIPE on the first write: not a byte of this message went out.
        if (first_write) *result = MarkNotDelivered(std::move(*result));
        return true;
      }
      if (lend && first_write) {
        // vmsplice itself refused (ENOSYS, EPERM from a seccomp filter,
        // EINVAL, ENOMEM) before a byte went out: the caller copies.
        lend_refused_ = true;
        *result = MarkNotDelivered(ErrnoStatus(errno, "vmsplice", description_));
        return true;
      }
      *result = ErrnoStatus(errno, lend ? "vmsplice" : "write", description_);
      return true;
    }
    first_write = false;
    size_t written = static_cast<size_t>(n);
    while (first < iov.size() && written >= iov[first].iov_len) {
      written -= iov[first].iov_len;
      ++first;
    }
    if (first < iov.size()) {
      iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + written;
      iov[first].iov_len -= written;
      // A partial write left the pipe or the socket buffer full: wait for
      // room at once, not after a write that finds none (a large message
      // over a pipe is a write and a wait per 64 KiB, not three calls).
      if (try_first) continue;  // TrySend's loop decides for itself
      if (!WaitForRoom(give_up_ns, /*first_write=*/false, result)) return true;
    }
  }
  *result = absl::OkStatus();
  return true;
}

bool StreamConnection::WaitForRoom(int64_t give_up_ns, bool first_write, absl::Status* result) {
  absl::Status waited = WaitWritable(give_up_ns);
  if (waited.ok()) return true;
  // Half a message went out: no other message may follow it on this
  // stream, not even one whose sender takes write_mu_ before the
  // connection is closed.
  if (!first_write) write_broken_ = true;
  *result = first_write ? MarkNotDelivered(std::move(waited)) : std::move(waited);
  return false;
}

absl::Status StreamConnection::WaitWritable(int64_t give_up_ns) {
  struct pollfd fds[2] = {{write_fd_, POLLOUT, 0}, {close_event_.get(), POLLIN, 0}};
  int n = RetryEintr([&] { return ::poll(fds, 2, PollTimeoutMs(give_up_ns)); });
  if (n < 0) return ErrnoStatus(errno, "poll", description_);
  if (n == 0) {
    return absl::DeadlineExceededError(
        absl::StrCat(description_, ": the peer took no more of a message"));
  }
  if (fds[1].revents != 0) {
    return absl::UnavailableError(absl::StrCat(description_, ": connection closed"));
  }
  if (fds[0].revents & (POLLERR | POLLHUP | POLLNVAL)) {
    return absl::UnavailableError(absl::StrCat(description_, ": peer closed the connection"));
  }
  return absl::OkStatus();
}

void StreamConnection::OnClose() {
  uint64_t one = 1;
  ssize_t ignored = ::write(close_event_.get(), &one, sizeof(one));
  (void)ignored;
  MutexLock lock(&write_mu_);
  // The peer sees EOF at once, even before the loop closes the descriptor.
  if (!write_fd_closed_ && is_socket_) ::shutdown(write_fd_, SHUT_RDWR);
}

void StreamConnection::OnFinish(bool caller_reads) {
  uint64_t one = 1;
  ssize_t ignored = ::write(close_event_.get(), &one, sizeof(one));
  (void)ignored;
  MutexLock lock(&write_mu_);
  write_fd_closed_ = true;
  if (!caller_reads) owned_read_fd_.Reset();
  owned_write_fd_.Reset();
}

}  // namespace ipcrpc::internal
