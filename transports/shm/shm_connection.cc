#include "transports/shm/shm_connection.h"

#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/copy.h"
#include "base/little_endian.h"
#include "base/logging.h"
#include "base/status_macros.h"

namespace ipcrpc::internal {
namespace {

// A writer of a large message lets the reader see what it has written every
// this many bytes, so that the reader takes it while the rest is written.
constexpr size_t kPublishEvery = 64 * 1024;
// A writer that finds the ring full pauses this many times (spinning), then
// yields, and naps only once the reader has made no room for this long.
constexpr int kFullRingPauses = 200;
constexpr int64_t kStalledReaderNs = 2'000'000;

// The doorbells. Each side holds one end of a Unix datagram socket pair: a
// datagram sent on our end wakes the peer, one that arrives on it wakes us.
// Every operation on it passes MSG_DONTWAIT, a flag of the call. (An eventfd
// shared with the peer would not do: its O_NONBLOCK belongs to the open
// file, which the peer shares and can make blocking, and a full counter then
// blocks the writer for good.) A full queue needs no more rings: wake-ups are
// pending already.
void Ring(int fd) {
  ssize_t ignored = ::send(fd, "!", 1, MSG_DONTWAIT | MSG_NOSIGNAL);
  (void)ignored;
}

// Takes the wake-ups that arrived (up to 16 at once: more only cost a spare
// wake-up). False if the peer closed its end, or sent an empty datagram,
// which an honest peer never does (both read as 0 bytes): the connection must
// end, or the reader would be woken for ever.
bool DrainDoorbell(int fd) {
  constexpr int kBatch = 16;
  char bytes[kBatch];
  struct iovec iov[kBatch];
  struct mmsghdr messages[kBatch];
  std::memset(messages, 0, sizeof(messages));
  for (int i = 0; i < kBatch; ++i) {
    iov[i] = {&bytes[i], 1};
    messages[i].msg_hdr.msg_iov = &iov[i];
    messages[i].msg_hdr.msg_iovlen = 1;
  }
  const int n = ::recvmmsg(fd, messages, kBatch, MSG_DONTWAIT, nullptr);
  if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
  for (int i = 0; i < n; ++i) {
    if (messages[i].msg_len == 0) return false;
  }
  return true;
}

}  // namespace

ShmConnection::ShmConnection(UniqueFd socket, std::shared_ptr<Region> region, int in, int out,
                             UniqueFd doorbell, UniqueFd self_bell, PeerCredentials peer,
                             std::string description, size_t max_message_size)
    : PolledConnection(std::move(description)),
      socket_(std::move(socket)),
      region_(std::move(region)),
      consumer_(region_->control(in), region_->data(in), region_->ring_size),
      producer_(region_->control(out), region_->data(out), region_->ring_size),
      out_control_(region_->control(out)),
      doorbell_(std::move(doorbell)),
      self_bell_(std::move(self_bell)),
      peer_(peer),
      max_message_size_(max_message_size),
      records_(max_message_size) {}

ShmConnection::~ShmConnection() {
  if (socket_watch_.has_value()) socket_watch_->release();
  if (doorbell_watch_.has_value()) doorbell_watch_->release();
}

void ShmConnection::OnStart(asio::io_context& io) {
  socket_watch_.emplace(io, socket_.get());
  WatchSocket();
}

PolledConnection::Got ShmConnection::ReceiveOnce(Reader reader, absl::Status* why,
                                                 bool* /*drained*/) {
  if (closing_.load()) {
    *why = ClosedStatus();
    return Got::kEnded;
  }
  std::string_view first;
  std::string_view second;
  absl::Status peeked = consumer_.Peek(&first, &second);
  if (!peeked.ok()) {
    IPCRPC_LOG(WARNING) << description_ << ": closing: " << peeked;
    *why = std::move(peeked);
    return Got::kEnded;
  }
  if (first.empty()) return Got::kNothing;
  (reader == Reader::kLoop ? loop_spinner_ : caller_spinner_).Found();
  *why = Take(first, second);
  return why->ok() ? Got::kMessages : Got::kEnded;
}

bool ShmConnection::KeepLooking(Reader reader) {
  // A peer that last wrote from this CPU needs it to write again: sleep at
  // once, and the doorbell wakes us when it has.
  if (consumer_.ProducerSharesCpu()) return false;
  return (reader == Reader::kLoop ? loop_spinner_ : caller_spinner_)
      .KeepLooking(records_.in_message());
}

absl::Status ShmConnection::CheckAtDeadline() {
  if (!consumer_.ProducerClosed()) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat(description_, ": peer closed the connection"));
}

