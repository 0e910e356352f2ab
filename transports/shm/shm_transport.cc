#include "transports/shm/shm_transport.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "asio/io_context.hpp"
#include "asio/posix/stream_descriptor.hpp"
#include "asio/post.hpp"
#include "asio/steady_timer.hpp"
#include "base/clock.h"
#include "base/little_endian.h"
#include "base/logging.h"
#include "base/status_macros.h"
#include "base/syscall.h"
#include "transports/descriptor_watch.h"
#include "transports/read_role.h"
#include "transports/shm/shm_ring.h"
#include "transports/unix/unix_transport.h"
#include "base/mutex.h"

namespace ipcrpc::internal {
namespace {

constexpr char kHelloMagic[4] = {'I', 'S', 'H', 'M'};
constexpr char kAckMagic[4] = {'I', 'S', 'H', 'A'};
constexpr char kRegionMagic[4] = {'I', 'S', 'H', 'R'};
// 2: the doorbells are a datagram socket pair, not eventfds (1 is refused:
// an eventfd's O_NONBLOCK is the peer's to clear, see RingPeer).
constexpr uint32_t kVersion = 2;
constexpr size_t kControlOffset[2] = {64, 256};  // c2s, s2c
constexpr int kHandshakeTimeoutMs = 5000;
// A reader that finds its ring empty looks again for a while before it
// sleeps on its doorbell: a peer that answers within that time costs no
// wake-up at all (a wake-up costs 20-45 us on a 2-vCPU VM, a look at the
// ring 0.1 us). The time is bounded (an idle connection costs no CPU once
// it has passed) and adapts (Spinner), between these bounds.
constexpr int64_t kMaxSpinNs = 50'000;
constexpr int64_t kMinSpinNs = 2'000;
// Looks (each after a `pause`) between two readings of the clock.
constexpr int kLooksPerClockRead = 8;
// A reader yields its CPU at every clock reading once it has waited this
// long, in case its peer needs the CPU to answer; it learns to yield sooner
// when answers come right after its yields (both on one CPU), see Spinner.
constexpr int64_t kYieldAfterNs = 10'000;
// A reader in the middle of a message (larger than the ring, or not yet
// wholly written) looks for the rest this long before it sleeps, whatever
// its budget: the writer is at work (a writer publishes every
// kPublishEvery bytes, 10-20 us of copying), and a sleep would cost a
// wake-up per ring's worth. Bounded, because a peer that stops in the middle
// of a message and rings the doorbell holds the loop this long per ring
// (four times the longest ordinary look).
constexpr int64_t kInMessageSpinNs = 200'000;
// A writer of a large message lets the reader see what it has written every
// this many bytes, so that the reader takes it while the rest is written.
constexpr size_t kPublishEvery = 64 * 1024;
// A writer that finds the ring full pauses this many times (spinning), then
// yields, and naps only once the reader has made no room for this long.
constexpr int kFullRingPauses = 200;
constexpr int64_t kStalledReaderNs = 2'000'000;

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// One reader's spin-then-sleep policy (see kMaxSpinNs): the budget halves
// when a wait ends in sleep and the sleep was long (the peer is idle or
// slow: spinning would have been wasted), and doubles when data comes while
// looking, or soon after the reader gave up (it should have looked longer).
class Spinner {
 public:
  // A wait for data begins.
  void Begin() {
    started_ns_ = 0;
    looks_ = 0;
    yielded_ = false;
  }
  // The ring was empty: true to look again, false to sleep now.
  // `in_message`: a message is partly read (kInMessageSpinNs).
  bool KeepLooking(bool in_message = false) {
    ++looks_;
    if (looks_ % kLooksPerClockRead != 0) {
      CpuRelax();
      yielded_ = false;
      return true;
    }
    const int64_t now = MonotonicNowNs();
    if (started_ns_ == 0) started_ns_ = now;
    if (now - started_ns_ >= (in_message ? std::max(budget_ns_, kInMessageSpinNs) : budget_ns_)) {
      slept_at_ns_ = now;
      return false;
    }
    // A yield costs about 0.5 us: only where the peer may need this CPU.
    yielded_ = now - started_ns_ >= yield_after_ns_;
    if (yielded_) {
      ::sched_yield();
    } else {
      CpuRelax();
    }
    return true;
  }
  // Data came.
  void Found() {
    if (slept_at_ns_ != 0) {
      const int64_t slept_ns = MonotonicNowNs() - slept_at_ns_;
      budget_ns_ = slept_ns < kMaxSpinNs ? std::min(kMaxSpinNs, budget_ns_ * 2)
                                         : std::max(kMinSpinNs, budget_ns_ / 2);
      slept_at_ns_ = 0;
    } else if (started_ns_ != 0) {
      budget_ns_ = std::min(kMaxSpinNs, budget_ns_ * 2);
      // Data that shows up just after we yielded suggests a peer that runs
      // only when we yield (one CPU for both): yield sooner. Data that came
      // while we only paused: the peer runs beside us, yield later.
      yield_after_ns_ = yielded_ ? yield_after_ns_ / 2
                                 : std::min(kYieldAfterNs, yield_after_ns_ * 2 + 100);
    }
    Begin();
  }

