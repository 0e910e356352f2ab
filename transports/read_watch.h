// ReadWatch: waits on an Asio loop for a descriptor to become readable, with
// no system call to wait again.
//
// Asio's own wait (stream_descriptor::async_wait) re-arms the descriptor with
// an epoll_ctl(EPOLL_CTL_MOD) every time it is started: one system call per
// request on a server connection, whose loop waits again after every message
// (a third of the server's system calls per call). A ReadWatch's wait tells
// Asio's reactor that it has taken everything (done_and_exhausted), and a
// wait started after that is queued without any system call.
//
// Two modes, chosen at construction:
//  - edge-triggered (Asio's own registration): the handler must read until
//    EAGAIN (or a read returns 0) before waiting again; for listeners.
//  - level-triggered (kLevel): the registration is changed once to
//    level-triggered, so the handler may stop after a short read (less than
//    it had room for) without the EAGAIN read that would prove the
//    descriptor empty: whatever is left, or an end of file that came with
//    the same wake-up, is reported again at the loop's next epoll_wait. An
//    edge-triggered wait cannot allow that: data and the peer's close seen in
//    one wake-up would leave the close unreported. The price: the loop must
//    not run epoll_wait while the descriptor is readable and no wait is
//    queued (it would return at once, again and again), so a level-triggered
//    watch is released (or waited on again) before its handler returns, and
//    only on a loop run by one thread, as every loop here is.
//
// This uses Asio's reactor directly (asio/detail, as the Asio this project
// builds against, Debian 12's 1.22, defines it): register_descriptor,
// start_op and deregister_descriptor, the calls stream_descriptor makes, and
// the reactor's epoll descriptor for the one change to level-triggered.
//
// On the loop only: construct, AsyncWait, Release.
#ifndef IPCRPC_TRANSPORTS_READ_WATCH_H_
#define IPCRPC_TRANSPORTS_READ_WATCH_H_

#include <sys/epoll.h>

#include <cerrno>
#include <memory>
#include <new>
#include <utility>

#include "absl/functional/any_invocable.h"
#include "asio/error.hpp"
#include "asio/io_context.hpp"
// After io_context.hpp, which they need declared first.
#include "asio/detail/reactor.hpp"
#include "asio/detail/reactor_op.hpp"
#include "ipcrpc/thread_spare.h"

namespace ipcrpc::internal {

namespace read_watch_internal {
// The reactor's epoll descriptor, which Asio keeps private (read_watch.cc).
int EpollFdOf(asio::detail::epoll_reactor& reactor);
}  // namespace read_watch_internal

class ReadWatch {
 public:
  enum Mode { kEdge, kLevel };

  // `handler(ec)` runs on the loop: ec is empty when the descriptor is
  // readable (or hung up, or in error: a read says which), operation_aborted
  // when the watch was released first.
  using Handler = absl::AnyInvocable<void(const asio::error_code&)>;

  // Registers `fd` (not owned) with the loop's reactor; error() says if the
  // kernel refused (epoll_ctl's errno), and then every wait fails with it.
  ReadWatch(asio::io_context& io, int fd, Mode mode = kEdge)
      : reactor_(asio::use_service<asio::detail::reactor>(io)), fd_(fd) {
    // Puts the reactor into the loop's run (as Asio's own I/O objects do
    // when constructed): without it, a loop whose only I/O is ReadWatches
    // would never call epoll_wait. Idempotent.
    reactor_.init_task();
    const int error = reactor_.register_descriptor(fd_, data_);
    if (error != 0) {
      error_ = asio::error_code(error, asio::error::get_system_category());
      reactor_.cleanup_descriptor_data(data_);  // sets it to null
      return;
    }
    if (mode == kLevel) {
      // Asio's events without EPOLLET, and its per-descriptor state as the
      // event's data, as register_descriptor set them.
      struct epoll_event event = {};
      event.events = EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLPRI;
      event.data.ptr = data_;
      if (::epoll_ctl(read_watch_internal::EpollFdOf(reactor_), EPOLL_CTL_MOD, fd_, &event) != 0) {
        error_ = asio::error_code(errno, asio::error::get_system_category());
        Release();
      }
    }
  }
  ReadWatch(const ReadWatch&) = delete;
  ReadWatch& operator=(const ReadWatch&) = delete;
  ~ReadWatch() { Release(); }

  // Runs `handler` once the descriptor is readable, or at once (through the
  // loop) if it may be already.
  void AsyncWait(Handler handler) {
    Op* op = Op::New(std::move(handler));
    if (data_ == nullptr) {
      op->ec_ = error_ ? error_ : asio::error::bad_descriptor;
      reactor_.post_immediate_completion(op, /*is_continuation=*/true);
      return;
    }
    reactor_.start_op(asio::detail::reactor::read_op, fd_, data_, op,
                      /*is_continuation=*/true, /*allow_speculative=*/true);
  }

  // Stops watching (EPOLL_CTL_DEL; the descriptor stays open): a pending
  // wait's handler runs with operation_aborted. Idempotent.
  void Release() {
    if (data_ == nullptr) return;
    reactor_.deregister_descriptor(fd_, data_, /*closing=*/false);
    reactor_.cleanup_descriptor_data(data_);
    data_ = nullptr;
  }

 private:
  class Op : public asio::detail::reactor_op {
   public:
    // A wait is started after every message a server connection reads:
    // each thread keeps the memory of one finished Op for its next (a
    // malloc and a free fewer a call; an Op may outlive its watch, queued
    // as aborted, so the memory is the thread's, not the watch's).
    static Op* New(Handler handler) {
      static_assert(alignof(Op) <= __STDCPP_DEFAULT_NEW_ALIGNMENT__);
      void* memory = Spare::Take().release();
      if (memory == nullptr) memory = ::operator new(sizeof(Op));
      return new (memory) Op(std::move(handler));
    }

   private:
    struct FreeMemory {
      void operator()(void* memory) const { ::operator delete(memory); }
    };
    using Spare = ThreadSpare<std::unique_ptr<void, FreeMemory>, Op>;

    explicit Op(Handler handler)
        : reactor_op(asio::error_code(), &Op::Perform, &Op::Complete),
          handler_(std::move(handler)) {}

    // Readiness is the whole result, and the handler reads until empty.
    static status Perform(reactor_op*) { return done_and_exhausted; }
    // `owner` is null when the loop is destroyed with the wait pending.
    static void Complete(void* owner, asio::detail::operation* base,
                         const asio::error_code& /*ec*/, std::size_t /*bytes*/) {
      Op* op = static_cast<Op*>(base);
      Handler handler = std::move(op->handler_);
      const asio::error_code ec = op->ec_;
      op->~Op();
      // (No room: the thread has a spare, or is exiting, maybe with the
      // loop destroyed by a static's destructor.)
      if (auto* room = Spare::Room()) {
        room->reset(op);
      } else {
        ::operator delete(op);
      }
      if (owner != nullptr) handler(ec);
    }

    Handler handler_;
  };

  asio::detail::reactor& reactor_;
  const int fd_;
  asio::detail::reactor::per_descriptor_data data_ = nullptr;
  asio::error_code error_;
};

}  // namespace ipcrpc::internal

#endif  // IPCRPC_TRANSPORTS_READ_WATCH_H_
