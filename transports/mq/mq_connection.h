#ifndef IPCRPC_TRANSPORTS_MQ_MQ_CONNECTION_H_
#define IPCRPC_TRANSPORTS_MQ_MQ_CONNECTION_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "asio/io_context.hpp"
#include "asio/posix/stream_descriptor.hpp"
#include "base/clock.h"
#include "base/copy.h"
#include "base/mutex.h"
#include "base/syscall.h"
#include "transports/mq/mq_wire.h"
#include "transports/polled_connection.h"
#include "transports/read_watch.h"
#include "transports/send_turn.h"
#include "transports/transport.h"

namespace ipcrpc::internal {

// One connection, on either side. Writes go to the peer's queue, fragmented.
// Reads: the client reads its own reply queue; on the server, the listener
// reads /NAME and hands this connection its fragments (Deliver).
class MqConnection final : public PolledConnection {
 public:
  MqConnection(UniqueFd read_queue, UniqueFd write_queue, long write_message_size,
               uint64_t connection_id, UniqueFd peer_pidfd, PeerCredentials peer,
               std::string description, size_t max_message_size, UniqueFd close_event);

  ~MqConnection() override;

  // Client side, before Start: two more descriptors of the reply queue,
  // one blocking, for a caller's wait and receive in one mq_timedreceive,
  // one to send it a WAKE (WakeReader, Close, the connection's end, a set
  // of the realtime clock). Without a timerfd to learn of such sets (the
  // timeout of mq_timedreceive is on that clock) a caller waits with ppoll
  // instead (WaitForMore, monotonic), woken by the same WAKEs.
  void SetCallerWait(UniqueFd wait_queue, UniqueFd wake_queue);

  // Server side: runs on the loop when the connection ends (to unroute it).
  void SetOnFinish(absl::AnyInvocable<void() &&> on_finish) { on_finish_ = std::move(on_finish); }

  // On the loop: one message of this connection (DATA or CLOSE).
  void Deliver(const MqHeader& header, std::string_view chunk);

  // The read role's holder: one message; not OK if the connection ended.
  absl::Status DeliverStarted(const MqHeader& header, std::string_view chunk);

  void WakeReader() override;

  // One fragment only (a message in several could be left half sent), and
  // only if the peer's queue has room now.
  bool TrySend(absl::Span<const std::string_view> parts, int priority,
               absl::Status* error) override;

  absl::Status SendWithin(absl::Span<const std::string_view> parts, int priority,
                          int64_t deadline_ns) override;

  const PeerCredentials& peer() const override { return peer_; }

 private:
  // Send's work, under write_mu_; `*broken`: the deadline passed after part
  // of the message went out.
  absl::Status SendMessage(absl::Span<const std::string_view> parts, int priority,
                           int64_t deadline_ns, bool* broken);

  // TrySend's work, with write_mu_ held: `total` bytes of `parts`.
  bool TrySendLocked(absl::Span<const std::string_view> parts, size_t total, int priority,
                     absl::Status* error) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);

