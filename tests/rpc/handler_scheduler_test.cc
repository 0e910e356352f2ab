// The server's handler threads (HandlerScheduler: its queue's order, its
// count of queued calls, Join and the destructor, its bound on threads) and
// the stream handlers' threads (StreamThreads).
//
// Order is tested on one thread held by a first task blocked on a gate:
// everything posted meanwhile waits in the queue, and runs in the queue's
// order once the gate opens. No sleeps: the timeouts below only keep a
// failing test from hanging.
#include "rpc/handler_scheduler.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "base/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ipcrpc::internal {
namespace {

using ::testing::ElementsAre;

constexpr int64_t kNoDeadline = INT64_MAX;
constexpr int kControl = HandlerScheduler::kControlPriority;
// Only against hanging: nothing here waits this long when it works.
const absl::Duration kGuard = absl::Seconds(60);

// What ran, in order (tasks run on the scheduler's threads).
class Recorder {
 public:
  void Add(std::string what) {
    MutexLock lock(&mu_);
    ran_.push_back(std::move(what));
  }
  std::vector<std::string> ran() {
    MutexLock lock(&mu_);
    return ran_;
  }

 private:
  Mutex mu_;
  std::vector<std::string> ran_;
};

// Holds a scheduler's only thread: posts a task that waits for Open(), and
// returns once that task runs (so it is no longer in the queue). The task
// shares what it waits on, so the gate may go before the scheduler joins.
class Gate {
 public:
  explicit Gate(HandlerScheduler& scheduler) : state_(std::make_shared<State>()) {
    scheduler.Post(0, kNoDeadline, [state = state_] {
      state->started.Notify();
      EXPECT_TRUE(state->open.WaitForNotificationWithTimeout(kGuard)) << "the gate never opened";
    });
    EXPECT_TRUE(state_->started.WaitForNotificationWithTimeout(kGuard))
        << "the gate task never ran";
  }
  void Open() { state_->open.Notify(); }

