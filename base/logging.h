// Minimal logging for ipcrpc internals (this abseil predates absl/log).
//
//   IPCRPC_LOG(WARNING) << "closing connection from pid " << pid << ": " << reason;
//
// Lines go to stderr as "ipcrpc W <file>:<line>] message". The threshold is
// read once from IPCRPC_LOG_LEVEL (INFO, WARNING, ERROR, OFF; default WARNING).
// Tests can install a sink with SetLogSinkForTesting.
//
// Each call site writes at most kLogLinesPerSecond lines a second: a peer
// that floods the server with what it refuses must not flood the log (or
// spend its CPU there). What a site drops is counted, and its next line
// says how many were suppressed. Dropped lines are not even formatted.
#ifndef IPCRPC_BASE_LOGGING_H_
#define IPCRPC_BASE_LOGGING_H_

#include <cstdint>
#include <functional>
#include <mutex>
#include <sstream>
#include <string>

namespace ipcrpc::internal {

enum class LogLevel { kInfo = 0, kWarning = 1, kError = 2, kOff = 3 };

bool LogEnabled(LogLevel level);

inline constexpr int kLogLinesPerSecond = 10;

// One call site's budget (a static per IPCRPC_LOG expansion).
class LogSite {
 public:
  // Whether a line may be written now; if so, *suppressed is how many this
  // site dropped since its last line.
  bool Pass(int64_t* suppressed);

 private:
  std::mutex mu_;
  int64_t window_start_ns_ = -1;
  int lines_ = 0;
  int64_t suppressed_ = 0;
};

// The clock the budgets use (CLOCK_MONOTONIC ns); tests may replace it.
void SetLogClockForTesting(int64_t (*now_ns)());

// Receives every emitted line (after the threshold). nullptr restores stderr.
void SetLogSinkForTesting(std::function<void(LogLevel, const std::string&)> sink);

class LogMessage {
 public:
  LogMessage(LogLevel level, const char* file, int line, int64_t suppressed = 0);
  ~LogMessage();
  std::ostream& stream() { return stream_; }

 private:
  LogLevel level_;
  int64_t suppressed_;
  std::ostringstream stream_;
};

}  // namespace ipcrpc::internal

#define IPCRPC_LOG_LEVEL_INFO ::ipcrpc::internal::LogLevel::kInfo
#define IPCRPC_LOG_LEVEL_WARNING ::ipcrpc::internal::LogLevel::kWarning
#define IPCRPC_LOG_LEVEL_ERROR ::ipcrpc::internal::LogLevel::kError

#define IPCRPC_LOG(severity)                                                              \
  if (!::ipcrpc::internal::LogEnabled(IPCRPC_LOG_LEVEL_##severity))                       \
    ;                                                                                     \
  else if (int64_t ipcrpc_log_suppressed = 0;                                             \
           !([]() -> ::ipcrpc::internal::LogSite& {                                       \
              static ::ipcrpc::internal::LogSite site;                                    \
              return site;                                                                \
            }())                                                                          \
                .Pass(&ipcrpc_log_suppressed))                                            \
    ;                                                                                     \
  else                                                                                    \
    ::ipcrpc::internal::LogMessage(IPCRPC_LOG_LEVEL_##severity, __FILE__, __LINE__,        \
                                   ipcrpc_log_suppressed)                                 \
        .stream()

#endif  // IPCRPC_BASE_LOGGING_H_
