// How late does a call that times out return? Against a server process whose
// handler never answers, over each transport:
//   sync:  calls one after another, deadlines spread over 1..10 ms
//   async: 1000 calls in flight at once, deadlines spread over 1..100 ms
// Lateness = when the caller got DEADLINE_EXCEEDED - the deadline.
//
//   deadline_accuracy [--transports unix,pipe,fifo,mq,shm] [--sync_calls 200]
//                     [--async_calls 1000] [--load N]
//
// --load N: N other processes spin for the whole run (N = 2 on a 2-CPU
// machine: both CPUs busy).
//
// One line per measurement:
//   deadline <transport> <sync|async> calls=<n> late_p50_us=<x> late_p99_us=<y> late_max_us=<z>
// and after each, the raw primitive in the same run, under the same load: a
// thread that does nothing but wait for the same deadlines on a timerfd:
//   deadline <transport> <sync|async>-raw calls=<n> ...
// and for async also that timer thread while another thread of the process
// issues the 1000 deadlines and writes a message for each into a pipe (the
// floor of a process that is busy issuing calls while their deadlines fall):
//   deadline <transport> async-raw-issuing calls=<n> ...
#include <fcntl.h>
#include <sched.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <signal.h>
#include <sys/wait.h>
#include <mqueue.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <queue>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/notification.h"
#include "ipcrpc/ipcrpc.h"

namespace {

int64_t NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// What the channel's loop thread asks for (base/syscall.cc,
// RequestShortTimeSlice): a 100 us slice, so that the scheduler lets it
// preempt a thread with a longer one when it wakes (Linux 6.6 and later;
// refused elsewhere, and then without effect).
void RequestShortTimeSlice() {
  struct SchedAttr {
    uint32_t size;
    uint32_t sched_policy;
    uint64_t sched_flags;
    int32_t sched_nice;
    uint32_t sched_priority;
    uint64_t sched_runtime;
    uint64_t sched_deadline;
    uint64_t sched_period;
  };
  SchedAttr attr = {};
  attr.size = sizeof(attr);
  attr.sched_policy = SCHED_OTHER;
  attr.sched_runtime = 100'000;
  syscall(SYS_sched_setattr, 0, &attr, 0u);
}

// The handler that never answers (it ignores cancellation; the server is
// killed at the end).
class NeverService : public ipcrpc::Service {
 public:
  NeverService() {
    AddMethod("bench.Never/Call", [this](ipcrpc::ServerContext&, std::string_view, std::string&) {
      forever_.WaitForNotification();
      return absl::OkStatus();
    });
  }

