#include "grpc/grpc_common.h"

#include <arpa/inet.h>
#include <sys/un.h>

#include <condition_variable>
#include <fstream>
#include <mutex>
#include <sstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "asio/io_context.hpp"
#include "asio/post.hpp"
#include "base/clock.h"
#include "base/copy.h"
#include "base/strings.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/slice.h"
#include "wire/status_details.h"

namespace ipcrpc::internal {
namespace {

absl::Status Bad(const Endpoint& endpoint, std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("endpoint '", endpoint.text, "': ", Av(what),
                   " (expected grpc:HOST:PORT or grpc:unix:PATH)"));
}

bool IsLoopbackHost(std::string_view host) {
  if (host == "localhost" || host == "[::1]") return true;
  in_addr v4;
  const std::string text(host);
  return ::inet_pton(AF_INET, text.c_str(), &v4) == 1 && (ntohl(v4.s_addr) >> 24) == 127;
}

}  // namespace

absl::StatusOr<GrpcAddress> ParseGrpcAddress(const Endpoint& endpoint, bool tls,
                                             bool allow_plaintext_off_host) {
  GrpcAddress address;
  const std::string_view text = endpoint.address;
  if (text.substr(0, 5) == "unix:") {
    address.is_unix = true;
    address.path = std::string(text.substr(5));
    if (address.path.empty()) return Bad(endpoint, "grpc:unix: needs a socket path");
    if (address.path.size() >= sizeof(sockaddr_un{}.sun_path)) {
      return Bad(endpoint, absl::StrCat("the socket path is ", address.path.size(),
                                        " bytes; a Unix socket path has at most ",
                                        sizeof(sockaddr_un{}.sun_path) - 1));
    }
    address.target = absl::StrCat("unix:", address.path);
    address.local = true;
    return address;
  }
  const size_t colon = text.rfind(':');
  if (colon == std::string_view::npos) return Bad(endpoint, "no port");
  address.host = std::string(text.substr(0, colon));
  const std::string port(text.substr(colon + 1));
  if (address.host.empty()) return Bad(endpoint, "no host");
  if (address.host.front() == '[') {
    in6_addr v6;
    const std::string inner = address.host.substr(1, address.host.size() - 2);
    if (address.host.back() != ']' || ::inet_pton(AF_INET6, inner.c_str(), &v6) != 1) {
      return Bad(endpoint, absl::StrCat("'", address.host, "' is not a [bracketed IPv6 address]"));
    }
  } else if (address.host.find(':') != std::string::npos) {
    return Bad(endpoint, "an IPv6 address must be in brackets, as [::1]:50051");
  } else {
    for (char c : address.host) {
      if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.') {
        return Bad(endpoint, absl::StrCat("'", address.host, "' is not a host name or address"));
      }
    }
  }
  if (port.empty() || port.size() > 5 || !absl::SimpleAtoi(port, &address.port) ||
      address.port < 0 || address.port > 65535 ||
      port.find_first_not_of("0123456789") != std::string::npos) {
    return Bad(endpoint, absl::StrCat("port '", port, "' is not a number from 0 to 65535"));
  }
  address.target = absl::StrCat(address.host, ":", address.port);
  address.local = IsLoopbackHost(address.host);
  if (!address.local && !tls && !allow_plaintext_off_host) {
    return absl::InvalidArgumentError(absl::StrCat(
        "endpoint '", endpoint.text, "': '", address.host,
        "' is not a loopback address, and plaintext gRPC there lets anyone on the network "
        "read and forge calls: configure TLS (GrpcOptions certificate files) or set "
        "GrpcOptions::allow_plaintext_off_host"));
  }
  return address;
}

std::string GrpcEndpointText(const GrpcAddress& address, int port) {
  if (address.is_unix) return absl::StrCat("grpc:unix:", address.path);
  return absl::StrCat("grpc:", address.host, ":", port);
}

bool IsGrpcTransportHeader(std::string_view key) {
  return key.empty() || key[0] == ':' || key.substr(0, 5) == "grpc-" || key == "content-type" ||
         key == "te" || key == "user-agent";
}

absl::Status CheckGrpcMetadata(const Metadata& metadata) {
  for (const auto& [key, value] : metadata) {
    bool key_ok = !key.empty() && !IsGrpcTransportHeader(key);
    for (char c : key) {
      if (!(c >= 'a' && c <= 'z') && !(c >= '0' && c <= '9') && c != '-' && c != '_' &&
          c != '.') {
        key_ok = false;
      }
    }
    if (!key_ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          "metadata key '", absl::CHexEscape(key),
          "' cannot go over gRPC: keys are lowercase letters, digits, '-', '_' and '.', and "
          "not gRPC's own (grpc-*, content-type, te, user-agent, pseudo-headers)"));
    }
    if (key.size() > 4 && key.substr(key.size() - 4) == "-bin") continue;
    for (char c : value) {
      if (c < 0x20 || c > 0x7e) {
        return absl::InvalidArgumentError(absl::StrCat(
            "metadata '", key,
            "': a value with bytes that are not printable ASCII needs a key ending in -bin "
            "over gRPC"));
      }
    }
  }
  return absl::OkStatus();
}