 private:
  int64_t budget_ns_ = kMaxSpinNs;
  int64_t yield_after_ns_ = kYieldAfterNs;
  int64_t started_ns_ = 0;
  int64_t slept_at_ns_ = 0;
  int looks_ = 0;
  bool yielded_ = false;
};

socklen_t AbstractAddress(const std::string& name, sockaddr_un* addr) {
  std::memset(addr, 0, sizeof(*addr));
  addr->sun_family = AF_UNIX;
  const std::string full = "ipcrpc-shm-" + name;
  std::memcpy(addr->sun_path + 1, full.data(), full.size());
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + full.size());
}

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

// A mapped region, unmapped when the last user is gone.
struct Region {
  char* base = nullptr;
  size_t length = 0;
  size_t ring_size = 0;
  ~Region() {
    if (base != nullptr) ::munmap(base, length);
  }
  ShmRingControl* control(int ring) {
    return reinterpret_cast<ShmRingControl*>(base + kControlOffset[ring]);
  }
  char* data(int ring) { return base + kShmHeaderSize + ring * ring_size; }
};

// ------------------------------------------------------------- connection

class ShmConnection final : public Connection {
 public:
  // `in` and `out` are ring indexes (0: client to server, 1: server to client).
  // `doorbell` is our end of the doorbell pair; `self_bell`, if valid, the
  // peer's end, through which WakeReader rings our own (the client keeps it).
  ShmConnection(UniqueFd socket, std::shared_ptr<Region> region, int in, int out,
                UniqueFd doorbell, UniqueFd self_bell, PeerCredentials peer,
                std::string description, size_t max_message_size)
      : socket_(std::move(socket)),
        region_(std::move(region)),
        consumer_(region_->control(in), region_->data(in), region_->ring_size),
        producer_(region_->control(out), region_->data(out), region_->ring_size),
        out_control_(region_->control(out)),
        doorbell_(std::move(doorbell)),
        self_bell_(std::move(self_bell)),
        peer_(peer),
        description_(std::move(description)),
        max_message_size_(max_message_size),
        records_(max_message_size) {}

  ~ShmConnection() override {
    if (socket_watch_.has_value()) socket_watch_->release();
    if (doorbell_watch_.has_value()) doorbell_watch_->release();
  }

  void Start(asio::io_context& io, MessageHandler on_message, CloseHandler on_closed) override {
    on_message_ = std::move(on_message);
    on_closed_ = std::move(on_closed);
    io_.store(&io);
    auto self = std::static_pointer_cast<ShmConnection>(shared_from_this());
    asio::post(io, [self, &io] {
      if (self->closing_.load()) {
        self->Finish(absl::CancelledError(absl::StrCat(self->description_, ": closed")));
        return;
      }
      self->socket_watch_.emplace(io, self->socket_.get());
      self->WatchSocket();
      if (self->read_role_.LoopReadsAtStart()) self->StartLoopReading();
    });
  }