 private:
  absl::Notification forever_;
};

int Serve(const std::string& endpoint, int ready_fd) {
  NeverService service;
  ipcrpc::ServerOptions options;
  options.handler_threads = 4;
  options.max_calls_per_connection = 100000;
  options.max_calls_in_flight = 100000;
  ipcrpc::Server server(options);
  if (!server.RegisterService(&service).ok() || !server.Listen(endpoint).ok() ||
      !server.Start().ok()) {
    return 1;
  }
  if (ready_fd >= 0) {
    ssize_t ignored = write(ready_fd, "R", 1);
    (void)ignored;
    close(ready_fd);
  }
  pause();  // until killed
  return 0;
}

void Report(const std::string& transport, const char* mode, std::vector<int64_t> late_ns) {
  if (late_ns.empty()) {
    std::printf("deadline %s %s calls=0\n", transport.c_str(), mode);
    return;
  }
  std::sort(late_ns.begin(), late_ns.end());
  auto at = [&](double q) {
    return late_ns[std::min(late_ns.size() - 1, static_cast<size_t>(q * late_ns.size()))] / 1000.0;
  };
  std::printf("deadline %s %s calls=%zu late_p50_us=%.1f late_p99_us=%.1f late_max_us=%.1f\n",
              transport.c_str(), mode, late_ns.size(), at(0.50), at(0.99),
              late_ns.back() / 1000.0);
  std::fflush(stdout);
}

// The raw primitive: how late a thread that only waits on a timerfd wakes
// for `timeouts_ns` (relative to now): one after another (`sequential`), or
// all armed at once, the timer set for the earliest not yet passed.
std::vector<int64_t> RawTimerLateness(const std::vector<int64_t>& timeouts_ns, bool sequential) {
  std::vector<int64_t> late;
  const int timer = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
  if (timer < 0) return late;
  auto wait_until = [timer](int64_t when_ns) {
    struct itimerspec at = {};
    at.it_value.tv_sec = when_ns / 1'000'000'000;
    at.it_value.tv_nsec = when_ns % 1'000'000'000;
    timerfd_settime(timer, TFD_TIMER_ABSTIME, &at, nullptr);
    uint64_t expirations;
    ssize_t ignored = read(timer, &expirations, sizeof expirations);
    (void)ignored;
  };
  if (sequential) {
    for (int64_t timeout : timeouts_ns) {
      const int64_t deadline = NowNs() + timeout;
      wait_until(deadline);
      late.push_back(NowNs() - deadline);
    }
  } else {
    const int64_t start = NowNs();
    std::vector<int64_t> deadlines;
    for (int64_t timeout : timeouts_ns) deadlines.push_back(start + timeout);
    std::sort(deadlines.begin(), deadlines.end());
    size_t next = 0;
    while (next < deadlines.size()) {
      wait_until(deadlines[next]);
      const int64_t now = NowNs();
      while (next < deadlines.size() && deadlines[next] <= now) late.push_back(now - deadlines[next++]);
    }
  }
  close(timer);
  return late;
}

// The floor of the async measurement: the same deadlines timed by a bare
// timerfd thread (asking for the short time slice the channel's loop thread
// asks for) while another thread of this process issues the calls, that is
// registers each deadline (re-arming the timer for a new earliest one) and
// writes a 64-byte message into a pipe that a child process reads. No ipcrpc
// in it: what the kernel gives a timer thread in a process that is busy
// issuing, under the same load.
std::vector<int64_t> RawTimerLatenessWhileIssuing(const std::vector<int64_t>& timeouts_ns) {
  std::vector<int64_t> late;
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) return late;
  const pid_t reader = fork();
  if (reader < 0) {
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    return late;
  }
  if (reader == 0) {
    close(pipe_fds[1]);
    char buffer[65536];
    while (read(pipe_fds[0], buffer, sizeof buffer) > 0) {
    }
    _exit(0);
  }
  close(pipe_fds[0]);
  const int timer = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
  std::mutex mu;
  std::priority_queue<int64_t, std::vector<int64_t>, std::greater<>> due;  // guarded by mu
  int64_t armed = INT64_MAX;                                                // guarded by mu
  auto arm = [timer](int64_t when_ns) {
    struct itimerspec at = {};
    at.it_value.tv_sec = when_ns / 1'000'000'000;
    at.it_value.tv_nsec = when_ns % 1'000'000'000;
    timerfd_settime(timer, TFD_TIMER_ABSTIME, &at, nullptr);
  };
  const size_t total = timeouts_ns.size();
  std::thread timer_thread([&] {
    RequestShortTimeSlice();
    while (late.size() < total) {
      uint64_t expirations;
      if (read(timer, &expirations, sizeof expirations) < 0) continue;
      const int64_t now = NowNs();
      std::lock_guard<std::mutex> lock(mu);
      while (!due.empty() && due.top() <= now) {
        late.push_back(now - due.top());
        due.pop();
      }
      armed = due.empty() ? INT64_MAX : due.top();
      if (!due.empty()) arm(armed);
    }
  });
  char message[64] = {};
  for (int64_t timeout : timeouts_ns) {
    const int64_t deadline = NowNs() + timeout;
    {
      std::lock_guard<std::mutex> lock(mu);
      due.push(deadline);
      if (deadline < armed) {
        armed = deadline;
        arm(deadline);
      }
    }
    ssize_t ignored = write(pipe_fds[1], message, sizeof message);
    (void)ignored;
  }
  timer_thread.join();
  close(pipe_fds[1]);
  waitpid(reader, nullptr, 0);
  close(timer);
  return late;
}

