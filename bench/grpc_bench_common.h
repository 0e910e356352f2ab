// What grpc_bench (ipcrpc) and grpc_bench_peer (plain gRPC) share: the
// placement, the measured loop and the one-line result. Each binary links
// its own generated code for calculator.proto (ipcrpc's and gRPC's both
// define calc::Calculator, so they cannot share a process).
#ifndef IPCRPC_BENCH_GRPC_BENCH_COMMON_H_
#define IPCRPC_BENCH_GRPC_BENCH_COMMON_H_

#include <sched.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <thread>
#include <vector>

namespace grpc_bench {

inline int64_t NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// Pins the calling thread, and so every thread it starts after (gRPC's own
// pollers and executors among them).
inline void Pin(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  sched_setaffinity(0, sizeof(set), &set);
}

struct Figures {
  double p50_us = 0;
  double p99_us = 0;
  double calls_per_s = 0;  // with `threads` callers
  bool ok = true;
};

// Latency: one caller, calls back to back for `seconds` after a warm-up.
// Throughput: `threads` callers at once for `seconds`. `once` makes one call
// and returns whether it succeeded.
template <typename F>
Figures Measure(double seconds, int threads, F&& once) {
  Figures figures;
  for (int i = 0; i < 500; ++i) {
    if (!once()) return Figures{0, 0, 0, false};
  }
  std::vector<int64_t> latencies;
  latencies.reserve(1 << 20);
  const int64_t end = NowNs() + static_cast<int64_t>(seconds * 1e9);
  for (int64_t now = NowNs(); now < end;) {
    if (!once()) return Figures{0, 0, 0, false};
    const int64_t after = NowNs();
    latencies.push_back(after - now);
    now = after;
  }
  std::sort(latencies.begin(), latencies.end());
  auto at = [&](double q) {
    return latencies[std::min(latencies.size() - 1, static_cast<size_t>(q * latencies.size()))] /
           1000.0;
  };
  figures.p50_us = at(0.5);
  figures.p99_us = at(0.99);

  std::atomic<int64_t> calls{0};
  std::atomic<bool> failed{false};
  std::vector<std::thread> callers;
  const int64_t start = NowNs();
  const int64_t stop = start + static_cast<int64_t>(seconds * 1e9);
  for (int t = 0; t < threads; ++t) {
    callers.emplace_back([&] {
      int64_t mine = 0;
      while (NowNs() < stop) {
        if (!once()) {
          failed = true;
          break;
        }
        ++mine;
      }
      calls += mine;
    });
  }
  for (std::thread& caller : callers) caller.join();
  figures.calls_per_s = calls.load() / ((NowNs() - start) / 1e9);
  figures.ok = !failed;
  return figures;
}

// The flags both programs take (--name=VALUE), and the others by name
// for the program to take or refuse.
struct Flags {
  std::string serve;  // --serve=ADDRESS: be a server
  std::string call;   // --call=ADDRESS: be a caller
  int cpu = -1;
  int ready_fd = -1;
  double seconds = 1;
  int threads = 8;
  std::map<std::string, std::string> others;
};

// False (after a message naming `program`) for an argument not --NAME=VALUE.
inline bool ParseFlags(const char* program, int argc, char** argv, Flags* flags) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t equals = arg.find('=');
    if (arg.rfind("--", 0) != 0 || equals == std::string::npos) {
      std::fprintf(stderr, "%s: unknown argument %s\n", program, arg.c_str());
      return false;
    }
    const std::string name = arg.substr(2, equals - 2);
    const std::string value = arg.substr(equals + 1);
    if (name == "serve") flags->serve = value;
    else if (name == "call") flags->call = value;
    else if (name == "cpu") flags->cpu = std::atoi(value.c_str());
    else if (name == "ready_fd") flags->ready_fd = std::atoi(value.c_str());
    else if (name == "seconds") flags->seconds = std::atof(value.c_str());
    else if (name == "threads") flags->threads = std::atoi(value.c_str());
    else flags->others[name] = value;
  }
  return true;
}

// Takes --`name` out of `flags->others` into *value; true if it was there.
inline bool TakeFlag(Flags* flags, const char* name, std::string* value) {
  auto it = flags->others.find(name);
  if (it == flags->others.end()) return false;
  *value = it->second;
  flags->others.erase(it);
  return true;
}

// False (after a message) if a flag nobody took is left.
inline bool NoFlagsLeft(const char* program, const Flags& flags) {
  for (const auto& [name, value] : flags.others) {
    std::fprintf(stderr, "%s: unknown argument --%s=%s\n", program, name.c_str(), value.c_str());
    return false;
  }
  return true;
}

inline void PrintFigures(const Figures& figures) {
  std::printf("p50_us=%.1f p99_us=%.1f calls_per_s=%.0f ok=%d\n", figures.p50_us, figures.p99_us,
              figures.calls_per_s, figures.ok ? 1 : 0);
  std::fflush(stdout);
}

}  // namespace grpc_bench

#endif  // IPCRPC_BENCH_GRPC_BENCH_COMMON_H_
