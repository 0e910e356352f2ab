// A single-producer single-consumer byte ring in memory shared by two
// processes. Layout (docs/PROTOCOL.md, "shm: rings"): a control block of
// three cache lines - the producer's position (with its "closed" flag and
// CPU hint), the consumer's position (with its CPU hint), the consumer's
// "sleeping" flag - and `size` bytes of data (a power of two).
// Positions are byte counts since the start (u64, never wrap in practice);
// the byte at position p is data[p & (size - 1)].
//
// Invariants, for each side:
// - Only the producer writes the producer position, only the consumer the
//   consumer position. Each side keeps its own position privately and never
//   reads it back from shared memory, so the peer cannot move it.
// - What a side reads of the other's position is checked before use:
//   0 <= producer - consumer <= size, or the ring is corrupt (the peer is
//   faulty or hostile) and the connection must be closed.
// - Each side caches the other's position and re-reads it only when the
//   cached value says the ring is full (producer) or empty (consumer), so the
//   common path touches no cache line the other side writes.
//
// Memory ordering:
// - The producer writes data, then stores its position with release; the
//   consumer loads that position with acquire before reading the data, so it
//   sees the bytes (data happens-before the position it reads).
// - The consumer reads data, then stores its position with release; the
//   producer loads it with acquire before overwriting that space, so the
//   consumer's reads happen-before the producer's new writes.
// - Sleeping (no lost wake-up): the consumer stores sleeping = 1, then loads
//   the producer position; the producer stores its position, then loads
//   sleeping; all four are seq_cst, so they fall in one total order (Dekker)
//   and at least one side sees the other's store: either the consumer sees the data and does not sleep, or
//   the producer sees sleeping = 1 and rings the doorbell. Whoever clears
//   the flag (exchange to 0) owns the one doorbell ring.
#ifndef IPCRPC_TRANSPORTS_SHM_SHM_RING_H_
#define IPCRPC_TRANSPORTS_SHM_SHM_RING_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "transports/buffer_loans.h"

namespace ipcrpc::internal {

inline constexpr size_t kCacheLine = 64;

// The control block, in shared memory.
struct alignas(kCacheLine) ShmRingControl {
  alignas(kCacheLine) std::atomic<uint64_t> producer_position;
  // Set by a producer that closes the connection (before it shuts its
  // socket down): a consumer that nobody woke learns of it without a system
  // call. A producer that dies unannounced is seen by its socket's EOF.
  std::atomic<uint32_t> producer_closed;
  // The CPU the producer ran on when it last published, plus one, if it may
  // run on that CPU only (0: none, or not known). A hint for the consumer
  // (ShmRingConsumer::ProducerSharesCpu): in the line the consumer reads
  // anyway, and whatever a peer writes there changes only how long the
  // consumer looks before it sleeps.
  std::atomic<uint32_t> producer_cpu;
  alignas(kCacheLine) std::atomic<uint64_t> consumer_position;
  // The CPU the consumer ran on when it last consumed, plus one, if it may
  // run on that CPU only (0: none, or not known). A hint for the producer
  // (ShmRingProducer::ConsumerSharesCpu): whatever a peer writes there
  // changes only whether a large message is published in pieces and
  // whether a writer facing a full ring pauses before it yields.
  std::atomic<uint32_t> consumer_cpu;
  alignas(kCacheLine) std::atomic<uint32_t> consumer_sleeping;
};
static_assert(sizeof(ShmRingControl) == 3 * kCacheLine);
// The layout docs/PROTOCOL.md gives (a peer of another build relies on it).
static_assert(offsetof(ShmRingControl, producer_position) == 0);
static_assert(offsetof(ShmRingControl, producer_closed) == 8);
static_assert(offsetof(ShmRingControl, producer_cpu) == 12);
static_assert(offsetof(ShmRingControl, consumer_position) == 64);
static_assert(offsetof(ShmRingControl, consumer_cpu) == 72);
static_assert(offsetof(ShmRingControl, consumer_sleeping) == 128);
static_assert(std::atomic<uint64_t>::is_always_lock_free, "needs lock-free 64-bit atomics");

// The writing side of a ring. Not thread-safe (one producer).
class ShmRingProducer {
 public:
  ShmRingProducer(ShmRingControl* control, char* data, size_t size)
      : control_(control), data_(data), size_(size) {}

  // Writes as much of `bytes` as fits now (through Reserve and Commit, as
  // the connection writes); returns how much (possibly 0). Corrupt if the
  // consumer's position is impossible.
  absl::StatusOr<size_t> Write(std::string_view bytes);

  // Bytes that can be written now (re-reading the consumer's position only
  // if fewer than `wanted` looked free). Corrupt as Write.
  absl::StatusOr<size_t> Room(size_t wanted);

  // The free space at the write position, as one piece (up to the end of
  // the data, where the ring wraps) of at most `max` bytes, for the caller
  // to write into and then Commit; empty when the ring is full. Corrupt as
  // Write.
  absl::StatusOr<absl::Span<char>> Reserve(size_t max);

  // The first `n` bytes of what Reserve gave were written: they go with the
  // next Publish.
  void Commit(size_t n) { position_ += n; }

  // Publishes what was written; true if the consumer was asleep and must be
  // woken (the caller rings its doorbell).
  bool Publish();

