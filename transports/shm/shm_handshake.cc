#include "transports/shm/shm_handshake.h"

#include <cstddef>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace ipcrpc::internal {

socklen_t AbstractAddress(const std::string& name, sockaddr_un* addr) {
  std::memset(addr, 0, sizeof(*addr));
  addr->sun_family = AF_UNIX;
  const std::string full = "ipcrpc-shm-" + name;
  std::memcpy(addr->sun_path + 1, full.data(), full.size());
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + full.size());
}

absl::Status ValidateShmName(const Endpoint& endpoint) {
  const std::string& name = endpoint.address;
  if (name.empty() || name.find('/') != std::string::npos ||
      name.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "endpoint '", endpoint.text, "': shm: needs a name without '/' (e.g. shm:calc)"));
  }
  if (name.size() > 90) {
    return absl::InvalidArgumentError(
        absl::StrCat("endpoint '", endpoint.text, "': the name is over 90 bytes"));
  }
  return absl::OkStatus();
}

}  // namespace ipcrpc::internal