void AppendGrpcMetadata(const std::multimap<grpc::string_ref, grpc::string_ref>& metadata,
                        Metadata* out) {
  for (const auto& [key, value] : metadata) {
    std::string_view k(key.data(), key.size());
    if (IsGrpcTransportHeader(k)) continue;
    out->emplace_back(std::string(k), std::string(value.data(), value.size()));
  }
}

std::chrono::system_clock::time_point GrpcDeadline(int64_t deadline_ns) {
  if (deadline_ns == kWireNoDeadline) return std::chrono::system_clock::time_point::max();
  return std::chrono::system_clock::now() +
         std::chrono::nanoseconds(deadline_ns - MonotonicNowNs());
}

int64_t WireDeadline(std::chrono::system_clock::time_point deadline) {
  const auto now = std::chrono::system_clock::now();
  // gRPC's "none" is far in the future (time_point::max, or its own).
  if (deadline - now > std::chrono::hours(24 * 365 * 100)) return kWireNoDeadline;
  const int64_t left =
      std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - now).count();
  const int64_t wire = MonotonicNowNs() + left;
  return wire < 0 ? 0 : wire;
}

std::string ByteBufferToString(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  out.reserve(buffer.Length());
  for (const grpc::Slice& slice : slices) {
    AppendBytes(&out, std::string_view(reinterpret_cast<const char*>(slice.begin()), slice.size()));
  }
  return out;
}

grpc::ByteBuffer StringToByteBuffer(std::string_view bytes) {
  grpc::Slice slice(bytes.data(), bytes.size());
  return grpc::ByteBuffer(&slice, 1);
}

std::string ResponseFrame(uint64_t request_id, absl::Status status, const Metadata& metadata,
                          std::string_view payload, size_t max_payload) {
  FrameHeader header;
  header.type = FrameType::kResponse;
  header.request_id = request_id;
  if (static_cast<int>(status.code()) < 0 || static_cast<int>(status.code()) > 16) {
    status = absl::UnknownError(absl::StrCat("status code ", static_cast<int>(status.code()),
                                             ": ", status.message()));
  }
  header.status_code = static_cast<uint16_t>(status.code());
  std::string_view message = Sv(status.message());
  if (message.size() > kMaxNameSize) message = message.substr(0, kMaxNameSize);
  if (!status.ok()) payload = {};
  std::string frame;
  absl::Status encoded =
      EncodeFramePrefix(header, message, metadata, payload.size(), max_payload, &frame);
  if (!encoded.ok()) {
    header.status_code = static_cast<uint16_t>(absl::StatusCode::kResourceExhausted);
    const std::string why = absl::StrCat(
        "the gRPC answer does not fit ipcrpc's limits (metadata: 64 KiB, 256 entries): ",
        encoded.message());
    EncodeFramePrefix(header, why, {}, 0, max_payload, &frame).IgnoreError();
    return frame;
  }
  AppendBytes(&frame, payload);
  return frame;
}

std::string StreamFrame(FrameType type, uint64_t request_id, std::string_view payload) {
  FrameHeader header;
  header.type = type;
  header.request_id = request_id;
  std::string frame;
  EncodeFramePrefix(header, "", {}, payload.size(), payload.size(), &frame).IgnoreError();
  AppendBytes(&frame, payload);
  return frame;
}

std::string WindowFrame(uint64_t request_id, int64_t credit) {
  std::string grant;
  PutLe(&grant, static_cast<uint64_t>(credit), 8);
  return StreamFrame(FrameType::kWindow, request_id, grant);
}

GrpcBridgeConnection::GrpcBridgeConnection(std::string description,
                                           std::optional<PeerCredentials> peer)
    : description_(std::move(description)) {
  if (peer.has_value()) {
    peer_ = *peer;
    return;
  }
  // Over gRPC's own listeners the peer is not a process of this host the
  // kernel told us about.
  peer_.pid = -1;
  peer_.uid = static_cast<uid_t>(-1);
}

