// Byte copies for large messages that stay fast where the C library's own
// would not.
//
// glibc 2.36 (Debian 12) copies blocks of 2112 bytes to 512 KiB with
// `rep movsb` on a CPU that reports "fast short rep mov" (FSRM). On AMD
// EPYC (Zen), as on the development VM, that instruction runs at 1.7 GB/s
// instead of ~30 when the destination lies 1 to 31 bytes past the source
// modulo 4 KiB (measured: 34-39 us for 64 KiB against 1.5-2.4 us at any
// other distance; glibc bug 30994). Buffers that a message passes through
// often sit at exactly such distances (two heap blocks, and a header of a
// few bytes between them), and they do so on every call. glibc's own guard
// against short distances (Avoid_Short_Distance_REP_MOVSB) is set for Intel
// CPUs only. These helpers keep the library's own copies clear of it: at
// such a distance they copy in pieces below the threshold, which glibc
// copies with vector moves (11 GB/s there).
// docs/PERFORMANCE.md has the measurement.
#ifndef IPCRPC_BASE_COPY_H_
#define IPCRPC_BASE_COPY_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>

namespace ipcrpc::internal {

// Below glibc's default x86_rep_movsb_threshold (2112 bytes).
inline constexpr size_t kCopyPiece = 2048;

// True where `rep movsb` from `src` to `dst` may run slowly: `dst` is 1 to
// 63 bytes past `src`, modulo 4 KiB (31 measured; 63 leaves a margin).
inline bool ShortCopyDistance(const void* dst, const void* src) {
  const uintptr_t d =
      (reinterpret_cast<uintptr_t>(dst) - reinterpret_cast<uintptr_t>(src)) & 4095u;
  return d != 0 && d < 64;
}

// A string capacity of at least `n` whose heap block ends 2 KiB into a
// page relative to where it starts: the block glibc's malloc carves next,
// after it, then starts 2 KiB (not 16 bytes) further into its page, so a
// copy from this buffer into that block (a response parsed into a fresh
// message) is not at a short distance. glibc's malloc(c + 1) (a string of
// capacity c) takes a chunk of c + 1 + 8 bytes rounded up to 16, and the
// next block's bytes start that far on. Below 4 KiB (and absurdly large):
// `n`.
constexpr size_t StaggeredCapacity(size_t n) {
  if (n < 4096 || n > (size_t{1} << 60)) return n;
  const size_t chunk = (n + 1 + 8 + 15) & ~size_t{15};
  const size_t pages = (chunk - 2048 + 4095) / 4096;
  return pages * 4096 + 2048 - 8 - 1;
}

// memcpy(dst, src, n); the ranges must not overlap.
inline void CopyBytes(char* dst, const char* src, size_t n) {
  if (n > kCopyPiece && ShortCopyDistance(dst, src)) {
    for (; n > kCopyPiece; n -= kCopyPiece, dst += kCopyPiece, src += kCopyPiece) {
      std::memcpy(dst, src, kCopyPiece);
    }
  }
  // (Never memcpy from an empty view: its data() may be null.)
  if (n > 0) std::memcpy(dst, src, n);
}

// A heap buffer for the kernel to copy messages into and out of (read(2),
// mq_receive, mq_send): its bytes start kPageOffset bytes into a page.
//
// Why: the kernel copies to and from user memory with `rep movsb` on the
// same CPUs, and meets the same slow distance (above). A pipe's pages and
// a Unix socket's large buffers start at a page, so a read into a buffer
// whose bytes start 1-63 bytes into a page (where glibc puts every block
// it maps, 16 bytes in) ran 3-4x slower: 152 us instead of 36 for 256 KiB
// from a pipe; mq_receive copies from 48 bytes into a page and mq_send
// copies to there, so a buffer 32-80 bytes into a page was slow for one or
// the other. 128 bytes into a page is clear of all of them.
// docs/PERFORMANCE.md.
//
// Unlike std::vector<char>, growing it does not zero the new bytes.
class KernelBuffer {
 public:
  static constexpr size_t kPageOffset = 128;

  KernelBuffer() = default;
  explicit KernelBuffer(size_t size) { Resize(size, 0); }
  ~KernelBuffer();
  KernelBuffer(KernelBuffer&& other) noexcept
      : block_(std::exchange(other.block_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  KernelBuffer& operator=(KernelBuffer&& other) noexcept;
  KernelBuffer(const KernelBuffer&) = delete;
  KernelBuffer& operator=(const KernelBuffer&) = delete;

  char* data() { return block_ == nullptr ? nullptr : block_ + kPageOffset; }
  const char* data() const { return block_ == nullptr ? nullptr : block_ + kPageOffset; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

  // Makes the buffer `size` bytes long in a new block (none if 0), keeping
  // its first `keep` bytes (at most both sizes); the other bytes are
  // unspecified. Throws std::bad_alloc as std::vector would.
  void Resize(size_t size, size_t keep);

 private:
  char* block_ = nullptr;
  size_t size_ = 0;
};

// out->append(bytes) and out->assign(bytes) through CopyBytes. `bytes` must
// not lie inside *out.
void AppendBytes(std::string* out, std::string_view bytes);
void AssignBytes(std::string* out, std::string_view bytes);
// std::string(bytes), through CopyBytes.
std::string StringOf(std::string_view bytes);

}  // namespace ipcrpc::internal

#endif  // IPCRPC_BASE_COPY_H_
