#include "rpc/handler_scheduler.h"

#include "base/syscall.h"

#include <chrono>
#include <system_error>
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

bool StreamThreads::Run(absl::AnyInvocable<void() &&> task) {
  std::unique_lock<std::mutex> lock(mu_);
  if (stopping_) return false;
  const uint64_t id = next_task_++;
  tasks_.emplace_back(id, std::move(task));
  if (idle_ >= static_cast<int>(tasks_.size())) {
    lock.unlock();
    work_.notify_one();
    return true;
  }
  ++live_;
  lock.unlock();
  // Detached: Join waits for `live_` to reach zero instead, so that threads
  // that left after idling need no joining.
  try {
    std::thread([this] {
      BeginOwnThread("ipcrpc-stream");
      Work();
    }).detach();
  } catch (const std::system_error&) {
    // No thread (EAGAIN: the system's limit). Take the task back, unless a
    // thread that became idle meanwhile took it (then it runs).
    lock.lock();
    if (--live_ == 0) gone_.notify_all();
    for (auto it = tasks_.begin(); it != tasks_.end(); ++it) {
      if (it->first == id) {
        tasks_.erase(it);
        return false;
      }
    }
    return true;
  }
  return true;
}

void StreamThreads::Join() {
  std::unique_lock<std::mutex> lock(mu_);
  stopping_ = true;
  work_.notify_all();
  gone_.wait(lock, [this] { return live_ == 0; });
}

void StreamThreads::Work() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    while (tasks_.empty() && !stopping_) {
      ++idle_;
      const bool woken = work_.wait_for(lock, std::chrono::milliseconds(kIdleExitMs),
                                        [this] { return !tasks_.empty() || stopping_; });
      --idle_;
      if (!woken) break;
    }
    if (tasks_.empty()) break;  // stopping, or idle for long
    absl::AnyInvocable<void() &&> run = std::move(tasks_.front().second);
    tasks_.pop_front();
    lock.unlock();
    std::move(run)();
    run = nullptr;  // what the task held goes before the thread counts as idle
    lock.lock();
  }
  if (--live_ == 0) gone_.notify_all();
}

}  // namespace ipcrpc::internal