  // SendMessage's work, with write_mu_ held.
  absl::Status SendFragmentsLocked(absl::Span<const std::string_view> parts, size_t total,
                                   unsigned mq_priority, int64_t deadline_ns, bool* broken)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);

  absl::Status SendOne(const char* data, size_t size, unsigned priority, int64_t deadline_ns)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);

  // The write queue's descriptor blocking or not (O_NONBLOCK, mq_setattr).
  // Blocking only inside one SendMessage, which restores it: every sender
  // holds write_mu_, and TrySend must never block.
  void SetSendBlocking(bool blocking) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);

  // One mq_timedsend of up to 10 ms, on the descriptor made blocking.
  // DEADLINE_EXCEEDED: try again.
  absl::Status WaitInLine(const char* data, size_t size, unsigned priority, int64_t deadline_ns)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);

  // Tells the peer the connection is over, once, at once (best effort: if
  // its queue is full it learns from our pid instead).
  void SayClose();

  // Wakes a caller blocked in ReceiveWaiting (or in WaitForMore): a WAKE
  // message in its own reply queue (if that is full, the caller is not
  // blocked). With ReceiveWaiting, only if a caller announced its wait.
  void SendWake();
  // ReceiveWaiting's wait: one mq_timedreceive.
  Got WaitAndReceive(int64_t deadline_ns, int64_t now, absl::FunctionRef<bool()> done,
                     absl::Status* why);
  // On the loop: the realtime clock was set (mq_timedreceive's timeout is
  // on that clock): wake a waiting caller so that it takes its timeout
  // again, and watch for the next.
  void AwaitClockSet();

  // PolledConnection's hooks. Only a client's connection reads itself (its
  // reply queue); the listener reads a server's and calls Deliver.
  // ReceiveOnce is one mq_receive and its delivery.
  bool ReadsItself() const override { return has_reply_queue_; }
  Got ReceiveOnce(Reader reader, absl::Status* why, bool* drained) override;
  bool ReceivesWhileWaiting() const override { return clock_set_fd_.valid(); }
  Got ReceiveWaiting(int64_t deadline_ns, int64_t now, absl::FunctionRef<bool()> done,
                     absl::Status* why) override;
  // A received queue message: decoded and delivered.
  Got DeliverReceived(size_t size, absl::Status* why);
  absl::Status WaitForMore(int64_t deadline_ns, int64_t now) override;
  void ReleaseReadState() override {}
  bool BeginWatching() override;
  void AwaitReadable() override { readable_->AsyncWait(ReadableHandler()); }
  void StopWatching() override { readable_.reset(); }
  void OnStart(asio::io_context& io) override;
  void OnClose() override;
  void OnFinish(bool caller_reads) override;

  UniqueFd read_queue_;
  UniqueFd write_queue_;
  const size_t write_message_size_;
  const uint64_t connection_id_;
  UniqueFd peer_pidfd_;
  const PeerCredentials peer_;
  UniqueFd close_event_;

  const bool has_reply_queue_ = read_queue_.valid();  // a client's connection
  // SetCallerWait's (a client's; kept until destruction, so that a waker
  // never sends through a descriptor number that was reused).
  UniqueFd wait_queue_;
  UniqueFd wake_queue_;
  // A caller is in ReceiveWaiting (or about to block there).
  std::atomic<bool> waiting_{false};
  // WAKEs sent, and read (by whoever reads): a caller leaves none unread
  // in its queue when it can help it (ReceiveWaiting).
  std::atomic<uint64_t> wakes_sent_{0};
  std::atomic<uint64_t> wakes_read_{0};
  // A client's watch for the realtime clock being set (a timerfd, armed by
  // SetCallerWait; invalid: callers wait with WaitForMore).
  UniqueFd clock_set_fd_;
  std::optional<asio::posix::stream_descriptor> clock_set_watch_;
  // Loop only.
  bool started_ = false;
  std::optional<ReadWatch> readable_;
  std::optional<asio::posix::stream_descriptor> peer_watch_;
  absl::AnyInvocable<void() &&> on_finish_;
  MqReassembler reassembler_;
  KernelBuffer receive_buffer_;  // base/copy.h: mq_receive copies fast into it
  std::vector<std::pair<MqHeader, std::string>> early_;
  const size_t max_message_size_;

  SendTurn turn_;  // taken before write_mu_ by a send that may wait
  Mutex write_mu_;
  uint32_t next_sequence_ ABSL_GUARDED_BY(write_mu_) = 0;
  bool said_close_ ABSL_GUARDED_BY(write_mu_) = false;
  KernelBuffer send_buffer_ ABSL_GUARDED_BY(write_mu_);  // and mq_send out of it
  bool send_blocking_ ABSL_GUARDED_BY(write_mu_) = false;  // see SetSendBlocking
};

// The eventfd that Close signals, to wake whoever polls for the connection.
absl::StatusOr<UniqueFd> NewCloseEvent(std::string_view what);

}  // namespace ipcrpc::internal

#endif  // IPCRPC_TRANSPORTS_MQ_MQ_CONNECTION_H_
