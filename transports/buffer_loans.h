// A reader's two buffers, for Connection::KeepDeliveredMessage: the one it
// reads into, and one lent out with a large message (to a handler thread)
// that comes back, when its owner is done with it, as the reader's spare.
// At most one is out at a time, so a connection holds at most two.
#ifndef IPCRPC_TRANSPORTS_BUFFER_LOANS_H_
#define IPCRPC_TRANSPORTS_BUFFER_LOANS_H_

#include <cstddef>
#include <memory>
#include <optional>
#include <utility>

#include "base/mutex.h"

namespace ipcrpc::internal {

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

  // The owner of `buffer`, which holds the kept message: while it lives the
  // buffer is untouched; when it goes (on any thread) the buffer is the
  // spare, unless the reader is gone.
  std::shared_ptr<const void> Lend(Buffer buffer) {
    return std::make_shared<Loan>(std::move(buffer), this->weak_from_this());
  }

  // Frees the spare (the reader's state is released).
  void DropSpare() {
    Buffer dropped;
    MutexLock lock(&mu_);
    dropped = std::move(spare_);
  }

 private:
  class Loan {
   public:
    Loan(Buffer buffer, std::weak_ptr<BufferLoans> home)
        : buffer_(std::move(buffer)), home_(std::move(home)) {}
    ~Loan() {
      std::shared_ptr<BufferLoans> home = home_.lock();
      if (home == nullptr) return;
      MutexLock lock(&home->mu_);
      home->lent_ = false;
      if (bytes(buffer_) <= home->keep_bytes_) home->spare_ = std::move(buffer_);
    }
    Loan(const Loan&) = delete;
    Loan& operator=(const Loan&) = delete;

   private:
    Buffer buffer_;  // (if not given back, freed after the lock is released)
    std::weak_ptr<BufferLoans> home_;
  };

  const size_t keep_bytes_;
  Mutex mu_;
  Buffer spare_ ABSL_GUARDED_BY(mu_);
  bool lent_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace ipcrpc::internal

#endif  // IPCRPC_TRANSPORTS_BUFFER_LOANS_H_
