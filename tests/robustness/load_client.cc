// A client process for the load and crash-loop tests: connects to --endpoint
// (for pipe:, spawns --server as its child), then makes --calls Echo calls
// (0: until SIGTERM), each with a payload unique to this client and call, and
// checks every response against its request.
//
// Prints "READY <server pid>" after the first call succeeded, and at the end "OK <calls>"
// (exit 0), or "FAIL <status code name> <message>" for the first call that
// failed (exit 3 if it was UNAVAILABLE, else 1) or "MISMATCH <call>" for a
// response that was not its request's (exit 2).
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "ipcrpc/ipcrpc.h"

namespace {

std::atomic<bool> stop{false};

void OnTerm(int) { stop.store(true); }

}  // namespace

int main(int argc, char** argv) {
  std::string endpoint;
  std::string server;
  std::string id = absl::StrCat(::getpid());
  long calls = 1000;
  size_t max_payload = 2048;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--endpoint=", 11) == 0) endpoint = argv[i] + 11;
    if (std::strncmp(argv[i], "--server=", 9) == 0) server = argv[i] + 9;
    if (std::strncmp(argv[i], "--calls=", 8) == 0) calls = std::atol(argv[i] + 8);
    if (std::strncmp(argv[i], "--id=", 5) == 0) id = argv[i] + 5;
    if (std::strncmp(argv[i], "--max_payload=", 14) == 0) max_payload = std::atol(argv[i] + 14);
  }
  struct sigaction action = {};
  action.sa_handler = OnTerm;
  sigaction(SIGTERM, &action, nullptr);

  // A hundred of these connect at once, maybe with the other CPU busy:
  // a server that takes them all in takes longer than the default 5 s to
  // answer the last (seen on mq:, whose queue of CONNECTs fills). The test
  // is of the calls, not of how fast a crowd connects.
  ipcrpc::ChannelOptions options;
  options.connect_timeout = absl::Seconds(120);
  auto channel = endpoint == "pipe:" ? ipcrpc::SpawnChild({server, "--endpoint=pipe:"}, options)
                                     : ipcrpc::Channel::Connect(endpoint, options);
  if (!channel.ok()) {
    std::printf("FAIL %s %s\n", absl::StatusCodeToString(channel.status().code()).c_str(),
                std::string(channel.status().message()).c_str());
    return channel.status().code() == absl::StatusCode::kUnavailable ? 3 : 1;
  }
  std::mt19937_64 rng(std::hash<std::string>()(id));
  long done = 0;
  for (; calls == 0 ? !stop.load() : done < calls; ++done) {
    std::string request = absl::StrCat(id, ":", done, ":");
    const size_t extra = rng() % (max_payload + 1);
    for (size_t i = 0; i < extra; ++i) request.push_back(static_cast<char>(rng()));
    absl::StatusOr<std::string> response = (*channel)->CallMethod("test.Test/Echo", request);
    if (!response.ok()) {
      std::printf("FAIL %s %s\n", absl::StatusCodeToString(response.status().code()).c_str(),
                  std::string(response.status().message()).c_str());
      std::fflush(stdout);
      return response.status().code() == absl::StatusCode::kUnavailable ? 3 : 1;
    }
    if (*response != request) {
      std::printf("MISMATCH %ld\n", done);
      std::fflush(stdout);
      return 2;
    }
    if (done == 0) {
      absl::StatusOr<std::string> pid = (*channel)->CallMethod("test.Test/Pid", "");
      std::printf("READY %s\n", pid.ok() ? pid->c_str() : "?");
      std::fflush(stdout);
    }
  }
  std::printf("OK %ld\n", done);
  return 0;
}
