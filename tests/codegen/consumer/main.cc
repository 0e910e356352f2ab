// Serves every service of the consumer project in-process over unix: and
// calls each through its generated stub (CMake: tests/codegen/consumer_test.sh;
// Bazel: @ipcrpc//:consumer_test). Compiled with CMake's defaults
// (-std=gnu++20), where `linux` and `unix` are macros unless the proto
// library's flags undefine them.
#include <unistd.h>

#include <cstdio>
#include <ctime>
#include <string>

#include "acme/collector/trace/v1/trace_service.ipcrpc.h"
#include "greeter.ipcrpc.h"
#include "plugins/device/api.ipcrpc.h"
#include "plugins/storage/api.ipcrpc.h"

namespace {

class GreeterImpl final : public greeter::Greeter::Service {
  absl::Status SayHello(ipcrpc::ServerContext&, const greeter::HelloRequest& request,
                        greeter::HelloReply& reply) override {
    reply.set_greeting("hello, " + request.name());
    return absl::OkStatus();
  }
};

class TraceServiceImpl final : public acme::collector::trace::v1::TraceService::Service {
  absl::Status Export(ipcrpc::ServerContext&,
                      const acme::collector::trace::v1::ExportTraceServiceRequest& request,
                      acme::collector::trace::v1::ExportTraceServiceResponse& reply) override {
    int64_t spans = 0;
    for (const auto& resource_spans : request.resource_spans()) {
      spans += resource_spans.spans_size();
      *reply.mutable_seen_platform() = resource_spans.resource().platform();
    }
    reply.set_accepted_spans(spans);
    return absl::OkStatus();
  }
};

class StorageImpl final : public storage::v1::Storage::Service {
  absl::Status Get(ipcrpc::ServerContext&, const storage::v1::GetRequest& request,
                   storage::v1::GetReply& reply) override {
    reply.set_value("value of " + request.key());
    return absl::OkStatus();
  }
};

class DeviceImpl final : public device::v1::Device::Service {
  absl::Status List(ipcrpc::ServerContext&, const device::v1::ListRequest&,
                    device::v1::ListReply& reply) override {
    reply.add_devices()->set_id("gpu0");
    return absl::OkStatus();
  }
};

int Fail(const char* what) {
  std::fprintf(stderr, "consumer: %s\n", what);
  return 1;
}

}  // namespace

int main() {
  // An abstract socket (nothing on disk) and no registry record: Bazel runs
  // this as a test in a sandbox with pids of its own.
  const std::string endpoint = "unix:@ipcrpc-consumer-" + std::to_string(getpid()) + "-" +
                               std::to_string(time(nullptr));
  ipcrpc::ServerOptions options;
  options.registry = false;
  GreeterImpl greeter_impl;
  TraceServiceImpl trace_impl;
  StorageImpl storage_impl;
  DeviceImpl device_impl;
  ipcrpc::Server server(options);
  for (ipcrpc::Service* service :
       std::initializer_list<ipcrpc::Service*>{&greeter_impl, &trace_impl, &storage_impl,
                                               &device_impl}) {
    if (!server.RegisterService(service).ok()) return Fail("RegisterService");
  }
  if (!server.Listen(endpoint).ok() || !server.Start().ok()) return Fail("Listen/Start");
  auto channel = ipcrpc::Channel::Connect(endpoint);
  if (!channel.ok()) return Fail("Connect");

  greeter::Greeter::Stub greeter(*channel);
  greeter::HelloRequest hello;
  hello.set_name("consumer");
  auto greeting = greeter.SayHello(hello);
  if (!greeting.ok() || greeting->greeting() != "hello, consumer") return Fail("SayHello");

  acme::collector::trace::v1::TraceService::Stub collector(*channel);
  acme::collector::trace::v1::ExportTraceServiceRequest request;
  auto* resource_spans = request.add_resource_spans();
  acme::common::v1::Platform* platform = resource_spans->mutable_resource()->mutable_platform();
  platform->set_linux("6.1");
  platform->set_unix("yes");
  platform->set_i386(386);
  resource_spans->add_spans()->set_name("a");
  resource_spans->add_spans()->mutable_start()->set_seconds(1);
  request.mutable_timeout()->set_seconds(5);
  auto exported = collector.Export(request);
  if (!exported.ok() || exported->accepted_spans() != 2 ||
      exported->seen_platform().linux() != "6.1" || exported->seen_platform().unix() != "yes" ||
      exported->seen_platform().i386() != 386) {
    return Fail("Export");
  }

  storage::v1::Storage::Stub storage(*channel);
  storage::v1::GetRequest get;
  get.set_key("k");
  auto value = storage.Get(get);
  if (!value.ok() || value->value() != "value of k") return Fail("Storage.Get");

  device::v1::Device::Stub devices(*channel);
  auto listed = devices.List(device::v1::ListRequest());
  if (!listed.ok() || listed->devices_size() != 1 || listed->devices(0).id() != "gpu0") {
    return Fail("Device.List");
  }
  std::printf("%s; exported %lld spans from linux %s; %s; %s\n", greeting->greeting().c_str(),
              static_cast<long long>(exported->accepted_spans()),
              exported->seen_platform().linux().c_str(), value->value().c_str(),
              listed->devices(0).id().c_str());
  return 0;
}