int Measure(const std::string& self, const std::string& transport, int sync_calls,
            int async_calls) {
  std::shared_ptr<ipcrpc::Channel> channel;
  pid_t server = -1;
  std::string endpoint;
  if (transport == "pipe") {
    auto spawned = ipcrpc::SpawnChild({self, "--serve=pipe:"});
    if (!spawned.ok()) return 1;
    channel = *spawned;
  } else {
    const std::string name = absl::StrCat("ipcrpc-bench-deadline-", getpid());
    endpoint = (transport == "mq" || transport == "shm") ? absl::StrCat(transport, ":", name)
                                                        : absl::StrCat(transport, ":/tmp/", name);
    int ready[2];
    if (pipe(ready) != 0) return 1;
    server = fork();
    if (server == 0) {
      close(ready[0]);
      const std::string serve = "--serve=" + endpoint;
      const std::string fd = absl::StrCat("--ready_fd=", ready[1]);
      execl(self.c_str(), self.c_str(), serve.c_str(), fd.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    close(ready[1]);
    char byte;
    if (read(ready[0], &byte, 1) != 1) return 1;
    close(ready[0]);
    auto connected = ipcrpc::Channel::Connect(endpoint);
    if (!connected.ok()) {
      std::fprintf(stderr, "%s\n", connected.status().ToString().c_str());
      return 1;
    }
    channel = *connected;
  }
  std::mt19937 rng(42);
  std::vector<int64_t> sync_timeouts, async_timeouts;
  for (int i = 0; i < sync_calls; ++i) sync_timeouts.push_back(1'000'000 + rng() % 9'000'000);
  for (int i = 0; i < async_calls; ++i) async_timeouts.push_back(1'000'000 + rng() % 99'000'000);

  std::vector<int64_t> late;
  for (int i = 0; i < sync_calls; ++i) {
    ipcrpc::CallOptions options;
    const int64_t timeout_ns = sync_timeouts[i];
    // An absolute deadline, read here with this measurement's clock: a
    // relative timeout would start when the call reads the clock, and a
    // preemption between the two reads (likely with --load) would count
    // as lateness that is not the call's.
    const absl::Time wall_now = absl::Now();
    const int64_t deadline = NowNs() + timeout_ns;
    options.deadline = wall_now + absl::Nanoseconds(timeout_ns);
    auto result = channel->CallMethod("bench.Never/Call", "", options);
    const int64_t now = NowNs();
    if (!absl::IsDeadlineExceeded(result.status())) {
      std::fprintf(stderr, "unexpected: %s\n", result.status().ToString().c_str());
      return 1;
    }
    late.push_back(now - deadline);
  }
  Report(transport, "sync", late);
  Report(transport, "sync-raw", RawTimerLateness(sync_timeouts, /*sequential=*/true));

  std::vector<int64_t> async_late(async_calls);
  absl::BlockingCounter done(async_calls);
  std::atomic<int> wrong{0};
  for (int i = 0; i < async_calls; ++i) {
    ipcrpc::CallOptions options;
    const int64_t timeout_ns = async_timeouts[i];
    const absl::Time wall_now = absl::Now();
    const int64_t deadline = NowNs() + timeout_ns;
    options.deadline = wall_now + absl::Nanoseconds(timeout_ns);
    channel->CallMethodAsync("bench.Never/Call", "", options,
                             [&, i, deadline](absl::StatusOr<std::string> result) {
                               async_late[i] = NowNs() - deadline;
                               if (!absl::IsDeadlineExceeded(result.status())) wrong++;
                               done.DecrementCount();
                             });
  }
  done.Wait();
  if (wrong.load() > 0) std::fprintf(stderr, "%d async calls ended otherwise\n", wrong.load());
  Report(transport, "async", async_late);
  Report(transport, "async-raw", RawTimerLateness(async_timeouts, /*sequential=*/false));
  Report(transport, "async-raw-issuing", RawTimerLatenessWhileIssuing(async_timeouts));

  channel.reset();
  if (server > 0) {
    kill(server, SIGKILL);
    waitpid(server, nullptr, 0);
    if (transport == "unix" || transport == "fifo") unlink(endpoint.substr(endpoint.find(':') + 1).c_str());
    if (transport == "mq") mq_unlink(("/" + endpoint.substr(3)).c_str());
  }
  return wrong.load() > 0 ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string serve;
  int ready_fd = -1;
  std::string transports = "unix,pipe,fifo,mq,shm";
  int sync_calls = 200;
  int async_calls = 1000;
  int load = 0;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&](const char* name) -> const char* {
      const std::string prefix = std::string("--") + name + "=";
      if (arg.rfind(prefix, 0) == 0) return argv[i] + prefix.size();
      if (arg == std::string("--") + name && i + 1 < argc) return argv[++i];
      return nullptr;
    };
    if (const char* v1 = value("serve")) {
      serve = v1;
    } else if (const char* v2 = value("ready_fd")) {
      ready_fd = std::atoi(v2);
    } else if (const char* v3 = value("transports")) {
      transports = v3;
    } else if (const char* v4 = value("sync_calls")) {
      sync_calls = std::atoi(v4);
    } else if (const char* v5 = value("async_calls")) {
      async_calls = std::atoi(v5);
    } else if (const char* v6 = value("load")) {
      load = std::atoi(v6);
    }
  }
  if (!serve.empty()) return Serve(serve, ready_fd);
  std::printf("# deadline accuracy; %ld CPUs online; client and server placed by the scheduler; "
              "load: %d other processes spinning\n",
              sysconf(_SC_NPROCESSORS_ONLN), load);
  // --load=N: N processes that only spin, at the same priority, for the
  // whole run (N = the CPUs: every CPU busy with another process).
  std::vector<pid_t> spinners;
  for (int i = 0; i < load; ++i) {
    const pid_t pid = fork();
    if (pid == 0) {
      volatile uint64_t n = 0;
      for (;;) n = n + 1;
    }
    if (pid > 0) spinners.push_back(pid);
  }
  int rc = 0;
  for (const std::string& transport : std::vector<std::string>(absl::StrSplit(transports, ','))) {
    rc |= Measure("/proc/self/exe", transport, sync_calls, async_calls);
  }
  for (pid_t pid : spinners) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
  return rc;
}
