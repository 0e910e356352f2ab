// A server for the CLI tests: clitest.Tester on --endpoint (comma-separated),
// built-in services as --reflection / --introspection say. Prints "READY" on
// stdout once serving; shuts down cleanly on SIGTERM.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "clitest.ipcrpc.h"
#include "base/mutex.h"

namespace {

class Tester final : public clitest::Tester::Service {
 public:
  absl::Status Add(ipcrpc::ServerContext&, const clitest::AddRequest& request,
                   clitest::AddReply& reply) override {
    reply.set_sum(request.a() + request.b());
    return absl::OkStatus();
  }

  absl::Status Wait(ipcrpc::ServerContext& context, const clitest::WaitRequest&,
                    clitest::WaitReply&) override {
    struct Flag {
      ipcrpc::internal::Mutex mu;
      bool cancelled ABSL_GUARDED_BY(mu) = false;
    };
    auto flag = std::make_shared<Flag>();
    context.OnCancel([flag] {
      ipcrpc::internal::MutexLock lock(&flag->mu);
      flag->cancelled = true;
    });
    ipcrpc::internal::MutexLock lock(&flag->mu);
    flag->mu.Await(ipcrpc::internal::Condition(&flag->cancelled));
    return absl::CancelledError("Wait: cancelled");
  }

  absl::Status Metadata(ipcrpc::ServerContext& context, const clitest::MetadataRequest& request,
                        clitest::MetadataReply& reply) override {
    context.AddResponseMetadata("x-looked-for", request.key());
    context.AddResponseMetadata("trace-bin", std::string("\0\x01\x02", 3));
    for (const auto& [key, value] : context.metadata()) {
      if (key == request.key()) {
        reply.set_value(value);
        return absl::OkStatus();
      }
    }
    absl::Status status = absl::NotFoundError("no such metadata key: " + request.key());
    clitest::Problem problem;
    problem.set_reason("NO_SUCH_KEY");
    problem.set_key(request.key());
    status.SetPayload("type.googleapis.com/clitest.Problem", absl::Cord(problem.SerializeAsString()));
    status.SetPayload("type.example/unknown", absl::Cord(std::string("\xff\x00", 2)));
    return status;
  }

  absl::Status Count(ipcrpc::ServerContext&, const clitest::CountRequest& request,
                     ipcrpc::ServerWriter<clitest::Tick>& writer) override {
    for (int64_t i = 0; i < request.n(); ++i) {
      clitest::Tick tick;
      tick.set_n(i);
      if (!writer.Write(tick)) return absl::CancelledError("Count: cancelled");
    }
    return absl::OkStatus();
  }

  absl::Status Total(ipcrpc::ServerContext&, ipcrpc::ServerReader<clitest::Tick>& reader,
                     clitest::AddReply& reply) override {
    clitest::Tick tick;
    while (reader.Read(&tick)) reply.set_sum(reply.sum() + tick.n());
    return absl::OkStatus();
  }

  absl::Status Double(ipcrpc::ServerContext&,
                      ipcrpc::ServerReaderWriter<clitest::Tick, clitest::Tick>& stream) override {
    clitest::Tick tick;
    while (stream.Read(&tick)) {
      tick.set_n(tick.n() * 2);
      if (!stream.Write(tick)) break;
    }
    return absl::OkStatus();
  }

  absl::Status Flood(ipcrpc::ServerContext&, const clitest::CountRequest&,
                     ipcrpc::ServerWriter<clitest::Tick>& writer) override {
    clitest::Tick tick;
    tick.set_padding(std::string(1024, 'p'));
    while (writer.Write(tick)) tick.set_n(tick.n() + 1);
    return absl::CancelledError("Flood: cancelled");
  }
};

}  // namespace

int main(int argc, char** argv) {
  std::string endpoints;
  ipcrpc::ServerOptions options;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--endpoint=", 11) == 0) {
      endpoints = argv[i] + 11;
    } else if (std::strcmp(argv[i], "--reflection=false") == 0) {
      options.reflection = false;
    } else if (std::strcmp(argv[i], "--introspection=false") == 0) {
      options.introspection = false;
    } else {
      std::fprintf(stderr, "cli_test_server: unknown argument %s\n", argv[i]);
      return 2;
    }
  }
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // before any thread starts

  Tester tester;
  ipcrpc::Server server(options);
  if (auto status = server.RegisterService(&tester); !status.ok()) {
    std::fprintf(stderr, "cli_test_server: %s\n", status.ToString().c_str());
    return 1;
  }
  for (const auto& endpoint : absl::StrSplit(endpoints, ',', absl::SkipEmpty())) {
    if (auto status = server.Listen(std::string(endpoint)); !status.ok()) {
      std::fprintf(stderr, "cli_test_server: %s\n", status.ToString().c_str());
      return 1;
    }
  }
  if (auto status = server.Start(); !status.ok()) {
    std::fprintf(stderr, "cli_test_server: %s\n", status.ToString().c_str());
    return 1;
  }
  std::printf("READY\n");
  std::fflush(stdout);
  int signal = 0;
  sigwait(&signals, &signal);
  server.Shutdown(absl::Seconds(1));
  return 0;
}
