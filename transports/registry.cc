// The transport registry: endpoint syntax and the table of schemes. Adding a
// transport means adding its row here and its folder beside this file (or,
// for a test's own transport, RegisterTransport).
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <new>

#include "absl/container/inlined_vector.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/clock.h"
#include "base/mutex.h"
#include "base/status_macros.h"
#include "base/strings.h"
#include "transports/fifo/fifo_transport.h"
#include "transports/inproc/inproc_transport.h"
#include "transports/mq/mq_transport.h"
#include "transports/pipe/pipe_transport.h"
#include "transports/shm/shm_transport.h"
#include "transports/transport.h"
#include "transports/unix/unix_transport.h"
#ifdef IPCRPC_HAVE_GRPC
#include "grpc/grpc_transport.h"
#endif

namespace ipcrpc::internal {
namespace {

struct Transport {
  std::string scheme;
  ListenerFactory listen;  // empty: reserved, not in this build
  ConnectorFactory connect;
};

struct Registry {
  Mutex mu;
  std::vector<Transport> transports ABSL_GUARDED_BY(mu);
  size_t built_in ABSL_GUARDED_BY(mu) = 0;  // the first ones, never removed
};

Registry& TheRegistry() {
  static Registry* const registry = [] {
    auto* r = new Registry;  // never destroyed: used until exit
    MutexLock lock(&r->mu);
    r->transports = {
        {"unix", &CreateUnixListener, &CreateUnixConnector},
        {"pipe", &CreatePipeListener, &CreatePipeConnector},
        {"fifo", &CreateFifoListener, &CreateFifoConnector},
        {"mq", &CreateMqListener, &CreateMqConnector},
        {"shm", &CreateShmListener, &CreateShmConnector},
        {"inproc", &CreateInprocListener, &CreateInprocConnector},
#ifdef IPCRPC_HAVE_GRPC
        // Real gRPC, the one transport that reads frames (grpc/grpc_transport.h).
        {"grpc", &CreateGrpcListener, &CreateGrpcConnector},
#else
        {"grpc", nullptr, nullptr},
#endif
    };
    r->built_in = r->transports.size();
    return r;
  }();
  return *registry;
}

absl::Status CheckScheme(std::string_view text, std::string_view scheme) {
  if (scheme.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("endpoint '", Av(text), "': empty scheme"));
  }
  for (char c : scheme) {
    if (!std::islower(static_cast<unsigned char>(c))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "endpoint '", Av(text), "': scheme '", Av(scheme), "' is not lower-case letters"));
    }
  }
  return absl::OkStatus();
}

// A copy of the row, so that it can be used without the registry's lock.
absl::StatusOr<Transport> Find(const Endpoint& endpoint) {
  Registry& registry = TheRegistry();
  MutexLock lock(&registry.mu);
  for (const Transport& transport : registry.transports) {
    if (endpoint.scheme != transport.scheme) continue;
    if (!transport.listen) {
      return absl::UnimplementedError(absl::StrCat(
          "endpoint '", endpoint.text, "': transport '", endpoint.scheme,
          ":' is not in this build (ipcrpc was configured without gRPC: install "
          "libgrpc++-dev and configure with -DIPCRPC_GRPC=ON)"));
    }
    return transport;
  }
  std::vector<std::string> schemes;
  for (const Transport& transport : registry.transports) schemes.push_back(transport.scheme);
  return absl::InvalidArgumentError(absl::StrCat("endpoint '", endpoint.text,
                                                 "': unknown scheme '", endpoint.scheme,
                                                 "' (known: ", absl::StrJoin(schemes, ", "), ")"));
}

// The status payload that marks a failure MarkNotDelivered.
constexpr char kNotDeliveredUrl[] = "ipcrpc.internal/not-delivered";

}  // namespace

absl::Status MarkNotDelivered(absl::Status status) {
  if (!status.ok()) status.SetPayload(kNotDeliveredUrl, absl::Cord());
  return status;
}

absl::Status Connection::SendBodyWithin(absl::Span<const std::string_view> parts,
                                        const BodyWriter& body, int priority,
                                        int64_t deadline_ns) {
  // This thread's buffer (a send does not nest), kept up to 2 MiB so that a
  // large body's pages are faulted in once, not on every call; the body
  // goes kHeadroom bytes in, clear of glibc's slow copy distance from a
  // heap block carved beside it. (The same figures as include/ipcrpc/
  // scratch.h's kSerializeHeadroom and ScratchString::kKeptBytes, which
  // this layer may not include.)
  constexpr size_t kHeadroom = 128;
  constexpr size_t kKeptBytes = (2u << 20) + (64u << 10);
  thread_local std::string buffer;
  try {
    buffer.resize(kHeadroom + body.size());
  } catch (const std::bad_alloc&) {
    std::string().swap(buffer);
    return MarkNotDelivered(absl::ResourceExhaustedError(absl::StrCat(
        description(), ": no memory to serialize a message of ", body.size(), " bytes")));
  }
  body.WriteFlat(buffer.data() + kHeadroom);
  absl::InlinedVector<std::string_view, 4> all(parts.begin(), parts.end());
  all.push_back(std::string_view(buffer).substr(kHeadroom));
  absl::Status sent = SendWithin(all, priority, deadline_ns);
  if (buffer.capacity() > kKeptBytes) std::string().swap(buffer);
  return sent;
}

