#include "base/logging.h"
#include "base/clock.h"
#include "base/mutex.h"

#include <unistd.h>

#include <atomic>
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

std::atomic<int64_t (*)()> log_clock{&MonotonicNowNs};

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

void SetLogClockForTesting(int64_t (*now_ns)()) {
  log_clock.store(now_ns != nullptr ? now_ns : &MonotonicNowNs);
}

bool LogSite::Pass(int64_t* suppressed) {
  const int64_t now = log_clock.load()();
  std::lock_guard<std::mutex> lock(mu_);
  if (window_start_ns_ < 0 || now < window_start_ns_ ||
      now - window_start_ns_ >= 1'000'000'000) {
    window_start_ns_ = now;
    lines_ = 0;
  }
  if (lines_ >= kLogLinesPerSecond) {
    ++suppressed_;
    return false;
  }
  ++lines_;
  *suppressed = suppressed_;
  suppressed_ = 0;
  return true;
}

LogMessage::LogMessage(LogLevel level, const char* file, int line, int64_t suppressed)
    : level_(level), suppressed_(suppressed) {
  const char* base = std::strrchr(file, '/');
  static constexpr char kLetters[] = "IWE";
  stream_ << "ipcrpc " << kLetters[static_cast<int>(level)] << " " << ::getpid() << " "
          << (base ? base + 1 : file) << ":" << line << "] ";
}

LogMessage::~LogMessage() {
  if (suppressed_ > 0) {
    stream_ << " (" << suppressed_ << " more line" << (suppressed_ == 1 ? "" : "s")
            << " from here suppressed before this one)";
  }
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
