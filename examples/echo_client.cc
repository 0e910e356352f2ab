// The client of echo_server, on the generic (untyped) API.
//
//   echo_client --endpoint=unix:/tmp/echo.sock --message=hello
//   echo_client --endpoint=pipe: --server=./echo_server --message=hello
//
// Exits 0 if every call returned the expected bytes; prints the status and
// exits 1 otherwise.
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/time/clock.h"
#include "ipcrpc/ipcrpc.h"

ABSL_FLAG(std::string, endpoint, "", "Server endpoint, e.g. unix:/tmp/echo.sock, or pipe:");
ABSL_FLAG(std::string, server, "", "With --endpoint=pipe:, the server program to spawn");
ABSL_FLAG(std::string, message, "hello, ipcrpc", "What to send");
ABSL_FLAG(int, count, 1, "How many calls of each method to make");
ABSL_FLAG(int, timeout_ms, 1000, "Deadline of each call, in ms");
ABSL_FLAG(int, wait_for_server_ms, 0,
          "Keep trying to connect for this long while no server is listening yet");

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string endpoint = absl::GetFlag(FLAGS_endpoint);
  absl::StatusOr<std::shared_ptr<ipcrpc::Channel>> channel;
  if (endpoint == "pipe:") {
    const std::string server = absl::GetFlag(FLAGS_server);
    if (server.empty()) {
      std::fprintf(stderr, "echo_client: --endpoint=pipe: needs --server=PROGRAM\n");
      return 2;
    }
    channel = ipcrpc::SpawnChild({server, "--endpoint=pipe:"});
  } else {
    // Like gRPC's wait_for_ready: a server that is starting is waited for.
    const absl::Time give_up = absl::Now() + absl::Milliseconds(absl::GetFlag(FLAGS_wait_for_server_ms));
    while (!(channel = ipcrpc::Channel::Connect(endpoint)).ok() &&
           absl::IsUnavailable(channel.status()) && absl::Now() < give_up) {
      absl::SleepFor(absl::Milliseconds(20));
    }
  }
  if (!channel.ok()) {
    std::fprintf(stderr, "echo_client: %s\n", channel.status().ToString().c_str());
    return 1;
  }
  const std::string message = absl::GetFlag(FLAGS_message);
  ipcrpc::CallOptions options;
  options.timeout = absl::Milliseconds(absl::GetFlag(FLAGS_timeout_ms));
  const absl::Time start = absl::Now();
  const int count = absl::GetFlag(FLAGS_count);
  std::string last_echo;
  std::string last_reverse;
  for (int i = 0; i < count; ++i) {
    auto echo = (*channel)->CallMethod("example.Echo/Echo", message, options);
    auto reverse = (*channel)->CallMethod("example.Echo/Reverse", message, options);
    if (!echo.ok() || !reverse.ok()) {
      std::fprintf(stderr, "echo_client: call failed: %s\n",
                   (!echo.ok() ? echo.status() : reverse.status()).ToString().c_str());
      return 1;
    }
    if (*echo != message || *reverse != std::string(message.rbegin(), message.rend())) {
      std::fprintf(stderr, "echo_client: wrong response\n");
      return 1;
    }
    last_echo = *std::move(echo);
    last_reverse = *std::move(reverse);
  }
  const absl::Duration elapsed = absl::Now() - start;
  std::printf("Echo(\"%s\") = \"%s\"\nReverse(\"%s\") = \"%s\"\n", message.c_str(),
              last_echo.c_str(), message.c_str(), last_reverse.c_str());
  std::printf("%d calls over %s in %s\n", 2 * count, endpoint.c_str(),
              absl::FormatDuration(elapsed).c_str());
  return 0;
}
