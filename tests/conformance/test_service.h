// The service every conformance test talks to, in a real server process
// (conformance_server) or in-process.
//
//   test.Test/Echo                  returns the request
//   test.Test/Sleep                 request "<ms>": sleeps, or ends CANCELLED when cancelled
//   test.Test/Pid                   the server's pid
//   test.Test/WaitForCancellations  request "<n>": returns once n Sleep calls saw cancellation
//   test.Test/WaitForActive         request "<n>": returns once n Sleep calls are running
//   test.Test/Metadata              "k=v;..." of the call's metadata
//   test.Test/Reply                 request "<code>;k=v;...": each k=v is added
//                                   as response metadata ("many": 300 entries);
//                                   code 0 answers "replied", any other fails
//                                   with a test.Detail payload (kDetailTypeUrl)
//   test.Test/Record                appends the request to a log
//   test.Test/Log                   the log, entries joined by ','
// Streams:
//   test.Test/Count       server streaming, request "<n> <size>": n messages,
//                         message i is "<i>" padded with 'x' to size bytes;
//                         response metadata "x-count" = n
//   test.Test/Forever     server streaming, request "<size>": messages of size
//                         bytes until cancelled (counts a cancellation)
//   test.Test/Written     unary: messages Forever wrote so far
//   test.Test/Sum         client streaming: replies "<messages> <bytes>"
//   test.Test/Stall       client streaming: reads nothing until cancelled
//                         (active while it waits, as Sleep; counts a cancellation)
//   test.Test/EchoStream  bidirectional: echoes each message
#ifndef IPCRPC_TESTS_CONFORMANCE_TEST_SERVICE_H_
#define IPCRPC_TESTS_CONFORMANCE_TEST_SERVICE_H_

#include <unistd.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "ipcrpc/ipcrpc.h"
#include "base/mutex.h"

namespace ipcrpc::testing {

// The type URL of test.Test/Reply's status payload, and its bytes.
inline constexpr char kDetailTypeUrl[] = "type.googleapis.com/test.Detail";
inline constexpr char kDetailBytes[] = "detail\0\xff bytes";

class TestService : public Service {
 public:
  TestService() {
    AddMethod("test.Test/Echo", [](ServerContext&, std::string_view request, std::string& response) {
      response.assign(request);
      return absl::OkStatus();
    });
    AddMethod("test.Test/Pid", [](ServerContext&, std::string_view, std::string& response) {
      response = std::to_string(getpid());
      return absl::OkStatus();
    });
    AddMethod("test.Test/Sleep",
              [this](ServerContext& context, std::string_view request, std::string& response) {
                return Sleep(context, request, response);
              });
    AddMethod("test.Test/WaitForCancellations",
              [this](ServerContext& context, std::string_view request, std::string&) {
                return WaitFor(context, request, &cancellations_);
              });
    AddMethod("test.Test/WaitForActive",
              [this](ServerContext& context, std::string_view request, std::string&) {
                return WaitFor(context, request, &active_);
              });
    AddMethod("test.Test/Record",
              [this](ServerContext&, std::string_view request, std::string&) {
                ipcrpc::internal::MutexLock lock(&mu_);
                if (!log_.empty()) log_ += ",";
                log_.append(request);
                return absl::OkStatus();
              });
    AddMethod("test.Test/Reply",
              [](ServerContext& context, std::string_view request, std::string& response) {
                std::vector<std::string> parts = absl::StrSplit(std::string(request), ';');
                int code = 0;
                if (!absl::SimpleAtoi(parts[0], &code) || code < 0 || code > 16) {
                  return absl::InvalidArgumentError("expected \"<code>;k=v;...\"");
                }
                for (size_t i = 1; i < parts.size(); ++i) {
                  if (parts[i] == "many") {
                    for (int j = 0; j < 300; ++j) context.AddResponseMetadata("k", "v");
                    continue;
                  }
                  const size_t eq = parts[i].find('=');
                  if (eq == std::string::npos) continue;
                  context.AddResponseMetadata(parts[i].substr(0, eq), parts[i].substr(eq + 1));
                }
                if (code == 0) {
                  response = "replied";
                  return absl::OkStatus();
                }
                absl::Status status(static_cast<absl::StatusCode>(code), "failed on purpose");
                status.SetPayload(kDetailTypeUrl,
                                  absl::Cord(std::string(kDetailBytes, sizeof(kDetailBytes) - 1)));
                return status;
              });
    AddMethod("test.Test/Log", [this](ServerContext&, std::string_view, std::string& response) {
      ipcrpc::internal::MutexLock lock(&mu_);
      response = log_;
      return absl::OkStatus();
    });
    AddStreamMethod("test.Test/Count", MethodKind::kServerStreaming,
                    [](ServerContext& context, GenericServerStream& stream) {
                      std::string request;
                      if (!stream.Read(&request)) return absl::CancelledError("no request");
                      int n = 0;
                      size_t size = 0;
                      const size_t space = request.find(' ');
                      if (space == std::string::npos ||
                          !absl::SimpleAtoi(absl::string_view(request).substr(0, space), &n) ||
                          !absl::SimpleAtoi(absl::string_view(request).substr(space + 1), &size)) {
                        return absl::InvalidArgumentError("expected \"<n> <size>\"");
                      }
                      context.AddResponseMetadata("x-count", std::to_string(n));
                      for (int i = 0; i < n; ++i) {
                        std::string message = std::to_string(i);
                        if (message.size() < size) message.resize(size, 'x');
                        if (!stream.Write(message)) return absl::CancelledError("write failed");
                      }
                      return absl::OkStatus();
                    });
    AddStreamMethod("test.Test/Forever", MethodKind::kServerStreaming,
                    [this](ServerContext& context, GenericServerStream& stream) {
                      std::string request;
                      size_t size = 0;
                      if (!stream.Read(&request) || !absl::SimpleAtoi(request, &size)) {
                        return absl::InvalidArgumentError("expected a size");
                      }
                      const std::string message(size, 'f');
                      while (stream.Write(message)) written_.fetch_add(1);
                      if (context.IsCancelled()) {
                        ipcrpc::internal::MutexLock lock(&mu_);
                        ++cancellations_;
                      }
                      return absl::CancelledError("Forever was cancelled");
                    });
    AddMethod("test.Test/Written", [this](ServerContext&, std::string_view, std::string& response) {
      response = std::to_string(written_.load());
      return absl::OkStatus();
    });
    AddStreamMethod("test.Test/Sum", MethodKind::kClientStreaming,
                    [](ServerContext&, GenericServerStream& stream) {
                      int64_t messages = 0;
                      int64_t bytes = 0;
                      std::string message;
                      while (stream.Read(&message)) {
                        ++messages;
                        bytes += static_cast<int64_t>(message.size());
                      }
                      stream.Write(absl::StrCat(messages, " ", bytes));
                      return absl::OkStatus();
                    });
    AddStreamMethod("test.Test/Stall", MethodKind::kClientStreaming,
                    [this](ServerContext& context, GenericServerStream&) {
                      ipcrpc::internal::Notification cancelled;
                      context.OnCancel([&cancelled] { cancelled.Notify(); });
                      {
                        ipcrpc::internal::MutexLock lock(&mu_);
                        ++active_;  // WaitForActive counts it
                      }
                      cancelled.WaitForNotification();
                      ipcrpc::internal::MutexLock lock(&mu_);
                      --active_;
                      ++cancellations_;
                      return absl::CancelledError("Stall was cancelled");
                    });
    AddStreamMethod("test.Test/EchoStream", MethodKind::kBidiStreaming,
                    [](ServerContext&, GenericServerStream& stream) {
                      std::string message;
                      while (stream.Read(&message)) {
                        if (!stream.Write(message)) break;
                      }
                      return absl::OkStatus();
                    });
    AddMethod("test.Test/Metadata",
              [](ServerContext& context, std::string_view, std::string& response) {
                for (const auto& [key, value] : context.metadata()) {
                  absl::StrAppend(&response, key, "=", value, ";");
                }
                return absl::OkStatus();
              });
  }

