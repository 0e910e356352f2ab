#include "transports/mq/mq_connection.h"

#include <fcntl.h>
#include <mqueue.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/copy.h"
#include "base/logging.h"
#include "base/status_macros.h"

namespace ipcrpc::internal {
namespace {

// The longest one mq_timedreceive of a caller waits before it looks at the
// clocks again (a call without a deadline). Its timeout is on the realtime
// clock, which can be set: a set wakes the caller at once (AwaitClockSet),
// and it takes its timeout again from the monotonic deadline.
constexpr int64_t kWaitSliceNs = 60'000'000'000;

// CLOCK_REALTIME `ns` from now, for mq_timed*.
struct timespec RealtimeIn(int64_t ns) {
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += static_cast<time_t>(ns / 1'000'000'000);
  until.tv_nsec += static_cast<long>(ns % 1'000'000'000);
  if (until.tv_nsec >= 1'000'000'000) {
    until.tv_nsec -= 1'000'000'000;
    ++until.tv_sec;
  }
  return until;
}

// A timer that does not expire (in 2096) but fires when the realtime clock
// is set (TFD_TIMER_CANCEL_ON_SET). False if it could not be armed.
bool ArmClockSetTimer(int fd) {
  struct itimerspec spec = {};
  spec.it_value.tv_sec = 4'000'000'000;
  return timerfd_settime(fd, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, &spec, nullptr) == 0;
}

// The WAKE message.
struct WakeMessage {
  WakeMessage() {
    MqHeader header;
    header.kind = MqKind::kWake;
    EncodeMqHeader(header, bytes);
  }
  char bytes[kMqHeaderSize];
};

}  // namespace

MqConnection::MqConnection(UniqueFd read_queue, UniqueFd write_queue, long write_message_size,
                           uint64_t connection_id, UniqueFd peer_pidfd, PeerCredentials peer,
                           std::string description, size_t max_message_size, UniqueFd close_event)
    : PolledConnection(std::move(description)),
      read_queue_(std::move(read_queue)),
      write_queue_(std::move(write_queue)),
      write_message_size_(static_cast<size_t>(write_message_size)),
      connection_id_(connection_id),
      peer_pidfd_(std::move(peer_pidfd)),
      peer_(peer),
      close_event_(std::move(close_event)),
      reassembler_(max_message_size, kMqMaxPartialMessages),
      max_message_size_(max_message_size) {
  if (read_queue_.valid()) {
    struct mq_attr attr;
    mq_getattr(read_queue_.get(), &attr);
    receive_buffer_.Resize(static_cast<size_t>(attr.mq_msgsize), 0);
  }
  send_buffer_.Resize(write_message_size_, 0);
}

void MqConnection::SetCallerWait(UniqueFd wait_queue, UniqueFd wake_queue) {
  wait_queue_ = std::move(wait_queue);
  wake_queue_ = std::move(wake_queue);
  if (!wait_queue_.valid()) return;
  clock_set_fd_.Reset(::timerfd_create(CLOCK_REALTIME, TFD_CLOEXEC | TFD_NONBLOCK));
  if (!clock_set_fd_.valid() || !ArmClockSetTimer(clock_set_fd_.get())) {
    // A set of the clock back could then hold a caller in mq_timedreceive
    // past its deadline: callers wait with ppoll (monotonic) instead.
    const int error = errno;
    IPCRPC_LOG(WARNING) << description_ << ": callers wait with ppoll: no watch for the "
                        << "realtime clock being set: " << ErrnoStatus(error, "timerfd", description_);
    clock_set_fd_.Reset();
  }
}

MqConnection::~MqConnection() {
  readable_.reset();
  if (peer_watch_.has_value()) peer_watch_->release();
  if (clock_set_watch_.has_value()) clock_set_watch_->release();
}

void MqConnection::OnStart(asio::io_context& io) {
  started_ = true;
  peer_watch_.emplace(io, peer_pidfd_.get());
  // A caller that waits in ReceiveWaiting learns of the peer's death from
  // here: Finish wakes it.
  peer_watch_->async_wait(
      asio::posix::stream_descriptor::wait_read,
      EndWhenFired(absl::UnavailableError(
          absl::StrCat(description_, ": peer pid ", peer_.pid, " exited"))));
  if (clock_set_fd_.valid()) {
    clock_set_watch_.emplace(io, clock_set_fd_.get());
    AwaitClockSet();
  }
  // Fragments that came before Start (a server's connection).
  for (auto& [header, chunk] : early_) {
    if (finished_) break;
    Deliver(header, chunk);
  }
  early_.clear();
}

void MqConnection::Deliver(const MqHeader& header, std::string_view chunk) {
  if (finished_) return;
  if (!started_) {
    early_.emplace_back(header, std::string(chunk));
    return;
  }
  absl::Status delivered = DeliverStarted(header, chunk);
  if (!delivered.ok()) Finish(std::move(delivered));
}

void MqConnection::AwaitClockSet() {
  clock_set_watch_->async_wait(
      asio::posix::stream_descriptor::wait_read,
      [self = Shared<MqConnection>()](const asio::error_code& ec) {
        if (ec || self->finished_ || !self->clock_set_watch_.has_value()) return;
        uint64_t expirations;
        // ECANCELED: the clock was set. Armed again before the caller is
        // woken, so that a set after it took its timeout is seen too.
        // EAGAIN: woken with nothing to read.
        const int error =
            ::read(self->clock_set_fd_.get(), &expirations, sizeof(expirations)) < 0 ? errno : 0;
        if (error == EAGAIN) {
          self->AwaitClockSet();
          return;
        }
        const bool armed = error == ECANCELED && ArmClockSetTimer(self->clock_set_fd_.get());
        self->SendWake();
        if (armed) {
          self->AwaitClockSet();
        } else {
          // (Or the clock is past 2096.) Left unwatched: a set of the clock
          // back may then hold a waiting caller past its deadline.
          IPCRPC_LOG(WARNING) << self->description_
                              << ": no longer watching the realtime clock being set";
        }
      });
}

absl::Status MqConnection::DeliverStarted(const MqHeader& header, std::string_view chunk) {
  if (header.kind == MqKind::kClose) {
    return absl::UnavailableError(absl::StrCat(description_, ": the peer closed the connection"));
  }
  if (header.kind == MqKind::kWake && has_reply_queue_) {
    // Our own (or a server's, as harmless): the caller asks done() again.
    wakes_read_.fetch_add(1, std::memory_order_relaxed);
    return absl::OkStatus();
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

absl::Status MqConnection::WaitForMore(int64_t deadline_ns, int64_t now) {
  // Only where the realtime clock is not watched (SetCallerWait). A WAKE
  // (SendWake sends one whenever asked, then) makes the reply queue
  // readable.
  struct pollfd fds[3] = {{read_queue_.get(), POLLIN, 0},
                          {close_event_.get(), POLLIN, 0},
                          {peer_pidfd_.get(), POLLIN, 0}};
  IPCRPC_RETURN_IF_ERROR(PollUntil(fds, 3, deadline_ns, now, description_));
  if (fds[2].revents != 0 && fds[0].revents == 0) {
    return absl::UnavailableError(absl::StrCat(description_, ": peer pid ", peer_.pid, " exited"));
  }
  return absl::OkStatus();
}

PolledConnection::Got MqConnection::ReceiveWaiting(int64_t deadline_ns, int64_t now,
                                                   absl::FunctionRef<bool()> done,
                                                   absl::Status* why) {
  // Announced before done() and closing_ are asked, against the fence in
  // SendWake: either this sees what the waker changed, or the waker sees
  // this and sends a WAKE, which the receive then takes.
  waiting_.store(true);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  Got got = WaitAndReceive(deadline_ns, now, done, why);
  waiting_.store(false);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  // A WAKE sent while this waited but not read (it came after the message
  // this took, or this did not block): taken now, so that none is left to
  // fill a small reply queue that nobody reads until the next call. (A
  // waker that saw the announcement just before it went may still leave
  // one: the next reader takes it.) WAKEs go first (priority 31).
  while (got != Got::kEnded && wakes_read_.load(std::memory_order_relaxed) !=
                                   wakes_sent_.load(std::memory_order_relaxed)) {
    bool drained = false;
    const Got more = ReceiveOnce(Reader::kCaller, why, &drained);
    if (more == Got::kNothing) break;
    if (more == Got::kEnded) got = Got::kEnded;
  }
  return got;
}

PolledConnection::Got MqConnection::WaitAndReceive(int64_t deadline_ns, int64_t now,
                                                   absl::FunctionRef<bool()> done,
                                                   absl::Status* why) {
  if (done()) return Got::kNothing;
  if (finished_ || closing_.load()) {
    *why = absl::CancelledError(absl::StrCat(description_, ": closed"));
    return Got::kEnded;
  }
  const struct timespec until = RealtimeIn(std::min(deadline_ns - now, kWaitSliceNs));
  for (;;) {
    const ssize_t n = mq_timedreceive(wait_queue_.get(), receive_buffer_.data(),
                                      receive_buffer_.size(), nullptr, &until);
    if (n >= 0) return DeliverReceived(static_cast<size_t>(n), why);
    if (errno == ETIMEDOUT) return Got::kNothing;
    if (errno == EINTR) continue;
    *why = ErrnoStatus(errno, "mq_timedreceive", description_);
    return Got::kEnded;
  }
}

void MqConnection::WakeReader() { SendWake(); }

void MqConnection::SendWake() {
  if (!wake_queue_.valid()) return;
  std::atomic_thread_fence(std::memory_order_seq_cst);  // see ReceiveWaiting
  if (ReceivesWhileWaiting() && !waiting_.load()) return;
  static const WakeMessage kWake;
  // Full (EAGAIN): then the caller is not blocked; it receives at once.
  if (mq_send(wake_queue_.get(), kWake.bytes, sizeof(kWake.bytes), 31) == 0) {
    wakes_sent_.fetch_add(1, std::memory_order_relaxed);
  }
}

bool MqConnection::TrySend(absl::Span<const std::string_view> parts, int priority,
                           absl::Status* error) {
  size_t total = 0;
  for (std::string_view part : parts) total += part.size();
  if (total > write_message_size_ - kMqHeaderSize) return false;
  if (!write_mu_.TryLock()) return false;
  const bool done = TrySendLocked(parts, total, priority, error);
  write_mu_.Unlock();
  return done;
}

absl::Status MqConnection::SendWithin(absl::Span<const std::string_view> parts, int priority,
                                      int64_t deadline_ns) {
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

absl::Status MqConnection::SendMessage(absl::Span<const std::string_view> parts, int priority,
                                       int64_t deadline_ns, bool* broken) {
  IPCRPC_ASSIGN_OR_RETURN(const size_t total, SendSize(parts, max_message_size_, description_));
  const unsigned mq_priority = static_cast<unsigned>(std::clamp(priority, 0, 31));
  // Behind another sender that waits for room, no later than our deadline.
  if (!turn_.Acquire(deadline_ns)) {
    return MarkNotDelivered(absl::DeadlineExceededError(absl::StrCat(
        description_, ": another send held the connection past the deadline")));
  }
  SendTurn::Holder turn(&turn_);
  MutexLock lock(&write_mu_);
  absl::Status sent = SendFragmentsLocked(parts, total, mq_priority, deadline_ns, broken);
  if (send_blocking_) SetSendBlocking(false);
  return sent;
}

absl::Status MqConnection::SendFragmentsLocked(absl::Span<const std::string_view> parts,
                                               size_t total, unsigned mq_priority,
                                               int64_t deadline_ns, bool* broken) {
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
      CopyBytes(send_buffer_.data() + kMqHeaderSize + filled,
                parts[part].data() + part_offset, n);
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

void MqConnection::OnClose() {
  uint64_t one = 1;
  ssize_t ignored = ::write(close_event_.get(), &one, sizeof(one));
  (void)ignored;
  SendWake();
  SayClose();
}

bool MqConnection::TrySendLocked(absl::Span<const std::string_view> parts, size_t total,
                                 int priority, absl::Status* error) {
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
    CopyBytes(send_buffer_.data() + filled, part.data(), part.size());
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

absl::Status MqConnection::SendOne(const char* data, size_t size, unsigned priority,
                                   int64_t deadline_ns) {
  for (;;) {
    if (closing_.load()) {
      return absl::UnavailableError(absl::StrCat(description_, ": connection closed"));
    }
    if (!send_blocking_) {
      if (mq_send(write_queue_.get(), data, size, priority) == 0) return absl::OkStatus();
      if (errno == EINTR) continue;
      if (errno != EAGAIN) return ErrnoStatus(errno, "mq_send", description_);
      // The peer's queue is full: wait for room, or for the end. In the
      // kernel's own line of senders (it wakes one per freed slot), not in
      // poll(POLLOUT), which wakes every waiting sender for each slot: a
      // hundred clients of one full server queue made that a storm that
      // starved the server. The descriptor stays blocking until this
      // message is sent (SendMessage restores it): each further fragment
      // is then one mq_timedsend, not four system calls (a try, two
      // mq_setattr and the wait), 128 fragments for a 1 MiB message.
      SetSendBlocking(true);
    }
    absl::Status waited = WaitInLine(data, size, priority, deadline_ns);
    if (waited.ok() || !absl::IsDeadlineExceeded(waited)) return waited;
    if (MonotonicNowNs() >= deadline_ns) {
      return absl::DeadlineExceededError(
          absl::StrCat(description_, ": the peer's queue stayed full"));
    }
  }
}

void MqConnection::SetSendBlocking(bool blocking) {
  struct mq_attr attr = {};
  attr.mq_flags = blocking ? 0 : O_NONBLOCK;
  mq_setattr(write_queue_.get(), &attr, nullptr);
  send_blocking_ = blocking;
}

absl::Status MqConnection::WaitInLine(const char* data, size_t size, unsigned priority,
                                      int64_t deadline_ns) {
  // 10 ms (to notice Close and the peer's death), or what is left before
  // the deadline.
  const int64_t slice_ns =
      std::clamp<int64_t>(deadline_ns - MonotonicNowNs(), 0, 10'000'000);
  const struct timespec until = RealtimeIn(slice_ns);  // mq_timedsend's clock
  const int sent = mq_timedsend(write_queue_.get(), data, size, priority, &until);
  const int error = errno;
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

void MqConnection::SayClose() {
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

PolledConnection::Got MqConnection::ReceiveOnce(Reader /*reader*/, absl::Status* why,
                                                bool* /*drained*/) {
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
    return DeliverReceived(static_cast<size_t>(n), why);
  }
}

PolledConnection::Got MqConnection::DeliverReceived(size_t size, absl::Status* why) {
  std::string_view message(receive_buffer_.data(), size);
  auto header = DecodeMqHeader(message);
  if (!header.ok()) {
    IPCRPC_LOG(WARNING) << description_ << ": closing: " << header.status();
    *why = header.status();
    return Got::kEnded;
  }
  *why = DeliverStarted(*header, message.substr(kMqHeaderSize));
  return why->ok() ? Got::kMessages : Got::kEnded;
}

bool MqConnection::BeginWatching() {
  if (readable_.has_value()) return false;
  readable_.emplace(io(), read_queue_.get());
  return true;
}

void MqConnection::OnFinish(bool caller_reads) {
  // A direct reader may be inside ReceiveOnce: the queue and the pidfd it
  // polls stay until the connection is destroyed.
  uint64_t one = 1;
  ssize_t ignored = ::write(close_event_.get(), &one, sizeof(one));
  (void)ignored;
  SendWake();
  if (peer_watch_.has_value()) {
    peer_watch_->release();
    peer_watch_.reset();
  }
  if (clock_set_watch_.has_value()) {
    clock_set_watch_->release();
    clock_set_watch_.reset();
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
  if (on_finish_) std::move(on_finish_)();
  on_finish_ = nullptr;
}

absl::StatusOr<UniqueFd> NewCloseEvent(std::string_view what) {
  UniqueFd fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!fd.valid()) return ErrnoStatus(errno, "eventfd", what);
  return fd;
}

}  // namespace ipcrpc::internal
