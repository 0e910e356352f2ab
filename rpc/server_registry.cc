#include "rpc/server_registry.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "base/strings.h"
#include "base/syscall.h"
#include "google/protobuf/util/json_util.h"
#include "base/runtime_dir.h"

namespace ipcrpc::internal {
namespace {

// Registry files are small; anything larger is not one of ours.
constexpr size_t kMaxRecordSize = 64 * 1024;

std::optional<std::string> ReadSmallFile(const std::string& path, size_t limit) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd.valid()) return std::nullopt;
  std::string data;
  char buffer[4096];
  for (;;) {
    ssize_t n = RetryEintr([&] { return ::read(fd.get(), buffer, sizeof buffer); });
    if (n < 0) return std::nullopt;
    if (n == 0) break;
    data.append(buffer, static_cast<size_t>(n));
    if (data.size() > limit) return std::nullopt;
  }
  return data;
}

// "1234-0.json" or ".1234-0.json.tmp": the pid of the writer.
std::optional<pid_t> PidOfName(std::string_view name) {
  if (!name.empty() && name[0] == '.') name.remove_prefix(1);
  return LeadingPid(name);
}

}  // namespace

absl::StatusOr<uint64_t> ProcessStartTime(pid_t pid) {
  std::optional<std::string> stat = ReadSmallFile(absl::StrCat("/proc/", pid, "/stat"), 4096);
  if (!stat.has_value()) return absl::NotFoundError(absl::StrCat("no process ", pid));
  // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so
  // fields are counted from the last ')'. starttime is field 22; the state is
  // field 3, the first after ')'.
  const size_t close = stat->rfind(')');
  if (close == std::string::npos) {
    return absl::InternalError(absl::StrCat("/proc/", pid, "/stat: unexpected format"));
  }
  std::vector<absl::string_view> fields =
      absl::StrSplit(absl::string_view(*stat).substr(close + 1), ' ', absl::SkipEmpty());
  uint64_t start = 0;
  if (fields.size() < 20 || !absl::SimpleAtoi(fields[19], &start)) {
    return absl::InternalError(absl::StrCat("/proc/", pid, "/stat: no start time"));
  }
  return start;
}

bool ProcessIsAlive(pid_t pid, uint64_t start_time) {
  if (pid <= 0) return false;
  absl::StatusOr<uint64_t> start = ProcessStartTime(pid);
  if (!start.ok()) {
    // Gone, or unreadable: a process we cannot see is treated as alive unless
    // kill(2) says it does not exist.
    return !absl::IsNotFound(start.status()) || ProcessExists(pid);
  }
  return *start == start_time;
}

ServerRecord RecordForThisProcess() {
  ServerRecord record;
  record.set_pid(::getpid());
  record.set_start_time(ProcessStartTime(::getpid()).value_or(0));
  record.set_uid(::geteuid());
  // argv[0]'s base name (comm is cut at 15 characters).
  std::optional<std::string> cmdline = ReadSmallFile("/proc/self/cmdline", 64 * 1024);
  if (cmdline.has_value()) {
    std::string argv0 = cmdline->substr(0, cmdline->find('\0'));
    record.set_program(argv0.substr(argv0.rfind('/') + 1));
  }
  record.set_started_unix_ms(absl::ToUnixMillis(absl::Now()));
  return record;
}

absl::StatusOr<std::string> RegistryDirectory() {
  IPCRPC_ASSIGN_OR_RETURN(std::string runtime, RuntimeDirectory());
  std::string dir = runtime + "/servers";
  IPCRPC_RETURN_IF_ERROR(EnsurePrivateDirectory(dir));
  return dir;
}