  void SetLoopReadPolicy(absl::AnyInvocable<bool()> keep_loop_reading) override {
    read_role_.SetPolicy(std::move(keep_loop_reading));
  }

  ReadResult ReadUntil(int64_t deadline_ns, absl::FunctionRef<bool()> done) override {
    if (!read_role_.TryTakeForCaller()) {
      // The flag is shared memory, safe to read without the role: a check
      // before a send learns of the peer's close even while the loop reads.
      return finished_ || closing_.load() || consumer_.ProducerClosed() ? ReadResult::kClosed
                                                                        : ReadResult::kBusy;
    }
    ReadResult result = ReadResult::kTimeout;
    absl::Status ended;
    caller_spinner_.Begin();
    for (;;) {
      if (done()) {
        result = ReadResult::kDone;
        break;
      }
      if (closing_.load()) {
        ended = absl::CancelledError(absl::StrCat(description_, ": closed"));
        result = ReadResult::kClosed;
        break;
      }
      std::string_view first;
      std::string_view second;
      ended = consumer_.Peek(&first, &second);
      if (!ended.ok()) {
        IPCRPC_LOG(WARNING) << description_ << ": closing: " << ended;
        result = ReadResult::kClosed;
        break;
      }
      if (!first.empty()) {
        caller_spinner_.Found();
        ended = Take(first, second);
        if (!ended.ok()) {
          result = ReadResult::kClosed;
          break;
        }
        continue;
      }
      const int64_t now = MonotonicNowNs();
      if (now >= deadline_ns) {
        // Time is up with nothing in the ring: has the peer gone meanwhile?
        // (The probe before a send relies on this: a dead peer's ring takes
        // requests without complaint.)
        if (consumer_.ProducerClosed()) {
          ended = absl::UnavailableError(
              absl::StrCat(description_, ": peer closed the connection"));
          result = ReadResult::kClosed;
        }
        break;
      }
      if (caller_spinner_.KeepLooking(records_.in_message())) continue;
      // Sleep on the doorbell (and watch the socket for the peer's end).
      if (!DrainDoorbell(doorbell_.get())) {
        ended = absl::UnavailableError(
            absl::StrCat(description_, ": the peer closed its doorbell"));
        result = ReadResult::kClosed;
        break;
      }
      if (!consumer_.PrepareToSleep()) continue;
      struct pollfd fds[2] = {{doorbell_.get(), POLLIN, 0},
                              {socket_.get(), POLLIN | POLLRDHUP, 0}};
      ended = PollUntil(fds, 2, deadline_ns, now, description_);
      if (!ended.ok()) {
        result = ReadResult::kClosed;
        break;
      }
      if (fds[1].revents != 0) {
        char byte;
        ssize_t n = ::recv(socket_.get(), &byte, 1, MSG_DONTWAIT | MSG_PEEK);
        if (!(n < 0 && (errno == EAGAIN || errno == EINTR))) {
          ended = n == 0 ? absl::UnavailableError(
                               absl::StrCat(description_, ": peer closed the connection"))
                         : absl::DataLossError(
                               absl::StrCat(description_, ": unexpected bytes on the socket"));
          result = ReadResult::kClosed;
          break;
        }
      }
      caller_spinner_.Begin();
    }
    auto self = std::static_pointer_cast<ShmConnection>(shared_from_this());
    asio::io_context& io = *io_.load();
    return read_role_.EndCallerRead(
        result,
        [&] {
          // Finish left the reading state to us (its handler holds the owner).
          on_message_ = nullptr;
          records_.Clear();
        },
        [&] { asio::post(io, [self, ended] { self->Finish(ended); }); },
        [&] { asio::post(io, [self] { self->StartLoopReading(); }); });
  }

  void EnsureReader() override {
    if (!read_role_.EnsureReader()) return;
    auto self = std::static_pointer_cast<ShmConnection>(shared_from_this());
    asio::post(*io_.load(), [self] { self->StartLoopReading(); });
  }

