// Serves Greeter in-process over unix: and calls it through the stub.
#include <unistd.h>

#include <cstdio>
#include <string>

#include "greeter.ipcrpc.h"

class GreeterImpl final : public greeter::Greeter::Service {
  absl::Status SayHello(ipcrpc::ServerContext&, const greeter::HelloRequest& request,
                        greeter::HelloReply& reply) override {
    reply.set_greeting("hello, " + request.name());
    return absl::OkStatus();
  }
};

int main() {
  const std::string endpoint = "unix:/tmp/ipcrpc-consumer-" + std::to_string(getpid()) + ".sock";
  GreeterImpl impl;
  ipcrpc::Server server;
  if (!server.RegisterService(&impl).ok() || !server.Listen(endpoint).ok() ||
      !server.Start().ok()) {
    return 1;
  }
  auto channel = ipcrpc::Channel::Connect(endpoint);
  if (!channel.ok()) return 1;
  greeter::Greeter::Stub stub(*channel);
  greeter::HelloRequest request;
  request.set_name("consumer");
  auto reply = stub.SayHello(request);
  if (!reply.ok() || reply->greeting() != "hello, consumer") return 1;
  std::printf("%s\n", reply->greeting().c_str());
  return 0;
}
