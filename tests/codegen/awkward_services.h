// Implementations of the awkward .proto's services, shared by the in-process
// test and the server process spawned over pipe:.
#ifndef IPCRPC_TESTS_CODEGEN_AWKWARD_SERVICES_H_
#define IPCRPC_TESTS_CODEGEN_AWKWARD_SERVICES_H_

#include <string>

#include "awk/awkward.ipcrpc.h"
#include "nopackage.ipcrpc.h"

namespace awk_test {

using ::awk::ward::v1::Reply;
using ::awk::ward::v1::Request;

class ClashesImpl final : public ::awk::ward::v1::Clashes::Service {
 public:
#define IPCRPC_AWK_METHOD(cpp_name, label)                                              \
  ::absl::Status cpp_name(::ipcrpc::ServerContext&, const Request& in, Reply& out) override { \
    out.set_text(std::string(label) + ":" + in.text());                                    \
    return ::absl::OkStatus();                                                              \
  }
  IPCRPC_AWK_METHOD(Stub_, "Stub")
  IPCRPC_AWK_METHOD(Service_, "Service")
  IPCRPC_AWK_METHOD(Call, "Call")
  IPCRPC_AWK_METHOD(channel, "channel")
  IPCRPC_AWK_METHOD(New, "New")
  IPCRPC_AWK_METHOD(Delete, "Delete")
  IPCRPC_AWK_METHOD(delete_, "delete")
  IPCRPC_AWK_METHOD(class_, "class")
  IPCRPC_AWK_METHOD(AddMethod, "AddMethod")
  IPCRPC_AWK_METHOD(kServiceName_, "kServiceName")
  IPCRPC_AWK_METHOD(context, "context")
  IPCRPC_AWK_METHOD(request, "request")
  IPCRPC_AWK_METHOD(reply, "reply")
  IPCRPC_AWK_METHOD(done, "done")
  IPCRPC_AWK_METHOD(options, "options")
#undef IPCRPC_AWK_METHOD
};

class TypesImpl final : public ::awk::ward::v1::Types::Service {
 public:
  ::absl::Status Now(::ipcrpc::ServerContext&, const ::google::protobuf::Empty&,
                     ::google::protobuf::Timestamp& reply) override {
    reply.set_seconds(1234);
    return ::absl::OkStatus();
  }
  ::absl::Status Count(::ipcrpc::ServerContext&, const ::other::types::Thing& thing,
                       ::other::types::Nested::Inner& reply) override {
    reply.set_value(thing.name() + "=" + std::to_string(thing.count()));
    return ::absl::OkStatus();
  }
  // The request back, without its required name when its count is negative
  // (a reply that cannot be serialized).
  ::absl::Status Copy(::ipcrpc::ServerContext&, const ::other::types::Thing& thing,
                      ::other::types::Thing& reply) override {
    reply = thing;
    if (thing.count() < 0) reply.clear_name();
    return ::absl::OkStatus();
  }
  // Wait is left UNIMPLEMENTED on purpose.
};

class UnionImpl final : public ::awk::ward::v1::union_::Service {
 public:
  ::absl::Status Ping(::ipcrpc::ServerContext&, const ::google::protobuf::Empty&,
                      ::google::protobuf::Empty&) override {
    return ::absl::OkStatus();
  }
};

class FirstImpl final : public ::First::Service {
 public:
  ::absl::Status Go(::ipcrpc::ServerContext&, const ::Ping& in, ::Ping& out) override {
    out.set_n(in.n() + 1);
    return ::absl::OkStatus();
  }
};

// Second is not implemented: every method answers UNIMPLEMENTED.
class SecondImpl final : public ::Second::Service {};

// All of them, registered on `server`.
struct AllServices {
  ClashesImpl clashes;
  TypesImpl types;
  UnionImpl union_service;
  FirstImpl first;
  SecondImpl second;

  ::absl::Status RegisterWith(::ipcrpc::Server& server) {
    for (::ipcrpc::Service* service : std::initializer_list<::ipcrpc::Service*>{
             &clashes, &types, &union_service, &first, &second}) {
      ::absl::Status status = server.RegisterService(service);
      if (!status.ok()) return status;
    }
    return ::absl::OkStatus();
  }
};

}  // namespace awk_test

#endif  // IPCRPC_TESTS_CODEGEN_AWKWARD_SERVICES_H_
