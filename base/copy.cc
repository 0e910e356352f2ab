#include "base/copy.h"

#include <algorithm>

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

}  // namespace ipcrpc::internal
