// Google Benchmark microbenchmarks of the pieces on the hot path, in one
// process: the frame codec, the pending-call table, the shm ring, and a
// whole unary call over shm (client and server threads in this process),
// with the heap allocations it makes per call (every operator new counts).
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "ipcrpc/ipcrpc.h"

#include "rpc/channel_core.h"
#include "wire/frame.h"
#include "transports/shm/shm_ring.h"

// GCC sees malloc/free behind operator new/delete and warns of a mismatch
// that is the point of the replacement.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

std::atomic<int64_t> g_allocations{0};

void* operator new(size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void* operator new[](size_t size) { return operator new(size); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }

namespace ipcrpc::internal {
namespace {

void BM_EncodeFramePrefix(benchmark::State& state) {
  FrameHeader header;
  header.type = FrameType::kRequest;
  header.request_id = 42;
  header.deadline_ns = 123456789;
  std::string out;
  for (auto _ : state) {
    benchmark::DoNotOptimize(
        EncodeFramePrefix(header, "bench.Echo/Echo", {}, state.range(0), 1 << 26, &out));
  }
}
BENCHMARK(BM_EncodeFramePrefix)->Arg(64)->Arg(65536);

void BM_DecodeFrame(benchmark::State& state) {
  FrameHeader header;
  header.type = FrameType::kRequest;
  std::string frame;
  (void)EncodeFramePrefix(header, "bench.Echo/Echo", {{"k", "v"}}, state.range(0), 1 << 26, &frame);
  frame.append(state.range(0), 'x');
  for (auto _ : state) benchmark::DoNotOptimize(DecodeFrame(frame, 1 << 26));
}
BENCHMARK(BM_DecodeFrame)->Arg(64)->Arg(65536);

// Insert and take out one call, with `in_flight` others in the table.
void BM_PendingCallTable(benchmark::State& state) {
  ClientConnection table(nullptr);
  std::vector<std::shared_ptr<PendingCall>> others;
  for (int i = 0; i < state.range(0); ++i) {
    auto call = std::make_shared<PendingCall>(0, nullptr);
    call->id = 1'000'000 + i;
    absl::Status why;
    table.Insert(call, &why);
    others.push_back(call);
  }
  auto call = std::make_shared<PendingCall>(0, nullptr);
  uint64_t id = 0;
  for (auto _ : state) {
    call->id = ++id;
    absl::Status why;
    table.Insert(call, &why);
    benchmark::DoNotOptimize(table.Take(id));
  }
}
BENCHMARK(BM_PendingCallTable)->Arg(0)->Arg(1000);

// Write a record and read it back through one ring (one thread).
void BM_ShmRingRoundTrip(benchmark::State& state) {
  const size_t size = 1 << 16;
  ShmRingControl control{};
  std::vector<char> data(size);
  ShmRingProducer producer(&control, data.data(), size);
  ShmRingConsumer consumer(&control, data.data(), size);
  const std::string record(state.range(0), 'r');
  for (auto _ : state) {
    (void)producer.Write(record);
    producer.Publish();
    std::string_view first, second;
    (void)consumer.Peek(&first, &second);
    benchmark::DoNotOptimize(first.data());
    consumer.Consume(first.size() + second.size());
  }
  state.SetBytesProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_ShmRingRoundTrip)->Arg(64)->Arg(4096);

class MicroEcho : public Service {
 public:
  MicroEcho() {
    AddMethod("micro.Echo/Echo", [](ServerContext&, std::string_view request, std::string& response) {
      response.assign(request);
      return absl::OkStatus();
    });
  }
};

// A whole sync call over shm, both ends in this process (each on its own
// threads, as in two processes): through CallMethod, or (kInto) through
// CallMethodInto with one response buffer for every call.
template <bool kInto>
void BM_ShmCall(benchmark::State& state) {
  MicroEcho echo;
  Server server;
  const std::string endpoint = absl::StrCat("shm:ipcrpc-micro-", getpid(), kInto ? "-into" : "");
  if (!server.RegisterService(&echo).ok() || !server.Listen(endpoint).ok() ||
      !server.Start().ok()) {
    state.SkipWithError("server did not start");
    return;
  }
  auto channel = Channel::Connect(endpoint);
  if (!channel.ok()) {
    state.SkipWithError("no channel");
    return;
  }
  const std::string request(static_cast<size_t>(state.range(0)), 'x');
  std::string response;
  auto call = [&] {
    if constexpr (kInto) {
      benchmark::DoNotOptimize((*channel)->CallMethodInto("micro.Echo/Echo", request, &response));
    } else {
      benchmark::DoNotOptimize((*channel)->CallMethod("micro.Echo/Echo", request));
    }
  };
  for (int i = 0; i < 1000; ++i) call();
  const int64_t before = g_allocations.load();
  for (auto _ : state) call();
  state.counters["allocs_per_call"] = benchmark::Counter(
      static_cast<double>(g_allocations.load() - before) / static_cast<double>(state.iterations()));
  channel->reset();
  server.Shutdown();
}
void BM_ShmUnaryCallInProcess(benchmark::State& state) { BM_ShmCall<false>(state); }
void BM_ShmUnaryCallIntoInProcess(benchmark::State& state) { BM_ShmCall<true>(state); }
BENCHMARK(BM_ShmUnaryCallIntoInProcess)->Arg(8)->Arg(64)->Arg(4096)->Arg(65536)->UseRealTime();
BENCHMARK(BM_ShmUnaryCallInProcess)->Arg(8)->Arg(64)->Arg(4096)->Arg(16384)->Arg(65536)->UseRealTime();

}  // namespace
}  // namespace ipcrpc::internal

BENCHMARK_MAIN();
