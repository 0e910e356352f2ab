// The memory an shm: connection shares: one sealed memfd that both sides
// map, a header page (magic, version, ring size, the two rings' control
// blocks) and then the two rings. Layout: docs/PROTOCOL.md ("shm:").
#ifndef IPCRPC_TRANSPORTS_SHM_SHM_REGION_H_
#define IPCRPC_TRANSPORTS_SHM_SHM_REGION_H_

#include <sys/mman.h>

#include <cstddef>
#include <memory>
#include <string_view>

#include "absl/status/statusor.h"
#include "transports/shm/shm_ring.h"

namespace ipcrpc::internal {

inline constexpr size_t kShmHeaderSize = 4096;   // header page: magic, sizes, ring controls
inline constexpr size_t kShmMinRingSize = 4096;
inline constexpr size_t kShmMaxRingSize = 64u << 20;
inline constexpr char kRegionMagic[4] = {'I', 'S', 'H', 'R'};
inline constexpr size_t kControlOffset[2] = {64, 256};  // c2s, s2c

// A mapped region, unmapped when the last user is gone.
struct Region {
  char* base = nullptr;
  size_t length = 0;
  size_t ring_size = 0;
  ~Region() {
    if (base != nullptr) ::munmap(base, length);
  }
  ShmRingControl* control(int ring) {
    return reinterpret_cast<ShmRingControl*>(base + kControlOffset[ring]);
  }
  char* data(int ring) { return base + kShmHeaderSize + ring * ring_size; }
};

// Maps a region of `ring_size` rings from `memfd`, checking what can be.
absl::StatusOr<std::shared_ptr<Region>> MapRegion(int memfd, size_t ring_size,
                                                  std::string_view what);

}  // namespace ipcrpc::internal

#endif  // IPCRPC_TRANSPORTS_SHM_SHM_REGION_H_
