#include "rpc/handler_scheduler.h"
#include "base/mutex.h"

#include <utility>

namespace ipcrpc::internal {

HandlerScheduler::HandlerScheduler(int threads) {
  threads_.reserve(threads);
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Work(); });
}

HandlerScheduler::~HandlerScheduler() { Join(); }

void HandlerScheduler::Post(int priority, int64_t deadline_ns,
                            absl::AnyInvocable<void() &&> task) {
  MutexLock lock(&mu_);
  if (priority < kControlPriority) ++queued_calls_;
  queue_.push(Task{priority, deadline_ns, next_sequence_++, std::move(task)});
}

int64_t HandlerScheduler::queued_calls() const {
  MutexLock lock(&mu_);
  return queued_calls_;
}

void HandlerScheduler::Join() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& thread : threads_) {
    if (thread.joinable()) thread.join();
  }
}

void HandlerScheduler::Work() {
  for (;;) {
    absl::AnyInvocable<void() &&> run;
    {
      MutexLock lock(&mu_);
      mu_.Await(Condition(
          +[](HandlerScheduler* self) ABSL_NO_THREAD_SAFETY_ANALYSIS {
            return !self->queue_.empty() || self->stopping_;
          },
          this));
      if (queue_.empty()) return;  // stopping, and nothing left
      if (queue_.top().priority < kControlPriority) --queued_calls_;
      run = std::move(queue_.top().run);
      queue_.pop();
    }
    std::move(run)();
  }
}

}  // namespace ipcrpc::internal
