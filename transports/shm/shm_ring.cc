#include "transports/shm/shm_ring.h"

#include <sched.h>

#include <algorithm>
#include <cstring>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "base/copy.h"
#include "base/little_endian.h"

namespace ipcrpc::internal {
namespace {

// A gathered message's buffer: reserved up to this at first (a 1 MiB
// message and its frame's header fit), then grown with what arrives, at
// most doubling and never to more than twice the announced length (the size
// never past it); kept between messages
// up to kKeptGatherBytes, so that a connection carrying large messages does
// not fault in fresh pages for each (measured: a 1 MiB call over shm: spent
// most of its time in page faults, two thirds of them in this buffer).
constexpr size_t kFirstGatherReserve = (1u << 20) + (64u << 10);
// Twice the first reserve (std::string's reserve rounds a request below
// twice the capacity up to twice it), staggered as AppendBytes grows it: any
// message up to there is kept.
constexpr size_t kKeptGatherBytes = StaggeredCapacity(2 * kFirstGatherReserve);

// Whether this thread may run on one CPU only (pinned, a cpuset of one, a
// one-CPU machine): then two peers found on one CPU stay there. Where the
// scheduler may move them, no hint is given or acted on: peers that sleep
// on each other instead of looking are kept together by its wake-up
// affinity (measured unpinned, 64 KiB: 46-55 us a call became 56-120 us),
// while peers that look for each other spread over the CPUs. Asked of the
// kernel once every 4096 uses per thread. (A kernel of more than 1024 CPUs
// refuses a cpu_set_t: then no hints, as if unpinned.)
bool RunsOnOneCpu() {
  thread_local uint32_t uses = 0;
  thread_local bool one = false;
  if (uses++ % 4096 == 0) {
    cpu_set_t allowed;
    one = ::sched_getaffinity(0, sizeof(allowed), &allowed) == 0 && CPU_COUNT(&allowed) == 1;
  }
  return one;
}

// This thread's CPU as a hint, plus one; 0 (no hint) unless it may run on
// that CPU only. glibc reads the CPU from the thread's rseq area: no system
// call.
uint32_t CpuHint() {
  if (!RunsOnOneCpu()) return 0;
  const int cpu = ::sched_getcpu();
  return cpu >= 0 ? static_cast<uint32_t>(cpu) + 1 : 0;
}

}  // namespace

absl::StatusOr<size_t> ShmRingProducer::Room(size_t wanted) {
  size_t free = size_ - (position_ - cached_consumer_);
  if (free < wanted) {
    // acquire: the consumer's reads of that space happened before.
    const uint64_t consumer = control_->consumer_position.load(std::memory_order_acquire);
    if (consumer > position_ || position_ - consumer > size_ || consumer < cached_consumer_) {
      return absl::DataLossError(absl::StrCat("shm ring: impossible consumer position ",
                                              consumer, " (ours ", position_, ")"));
    }
    cached_consumer_ = consumer;
    free = size_ - (position_ - cached_consumer_);
  }
  return free;
}

absl::StatusOr<size_t> ShmRingProducer::Write(std::string_view bytes) {
  size_t written = 0;
  while (written < bytes.size()) {
    absl::StatusOr<absl::Span<char>> room = Reserve(bytes.size() - written);
    if (!room.ok()) return room.status();
    if (room->empty()) break;
    CopyBytes(room->data(), bytes.data() + written, room->size());
    Commit(room->size());
    written += room->size();
  }
  return written;
}

absl::StatusOr<absl::Span<char>> ShmRingProducer::Reserve(size_t max) {
  const size_t at = position_ & (size_ - 1);
  const size_t wanted = std::min(max, size_ - at);
  absl::StatusOr<size_t> free = Room(wanted);
  if (!free.ok()) return free.status();
  return absl::Span<char>(data_ + at, std::min(*free, wanted));
}

bool ShmRingProducer::Publish() {
  if (published_ == position_) return false;
  published_ = position_;
  // seq_cst (so also release: the data written above is visible to whoever
  // acquires this): in the single total order of seq_cst operations, this
  // store comes before the load of the flag below; the consumer does the
  // mirror image in PrepareToSleep, so one of the two sees the other.
  control_->producer_position.store(position_, std::memory_order_seq_cst);
  if (const uint32_t cpu = CpuHint(); cpu != cpu_hint_) {
    cpu_hint_ = cpu;
    control_->producer_cpu.store(cpu, std::memory_order_relaxed);
  }
  if (control_->consumer_sleeping.load(std::memory_order_seq_cst) == 0) return false;
  // Whoever clears the flag rings, once.
  return control_->consumer_sleeping.exchange(0, std::memory_order_relaxed) == 1;
}

bool ShmRingProducer::ConsumerSharesCpu() const {
  const uint32_t hint = control_->consumer_cpu.load(std::memory_order_relaxed);
  return hint != 0 && hint == CpuHint();
}

bool ShmRingConsumer::ProducerSharesCpu() const {
  const uint32_t hint = control_->producer_cpu.load(std::memory_order_relaxed);
  return hint != 0 && hint == CpuHint();
}

absl::Status ShmRingConsumer::Peek(std::string_view* first, std::string_view* second) {
  *first = {};
  *second = {};
  if (cached_producer_ == position_) {
    // acquire: the producer's data writes happened before its store.
    const uint64_t producer = control_->producer_position.load(std::memory_order_acquire);
    if (producer < position_ || producer - position_ > size_) {
      return absl::DataLossError(absl::StrCat("shm ring: impossible producer position ",
                                              producer, " (ours ", position_, ")"));
    }
    cached_producer_ = producer;
  }
  const size_t available = cached_producer_ - position_;
  if (available == 0) return absl::OkStatus();
  const size_t at = position_ & (size_ - 1);
  const size_t head = std::min(available, size_ - at);
  *first = std::string_view(data_ + at, head);
  if (available > head) *second = std::string_view(data_, available - head);
  return absl::OkStatus();
}

void ShmRingConsumer::Consume(size_t n) {
  position_ += n;
  // release: our reads of those bytes happen before the producer reuses them.
  control_->consumer_position.store(position_, std::memory_order_release);
  if (const uint32_t cpu = CpuHint(); cpu != cpu_hint_) {
    cpu_hint_ = cpu;
    control_->consumer_cpu.store(cpu, std::memory_order_relaxed);
  }
}

bool ShmRingConsumer::PrepareToSleep() {
  // seq_cst store then seq_cst load (the mirror image of Publish): no lost
  // wake-up.
  control_->consumer_sleeping.store(1, std::memory_order_seq_cst);
  const uint64_t producer = control_->producer_position.load(std::memory_order_seq_cst);
  if (producer == position_) return true;
  // Data came: stay awake. If the producer cleared the flag first, it rang
  // (or is ringing) the doorbell: that spare wake-up finds nothing and
  // sleeps again.
  control_->consumer_sleeping.exchange(0, std::memory_order_relaxed);
  return false;
}

ShmRecordReader::ShmRecordReader(size_t max_message_size)
    : max_message_size_(max_message_size),
      loans_(std::make_shared<BufferLoans<std::string, &ShmRecordReader::StringBytes>>(
          kKeptGatherBytes)) {}

void ShmRecordReader::Deliver(absl::FunctionRef<void(std::string_view)> on_message) {
  delivering_ = true;
  on_message(std::string_view(pending_).substr(4));
  delivering_ = false;
  kept_ = false;  // (if it was, pending_ is the spare now)
  pending_.clear();
}

std::shared_ptr<const void> ShmRecordReader::KeepDelivered() {
  if (!delivering_ || kept_) return nullptr;
  if (!WorthLending(pending_.size() - 4, pending_.size(), pending_.capacity())) return nullptr;
  std::optional<std::string> next = loans_->TakeSpare();
  if (!next.has_value()) return nullptr;  // the other buffer is still out
  next->clear();
  std::shared_ptr<const void> owner = loans_->Lend(&pending_, std::move(*next));
  if (owner == nullptr) return nullptr;  // copied instead; nothing moved
  kept_ = true;
  return owner;
}

absl::StatusOr<size_t> ShmRecordReader::Take(
    std::string_view first, std::string_view second,
    absl::FunctionRef<void(std::string_view)> on_message) {
  auto length_at = [](const char* p) { return GetLe(p, 4); };
  if (pending_.empty() && first.size() >= 4) {
    // The common case: the whole message lies contiguous in the ring.
    length_ = length_at(first.data());
    if (length_ > max_message_size_) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "message of ", length_, " bytes exceeds max_message_size ", max_message_size_));
    }
    if (first.size() >= 4 + length_) {
      // Copied out before anything looks at it: the ring is the peer's to
      // write, and a decoder that read a length there and then the bytes it
      // counts could see two different values (docs/PROTOCOL.md, "What each
      // side trusts"). The buffer keeps its capacity, so a warm call does
      // not allocate.
      AssignBytes(&pending_, first.substr(0, 4 + length_));
      Deliver(on_message);
      if (pending_.capacity() > kKeptGatherBytes) pending_.shrink_to_fit();
      return 4 + length_;
    }
  }
  // Otherwise gather the prefix, then the message.
  const size_t want = pending_.size() < 4 ? 4 - pending_.size() : 4 + length_ - pending_.size();
  size_t took = 0;
  for (std::string_view span : {first, second}) {
    const size_t n = std::min(want - took, span.size());
    if (pending_.size() >= 4 && pending_.size() + n > pending_.capacity()) {
      pending_.reserve(StaggeredCapacity(std::min<uint64_t>(
          4 + length_, std::max(pending_.size() + n, 2 * pending_.capacity()))));
    }
    AppendBytes(&pending_, span.substr(0, n));
    took += n;
    if (took == want) break;
  }
  if (pending_.size() == 4) {
    length_ = length_at(pending_.data());
    if (length_ > max_message_size_) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "message of ", length_, " bytes exceeds max_message_size ", max_message_size_));
    }
    pending_.reserve(StaggeredCapacity(std::min<uint64_t>(4 + length_, kFirstGatherReserve)));
  }
  if (pending_.size() >= 4 && pending_.size() == 4 + length_) {
    Deliver(on_message);
    if (pending_.capacity() > kKeptGatherBytes) pending_.shrink_to_fit();
  }
  return took;
}

}  // namespace ipcrpc::internal
