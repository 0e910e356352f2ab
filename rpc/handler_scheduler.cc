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
    MutexLock lock(&mu_);
    if (priority < kControlPriority) queued_calls_.fetch_add(1, std::memory_order_release);
    queue_.push(Task{priority, deadline_ns, next_sequence_++, std::move(task)});
    wake = idle_ > 0;
  }
  if (wake) work_.Signal();
}

void HandlerScheduler::Join() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
  }
  work_.SignalAll();
  for (std::thread& thread : threads_) {
    if (thread.joinable()) thread.join();
  }
}

void HandlerScheduler::Work() {
  for (;;) {
    absl::AnyInvocable<void() &&> run;
    {
      MutexLock lock(&mu_);
      while (queue_.empty() && !stopping_) {
        ++idle_;
        work_.Wait(&mu_);
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
  ReleasableMutexLock lock(&mu_);
  if (stopping_) return false;
  const uint64_t id = next_task_++;
  tasks_.emplace_back(id, std::move(task));
  if (idle_ >= static_cast<int>(tasks_.size())) {
    lock.Unlock();
    work_.Signal();
    return true;
  }
  ++live_;
  lock.Unlock();
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
    lock.Lock();
    if (--live_ == 0) gone_.SignalAll();
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
  MutexLock lock(&mu_);
  stopping_ = true;
  work_.SignalAll();
  while (live_ != 0) gone_.Wait(&mu_);
}

void StreamThreads::Work() {
  ReleasableMutexLock lock(&mu_);
  for (;;) {
    if (tasks_.empty() && !stopping_) {
      ++idle_;
      const auto deadline =
          std::chrono::steady_clock::now() + std::chrono::milliseconds(kIdleExitMs);
      bool in_time = true;
      while (tasks_.empty() && !stopping_ && in_time) in_time = work_.WaitUntil(&mu_, deadline);
      --idle_;
    }
    if (tasks_.empty()) break;  // stopping, or idle for long
    absl::AnyInvocable<void() &&> run = std::move(tasks_.front().second);
    tasks_.pop_front();
    lock.Unlock();
    std::move(run)();
    run = nullptr;  // what the task held goes before the thread counts as idle
    lock.Lock();
  }
  if (--live_ == 0) gone_.SignalAll();
}

}  // namespace ipcrpc::internal