 private:
  struct State {
    Notification started;
    Notification open;
  };
  std::shared_ptr<State> state_;
};

// Posts `tasks` behind a gate on one thread, opens the gate and returns the
// order they ran in.
struct Queued {
  std::string name;
  int priority;
  int64_t deadline_ns;
};
std::vector<std::string> RunOrder(const std::vector<Queued>& tasks) {
  Recorder recorder;
  HandlerScheduler scheduler(1);
  Gate gate(scheduler);
  for (const Queued& task : tasks) {
    scheduler.Post(task.priority, task.deadline_ns,
                   [&recorder, name = task.name] { recorder.Add(name); });
  }
  gate.Open();
  scheduler.Join();
  return recorder.ran();
}

// ---- HandlerScheduler: the queue's order.

TEST(HandlerSchedulerTest, HigherPriorityFirst) {
  EXPECT_THAT(RunOrder({{"p0", 0, kNoDeadline},
                        {"p7", 7, kNoDeadline},
                        {"p31", 31, kNoDeadline},
                        {"p3", 3, kNoDeadline}}),
              ElementsAre("p31", "p7", "p3", "p0"));
}

TEST(HandlerSchedulerTest, EarlierDeadlineFirstWithinAPriority) {
  EXPECT_THAT(RunOrder({{"none", 4, kNoDeadline},
                        {"d300", 4, 300},
                        {"d100", 4, 100},
                        {"d200", 4, 200},
                        {"d0", 4, 0}}),
              ElementsAre("d0", "d100", "d200", "d300", "none"));
}

TEST(HandlerSchedulerTest, ArrivalOrderWithinAPriorityAndDeadline) {
  std::vector<Queued> tasks;
  std::vector<std::string> expected;
  for (int i = 0; i < 20; ++i) {
    tasks.push_back({std::to_string(i), 2, 500});
    expected.push_back(std::to_string(i));
  }
  EXPECT_EQ(RunOrder(tasks), expected);
}

TEST(HandlerSchedulerTest, PriorityThenDeadlineThenArrival) {
  EXPECT_THAT(RunOrder({{"a", 1, 100},
                        {"b", 5, kNoDeadline},
                        {"c", 1, 50},
                        {"d", 5, kNoDeadline},
                        {"e", 1, 100},
                        {"f", 0, 0},
                        {"g", 5, 10}}),
              // Priority 5 (g has a deadline, then b and d as they came),
              // priority 1 (c's deadline, then a and e as they came), 0.
              ElementsAre("g", "b", "d", "c", "a", "e", "f"));
}

TEST(HandlerSchedulerTest, ControlWorkBeforeAnyCall) {
  EXPECT_THAT(RunOrder({{"call31", 31, 0},
                        {"call0", 0, 0},
                        {"control1", kControl, kNoDeadline},
                        {"call31_late", 31, 0},
                        {"control2", kControl, kNoDeadline}}),
              // Control work, whatever its deadline, then calls; among
              // control tasks too, the order is arrival (same deadline).
              ElementsAre("control1", "control2", "call31", "call31_late", "call0"));
}

TEST(HandlerSchedulerTest, ControlTasksAmongThemselvesByDeadlineThenArrival) {
  EXPECT_THAT(RunOrder({{"k_none", kControl, kNoDeadline},
                        {"k0_first", kControl, 0},
                        {"k0_second", kControl, 0},
                        {"call", 31, 0}}),
              ElementsAre("k0_first", "k0_second", "k_none", "call"));
}

// ---- HandlerScheduler: queued_calls.

TEST(HandlerSchedulerTest, QueuedCallsCountsCallsNotControlTasks) {
  HandlerScheduler scheduler(1);
  EXPECT_EQ(scheduler.queued_calls(), 0);
  Gate gate(scheduler);
  // The gate (a call) was taken by the thread: no longer queued.
  EXPECT_EQ(scheduler.queued_calls(), 0);

  // Each task records the count when it starts: its own call is no longer
  // counted then (a thread took it), the calls behind it still are.
  Recorder recorder;
  auto post = [&](const std::string& name, int priority, int64_t deadline_ns) {
    scheduler.Post(priority, deadline_ns, [&recorder, &scheduler, name] {
      recorder.Add(name + "=" + std::to_string(scheduler.queued_calls()));
    });
  };
  post("call0", 0, kNoDeadline);
  EXPECT_EQ(scheduler.queued_calls(), 1);
  post("control1", kControl, 0);
  EXPECT_EQ(scheduler.queued_calls(), 1);
  post("call31", 31, kNoDeadline);
  EXPECT_EQ(scheduler.queued_calls(), 2);
  post("control2", kControl, 0);
  EXPECT_EQ(scheduler.queued_calls(), 2);
  post("call5", 5, 1);
  EXPECT_EQ(scheduler.queued_calls(), 3);

  gate.Open();
  scheduler.Join();
  EXPECT_THAT(recorder.ran(),
              ElementsAre("control1=3", "control2=3", "call31=2", "call5=1", "call0=0"));
  EXPECT_EQ(scheduler.queued_calls(), 0);
}

// ---- HandlerScheduler: Join and the destructor.

TEST(HandlerSchedulerTest, JoinRunsEveryQueuedTask) {
  constexpr int kTasks = 50;
  HandlerScheduler scheduler(1);
  Gate gate(scheduler);
  std::atomic<int> ran{0};
  for (int i = 0; i < kTasks; ++i) {
    scheduler.Post(i % 3 == 0 ? kControl : i % 32, i, [&ran] { ran.fetch_add(1); });
  }
  EXPECT_EQ(ran.load(), 0);
  // Join from another thread while the tasks wait behind the gate.
  std::thread joiner([&] { scheduler.Join(); });
  gate.Open();
  joiner.join();
  EXPECT_EQ(ran.load(), kTasks);
  EXPECT_EQ(scheduler.queued_calls(), 0);
}

TEST(HandlerSchedulerTest, JoinIsIdempotent) {
  HandlerScheduler scheduler(2);
  std::atomic<int> ran{0};
  for (int i = 0; i < 10; ++i) scheduler.Post(0, kNoDeadline, [&ran] { ran.fetch_add(1); });
  scheduler.Join();
  EXPECT_EQ(ran.load(), 10);
  scheduler.Join();
  scheduler.Join();
  EXPECT_EQ(ran.load(), 10);
  // And the destructor joins a third time.
}

TEST(HandlerSchedulerTest, JoinWithoutAnyTask) {
  HandlerScheduler scheduler(3);
  scheduler.Join();
}

TEST(HandlerSchedulerTest, TasksPostedByRunningTasksRunBeforeJoinReturns) {
  // Join does not stop Post: a running task may still queue work (a
  // handler that answers), and the thread runs it before it leaves.
  HandlerScheduler scheduler(1);
  Gate gate(scheduler);
  Recorder recorder;
  scheduler.Post(0, kNoDeadline, [&] {
    recorder.Add("first");
    scheduler.Post(kControl, 0, [&] {
      recorder.Add("second");
      scheduler.Post(0, kNoDeadline, [&] { recorder.Add("third"); });
    });
  });
  std::thread joiner([&] { scheduler.Join(); });
  gate.Open();
  joiner.join();
  EXPECT_THAT(recorder.ran(), ElementsAre("first", "second", "third"));
}

TEST(HandlerSchedulerTest, DestructorRunsWhatIsQueued) {
  constexpr int kTasks = 100;
  std::atomic<int> ran{0};
  {
    HandlerScheduler scheduler(1);
    Gate gate(scheduler);
    for (int i = 0; i < kTasks; ++i) {
      scheduler.Post(i % 32, kNoDeadline, [&ran] { ran.fetch_add(1); });
    }
    EXPECT_EQ(ran.load(), 0);
    gate.Open();
    // Most of the tasks are likely still queued when the destructor begins;
    // either way, every one has run when it returns.
  }
  EXPECT_EQ(ran.load(), kTasks);
}

TEST(HandlerSchedulerTest, DestructorDestroysEveryTask) {
  // What a task holds goes with it once it ran.
  auto held = std::make_shared<int>(0);
  std::weak_ptr<int> watch = held;
  {
    HandlerScheduler scheduler(2);
    for (int i = 0; i < 10; ++i) scheduler.Post(0, kNoDeadline, [held] { (void)*held; });
    held.reset();
  }
  EXPECT_TRUE(watch.expired());
}

// ---- HandlerScheduler: at most N threads at once, and N used.

class HandlerSchedulerThreadsTest : public ::testing::TestWithParam<int> {};

TEST_P(HandlerSchedulerThreadsTest, RunsTasksOnAtMostNThreadsAtOnce) {
  const int threads = GetParam();
  constexpr int kRounds = 10;
  // Tasks meet in rounds of `threads`: each waits (its thread held) until
  // its round is complete, so `threads` tasks must run at once for the test
  // to finish, and `running` shows no more ever do.
  struct Shared {
    Mutex mu;
    int arrived = 0;
    int running = 0;
    int max_running = 0;
    bool timed_out = false;
    std::set<std::thread::id> thread_ids;
  } shared;
  {
    HandlerScheduler scheduler(threads);
    for (int i = 0; i < threads * kRounds; ++i) {
      scheduler.Post(i % 32, kNoDeadline, [&shared, threads] {
        MutexLock lock(&shared.mu);
        const int round = shared.arrived++ / threads;
        shared.thread_ids.insert(std::this_thread::get_id());
        ++shared.running;
        shared.max_running = std::max(shared.max_running, shared.running);
        const int want = threads * (round + 1);
        Shared* s = &shared;
        if (!shared.mu.AwaitWithTimeout(Condition([s, want] { return s->arrived >= want; }),
                                        kGuard)) {
          shared.timed_out = true;
        }
        --shared.running;
      });
    }
    scheduler.Join();
  }
  MutexLock lock(&shared.mu);
  EXPECT_FALSE(shared.timed_out) << "fewer than " << threads << " tasks ran at once";
  EXPECT_EQ(shared.arrived, threads * kRounds);
  EXPECT_EQ(shared.max_running, threads);
  EXPECT_EQ(static_cast<int>(shared.thread_ids.size()), threads);
  EXPECT_EQ(shared.running, 0);
}

INSTANTIATE_TEST_SUITE_P(Threads, HandlerSchedulerThreadsTest, ::testing::Values(1, 2, 3),
                         [](const ::testing::TestParamInfo<int>& threads_info) {
                           return std::to_string(threads_info.param);
                         });

// ---- StreamThreads.

TEST(StreamThreadsTest, RunsEachTaskAtOnceOnItsOwnThread) {
  constexpr int kTasks = 5;
  // Each task waits until all have started: they all run at once, none
  // waits for a thread another one holds.
  struct Shared {
    Mutex mu;
    int started = 0;
    int ended = 0;
    int timed_out = 0;
    std::set<std::thread::id> thread_ids;
  } shared;
  StreamThreads threads;
  for (int i = 0; i < kTasks; ++i) {
    EXPECT_TRUE(threads.Run([&shared] {
      MutexLock lock(&shared.mu);
      ++shared.started;
      shared.thread_ids.insert(std::this_thread::get_id());
      Shared* s = &shared;
      if (!shared.mu.AwaitWithTimeout(Condition([s] { return s->started == kTasks; }), kGuard)) {
        ++shared.timed_out;
      }
      ++shared.ended;
    }));
  }
  threads.Join();
  MutexLock lock(&shared.mu);
  EXPECT_EQ(shared.timed_out, 0) << "the tasks did not all run at once";
  EXPECT_EQ(shared.started, kTasks);
  EXPECT_EQ(shared.ended, kTasks);
  EXPECT_EQ(static_cast<int>(shared.thread_ids.size()), kTasks);
  EXPECT_EQ(shared.thread_ids.count(std::this_thread::get_id()), 0u);
}

TEST(StreamThreadsTest, RunsTasksWhileOthersBlock) {
  // One task blocks until the last of the others has run; the others run
  // meanwhile, one after the other (on a thread left idle, or a new one).
  constexpr int kOthers = 10;
  StreamThreads threads;
  Notification release;
  Notification blocker_done;
  EXPECT_TRUE(threads.Run([&] {
    EXPECT_TRUE(release.WaitForNotificationWithTimeout(kGuard));
    blocker_done.Notify();
  }));
  for (int i = 0; i < kOthers; ++i) {
    auto done = std::make_shared<Notification>();
    EXPECT_TRUE(threads.Run([done] { done->Notify(); }));
    EXPECT_TRUE(done->WaitForNotificationWithTimeout(kGuard)) << "task " << i << " did not run";
  }
  EXPECT_FALSE(blocker_done.HasBeenNotified());
  release.Notify();
  threads.Join();
  EXPECT_TRUE(blocker_done.HasBeenNotified());
}

TEST(StreamThreadsTest, RunAfterJoinReturnsFalseAndRunsNothing) {
  StreamThreads threads;
  // A task first, so that an idle thread could be there to take the next.
  Notification first_done;
  EXPECT_TRUE(threads.Run([&] { first_done.Notify(); }));
  EXPECT_TRUE(first_done.WaitForNotificationWithTimeout(kGuard));
  threads.Join();

  std::atomic<bool> ran{false};
  auto held = std::make_shared<int>(0);
  std::weak_ptr<int> watch = held;
  EXPECT_FALSE(threads.Run([&ran, held = std::move(held)] {
    (void)*held;
    ran = true;
  }));
  // Dropped, not kept for later.
  EXPECT_TRUE(watch.expired());
  threads.Join();
  EXPECT_FALSE(ran.load());
}

TEST(StreamThreadsTest, RunAfterJoinWithoutAnyTaskBefore) {
  StreamThreads threads;
  threads.Join();
  std::atomic<bool> ran{false};
  EXPECT_FALSE(threads.Run([&ran] { ran = true; }));
  EXPECT_FALSE(ran.load());
}

TEST(StreamThreadsTest, JoinWaitsForRunningTasks) {
  // The task runs until it sees Join has begun (Run refuses), so Join has
  // to wait for it: when Join returns, the task has ended.
  StreamThreads threads;
  Notification started;
  std::atomic<bool> ended{false};
  std::atomic<int> probes{0};
  EXPECT_TRUE(threads.Run([&] {
    started.Notify();
    for (;;) {
      // A probe that ends at once; waited for, so that probes do not pile up.
      auto probe_done = std::make_shared<Notification>();
      if (!threads.Run([probe_done] { probe_done->Notify(); })) break;
      probes.fetch_add(1);
      EXPECT_TRUE(probe_done->WaitForNotificationWithTimeout(kGuard));
    }
    ended = true;
  }));
  ASSERT_TRUE(started.WaitForNotificationWithTimeout(kGuard));
  threads.Join();
  EXPECT_TRUE(ended.load());
  RecordProperty("probes", probes.load());
}

TEST(StreamThreadsTest, JoinWaitsForABlockedTask) {
  // Join from another thread while a task blocks; Join returns only after
  // the task has ended.
  StreamThreads threads;
  Notification started;
  Notification release;
  std::atomic<bool> ended{false};
  EXPECT_TRUE(threads.Run([&] {
    started.Notify();
    EXPECT_TRUE(release.WaitForNotificationWithTimeout(kGuard));
    ended = true;
  }));
  ASSERT_TRUE(started.WaitForNotificationWithTimeout(kGuard));
  std::atomic<bool> ended_when_join_returned{false};
  std::thread joiner([&] {
    threads.Join();
    ended_when_join_returned = ended.load();
  });
  release.Notify();
  joiner.join();
  EXPECT_TRUE(ended_when_join_returned.load());
}

TEST(StreamThreadsTest, JoinIsIdempotent) {
  StreamThreads threads;
  std::atomic<int> ran{0};
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(threads.Run([&ran] { ran.fetch_add(1); }));
  threads.Join();
  EXPECT_EQ(ran.load(), 3);
  threads.Join();
  EXPECT_EQ(ran.load(), 3);
  // And the destructor joins again.
}

}  // namespace
}  // namespace ipcrpc::internal