absl::StatusOr<size_t> SendSize(absl::Span<const std::string_view> parts,
                                size_t max_message_size, std::string_view description,
                                size_t body_size) {
  size_t total = body_size;
  for (std::string_view part : parts) total += part.size();
  if (total > max_message_size || total < body_size) {
    return absl::ResourceExhaustedError(absl::StrCat(Av(description), ": message of ", total,
                                                     " bytes exceeds max_message_size ",
                                                     max_message_size));
  }
  return total;
}

bool IsNotDelivered(const absl::Status& status) {
  return !status.ok() && status.GetPayload(kNotDeliveredUrl).has_value();
}

absl::Status WithoutDeliveryMark(absl::Status status) {
  status.ErasePayload(kNotDeliveredUrl);
  return status;
}

TransportOptions::ConnectDeadline TransportOptions::ConnectDeadlineFor(
    int64_t call_deadline_ns) const {
  const int64_t by_timeout = AddDurationNs(MonotonicNowNs(), connect_timeout);
  if (call_deadline_ns < by_timeout) return {call_deadline_ns, "before the call's deadline"};
  return {by_timeout, absl::StrCat("within ChannelOptions::connect_timeout (",
                                   absl::FormatDuration(connect_timeout), ")")};
}

bool TransportOptions::AllowsUid(uid_t uid) const {
  return uid == ::geteuid() ||
         std::find(allowed_uids.begin(), allowed_uids.end(), uid) != allowed_uids.end();
}

absl::Status TransportOptions::CheckServerUid(std::string_view endpoint, uid_t uid,
                                              std::string_view how) const {
  const uid_t self = ::geteuid();
  if (allowed_server_uids.empty() ? (uid == self || uid == 0)
                                  : std::find(allowed_server_uids.begin(),
                                              allowed_server_uids.end(),
                                              uid) != allowed_server_uids.end()) {
    return absl::OkStatus();
  }
  return absl::PermissionDeniedError(absl::StrCat(
      Av(endpoint), ": the server is uid ", uid, " (", Av(how), "), which is ",
      allowed_server_uids.empty()
          ? absl::StrCat("neither this process's uid ", self, " nor root")
          : std::string("not in ChannelOptions::allowed_server_uids"),
      "; nothing was sent to it"));
}

absl::Status RegisterTransport(std::string_view scheme, ListenerFactory listen,
                               ConnectorFactory connect) {
  IPCRPC_RETURN_IF_ERROR(CheckScheme(absl::StrCat(Av(scheme), ":"), scheme));
  if (!listen || !connect) {
    return absl::InvalidArgumentError(
        absl::StrCat("transport '", Av(scheme), ":': a listener and a connector factory are needed"));
  }
  Registry& registry = TheRegistry();
  MutexLock lock(&registry.mu);
  for (const Transport& transport : registry.transports) {
    if (transport.scheme == scheme) {
      return absl::AlreadyExistsError(
          absl::StrCat("transport '", Av(scheme), ":' is registered already"));
    }
  }
  registry.transports.push_back({std::string(scheme), std::move(listen), std::move(connect)});
  return absl::OkStatus();
}

void UnregisterTransport(std::string_view scheme) {
  Registry& registry = TheRegistry();
  MutexLock lock(&registry.mu);
  for (size_t i = registry.built_in; i < registry.transports.size(); ++i) {
    if (registry.transports[i].scheme == scheme) {
      registry.transports.erase(registry.transports.begin() + static_cast<ptrdiff_t>(i));
      return;
    }
  }
}

absl::StatusOr<Endpoint> ParseEndpoint(std::string_view text) {
  size_t colon = text.find(':');
  if (colon == std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("endpoint '", Av(text),
                     "': no scheme (expected scheme:address, e.g. unix:/run/app.sock or pipe:)"));
  }
  std::string_view scheme = text.substr(0, colon);
  IPCRPC_RETURN_IF_ERROR(CheckScheme(text, scheme));
  Endpoint endpoint{std::string(scheme), std::string(text.substr(colon + 1)), std::string(text)};
  IPCRPC_RETURN_IF_ERROR(Find(endpoint).status());
  return endpoint;
}

absl::StatusOr<std::unique_ptr<Listener>> CreateListener(std::string_view text,
                                                         const TransportOptions& options) {
  IPCRPC_ASSIGN_OR_RETURN(Endpoint endpoint, ParseEndpoint(text));
  IPCRPC_ASSIGN_OR_RETURN(Transport transport, Find(endpoint));
  return transport.listen(endpoint, options);
}

absl::StatusOr<std::unique_ptr<Connector>> CreateConnector(std::string_view text,
                                                           const TransportOptions& options) {
  IPCRPC_ASSIGN_OR_RETURN(Endpoint endpoint, ParseEndpoint(text));
  IPCRPC_ASSIGN_OR_RETURN(Transport transport, Find(endpoint));
  return transport.connect(endpoint, options);
}

}  // namespace ipcrpc::internal
