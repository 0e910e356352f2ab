// Serves the generated Geometry service in-process over an abstract unix:
// socket and calls it through the generated stub.
#include <unistd.h>

#include <ctime>
#include <string>

#include "geometry.ipcrpc.h"
#include "gtest/gtest.h"
#include "sub/shapes.pb.h"

namespace {

class GeometryImpl final : public geometry::Geometry::Service {
  absl::Status Area(ipcrpc::ServerContext&, const shapes::Rectangle& request,
                    geometry::AreaReply& reply) override {
    reply.set_area(request.width() * request.height());
    reply.mutable_unit()->set_value("m2");
    return absl::OkStatus();
  }
};

TEST(IpcrpcCcProtoLibraryTest, GeneratedStubsCallGeneratedService) {
  // Abstract socket: nothing on disk. No registry record either: the sandbox
  // has its own pids, which mean nothing outside it.
  const std::string endpoint = "unix:@ipcrpc-bazel-proto-library-test-" +
                               std::to_string(getpid()) + "-" + std::to_string(time(nullptr));
  ipcrpc::ServerOptions options;
  options.registry = false;
  GeometryImpl impl;
  ipcrpc::Server server(options);
  ASSERT_TRUE(server.RegisterService(&impl).ok());
  ASSERT_TRUE(server.Listen(endpoint).ok());
  ASSERT_TRUE(server.Start().ok());

  auto channel = ipcrpc::Channel::Connect(endpoint);
  ASSERT_TRUE(channel.ok()) << channel.status();
  geometry::Geometry::Stub stub(*channel);
  shapes::Rectangle rectangle;
  rectangle.set_width(3);
  rectangle.set_height(4);
  auto reply = stub.Area(rectangle);
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->area(), 12);
  EXPECT_EQ(reply->unit().value(), "m2");
  server.Shutdown(absl::ZeroDuration());
}

}  // namespace
