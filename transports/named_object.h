// Publishing a named object (a socket file, a FIFO) at a path, the same way
// for every transport:
//
// - it is created under a temporary name in the same directory, given its
//   mode, then hard-linked to PATH: link() fails if PATH exists, so the object
//   never exists at PATH with another mode and two servers never both win;
// - what is at PATH first decides: nothing → create; an object of our kind
//   that nobody serves (the transport's liveness probe says stale) → removed
//   and replaced; a live one → ALREADY_EXISTS; anything else → FAILED_PRECONDITION,
//   untouched;
// - on close, PATH is removed only if it is still the inode we created.
#ifndef IPCRPC_TRANSPORTS_NAMED_OBJECT_H_
#define IPCRPC_TRANSPORTS_NAMED_OBJECT_H_

#include <sys/stat.h>
#include <sys/types.h>

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/statusor.h"
#include "base/syscall.h"

namespace ipcrpc::internal {

struct NamedObjectKind {
  mode_t type;        // S_IFSOCK, S_IFIFO
  const char* noun;   // "socket", "FIFO": for messages
  // Is the object at `path` served? true: live; false: stale; error: cannot tell.
  std::function<absl::StatusOr<bool>(const std::string& path)> is_live;
  // Creates the object at `path` (a temporary name) and returns the
  // descriptor that serves it, if any.
  std::function<absl::StatusOr<UniqueFd>(const std::string& path)> create;
};

// The identity of a published object, to remove it only if it is still ours.
class PublishedObject {
 public:
  PublishedObject() = default;
  PublishedObject(std::string path, dev_t dev, ino_t ino) : path_(std::move(path)), id_({dev, ino}) {}
  // Unlinks the path if it is still our inode. Idempotent.
  void Remove();

 private:
  std::string path_;
  std::optional<std::pair<dev_t, ino_t>> id_;
};

// FAILED_PRECONDITION for an object (`noun` `name`) that `owner` owns and
// this process (its effective uid) does not: we never remove or replace it,
// however stale, and say who may.
absl::Status NotOursError(std::string_view what, std::string_view noun, std::string_view name,
                          uid_t owner);

// OK if nothing is at `path` (any more): a stale object of `kind` there that
// this process's euid owns is removed. ALREADY_EXISTS if a live one is there,
// FAILED_PRECONDITION if something else is, or one of another owner
// (untouched).
absl::Status ReclaimIfStale(const std::string& what, const std::string& path,
                            const NamedObjectKind& kind);

// Publishes an object of `kind` at `path` with `mode`; `what` names the
// endpoint in messages. Returns the descriptor `kind.create` made.
absl::StatusOr<std::pair<UniqueFd, PublishedObject>> PublishNamedObject(
    const std::string& what, const std::string& path, unsigned mode, const NamedObjectKind& kind,
    size_t max_path_length);

}  // namespace ipcrpc::internal

#endif  // IPCRPC_TRANSPORTS_NAMED_OBJECT_H_
