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

inline void PrintFigures(const Figures& figures) {
  std::printf("p50_us=%.1f p99_us=%.1f calls_per_s=%.0f ok=%d\n", figures.p50_us, figures.p99_us,
              figures.calls_per_s, figures.ok ? 1 : 0);
  std::fflush(stdout);
}

}  // namespace grpc_bench

#endif  // IPCRPC_BENCH_GRPC_BENCH_COMMON_H_
