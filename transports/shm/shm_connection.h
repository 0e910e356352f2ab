// An shm: connection, on either side: it reads one ring of the shared
// region and writes the other, wakes a reader that sleeps through the
// doorbell pair, and learns of its peer's end by EOF on the Unix socket the
// connection was made over (kept open for that alone).
#ifndef IPCRPC_TRANSPORTS_SHM_SHM_CONNECTION_H_
#define IPCRPC_TRANSPORTS_SHM_SHM_CONNECTION_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "asio/io_context.hpp"
#include "asio/posix/stream_descriptor.hpp"
#include "base/clock.h"
#include "base/mutex.h"
#include "base/syscall.h"
#include "transports/polled_connection.h"
#include "transports/send_turn.h"
#include "transports/shm/shm_region.h"
#include "transports/shm/shm_ring.h"
#include "transports/shm/shm_spinner.h"
#include "transports/transport.h"

namespace ipcrpc::internal {

class RingSpans;

class ShmConnection final : public PolledConnection {
 public:
  // `in` and `out` are ring indexes (0: client to server, 1: server to client).
  // `doorbell` is our end of the doorbell pair; `self_bell`, if valid, the
  // peer's end, through which WakeReader rings our own (the client keeps it).
  ShmConnection(UniqueFd socket, std::shared_ptr<Region> region, int in, int out,
                UniqueFd doorbell, UniqueFd self_bell, PeerCredentials peer,
                std::string description, size_t max_message_size);

  ~ShmConnection() override;

  // Only a client reads directly (and keeps the pair's other end for this).
  void WakeReader() override;

  absl::Status SendWithin(absl::Span<const std::string_view> parts, int /*priority*/,
                          int64_t deadline_ns) override {
    return SendMessage(parts, nullptr, deadline_ns);
  }

  // The body is serialized straight into the ring: no copy of its own first.
  absl::Status SendBodyWithin(absl::Span<const std::string_view> parts, const BodyWriter& body,
                              int /*priority*/, int64_t deadline_ns) override {
    return SendMessage(parts, &body, deadline_ns);
  }

  // Only if the whole message fits in the ring now.
  bool TrySend(absl::Span<const std::string_view> parts, int /*priority*/,
               absl::Status* error) override;

  const PeerCredentials& peer() const override { return peer_; }
  // A gathered message of 64 KiB or more (ShmRecordReader::KeepDelivered).
  std::shared_ptr<const void> KeepDeliveredMessage() override { return records_.KeepDelivered(); }

 private:
  // TrySend's work, with write_mu_ held: `total` bytes of `parts`.
  bool TrySendLocked(absl::Span<const std::string_view> parts, size_t total, absl::Status* error)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);

  void PublishAndRing() ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);

  // SendWithin, SendBodyWithin: `parts`, then `body` if not null.
  absl::Status SendMessage(absl::Span<const std::string_view> parts, const BodyWriter* body,
                           int64_t deadline_ns);

  // One message's way into the ring: WriteAll's, or a body's (RingSpans in
  // the .cc).
  struct WriteProgress {
    int64_t deadline_ns = kNoDeadline;
    bool* wrote_any = nullptr;  // set once a byte is written
    int idle = 0;               // looks at a full ring since the last progress
    int64_t full_since_ns = 0;  // when the ring was found full (0: not now)
    size_t room_made = 0;       // bytes written since then
    size_t unpublished = 0;     // bytes written since the last Publish
  };
  // Free space in the ring for up to `wanted` bytes (at most
  // kPublishEvery), as one piece, waiting for it as WriteAll says.
  absl::StatusOr<absl::Span<char>> WaitForRoom(size_t wanted, WriteProgress& progress)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  // `n` bytes of that piece were written; `more` of the message follow.
  void Wrote(size_t n, bool more, WriteProgress& progress) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  friend class RingSpans;

  // Writes `bytes` whole, waiting for room when the ring is full: a message
  // larger than the ring is streamed through it. The reader sees a large
  // message every kPublishEvery bytes (and takes it while the rest is
  // written), unless both are pinned to one CPU (ConsumerSharesCpu: then it
  // is published when the ring is full, and the writer yields at once);
  // while the reader makes room (it has taken something within
  // kStalledReaderNs) the writer looks again at once, yielding its CPU (on
  // one CPU the reader must run to make room), so a message larger than the
  // ring does not wait on a timer. Only a reader that stopped taking (a slow
  // handler, a stopped or hostile peer) makes it back off to short sleeps.
  // Past `deadline_ns` with the ring still full: DEADLINE_EXCEEDED.
  // `*wrote_any` is set once a byte is written.
  absl::Status WriteAll(std::string_view bytes, int64_t deadline_ns = kNoDeadline,
                        bool* wrote_any = nullptr) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);

  // On the loop: the peer's end shows as EOF on the socket.
  void WatchSocket();

  // PolledConnection's hooks. Looking in the ring costs no system call, so
  // a reader looks first and spins a while (Spinner) before it sleeps on
  // the doorbell; the loop's watch is the doorbell.
  Got ReceiveOnce(Reader reader, absl::Status* why, bool* drained) override;
  absl::Status WaitForMore(int64_t deadline_ns, int64_t now) override;
  void ReleaseReadState() override { records_.Clear(); }
  bool LooksBeforeWaiting() const override { return true; }
  void OnCallerReadBegins() override { caller_spinner_.Begin(); }
  bool KeepLooking(Reader reader) override;
  bool ReadyToSleep() override { return consumer_.PrepareToSleep(); }
  // Time is up with nothing in the ring: has the peer gone meanwhile? (The
  // probe before a send relies on this: a dead peer's ring takes requests
  // without complaint.)
  absl::Status CheckAtDeadline() override;
  // The flag is shared memory, safe to read without the role: a check
  // before a send learns of the peer's close even while the loop reads.
  bool PeerLeftWhileBusy() const override { return consumer_.ProducerClosed(); }
  bool BeginWatching() override;
  void AwaitReadable() override;
  absl::Status OnWoken() override;
  void StopWatching() override;
  void OnStart(asio::io_context& io) override;
  void OnClose() override;
  void OnFinish(bool caller_reads) override;

  // The read role's holder: takes what it can of the readable bytes and
  // delivers every whole message; not OK if the connection ended.
  absl::Status Take(std::string_view first, std::string_view second);

  const UniqueFd socket_;
  const std::shared_ptr<Region> region_;
  ShmRingConsumer consumer_;  // the read role's holder only
  ShmRingProducer producer_ ABSL_GUARDED_BY(write_mu_);
  // The ring producer_ writes, for MarkClosed: any thread, without write_mu_.
  ShmRingControl* const out_control_;
  const UniqueFd doorbell_;
  const UniqueFd self_bell_;
  const PeerCredentials peer_;
  const size_t max_message_size_;

  SendTurn turn_;  // taken before write_mu_ by a send that may wait
  Mutex write_mu_;
  // A send gave up after part of a message went into the ring (a deadline):
  // nothing may be written after it; the connection is about to close.
  bool write_broken_ ABSL_GUARDED_BY(write_mu_) = false;

  // Loop only.
  std::optional<asio::posix::stream_descriptor> socket_watch_;
  std::optional<asio::posix::stream_descriptor> doorbell_watch_;
  Spinner loop_spinner_;

  // The read role's holder only.
  ShmRecordReader records_;
  Spinner caller_spinner_;
};

}  // namespace ipcrpc::internal

#endif  // IPCRPC_TRANSPORTS_SHM_SHM_CONNECTION_H_
