#include "transports/polled_connection.h"

#include "absl/strings/str_cat.h"
#include "asio/error.hpp"
#include "asio/post.hpp"
#include "base/clock.h"

namespace ipcrpc::internal {

absl::Status PolledConnection::ClosedStatus() const {
  return absl::CancelledError(absl::StrCat(description_, ": closed"));
}

void PolledConnection::Start(asio::io_context& io, MessageHandler on_message,
                             CloseHandler on_closed) {
  on_message_ = std::move(on_message);
  on_closed_ = std::move(on_closed);
  // Sequentially consistent, with Close's exchange and load: one of the two
  // sees the other, so a Close racing Start never loses the Finish.
  io_.store(&io);
  asio::post(io, [self = Shared<PolledConnection>(), &io] {
    if (self->closing_.load()) {
      self->Finish(self->ClosedStatus());
      return;
    }
    self->OnStart(io);
    if (self->ReadsItself() && self->read_role_.LoopReadsAtStart()) self->StartLoopReading();
  });
}

void PolledConnection::Close() {
  if (closing_.exchange(true)) return;
  OnClose();
  if (io_.load() != nullptr) PostFinish(ClosedStatus());
}

void PolledConnection::PostFinish(absl::Status reason) {
  asio::post(io(), [self = Shared<PolledConnection>(), reason = std::move(reason)] {
    self->Finish(reason);
  });
}

void PolledConnection::Finish(absl::Status reason) {
  if (finished_) return;
  finished_ = true;
  closing_.store(true, std::memory_order_release);
  // A caller may be inside ReceiveOnce: what it reads with stays until it
  // lets go (EndCallerRead), or until the connection is destroyed.
  const bool caller_reads = read_role_.Finish();
  StopWatching();
  OnFinish(caller_reads);
  if (!caller_reads) {
    on_message_ = nullptr;
    ReleaseReadState();
  }
  if (on_closed_) {
    CloseHandler on_closed = std::move(on_closed_);
    on_closed_ = nullptr;
    std::move(on_closed)(std::move(reason));
  }
}

void PolledConnection::StartLoopReading() {
  if (finished_) return;
  if (closing_.load(std::memory_order_acquire)) {
    Finish(ClosedStatus());
    return;
  }
  // Two starts may be posted (the connection's start, an EnsureReader);
  // the first may read, stop, and a caller take the role before the second
  // runs: then the loop must not read.
  if (!read_role_.LoopHolds()) return;
  // Already watching: one chain of waits only, or stopping one would abort
  // the other's wait.
  if (!BeginWatching()) return;
  LoopRead();  // something may be there already
}

void PolledConnection::OnReadableFired(const asio::error_code& ec) {
  if (finished_ || ec == asio::error::operation_aborted) return;
  if (ec) {
    Finish(absl::UnavailableError(absl::StrCat(description_, ": wait: ", ec.message())));
    return;
  }
  absl::Status woken = OnWoken();
  if (!woken.ok()) {
    Finish(std::move(woken));
    return;
  }
  LoopRead();
}

void PolledConnection::LoopRead() {
  // Whether the policy was asked since something was last found, and
  // whether the loop has spun since.
  bool asked = false;
  bool spun = false;
  for (;;) {
    if (finished_) return;
    absl::Status why;
    bool drained = false;
    const Got got = ReceiveOnce(Reader::kLoop, &why, &drained);
    if (got == Got::kEnded) {
      Finish(std::move(why));
      return;
    }
    if (got == Got::kMessages) {
      asked = spun = false;
      // A short read emptied the transport: no receive only to find
      // nothing (the wait below reports at once what came meanwhile).
      if (!drained) continue;
    }
    // Nothing expected any more: stop at once, without spinning, so that
    // the caller of the next call reads its response itself and nothing
    // wakes this loop.
    if (!asked) {
      if (!read_role_.LoopKeepsReading()) {
        StopWatching();
        return;
      }
      asked = true;
    }
    if (KeepLooking(Reader::kLoop)) {
      spun = true;
      continue;
    }
    if (spun && !read_role_.LoopKeepsReading()) {
      StopWatching();
      return;
    }
    if (!ReadyToSleep()) continue;
    AwaitReadable();
    return;
  }
}

Connection::ReadResult PolledConnection::ReadUntil(int64_t deadline_ns,
                                                   absl::FunctionRef<bool()> done) {
  if (!ReadsItself()) return ReadResult::kUnsupported;
  if (!read_role_.TryTakeForCaller()) {
    return finished_ || closing_.load(std::memory_order_acquire) || PeerLeftWhileBusy()
               ? ReadResult::kClosed
               : ReadResult::kBusy;
  }
  ReadResult result = ReadResult::kTimeout;
  absl::Status ended;
  OnCallerReadBegins();
  // Right after a request went out its answer cannot be there yet: wait
  // first, look after (a system call less per call), unless looking is
  // free. A check with a past deadline looks at once.
  bool look = LooksBeforeWaiting() || deadline_ns <= MonotonicNowNs();
  for (;;) {
    if (done()) {
      result = ReadResult::kDone;
      break;
    }
    bool drained = false;
    const Got got = look ? ReceiveOnce(Reader::kCaller, &ended, &drained) : Got::kNothing;
    look = true;
    if (got == Got::kEnded) {
      result = ReadResult::kClosed;
      break;
    }
    if (got == Got::kMessages) {
      // Not what we wait for; if the transport is empty, wait, then look.
      look = !drained;
      continue;
    }
    const int64_t now = MonotonicNowNs();
    if (now >= deadline_ns) {
      ended = CheckAtDeadline();
      if (!ended.ok()) result = ReadResult::kClosed;
      break;
    }
    if (KeepLooking(Reader::kCaller)) continue;
    if (ReceivesWhileWaiting()) {
      // Waits and receives in one system call: whatever it delivered (or
      // a wake, or a slice's end), ask done() and wait again; no look.
      if (ReceiveWaiting(deadline_ns, now, done, &ended) == Got::kEnded) {
        result = ReadResult::kClosed;
        break;
      }
      look = false;
      continue;
    }
    ended = WaitForMore(deadline_ns, now);
    if (!ended.ok()) {
      result = ReadResult::kClosed;
      break;
    }
  }
  return read_role_.EndCallerRead(
      result,
      [&] {
        // Finish left the reading state to us (its handler holds the owner).
        on_message_ = nullptr;
        ReleaseReadState();
      },
      [&] { PostFinish(ended); },
      [&] { asio::post(io(), [self = Shared<PolledConnection>()] { self->StartLoopReading(); }); });
}

void PolledConnection::EnsureReader() {
  if (!ReadsItself() || !read_role_.EnsureReader()) return;
  asio::post(io(), [self = Shared<PolledConnection>()] { self->StartLoopReading(); });
}

}  // namespace ipcrpc::internal