absl::Status ShmConnection::WaitForMore(int64_t deadline_ns, int64_t now) {
  // Sleep on the doorbell (and watch the socket for the peer's end).
  if (!DrainDoorbell(doorbell_.get())) {
    return absl::UnavailableError(absl::StrCat(description_, ": the peer closed its doorbell"));
  }
  if (!consumer_.PrepareToSleep()) return absl::OkStatus();  // something came: look
  struct pollfd fds[2] = {{doorbell_.get(), POLLIN, 0}, {socket_.get(), POLLIN | POLLRDHUP, 0}};
  IPCRPC_RETURN_IF_ERROR(PollUntil(fds, 2, deadline_ns, now, description_));
  if (fds[1].revents != 0) {
    char byte;
    ssize_t n = ::recv(socket_.get(), &byte, 1, MSG_DONTWAIT | MSG_PEEK);
    if (!(n < 0 && (errno == EAGAIN || errno == EINTR))) {
      return n == 0 ? absl::UnavailableError(
                          absl::StrCat(description_, ": peer closed the connection"))
                    : absl::DataLossError(
                          absl::StrCat(description_, ": unexpected bytes on the socket"));
    }
  }
  caller_spinner_.Begin();
  return absl::OkStatus();
}

void ShmConnection::WakeReader() {
  if (self_bell_.valid()) Ring(self_bell_.get());
}

// A body's way into the ring (SendMessage holds write_mu_ throughout):
// the pieces WaitForRoom finds, for the body to write into; each is
// committed (and published as WriteAll's would be) when the next is asked
// for, or at Finish. Never more pieces than the body's size fills.
class RingSpans final : public OutputSpans {
 public:
  RingSpans(ShmConnection* connection, size_t size, ShmConnection::WriteProgress* progress)
      : connection_(connection), left_(size), progress_(progress) {}

  absl::Span<char> Next() override {
    connection_->write_mu_.AssertHeld();
    Commit();
    if (!status_.ok()) return {};
    if (left_ == 0) {
      overrun_ = true;  // the body has more than it said
      return {};
    }
    absl::StatusOr<absl::Span<char>> room = connection_->WaitForRoom(left_, *progress_);
    if (!room.ok()) {
      status_ = room.status();
      return {};
    }
    piece_ = *room;
    return piece_;
  }

  void BackUp(size_t n) override { piece_ = piece_.subspan(0, piece_.size() - n); }

  // After the body: OK if exactly its size came; the transport's status if
  // it failed; INTERNAL if the body wrote another size.
  absl::Status Finish(const BodyWriter& body) {
    connection_->write_mu_.AssertHeld();
    Commit();
    if (!status_.ok()) return status_;
    if (overrun_ || left_ != 0) {
      return absl::InternalError(absl::StrCat(
          connection_->description_, ": a request or response of ", body.size(),
          " bytes came out ", overrun_ ? "longer" : "shorter",
          " when serialized (the message changed while it was sent)"));
    }
    return absl::OkStatus();
  }

 private:
  void Commit() ABSL_EXCLUSIVE_LOCKS_REQUIRED(connection_->write_mu_) {
    if (piece_.empty()) return;
    left_ -= piece_.size();
    connection_->Wrote(piece_.size(), left_ > 0, *progress_);
    piece_ = {};
  }

  ShmConnection* const connection_;
  size_t left_;  // bytes of the body not yet committed
  ShmConnection::WriteProgress* const progress_;
  absl::Span<char> piece_;  // handed out, not yet committed
  absl::Status status_;
  bool overrun_ = false;
};

