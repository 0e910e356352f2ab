// The awkward services in a server process, for the pipe: test.
#include <cstring>
#include <string>

#include "tests/codegen/awkward_services.h"

int main(int argc, char** argv) {
  std::string endpoint = "pipe:";
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--endpoint=", 11) == 0) endpoint = argv[i] + 11;
  }
  awk_test::AllServices services;
  ipcrpc::Server server;
  absl::Status status = services.RegisterWith(server);
  if (status.ok()) status = server.Listen(endpoint);
  if (status.ok()) status = server.Start();
  if (!status.ok()) return 1;
  server.Wait();
  return 0;
}
