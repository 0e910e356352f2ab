// A minimal io_uring for ipcrpc_bench's --uring_floor line: the raw
// ping-pong over a byte stream with each side's write and next read
// submitted, and waited for, in one io_uring_enter(2), the reader's read
// linked to a timeout at the call's deadline. It answers
// "what does a reader that must also wake for a deadline pay, at the fewest
// system calls Linux allows" (2 a round trip, raw's plain write + read 4,
// ipcrpc's poll + read 6). Raw system calls, because liburing is not one of
// the project's dependencies; nothing in the library uses this.
#ifndef IPCRPC_BENCH_RAW_URING_H_
#define IPCRPC_BENCH_RAW_URING_H_

#include <linux/io_uring.h>
#include <linux/time_types.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

namespace bench {

class RawUring {
 public:
  RawUring() = default;
  RawUring(const RawUring&) = delete;
  RawUring& operator=(const RawUring&) = delete;
  ~RawUring() {
    if (sq_ring_ != MAP_FAILED) munmap(sq_ring_, sq_ring_size_);
    if (sqes_ != MAP_FAILED) munmap(sqes_, sqes_size_);
    if (fd_ >= 0) close(fd_);
  }

  // Sets the ring up: 8 entries, one task submitting and completions run
  // when it waits (IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN),
  // or, with plain or where the kernel refuses those flags, a ring of the
  // default kind (completions run by task work as they come); flags() says
  // which it got. False, with error() saying why, where io_uring is refused
  // (a seccomp filter, kernel.io_uring_disabled, an old kernel).
  bool Init(bool plain = false) {
    io_uring_params params{};
    if (!plain) params.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    fd_ = static_cast<int>(syscall(__NR_io_uring_setup, 8, &params));
    if (fd_ < 0 && errno == EINVAL && params.flags != 0) {
      params = io_uring_params{};
      fd_ = static_cast<int>(syscall(__NR_io_uring_setup, 8, &params));
    }
    flags_ = params.flags;
    if (fd_ < 0) {
      error_ = std::string("io_uring_setup: ") + std::strerror(errno);
      return false;
    }
    // One mapping serves both rings (IORING_FEAT_SINGLE_MMAP, 5.4 on).
    sq_ring_size_ = std::max<size_t>(params.sq_off.array + params.sq_entries * sizeof(unsigned),
                                     params.cq_off.cqes + params.cq_entries * sizeof(io_uring_cqe));
    sqes_size_ = params.sq_entries * sizeof(io_uring_sqe);
    if (!(params.features & IORING_FEAT_SINGLE_MMAP)) {
      error_ = "io_uring: the kernel does not map both rings at once";
      return false;
    }
    sq_ring_ = mmap(nullptr, sq_ring_size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_,
                    IORING_OFF_SQ_RING);
    sqes_ = mmap(nullptr, sqes_size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_,
                 IORING_OFF_SQES);
    if (sq_ring_ == MAP_FAILED || sqes_ == MAP_FAILED) {
      error_ = std::string("io_uring mmap: ") + std::strerror(errno);
      return false;
    }
    char* ring = static_cast<char*>(sq_ring_);
    sq_tail_ = reinterpret_cast<unsigned*>(ring + params.sq_off.tail);
    sq_mask_ = *reinterpret_cast<unsigned*>(ring + params.sq_off.ring_mask);
    sq_array_ = reinterpret_cast<unsigned*>(ring + params.sq_off.array);
    cq_head_ = reinterpret_cast<unsigned*>(ring + params.cq_off.head);
    cq_tail_ = reinterpret_cast<unsigned*>(ring + params.cq_off.tail);
    cq_mask_ = *reinterpret_cast<unsigned*>(ring + params.cq_off.ring_mask);
    cqes_ = reinterpret_cast<io_uring_cqe*>(ring + params.cq_off.cqes);
    return true;
  }
  const std::string& error() const { return error_; }
  const char* flags() const { return flags_ != 0 ? "SINGLE_ISSUER|DEFER_TASKRUN" : "default"; }

