#include "transports/named_object.h"

#include <unistd.h>

#include <atomic>

#include "absl/strings/str_cat.h"
#include "base/strings.h"
#include "base/logging.h"
#include "base/status_macros.h"

namespace ipcrpc::internal {

absl::Status NotOursError(std::string_view what, std::string_view noun, std::string_view name,
                          uid_t owner) {
  return absl::FailedPreconditionError(absl::StrCat(
      Av(what), ": ", Av(noun), " ", Av(name), " belongs to uid ", owner, ", not to this process (uid ",
      ::geteuid(), "); leaving it (its owner or an administrator may remove it)"));
}

absl::Status ReclaimIfStale(const std::string& what, const std::string& path,
                            const NamedObjectKind& kind) {
  struct stat st;
  if (::lstat(path.c_str(), &st) < 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return ErrnoStatus(errno, "lstat", what);
  }
  if ((st.st_mode & S_IFMT) != kind.type) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, ": ", path, " exists and is not a ", kind.noun, "; refusing to replace it"));
  }
  IPCRPC_ASSIGN_OR_RETURN(bool live, kind.is_live(path));
  if (live) {
    return absl::AlreadyExistsError(absl::StrCat(what, ": a live server is using ", path));
  }
  // Stale, but not ours to remove (the same holds for root: another uid's
  // object is never deleted behind its back).
  if (st.st_uid != ::geteuid()) return NotOursError(what, kind.noun, path, st.st_uid);
  IPCRPC_LOG(INFO) << what << ": reclaiming stale " << kind.noun << " " << path;
  if (::unlink(path.c_str()) < 0 && errno != ENOENT) return ErrnoStatus(errno, "unlink", what);
  return absl::OkStatus();
}

void PublishedObject::Remove() {
  if (!id_.has_value()) return;
  struct stat st;
  if (::lstat(path_.c_str(), &st) == 0 && st.st_dev == id_->first && st.st_ino == id_->second) {
    ::unlink(path_.c_str());
  }
  id_.reset();
}

absl::StatusOr<std::pair<UniqueFd, PublishedObject>> PublishNamedObject(
    const std::string& what, const std::string& path, unsigned mode, const NamedObjectKind& kind,
    size_t max_path_length) {
  static std::atomic<unsigned> counter{0};
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "" : path.substr(0, slash + 1);
  for (int attempt = 0; attempt < 5; ++attempt) {
    IPCRPC_RETURN_IF_ERROR(ReclaimIfStale(what, path, kind));
    // Unpredictable, so that nobody can take it first to make us fail; a
    // name that is taken all the same is tried again with another.
    std::string temp = absl::StrCat(dir, ".ipcrpc-", ::getpid(), "-", counter.fetch_add(1), "-",
                                    absl::Hex(RandomU64() >> 16, absl::kZeroPad12), ".tmp");
    // Without a temporary name (PATH's directory leaves no room for one), the
    // object exists at PATH with the umask's mode until the chmod below.
    const bool via_temp = temp.size() <= max_path_length;
    const std::string& create_at = via_temp ? temp : path;
    auto created = kind.create(create_at);
    if (!created.ok()) {
      // Someone came first (to PATH, or to our temporary name): look again.
      if (absl::IsAlreadyExists(created.status())) continue;
      return created.status();
    }
    if (::chmod(create_at.c_str(), mode) < 0) {
      absl::Status status = ErrnoStatus(errno, "chmod", what);
      ::unlink(create_at.c_str());
      return status;
    }
    if (via_temp) {
      const int linked = ::link(temp.c_str(), path.c_str());
      const int link_errno = errno;
      ::unlink(temp.c_str());
      if (linked < 0) {
        if (link_errno == EEXIST) continue;  // someone came first: look again
        return ErrnoStatus(link_errno, "link", what);
      }
    }
    struct stat st;
    if (::lstat(path.c_str(), &st) < 0) return ErrnoStatus(errno, "lstat", what);
    return std::make_pair(*std::move(created), PublishedObject(path, st.st_dev, st.st_ino));
  }
  return absl::AlreadyExistsError(absl::StrCat(what, ": another server keeps taking ", path));
}

}  // namespace ipcrpc::internal
