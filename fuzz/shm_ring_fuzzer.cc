// libFuzzer: the shm: reading side facing arbitrary ring contents written by
// a hostile peer. The input drives a 4 KiB ring: each step takes a producer
// position the peer claims (8 bytes, relative to what we consumed) and
// bytes it writes into the data area, then the consumer peeks (checking the
// position), and the record reader takes what it can. Impossible positions
// and oversized lengths are errors; no read may leave the region (ASan), and
// every delivered message must be within the limit.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>

#include "transports/shm/shm_ring.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ipcrpc::internal;
  constexpr size_t kRing = 4096;
  constexpr size_t kMaxMessage = 16 * 1024;  // larger than the ring: streamed
  auto control = std::make_unique<ShmRingControl>();
  control->producer_position.store(0);
  control->consumer_position.store(0);
  control->consumer_sleeping.store(0);
  auto ring = std::make_unique<char[]>(kRing);
  std::memset(ring.get(), 0, kRing);
  ShmRingConsumer consumer(control.get(), ring.get(), kRing);
  ShmRecordReader records(kMaxMessage);
  uint64_t consumed = 0;
  size_t at = 0;
  while (at + 10 <= size) {
    uint64_t delta;
    std::memcpy(&delta, data + at, 8);
    const size_t offset = (data[at + 8] | data[at + 9] << 8) % kRing;
    at += 10;
    // The peer writes some bytes anywhere in the data area...
    const size_t n = std::min<size_t>(size - at, 256);
    for (size_t i = 0; i < n; ++i) ring[(offset + i) % kRing] = static_cast<char>(data[at + i]);
    at += n;
    // ...and claims a position: mostly plausible, sometimes anything.
    const uint64_t claimed = (delta >> 63) ? delta : consumed + delta % (2 * kRing);
    control->producer_position.store(claimed);
    std::string_view first;
    std::string_view second;
    if (!consumer.Peek(&first, &second).ok()) return 0;  // corrupt: closed
    if (first.size() + second.size() > kRing) std::abort();
    while (!first.empty()) {
      absl::StatusOr<size_t> took = records.Take(first, second, [](std::string_view message) {
        if (message.size() > kMaxMessage) std::abort();
        // Every byte must be readable (ASan checks the copy).
        if (std::string(message).size() != message.size()) std::abort();
      });
      if (!took.ok()) return 0;  // oversized: closed
      if (*took == 0 || *took > first.size() + second.size()) std::abort();
      consumer.Consume(*took);
      consumed += *took;
      if (!consumer.Peek(&first, &second).ok()) return 0;
    }
  }
  return 0;
}
