#include "rpc/builtin_services.h"

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"

namespace ipcrpc::internal {
namespace {

// A unary method on protobuf messages, on the generic API.
template <typename Request, typename Response, typename Body>
void AddProtoMethod(Service& service, const std::string& full_name, Body body) {
  service.AddMethod(full_name, [full_name, body = std::move(body)](
                                   ServerContext&, std::string_view request_bytes,
                                   std::string& response_bytes) -> absl::Status {
    Request request;
    if (!request.ParseFromArray(request_bytes.data(), static_cast<int>(request_bytes.size()))) {
      return absl::InvalidArgumentError(
          absl::StrCat(full_name, ": the request is not a valid ", Request::descriptor()->full_name()));
    }
    Response response;
    body(request, response);
    if (!response.SerializeToString(&response_bytes)) {
      return absl::InternalError(absl::StrCat(full_name, ": cannot serialize the response"));
    }
    return absl::OkStatus();
  });
}

class BuiltinService final : public Service {};

void AddFileWithDependencies(const google::protobuf::FileDescriptor* file,
                             absl::flat_hash_set<std::string>& seen,
                             google::protobuf::FileDescriptorSet& set) {
  if (!seen.insert(file->name()).second) return;
  for (int i = 0; i < file->dependency_count(); ++i) {
    AddFileWithDependencies(file->dependency(i), seen, set);
  }
  file->CopyTo(set.add_file());
}

}  // namespace

std::vector<ServiceInfo> GroupMethods(const std::vector<std::string>& method_names) {
  std::vector<ServiceInfo> services;
  for (const std::string& name : method_names) {
    const size_t slash = name.rfind('/');
    std::string service = slash == std::string::npos ? "" : name.substr(0, slash);
    std::string method = slash == std::string::npos ? name : name.substr(slash + 1);
    auto it = std::find_if(services.begin(), services.end(),
                           [&](const ServiceInfo& info) { return info.name() == service; });
    if (it == services.end()) {
      services.emplace_back().set_name(service);
      it = services.end() - 1;
    }
    it->add_methods(method);
  }
  return services;
}

google::protobuf::FileDescriptorSet FilesOfServices(const std::vector<std::string>& services) {
  google::protobuf::FileDescriptorSet set;
  absl::flat_hash_set<std::string> seen;
  const google::protobuf::DescriptorPool* pool = google::protobuf::DescriptorPool::generated_pool();
  for (const std::string& name : services) {
    const google::protobuf::ServiceDescriptor* service = pool->FindServiceByName(name);
    if (service != nullptr) AddFileWithDependencies(service->file(), seen, set);
  }
  return set;
}

std::unique_ptr<Service> NewIntrospectionService(const IntrospectionSource* source) {
  auto service = std::make_unique<BuiltinService>();
  const std::string prefix = absl::StrCat(kIntrospectionService, "/");
  AddProtoMethod<GetServerInfoRequest, ServerInfo>(
      *service, prefix + "GetServerInfo",
      [source](const GetServerInfoRequest&, ServerInfo& info) {
        *info.mutable_server() = source->Record();
        for (ServiceInfo& service_info : GroupMethods(source->MethodNames())) {
          *info.add_services() = std::move(service_info);
        }
      });
  AddProtoMethod<GetStatsRequest, ServerStats>(
      *service, prefix + "GetStats",
      [source](const GetStatsRequest&, ServerStats& stats) { source->FillStats(&stats); });
  return service;
}

std::unique_ptr<Service> NewReflectionService(const IntrospectionSource* source) {
  auto service = std::make_unique<BuiltinService>();
  AddProtoMethod<GetFileDescriptorSetRequest, google::protobuf::FileDescriptorSet>(
      *service, absl::StrCat(kReflectionService, "/GetFileDescriptorSet"),
      [source](const GetFileDescriptorSetRequest&, google::protobuf::FileDescriptorSet& set) {
        std::vector<std::string> names;
        for (const ServiceInfo& info : GroupMethods(source->MethodNames())) {
          names.push_back(info.name());
        }
        set = FilesOfServices(names);
      });
  return service;
}

}  // namespace ipcrpc::internal
