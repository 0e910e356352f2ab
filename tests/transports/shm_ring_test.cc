// The shared-memory ring on its own: wrap-around at every offset, a full
// ring, impossible positions, the sleep/doorbell handshake, and two threads
// streaming through it (run under ThreadSanitizer in CI); and the reader's
// spin policy (Spinner) on a clock the test moves.
#include "transports/shm/shm_ring.h"
#include "transports/shm/shm_spinner.h"

#include <sched.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/util/cpus.h"
#include "tests/util/status_matchers.h"

namespace ipcrpc::internal {
namespace {

using ::ipcrpc::testing::IsOk;
using ::ipcrpc::testing::StatusIs;

struct KeptView {
  std::string_view view;
  std::shared_ptr<const void> owner;
};

struct TestRing {
  explicit TestRing(size_t size)
      : data(size), producer(&control, data.data(), size), consumer(&control, data.data(), size) {}
  ShmRingControl control{};
  std::vector<char> data;
  ShmRingProducer producer;
  ShmRingConsumer consumer;

  // Reads everything readable.
  std::string Drain() {
    std::string_view first, second;
    EXPECT_THAT(consumer.Peek(&first, &second), IsOk());
    std::string out(first);
    out.append(second);
    consumer.Consume(out.size());
    return out;
  }
};

// Runs `body` on a new thread (whose per-thread view of its affinity starts
// afresh) with that thread's affinity set to `cpus`. False if the kernel
// refused the affinity.
template <typename Body>
bool OnThreadWithAffinity(const cpu_set_t& cpus, Body body) {
  bool pinned = false;
  std::thread thread([&] {
    pinned = sched_setaffinity(0, sizeof(cpus), &cpus) == 0;
    if (pinned) body();
  });
  thread.join();
  return pinned;
}

// The CPU hints (shm_ring.h): a side pinned to one CPU leaves it in its own
// line, and a peer pinned to the same CPU sees that they share it; any
// other value a hostile peer writes (another CPU, garbage, 0) reads as not
// shared.
TEST(ShmRingTest, SidesPinnedToOneCpuLeaveItAsAHintAndSeeThePeersOnTheirOwn) {
  cpu_set_t allowed;
  ASSERT_EQ(sched_getaffinity(0, sizeof(allowed), &allowed), 0);
  const int cpu = ::ipcrpc::testing::FirstCpuOf(allowed);
  ASSERT_GE(cpu, 0);
  const cpu_set_t one = ::ipcrpc::testing::OnlyCpu(cpu);
  const uint32_t hint = static_cast<uint32_t>(cpu) + 1;
  TestRing ring(64);
  const bool pinned = OnThreadWithAffinity(one, [&] {
    ASSERT_EQ(*ring.producer.Write("x"), 1u);
    ring.producer.Publish();
    EXPECT_EQ(ring.control.producer_cpu.load(), hint);
    EXPECT_EQ(ring.Drain(), "x");
    EXPECT_EQ(ring.control.consumer_cpu.load(), hint);
    EXPECT_TRUE(ring.consumer.ProducerSharesCpu());
    EXPECT_TRUE(ring.producer.ConsumerSharesCpu());
    for (const uint32_t hostile : {0u, hint + 1, 0xFFFFFFFFu}) {
      ring.control.producer_cpu.store(hostile);
      ring.control.consumer_cpu.store(hostile);
      EXPECT_FALSE(ring.consumer.ProducerSharesCpu()) << hostile;
      EXPECT_FALSE(ring.producer.ConsumerSharesCpu()) << hostile;
    }
  });
  if (!pinned) GTEST_SKIP() << "this thread may not be pinned here";
}

// A side that the scheduler may move gives no hint (0) and takes none: its
// peer's hint naming its CPU of the moment changes nothing.
TEST(ShmRingTest, AnUnpinnedSideGivesAndTakesNoHint) {
  cpu_set_t allowed;
  ASSERT_EQ(sched_getaffinity(0, sizeof(allowed), &allowed), 0);
  if (CPU_COUNT(&allowed) < 2) GTEST_SKIP() << "one CPU only: every thread is pinned";
  TestRing ring(64);
  ASSERT_TRUE(OnThreadWithAffinity(allowed, [&] {
    ASSERT_EQ(*ring.producer.Write("y"), 1u);
    ring.producer.Publish();
    EXPECT_EQ(ring.Drain(), "y");
    EXPECT_EQ(ring.control.producer_cpu.load(), 0u);
    EXPECT_EQ(ring.control.consumer_cpu.load(), 0u);
    const uint32_t now = static_cast<uint32_t>(sched_getcpu()) + 1;
    ring.control.producer_cpu.store(now);
    ring.control.consumer_cpu.store(now);
    EXPECT_FALSE(ring.consumer.ProducerSharesCpu());
    EXPECT_FALSE(ring.producer.ConsumerSharesCpu());
  }));
}

TEST(ShmRingTest, WrapsAroundAtEveryOffset) {
  constexpr size_t kSize = 64;
  for (size_t offset = 0; offset < kSize; ++offset) {
    for (size_t length = 1; length <= kSize; length += 7) {
      TestRing ring(kSize);
      const std::string skip(offset, 's');
      ASSERT_EQ(*ring.producer.Write(skip), offset);
      ring.producer.Publish();
      ASSERT_EQ(ring.Drain(), skip);
      std::string payload(length, '\0');
      for (size_t i = 0; i < length; ++i) payload[i] = static_cast<char>('a' + (offset + i) % 26);
      ASSERT_EQ(*ring.producer.Write(payload), length) << "offset " << offset;
      ring.producer.Publish();
      EXPECT_EQ(ring.Drain(), payload) << "offset " << offset << " length " << length;
    }
  }
}

TEST(ShmRingTest, AFullRingTakesNothingMoreUntilRead) {
  TestRing ring(32);
  ASSERT_EQ(*ring.producer.Write(std::string(40, 'x')), 32u);
  EXPECT_EQ(*ring.producer.Write("more"), 0u);
  ring.producer.Publish();
  std::string_view first, second;
  ASSERT_THAT(ring.consumer.Peek(&first, &second), IsOk());
  ring.consumer.Consume(10);
  EXPECT_EQ(*ring.producer.Write(std::string(20, 'y')), 10u);
}

TEST(ShmRingTest, ImpossiblePositionsFromThePeerAreDataLoss) {
  TestRing ring(32);
  // A producer position behind the consumer, or further ahead than the ring.
  ring.control.producer_position.store(33);
  std::string_view first, second;
  EXPECT_THAT(ring.consumer.Peek(&first, &second), StatusIs(absl::StatusCode::kDataLoss));
  TestRing behind(32);
  ASSERT_EQ(*behind.producer.Write("abcd"), 4u);
  behind.producer.Publish();
  behind.Drain();
  behind.control.producer_position.store(1);
  EXPECT_THAT(behind.consumer.Peek(&first, &second), StatusIs(absl::StatusCode::kDataLoss));
  // A consumer position ahead of what was written.
  TestRing ahead(32);
  ASSERT_EQ(*ahead.producer.Write(std::string(32, 'z')), 32u);
  ahead.control.consumer_position.store(1000);
  EXPECT_THAT(ahead.producer.Write("x"), StatusIs(absl::StatusCode::kDataLoss));
}

TEST(ShmRingTest, DoorbellIsNeededOnlyForASleepingReader) {
  TestRing ring(64);
  ASSERT_EQ(*ring.producer.Write("a"), 1u);
  EXPECT_FALSE(ring.producer.Publish()) << "the reader is awake: no doorbell";
  ring.Drain();
  ASSERT_TRUE(ring.consumer.PrepareToSleep());
  ASSERT_EQ(*ring.producer.Write("b"), 1u);
  EXPECT_TRUE(ring.producer.Publish()) << "the reader sleeps: ring once";
  ASSERT_EQ(*ring.producer.Write("c"), 1u);
  EXPECT_FALSE(ring.producer.Publish()) << "already rung";
  // Data there: the reader does not go to sleep.
  EXPECT_FALSE(ring.consumer.PrepareToSleep());
}

// Two threads stream through a small ring with the sleep protocol on a
// simulated doorbell; every byte arrives in order and no wake-up is lost
// (a lost one would hang the test).
TEST(ShmRingTest, TwoThreadsStreamWithoutLostWakeups) {
  constexpr size_t kSize = 256;
  constexpr size_t kTotal = 4 << 20;
  TestRing ring(kSize);
  std::atomic<int> doorbell{0};
  std::thread producer([&] {
    std::mt19937 rng(1);
    size_t sent = 0;
    std::string chunk;
    while (sent < kTotal) {
      const size_t n = std::min<size_t>(1 + rng() % 300, kTotal - sent);
      chunk.resize(n);
      for (size_t i = 0; i < n; ++i) chunk[i] = static_cast<char>((sent + i) * 7);
      std::string_view rest = chunk;
      while (!rest.empty()) {
        size_t written = *ring.producer.Write(rest);
        rest.remove_prefix(written);
        if (ring.producer.Publish()) doorbell.fetch_add(1);
        if (written == 0) std::this_thread::yield();
      }
      sent += n;
    }
  });
  size_t received = 0;
  bool in_order = true;
  while (received < kTotal) {
    std::string_view first, second;
    ASSERT_THAT(ring.consumer.Peek(&first, &second), IsOk());
    if (first.empty()) {
      if (ring.consumer.PrepareToSleep()) {
        // Sleep until rung (consume one ring).
        int rung = doorbell.load();
        while (rung == 0 || !doorbell.compare_exchange_weak(rung, rung - 1)) {
          std::this_thread::yield();
          rung = doorbell.load();
        }
      }
      continue;
    }
    for (std::string_view span : {first, second}) {
      for (char c : span) {
        in_order &= c == static_cast<char>(received * 7);
        ++received;
      }
    }
    ring.consumer.Consume(first.size() + second.size());
  }
  producer.join();
  EXPECT_TRUE(in_order);
  EXPECT_EQ(received, kTotal);
}

// The peer may rewrite the ring at any moment: what the reader hands over
// must be its own copy, read from the ring once. Rewriting the ring inside
// the callback stands for a peer that does it while the message is decoded.
TEST(ShmRecordReaderTest, HandsOverACopyThatThePeerCannotChange) {
  constexpr size_t kSize = 256;
  TestRing ring(kSize);
  ShmRecordReader reader(1024);
  const std::string message = "metadata length 7, then the rest";
  std::string record(4, '\0');
  record[0] = static_cast<char>(message.size());
  record += message;
  for (int round = 0; round < 3; ++round) {  // a warm reader too (reused buffer)
    ASSERT_EQ(*ring.producer.Write(record), record.size());
    ring.producer.Publish();
    std::string_view first, second;
    ASSERT_THAT(ring.consumer.Peek(&first, &second), IsOk());
    ASSERT_EQ(first.size(), record.size()) << "the record lies contiguous in the ring";
    std::string seen;
    absl::StatusOr<size_t> took = reader.Take(first, second, [&](std::string_view view) {
      const char* ring_begin = ring.data.data();
      EXPECT_FALSE(view.data() >= ring_begin && view.data() < ring_begin + kSize)
          << "the message is a view into the peer-writable ring";
      std::memset(ring.data.data(), 'X', kSize);  // the peer strikes
      seen = std::string(view);
    });
    ASSERT_THAT(took, IsOk());
    EXPECT_EQ(*took, record.size());
    EXPECT_EQ(seen, message) << "round " << round;
    ring.consumer.Consume(*took);
  }
}

// KeepDelivered (a large request kept for its handler thread instead of
// copied): the kept message stays intact while the reader gathers the next
// ones into its other buffer; one buffer is out at a time, and it comes
// back for the next once its owner is done; a small message is not kept.
TEST(ShmRecordReaderTest, AKeptMessageStaysIntactAndItsBufferComesBack) {
  constexpr size_t kSize = 256 * 1024;
  TestRing ring(kSize);
  ShmRecordReader reader(1 << 20);
  auto record = [](const std::string& message) {
    std::string out(4, '\0');
    for (int i = 0; i < 4; ++i) out[i] = static_cast<char>((message.size() >> (8 * i)) & 0xff);
    return out + message;
  };
  auto pattern = [](size_t n, char seed) {
    std::string s(n, '\0');
    for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(seed + i * 7 + i / 253);
    return s;
  };
  // Sends `message` through the ring; the reader takes it and asks to keep it.
  auto deliver = [&](const std::string& message) {
    const std::string bytes = record(message);
    EXPECT_EQ(*ring.producer.Write(bytes), bytes.size());
    ring.producer.Publish();
    KeptView kept;
    bool delivered = false;
    size_t taken = 0;
    while (!delivered && taken < bytes.size()) {  // in pieces where it wraps
      std::string_view first, second;
      EXPECT_THAT(ring.consumer.Peek(&first, &second), IsOk());
      absl::StatusOr<size_t> took = reader.Take(first, second, [&](std::string_view view) {
        EXPECT_TRUE(view == message);
        kept.view = view;
        kept.owner = reader.KeepDelivered();
        delivered = true;
      });
      EXPECT_THAT(took, IsOk());
      if (!took.ok() || *took == 0) break;
      ring.consumer.Consume(*took);
      taken += *took;
    }
    EXPECT_TRUE(delivered);
    EXPECT_EQ(taken, bytes.size());
    std::memset(ring.data.data(), 'X', kSize);  // and the peer writes over the ring
    return kept;
  };
  const std::string a = pattern(100 * 1024, 'a');
  const std::string b = pattern(100 * 1024, 'b');
  const std::string c = pattern(100 * 1024, 'c');  // wraps around the ring's end
  KeptView kept_a = deliver(a);
  ASSERT_NE(kept_a.owner, nullptr);
  EXPECT_EQ(deliver(b).owner, nullptr);  // A's buffer is still out
  EXPECT_TRUE(kept_a.view == a);         // untouched by B, gathered meanwhile
  kept_a.owner.reset();
  KeptView kept_c = deliver(c);
  EXPECT_NE(kept_c.owner, nullptr);
  EXPECT_TRUE(kept_c.view == c);
  kept_c.owner.reset();
  EXPECT_EQ(deliver(pattern(60 * 1024, 'd')).owner, nullptr);  // under 64 KiB
  EXPECT_NE(deliver(pattern(70 * 1024, 'e')).owner, nullptr);  // but 70 KiB is kept
  // Outside on_message: nothing to keep.
  EXPECT_EQ(reader.KeepDelivered(), nullptr);
}

// Spinner on a clock the test moves: each look at the ring takes kLookNs,
// and a sched_yield takes yield_cost_ns (short: nothing else ran on the CPU;
// long: another thread did).
int64_t fake_now_ns = 0;
int64_t yield_cost_ns = 0;
int yields = 0;
int64_t FakeNow() { return fake_now_ns; }
void FakeYield() {
  ++yields;
  fake_now_ns += yield_cost_ns;
}
constexpr int64_t kLookNs = 100;

// One wait in which the data comes right after the reader's first yield.
void WaitFindingDataRightAfterAYield(Spinner& spinner) {
  spinner.Begin();
  const int before = yields;
  for (int look = 0; yields == before; ++look) {
    ASSERT_LT(look, 100000);
    ASSERT_TRUE(spinner.KeepLooking()) << "slept before it ever yielded";
    fake_now_ns += kLookNs;
  }
  spinner.Found();
}

// The regression of 2026-12-01: on two CPUs a sched_yield returns at once,
// and the peer's data, coming from the other CPU, often shows up right
// after it. Taken as "the peer needed my CPU", that halved the time before
// the first yield on every call until the reader yielded at every clock
// reading (6 system calls a 4 KiB call instead of 0.2).
TEST(SpinnerTest, YieldsThatRanNothingElseDoNotTeachItToYieldSooner) {
  fake_now_ns = 1'000'000;
  yield_cost_ns = 500;
  Spinner spinner(&FakeNow, &FakeYield);
  for (int wait = 0; wait < 50; ++wait) WaitFindingDataRightAfterAYield(spinner);
  EXPECT_EQ(spinner.yield_after_ns(), kYieldAfterNs);
}

// One CPU for both: the peer runs only while the reader yields (the yield
// takes a time slice's share), so the reader learns to yield sooner.
TEST(SpinnerTest, YieldsThatLetAnotherThreadRunTeachItToYieldSooner) {
  fake_now_ns = 1'000'000;
  yield_cost_ns = 20'000;
  Spinner spinner(&FakeNow, &FakeYield);
  for (int wait = 0; wait < 4; ++wait) WaitFindingDataRightAfterAYield(spinner);
  EXPECT_LE(spinner.yield_after_ns(), kYieldAfterNs / 16);
}

// A peer that answers within the pauses costs no system call at all, and a
// peer that never answers costs at most the budget before the reader sleeps.
TEST(SpinnerTest, PausesFirstThenSleepsWithinItsBudget) {
  fake_now_ns = 1'000'000;
  yield_cost_ns = 500;
  yields = 0;
  Spinner spinner(&FakeNow, &FakeYield);
  spinner.Begin();
  for (int look = 0; look < 50; ++look) {  // 5 us: the data comes
    ASSERT_TRUE(spinner.KeepLooking());
    fake_now_ns += kLookNs;
  }
  spinner.Found();
  EXPECT_EQ(yields, 0);
  EXPECT_EQ(spinner.yield_after_ns(), kYieldAfterNs);

  spinner.Begin();
  const int64_t began = fake_now_ns;
  int look = 0;
  while (spinner.KeepLooking()) {
    ASSERT_LT(++look, 100000);
    fake_now_ns += kLookNs;
  }
  // From the first clock reading (8 looks in) to the one past the budget,
  // which may be one reading and one yield late.
  EXPECT_GE(fake_now_ns - began, spinner.budget_ns());
  EXPECT_LE(fake_now_ns - began, spinner.budget_ns() + 16 * kLookNs + yield_cost_ns);
}

}  // namespace
}  // namespace ipcrpc::internal
