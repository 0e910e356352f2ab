// What a handler knows about the call it serves.
#ifndef IPCRPC_SERVER_CONTEXT_H_
#define IPCRPC_SERVER_CONTEXT_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/time/time.h"

namespace ipcrpc {

// The context of one incoming call, valid while its handler runs.
// Thread-safe: IsCancelled and OnCancel may be called from any thread.
class ServerContext {
 public:
  // The call's deadline (InfiniteFuture if none).
  absl::Time deadline() const;
  // True once the client cancelled, the deadline passed, the client went away
  // or the server is shutting down past its grace period.
  bool IsCancelled() const;
  pid_t peer_pid() const;
  uid_t peer_uid() const;
  const std::vector<std::pair<std::string, std::string>>& metadata() const;
  // "package.Service/Method".
  const std::string& method() const;
  // Runs `callback` once when the call is cancelled (at once, on this thread,
  // if it already is). Callbacks registered after the handler returned never
  // run. A callback must be quick: it runs on the thread that cancels.
  void OnCancel(absl::AnyInvocable<void() &&> callback);
  // Metadata sent back with the call's answer, whatever its status: the
  // caller finds it in CallOptions::response_metadata. Keys are as for
  // request metadata (binary values by convention on keys ending in
  // "-bin"); keys starting with "grpc-" or ':' are reserved and dropped
  // (logged). Together with the request's limits apply: 256 entries and
  // 64 KiB encoded, beyond which the caller gets RESOURCE_EXHAUSTED instead
  // of the handler's answer.
  void AddResponseMetadata(std::string key, std::string value);

  // The runtime's state of the call (rpc/server_call_state.h). Opaque:
  // declared here only so that the public classes can hold it.
  class State;

 private:
  // Made by the runtime, through State (a member, so it has access).
  explicit ServerContext(std::shared_ptr<State> state);

  std::shared_ptr<State> state_;
};

}  // namespace ipcrpc

#endif  // IPCRPC_SERVER_CONTEXT_H_
