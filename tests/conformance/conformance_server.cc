// A server process for the conformance suite: serves TestService on
// --endpoint, writes "READY" and the bound endpoint to --ready_fd once serving, shuts down cleanly
// (exit 0) on SIGTERM or, for pipe:, when its parent goes away.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "ipcrpc/ipcrpc.h"
#include "tests/conformance/test_service.h"

int main(int argc, char** argv) {
  std::string endpoint;
  absl::Duration send_timeout = ipcrpc::ServerOptions().send_timeout;
  int ready_fd = -1;
  int handler_threads = 4;
  int max_connections = 1024;
  std::vector<uid_t> allowed_uids;
  size_t max_bytes_in_flight = ipcrpc::ServerOptions().max_bytes_in_flight;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--endpoint=", 11) == 0) endpoint = argv[i] + 11;
    if (std::strncmp(argv[i], "--ready_fd=", 11) == 0) ready_fd = std::atoi(argv[i] + 11);
    if (std::strncmp(argv[i], "--handler_threads=", 18) == 0) {
      handler_threads = std::atoi(argv[i] + 18);
    }
    if (std::strncmp(argv[i], "--max_connections=", 18) == 0) {
      max_connections = std::atoi(argv[i] + 18);
    }
    if (std::strncmp(argv[i], "--max_bytes_in_flight=", 22) == 0) {
      max_bytes_in_flight = std::strtoull(argv[i] + 22, nullptr, 10);
    }
    if (std::strncmp(argv[i], "--send_timeout_ms=", 18) == 0) {
      send_timeout = absl::Milliseconds(std::atoi(argv[i] + 18));
    }
    if (std::strncmp(argv[i], "--allowed_uid=", 14) == 0) {
      allowed_uids.push_back(static_cast<uid_t>(std::atoi(argv[i] + 14)));
    }
  }
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  ipcrpc::testing::TestService service;
  ipcrpc::ServerOptions options;
  options.handler_threads = handler_threads;
  options.max_connections = max_connections;
  options.allowed_uids = allowed_uids;
  options.max_bytes_in_flight = max_bytes_in_flight;
  options.send_timeout = send_timeout;
  ipcrpc::Server server(options);
  absl::Status status = server.RegisterService(&service);
  if (status.ok()) status = server.Listen(endpoint);
  if (status.ok()) status = server.Start();
  if (!status.ok()) {
    std::fprintf(stderr, "conformance_server: %s\n", status.ToString().c_str());
    return 1;
  }
  if (ready_fd >= 0) {
    // READY, then the endpoint as bound (a grpc: port 0 resolved).
    const std::string ready = "READY\n" + server.endpoints().front() + "\n";
    ssize_t ignored = write(ready_fd, ready.data(), ready.size());
    (void)ignored;
    close(ready_fd);
  }
  std::thread signal_thread([&server, signals] {
    int signal_number = 0;
    sigwait(&signals, &signal_number);
    server.Shutdown(absl::Seconds(1));
  });
  server.Wait();
  pthread_kill(signal_thread.native_handle(), SIGTERM);
  signal_thread.join();
  return 0;
}
