// A Connection over a byte stream (a socket, or a pair of pipes or FIFOs):
// each message is a little-endian u32 length followed by that many bytes.
// The length is checked against max_message_size before anything is
// allocated. Used by `unix:` and `pipe:` (and `fifo:`).
#ifndef IPCRPC_TRANSPORTS_STREAM_CONNECTION_H_
#define IPCRPC_TRANSPORTS_STREAM_CONNECTION_H_

#include <limits.h>

#include <atomic>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "asio/io_context.hpp"
#include "base/copy.h"
#include "base/syscall.h"
#include "transports/buffer_loans.h"
#include "transports/polled_connection.h"
#include "transports/read_watch.h"
#include "transports/send_turn.h"
#include "transports/transport.h"
#include "base/mutex.h"

namespace ipcrpc::internal {

class StreamConnection final : public PolledConnection {
 public:
  // `read_fd` and `write_fd` may be the same descriptor (a socket); both are
  // owned and set non-blocking. `is_socket` selects send(MSG_NOSIGNAL) over
  // write() with SIGPIPE blocked.
  static absl::StatusOr<std::shared_ptr<StreamConnection>> Create(
      UniqueFd read_fd, UniqueFd write_fd, bool is_socket, PeerCredentials peer,
      std::string description, size_t max_message_size);

  StreamConnection(UniqueFd read_fd, UniqueFd write_fd, UniqueFd close_event,
                   UniqueFd wake_event, bool is_socket,
                   PeerCredentials peer, std::string description, size_t max_message_size);
  ~StreamConnection() override;

  absl::Status SendWithin(absl::Span<const std::string_view> parts, int priority,
                          int64_t deadline_ns) override;
  // Pipes and FIFOs: a body of kLendMin..kLendMax bytes is serialized into
  // the connection's lending buffer and given to the pipe with vmsplice(2),
  // which lends the buffer's pages instead of copying them (the reader's
  // read copies them once), when that buffer is free: never lent yet, or
  // the pipe was seen empty since (FIONREAD: every lent page has been read
  // out of it). Otherwise, and on sockets, as Connection's (a copy into
  // this thread's buffer, then SendWithin). Why: stream_connection.cc.
  // The peer must read with read(2): FIONREAD cannot see pages it moved on
  // with splice or tee (docs/PROTOCOL.md, "Stream framing").
  absl::Status SendBodyWithin(absl::Span<const std::string_view> parts, const BodyWriter& body,
                              int priority, int64_t deadline_ns) override;
  static constexpr size_t kLendMin = 128 * 1024;
  static constexpr size_t kLendMax = 2 * 1024 * 1024;
  // Messages sent by lending pages so far (for tests).
  uint64_t lent_messages() const { return lent_messages_.load(std::memory_order_relaxed); }

  bool TrySend(absl::Span<const std::string_view> parts, int priority,
               absl::Status* error) override;
  // A pipe or FIFO whose reader closed, a socket whose peer closed: EPIPE.
  // (The fifo: client writes through a write-only descriptor for this.)
  bool SendSeesPeerLeave() const override { return true; }
  const PeerCredentials& peer() const override { return peer_; }
  void WakeReader() override;
  // A message that WorthLending (buffer_loans.h) lets go, if no other is
  // kept: the buffer goes with it, and the connection reads on into its
  // second one (made the first time, then the one that came back).
  std::shared_ptr<const void> KeepDeliveredMessage() override;

 private:
  static size_t BufferBytes(const KernelBuffer& buffer) { return buffer.size(); }
  using Loans = BufferLoans<KernelBuffer, &StreamConnection::BufferBytes>;

  // PolledConnection's hooks. ReceiveOnce is one read(2), and delivery of
  // every whole message; `*drained`: the read took less than it had room
  // for, so nothing more was there.
  Got ReceiveOnce(Reader reader, absl::Status* why, bool* drained) override;
  absl::Status WaitForMore(int64_t deadline_ns, int64_t now) override;
  void ReleaseReadState() override;
  bool BeginWatching() override;
  void AwaitReadable() override;
  void StopWatching() override { readable_.reset(); }
  void OnClose() override;
  void OnFinish(bool caller_reads) override;

