// ipcrpc_bench: unary calls over each transport, beside the raw ping-pong of
// the same primitive in the same run, with both processes placed the same
// way.
//
//   ipcrpc_bench [--transports shm,mq,fifo,pipe,unix] [--sizes 64,1024,4096,65536]
//                [--seconds S | --calls N] [--pin same|split|none] [--concurrency N]
//                [--mq_client_queue]  # also raw mq with an ipcrpc client's reply queue
//                [--poll_floor]       # also raw with a poll(2) before each read
//                [--uring_floor]      # also raw pipe/fifo/unix waiting through io_uring
//                [--uring_plain_ring] # its rings without SINGLE_ISSUER|DEFER_TASKRUN
//
// One line per measurement:
//   rpc <transport> <size> p50_us=<x> p99_us=<y> calls_per_s=<z> MBps=<w>
//   raw <transport> <size> p50_us=<x> p99_us=<y> calls_per_s=<z> MBps=<w>
//   rpc_async <transport> <size> calls_per_s=<z>          (with --concurrency N)
// MBps counts the payload of one direction (size x round trips per second).
// Each rpc and raw line ends with the system calls per round trip in the
// measured loop, client and server side, counted in-process by the kernel
// (bench/syscall_counter.h): syscalls=<client+server> client=<c> server=<s>,
// or syscalls=n/a where perf events are refused. --calls N runs exactly N
// round trips instead of --seconds (the CI budget check: bench_syscall_budget).
// Process start-up is never inside a measured interval.
#include <fcntl.h>
#include <mqueue.h>
#include <sched.h>
#include <signal.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "echo.ipcrpc.h"
#include "raw_uring.h"
#include "syscall_counter.h"

