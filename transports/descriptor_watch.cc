#include "transports/descriptor_watch.h"

#include <sys/socket.h>

#include "asio/post.hpp"
#include "base/logging.h"

namespace ipcrpc::internal {

std::shared_ptr<DescriptorWatch> DescriptorWatch::Start(asio::io_context& io, UniqueFd fd,
                                                        Handler on_readable,
                                                        ReadWatch::Mode mode) {
  auto watch =
      std::make_shared<DescriptorWatch>(io, std::move(fd), std::move(on_readable), mode);
  asio::post(io, [watch] {
    if (watch->stopped()) {
      watch->Release();
      return;
    }
    watch->readable_.emplace(watch->io_, watch->fd_.get(), watch->mode_);
    watch->Run();
  });
  return watch;
}

DescriptorWatch::~DescriptorWatch() { readable_.reset(); }

namespace {
// Set by BackOffFromHandler during a handler (which runs on this thread).
thread_local absl::Duration back_off = absl::ZeroDuration();
}  // namespace

void DescriptorWatch::BackOffFromHandler(absl::Duration pause) { back_off = pause; }

void DescriptorWatch::Run() {
  back_off = absl::ZeroDuration();
  if (stopped() || !on_readable_()) {
    stopped_.store(true, std::memory_order_release);
    Release();
    return;
  }
  if (back_off > absl::ZeroDuration() && mode_ == ReadWatch::kLevel) {
    // Not supported (descriptor_watch.h): the watch waits again at once.
    IPCRPC_LOG(ERROR) << "DescriptorWatch: BackOffFromHandler ignored on a level-triggered watch";
    back_off = absl::ZeroDuration();
  }
  if (back_off > absl::ZeroDuration()) {
    const absl::Duration pause = back_off;
    back_off = absl::ZeroDuration();
    if (!pause_.has_value()) pause_.emplace(io_);
    pause_->expires_after(absl::ToChronoNanoseconds(pause));
    auto self = shared_from_this();
    pause_->async_wait([self](const asio::error_code& ec) {
      if (ec || self->stopped()) {
        self->stopped_.store(true, std::memory_order_release);
        self->Release();
        return;
      }
      self->Run();
    });
    return;
  }
  Wait();
}

void DescriptorWatch::Wait() {
  auto self = shared_from_this();
  readable_->AsyncWait([self](const asio::error_code& ec) {
                          if (ec || self->stopped()) {
                            self->stopped_.store(true, std::memory_order_release);
                            self->Release();
                            return;
                          }
                          self->Run();
                        });
}

void DescriptorWatch::Stop() {
  if (stopped_.exchange(true, std::memory_order_acq_rel)) return;
  auto self = shared_from_this();
  asio::post(io_, [self] { self->Release(); });
}

void DescriptorWatch::ShutdownSocket() {
  std::lock_guard<std::mutex> lock(fd_mu_);
  if (fd_.valid()) ::shutdown(fd_.get(), SHUT_RDWR);
}

void DescriptorWatch::Release() {
  if (pause_.has_value()) pause_->cancel();
  readable_.reset();  // cancels the pending wait; the fd stays ours
  {
    std::lock_guard<std::mutex> lock(fd_mu_);
    fd_.Reset();
  }
  on_readable_ = nullptr;  // drops what the handler holds (breaks cycles)
}

}  // namespace ipcrpc::internal
