#include "transports/runtime_dir.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "base/syscall.h"

namespace ipcrpc::internal {

absl::Status EnsurePrivateDirectory(const std::string& path) {
  if (::mkdir(path.c_str(), 0700) < 0 && errno != EEXIST) {
    return ErrnoStatus(errno, "mkdir", path);
  }
  struct stat st;
  if (::lstat(path.c_str(), &st) < 0) return ErrnoStatus(errno, "lstat", path);
  if (!S_ISDIR(st.st_mode) || st.st_uid != ::geteuid() || (st.st_mode & 077) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "runtime directory ", path,
        " is not a directory owned by this user with mode 0700; remove it or set XDG_RUNTIME_DIR"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> RuntimeDirectory() {
  const char* xdg = std::getenv("XDG_RUNTIME_DIR");
  std::string dir = (xdg != nullptr && xdg[0] == '/')
                        ? absl::StrCat(xdg, "/ipcrpc")
                        : absl::StrCat("/tmp/ipcrpc-", ::geteuid());
  absl::Status status = EnsurePrivateDirectory(dir);
  if (!status.ok()) return status;
  return dir;
}

}  // namespace ipcrpc::internal
