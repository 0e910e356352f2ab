// stream_bench: streamed messages one way (server -> client) over each
// transport, beside a raw one-way stream of the same primitive in the same
// run, and publish-to-subscriber latency through a broker, with both
// processes placed the same way.
//
//   stream_bench [--transports shm,mq,fifo,pipe,unix] [--sizes 64,4096,65536]
//                [--seconds S] [--pin same|split|none] [--subscribers 1,8]
//
// One line per measurement:
//   stream <transport> <size> msgs_per_s=<x> MBps=<y>
//   raw    <transport> <size> msgs_per_s=<x> MBps=<y>
//   pubsub <transport> subscribers=<n> p50_us=<x> p99_us=<y> events=<k>
// A stream line counts messages the client read in `seconds`, after a
// warm-up; the server's handler writes as fast as flow control lets it. The
// raw line is the primitive with the same framing ([u32 length][bytes] on a
// byte stream, one queue message per 8 KiB on mq:, an SPSC ring with
// spinning on shm:) and a reader that reads in large chunks. The pubsub
// line: a broker process; a publisher and N subscribers (threads, each with
// its own channel) in this process; latency from Publish to each
// subscriber's Read, on CLOCK_MONOTONIC.
#include <fcntl.h>
#include <mqueue.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <list>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "ipcrpc/ipcrpc.h"

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

void PrintRate(const char* kind, const std::string& transport, size_t size, int64_t messages,
               double seconds) {
  const double per_s = messages / seconds;
  std::printf("%-6s %-4s %6zu msgs_per_s=%.0f MBps=%.1f\n", kind, transport.c_str(), size, per_s,
              per_s * size / 1e6);
  std::fflush(stdout);
}

// ------------------------------------------------------------- the server

// bench.Stream/Flood (server streaming, request "<size>"): messages of that
// size until cancelled. bench.Broker/Publish (unary: the 8-byte publish
// time) and bench.Broker/Subscribe (server streaming): every published event
// to every subscriber, through a queue per subscriber.
class BenchService final : public ipcrpc::Service {
 public:
  BenchService() {
    AddStreamMethod("bench.Stream/Flood", ipcrpc::MethodKind::kServerStreaming,
                    [](ipcrpc::ServerContext&, ipcrpc::GenericServerStream& stream) {
                      std::string request;
                      size_t size = 0;
                      if (!stream.Read(&request) || !absl::SimpleAtoi(request, &size)) {
                        return absl::InvalidArgumentError("expected a size");
                      }
                      const std::string message(size, 'f');
                      while (stream.Write(message)) {
                      }
                      return absl::CancelledError("cancelled");
                    });
    AddMethod("bench.Broker/Publish",
              [this](ipcrpc::ServerContext&, std::string_view event, std::string&) {
                std::lock_guard<std::mutex> lock(mu_);
                for (const auto& subscriber : subscribers_) {
                  {
                    std::lock_guard<std::mutex> queue_lock(subscriber->mu);
                    subscriber->queue.emplace_back(event);
                  }
                  subscriber->ready.notify_one();
                }
                return absl::OkStatus();
              });
    AddMethod("bench.Broker/Subscribers",
              [this](ipcrpc::ServerContext&, std::string_view, std::string& out) {
                std::lock_guard<std::mutex> lock(mu_);
                out = std::to_string(subscribers_.size());
                return absl::OkStatus();
              });
    AddStreamMethod("bench.Broker/Subscribe", ipcrpc::MethodKind::kServerStreaming,
                    [this](ipcrpc::ServerContext& context, ipcrpc::GenericServerStream& stream) {
                      auto subscriber = std::make_shared<Subscriber>();
                      {
                        std::lock_guard<std::mutex> lock(mu_);
                        subscribers_.push_back(subscriber);
                      }
                      context.OnCancel([subscriber] {
                        {
                          std::lock_guard<std::mutex> lock(subscriber->mu);
                          subscriber->cancelled = true;
                        }
                        subscriber->ready.notify_one();
                      });
                      for (;;) {
                        std::string event;
                        {
                          std::unique_lock<std::mutex> lock(subscriber->mu);
                          subscriber->ready.wait(lock, [&] {
                            return subscriber->cancelled || !subscriber->queue.empty();
                          });
                          if (subscriber->cancelled) break;
                          event = std::move(subscriber->queue.front());
                          subscriber->queue.pop_front();
                        }
                        if (!stream.Write(event)) break;
                      }
                      std::lock_guard<std::mutex> lock(mu_);
                      subscribers_.remove(subscriber);
                      return absl::CancelledError("cancelled");
                    });
  }