  // Whether the consumer last consumed on the CPU this thread runs on now,
  // both pinned to it (no hint is given or taken otherwise):
  // then a large message gains nothing from being published in pieces (the
  // consumer cannot copy out while we copy in), and on a full ring only
  // giving up the CPU makes room. A hint, read once (the consumer writes
  // it); it reads the consumer's cache line, so only for large messages.
  bool ConsumerSharesCpu() const;

  // Tells the consumer of the ring `control` belongs to that nothing more
  // will come (the connection closes). One atomic store: safe from any
  // thread, beside a writer. Static, so that it needs no access to the
  // producer, which its owner guards with the writers' lock.
  static void MarkClosed(ShmRingControl* control) {
    control->producer_closed.store(1, std::memory_order_release);
  }

 private:
  ShmRingControl* const control_;
  char* const data_;
  const size_t size_;
  uint64_t position_ = 0;         // ours: the truth
  uint64_t published_ = 0;        // what the consumer may read
  uint64_t cached_consumer_ = 0;  // the consumer's position, as last read
  uint32_t cpu_hint_ = 0;         // what we last stored as producer_cpu
};

// The reading side of a ring. Not thread-safe (one consumer).
class ShmRingConsumer {
 public:
  ShmRingConsumer(ShmRingControl* control, const char* data, size_t size)
      : control_(control), data_(data), size_(size) {}

  // The bytes readable now, as up to two spans (the second after the wrap);
  // empty if none. Corrupt (DATA_LOSS) if the producer's position is
  // impossible.
  absl::Status Peek(std::string_view* first, std::string_view* second);

  // Consumes `n` bytes (at most what Peek returned).
  void Consume(size_t n);

  // Announces that the consumer will sleep: true if it may (nothing
  // arrived), false if data arrived meanwhile (the flag is cleared again).
  bool PrepareToSleep();

  // Whether the producer last published from the CPU this thread runs on
  // now, both pinned to it (no hint is given or taken otherwise): then it
  // waits for this CPU, and looking for its data before
  // sleeping only keeps it off (with CFS, sched_yield to a peer that has run
  // less does not even let it run). A hint, read once: the producer writes
  // it.
  bool ProducerSharesCpu() const;

  // Whether the producer has said that it closed the connection.
  bool ProducerClosed() const {
    return control_->producer_closed.load(std::memory_order_acquire) != 0;
  }

 private:
  ShmRingControl* const control_;
  const char* const data_;
  const size_t size_;
  uint64_t position_ = 0;         // ours: the truth
  uint64_t cached_producer_ = 0;  // the producer's position, as last read
  uint32_t cpu_hint_ = 0;         // what we last stored as consumer_cpu
};

// Length-prefixed records (a u32 little-endian length, then the message) out
// of a ring's readable bytes. Every message is copied out of the ring into a
// buffer of the reader's own before it is handed over: the peer can write the
// ring at any time, so nothing may read it twice (a length checked in one
// read and used in the next). A message that wraps, or is larger than the
// ring and arrives in pieces, is gathered (into a buffer reserved up to
// 1 MiB and a frame header at first, then growing with what arrives, never
// to the announced length at once; kept for the next message up to 2 MiB).
// Every length is read once and checked against the limit before anything
// is gathered.
class ShmRecordReader {
 public:
  explicit ShmRecordReader(size_t max_message_size);

  // Takes what it can of the readable bytes `first` then `second` (as Peek
  // returned them), calling `on_message` for at most one whole message (a
  // view of the reader's own copy, valid only during the call). Returns how many bytes to Consume, or
  // RESOURCE_EXHAUSTED if a message announces more than the limit (then
  // announced() says how much): the connection must close.
  absl::StatusOr<size_t> Take(std::string_view first, std::string_view second,
                              absl::FunctionRef<void(std::string_view)> on_message);

  uint64_t announced() const { return length_; }

  // Whether a message is partly gathered (more of it is on its way).
  bool in_message() const { return !pending_.empty(); }

  // Drops a partly gathered message (and the spare buffer).
  void Clear() {
    pending_.clear();
    pending_.shrink_to_fit();
    loans_->DropSpare();
  }

  // Inside on_message: keeps the message delivered now where it lies, for
  // as long as the returned owner lives (Connection::KeepDeliveredMessage);
  // the reader gathers on into its spare buffer. Null for a message under
  // 64 KiB or under half its buffer, or while the other buffer is out.
  std::shared_ptr<const void> KeepDelivered();

 private:
  static size_t StringBytes(const std::string& buffer) { return buffer.capacity(); }
  // on_message(the message in pending_), and pending_ emptied for the next.
  void Deliver(absl::FunctionRef<void(std::string_view)> on_message);

  const size_t max_message_size_;
  bool delivering_ = false;  // on_message runs
  bool kept_ = false;        // and KeepDelivered took pending_ with the message
  const std::shared_ptr<BufferLoans<std::string, &ShmRecordReader::StringBytes>> loans_;
  std::string pending_;  // the prefix and the message, while gathered
  uint64_t length_ = 0;  // the message's announced length
};

}  // namespace ipcrpc::internal

#endif  // IPCRPC_TRANSPORTS_SHM_SHM_RING_H_