  int cancellations() {
    ipcrpc::internal::MutexLock lock(&mu_);
    return cancellations_;
  }

 private:
  // Blocks until *counter >= n, or the call is cancelled.
  absl::Status WaitFor(ServerContext& context, std::string_view request, int* counter) {
    int n = 0;
    if (!absl::SimpleAtoi(absl::string_view(request.data(), request.size()), &n)) {
      return absl::InvalidArgumentError("expected a number");
    }
    auto cancelled = std::make_shared<bool>(false);
    context.OnCancel([this, cancelled] {
      ipcrpc::internal::MutexLock lock(&mu_);
      *cancelled = true;
    });
    ipcrpc::internal::MutexLock lock(&mu_);
    auto done = [&] { return *counter >= n || *cancelled; };
    mu_.Await(ipcrpc::internal::Condition(&done));
    if (*counter >= n) return absl::OkStatus();
    return absl::CancelledError("cancelled while waiting");
  }

  absl::Status Sleep(ServerContext& context, std::string_view request, std::string& response) {
    int ms = 0;
    if (!absl::SimpleAtoi(absl::string_view(request.data(), request.size()), &ms)) {
      return absl::InvalidArgumentError("expected milliseconds");
    }
    auto cancelled = std::make_shared<bool>(false);
    context.OnCancel([this, cancelled] {
      ipcrpc::internal::MutexLock lock(&mu_);
      *cancelled = true;
    });
    ipcrpc::internal::MutexLock lock(&mu_);
    ++active_;
    const bool was_cancelled =
        mu_.AwaitWithTimeout(ipcrpc::internal::Condition(cancelled.get()), absl::Milliseconds(ms));
    --active_;
    if (was_cancelled) {
      ++cancellations_;
      return absl::CancelledError("Sleep was cancelled");
    }
    response = "slept";
    return absl::OkStatus();
  }

  ipcrpc::internal::Mutex mu_;
  int active_ ABSL_GUARDED_BY(mu_) = 0;
  int cancellations_ ABSL_GUARDED_BY(mu_) = 0;
  std::string log_ ABSL_GUARDED_BY(mu_);
  std::atomic<int64_t> written_{0};
};

}  // namespace ipcrpc::testing

#endif  // IPCRPC_TESTS_CONFORMANCE_TEST_SERVICE_H_
