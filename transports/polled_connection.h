// The skeleton of a connection that is read either by its loop or by a
// caller waiting for its own response (a "direct read": Connection::
// ReadUntil, transports/read_role.h), written once for the stream
// transports (unix:, pipe:, fifo:), mq: and shm:.
//
// The skeleton owns the read role and its hand-overs, the loop's read
// cycle, a caller's direct read, Start, Close and the connection's one end
// (Finish, on the loop). A transport supplies how to receive once, how a
// caller waits for more (the descriptors it polls), how its loop watches
// for readability, and what its end closes and releases.
//
// Threads: Start, Close, ReadUntil, EnsureReader and WakeReader may be
// called on any thread. Whoever holds the read role (the loop, or one
// caller) is the only one to call ReceiveOnce and to touch the read state;
// every loop hook runs on the loop.
#ifndef IPCRPC_TRANSPORTS_POLLED_CONNECTION_H_
#define IPCRPC_TRANSPORTS_POLLED_CONNECTION_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "absl/functional/any_invocable.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "asio/error_code.hpp"
#include "asio/io_context.hpp"
#include "transports/read_role.h"
#include "transports/transport.h"

namespace ipcrpc::internal {

class PolledConnection : public Connection {
 public:
  void Start(asio::io_context& io, MessageHandler on_message, CloseHandler on_closed) final;
  void Close() final;
  void SetLoopReadPolicy(absl::AnyInvocable<bool()> keep_loop_reading) final {
    read_role_.SetPolicy(std::move(keep_loop_reading));
  }
  ReadResult ReadUntil(int64_t deadline_ns, absl::FunctionRef<bool()> done) final;
  void EnsureReader() final;
  const std::string& description() const final { return description_; }

 protected:
  explicit PolledConnection(std::string description) : description_(std::move(description)) {}

  // Who calls a hook that differs between the two readers.
  enum class Reader { kLoop, kCaller };
  enum class Got {
    kMessages,  // delivered what came (whole messages, or part of one)
    kNothing,   // nothing there
    kEnded,     // the connection ended: *why says why
  };

  // ---- Hooks: reading.
  // The read role's holder: one receive, and delivery (on_message_) of every
  // whole message it completes. `*drained`: it is known that nothing more is
  // there now (a read shorter than its room), so no receive only to find
  // nothing follows. Checks closing_ first.
  virtual Got ReceiveOnce(Reader reader, absl::Status* why, bool* drained) = 0;
  // A caller that found nothing: waits until more may be there (polls the
  // transport's descriptors, with whatever Close and WakeReader signal),
  // or `deadline_ns`. Not OK: the connection ended, and why.
  virtual absl::Status WaitForMore(int64_t deadline_ns, int64_t now) = 0;
  // The read state (buffers, the handler) is no longer needed: at the end,
  // by Finish, or by a caller that read while the connection finished.
  virtual void ReleaseReadState() = 0;
  // Whether a caller looks for a message before it first waits. A look that
  // costs a system call is not worth it right after a request went out
  // (its answer cannot be there yet); a look in shared memory costs none.
  virtual bool LooksBeforeWaiting() const { return false; }
  // With nothing there: look again at once instead of waiting (a spin).
  virtual bool KeepLooking(Reader /*reader*/) { return false; }
  // Whether a caller waits with ReceiveWaiting (one system call that waits
  // and receives, mq:) instead of WaitForMore and then ReceiveOnce.
  virtual bool ReceivesWhileWaiting() const { return false; }
  // A caller's wait and receive in one: returns when a message came (and
  // was delivered: kMessages), or with kNothing when `done()` is true, at
  // `deadline_ns` (or the end of a slice of it: the caller asks again), or
  // when woken (WakeReader, Close, Finish: whoever made done() true or the
  // connection end must wake a caller inside). Checks done() and closing_
  // after it announced its wait, so no wake is lost. kEnded: *why says why.
  virtual Got ReceiveWaiting(int64_t /*deadline_ns*/, int64_t /*now*/,
                             absl::FunctionRef<bool()> /*done*/, absl::Status* why) {
    *why = absl::UnimplementedError("ReceiveWaiting");
    return Got::kEnded;
  }
  // Before the loop waits: false if something came meanwhile (look again).
  virtual bool ReadyToSleep() { return true; }
  // A caller whose deadline came with nothing read: not OK if the
  // connection is found ended meanwhile (without a system call only).
  virtual absl::Status CheckAtDeadline() { return absl::OkStatus(); }
  // Whether the peer is known to have left, for a caller that cannot read
  // because another reader holds the role.
  virtual bool PeerLeftWhileBusy() const { return false; }
  // Whether this connection reads itself. False: another object delivers
  // its messages (an mq: server connection, fed by its listener); then
  // neither its loop nor a caller reads it.
  virtual bool ReadsItself() const { return true; }
  // A caller begins a direct read (a spinner starts its budget).
  virtual void OnCallerReadBegins() {}

