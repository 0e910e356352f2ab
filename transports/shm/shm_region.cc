#include "transports/shm/shm_region.h"

#include <cerrno>

#include "base/syscall.h"

namespace ipcrpc::internal {

absl::StatusOr<std::shared_ptr<Region>> MapRegion(int memfd, size_t ring_size,
                                                  std::string_view what) {
  auto region = std::make_shared<Region>();
  region->ring_size = ring_size;
  region->length = kShmHeaderSize + 2 * ring_size;
  void* base = ::mmap(nullptr, region->length, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  if (base == MAP_FAILED) return ErrnoStatus(errno, "mmap", what);
  region->base = static_cast<char*>(base);
  return region;
}

}  // namespace ipcrpc::internal
