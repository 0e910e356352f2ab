// The server side: listens on endpoints and dispatches calls to services.
//
//   EchoService echo;
//   ipcrpc::Server server;
//   server.RegisterService(&echo);
//   server.Listen("unix:/run/user/1000/echo.sock");
//   server.Start();
//   server.Wait();  // until Shutdown()
#ifndef IPCRPC_SERVER_H_
#define IPCRPC_SERVER_H_

#include <cstdint>
#include <memory>
#include <string_view>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "ipcrpc/options.h"
#include "ipcrpc/server_context.h"
#include "ipcrpc/service.h"

namespace ipcrpc {

// Thread-safe. Handlers run on a pool of ServerOptions::handler_threads; a
// request whose deadline has passed is answered DEADLINE_EXCEEDED without
// running its handler; an unknown method gets UNIMPLEMENTED.
class Server {
 public:
  explicit Server(const ServerOptions& options = {});
  // Shuts down with no grace period if Shutdown was not called.
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Not owned; must outlive the server. ALREADY_EXISTS if a method of the
  // service is registered already; FAILED_PRECONDITION after Start.
  absl::Status RegisterService(Service* service);

  // Binds `endpoint` now (its errors are returned here: INVALID_ARGUMENT for
  // a malformed endpoint, ALREADY_EXISTS if a live server has it,
  // FAILED_PRECONDITION if a foreign object is in the way). May be called
  // several times, before or after Start; connections are served from Start.
  absl::Status Listen(std::string_view endpoint);

  absl::Status Start();

  // Blocks until the server has shut down (Shutdown, or the end of a pipe:
  // server's parent).
  void Wait();

  // Stops accepting, lets running handlers finish within `grace`, then
  // cancels the rest (their clients get CANCELLED) and waits for their
  // handlers to return. Removes the named objects the server created.
  void Shutdown(absl::Duration grace = absl::Seconds(5));

  // Counters, for monitoring and tests. A snapshot; thread-safe.
  struct Stats {
    int64_t calls_in_flight = 0;  // accepted and not yet answered
    int64_t calls_queued = 0;     // of those, waiting for a handler thread
    int64_t calls_handled = 0;    // handlers that ran
    int64_t calls_rejected = 0;   // answered without a handler (expired, overload, unknown method, ...)
  };
  Stats stats() const;

  // The endpoints Listen bound, in order, as bound: a grpc: port 0 is
  // replaced by the port it got ("grpc:127.0.0.1:41234").
  std::vector<std::string> endpoints() const;

 private:
  class Core;  // the runtime's side (rpc/server.cc)

  std::shared_ptr<Core> core_;
};

}  // namespace ipcrpc

#endif  // IPCRPC_SERVER_H_
