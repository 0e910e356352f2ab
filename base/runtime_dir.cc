#include "base/runtime_dir.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
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
  if (xdg != nullptr && xdg[0] == '/') {
    std::string dir = absl::StrCat(xdg, "/ipcrpc");
    IPCRPC_RETURN_IF_ERROR(EnsurePrivateDirectory(dir));
    return dir;
  }
  // /tmp is everybody's: another user may have taken our name there first
  // (to deny us service, or to watch what we put in it). Then the home
  // directory, which only we can write, serves instead. Every process of
  // ours follows the same rule, so all find the same directory.
  std::string dir = absl::StrCat("/tmp/ipcrpc-", ::geteuid());
  absl::Status in_tmp = EnsurePrivateDirectory(dir);
  if (in_tmp.ok()) return dir;
  const char* home = std::getenv("HOME");
  struct stat st;
  if (home == nullptr || home[0] != '/' || ::stat(home, &st) < 0 || !S_ISDIR(st.st_mode) ||
      st.st_uid != ::geteuid()) {
    return in_tmp;
  }
  std::string fallback = absl::StrCat(home, "/.ipcrpc-runtime");
  absl::Status in_home = EnsurePrivateDirectory(fallback);
  if (!in_home.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat(in_tmp.message(), "; and ", in_home.message()));
  }
  return fallback;
}

}  // namespace ipcrpc::internal
