// A reader's two buffers, for Connection::KeepDeliveredMessage: the one it
// reads into, and one lent out with a large message (to a handler thread)
// that comes back, when its owner is done with it, as the reader's spare.
// At most one is out at a time, so a connection holds at most two.
#ifndef IPCRPC_TRANSPORTS_BUFFER_LOANS_H_
#define IPCRPC_TRANSPORTS_BUFFER_LOANS_H_

#include <cstddef>
#include <memory>
#include <new>
#include <optional>
#include <utility>

#include "base/mutex.h"

namespace ipcrpc::internal {

// The least a message must be for a reader to lend its buffer with it
// (StreamConnection::KeepDeliveredMessage, ShmRecordReader::KeepDelivered):
// below, a copy costs less than giving the buffer away (measured:
// docs/PERFORMANCE.md).
inline constexpr size_t kLendMessageMin = 64 * 1024;

// Whether a reader lends its buffer of `capacity` bytes with a message of
// `message` bytes, whose record (the message and its length prefix) fills
// `record` bytes of it: a large message that fills half the buffer at least,
// so that what a lent buffer holds beyond its message stays within the
// message's size.
inline bool WorthLending(size_t message, size_t record, size_t capacity) {
  return message >= kLendMessageMin && 2 * record >= capacity;
}

// `Buffer` is movable, empty when default-made or moved from; `bytes(b)`
// says how much memory it holds.
template <typename Buffer, size_t (*bytes)(const Buffer&)>
class BufferLoans : public std::enable_shared_from_this<BufferLoans<Buffer, bytes>> {
 public:
  // A lent buffer of up to `keep_bytes` comes back as the spare; a larger
  // one is freed.
  explicit BufferLoans(size_t keep_bytes) : keep_bytes_(keep_bytes) {}

  // The spare to read on into (an empty Buffer if there is none yet), or
  // nothing if a buffer is out: then the message is copied instead. After
  // a spare is taken, exactly one of Lend or Untake follows.
  std::optional<Buffer> TakeSpare() {
    MutexLock lock(&mu_);
    if (lent_) return std::nullopt;
    lent_ = true;
    return std::move(spare_);
  }

  // The reader could not go on with `spare` (no memory to grow it): back it
  // goes, and nothing is out.
  void Untake(Buffer spare) {
    MutexLock lock(&mu_);
    lent_ = false;
    spare_ = std::move(spare);
  }

  // Lends *current, which holds the kept message, and puts `next` (the
  // spare TakeSpare gave, made ready by the reader) in its place; returns
  // the owner of the lent buffer: while it lives the buffer is untouched;
  // when it goes (on any thread) the buffer is the spare, unless the reader
  // is gone or released its state. Null if there is no memory for the
  // owner: then *current is untouched and `next` is the spare again.
  std::shared_ptr<const void> Lend(Buffer* current, Buffer next) {
    std::shared_ptr<Loan> loan;
    try {
      loan = std::make_shared<Loan>(this->weak_from_this());
    } catch (const std::bad_alloc&) {
      Untake(std::move(next));
      return nullptr;
    }
    loan->buffer_ = std::move(*current);
    *current = std::move(next);
    return loan;
  }

  // Frees the spare, and any buffer that comes back later (the reader's
  // state is released).
  void DropSpare() {
    Buffer dropped;
    MutexLock lock(&mu_);
    released_ = true;
    dropped = std::move(spare_);
  }

 private:
  class Loan {
   public:
    explicit Loan(std::weak_ptr<BufferLoans> home) : home_(std::move(home)) {}
    ~Loan() {
      std::shared_ptr<BufferLoans> home = home_.lock();
      if (home == nullptr) return;
      MutexLock lock(&home->mu_);
      home->lent_ = false;
      if (!home->released_ && bytes(buffer_) <= home->keep_bytes_) {
        home->spare_ = std::move(buffer_);
      }
    }
    Loan(const Loan&) = delete;
    Loan& operator=(const Loan&) = delete;

    Buffer buffer_;  // (if not given back, freed after the lock is released)

   private:
    std::weak_ptr<BufferLoans> home_;
  };

  const size_t keep_bytes_;
  Mutex mu_;
  Buffer spare_ ABSL_GUARDED_BY(mu_);
  bool lent_ ABSL_GUARDED_BY(mu_) = false;
  bool released_ ABSL_GUARDED_BY(mu_) = false;  // DropSpare was called
};

}  // namespace ipcrpc::internal

#endif  // IPCRPC_TRANSPORTS_BUFFER_LOANS_H_
