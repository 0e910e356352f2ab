// The services every server offers unless ServerOptions turns them off:
// ipcrpc.Introspection (who the server is, counters, connections, calls in
// flight) and ipcrpc.Reflection (the .proto files of its services). They are
// ordinary Services on the generic API; the server supplies what they report.
#ifndef IPCRPC_RPC_BUILTIN_SERVICES_H_
#define IPCRPC_RPC_BUILTIN_SERVICES_H_

#include <memory>
#include <string>
#include <vector>

#include "ipcrpc/introspection.pb.h"
#include "ipcrpc/service.h"

namespace ipcrpc::internal {

// What the server tells its built-in services. Called on handler threads.
class IntrospectionSource {
 public:
  virtual ~IntrospectionSource() = default;
  virtual ServerRecord Record() const = 0;
  // Every registered method's full name, "pkg.Service/Method".
  virtual std::vector<std::string> MethodNames() const = 0;
  virtual void FillStats(ServerStats* stats) const = 0;
};

inline constexpr char kIntrospectionService[] = "ipcrpc.Introspection";
inline constexpr char kReflectionService[] = "ipcrpc.Reflection";

std::unique_ptr<Service> NewIntrospectionService(const IntrospectionSource* source);
std::unique_ptr<Service> NewReflectionService(const IntrospectionSource* source);

// The files that define `services` (full names) in the generated descriptor
// pool, with everything they import, dependencies first. Services without
// generated code (hand-written with AddMethod) are skipped.
google::protobuf::FileDescriptorSet FilesOfServices(const std::vector<std::string>& services);

// "pkg.Service/Method" names grouped by service, in first-seen order.
std::vector<ServiceInfo> GroupMethods(const std::vector<std::string>& method_names);

}  // namespace ipcrpc::internal

#endif  // IPCRPC_RPC_BUILTIN_SERVICES_H_
