// The server's handler threads and their queue. A task waiting for a thread
// is served highest priority first, then earliest deadline first, then in
// arrival order; control work (answers that need no handler) goes before any
// call. Thread-safe.
#ifndef IPCRPC_RPC_HANDLER_SCHEDULER_H_
#define IPCRPC_RPC_HANDLER_SCHEDULER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <utility>
#include <queue>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "base/mutex.h"

namespace ipcrpc::internal {

class HandlerScheduler {
 public:
  // Priority of work that is not a call (above every call priority 0..31).
  static constexpr int kControlPriority = 32;

  explicit HandlerScheduler(int threads);
  // Runs what is queued, then joins the threads.
  ~HandlerScheduler();

  // Queues `task`; `deadline_ns` is monotonic (INT64_MAX for none).
  void Post(int priority, int64_t deadline_ns, absl::AnyInvocable<void() &&> task);

  // Calls (tasks below kControlPriority) queued and not yet taken by a
  // thread. Counted under the queue's lock, so a call counted here is one a
  // thread will pick in priority order.
  int64_t queued_calls() const { return queued_calls_.load(std::memory_order_acquire); }

  // Stops accepting nothing: runs every queued task, then joins. Idempotent.
  void Join();

 private:
  struct Task {
    int priority;
    int64_t deadline_ns;
    uint64_t sequence;
    mutable absl::AnyInvocable<void() &&> run;
  };
  struct Later {
    // True if a should run after b.
    bool operator()(const Task& a, const Task& b) const {
      if (a.priority != b.priority) return a.priority < b.priority;
      if (a.deadline_ns != b.deadline_ns) return a.deadline_ns > b.deadline_ns;
      return a.sequence > b.sequence;
    }
  };

  void Work();

  // A condition variable, not Await: Post wakes one idle thread, and
  // nothing else wakes anybody (an Await would wake every idle thread on
  // every unlock).
  Mutex mu_;
  CondVar work_;
  std::priority_queue<Task, std::vector<Task>, Later> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t next_sequence_ ABSL_GUARDED_BY(mu_) = 0;
  int idle_ ABSL_GUARDED_BY(mu_) = 0;
  // Changed only under mu_, together with queue_: a call counted here is in
  // the queue.
  std::atomic<int64_t> queued_calls_{0};
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

// Threads for stream handlers, which run as long as their streams do (a
// stream must not hold one of the few handler threads that unary calls
// share): a task runs at once on an idle thread, or on a new one. A thread
// idle for kIdleExit leaves. The number of threads is bounded by the
// number of tasks running at once (the server bounds that:
// ServerOptions::max_open_streams). Thread-safe.
class StreamThreads {
 public:
  static constexpr int64_t kIdleExitMs = 10'000;

  StreamThreads() = default;
  ~StreamThreads() { Join(); }

  // False if the task cannot run: after Join, or no thread could be
  // started (the system's limit): the task is dropped, not run.
  bool Run(absl::AnyInvocable<void() &&> task);
  // Waits for every task to end and every thread to leave. Idempotent; Run
  // after Join runs nothing.
  void Join();

 private:
  void Work();

  Mutex mu_;
  CondVar work_;
  CondVar gone_;
  std::deque<std::pair<uint64_t, absl::AnyInvocable<void() &&>>> tasks_ ABSL_GUARDED_BY(mu_);
  uint64_t next_task_ ABSL_GUARDED_BY(mu_) = 0;
  int idle_ ABSL_GUARDED_BY(mu_) = 0;
  int live_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace ipcrpc::internal

#endif  // IPCRPC_RPC_HANDLER_SCHEDULER_H_
