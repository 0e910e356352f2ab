// Minimal logging for ipcrpc internals (this abseil predates absl/log).
//
//   IPCRPC_LOG(WARNING) << "closing connection from pid " << pid << ": " << reason;
//
// Lines go to stderr as "ipcrpc W <file>:<line>] message". The threshold is
// read once from IPCRPC_LOG_LEVEL (INFO, WARNING, ERROR, OFF; default WARNING).
// Tests can install a sink with SetLogSinkForTesting.
#ifndef IPCRPC_BASE_LOGGING_H_
#define IPCRPC_BASE_LOGGING_H_

#include <functional>
#include <sstream>
#include <string>

namespace ipcrpc::internal {

enum class LogLevel { kInfo = 0, kWarning = 1, kError = 2, kOff = 3 };

bool LogEnabled(LogLevel level);

// Receives every emitted line (after the threshold). nullptr restores stderr.
void SetLogSinkForTesting(std::function<void(LogLevel, const std::string&)> sink);

class LogMessage {
 public:
  LogMessage(LogLevel level, const char* file, int line);
  ~LogMessage();
  std::ostream& stream() { return stream_; }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};

}  // namespace ipcrpc::internal

#define IPCRPC_LOG_LEVEL_INFO ::ipcrpc::internal::LogLevel::kInfo
#define IPCRPC_LOG_LEVEL_WARNING ::ipcrpc::internal::LogLevel::kWarning
#define IPCRPC_LOG_LEVEL_ERROR ::ipcrpc::internal::LogLevel::kError

#define IPCRPC_LOG(severity)                                        \
  if (!::ipcrpc::internal::LogEnabled(IPCRPC_LOG_LEVEL_##severity)) \
    ;                                                               \
  else                                                              \
    ::ipcrpc::internal::LogMessage(IPCRPC_LOG_LEVEL_##severity, __FILE__, __LINE__).stream()

#endif  // IPCRPC_BASE_LOGGING_H_