  // Parses whole messages out of the buffer; not OK if the connection ended.
  absl::Status DeliverMessages();
  // EAGAIN on write: poll until writable, closed, or give_up_ns
  // (DEADLINE_EXCEEDED; base/clock.h's kNoDeadline: never).
  absl::Status WaitWritable(int64_t give_up_ns);
  // WriteLocked's wait for room: false, with *result set, if none came
  // (after part of a message went out, the stream is then broken).
  bool WaitForRoom(int64_t give_up_ns, bool first_write, absl::Status* result)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  // Writes iov[first...] whole, waiting for room; `try_first`: if the first
  // write finds no room at all, returns false with nothing written.
  // `lend`: vmsplice(2) instead of writev(2) (a pipe or FIFO only; the
  // pages must not change until the pipe has been read empty).
  bool WriteLocked(absl::Span<struct iovec> iov, bool try_first, absl::Status* result,
                   int64_t give_up_ns = std::numeric_limits<int64_t>::max(), bool lend = false)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  // Whether nothing is queued on the write side (one ioctl): then a message
  // of up to whole_write_limit_ bytes goes whole in one non-blocking write,
  // so TrySend may take it (a server's loop answers 4-64 KiB itself instead
  // of handing the answer to a handler thread).
  bool EmptyForWriting() ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  // Pipes and FIFOs: before writing a message of `frame` bytes (with its
  // prefix), grows the pipe to hold it whole, up to kMaxPipeCapacity, or
  // gives a grown pipe back its first size once a message that fits that
  // comes and the reader has taken the large one (F_SETPIPE_SZ; refused:
  // as it was). Why: stream_connection.cc.
  void FitPipeLocked(size_t frame) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);

  const int read_fd_;
  const int write_fd_;
  const bool is_socket_;
  const PeerCredentials peer_;
  const size_t max_message_size_;
  // Set by Create (SocketWholeWriteLimit, PipeWholeWriteLimit); a pipe's
  // follows its size.
  size_t whole_write_limit_ ABSL_GUARDED_BY(write_mu_) = PIPE_BUF;
  // A pipe's or FIFO's size as Create found it, and now (0: a socket, or
  // unknown).
  size_t first_pipe_capacity_ ABSL_GUARDED_BY(write_mu_) = 0;
  size_t pipe_capacity_ ABSL_GUARDED_BY(write_mu_) = 0;
  bool grow_refused_ ABSL_GUARDED_BY(write_mu_) = false;  // F_SETPIPE_SZ said EPERM

  UniqueFd owned_read_fd_;   // closed on the loop, in Finish
  UniqueFd owned_write_fd_;  // closed in Finish under write_mu_
  UniqueFd close_event_;     // eventfd: wakes blocked senders on Close
  UniqueFd wake_event_;      // eventfd: WakeReader

  // Loop-thread state.
  std::optional<ReadWatch> readable_;
  // The read role's holder's state (the loop's, or a direct reader's).
  // Reads land kPageOffset bytes into a page (base/copy.h: the kernel's
  // copy out of a pipe's pages or a socket's is slow at a short distance).
  KernelBuffer buffer_;
  size_t begin_ = 0;  // first unparsed byte
  size_t end_ = 0;    // one past the last received byte
  // While on_message_ runs: the end of the message it has (which starts at
  // begin_), and whether KeepDeliveredMessage took the buffer with it (then
  // begin_ and end_ are already the next buffer's).
  bool delivering_ = false;
  size_t delivering_end_ = 0;
  bool kept_ = false;
  const std::shared_ptr<Loans> loans_;

  SendTurn turn_;  // taken before write_mu_ by a send that may wait
  Mutex write_mu_;
  bool write_fd_closed_ ABSL_GUARDED_BY(write_mu_) = false;
  // A write gave up after part of a message went out (a deadline): no other
  // message may be written after it; the connection is about to close.
  bool write_broken_ ABSL_GUARDED_BY(write_mu_) = false;
  // The lending buffer (SendBodyWithin): an anonymous mapping of its own,
  // never the heap's, so that unmapping it while the pipe still holds its
  // pages is safe (the pages stay as they were, for the pipe alone) and
  // nothing else of this process ever lands in a page a peer may still
  // read. `lend_in_pipe_`: lent since the pipe was last seen empty, so not
  // to be written into.
  char* lend_data_ ABSL_GUARDED_BY(write_mu_) = nullptr;
  size_t lend_capacity_ ABSL_GUARDED_BY(write_mu_) = 0;
  bool lend_in_pipe_ ABSL_GUARDED_BY(write_mu_) = false;
  int64_t lend_last_ns_ ABSL_GUARDED_BY(write_mu_) = 0;  // when last lent
  // vmsplice failed outright once: this connection copies.
  bool lend_refused_ ABSL_GUARDED_BY(write_mu_) = false;
  std::atomic<uint64_t> lent_messages_{0};
  // The lending buffer, with room for `bytes`, if it may be written into
  // now (nullptr: no; the caller copies instead).
  char* LendingBufferLocked(size_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  void ReleaseLendingBufferLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
};

}  // namespace ipcrpc::internal

#endif  // IPCRPC_TRANSPORTS_STREAM_CONNECTION_H_