absl::Status ShmConnection::SendMessage(absl::Span<const std::string_view> parts,
                                        const BodyWriter* body, int64_t deadline_ns) {
  IPCRPC_ASSIGN_OR_RETURN(
      const size_t total,
      SendSize(parts, max_message_size_, description_, body != nullptr ? body->size() : 0));
  char prefix[4];
  PutLe(prefix, total, 4);
  // Behind another sender that waits for room, no later than our deadline.
  if (!turn_.Acquire(deadline_ns)) {
    return MarkNotDelivered(absl::DeadlineExceededError(absl::StrCat(
        description_, ": another send held the connection past the deadline")));
  }
  SendTurn::Holder turn(&turn_);
  MutexLock lock(&write_mu_);
  if (write_broken_) {
    return MarkNotDelivered(
        absl::UnavailableError(absl::StrCat(description_, ": connection closed")));
  }
  bool wrote_any = false;
  absl::Status written = WriteAll(std::string_view(prefix, 4), deadline_ns, &wrote_any);
  for (std::string_view part : parts) {
    if (written.ok()) written = WriteAll(part, deadline_ns, &wrote_any);
  }
  if (written.ok() && body != nullptr && body->size() > 0) {
    WriteProgress progress;
    progress.deadline_ns = deadline_ns;
    progress.wrote_any = &wrote_any;
    RingSpans spans(this, body->size(), &progress);
    body->WriteTo(spans);
    written = spans.Finish(*body);
    if (absl::IsInternal(written)) {
      // The ring holds a message that is not what its length says: nothing
      // may follow it (the caller closes the connection, as after any
      // failed send: the channel once it has taken the call out, so that
      // the call ends with this status).
      write_broken_ = true;
      IPCRPC_LOG(ERROR) << written.message();
      return written;
    }
  }
  if (absl::IsDeadlineExceeded(written)) {
    if (!wrote_any) return MarkNotDelivered(std::move(written));
    // Part of the message is in the ring: the connection cannot carry
    // another (the caller closes it, see SendWithin), and no sender that
    // takes write_mu_ before that may write after it.
    write_broken_ = true;
    IPCRPC_LOG(WARNING) << description_ << ": the peer took only part of a " << total
                        << "-byte message before its deadline";
    return written;
  }
  IPCRPC_RETURN_IF_ERROR(written);
  PublishAndRing();
  return absl::OkStatus();
}

bool ShmConnection::TrySend(absl::Span<const std::string_view> parts, int /*priority*/,
                            absl::Status* error) {
  size_t total = 0;
  for (std::string_view part : parts) total += part.size();
  if (total > max_message_size_) return false;  // Send says why
  if (!write_mu_.TryLock()) return false;
  const bool done = TrySendLocked(parts, total, error);
  write_mu_.Unlock();
  return done;
}

void ShmConnection::OnClose() {
  // The peer sees it at once: in the ring, and by EOF. (MarkClosed is one
  // atomic store: no write_mu_, which a failing Send holds when it closes.)
  ShmRingProducer::MarkClosed(out_control_);
  ::shutdown(socket_.get(), SHUT_RDWR);
}

bool ShmConnection::TrySendLocked(absl::Span<const std::string_view> parts, size_t total,
                                  absl::Status* error) {
  if (write_broken_) {
    *error = absl::UnavailableError(absl::StrCat(description_, ": connection closed"));
    return true;
  }
  absl::StatusOr<size_t> room = producer_.Room(4 + total);
  if (room.ok() && *room < 4 + total) return false;
  char prefix[4];
  PutLe(prefix, total, 4);
  *error = WriteAll(std::string_view(prefix, 4));
  for (std::string_view part : parts) {
    if (error->ok()) *error = WriteAll(part);
  }
  if (error->ok()) PublishAndRing();
  return true;
}

void ShmConnection::PublishAndRing() {
  if (producer_.Publish()) Ring(doorbell_.get());
}

absl::Status ShmConnection::WriteAll(std::string_view bytes, int64_t deadline_ns, bool* wrote_any) {
  WriteProgress progress;
  progress.deadline_ns = deadline_ns;
  progress.wrote_any = wrote_any;
  while (!bytes.empty()) {
    IPCRPC_ASSIGN_OR_RETURN(absl::Span<char> room, WaitForRoom(bytes.size(), progress));
    CopyBytes(room.data(), bytes.data(), room.size());
    bytes.remove_prefix(room.size());
    Wrote(room.size(), !bytes.empty(), progress);
  }
  return absl::OkStatus();
}

absl::StatusOr<absl::Span<char>> ShmConnection::WaitForRoom(size_t wanted,
                                                            WriteProgress& progress) {
  for (;;) {
    if (closing_.load()) {
      return absl::UnavailableError(absl::StrCat(description_, ": connection closed"));
    }
    absl::StatusOr<absl::Span<char>> room = producer_.Reserve(std::min(wanted, kPublishEvery));
    if (!room.ok()) {
      IPCRPC_LOG(WARNING) << description_ << ": closing: " << room.status();
      Close();
      return absl::UnavailableError(absl::StrCat(description_, ": ", room.status().message()));
    }
    if (!room->empty()) return *room;
    // Full: let the reader see what is there (ringing it if it sleeps).
    PublishAndRing();
    progress.unpublished = 0;
    // A reader on this CPU makes room only once we give it up: no pauses.
    if (progress.idle == 0 && producer_.ConsumerSharesCpu()) progress.idle = kFullRingPauses - 1;
    if (++progress.idle < kFullRingPauses) {
      CpuRelax();
      continue;
    }
    const int64_t now = MonotonicNowNs();
    if (now >= progress.deadline_ns) {
      return absl::DeadlineExceededError(
          absl::StrCat(description_, ": the peer's ring stayed full"));
    }
    if (progress.full_since_ns == 0) progress.full_since_ns = now;
    if (now - progress.full_since_ns < kStalledReaderNs) {
      ::sched_yield();
      continue;
    }
    const int backoff = std::min(progress.idle - kFullRingPauses, 10);
    struct timespec pause = {0, std::min<long>(1'000'000, 1000L << backoff)};
    ::nanosleep(&pause, nullptr);
  }
}