  // ---- Hooks: the loop's watch.
  // Begins watching for readability; false if already watching (the
  // start and an EnsureReader may both ask: one chain of waits only).
  virtual bool BeginWatching() = 0;
  // Queues one wait whose handler is ReadableHandler().
  virtual void AwaitReadable() = 0;
  // The loop's watch fired: before the loop reads (a doorbell drained).
  // Not OK: the connection ended, and why.
  virtual absl::Status OnWoken() { return absl::OkStatus(); }
  // Stops watching (what comes next wakes only a caller that waits).
  virtual void StopWatching() = 0;

  // ---- Hooks: life.
  // On the loop, once started, before the loop reads (watches of its own).
  virtual void OnStart(asio::io_context& /*io*/) {}
  // Close's own part, on the calling thread, once: tell the peer, wake
  // whoever waits (a sender, a caller in WaitForMore).
  virtual void OnClose() = 0;
  // Finish's own part, on the loop, once: close and release what the end
  // releases. `caller_reads`: a caller is inside ReceiveOnce right now, so
  // what it reads with must stay (it calls ReleaseReadState when done).
  virtual void OnFinish(bool caller_reads) = 0;

  // ---- For the transport.
  // The handler for a wait AwaitReadable queues (asio's signature).
  auto ReadableHandler() {
    return [self = Shared<PolledConnection>()](const asio::error_code& ec) {
      self->OnReadableFired(ec);
    };
  }
  // A watch handler that ends the connection with `reason` when it fires
  // (a peer's pidfd), unless cancelled.
  auto EndWhenFired(absl::Status reason) {
    return [self = Shared<PolledConnection>(), reason](const asio::error_code& ec) {
      if (ec || self->finished_) return;
      self->Finish(reason);
    };
  }
  template <typename T>
  std::shared_ptr<T> Shared() {
    return std::static_pointer_cast<T>(shared_from_this());
  }
  // On the loop: the connection ends, once; on_closed_ runs with `reason`.
  void Finish(absl::Status reason);
  // From any thread: Finish on the loop.
  void PostFinish(absl::Status reason);
  absl::Status ClosedStatus() const;
  asio::io_context& io() const { return *io_.load(std::memory_order_acquire); }

  const std::string description_;
  std::atomic<bool> closing_{false};
  std::atomic<bool> finished_{false};
  ReadRole read_role_;
  // The read role holder's.
  MessageHandler on_message_;

 private:
  // On the loop: starts (again) to watch and reads what is there.
  void StartLoopReading();
  // On the loop: the watch fired (`ec`: or was cancelled).
  void OnReadableFired(const asio::error_code& ec);
  // On the loop: reads until nothing is there, then waits or stops.
  void LoopRead();

  std::atomic<asio::io_context*> io_{nullptr};
  CloseHandler on_closed_;  // loop only
};

}  // namespace ipcrpc::internal

#endif  // IPCRPC_TRANSPORTS_POLLED_CONNECTION_H_
