// The per-user runtime directory where transports put private objects:
// $XDG_RUNTIME_DIR/ipcrpc, else /tmp/ipcrpc-<uid>, else (if that name is
// another user's, or not private) $HOME/.ipcrpc-runtime. Created 0700 if
// missing; refused if it exists but is not a directory owned by us with no
// access for others (someone could otherwise watch or replace what we put
// there).
#ifndef IPCRPC_BASE_RUNTIME_DIR_H_
#define IPCRPC_BASE_RUNTIME_DIR_H_

#include <string>

#include "absl/status/statusor.h"

namespace ipcrpc::internal {

absl::StatusOr<std::string> RuntimeDirectory();

// Creates `path` 0700 if missing; FAILED_PRECONDITION if it is not a
// directory owned by us that others cannot reach.
absl::Status EnsurePrivateDirectory(const std::string& path);

}  // namespace ipcrpc::internal

#endif  // IPCRPC_BASE_RUNTIME_DIR_H_