void ShmConnection::Wrote(size_t n, bool more, WriteProgress& progress) {
  producer_.Commit(n);
  if (progress.wrote_any != nullptr) *progress.wrote_any = true;
  progress.idle = 0;
  // Only real progress counts: a reader that frees a byte at a time must
  // not keep the writer yielding forever.
  progress.room_made += n;
  if (progress.room_made >= kPublishEvery) {
    progress.full_since_ns = 0;
    progress.room_made = 0;
  }
  // Every kPublishEvery bytes of a larger message: a reader on another CPU
  // copies out while we copy in; one on ours cannot, and would only be
  // woken for a piece. (Not at the ring's wrap, which only splits a piece.)
  progress.unpublished += n;
  if (more && progress.unpublished >= kPublishEvery && !producer_.ConsumerSharesCpu()) {
    PublishAndRing();
    progress.unpublished = 0;
  }
}

void ShmConnection::WatchSocket() {
  auto self = Shared<ShmConnection>();
  socket_watch_->async_wait(asio::posix::stream_descriptor::wait_read,
                            [self](const asio::error_code& ec) {
                              if (ec || self->finished_) return;
                              char byte;
                              ssize_t n = ::recv(self->socket_.get(), &byte, 1, MSG_DONTWAIT);
                              if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
                                self->WatchSocket();
                                return;
                              }
                              self->Finish(n == 0 ? absl::UnavailableError(absl::StrCat(
                                                        self->description_,
                                                        ": peer closed the connection"))
                                                  : absl::DataLossError(absl::StrCat(
                                                        self->description_,
                                                        ": unexpected bytes on the socket")));
                            });
}

bool ShmConnection::BeginWatching() {
  if (doorbell_watch_.has_value()) return false;
  doorbell_watch_.emplace(io(), doorbell_.get());
  loop_spinner_.Begin();
  return true;
}

void ShmConnection::AwaitReadable() {
  doorbell_watch_->async_wait(asio::posix::stream_descriptor::wait_read, ReadableHandler());
}

absl::Status ShmConnection::OnWoken() {
  if (!DrainDoorbell(doorbell_.get())) {
    return absl::UnavailableError(absl::StrCat(description_, ": the peer closed its doorbell"));
  }
  loop_spinner_.Begin();
  return absl::OkStatus();
}

void ShmConnection::StopWatching() {
  if (!doorbell_watch_.has_value()) return;
  doorbell_watch_->release();
  doorbell_watch_.reset();
}

absl::Status ShmConnection::Take(std::string_view first, std::string_view second) {
  absl::StatusOr<size_t> took =
      records_.Take(first, second, [this](std::string_view message) { on_message_(message); });
  if (!took.ok()) {
    IPCRPC_LOG(WARNING) << description_ << ": closing: peer announced a message of "
                        << records_.announced() << " bytes, over max_message_size "
                        << max_message_size_;
    return absl::ResourceExhaustedError(absl::StrCat(description_, ": message of ",
                                                     records_.announced(),
                                                     " bytes exceeds max_message_size ",
                                                     max_message_size_));
  }
  consumer_.Consume(*took);
  if (finished_) return absl::CancelledError(absl::StrCat(description_, ": closed"));
  return absl::OkStatus();
}

void ShmConnection::OnFinish(bool /*caller_reads*/) {
  // The mapping and descriptors stay until the last reference goes: a
  // sender may still be inside Send, a caller inside Take.
  ShmRingProducer::MarkClosed(out_control_);
  ::shutdown(socket_.get(), SHUT_RDWR);
  if (socket_watch_.has_value()) {
    socket_watch_->release();
    socket_watch_.reset();
  }
}

}  // namespace ipcrpc::internal
