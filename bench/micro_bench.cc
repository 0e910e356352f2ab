// Google Benchmark microbenchmarks of the pieces on the hot path, in one
// process: the frame codec, the pending-call table, the shm ring.
#include <benchmark/benchmark.h>

#include <memory>
#include <string>
#include <vector>

#include "rpc/channel_core.h"
#include "rpc/frame.h"
#include "transports/shm/shm_ring.h"

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

}  // namespace
}  // namespace ipcrpc::internal

BENCHMARK_MAIN();
