#include "base/logging.h"
#include "base/mutex.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <iostream>


namespace ipcrpc::internal {
namespace {

LogLevel ThresholdFromEnv() {
  const char* value = std::getenv("IPCRPC_LOG_LEVEL");
  if (value == nullptr) return LogLevel::kWarning;
  if (std::strcmp(value, "INFO") == 0) return LogLevel::kInfo;
  if (std::strcmp(value, "ERROR") == 0) return LogLevel::kError;
  if (std::strcmp(value, "OFF") == 0) return LogLevel::kOff;
  return LogLevel::kWarning;
}

LogLevel Threshold() {
  static const LogLevel threshold = ThresholdFromEnv();
  return threshold;
}

Mutex sink_mu;
std::function<void(LogLevel, const std::string&)>* sink ABSL_GUARDED_BY(sink_mu) = nullptr;

}  // namespace

bool LogEnabled(LogLevel level) { return level >= Threshold() && level != LogLevel::kOff; }

void SetLogSinkForTesting(std::function<void(LogLevel, const std::string&)> new_sink) {
  MutexLock lock(&sink_mu);
  delete sink;
  sink = new_sink ? new std::function<void(LogLevel, const std::string&)>(std::move(new_sink))
                  : nullptr;
}

LogMessage::LogMessage(LogLevel level, const char* file, int line) : level_(level) {
  const char* base = std::strrchr(file, '/');
  static constexpr char kLetters[] = "IWE";
  stream_ << "ipcrpc " << kLetters[static_cast<int>(level)] << " " << ::getpid() << " "
          << (base ? base + 1 : file) << ":" << line << "] ";
}

LogMessage::~LogMessage() {
  stream_ << '\n';
  std::string text = stream_.str();
  MutexLock lock(&sink_mu);
  if (sink != nullptr) {
    (*sink)(level_, text);
    return;
  }
  // One write per line so that lines from several threads do not interleave.
  ssize_t ignored = ::write(STDERR_FILENO, text.data(), text.size());
  (void)ignored;
}

}  // namespace ipcrpc::internal
