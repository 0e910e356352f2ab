// The base of every service: a table from full method names to handlers.
// Generated `Service` classes fill it in their constructors; it can also be
// filled by hand, for the generic untyped API:
//
//   class EchoService : public ipcrpc::Service {
//    public:
//     EchoService() {
//       AddMethod("echo.Echo/Echo", [](ipcrpc::ServerContext&, std::string_view request,
//                                      std::string& response) {
//         response.assign(request);
//         return absl::OkStatus();
//       });
//     }
//   };
#ifndef IPCRPC_SERVICE_H_
#define IPCRPC_SERVICE_H_

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "ipcrpc/server_context.h"
#include "ipcrpc/stream.h"

namespace ipcrpc {

class Service {
 public:
  // Serves one call: `request` holds the request bytes; on OK, `response`
  // holds the response bytes. May run on several threads at once.
  using MethodHandler = absl::AnyInvocable<absl::Status(
      ServerContext& context, std::string_view request, std::string& response) const>;

  // Serves one stream (any streaming kind): reads the client's messages and
  // writes its own through `stream`; the returned status ends the call. A
  // client-streaming handler writes its one reply as a message. Runs on a
  // thread of its own for as long as the stream lasts.
  using StreamHandler = absl::AnyInvocable<absl::Status(
      ServerContext& context, GenericServerStream& stream) const>;

  struct Method {
    std::string name;  // "package.Service/Method"
    MethodHandler handler;  // unary methods
    MethodKind kind = MethodKind::kUnary;
    StreamHandler stream_handler;  // streaming methods
  };

  Service() = default;
  virtual ~Service() = default;
  Service(const Service&) = delete;
  Service& operator=(const Service&) = delete;

  const std::vector<Method>& methods() const { return methods_; }

  // Adds a method; registering the service with a server that already has a
  // method of that name fails ALREADY_EXISTS.
  void AddMethod(std::string full_name, MethodHandler handler) {
    Method method;
    method.name = std::move(full_name);
    method.handler = std::move(handler);
    methods_.push_back(std::move(method));
  }

  // Adds a streaming method of `kind` (not kUnary), as AddMethod.
  void AddStreamMethod(std::string full_name, MethodKind kind, StreamHandler handler) {
    Method method;
    method.name = std::move(full_name);
    method.kind = kind;
    method.stream_handler = std::move(handler);
    methods_.push_back(std::move(method));
  }

 private:
  std::vector<Method> methods_;
};

}  // namespace ipcrpc

#endif  // IPCRPC_SERVICE_H_