  // Only a client reads directly (and keeps the pair's other end for this).
  void WakeReader() override {
    if (self_bell_.valid()) Ring(self_bell_.get());
  }

  absl::Status Send(absl::Span<const std::string_view> parts, int priority) override {
    return SendWithin(parts, priority, kNoDeadline);
  }

  absl::Status SendWithin(absl::Span<const std::string_view> parts, int /*priority*/,
                          int64_t deadline_ns) override {
    size_t total = 0;
    for (std::string_view part : parts) total += part.size();
    if (total > max_message_size_) {
      return absl::ResourceExhaustedError(absl::StrCat(description_, ": message of ", total,
                                                       " bytes exceeds max_message_size ",
                                                       max_message_size_));
    }
    char prefix[4];
    PutLe(prefix, total, 4);
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

  // Only if the whole message fits in the ring now.
  bool TrySend(absl::Span<const std::string_view> parts, int /*priority*/,
               absl::Status* error) override {
    size_t total = 0;
    for (std::string_view part : parts) total += part.size();
    if (total > max_message_size_) return false;  // Send says why
    if (!write_mu_.TryLock()) return false;
    const bool done = TrySendLocked(parts, total, error);
    write_mu_.Unlock();
    return done;
  }

  void Close() override {
    if (closing_.exchange(true)) return;
    // The peer sees it at once: in the ring, and by EOF. (MarkClosed is one
    // atomic store: no write_mu_, which a failing Send holds when it closes.)
    ShmRingProducer::MarkClosed(out_control_);
    ::shutdown(socket_.get(), SHUT_RDWR);
    if (asio::io_context* io = io_.load(); io != nullptr) {
      auto self = std::static_pointer_cast<ShmConnection>(shared_from_this());
      asio::post(*io, [self] {
        self->Finish(absl::CancelledError(absl::StrCat(self->description_, ": closed")));
      });
    }
  }

  const PeerCredentials& peer() const override { return peer_; }
  const std::string& description() const override { return description_; }

 private:
  // TrySend's work, with write_mu_ held: `total` bytes of `parts`.
  bool TrySendLocked(absl::Span<const std::string_view> parts, size_t total, absl::Status* error)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_) {
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

  void PublishAndRing() ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_) {
    if (producer_.Publish()) Ring(doorbell_.get());
  }

  // Writes `bytes` whole, waiting for room when the ring is full: a message
  // larger than the ring is streamed through it. The reader sees a large
  // message every kPublishEvery bytes (and takes it while the rest is
  // written); while the reader makes room (it has taken something within
  // kStalledReaderNs) the writer looks again at once, yielding its CPU (on
  // one CPU the reader must run to make room), so a message larger than the
  // ring does not wait on a timer. Only a reader that stopped taking (a slow
  // handler, a stopped or hostile peer) makes it back off to short sleeps.
  // Past `deadline_ns` with the ring still full: DEADLINE_EXCEEDED.
  // `*wrote_any` is set once a byte is written.
  absl::Status WriteAll(std::string_view bytes, int64_t deadline_ns = kNoDeadline,
                        bool* wrote_any = nullptr) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_) {
    int idle = 0;
    int64_t full_since_ns = 0;  // when the ring was found full (0: not now)
    size_t room_made = 0;       // bytes written since then
    while (!bytes.empty()) {
      if (closing_.load()) {
        return absl::UnavailableError(absl::StrCat(description_, ": connection closed"));
      }
      absl::StatusOr<size_t> written = producer_.Write(bytes.substr(0, kPublishEvery));
      if (!written.ok()) {
        IPCRPC_LOG(WARNING) << description_ << ": closing: " << written.status();
        Close();
        return absl::UnavailableError(absl::StrCat(description_, ": ", written.status().message()));
      }
      bytes.remove_prefix(*written);
      if (*written > 0) {
        if (wrote_any != nullptr) *wrote_any = true;
        idle = 0;
        // Only real progress counts: a reader that frees a byte at a time
        // must not keep the writer yielding forever.
        room_made += *written;
        if (room_made >= kPublishEvery) {
          full_since_ns = 0;
          room_made = 0;
        }
        if (!bytes.empty()) PublishAndRing();
        continue;
      }
      // Full: let the reader see what is there (ringing it if it sleeps).
      PublishAndRing();
      if (++idle < kFullRingPauses) {
        CpuRelax();
        continue;
      }
      const int64_t now = MonotonicNowNs();
      if (now >= deadline_ns) {
        return absl::DeadlineExceededError(
            absl::StrCat(description_, ": the peer's ring stayed full"));
      }
      if (full_since_ns == 0) full_since_ns = now;
      if (now - full_since_ns < kStalledReaderNs) {
        ::sched_yield();
        continue;
      }
      const int backoff = std::min(idle - kFullRingPauses, 10);
      struct timespec pause = {0, std::min<long>(1'000'000, 1000L << backoff)};
      ::nanosleep(&pause, nullptr);
    }
    return absl::OkStatus();
  }

