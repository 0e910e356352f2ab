// Watches one descriptor for readability on an Asio loop: the pattern every
// listener uses (a listening socket, the server FIFO, the server queue).
//
//   auto watch = DescriptorWatch::Start(io, std::move(fd), [state] {
//     return state->DrainWhatIsReadable();  // on the loop; false: stop watching
//   });
//   ...
//   watch->Stop();  // any thread
//
// The descriptor is owned and closed on the loop once the watch stops, so it
// is never closed under a pending wait. The handler must take everything
// that is there (read until EAGAIN) or back off (BackOffFromHandler): the
// wait for more is edge-triggered and costs no system call (ReadWatch).
#ifndef IPCRPC_TRANSPORTS_DESCRIPTOR_WATCH_H_
#define IPCRPC_TRANSPORTS_DESCRIPTOR_WATCH_H_

#include <atomic>
#include <memory>
#include <mutex>
#include <optional>

#include "absl/functional/any_invocable.h"
#include "absl/time/time.h"
#include "asio/io_context.hpp"
#include "asio/steady_timer.hpp"
#include "base/syscall.h"
#include "transports/read_watch.h"

namespace ipcrpc::internal {

class DescriptorWatch : public std::enable_shared_from_this<DescriptorWatch> {
 public:
  // Runs on the loop whenever the descriptor is readable (and once at the
  // start); returns false to stop watching.
  using Handler = absl::AnyInvocable<bool()>;

  // `mode` kLevel (ReadWatch): the handler may leave data there; the loop
  // runs it again at its next turn. Then it must not BackOffFromHandler (the
  // descriptor would stay readable with no wait queued: the loop would spin).
  static std::shared_ptr<DescriptorWatch> Start(asio::io_context& io, UniqueFd fd,
                                                Handler on_readable,
                                                ReadWatch::Mode mode = ReadWatch::kEdge);

  // Stops watching and closes the descriptor (on the loop). Idempotent; safe
  // from any thread, also from inside the handler.
  void Stop();

  // For a listening socket: shutdown(2) it now, from any thread, so that new
  // connects are refused at once (if the watch has not closed it already).
  void ShutdownSocket();

  // From inside a handler that returns true: look again only after
  // `pause`, not as soon as the descriptor is readable. For a descriptor that
  // stays readable while the handler cannot take what is there (accept(2)
  // failing with EMFILE: the connection waits in the backlog), where
  // waiting for readability would spin on the loop.
  static void BackOffFromHandler(absl::Duration pause);

  bool stopped() const { return stopped_.load(std::memory_order_acquire); }

  DescriptorWatch(asio::io_context& io, UniqueFd fd, Handler on_readable, ReadWatch::Mode mode)
      : io_(io), fd_(std::move(fd)), on_readable_(std::move(on_readable)), mode_(mode) {}
  ~DescriptorWatch();

 private:
  void Run();       // on the loop
  void Wait();      // on the loop
  void Release();   // on the loop

  asio::io_context& io_;
  std::mutex fd_mu_;  // ShutdownSocket (any thread) against Release (the loop)
  UniqueFd fd_;
  Handler on_readable_;
  const ReadWatch::Mode mode_;
  std::optional<ReadWatch> readable_;
  std::optional<asio::steady_timer> pause_;
  std::atomic<bool> stopped_{false};
};

}  // namespace ipcrpc::internal

#endif  // IPCRPC_TRANSPORTS_DESCRIPTOR_WATCH_H_
