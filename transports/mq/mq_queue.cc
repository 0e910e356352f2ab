#include "transports/mq/mq_queue.h"

#include <sys/resource.h>

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "base/strings.h"
#include "base/syscall.h"

namespace ipcrpc::internal {
namespace {

long ReadProcLong(const char* path, long fallback) {
  std::ifstream in(path);
  long value = 0;
  if (in >> value && value > 0) return value;
  return fallback;
}

}  // namespace

absl::Status MqOpenError(int error, std::string_view name) {
  switch (error) {
    case EMFILE: {
      struct rlimit limit;
      getrlimit(RLIMIT_MSGQUEUE, &limit);
      return absl::ResourceExhaustedError(absl::StrCat(
          "mq_open(", Av(name), "): RLIMIT_MSGQUEUE (", limit.rlim_cur,
          " bytes of queues per user) is used up, or the process is out of descriptors; "
          "raise it with `ulimit -q` (or setrlimit(RLIMIT_MSGQUEUE)), or close other queues"));
    }
    case ENOSPC:
      return absl::ResourceExhaustedError(absl::StrCat(
          "mq_open(", Av(name), "): /proc/sys/fs/mqueue/queues_max (",
          ReadProcLong("/proc/sys/fs/mqueue/queues_max", 256),
          " queues) reached; raise it with `sysctl fs.mqueue.queues_max=N`"));
    case EINVAL:
      return absl::InvalidArgumentError(absl::StrCat(
          "mq_open(", Av(name), "): queue attributes over /proc/sys/fs/mqueue/msg_max or "
          "msgsize_max, or an invalid name"));
    case ENOENT:
      return absl::UnavailableError(
          absl::StrCat("mq_open(", Av(name), "): no such queue: no server is listening"));
    default:
      return ErrnoStatus(error, "mq_open", name);
  }
}

struct mq_attr QueueAttributes(bool server) {
  const MqLimits limits = ReadMqLimits();
  struct mq_attr attr = {};
  attr.mq_maxmsg = std::min<long>(limits.max_messages, server ? 10 : 4);
  attr.mq_msgsize = std::min<long>(limits.message_size, server ? 8192 : 1024);
  return attr;
}

struct mq_attr ReplyQueueAttributes(long messages, long message_size) {
  const MqLimits limits = ReadMqLimits();
  struct mq_attr attr = {};
  attr.mq_maxmsg = std::clamp<long>(messages, 1, std::max<long>(1, limits.max_messages));
  // At least 512 bytes, unless the kernel allows less (every frame the
  // server must send whole is far smaller).
  const long least = std::min<long>(512, limits.message_size);
  attr.mq_msgsize = std::clamp<long>(message_size, least, std::max(least, limits.message_size));
  return attr;
}

absl::Status ValidateMqName(const Endpoint& endpoint) {
  const std::string& name = endpoint.address;
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos ||
      name.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "endpoint '", endpoint.text, "': mq: needs a queue name without '/' (e.g. mq:calc)"));
  }
  if (name.size() > 200) {
    return absl::InvalidArgumentError(absl::StrCat("endpoint '", endpoint.text,
                                                   "': the queue name is over 200 bytes"));
  }
  return absl::OkStatus();
}

MqLimits ReadMqLimits() {
  return MqLimits{ReadProcLong("/proc/sys/fs/mqueue/msg_max", 10),
                  ReadProcLong("/proc/sys/fs/mqueue/msgsize_max", 8192)};
}

}  // namespace ipcrpc::internal