 private:
  struct Subscriber {
    std::mutex mu;
    std::condition_variable ready;
    std::deque<std::string> queue;
    bool cancelled = false;
  };
  std::mutex mu_;
  std::list<std::shared_ptr<Subscriber>> subscribers_;
};

int Serve(const std::string& endpoint, int cpu, int ready_fd) {
  Pin(cpu);
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  BenchService service;
  ipcrpc::Server server;
  if (!server.RegisterService(&service).ok() || !server.Listen(endpoint).ok() ||
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
  const std::string name = absl::StrCat("ipcrpc-sbench-", getpid(), "-", transport);
  if (transport == "pipe") return "pipe:";
  if (transport == "shm" || transport == "mq") return absl::StrCat(transport, ":", name);
  return absl::StrCat(transport, ":/tmp/", name);
}

struct ServerProcess {
  pid_t pid = -1;
  std::string endpoint;
  std::shared_ptr<ipcrpc::Channel> channel;

  // Another channel to it (not pipe:).
  std::shared_ptr<ipcrpc::Channel> Connect() const {
    auto more = ipcrpc::Channel::Connect(endpoint);
    return more.ok() ? *more : nullptr;
  }

  ~ServerProcess() {
    channel.reset();
    if (pid > 0) {
      kill(pid, SIGTERM);
      waitpid(pid, nullptr, 0);
    }
  }
};

bool StartServer(const std::string& self, const std::string& transport,
                 const Placement& placement, ServerProcess* server) {
  server->endpoint = EndpointFor(transport);
  const std::string cpu = absl::StrCat("--cpu=", placement.server_cpu);
  if (transport == "pipe") {
    auto channel = ipcrpc::SpawnChild({self, "--serve=pipe:", cpu});
    if (!channel.ok()) return false;
    server->channel = *channel;
    return true;
  }
  int ready[2];
  if (pipe(ready) != 0) return false;
  server->pid = fork();
  if (server->pid == 0) {
    close(ready[0]);
    const std::string serve = "--serve=" + server->endpoint;
    const std::string fd = absl::StrCat("--ready_fd=", ready[1]);
    execl(self.c_str(), self.c_str(), serve.c_str(), cpu.c_str(), fd.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  close(ready[1]);
  char byte;
  const bool ok = read(ready[0], &byte, 1) == 1;
  close(ready[0]);
  if (!ok) return false;
  server->channel = server->Connect();
  return server->channel != nullptr;
}

// ------------------------------------------------------------------ rpc

void BenchStream(const std::string& self, const std::string& transport, size_t size,
                 double seconds, const Placement& placement) {
  ServerProcess server;
  if (!StartServer(self, transport, placement, &server)) {
    std::fprintf(stderr, "stream %s: cannot start the server\n", transport.c_str());
    return;
  }
  ipcrpc::GenericClientStream stream =
      server.channel->OpenServerStream("bench.Stream/Flood", std::to_string(size));
  std::string message;
  for (int i = 0; i < 1000; ++i) {
    if (!stream.Read(&message)) {
      std::fprintf(stderr, "stream %s: %s\n", transport.c_str(), stream.Finish().ToString().c_str());
      return;
    }
  }
  int64_t messages = 0;
  const int64_t start = NowNs();
  const int64_t end = start + static_cast<int64_t>(seconds * 1e9);
  int64_t now = start;
  while (now < end) {
    for (int i = 0; i < 64; ++i) {
      if (!stream.Read(&message) || message.size() != size) {
        std::fprintf(stderr, "stream %s: ended early\n", transport.c_str());
        return;
      }
    }
    messages += 64;
    now = NowNs();
  }
  PrintRate("stream", transport, size, messages, (now - start) / 1e9);
  stream.Cancel();
  stream.Finish().IgnoreError();
}

// ------------------------------------------------------------------ raw

template <typename F>
pid_t Fork(int cpu, F&& child) {
  pid_t pid = fork();
  if (pid == 0) {
    Pin(cpu);
    _exit(child());
  }
  return pid;
}

bool WriteFull(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// Reads framed messages from `fd` in chunks of up to 256 KiB; returns the
// number of whole messages seen before `end_ns`.
int64_t ReadFramed(int fd, size_t size, int64_t warm_messages, double seconds, double* elapsed) {
  std::vector<char> buffer(std::max<size_t>(256 << 10, size + 4));
  size_t have = 0;
  int64_t messages = 0;
  int64_t start = 0;
  int64_t end = 0;
  for (;;) {
    ssize_t n = read(fd, buffer.data() + have, buffer.size() - have);
    if (n <= 0) break;
    have += static_cast<size_t>(n);
    size_t at = 0;
    while (have - at >= 4) {
      uint32_t length;
      std::memcpy(&length, buffer.data() + at, 4);
      if (have - at < 4 + length) break;
      at += 4 + length;
      ++messages;
      if (start == 0 && messages == warm_messages) {
        start = NowNs();
        end = start + static_cast<int64_t>(seconds * 1e9);
        messages = 0;
      }
    }
    std::memmove(buffer.data(), buffer.data() + at, have - at);
    have -= at;
    if (start > 0 && NowNs() >= end) break;
  }
  *elapsed = (NowNs() - start) / 1e9;
  return messages;
}

void BenchRaw(const std::string& transport, size_t size, double seconds,
              const Placement& placement) {
  int64_t messages = 0;
  double elapsed = 0;
  if (transport == "pipe" || transport == "fifo" || transport == "unix") {
    int fds[2];
    std::string fifo;
    if (transport == "pipe") {
      if (pipe(fds) != 0) return;
    } else if (transport == "unix") {
      if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) return;
    } else {
      fifo = absl::StrCat("/tmp/ipcrpc-sbench-raw-", getpid());
      mkfifo(fifo.c_str(), 0600);
      fds[0] = open(fifo.c_str(), O_RDONLY | O_NONBLOCK);
      fds[1] = open(fifo.c_str(), O_WRONLY);
      fcntl(fds[0], F_SETFL, 0);
      unlink(fifo.c_str());
    }
    pid_t pid = Fork(placement.server_cpu, [&] {
      close(fds[0]);
      signal(SIGPIPE, SIG_IGN);
      std::string framed(4 + size, 'x');
      const uint32_t length = static_cast<uint32_t>(size);
      std::memcpy(framed.data(), &length, 4);
      while (WriteFull(fds[1], framed.data(), framed.size())) {
      }
      return 0;
    });
    close(fds[1]);
    messages = ReadFramed(fds[0], size, 1000, seconds, &elapsed);
    close(fds[0]);
    waitpid(pid, nullptr, 0);
  } else if (transport == "mq") {
    const std::string name = absl::StrCat("/ipcrpc-sbench-raw-", getpid());
    struct mq_attr attr = {};
    attr.mq_maxmsg = 10;
    attr.mq_msgsize = 8192;
    mqd_t q = mq_open(name.c_str(), O_CREAT | O_RDWR, 0600, &attr);
    mq_unlink(name.c_str());
    if (q < 0) return;
    const size_t chunk = std::min<size_t>(size == 0 ? 1 : size, 8192);
    const size_t count = std::max<size_t>(1, (size + chunk - 1) / chunk);
    std::atomic<bool>* stop = new (mmap(nullptr, 4096, PROT_READ | PROT_WRITE,
                                        MAP_SHARED | MAP_ANONYMOUS, -1, 0)) std::atomic<bool>(false);
    pid_t pid = Fork(placement.server_cpu, [&] {
      std::vector<char> buffer(8192, 'x');
      while (!stop->load(std::memory_order_relaxed)) {
        struct timespec soon;
        clock_gettime(CLOCK_REALTIME, &soon);
        soon.tv_sec += 1;
        if (mq_timedsend(q, buffer.data(), chunk, 0, &soon) < 0 && errno != ETIMEDOUT) return 0;
      }
      return 0;
    });
    std::vector<char> buffer(8192);
    auto receive_one = [&] {
      for (size_t i = 0; i < count; ++i) {
        if (mq_receive(q, buffer.data(), buffer.size(), nullptr) < 0) return false;
      }
      return true;
    };
    for (int i = 0; i < 1000; ++i) receive_one();
    const int64_t start = NowNs();
    const int64_t end = start + static_cast<int64_t>(seconds * 1e9);
    while (NowNs() < end) {
      for (int i = 0; i < 64 && receive_one(); ++i) ++messages;
    }
    elapsed = (NowNs() - start) / 1e9;
    stop->store(true);
    // Drain so that a sender blocked on a full queue sees `stop`.
    struct mq_attr nonblocking = {};
    nonblocking.mq_flags = O_NONBLOCK;
    mq_setattr(q, &nonblocking, nullptr);
    while (waitpid(pid, nullptr, WNOHANG) == 0) {
      mq_receive(q, buffer.data(), buffer.size(), nullptr);
    }
    mq_close(q);
    munmap(stop, 4096);
  } else if (transport == "shm") {
    // An SPSC byte ring (256 KiB, as the shm: transport's default), framed
    // like the stream transports, spinning (and yielding) when empty or full.
    constexpr size_t kRing = 256 << 10;
    struct Shared {
      alignas(64) std::atomic<uint64_t> head;  // producer
      alignas(64) std::atomic<uint64_t> tail;  // consumer
      alignas(64) std::atomic<bool> stop;
      alignas(64) char data[kRing];
    };
    void* memory = mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    auto* shared = new (memory) Shared{};
    auto copy_in = [&](uint64_t at, const char* p, size_t n) {
      while (n > 0) {
        const size_t offset = at % kRing;
        const size_t run = std::min(n, kRing - offset);
        std::memcpy(shared->data + offset, p, run);
        p += run;
        at += run;
        n -= run;
      }
    };
    auto copy_out = [&](uint64_t at, char* p, size_t n) {
      while (n > 0) {
        const size_t offset = at % kRing;
        const size_t run = std::min(n, kRing - offset);
        std::memcpy(p, shared->data + offset, run);
        p += run;
        at += run;
        n -= run;
      }
    };
    pid_t pid = Fork(placement.server_cpu, [&] {
      std::string framed(4 + size, 'x');
      const uint32_t length = static_cast<uint32_t>(size);
      std::memcpy(framed.data(), &length, 4);
      uint64_t head = 0;
      uint64_t tail = 0;
      while (!shared->stop.load(std::memory_order_relaxed)) {
        // Messages larger than the ring go in pieces.
        size_t written = 0;
        while (written < framed.size()) {
          int spins = 0;
          while (head - tail == kRing) {
            tail = shared->tail.load(std::memory_order_acquire);
            if (head - tail == kRing && ++spins > 1000) {
              if (shared->stop.load(std::memory_order_relaxed)) return 0;
              sched_yield();
            }
          }
          const size_t n = std::min(framed.size() - written, kRing - (head - tail));
          copy_in(head, framed.data() + written, n);
          head += n;
          written += n;
          shared->head.store(head, std::memory_order_release);
        }
      }
      return 0;
    });
    std::vector<char> message(size + 4);
    uint64_t tail = 0;
    uint64_t head = 0;
    auto take = [&](char* p, size_t n) {
      while (n > 0) {
        int spins = 0;
        while (head == tail) {
          head = shared->head.load(std::memory_order_acquire);
          if (head == tail && ++spins > 1000) sched_yield();
        }
        const size_t run = std::min<size_t>(n, head - tail);
        copy_out(tail, p, run);
        tail += run;
        p += run;
        n -= run;
        shared->tail.store(tail, std::memory_order_release);
      }
    };
    auto read_one = [&] {
      uint32_t length;
      take(reinterpret_cast<char*>(&length), 4);
      take(message.data(), length);
    };
    for (int i = 0; i < 1000; ++i) read_one();
    const int64_t start = NowNs();
    const int64_t end = start + static_cast<int64_t>(seconds * 1e9);
    while (NowNs() < end) {
      for (int i = 0; i < 64; ++i) read_one();
      messages += 64;
    }
    elapsed = (NowNs() - start) / 1e9;
    shared->stop.store(true);
    waitpid(pid, nullptr, 0);
    munmap(memory, sizeof(Shared));
  }
  PrintRate("raw", transport, size, messages, elapsed);
}

// --------------------------------------------------------------- pubsub

void BenchPubSub(const std::string& self, const std::string& transport, int subscribers,
                 double seconds, const Placement& placement) {
  if (transport == "pipe" && subscribers > 1) return;  // one connection only
  ServerProcess server;
  if (!StartServer(self, transport, placement, &server)) {
    std::fprintf(stderr, "pubsub %s: cannot start the server\n", transport.c_str());
    return;
  }
  std::vector<std::shared_ptr<ipcrpc::Channel>> channels;
  for (int i = 0; i < subscribers; ++i) {
    channels.push_back(transport == "pipe" ? server.channel : server.Connect());
    if (channels.back() == nullptr) return;
  }
  std::vector<ipcrpc::GenericClientStream> streams;
  for (int i = 0; i < subscribers; ++i) {
    streams.push_back(channels[i]->OpenServerStream("bench.Broker/Subscribe", ""));
  }
  for (;;) {  // until every subscription is registered
    auto n = server.channel->CallMethod("bench.Broker/Subscribers", "");
    if (!n.ok()) return;
    if (*n == std::to_string(subscribers)) break;
    usleep(1000);
  }
  std::mutex mu;
  std::vector<int64_t> latencies;
  std::vector<std::thread> threads;
  for (int i = 0; i < subscribers; ++i) {
    threads.emplace_back([&, i] {
      std::vector<int64_t> mine;
      std::string event;
      while (streams[i].Read(&event) && event.size() == 8) {
        int64_t published;
        std::memcpy(&published, event.data(), 8);
        if (published == 0) break;  // the end
        mine.push_back(NowNs() - published);
      }
      std::lock_guard<std::mutex> lock(mu);
      latencies.insert(latencies.end(), mine.begin(), mine.end());
    });
  }
  // Events at a steady pace (one per 200 us), so that latency, not
  // queueing, is measured.
  const int64_t end = NowNs() + static_cast<int64_t>(seconds * 1e9);
  int64_t events = 0;
  while (NowNs() < end) {
    const int64_t now = NowNs();
    std::string event(8, '\0');
    std::memcpy(event.data(), &now, 8);
    if (!server.channel->CallMethod("bench.Broker/Publish", event).ok()) break;
    ++events;
    usleep(200);
  }
  server.channel->CallMethod("bench.Broker/Publish", std::string(8, '\0')).IgnoreError();
  for (auto& thread : threads) thread.join();
  for (auto& stream : streams) {
    stream.Cancel();
    stream.Finish().IgnoreError();
  }
  std::sort(latencies.begin(), latencies.end());
  auto at = [&](double q) {
    return latencies.empty()
               ? 0.0
               : latencies[std::min(latencies.size() - 1,
                                    static_cast<size_t>(q * latencies.size()))] / 1000.0;
  };
  std::printf("pubsub %-4s subscribers=%d p50_us=%.1f p99_us=%.1f events=%lld\n",
              transport.c_str(), subscribers, at(0.5), at(0.99), static_cast<long long>(events));
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  std::string serve;
  int cpu = -1;
  int ready_fd = -1;
  std::string transports = "shm,mq,fifo,pipe,unix";
  std::string sizes = "64,4096,65536";
  std::string subscriber_counts = "1,8";
  double seconds = 1;
  std::string pin = "split";
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
    else if (take("subscribers")) subscriber_counts = value;
    else if (take("seconds")) seconds = std::atof(value.c_str());
    else if (take("pin")) pin = value;
    else {
      std::fprintf(stderr, "stream_bench: unknown argument %s\n", arg.c_str());
      return 2;
    }
  }
  if (!serve.empty()) return Serve(serve, cpu, ready_fd);
  signal(SIGPIPE, SIG_IGN);
  Placement placement;
  const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  if (pin == "same") {
    placement = {0, 0};
  } else if (pin == "split") {
    placement = {0, cpus > 1 ? 1 : 0};
  } else if (pin != "none") {
    std::fprintf(stderr, "stream_bench: --pin must be same, split or none\n");
    return 2;
  }
  Pin(placement.client_cpu);
  std::printf("# stream_bench: %ld CPUs; --pin %s: client on CPU %d, server on CPU %d "
              "(-1: not pinned); %.1f s per measurement\n",
              cpus, pin.c_str(), placement.client_cpu, placement.server_cpu, seconds);
  const std::string self = "/proc/self/exe";
  for (const std::string& transport : std::vector<std::string>(absl::StrSplit(transports, ','))) {
    for (const std::string& size_text : std::vector<std::string>(absl::StrSplit(sizes, ','))) {
      size_t size = 0;
      if (!absl::SimpleAtoi(size_text, &size)) continue;
      BenchStream(self, transport, size, seconds, placement);
      BenchRaw(transport, size, seconds, placement);
    }
    for (const std::string& n : std::vector<std::string>(absl::StrSplit(subscriber_counts, ','))) {
      int count = 0;
      if (absl::SimpleAtoi(n, &count) && count > 0) {
        BenchPubSub(self, transport, count, seconds, placement);
      }
    }
  }
  return 0;
}
