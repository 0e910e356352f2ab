#include "base/copy.h"

#include <algorithm>
#include <cstdlib>
#include <new>

namespace ipcrpc::internal {

void AppendBytes(std::string* out, std::string_view bytes) {
  if (bytes.size() <= kCopyPiece) {
    out->append(bytes);
    return;
  }
  const size_t at = out->size();
  if (out->capacity() - at < bytes.size()) {
    // Grows as append would (at least doubling), so that a buffer filled
    // piece by piece is not copied again for each piece; staggered, so that
    // what is allocated after it is not at a short distance from it. (At
    // least twice the capacity: libstdc++ then reserves exactly that.)
    out->reserve(StaggeredCapacity(std::max(at + bytes.size(), 2 * out->capacity())));
  }
  if (!ShortCopyDistance(out->data() + at, bytes.data())) {
    out->append(bytes);
    return;
  }
  // Pieces below the threshold: append copies each with vector moves.
  for (size_t i = 0; i < bytes.size(); i += kCopyPiece) {
    out->append(bytes.substr(i, kCopyPiece));
  }
}

void AssignBytes(std::string* out, std::string_view bytes) {
  if (bytes.size() <= kCopyPiece) {
    out->assign(bytes);
    return;
  }
  out->clear();  // keeps the capacity
  AppendBytes(out, bytes);
}

std::string StringOf(std::string_view bytes) {
  std::string out;
  AssignBytes(&out, bytes);
  return out;
}

KernelBuffer::~KernelBuffer() { std::free(block_); }

KernelBuffer& KernelBuffer::operator=(KernelBuffer&& other) noexcept {
  if (this != &other) {
    std::free(block_);
    block_ = std::exchange(other.block_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

void KernelBuffer::Resize(size_t size, size_t keep) {
  keep = std::min({keep, size, size_});
  char* block = nullptr;
  if (size > 0) {
    constexpr size_t kPage = 4096;
    if (size > SIZE_MAX - kPageOffset - kPage) throw std::bad_alloc();
    // aligned_alloc wants a multiple of the alignment.
    const size_t bytes = (kPageOffset + size + kPage - 1) / kPage * kPage;
    block = static_cast<char*>(std::aligned_alloc(kPage, bytes));
    if (block == nullptr) throw std::bad_alloc();
    if (keep > 0) std::memcpy(block + kPageOffset, block_ + kPageOffset, keep);
  }
  std::free(block_);
  block_ = block;
  size_ = size;
}

}  // namespace ipcrpc::internal