void GrpcBridgeConnection::Start(asio::io_context&, MessageHandler on_message,
                                 CloseHandler on_closed) {
  on_message_ = std::make_shared<MessageHandler>(std::move(on_message));
  on_closed_ = std::move(on_closed);
  std::lock_guard<std::mutex> lock(direct_mu_);
  // Closed already (a Close between the server's accept and this Start):
  // everything goes through the loop, which drops it once closed.
  if (!direct_stopped_) direct_ = on_message_;
}

namespace {
// The connection whose DeliverHere runs on this thread, innermost first (a
// handler run there may deliver on another connection).
thread_local const GrpcBridgeConnection* delivering_on = nullptr;
}  // namespace

bool GrpcBridgeConnection::DeliverHere(std::string_view frame) {
  std::shared_ptr<MessageHandler> handler;
  {
    std::lock_guard<std::mutex> lock(direct_mu_);
    if (direct_ == nullptr) return false;
    handler = direct_;
    ++direct_running_;
  }
  const GrpcBridgeConnection* outer = delivering_on;
  delivering_on = this;
  (*handler)(frame);
  delivering_on = outer;
  std::lock_guard<std::mutex> lock(direct_mu_);
  if (--direct_running_ == 0) direct_idle_.notify_all();
  return true;
}

void GrpcBridgeConnection::StopDeliveringHere(bool wait) {
  std::unique_lock<std::mutex> lock(direct_mu_);
  direct_ = nullptr;
  direct_stopped_ = true;
  if (!wait || DeliveringHereOnThisThread()) return;
  direct_idle_.wait(lock, [&] { return direct_running_ == 0; });
}

bool GrpcBridgeConnection::DeliveringHereOnThisThread() const {
  // (Nested deliveries on several connections are not made: a handler run
  // inside one makes no call; only the innermost is known.)
  return delivering_on == this;
}

void GrpcBridgeConnection::PostFrame(asio::io_context* io, std::string frame) {
  if (io == nullptr) return;
  std::weak_ptr<Connection> weak = weak_from_this();
  asio::post(*io, [weak, frame = std::move(frame)] {
    auto self = std::static_pointer_cast<GrpcBridgeConnection>(weak.lock());
    if (self != nullptr) self->DeliverOnLoop(frame);
  });
}

void GrpcBridgeConnection::PostClosed(asio::io_context* io, absl::Status reason) {
  if (io == nullptr) return;
  std::weak_ptr<Connection> weak = weak_from_this();
  asio::post(*io, [weak, reason = std::move(reason)]() mutable {
    auto self = std::static_pointer_cast<GrpcBridgeConnection>(weak.lock());
    if (self == nullptr || self->closed_on_loop_) return;
    self->closed_on_loop_ = true;
    {
      std::lock_guard<std::mutex> lock(self->direct_mu_);
      self->direct_ = nullptr;
    }
    std::shared_ptr<MessageHandler> on_message = std::move(self->on_message_);
    self->on_message_ = nullptr;
    CloseHandler on_closed = std::move(self->on_closed_);
    self->on_closed_ = nullptr;
    if (on_closed) std::move(on_closed)(std::move(reason));
  });
}

void KeepGrpcCallbackQueueAlive() {
  static std::once_flag once;
  std::call_once(once, [] {
    // Never destroyed (reachable from this static, so not a leak): a channel
    // to nowhere that has made one callback call, whose reference to the
    // shared queue it keeps. The call fails at once (expired deadline).
    struct Keeper {
      std::shared_ptr<grpc::Channel> channel;
      std::unique_ptr<grpc::GenericStub> stub;
      grpc::ClientContext context;
      grpc::ByteBuffer request, response;
    };
    static Keeper* keeper = new Keeper;
    keeper->channel =
        grpc::CreateChannel("unix:/nonexistent/ipcrpc-keeper", grpc::InsecureChannelCredentials());
    keeper->stub = std::make_unique<grpc::GenericStub>(keeper->channel);
    keeper->request = StringToByteBuffer("");  // a valid, empty message
    keeper->context.set_deadline(std::chrono::system_clock::now());
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    keeper->stub->UnaryCall(&keeper->context, "/ipcrpc.Keeper/Keep", grpc::StubOptions(),
                            &keeper->request, &keeper->response, [&](grpc::Status) {
                              std::lock_guard<std::mutex> lock(mu);
                              done = true;
                              cv.notify_all();
                            });
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done; });
  });
}

absl::StatusOr<std::string> ReadPemFile(const std::string& path, std::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("GrpcOptions::", Av(what), ": cannot read '", path, "'"));
  }
  std::ostringstream contents;
  contents << in.rdbuf();
  if (contents.str().find("-----BEGIN") == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("GrpcOptions::", Av(what), ": '", path, "' is not a PEM file"));
  }
  return contents.str();
}

}  // namespace ipcrpc::internal
