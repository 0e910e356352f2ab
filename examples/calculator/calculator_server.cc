// The calculator server: implements calc::Calculator::Service.
//
//   calculator_server --endpoint=unix:/tmp/calc.sock   # until SIGINT/SIGTERM
//   (over pipe:, calculator_client spawns it: --endpoint=pipe:)
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "calculator.ipcrpc.h"

ABSL_FLAG(std::string, endpoint, "", "Where to listen (comma-separated for several)");
ABSL_FLAG(std::string, endpoints_file, "",
          "Once serving, write the endpoints bound here, one per line (a grpc: port 0 "
          "becomes the port picked)");

class CalculatorImpl final : public calc::Calculator::Service {
 public:
  absl::Status Add(ipcrpc::ServerContext&, const calc::AddRequest& request,
                   calc::AddReply& reply) override {
    reply.set_sum(request.a() + request.b());
    return absl::OkStatus();
  }

  absl::Status Divide(ipcrpc::ServerContext&, const calc::DivideRequest& request,
                      calc::DivideReply& reply) override {
    if (request.divisor() == 0) return absl::InvalidArgumentError("division by zero");
    reply.set_quotient(request.dividend() / request.divisor());
    return absl::OkStatus();
  }

  // Honours its deadline and cancellation: waits for the work time or the
  // cancellation, whichever comes first.
  absl::Status SlowSquare(ipcrpc::ServerContext& context,
                          const calc::SlowSquareRequest& request,
                          calc::SlowSquareReply& reply) override {
    struct Flag {
      absl::Mutex mu;
      bool cancelled ABSL_GUARDED_BY(mu) = false;
    };
    auto flag = std::make_shared<Flag>();
    context.OnCancel([flag] {
      absl::MutexLock lock(&flag->mu);
      flag->cancelled = true;
    });
    absl::MutexLock lock(&flag->mu);
    if (flag->mu.AwaitWithTimeout(absl::Condition(&flag->cancelled),
                                  absl::Milliseconds(request.work_ms()))) {
      return absl::CancelledError("SlowSquare stopped: the call was cancelled");
    }
    reply.set_square(request.value() * request.value());
    return absl::OkStatus();
  }
};

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string endpoints = absl::GetFlag(FLAGS_endpoint);
  if (endpoints.empty()) {
    std::fprintf(stderr, "calculator_server: --endpoint is required\n");
    return 2;
  }
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  CalculatorImpl calculator;
  ipcrpc::Server server;
  absl::Status status = server.RegisterService(&calculator);
  for (const std::string& endpoint : std::vector<std::string>(absl::StrSplit(endpoints, ','))) {
    if (status.ok()) status = server.Listen(endpoint);
  }
  if (status.ok()) status = server.Start();
  if (!status.ok()) {
    std::fprintf(stderr, "calculator_server: %s\n", status.ToString().c_str());
    return 1;
  }
  const std::string bound = absl::StrJoin(server.endpoints(), ",");
  std::fprintf(stderr, "calculator_server: pid %d serving %s on %s\n", getpid(),
               calc::Calculator::kServiceName, bound.c_str());
  if (const std::string file = absl::GetFlag(FLAGS_endpoints_file); !file.empty()) {
    // Written whole under another name, then renamed: a reader never sees half.
    const std::string partial = file + ".partial";
    std::FILE* out = std::fopen(partial.c_str(), "w");
    if (out == nullptr || std::fprintf(out, "%s\n", absl::StrJoin(server.endpoints(), "\n").c_str()) < 0 ||
        std::fclose(out) != 0 || std::rename(partial.c_str(), file.c_str()) != 0) {
      std::fprintf(stderr, "calculator_server: cannot write %s\n", file.c_str());
      return 1;
    }
  }
  std::thread signal_thread([&server, signals] {
    int signal_number = 0;
    sigwait(&signals, &signal_number);
    server.Shutdown(absl::Seconds(2));
  });
  server.Wait();
  pthread_kill(signal_thread.native_handle(), SIGTERM);
  signal_thread.join();
  return 0;
}