absl::Status RegistryEntry::Write(const ServerRecord& record) {
  if (path_.empty()) {
    static std::atomic<unsigned> counter{0};
    IPCRPC_ASSIGN_OR_RETURN(std::string dir, RegistryDirectory());
    path_ = absl::StrCat(dir, "/", ::getpid(), "-", counter.fetch_add(1), ".json");
  }
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  if (auto status = google::protobuf::util::MessageToJsonString(record, &json, options);
      !status.ok()) {
    return absl::InternalError(absl::StrCat("server registry: cannot encode the record: ",
                                            std::string(status.message())));
  }
  const size_t slash = path_.rfind('/');
  const std::string temp =
      absl::StrCat(path_.substr(0, slash + 1), ".", path_.substr(slash + 1), ".tmp");
  UniqueFd fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd.valid()) return ErrnoStatus(errno, "open", temp);
  size_t written = 0;
  while (written < json.size()) {
    ssize_t n = RetryEintr(
        [&] { return ::write(fd.get(), json.data() + written, json.size() - written); });
    if (n < 0) {
      absl::Status status = ErrnoStatus(errno, "write", temp);
      ::unlink(temp.c_str());
      return status;
    }
    written += static_cast<size_t>(n);
  }
  fd.Reset();
  if (::rename(temp.c_str(), path_.c_str()) < 0) {
    absl::Status status = ErrnoStatus(errno, "rename", temp);
    ::unlink(temp.c_str());
    return status;
  }
  return absl::OkStatus();
}

void RegistryEntry::Remove() {
  if (path_.empty()) return;
  ::unlink(path_.c_str());
  path_.clear();
}

absl::StatusOr<std::vector<RegistryListing>> ReadRegistry(const std::string& directory) {
  std::string dir = directory;
  if (dir.empty()) {
    IPCRPC_ASSIGN_OR_RETURN(dir, RegistryDirectory());
  }
  std::unique_ptr<DIR, int (*)(DIR*)> stream(::opendir(dir.c_str()), &::closedir);
  if (stream == nullptr) return ErrnoStatus(errno, "opendir", dir);
  std::vector<RegistryListing> listings;
  while (dirent* entry = ::readdir(stream.get())) {
    const std::string name = entry->d_name;
    if (name == "." || name == "..") continue;
    RegistryListing listing;
    listing.path = absl::StrCat(dir, "/", name);
    const bool temp = name[0] == '.' && name.ends_with(".tmp");
    if (!temp && !name.ends_with(".json")) continue;  // not ours: never touched
    std::optional<pid_t> writer = PidOfName(name);
    if (!writer.has_value()) continue;
    listing.record.set_pid(*writer);
    if (temp) {
      // An unfinished write: stale once its writer is gone.
      if (ProcessExists(*writer)) continue;
      listing.problem = "unfinished write of a dead process";
      listings.push_back(std::move(listing));
      continue;
    }
    std::optional<std::string> json = ReadSmallFile(listing.path, kMaxRecordSize);
    google::protobuf::util::JsonParseOptions options;
    options.ignore_unknown_fields = true;
    if (!json.has_value()) {
      listing.problem = "unreadable or larger than 64 KiB";
    } else if (auto status = google::protobuf::util::JsonStringToMessage(*json, &listing.record,
                                                                         options);
               !status.ok()) {
      listing.problem = absl::StrCat("not a server record: ", std::string(status.message()));
      listing.record.set_pid(*writer);
    }
    if (listing.problem.empty()) {
      listing.live = ProcessIsAlive(listing.record.pid(), listing.record.start_time());
    } else {
      // Unparsable: stale once the process named by the file name is gone.
      listing.live = ProcessExists(*writer);
    }
    listings.push_back(std::move(listing));
  }
  std::sort(listings.begin(), listings.end(), [](const RegistryListing& a, const RegistryListing& b) {
    return a.record.pid() != b.record.pid() ? a.record.pid() < b.record.pid() : a.path < b.path;
  });
  return listings;
}

void RemoveStaleRecordsSharing(const std::vector<std::string>& endpoints) {
  absl::StatusOr<std::vector<RegistryListing>> listings = ReadRegistry();
  if (!listings.ok()) return;
  for (const RegistryListing& listing : *listings) {
    if (listing.live) continue;
    for (const std::string& endpoint : listing.record.endpoints()) {
      if (std::find(endpoints.begin(), endpoints.end(), endpoint) != endpoints.end()) {
        ::unlink(listing.path.c_str());
        break;
      }
    }
  }
}

}  // namespace ipcrpc::internal