  void WatchSocket() {
    auto self = std::static_pointer_cast<ShmConnection>(shared_from_this());
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

  void WaitDoorbell() {
    auto self = std::static_pointer_cast<ShmConnection>(shared_from_this());
    doorbell_watch_->async_wait(asio::posix::stream_descriptor::wait_read,
                                [self](const asio::error_code& ec) {
                                  if (ec || self->finished_) return;
                                  if (!DrainDoorbell(self->doorbell_.get())) {
                                    self->Finish(absl::UnavailableError(absl::StrCat(
                                        self->description_, ": the peer closed its doorbell")));
                                    return;
                                  }
                                  self->loop_spinner_.Begin();
                                  self->ReadRing();
                                });
  }

  // On the loop: starts (again) to watch the doorbell and reads the ring.
  void StartLoopReading() {
    if (finished_) return;
    if (closing_.load()) {
      Finish(absl::CancelledError(absl::StrCat(description_, ": closed")));
      return;
    }
    // Already reading (see StreamConnection::StartLoopReading).
    if (doorbell_watch_.has_value()) return;
    doorbell_watch_.emplace(*io_.load(), doorbell_.get());
    loop_spinner_.Begin();
    ReadRing();
  }

  // On the loop: delivers every whole message in the ring, then sleeps (or,
  // with nothing expected, stops watching: a direct reader takes over).
  void ReadRing() {
    // Whether the policy has been asked since the ring was last found empty.
    bool asked = false;
    for (;;) {
      if (finished_) return;
      if (closing_.load()) {
        Finish(absl::CancelledError(absl::StrCat(description_, ": closed")));
        return;
      }
      std::string_view first;
      std::string_view second;
      absl::Status peeked = consumer_.Peek(&first, &second);
      if (!peeked.ok()) {
        IPCRPC_LOG(WARNING) << description_ << ": closing: " << peeked;
        Finish(peeked);
        return;
      }
      if (first.empty()) {
        // Nothing expected any more: stop at once, without spinning, so
        // that the caller of the next call reads its response itself.
        if (!asked && !read_role_.LoopKeepsReading()) {
          doorbell_watch_->release();
          doorbell_watch_.reset();
          return;
        }
        asked = true;
        if (loop_spinner_.KeepLooking(records_.in_message())) continue;
        if (!read_role_.LoopKeepsReading()) {
          doorbell_watch_->release();
          doorbell_watch_.reset();
          return;
        }
        if (consumer_.PrepareToSleep()) {
          WaitDoorbell();
          return;
        }
        continue;
      }
      loop_spinner_.Found();
      asked = false;
      absl::Status took = Take(first, second);
      if (!took.ok()) {
        Finish(std::move(took));
        return;
      }
    }
  }

  // The read role's holder: takes what it can of the readable bytes and
  // delivers every whole message; not OK if the connection ended.
  absl::Status Take(std::string_view first, std::string_view second) {
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

  void Finish(absl::Status reason) {
    if (finished_) return;
    finished_ = true;
    closing_.store(true);
    // A direct reader may be inside Take: the ring state and the handler
    // stay until the connection is destroyed.
    const bool caller_reads = read_role_.Finish();
    ShmRingProducer::MarkClosed(out_control_);
    ::shutdown(socket_.get(), SHUT_RDWR);
    if (socket_watch_.has_value()) {
      socket_watch_->release();
      socket_watch_.reset();
    }
    if (doorbell_watch_.has_value()) {
      doorbell_watch_->release();
      doorbell_watch_.reset();
    }
    if (!caller_reads) {
      on_message_ = nullptr;
      records_.Clear();
    }
    // The mapping and descriptors stay until the last reference goes: a
    // sender may still be inside Send.
    if (on_closed_) {
      CloseHandler on_closed = std::move(on_closed_);
      on_closed_ = nullptr;
      std::move(on_closed)(std::move(reason));
    }
  }

  const UniqueFd socket_;
  const std::shared_ptr<Region> region_;
  ShmRingConsumer consumer_;  // the read role's holder only
  ShmRingProducer producer_ ABSL_GUARDED_BY(write_mu_);
  // The ring producer_ writes, for MarkClosed: any thread, without write_mu_.
  ShmRingControl* const out_control_;
  const UniqueFd doorbell_;
  const UniqueFd self_bell_;
  const PeerCredentials peer_;
  const std::string description_;
  const size_t max_message_size_;

  std::atomic<bool> closing_{false};
  std::atomic<asio::io_context*> io_{nullptr};
  Mutex write_mu_;
  // A send gave up after part of a message went into the ring (a deadline):
  // nothing may be written after it; the connection is about to close.
  bool write_broken_ ABSL_GUARDED_BY(write_mu_) = false;

  std::atomic<bool> finished_{false};
  ReadRole read_role_;

  // Loop only.
  std::optional<asio::posix::stream_descriptor> socket_watch_;
  std::optional<asio::posix::stream_descriptor> doorbell_watch_;
  CloseHandler on_closed_;
  Spinner loop_spinner_;

  // The read role's holder only.
  MessageHandler on_message_;
  ShmRecordReader records_;
  Spinner caller_spinner_;
};

// Maps a region of `ring_size` rings from `memfd`, checking what can be.
absl::StatusOr<std::shared_ptr<Region>> MapRegion(int memfd, size_t ring_size,
                                                  std::string_view what) {
  auto region = std::make_shared<Region>();
  region->ring_size = ring_size;
  region->length = kShmHeaderSize + 2 * ring_size;
  void* base = ::mmap(nullptr, region->length, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  if (base == MAP_FAILED) return ErrnoStatus(errno, "mmap", what);
  region->base = static_cast<char*>(base);
  return region;
}

// ----------------------------------------------------------------- server

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

// ----------------------------------------------------------------- client

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

absl::Status ValidateShmName(const Endpoint& endpoint) {
  const std::string& name = endpoint.address;
  if (name.empty() || name.find('/') != std::string::npos ||
      name.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "endpoint '", endpoint.text, "': shm: needs a name without '/' (e.g. shm:calc)"));
  }
  if (name.size() > 90) {
    return absl::InvalidArgumentError(
        absl::StrCat("endpoint '", endpoint.text, "': the name is over 90 bytes"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Listener>> CreateShmListener(const Endpoint& endpoint,
                                                            const TransportOptions& options) {
  IPCRPC_RETURN_IF_ERROR(ValidateShmName(endpoint));
  return std::make_unique<ShmListener>(endpoint, options);
}

absl::StatusOr<std::unique_ptr<Connector>> CreateShmConnector(const Endpoint& endpoint,
                                                              const TransportOptions& options) {
  IPCRPC_RETURN_IF_ERROR(ValidateShmName(endpoint));
  return std::make_unique<ShmConnector>(endpoint, options);
}

}  // namespace ipcrpc::internal