  // Writes out_len bytes to out_fd (none: out_len 0), then reads in_len
  // bytes from in_fd, the read linked after the write (in a ping-pong the
  // answer cannot come before the whole question has gone) and, with
  // deadline_ns > 0, linked to a timeout at that CLOCK_MONOTONIC time (an
  // absolute deadline: a read cut short and sent on keeps it); both are
  // submitted at once and waited for in the same io_uring_enter: one system
  // call a round trip unless a write or read comes back short. A short
  // write fails the chain (the kernel cancels the read linked after it), so
  // waiting for every completion never waits for a read whose question was
  // not all sent. The write itself is not bounded: in a ping-pong the
  // stream has room for it. False on an error, an end of file or a read
  // that timed out; after false the ring may still hold requests, so it
  // must not be used again.
  bool WriteThenRead(int out_fd, const char* out, size_t out_len, int in_fd, char* in,
                     size_t in_len, int64_t deadline_ns) {
    size_t sent = 0, got = 0;
    const __kernel_timespec deadline{deadline_ns / 1'000'000'000, deadline_ns % 1'000'000'000};
    while (sent < out_len || got < in_len) {
      unsigned queued = 0;
      const bool writing = sent < out_len;
      if (writing) {
        Queue(IORING_OP_WRITE, out_fd, out + sent, out_len - sent, kWrite, IOSQE_IO_LINK);
        ++queued;
      }
      Queue(IORING_OP_READ, in_fd, in + got, in_len - got, kRead,
            deadline_ns > 0 ? IOSQE_IO_LINK : 0);
      ++queued;
      if (deadline_ns > 0) {
        Queue(IORING_OP_LINK_TIMEOUT, -1, &deadline, 1, kTimeout, 0, IORING_TIMEOUT_ABS);
        ++queued;
      }
      // Waits for every completion of the chain (a cancelled link's comes
      // too), so that nothing of this round is in flight when the next
      // round queues the rest. Only what the kernel took is waited for: it
      // may take fewer entries than queued (a request it cannot allocate),
      // and then returns at once, without the wait; the rest are offered
      // again.
      unsigned unsubmitted = queued, pending = 0;
      bool ok = true, write_cut_short = false, read_cancelled = false;
      while (unsubmitted > 0 || pending > 0) {
        const long taken = syscall(__NR_io_uring_enter, fd_, unsubmitted, pending + unsubmitted,
                                   IORING_ENTER_GETEVENTS, nullptr, 0);
        if (taken < 0) {
          if (errno != EINTR) return false;
        } else if (unsubmitted > 0) {
          unsubmitted -= static_cast<unsigned>(taken);
          pending += static_cast<unsigned>(taken);
          if (taken == 0) return false;  // the kernel takes nothing: give up
        }
        unsigned head = *cq_head_;
        while (head != std::atomic_ref<unsigned>(*cq_tail_).load(std::memory_order_acquire)) {
          const io_uring_cqe& cqe = cqes_[head & cq_mask_];
          --pending;
          if (cqe.user_data == kWrite) {
            if (cqe.res <= 0) {
              ok = false;
            } else {
              sent += static_cast<size_t>(cqe.res);
              write_cut_short = sent < out_len;
            }
          } else if (cqe.user_data == kRead) {
            if (cqe.res > 0) {
              got += static_cast<size_t>(cqe.res);
            } else if (cqe.res == -ECANCELED) {
              read_cancelled = true;  // by a short write, or by the timeout
            } else {
              ok = false;  // an error or an end of file
            }
          }
          ++head;
        }
        std::atomic_ref<unsigned>(*cq_head_).store(head, std::memory_order_release);
      }
      // A read cancelled though the write went whole: the deadline passed.
      if (!ok || (read_cancelled && !write_cut_short)) return false;
    }
    return true;
  }

 private:
  static constexpr uint64_t kWrite = 1, kRead = 2, kTimeout = 3;

  void Queue(uint8_t opcode, int fd, const void* addr, size_t len, uint64_t user_data,
             uint8_t flags, uint32_t timeout_flags = 0) {
    const unsigned tail = *sq_tail_;
    const unsigned index = tail & sq_mask_;
    io_uring_sqe& sqe = static_cast<io_uring_sqe*>(sqes_)[index];
    std::memset(&sqe, 0, sizeof(sqe));
    sqe.opcode = opcode;
    sqe.fd = fd;
    sqe.flags = flags;
    sqe.addr = reinterpret_cast<uint64_t>(addr);
    sqe.len = static_cast<uint32_t>(len);
    // A read or write at the file's position (a stream); a linked
    // timeout's offset must be 0.
    sqe.off = opcode == IORING_OP_LINK_TIMEOUT ? 0 : static_cast<uint64_t>(-1);
    sqe.user_data = user_data;
    sqe.timeout_flags = timeout_flags;
    sq_array_[index] = index;
    std::atomic_ref<unsigned>(*sq_tail_).store(tail + 1, std::memory_order_release);
  }

  int fd_ = -1;
  unsigned flags_ = 0;
  std::string error_;
  void* sq_ring_ = MAP_FAILED;
  size_t sq_ring_size_ = 0;
  void* sqes_ = MAP_FAILED;
  size_t sqes_size_ = 0;
  unsigned* sq_tail_ = nullptr;
  unsigned sq_mask_ = 0;
  unsigned* sq_array_ = nullptr;
  unsigned* cq_head_ = nullptr;
  unsigned* cq_tail_ = nullptr;
  unsigned cq_mask_ = 0;
  io_uring_cqe* cqes_ = nullptr;
};

}  // namespace bench

#endif  // IPCRPC_BENCH_RAW_URING_H_
