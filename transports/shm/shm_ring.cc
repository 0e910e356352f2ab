#include "transports/shm/shm_ring.h"

#include <algorithm>
#include <cstring>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace ipcrpc::internal {

absl::StatusOr<size_t> ShmRingProducer::Write(std::string_view bytes) {
  size_t free = size_ - (position_ - cached_consumer_);
  if (free < bytes.size()) {
    // acquire: the consumer's reads of that space happened before.
    const uint64_t consumer = control_->consumer_position.load(std::memory_order_acquire);
    if (consumer > position_ || position_ - consumer > size_ || consumer < cached_consumer_) {
      return absl::DataLossError(absl::StrCat("shm ring: impossible consumer position ",
                                              consumer, " (ours ", position_, ")"));
    }
    cached_consumer_ = consumer;
    free = size_ - (position_ - cached_consumer_);
  }
  const size_t n = std::min(free, bytes.size());
  const size_t at = position_ & (size_ - 1);
  const size_t first = std::min(n, size_ - at);
  std::memcpy(data_ + at, bytes.data(), first);
  std::memcpy(data_, bytes.data() + first, n - first);
  position_ += n;
  return n;
}

bool ShmRingProducer::Publish() {
  if (published_ == position_) return false;
  published_ = position_;
  // seq_cst (so also release: the data written above is visible to whoever
  // acquires this): in the single total order of seq_cst operations, this
  // store comes before the load of the flag below; the consumer does the
  // mirror image in PrepareToSleep, so one of the two sees the other.
  control_->producer_position.store(position_, std::memory_order_seq_cst);
  if (control_->consumer_sleeping.load(std::memory_order_seq_cst) == 0) return false;
  // Whoever clears the flag rings, once.
  return control_->consumer_sleeping.exchange(0, std::memory_order_relaxed) == 1;
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

}  // namespace ipcrpc::internal
