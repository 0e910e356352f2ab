// A client process for the conformance suite, to be killed mid-call: connects
// (unix: --endpoint=...; pipe: --endpoint=pipe: --server=PATH spawns the
// server), prints "PID <server pid>", then makes a call that sleeps a minute
// (with --stream: writes to a test.Test/Stall stream until it blocks).
#include <cstdio>
#include <cstring>
#include <string>

#include "ipcrpc/ipcrpc.h"

int main(int argc, char** argv) {
  std::string endpoint;
  std::string server;
  bool stream = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--endpoint=", 11) == 0) endpoint = argv[i] + 11;
    if (std::strncmp(argv[i], "--server=", 9) == 0) server = argv[i] + 9;
    if (std::strcmp(argv[i], "--stream") == 0) stream = true;
  }
  auto channel = endpoint == "pipe:" ? ipcrpc::SpawnChild({server, "--endpoint=pipe:"})
                                     : ipcrpc::Channel::Connect(endpoint);
  if (!channel.ok()) {
    std::fprintf(stderr, "conformance_client: %s\n", channel.status().ToString().c_str());
    return 1;
  }
  auto pid = (*channel)->CallMethod("test.Test/Pid", "");
  if (!pid.ok()) return 1;
  std::printf("PID %s\n", pid->c_str());
  std::fflush(stdout);
  if (stream) {
    ipcrpc::GenericClientStream writer = (*channel)->OpenStream("test.Test/Stall");
    const std::string message(4096, 's');
    while (writer.Write(message)) {
    }
    return writer.Finish().ok() ? 0 : 1;
  }
  auto slept = (*channel)->CallMethod("test.Test/Sleep", "60000");
  return slept.ok() ? 0 : 1;
}
