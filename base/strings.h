// Debian's abseil is built with its own absl::string_view (not an alias of
// std::string_view); these convert between the two without copying.
#ifndef IPCRPC_BASE_STRINGS_H_
#define IPCRPC_BASE_STRINGS_H_

#include <string_view>

#include "absl/strings/string_view.h"

namespace ipcrpc::internal {

inline absl::string_view Av(std::string_view s) { return absl::string_view(s.data(), s.size()); }
inline std::string_view Sv(absl::string_view s) { return std::string_view(s.data(), s.size()); }

}  // namespace ipcrpc::internal

#endif  // IPCRPC_BASE_STRINGS_H_