namespace {

int64_t NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

void Pin(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  sched_setaffinity(0, sizeof(set), &set);
}

struct Placement {
  int client_cpu = -1;
  int server_cpu = -1;
};

struct Result {
  std::vector<int64_t> latencies_ns;
  double seconds = 0;
  // System calls in the measured loop; -1: not counted.
  int64_t client_syscalls = -1;
  int64_t server_syscalls = -1;
};

// Exactly this many round trips per measurement when > 0 (else --seconds).
int64_t fixed_calls = 0;

// Who to count: the client (this process) and the server process(es).
struct Counted {
  std::vector<pid_t> server_pids;
};

void Print(const char* kind, const std::string& transport, size_t size, Result result) {
  auto& v = result.latencies_ns;
  std::sort(v.begin(), v.end());
  auto at = [&](double q) {
    return v.empty() ? 0.0 : v[std::min(v.size() - 1, static_cast<size_t>(q * v.size()))] / 1000.0;
  };
  const double per_s = v.size() / result.seconds;
  std::string syscalls = " syscalls=n/a";
  if (result.client_syscalls >= 0 && result.server_syscalls >= 0 && !v.empty()) {
    const double n = static_cast<double>(v.size());
    syscalls = absl::StrFormat(" syscalls=%.2f client=%.2f server=%.2f",
                               (result.client_syscalls + result.server_syscalls) / n,
                               result.client_syscalls / n, result.server_syscalls / n);
  }
  std::printf("%s %s %zu p50_us=%.2f p99_us=%.2f calls_per_s=%.0f MBps=%.1f%s\n", kind,
              transport.c_str(), size, at(0.5), at(0.99), per_s, per_s * size / 1e6,
              syscalls.c_str());
  std::fflush(stdout);
}

// Runs `once` repeatedly for `seconds` (or fixed_calls times), after a short
// warm-up, timing each, and counts the system calls of the client and of
// `counted`'s servers over the measured calls.
template <typename F>
Result Loop(double seconds, const Counted& counted, F&& once) {
  for (int i = 0; i < 200; ++i) {
    if (!once()) return {};
  }
  Result result;
  result.latencies_ns.reserve(fixed_calls > 0 ? fixed_calls : 1 << 20);
  // Opened after the warm-up, when every thread exists (later ones are
  // inherited); the two reads around the loop are its only system calls.
  bench::SyscallCounter client, server;
  bool counting = client.Add(getpid());
  for (pid_t pid : counted.server_pids) counting = counting && server.Add(pid);
  // A server none of whose threads could be counted is not a server that
  // made no system calls.
  counting = counting && server.fds() > 0;
  static bool reported = false;
  if (!counting && !reported) {
    reported = true;
    std::fprintf(stderr, "ipcrpc_bench: not counting system calls: %s\n",
                 (client.error().empty() ? server.error() : client.error()).c_str());
  }
  const uint64_t client_before = client.Read();
  const uint64_t server_before = server.Read();
  const int64_t start = NowNs();
  const int64_t end = start + static_cast<int64_t>(seconds * 1e9);
  int64_t now = start;
  while (fixed_calls > 0 ? static_cast<int64_t>(result.latencies_ns.size()) < fixed_calls
                         : now < end) {
    if (!once()) break;
    const int64_t after = NowNs();
    result.latencies_ns.push_back(after - now);
    now = after;
  }
  if (counting) {
    const uint64_t server_after = server.Read();
    const uint64_t client_after = client.Read();
    // The client's count includes the reads of the counters themselves
    // between the two snapshots (at most one per counter each time): not
    // calls.
    result.client_syscalls =
        static_cast<int64_t>(client_after - client_before) -
        static_cast<int64_t>(2 * server.fds() + client.fds());
    result.server_syscalls = static_cast<int64_t>(server_after - server_before);
    if (result.client_syscalls < 0) result.client_syscalls = 0;
  }
  result.seconds = (now - start) / 1e9;
  return result;
}

// ------------------------------------------------------------------ rpc

class EchoImpl final : public bench::Echo::Service {
  absl::Status Echo(ipcrpc::ServerContext&, const bench::Payload& request,
                    bench::Payload& reply) override {
    reply.set_data(request.data());
    return absl::OkStatus();
  }
};

int Serve(const std::string& endpoint, int cpu, int ready_fd) {
  Pin(cpu);
  // SIGTERM shuts the server down cleanly (its named objects go with it).
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  EchoImpl echo;
  ipcrpc::ServerOptions options;
  options.max_calls_per_connection = 1 << 20;
  options.max_calls_in_flight = 1 << 20;
  // For instruction counts under valgrind, where a handler runs 50x slower
  // and would be sent to a handler thread some of the time (bench/README.md).
  if (const char* limit = std::getenv("IPCRPC_BENCH_INLINE_LIMIT_US")) {
    options.inline_handler_limit = absl::Microseconds(std::atoi(limit));
  }
  ipcrpc::Server server(options);
  if (!server.RegisterService(&echo).ok() || !server.Listen(endpoint).ok() ||
      !server.Start().ok()) {
    return 1;
  }
  if (ready_fd >= 0) {
    ssize_t ignored = write(ready_fd, "R", 1);
    (void)ignored;
    close(ready_fd);
  }
  std::thread signal_thread([&server, signals] {
    int signal_number = 0;
    sigwait(&signals, &signal_number);
    server.Shutdown(absl::ZeroDuration());
  });
  server.Wait();
  pthread_kill(signal_thread.native_handle(), SIGTERM);
  signal_thread.join();
  return 0;
}

std::string EndpointFor(const std::string& transport) {
  const std::string name = absl::StrCat("ipcrpc-bench-", getpid(), "-", transport);
  if (transport == "pipe") return "pipe:";
  if (transport == "shm" || transport == "mq") return absl::StrCat(transport, ":", name);
  return absl::StrCat(transport, ":/tmp/", name);
}

// --mq_reply_queue MxS: the channel's mq reply queue (0: the default).
int mq_reply_messages = 0;
size_t mq_reply_size = 0;

// Starts the server process (pinned) and returns a channel to it.
std::shared_ptr<ipcrpc::Channel> StartServer(const std::string& self, const std::string& transport,
                                             const Placement& placement, pid_t* pid) {
  const std::string endpoint = EndpointFor(transport);
  const std::string cpu = absl::StrCat("--cpu=", placement.server_cpu);
  *pid = -1;
  if (transport == "pipe") {
    auto channel = ipcrpc::SpawnChild({self, "--serve=pipe:", cpu});
    return channel.ok() ? *channel : nullptr;
  }
  int ready[2];
  if (pipe(ready) != 0) return nullptr;
  *pid = fork();
  if (*pid == 0) {
    close(ready[0]);
    const std::string serve = "--serve=" + endpoint;
    const std::string fd = absl::StrCat("--ready_fd=", ready[1]);
    execl(self.c_str(), self.c_str(), serve.c_str(), cpu.c_str(), fd.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  close(ready[1]);
  char byte;
  const bool ok = read(ready[0], &byte, 1) == 1;
  close(ready[0]);
  if (!ok) return nullptr;
  ipcrpc::ChannelOptions channel_options;
  if (mq_reply_messages > 0) {
    channel_options.mq_reply_queue_messages = mq_reply_messages;
    channel_options.mq_reply_message_size = mq_reply_size;
  }
  auto channel = ipcrpc::Channel::Connect(endpoint, channel_options);
  if (!channel.ok()) {
    std::fprintf(stderr, "%s: %s\n", transport.c_str(), channel.status().ToString().c_str());
    return nullptr;
  }
  return *channel;
}

void StopServer(pid_t pid) {
  if (pid <= 0) return;
  kill(pid, SIGTERM);
  waitpid(pid, nullptr, 0);
}

void BenchRpc(const std::string& self, const std::string& transport, size_t size,
              double seconds, const Placement& placement, int concurrency) {
  pid_t pid;
  auto channel = StartServer(self, transport, placement, &pid);
  if (channel == nullptr) {
    std::fprintf(stderr, "rpc %s: cannot start the server\n", transport.c_str());
    StopServer(pid);
    return;
  }
  bench::Echo::Stub stub(channel);
  bench::Payload request;
  request.set_data(std::string(size, 'x'));
  Counted counted;
  if (pid > 0) {
    counted.server_pids.push_back(pid);
  } else {
    counted.server_pids = bench::ChildrenOf(getpid());  // SpawnChild's child
  }
  Print("rpc", transport, size, Loop(seconds, counted, [&] {
          auto reply = stub.Echo(request);
          return reply.ok() && reply->data().size() == size;
        }));
  if (concurrency > 0) {
    // N callers, each with one call in flight at a time.
    std::atomic<int64_t> done{0};
    std::atomic<bool> stop{false};
    absl::Mutex mu;
    int in_flight = 0;
    std::function<void()> issue = [&] {
      stub.EchoAsync(request, {}, [&](absl::StatusOr<bench::Payload> reply) {
        if (reply.ok()) done.fetch_add(1, std::memory_order_relaxed);
        if (!stop.load()) {
          issue();
        } else {
          absl::MutexLock lock(&mu);
          --in_flight;
        }
      });
    };
    {
      absl::MutexLock lock(&mu);
      in_flight = concurrency;
    }
    const int64_t start = NowNs();
    for (int i = 0; i < concurrency; ++i) issue();
    struct timespec pause = {static_cast<time_t>(seconds), static_cast<long>((seconds - static_cast<int64_t>(seconds)) * 1e9)};
    nanosleep(&pause, nullptr);
    const int64_t calls = done.load();
    const int64_t elapsed = NowNs() - start;
    stop.store(true);
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(+[](int* n) { return *n == 0; }, &in_flight));
    std::printf("rpc_async %s %zu calls_per_s=%.0f\n", transport.c_str(), size,
                calls / (elapsed / 1e9));
    std::fflush(stdout);
  }
  channel.reset();
  StopServer(pid);
  if (transport == "mq") mq_unlink(("/" + EndpointFor(transport).substr(3)).c_str());
}

// ------------------------------------------------------------------ raw

// Runs `child` in a forked, pinned process; returns its pid.
template <typename F>
pid_t Fork(int cpu, F&& child) {
  pid_t pid = fork();
  if (pid == 0) {
    Pin(cpu);
    _exit(child());
  }
  return pid;
}

// --poll_floor: every read is preceded by a poll(2) on the descriptor, as
// any reader that must also wake for a deadline or a cancellation does.
bool poll_first = false;
// The raw mq ping-pong with an ipcrpc client's reply-queue geometry.
bool mq_client_queue = false;
// --vmsplice: the raw pipe and FIFO ping-pongs write with vmsplice(2), which
// lends the writer's pages to the pipe instead of copying them into it (the
// reader's read copies them once). Safe here only because each side reuses
// its buffer after its peer has read it all (the answer has come back).
bool use_vmsplice = false;
// --uring_floor: the raw pipe, FIFO and socket ping-pongs with each side's
// write and next read submitted and waited for in one io_uring_enter, the
// client's read linked to a timeout (bench/raw_uring.h): a reader that can
// wake for a deadline, at one system call a side.
bool use_uring = false;
// --uring_plain_ring: those rings without SINGLE_ISSUER | DEFER_TASKRUN.
bool uring_plain_ring = false;
// The raw pipe and FIFO ping-pongs' pipes are as large as ipcrpc makes its
// own for a message of that size (transports/stream_connection.cc,
// FitPipeLocked: room for the whole message, up to 256 KiB; the kernel's
// 64 KiB for smaller ones), or --raw_pipe_size bytes if given.
int raw_pipe_size = 0;
int RawPipeSize(size_t message) {
  if (raw_pipe_size > 0) return raw_pipe_size;
  return static_cast<int>(std::min<size_t>(std::bit_ceil(std::max<size_t>(message, 64 * 1024)),
                                           256 * 1024));
}

void WaitReadable(int fd) {
  if (!poll_first) return;
  struct pollfd pfd = {fd, POLLIN, 0};
  while (poll(&pfd, 1, -1) < 0 && errno == EINTR) {
  }
}

// The raw ping-pongs' buffers start 128 bytes into a page, as ipcrpc's own
// do (base/copy.h, KernelBuffer): a buffer 1-63 bytes into a page (where
// glibc puts every block it maps) makes the kernel's copy out of a pipe or
// socket 3-4x slower on AMD CPUs, and mq's copies for some other offsets;
// the raw figure is the primitive at its best.
class RawBuffer {
 public:
  explicit RawBuffer(size_t size, char fill = 0)
      : block_(static_cast<char*>(std::aligned_alloc(4096, (size + 128 + 4095) / 4096 * 4096))),
        size_(size) {
    if (block_ == nullptr) std::abort();
    std::memset(data(), fill, size_);
  }
  ~RawBuffer() { std::free(block_); }
  RawBuffer(const RawBuffer&) = delete;
  RawBuffer& operator=(const RawBuffer&) = delete;
  char* data() { return block_ + 128; }
  size_t size() const { return size_; }
  char& operator[](size_t i) { return data()[i]; }

 private:
  char* block_;
  size_t size_;
};

bool ReadFull(int fd, char* p, size_t n) {
  while (n > 0) {
    WaitReadable(fd);
    ssize_t r = read(fd, p, n);
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool WriteFull(int fd, const char* p, size_t n) {
  while (n > 0) {
    struct iovec lent = {const_cast<char*>(p), n};
    ssize_t w = use_vmsplice ? vmsplice(fd, &lent, 1, 0) : write(fd, p, n);
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// A ping-pong over a pair of byte streams (pipe, FIFO, socket).
Result StreamPingPong(int to_server, int from_server, size_t size, double seconds,
                      const Counted& counted) {
  RawBuffer buffer(size, 'x');
  return Loop(seconds, counted, [&] {
    return WriteFull(to_server, buffer.data(), size) && ReadFull(from_server, buffer.data(), size);
  });
}

int StreamEcho(int in, int out, size_t size) {
  RawBuffer buffer(size);
  while (ReadFull(in, buffer.data(), size)) {
    if (!WriteFull(out, buffer.data(), size)) break;
  }
  return 0;
}

// The same over io_uring (--uring_floor). The echo's reply goes out before
// its next read starts (linked), so one buffer serves both, as in StreamEcho.
int UringEcho(int in, int out, size_t size) {
  bench::RawUring ring;
  if (!ring.Init(uring_plain_ring)) return 1;
  RawBuffer buffer(size);
  if (!ring.WriteThenRead(out, nullptr, 0, in, buffer.data(), size, 0)) return 0;
  while (ring.WriteThenRead(out, buffer.data(), size, in, buffer.data(), size, 0)) {
  }
  return 0;
}

Result UringPingPong(int to_server, int from_server, size_t size, double seconds,
                     const Counted& counted) {
  bench::RawUring ring;
  if (!ring.Init(uring_plain_ring)) {
    std::fprintf(stderr, "ipcrpc_bench: --uring_floor: %s\n", ring.error().c_str());
    return {};
  }
  static bool said = false;
  if (!said) {
    said = true;
    std::printf("# raw_uring rings: %s\n", ring.flags());
  }
  RawBuffer request(size, 'x'), reply(size);
  // Each call's deadline, 10 s on (it never passes): an absolute time the
  // read's timeout is armed at and cancelled when the answer comes, read off
  // the clock on every call, as a caller with a deadline does. Each request
  // carries its number at both ends, and the answer must bring it back: a
  // read that did not happen, or put its bytes in the wrong place, fails.
  constexpr int64_t kDeadlineNs = 10'000'000'000;
  const size_t tag = std::min<size_t>(size / 2, sizeof(uint64_t));
  uint64_t call = 0;
  Result result = Loop(seconds, counted, [&] {
    ++call;
    std::memcpy(request.data(), &call, tag);
    std::memcpy(request.data() + size - tag, &call, tag);
    std::memset(reply.data(), 0, tag);
    std::memset(reply.data() + size - tag, 0, tag);
    const bool ok =
        ring.WriteThenRead(to_server, request.data(), size, from_server, reply.data(), size,
                           NowNs() + kDeadlineNs) &&
        std::memcmp(reply.data(), request.data(), tag) == 0 &&
        std::memcmp(reply.data() + size - tag, request.data() + size - tag, tag) == 0;
    if (!ok) {
      std::fprintf(stderr, "ipcrpc_bench: --uring_floor: round trip %llu failed\n",
                   static_cast<unsigned long long>(call));
    }
    return ok;
  });
  return result;
}

void BenchRaw(const std::string& transport, size_t size, double seconds,
              const Placement& placement) {
  Result result;
  if (transport == "pipe" || transport == "fifo" || transport == "unix") {
    int a[2], b[2];  // a: client -> server, b: server -> client
    std::string fifo_a, fifo_b;
    if (transport == "pipe") {
      if (pipe(a) != 0 || pipe(b) != 0) return;
    } else if (transport == "unix") {
      int s[2];
      if (socketpair(AF_UNIX, SOCK_STREAM, 0, s) != 0) return;
      a[1] = s[0];
      b[0] = dup(s[0]);
      a[0] = s[1];
      b[1] = dup(s[1]);
    } else {
      fifo_a = absl::StrCat("/tmp/ipcrpc-bench-raw-", getpid(), "-a");
      fifo_b = absl::StrCat("/tmp/ipcrpc-bench-raw-", getpid(), "-b");
      mkfifo(fifo_a.c_str(), 0600);
      mkfifo(fifo_b.c_str(), 0600);
      // Read ends first (non-blocking, so the open does not wait for a
      // writer), then the write ends; then reads block again.
      a[0] = open(fifo_a.c_str(), O_RDONLY | O_NONBLOCK);
      a[1] = open(fifo_a.c_str(), O_WRONLY);
      b[0] = open(fifo_b.c_str(), O_RDONLY | O_NONBLOCK);
      b[1] = open(fifo_b.c_str(), O_WRONLY);
      fcntl(a[0], F_SETFL, 0);
      fcntl(b[0], F_SETFL, 0);
      unlink(fifo_a.c_str());
      unlink(fifo_b.c_str());
    }
    if (transport != "unix" && RawPipeSize(size) > 64 * 1024) {
      fcntl(a[1], F_SETPIPE_SZ, RawPipeSize(size));
      fcntl(b[1], F_SETPIPE_SZ, RawPipeSize(size));
    }
    pid_t pid = Fork(placement.server_cpu, [&] {
      close(a[1]);
      close(b[0]);
      return use_uring ? UringEcho(a[0], b[1], size) : StreamEcho(a[0], b[1], size);
    });
    close(a[0]);
    close(b[1]);
    result = use_uring ? UringPingPong(a[1], b[0], size, seconds, Counted{{pid}})
                       : StreamPingPong(a[1], b[0], size, seconds, Counted{{pid}});
    close(a[1]);
    close(b[0]);
    waitpid(pid, nullptr, 0);
  } else if (transport == "mq") {
    const std::string qa = absl::StrCat("/ipcrpc-bench-raw-", getpid(), "-a");
    const std::string qb = absl::StrCat("/ipcrpc-bench-raw-", getpid(), "-b");
    struct mq_attr attr = {};
    attr.mq_maxmsg = 10;
    attr.mq_msgsize = 8192;
    // The reply queue: 10 x 8 KiB, or with --mq_client_queue the geometry
    // an ipcrpc client's reply queue gets (4 x 1 KiB, so that a hundred
    // clients fit in the default RLIMIT_MSGQUEUE of 800 KiB).
    struct mq_attr reply_attr = attr;
    if (mq_client_queue) {
      reply_attr.mq_maxmsg = 4;
      reply_attr.mq_msgsize = 1024;
    }
    mqd_t a = mq_open(qa.c_str(), O_CREAT | O_RDWR, 0600, &attr);
    mqd_t b = mq_open(qb.c_str(), O_CREAT | O_RDWR, 0600, &reply_attr);
    mq_unlink(qa.c_str());
    mq_unlink(qb.c_str());
    if (a < 0 || b < 0) return;
    // Messages of at most a queue's message size: larger payloads go as
    // several (the echo re-cuts them for the reply queue).
    const size_t chunk = std::min<size_t>(size == 0 ? 1 : size, attr.mq_msgsize);
    const size_t count = std::max<size_t>(1, (size + chunk - 1) / chunk);
    const size_t reply_chunk = std::min<size_t>(size == 0 ? 1 : size, reply_attr.mq_msgsize);
    const size_t reply_count = std::max<size_t>(1, (size + reply_chunk - 1) / reply_chunk);
    pid_t pid = Fork(placement.server_cpu, [&] {
      RawBuffer buffer(8192);
      for (;;) {
        size_t bytes = 0;
        for (size_t i = 0; i < count; ++i) {
          WaitReadable(a);
          ssize_t n = mq_receive(a, buffer.data(), buffer.size(), nullptr);
          if (n < 0) return 0;
          if (n == 1 && buffer[0] == 'Q') return 0;
          bytes += static_cast<size_t>(n);
          // Echo what has come, in reply-sized messages (all of it at the end).
          while (bytes >= reply_chunk || (i + 1 == count && bytes > 0)) {
            const size_t piece = std::min(bytes, reply_chunk);
            if (mq_send(b, buffer.data(), piece, 0) < 0) return 0;
            bytes -= piece;
          }
        }
      }
    });
    RawBuffer buffer(8192, 'x');
    // How many replies the echo has sent once it has read chunk k.
    auto caused = [&](size_t k) {
      return k + 1 == count ? reply_count : std::min(reply_count, (k + 1) * chunk / reply_chunk);
    };
    // The request queue holds `window` chunks. Before sending chunk i, take
    // every reply to chunk i - window: the echo has then read it, so the
    // queue has room and this send cannot block while the echo blocks on a
    // full reply queue (both would wait forever).
    const size_t window = static_cast<size_t>(attr.mq_maxmsg);
    result = Loop(seconds, Counted{{pid}}, [&] {
      size_t received = 0;
      auto receive_one = [&] {
        WaitReadable(b);
        ++received;
        return mq_receive(b, buffer.data(), buffer.size(), nullptr) >= 0;
      };
      for (size_t i = 0; i < count; ++i) {
        while (i >= window && received < caused(i - window)) {
          if (!receive_one()) return false;
        }
        // The last chunk carries what is left (the echo counts bytes).
        const size_t this_chunk = size == 0 ? 1 : std::min(chunk, size - i * chunk);
        if (mq_send(a, buffer.data(), this_chunk, 0) < 0) return false;
      }
      while (received < reply_count) {
        if (!receive_one()) return false;
      }
      return true;
    });
    char quit = 'Q';
    mq_send(a, &quit, 1, 0);
    waitpid(pid, nullptr, 0);
    mq_close(a);
    mq_close(b);
  } else if (transport == "shm") {
    // Spinning shared memory: a sequence number each way and a buffer; a
    // side that has spun a while yields (on one CPU the peer must run).
    struct Shared {
      alignas(64) std::atomic<uint64_t> ping;
      alignas(64) std::atomic<uint64_t> pong;
      alignas(64) char data[1];
    };
    const size_t length = sizeof(Shared) + size;
    void* memory = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    auto* shared = new (memory) Shared{};
    RawBuffer buffer(size, 'x');
    pid_t pid = Fork(placement.server_cpu, [&] {
      RawBuffer local(size);
      for (uint64_t seen = 0;;) {
        uint64_t ping;
        for (int spins = 0; (ping = shared->ping.load(std::memory_order_acquire)) == seen;) {
          if (++spins > 1000) sched_yield();  // on one CPU, let the peer run
        }
        if (ping == UINT64_MAX) return 0;
        std::memcpy(local.data(), shared->data, size);
        std::memcpy(shared->data, local.data(), size);
        seen = ping;
        shared->pong.store(ping, std::memory_order_release);
      }
    });
    uint64_t sequence = 0;
    result = Loop(seconds, Counted{{pid}}, [&] {
      std::memcpy(shared->data, buffer.data(), size);
      shared->ping.store(++sequence, std::memory_order_release);
      for (int spins = 0; shared->pong.load(std::memory_order_acquire) != sequence;) {
        if (++spins > 1000) sched_yield();
      }
      std::memcpy(buffer.data(), shared->data, size);
      return true;
    });
    shared->ping.store(UINT64_MAX, std::memory_order_release);
    waitpid(pid, nullptr, 0);
    munmap(memory, length);
  }
  if (use_uring && result.latencies_ns.empty()) return;  // refused: stderr said why
  Print(poll_first        ? "# raw_poll"
        : use_uring       ? "# raw_uring"
        : mq_client_queue ? "# raw_mq_client_queue"
        : use_vmsplice    ? "# raw_vmsplice"
                          : "raw",
        transport, size, std::move(result));
}

}  // namespace

// How this machine's memcpy copies 64 KiB from one heap buffer to another
// when the destination lies 16 bytes past the source modulo 4 KiB (as two
// large heap blocks allocated one after the other do), against 64 bytes: on
// AMD Zen with glibc 2.36 the first runs with a slow `rep movsb` (base/copy.h).
// Protobuf's own copies (parse, serialize, a handler's set_data) meet it,
// so it is printed with the results. `volatile`: the copy must happen.
void PrintMemcpyFloor() {
  constexpr size_t kSize = 64 << 10;
  std::vector<char> from(kSize + 8192, 'a');
  std::vector<char> to(kSize + 8192, 'b');
  auto at_distance = [&](size_t distance) {
    const uintptr_t src = reinterpret_cast<uintptr_t>(from.data());
    const uintptr_t dst = reinterpret_cast<uintptr_t>(to.data());
    char* target = to.data() + ((src + distance - dst) & 4095);
    void* (*volatile copy)(void*, const void*, size_t) = ::memcpy;
    int64_t best = INT64_MAX;
    for (int round = 0; round < 5; ++round) {
      const int64_t start = NowNs();
      for (int i = 0; i < 20; ++i) copy(target, from.data(), kSize);
      best = std::min(best, (NowNs() - start) / 20);
    }
    return static_cast<double>(best) / 1000.0;
  };
  const double slow = at_distance(16);
  const double usual = at_distance(64);
  std::printf("# memcpy of 64 KiB, destination 16 / 64 bytes past the source modulo 4 KiB: "
              "%.2f / %.2f us%s\n",
              slow, usual,
              slow > 4 * usual ? " (slow rep movsb: protobuf's large copies may meet it; "
                                 "GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=... avoids it)"
                               : "");
}

// The user-space work of one echo through protobuf, in this process with no
// IPC: the stub serializes the request, the server parses it, the handler
// copies the payload into its reply, the server serializes the reply, the
// stub parses it. Four or five copies of the payload that any protobuf RPC
// makes and a raw ping-pong does not. p50 of 200 rounds after 20; -1 if a
// round went wrong.
double ProtobufWorkP50(size_t size) {
  bench::Payload request;
  request.set_data(std::string(size, 'x'));
  std::string request_buffer;
  std::string reply_bytes;
  std::vector<int64_t> ns;
  for (int i = 0; i < 220; ++i) {
    const int64_t start = NowNs();
    std::string_view request_bytes = ipcrpc::SerializeAfterHeadroom(request, &request_buffer);
    bench::Payload received;
    received.ParseFromArray(request_bytes.data(), static_cast<int>(request_bytes.size()));
    bench::Payload reply;
    reply.set_data(received.data());
    reply.SerializeToString(&reply_bytes);
    bench::Payload parsed;
    const bool ok = parsed.ParseFromString(reply_bytes) && parsed.data().size() == size;
    if (i >= 20) ns.push_back(NowNs() - start);
    if (!ok) return -1;
  }
  std::sort(ns.begin(), ns.end());
  return ns[ns.size() / 2] / 1000.0;
}

// This program's path, for the children it starts: the link, read once
// (under valgrind, which answers it with the program it runs, so that a
// child runs under valgrind too, where exec of /proc/self/exe itself would
// start valgrind's tool without its loader); /proc/self/exe, which still
// names this program, when the link is cut short or names a file replaced
// since ("... (deleted)").
std::string SelfPath() {
  char path[4096];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof(path));
  if (n > 0 && static_cast<size_t>(n) < sizeof(path)) {
    std::string real(path, static_cast<size_t>(n));
    if (access(real.c_str(), X_OK) == 0) return real;
  }
  return "/proc/self/exe";
}

// The work above, measured here and in a child of this program whose glibc
// never copies with `rep movsb` below 16 MiB (GLIBC_TUNABLES): a handler's
// copy into a block allocated right after its source meets the slow
// distance here (PrintMemcpyFloor), so the figure here is what this echo
// costs on this machine, and the child's the least any protobuf echo
// costs: with raw, the floor for rpc at large sizes.
void PrintProtobufWork(const std::string& self, size_t size) {
  const double here = ProtobufWorkP50(size);
  double floor = -1;
  const std::string command =
      absl::StrCat("GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=16777216 '", self,
                   "' --protobuf_work ", size);
  if (FILE* child = popen(command.c_str(), "r")) {
    if (std::fscanf(child, "%lf", &floor) != 1) floor = -1;
    pclose(child);
  }
  std::printf("# protobuf %zu p50_us=%.2f (an echo's serialize, parse, copy, serialize, parse, "
              "no IPC: the floor above raw, measured without rep movsb; %.2f with this "
              "process's memcpy)\n",
              size, floor, here);
}

int main(int argc, char** argv) {
  std::string serve;
  int cpu = -1;
  int ready_fd = -1;
  std::string transports = "shm,mq,fifo,pipe,unix";
  std::string sizes = "64,1024,4096,65536";
  double seconds = 1;
  std::string pin = "split";
  int concurrency = 0;
  std::string only;  // "rpc" or "raw" for profiling one side; empty runs both
  bool poll_floor = false;  // also the raw ping-pong with a poll before each read
  bool uring_floor = false;  // also the raw stream ping-pongs over io_uring
  bool mq_client_queue_too = false;  // also raw mq with an ipcrpc client's reply queue
  bool vmsplice_too = false;  // also raw pipe and fifo writing with vmsplice
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::string value;
    auto take = [&](const char* name) {
      const std::string prefix = std::string("--") + name;
      if (arg.rfind(prefix + "=", 0) == 0) {
        value = arg.substr(prefix.size() + 1);
        return true;
      }
      if (arg == prefix && i + 1 < argc) {
        value = argv[++i];
        return true;
      }
      return false;
    };
    if (take("serve")) serve = value;
    else if (take("cpu")) cpu = std::atoi(value.c_str());
    else if (take("ready_fd")) ready_fd = std::atoi(value.c_str());
    else if (take("transports")) transports = value;
    else if (take("sizes")) sizes = value;
    else if (take("seconds")) seconds = std::atof(value.c_str());
    else if (take("calls")) fixed_calls = std::atoll(value.c_str());
    else if (take("pin")) pin = value;
    else if (take("concurrency")) concurrency = std::atoi(value.c_str());
    else if (take("only")) only = value;
    else if (arg == "--poll_floor") poll_floor = true;
    else if (arg == "--mq_client_queue") mq_client_queue_too = true;
    else if (arg == "--vmsplice") vmsplice_too = true;
    else if (arg == "--uring_floor") uring_floor = true;
    else if (arg == "--uring_plain_ring") uring_plain_ring = true;
    else if (take("raw_pipe_size")) raw_pipe_size = std::atoi(value.c_str());
    else if (take("mq_reply_queue")) {
      // ChannelOptions::mq_reply_queue_messages x mq_reply_message_size.
      std::vector<std::string> parts = absl::StrSplit(value, 'x');
      if (parts.size() != 2) {
        std::fprintf(stderr, "ipcrpc_bench: --mq_reply_queue wants MESSAGESxBYTES, e.g. 8x8192\n");
        return 2;
      }
      mq_reply_messages = std::atoi(parts[0].c_str());
      const long long bytes = std::atoll(parts[1].c_str());
      if (mq_reply_messages <= 0 || bytes <= 0) {
        std::fprintf(stderr, "ipcrpc_bench: --mq_reply_queue wants positive numbers\n");
        return 2;
      }
      mq_reply_size = static_cast<size_t>(bytes);
    }
    else if (take("protobuf_work")) {
      // PrintProtobufWork's child.
      std::printf("%.2f\n", ProtobufWorkP50(static_cast<size_t>(std::atoll(value.c_str()))));
      return 0;
    }
    else {
      std::fprintf(stderr, "ipcrpc_bench: unknown argument %s\n", arg.c_str());
      return 2;
    }
  }
  if (!serve.empty()) return Serve(serve, cpu, ready_fd);

  Placement placement;
  const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  if (pin == "same") {
    placement = {0, 0};
  } else if (pin == "split") {
    placement = {0, cpus > 1 ? 1 : 0};
  } else if (pin != "none") {
    std::fprintf(stderr, "ipcrpc_bench: --pin must be same, split or none\n");
    return 2;
  }
  Pin(placement.client_cpu);
  std::printf("# ipcrpc_bench: %ld CPUs; --pin %s: client on CPU %d, server on CPU %d "
              "(-1: not pinned); %.1f s per measurement\n",
              cpus, pin.c_str(), placement.client_cpu, placement.server_cpu, seconds);
  PrintMemcpyFloor();
  const std::string self = SelfPath();
  const std::vector<std::string> transport_list = absl::StrSplit(transports, ',');
  const std::string first_transport = transport_list.empty() ? "" : transport_list[0];
  for (const std::string& transport : transport_list) {
    for (const std::string& size_text : std::vector<std::string>(absl::StrSplit(sizes, ','))) {
      size_t size = 0;
      if (!absl::SimpleAtoi(size_text, &size)) continue;
      if (only != "raw" && size >= 4096 && transport == first_transport) {
        PrintProtobufWork(self, size);
      }
      if (only != "raw") BenchRpc(self, transport, size, seconds, placement, concurrency);
      if (only != "rpc") BenchRaw(transport, size, seconds, placement);
      if (only != "rpc" && transport == "mq" && mq_client_queue_too) {
        mq_client_queue = true;
        BenchRaw(transport, size, seconds, placement);
        mq_client_queue = false;
      }
      if (only != "rpc" && vmsplice_too && (transport == "pipe" || transport == "fifo")) {
        use_vmsplice = true;
        BenchRaw(transport, size, seconds, placement);
        use_vmsplice = false;
      }
      if (poll_floor && transport != "shm") {
        poll_first = true;
        BenchRaw(transport, size, seconds, placement);
        poll_first = false;
      }
      if (uring_floor && (transport == "pipe" || transport == "fifo" || transport == "unix")) {
        use_uring = true;
        BenchRaw(transport, size, seconds, placement);
        use_uring = false;
      }
    }
  }
  return 0;
}
