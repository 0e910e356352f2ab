// An echo server on the generic (untyped) API: methods "example.Echo/Echo"
// (returns the request) and "example.Echo/Reverse" (returns it reversed).
//
//   echo_server --endpoint=unix:/tmp/echo.sock   # until SIGINT/SIGTERM
//   echo_client --endpoint=pipe: --server=echo_server   # spawns it over pipes
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_split.h"
#include "ipcrpc/ipcrpc.h"

ABSL_FLAG(std::string, endpoint, "", "Where to listen, e.g. unix:/tmp/echo.sock or pipe: "
                                     "(comma-separated for several)");

class EchoService : public ipcrpc::Service {
 public:
  EchoService() {
    AddMethod("example.Echo/Echo",
              [](ipcrpc::ServerContext&, std::string_view request, std::string& response) {
                response.assign(request);
                return absl::OkStatus();
              });
    AddMethod("example.Echo/Reverse",
              [](ipcrpc::ServerContext&, std::string_view request, std::string& response) {
                response.assign(request.rbegin(), request.rend());
                return absl::OkStatus();
              });
  }
};

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string endpoints = absl::GetFlag(FLAGS_endpoint);
  if (endpoints.empty()) {
    std::fprintf(stderr, "echo_server: --endpoint is required (e.g. unix:/tmp/echo.sock)\n");
    return 2;
  }
  // SIGINT/SIGTERM are taken by a thread that shuts the server down.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  EchoService service;
  ipcrpc::Server server;
  if (absl::Status s = server.RegisterService(&service); !s.ok()) {
    std::fprintf(stderr, "echo_server: %s\n", s.ToString().c_str());
    return 1;
  }
  for (const std::string& endpoint : std::vector<std::string>(absl::StrSplit(endpoints, ','))) {
    if (absl::Status s = server.Listen(endpoint); !s.ok()) {
      std::fprintf(stderr, "echo_server: %s\n", s.ToString().c_str());
      return 1;
    }
  }
  if (absl::Status s = server.Start(); !s.ok()) {
    std::fprintf(stderr, "echo_server: %s\n", s.ToString().c_str());
    return 1;
  }
  std::fprintf(stderr, "echo_server: pid %d listening on %s\n", getpid(), endpoints.c_str());
  std::thread signal_thread([&server, signals] {
    int signal_number = 0;
    sigwait(&signals, &signal_number);
    if (signal_number != 0) server.Shutdown(absl::Seconds(2));
  });
  server.Wait();
  // Ended without a signal (a pipe: server whose parent went away): wake the
  // signal thread so it can be joined.
  pthread_kill(signal_thread.native_handle(), SIGTERM);
  signal_thread.join();
  std::fprintf(stderr, "echo_server: pid %d stopped\n", getpid());
  return 0;
}
