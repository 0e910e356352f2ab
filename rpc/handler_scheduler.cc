#include "rpc/handler_scheduler.h"

#include "base/syscall.h"

#include <utility>

namespace ipcrpc::internal {

HandlerScheduler::HandlerScheduler(int threads) {
  threads_.reserve(threads);
  for (int i = 0; i < threads; ++i) {
    threads_.emplace_back([this] {
      BeginOwnThread("ipcrpc-handler");
      Work();
    });
  }
}

HandlerScheduler::~HandlerScheduler() { Join(); }

void HandlerScheduler::Post(int priority, int64_t deadline_ns,
                            absl::AnyInvocable<void() &&> task) {
  bool wake = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (priority < kControlPriority) queued_calls_.fetch_add(1, std::memory_order_release);
    queue_.push(Task{priority, deadline_ns, next_sequence_++, std::move(task)});
    wake = idle_ > 0;
  }
  if (wake) work_.notify_one();
}

void HandlerScheduler::Join() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  work_.notify_all();
  for (std::thread& thread : threads_) {
    if (thread.joinable()) thread.join();
  }
}

void HandlerScheduler::Work() {
  for (;;) {
    absl::AnyInvocable<void() &&> run;
    {
      std::unique_lock<std::mutex> lock(mu_);
      while (queue_.empty() && !stopping_) {
        ++idle_;
        work_.wait(lock);
        --idle_;
      }
      if (queue_.empty()) return;  // stopping, and nothing left
      if (queue_.top().priority < kControlPriority) {
        queued_calls_.fetch_sub(1, std::memory_order_release);
      }
      run = std::move(queue_.top().run);
      queue_.pop();
    }
    std::move(run)();
  }
}

}  // namespace ipcrpc::internal
