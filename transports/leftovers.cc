#include "transports/leftovers.h"

#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cerrno>
#include <memory>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/status_macros.h"
#include "base/strings.h"
#include "base/syscall.h"
#include "transports/fifo/fifo_transport.h"
#include "transports/mq/mq_liveness.h"
#include "transports/named_object.h"
#include "base/runtime_dir.h"
#include "transports/transport.h"
#include "transports/unix/unix_transport.h"

namespace ipcrpc::internal {
namespace {

// A socket file or FIFO at `path`: stale if it is of `type` and `is_live`
// says nobody serves it.
absl::StatusOr<std::optional<StaleObject>> FindStaleFile(
    const std::string& endpoint, const std::string& path, mode_t type, const char* noun,
    absl::StatusOr<bool> (*is_live)(const std::string&)) {
  struct stat st;
  if (::lstat(path.c_str(), &st) < 0) {
    if (errno == ENOENT) return std::nullopt;
    return ErrnoStatus(errno, "lstat", path);
  }
  if ((st.st_mode & S_IFMT) != type || st.st_uid != ::geteuid()) return std::nullopt;
  IPCRPC_ASSIGN_OR_RETURN(bool live, is_live(path));
  if (live) return std::nullopt;
  StaleObject object;
  object.kind = noun;
  object.name = path;
  object.reason = absl::StrCat("nobody serves ", endpoint);
  object.remove = [endpoint, path, type, noun, is_live]() -> absl::Status {
    NamedObjectKind kind;
    kind.type = type;
    kind.noun = noun;
    kind.is_live = is_live;
    return ReclaimIfStale(endpoint, path, kind);
  };
  return object;
}

}  // namespace

absl::StatusOr<std::optional<StaleObject>> FindStaleEndpointObject(std::string_view text) {
  IPCRPC_ASSIGN_OR_RETURN(Endpoint endpoint, ParseEndpoint(text));
  if (endpoint.scheme == "unix") {
    if (endpoint.address.empty() || endpoint.address[0] == '@') return std::nullopt;  // abstract
    return FindStaleFile(endpoint.text, endpoint.address, S_IFSOCK, "socket", &UnixSocketIsLive);
  }
  if (endpoint.scheme == "fifo") {
    return FindStaleFile(endpoint.text, endpoint.address, S_IFIFO, "FIFO", &FifoHasReader);
  }
  if (endpoint.scheme == "mq") {
    IPCRPC_ASSIGN_OR_RETURN(bool stale, MqQueueIsStale(endpoint.address));
    if (!stale) return std::nullopt;
    // Another uid's queue is never ours to remove (RemoveStaleMqQueue
    // refuses it too).
    absl::StatusOr<uid_t> owner = MqQueueOwner(endpoint.address);
    if (!owner.ok() || *owner != ::geteuid()) return std::nullopt;
    StaleObject object;
    object.kind = "queue";
    object.name = "/" + endpoint.address;
    object.reason = absl::StrCat("no server owns ", endpoint.text);
    object.remove = [name = endpoint.address] { return RemoveStaleMqQueue(name); };
    return object;
  }
  return std::nullopt;  // shm:, pipe: leave nothing by name
}

std::vector<StaleObject> FindStaleClientObjects(std::vector<std::string>* notes) {
  std::vector<StaleObject> found;
  // fifo: private directories, "<runtime>/fifo-<pid>-XXXXXX".
  absl::StatusOr<std::string> runtime = RuntimeDirectory();
  if (!runtime.ok()) {
    notes->push_back(absl::StrCat("runtime directory: ", runtime.status().ToString()));
  } else if (std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(runtime->c_str()), &::closedir);
             dir != nullptr) {
    while (dirent* entry = ::readdir(dir.get())) {
      std::string_view name = entry->d_name;
      if (!name.starts_with(kFifoPrivateDirPrefix)) continue;
      std::optional<pid_t> pid = LeadingPid(name.substr(sizeof(kFifoPrivateDirPrefix) - 1));
      if (!pid.has_value() || ProcessExists(*pid)) continue;
      // Ours only (the runtime directory is, but never trust one look).
      struct stat dir_st;
      const std::string dir_path = absl::StrCat(*runtime, "/", Av(name));
      if (::lstat(dir_path.c_str(), &dir_st) < 0 || !S_ISDIR(dir_st.st_mode) ||
          dir_st.st_uid != ::geteuid()) {
        continue;
      }
      StaleObject object;
      object.kind = "FIFO directory";
      object.name = absl::StrCat(*runtime, "/", Av(name));
      object.reason = absl::StrCat("its client, pid ", *pid, ", is gone");
      object.remove = [path = object.name, pid = *pid]() -> absl::Status {
        if (ProcessExists(pid)) {
          return absl::FailedPreconditionError(absl::StrCat(path, ": pid ", pid, " is alive"));
        }
        for (const char* fifo : {"/c2s", "/s2c"}) ::unlink((path + fifo).c_str());
        if (::rmdir(path.c_str()) < 0 && errno != ENOENT) return ErrnoStatus(errno, "rmdir", path);
        return absl::OkStatus();
      };
      found.push_back(std::move(object));
    }
  }
  // mq: reply queues, "/ipcrpc-<pid>-<n>-<random>", listed in /dev/mqueue.
  constexpr long kMqueueMagic = 0x19800202;  // MQUEUE_MAGIC, linux/magic.h
  struct statfs fs;
  std::unique_ptr<DIR, int (*)(DIR*)> queues(::opendir("/dev/mqueue"), &::closedir);
  if (queues == nullptr || ::statfs("/dev/mqueue", &fs) < 0 || fs.f_type != kMqueueMagic) {
    notes->push_back(
        "POSIX queues not listed: /dev/mqueue is not mounted (mount -t mqueue none /dev/mqueue)");
    return found;
  }
  while (dirent* entry = ::readdir(queues.get())) {
    std::string_view name = entry->d_name;
    if (!name.starts_with(kMqReplyQueuePrefix)) continue;
    std::vector<absl::string_view> parts = absl::StrSplit(Av(name), '-');
    uint64_t number = 0;
    if (parts.size() != 4 || !absl::SimpleAtoi(parts[2], &number) ||
        !absl::SimpleAtoi(parts[3], &number)) {
      continue;
    }
    std::optional<pid_t> pid = LeadingPid(name.substr(sizeof(kMqReplyQueuePrefix) - 1));
    struct stat queue_st;
    const std::string path = absl::StrCat("/dev/mqueue/", Av(name));
    if (!pid.has_value() || ProcessExists(*pid) || ::stat(path.c_str(), &queue_st) < 0 ||
        queue_st.st_uid != ::geteuid()) {
      continue;
    }
    // A server may have chosen such a name: then its token says whether it lives.
    absl::StatusOr<bool> stale = MqQueueIsStale(std::string(name));
    if (!stale.ok() || !*stale) continue;
    StaleObject object;
    object.kind = "reply queue";
    object.name = absl::StrCat("/", Av(name));
    object.reason = absl::StrCat("its client, pid ", *pid, ", is gone");
    object.remove = [queue = std::string(name)] { return RemoveStaleMqQueue(queue); };
    found.push_back(std::move(object));
  }
  return found;
}

}  // namespace ipcrpc::internal
