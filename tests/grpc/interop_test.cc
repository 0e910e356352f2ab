// ipcrpc against programs that nobody in the project wrote the protocol for
// (and, last, TLS and the plaintext rule):
// a client and a server that grpc_cpp_plugin generated (grpc_interop_peer,
// which links gRPC only), and a Python grpcio client (Debian's
// python3-grpcio), each in a process of its own, over real gRPC.
#include <fcntl.h>
#include <sys/stat.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "base/mutex.h"
#include "base/status_macros.h"
#include "base/syscall.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "interop.ipcrpc.h"
#include "ipcrpc/ipcrpc.h"
#include "tests/util/process.h"
#include "tests/util/status_matchers.h"

namespace ipcrpc::testing {
namespace {

using ::testing::HasSubstr;

class InteropImpl final : public interop::Interop::Service {
 public:
  absl::Status Echo(ServerContext& context, const interop::Msg& request,
                    interop::Msg& reply) override {
    for (const auto& [key, value] : context.metadata()) {
      if (key == "x-echo") context.AddResponseMetadata("x-echoed", value);
    }
    reply.set_text(request.text());
    last_peer_pid_.store(context.peer_pid());
    last_peer_uid_.store(context.peer_uid());
    return absl::OkStatus();
  }
  pid_t last_peer_pid() const { return last_peer_pid_.load(); }
  uid_t last_peer_uid() const { return last_peer_uid_.load(); }
  absl::Status Count(ServerContext&, const interop::Msg& request,
                     ServerWriter<interop::Msg>& writer) override {
    for (int i = 0; i < request.n(); ++i) {
      interop::Msg message;
      message.set_text(std::to_string(i));
      if (!writer.Write(message)) break;
    }
    return absl::OkStatus();
  }
  absl::Status Sleep(ServerContext& context, const interop::Msg& request,
                     interop::Msg&) override {
    internal::Notification cancelled;
    context.OnCancel([&cancelled] { cancelled.Notify(); });
    if (cancelled.WaitForNotificationWithTimeout(absl::Milliseconds(request.n()))) {
      cancellations_.fetch_add(1);
      return absl::CancelledError("Sleep was cancelled");
    }
    return absl::OkStatus();
  }
  absl::Status Cancellations(ServerContext&, const interop::Msg&, interop::Msg& reply) override {
    reply.set_n(cancellations_.load());
    return absl::OkStatus();
  }
  absl::Status Fail(ServerContext&, const interop::Msg&, interop::Msg&) override {
    absl::Status status = absl::FailedPreconditionError("failed on purpose");
    interop::Msg detail;
    detail.set_text("detail");
    status.SetPayload("type.googleapis.com/interop.Msg", absl::Cord(detail.SerializeAsString()));
    return status;
  }

 private:
  std::atomic<int> cancellations_{0};
  std::atomic<pid_t> last_peer_pid_{0};
  std::atomic<uid_t> last_peer_uid_{0};
};

// An ipcrpc server with InteropImpl on grpc:127.0.0.1, port picked. The
// listener registers the unary methods the server has when it is made with
// gRPC as unary methods, and serves the rest through gRPC's generic
// service: `register_after_listen` makes every method take that second way.
struct IpcrpcGrpcServer {
  explicit IpcrpcGrpcServer(int max_connections = 0, bool register_after_listen = false) {
    ServerOptions options;
    options.registry = false;
    if (max_connections > 0) options.max_connections = max_connections;
    server = std::make_unique<Server>(options);
    if (!register_after_listen) {
      EXPECT_THAT(server->RegisterService(&impl), IsOk());
    }
    EXPECT_THAT(server->Listen("grpc:127.0.0.1:0"), IsOk());
    if (register_after_listen) {
      EXPECT_THAT(server->RegisterService(&impl), IsOk());
    }
    EXPECT_THAT(server->Start(), IsOk());
    target = std::string(absl::StripPrefix(server->endpoints().at(0), "grpc:"));
  }
  ~IpcrpcGrpcServer() { server->Shutdown(absl::Seconds(1)); }

  InteropImpl impl;
  std::unique_ptr<Server> server;
  std::string target;  // "127.0.0.1:PORT"
};

// Runs argv to its end; its exit status and what it printed.
struct Ran {
  int status = -1;
  std::string out;
};
Ran RunToEnd(const std::vector<std::string>& argv) {
  Ran ran;
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return ran;
  internal::UniqueFd out_read(out[0]);
  internal::UniqueFd out_write(out[1]);
  auto pid = Spawn(argv, {}, {}, out_write.get());
  if (!pid.ok()) {
    ran.out = pid.status().ToString();
    return ran;
  }
  out_write.Reset();
  char buffer[4096];
  ssize_t n;
  while ((n = read(out_read.get(), buffer, sizeof(buffer))) > 0) ran.out.append(buffer, n);
  std::optional<int> status = WaitForExit(*pid, absl::Seconds(60));
  if (status.has_value() && WIFEXITED(*status)) ran.status = WEXITSTATUS(*status);
  return ran;
}

// grpc_interop_peer's server (grpc_cpp_plugin's code) in a process of its
// own, on a port it picked.
struct GrpcPeerServer {
  pid_t pid = -1;
  int port = 0;
};
absl::StatusOr<GrpcPeerServer> StartGrpcPeerServer() {
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return absl::InternalError("pipe2");
  internal::UniqueFd out_read(out[0]), out_write(out[1]);
  GrpcPeerServer peer;
  IPCRPC_ASSIGN_OR_RETURN(peer.pid, Spawn({IPCRPC_GRPC_PEER, "server"}, {}, {}, out_write.get()));
  out_write.Reset();
  absl::StatusOr<std::string> line = ReadLine(out_read.get(), absl::Seconds(20));
  if (!line.ok() || !absl::SimpleAtoi(absl::StripPrefix(*line, "PORT "), &peer.port)) {
    kill(peer.pid, SIGKILL);
    WaitForExit(peer.pid, absl::Seconds(20));
    return absl::InternalError(absl::StrCat("grpc_interop_peer said no port: ",
                                            line.ok() ? *line : line.status().ToString()));
  }
  return peer;
}

// Waits (10 s at most) until the Interop server behind `stub` has counted
// more than `before` cancelled Sleeps (it counts once the handler has
// returned); what it counts by then.
int WaitForCancellations(interop::Interop::Stub& stub, int before) {
  int seen = before;
  for (const absl::Time until = absl::Now() + absl::Seconds(10);
       seen <= before && absl::Now() < until; absl::SleepFor(absl::Milliseconds(10))) {
    auto after = stub.Cancellations(interop::Msg());
    EXPECT_THAT(after, IsOk());
    if (!after.ok()) break;
    seen = after->n();
  }
  return seen;
}

TEST(GrpcInteropTest, AGrpcGeneratedClientCallsAnIpcrpcServer) {
  for (bool register_after_listen : {false, true}) {
    SCOPED_TRACE(register_after_listen ? "service registered after Listen"
                                       : "service registered before Listen");
    IpcrpcGrpcServer server(/*max_connections=*/0, register_after_listen);
    Ran client = RunToEnd({IPCRPC_GRPC_PEER, "client", server.target});
    EXPECT_EQ(client.status, 0) << client.out;
    EXPECT_THAT(client.out, Not(::testing::ContainsRegex("(^|\n)FAIL "))) << client.out;
    EXPECT_THAT(client.out, HasSubstr("ok   error status with details")) << client.out;
  }
}

// A gRPC peer's server connection outlives its last call for a while (so
// that one call after another does not open one each), but at
// ServerOptions::max_connections an idle one makes room: two client
// processes one after the other (two TCP connections, two peers), with room
// for one, are both served.
TEST(GrpcInteropTest, AnIdlePeerMakesRoomAtTheConnectionLimit) {
  IpcrpcGrpcServer server(/*max_connections=*/1);
  for (int i = 0; i < 2; ++i) {
    Ran client = RunToEnd({IPCRPC_GRPC_PEER, "one_call", server.target});
    EXPECT_EQ(client.status, 0) << "client " << i << ": " << client.out;
    EXPECT_THAT(client.out, HasSubstr("ok   unary")) << "client " << i << ": " << client.out;
  }
}

// Over grpc:unix: the server accepts the connections itself: a call's
// ServerContext says which process made it (SO_PEERCRED), for a client
// gRPC's generated code made in another process and for an ipcrpc stub in
// this one; over TCP it cannot (-1).
TEST(GrpcInteropTest, OverAUnixSocketAHandlerKnowsTheCallersPidAndUid) {
  InteropImpl impl;
  ServerOptions options;
  options.registry = false;
  Server server(options);
  const std::string path = "/tmp/" + UniqueName("ipcrpc-grpc-peer") + ".sock";
  ASSERT_THAT(server.RegisterService(&impl), IsOk());
  ASSERT_THAT(server.Listen("grpc:unix:" + path), IsOk());
  ASSERT_THAT(server.Start(), IsOk());

  int out[2];
  ASSERT_EQ(pipe2(out, O_CLOEXEC), 0);
  internal::UniqueFd out_read(out[0]);
  internal::UniqueFd out_write(out[1]);
  auto pid = Spawn({IPCRPC_GRPC_PEER, "one_call", "unix:" + path}, {}, {}, out_write.get());
  ASSERT_THAT(pid, IsOk());
  out_write.Reset();
  std::string printed;
  char buffer[1024];
  for (ssize_t n; (n = read(out_read.get(), buffer, sizeof(buffer))) > 0;) printed.append(buffer, n);
  std::optional<int> status = WaitForExit(*pid, absl::Seconds(30));
  ASSERT_TRUE(status.has_value() && WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << printed;
  EXPECT_EQ(impl.last_peer_pid(), *pid);
  EXPECT_EQ(impl.last_peer_uid(), ::getuid());

  auto channel = Channel::Connect("grpc:unix:" + path);
  ASSERT_THAT(channel, IsOk());
  interop::Interop::Stub stub(*channel);
  interop::Msg request;
  request.set_text("hi");
  ASSERT_THAT(stub.Echo(request), IsOk());
  EXPECT_EQ(impl.last_peer_pid(), ::getpid());

  IpcrpcGrpcServer tcp;
  auto tcp_channel = Channel::Connect("grpc:" + tcp.target);
  ASSERT_THAT(tcp_channel, IsOk());
  interop::Interop::Stub tcp_stub(*tcp_channel);
  ASSERT_THAT(tcp_stub.Echo(request), IsOk());
  EXPECT_EQ(tcp.impl.last_peer_pid(), -1);
  server.Shutdown(absl::Seconds(1));
  EXPECT_FALSE(std::filesystem::exists(path)) << "the socket file was left behind";
}

TEST(GrpcInteropTest, APythonGrpcioClientCallsAnIpcrpcServer) {
  IpcrpcGrpcServer server;
  Ran client = RunToEnd({"/usr/bin/python3", IPCRPC_INTEROP_PY, server.target});
  EXPECT_EQ(client.status, 0) << client.out;
  EXPECT_THAT(client.out, Not(::testing::ContainsRegex("(^|\n)FAIL "))) << client.out;
  EXPECT_THAT(client.out, HasSubstr("ok   error status with details")) << client.out;
}

TEST(GrpcInteropTest, AnIpcrpcStubCallsAGrpcGeneratedServer) {
  absl::StatusOr<GrpcPeerServer> peer = StartGrpcPeerServer();
  ASSERT_THAT(peer, IsOk());

  auto channel = Channel::Connect(absl::StrCat("grpc:127.0.0.1:", peer->port));
  ASSERT_THAT(channel, IsOk());
  interop::Interop::Stub stub(*channel);
  {
    std::vector<std::pair<std::string, std::string>> response_metadata;
    CallOptions options;
    options.metadata = {{"x-echo", "hi"}};
    options.response_metadata = &response_metadata;
    interop::Msg request;
    request.set_text("hello");
    auto reply = stub.Echo(request, options);
    ASSERT_THAT(reply, IsOk());
    EXPECT_EQ(reply->text(), "hello");
    EXPECT_THAT(response_metadata, ::testing::Contains(std::pair<std::string, std::string>(
                                       "x-echoed", "hi")));
  }
  {
    interop::Msg request;
    request.set_n(5);
    auto reader = stub.Count(request);
    interop::Msg message;
    std::vector<std::string> texts;
    while (reader.Read(&message)) texts.push_back(message.text());
    EXPECT_THAT(reader.Finish(), IsOk());
    EXPECT_THAT(texts, ::testing::ElementsAre("0", "1", "2", "3", "4"));
  }
  {
    CallOptions options;
    options.timeout = absl::Milliseconds(100);
    interop::Msg request;
    request.set_n(10000);
    const absl::Time start = absl::Now();
    EXPECT_THAT(stub.Sleep(request, options), StatusIs(absl::StatusCode::kDeadlineExceeded));
    EXPECT_GE(absl::Now() - start, absl::Milliseconds(100));
    EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  }
  {
    // The deadline above cancelled a Sleep too: once its handler has
    // counted it, this one is the next.
    absl::StatusOr<interop::Msg> before;
    for (const absl::Time until = absl::Now() + absl::Seconds(10); absl::Now() < until;
         absl::SleepFor(absl::Milliseconds(10))) {
      before = stub.Cancellations(interop::Msg());
      ASSERT_THAT(before, IsOk());
      if (before->n() == 1) break;
    }
    ASSERT_EQ(before->n(), 1);
    interop::Msg request;
    request.set_n(10000);
    internal::Notification done;
    absl::Status status;
    Call call = stub.SleepAsync(request, CallOptions(),
                                [&](absl::StatusOr<interop::Msg> result) {
                                  status = result.status();
                                  done.Notify();
                                });
    absl::SleepFor(absl::Milliseconds(200));
    call.Cancel();
    ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(30)));
    EXPECT_THAT(status, StatusIs(absl::StatusCode::kCancelled));
    // The gRPC server's handler saw it.
    EXPECT_EQ(WaitForCancellations(stub, before->n()), before->n() + 1);
  }
  {
    auto failed = stub.Fail(interop::Msg());
    EXPECT_THAT(failed, StatusIs(absl::StatusCode::kFailedPrecondition, "failed on purpose"));
    auto payload = failed.status().GetPayload("type.googleapis.com/interop.Msg");
    ASSERT_TRUE(payload.has_value());
    interop::Msg detail;
    EXPECT_TRUE(detail.ParseFromString(std::string(*payload)));
    EXPECT_EQ(detail.text(), "detail");
  }
  channel->reset();
  kill(peer->pid, SIGTERM);
  std::optional<int> status = WaitForExit(peer->pid, absl::Seconds(20));
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << *status;
}

// A handler that calls on: its Sleep is the gRPC server's Sleep, called
// synchronously as part of the incoming call (CallOptions::From).
class RelayImpl final : public interop::Interop::Service {
 public:
  explicit RelayImpl(std::shared_ptr<Channel> next) : next_(std::move(next)) {}
  absl::Status Sleep(ServerContext& context, const interop::Msg& request,
                     interop::Msg& reply) override {
    const absl::Time start = absl::Now();
    absl::StatusOr<interop::Msg> next = next_.Sleep(request, CallOptions::From(context));
    {
      std::lock_guard<std::mutex> lock(mu_);
      inner_status_ = next.status();
      inner_took_ = absl::Now() - start;
    }
    done_.Notify();
    if (!next.ok()) return next.status();
    reply = *next;
    return absl::OkStatus();
  }
  internal::Notification done_;
  std::mutex mu_;
  absl::Status inner_status_;
  absl::Duration inner_took_;

 private:
  interop::Interop::Stub next_;
};

// A sync call over grpc: is made on its caller's thread (Connection::
// CallHere); the incoming call's cancellation must still reach it there,
// and through it the gRPC server.
TEST(GrpcInteropTest, ASyncCallToAGrpcServerEndsWhenTheCallItServesIsCancelled) {
  absl::StatusOr<GrpcPeerServer> peer = StartGrpcPeerServer();
  ASSERT_THAT(peer, IsOk());
  // Gone whatever the test's outcome (it would hold ctest's output open).
  absl::Cleanup stop_peer = [&] {
    kill(peer->pid, SIGTERM);
    WaitForExit(peer->pid, absl::Seconds(20));
  };
  auto grpc_channel = Channel::Connect(absl::StrCat("grpc:127.0.0.1:", peer->port));
  ASSERT_THAT(grpc_channel, IsOk());
  interop::Interop::Stub grpc_stub(*grpc_channel);
  auto before = grpc_stub.Cancellations(interop::Msg());
  ASSERT_THAT(before, IsOk());

  RelayImpl relay(*grpc_channel);
  ServerOptions options;
  options.registry = false;
  Server server(options);
  ASSERT_THAT(server.RegisterService(&relay), IsOk());
  const std::string path = "/tmp/" + UniqueName("ipcrpc-relay") + ".sock";
  ASSERT_THAT(server.Listen("unix:" + path), IsOk());
  ASSERT_THAT(server.Start(), IsOk());
  auto channel = Channel::Connect("unix:" + path);
  ASSERT_THAT(channel, IsOk());
  interop::Interop::Stub stub(*channel);

  interop::Msg request;
  request.set_n(20000);  // 20 s unless cancelled
  internal::Notification done;
  absl::Status status;
  Call call = stub.SleepAsync(request, CallOptions(), [&](absl::StatusOr<interop::Msg> result) {
    status = result.status();
    done.Notify();
  });
  // Cancelled once the gRPC server runs the relayed Sleep.
  int sleeping = 0;
  for (const absl::Time until = absl::Now() + absl::Seconds(20);
       sleeping == 0 && absl::Now() < until; absl::SleepFor(absl::Milliseconds(5))) {
    auto now = grpc_stub.Sleeping(interop::Msg());
    ASSERT_THAT(now, IsOk());
    sleeping = now->n();
  }
  ASSERT_EQ(sleeping, 1);
  call.Cancel();
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kCancelled));
  ASSERT_TRUE(relay.done_.WaitForNotificationWithTimeout(absl::Seconds(10)));
  {
    std::lock_guard<std::mutex> lock(relay.mu_);
    EXPECT_THAT(relay.inner_status_, StatusIs(absl::StatusCode::kCancelled));
    EXPECT_LT(relay.inner_took_, absl::Seconds(10));  // not the 20 s of the Sleep
  }
  // The gRPC server's handler saw the cancellation.
  EXPECT_EQ(WaitForCancellations(grpc_stub, before->n()), before->n() + 1);

  server.Shutdown(absl::Seconds(1));
  channel->reset();
  grpc_channel->reset();
}

// TLS and the plaintext rule, with a certificate made for the test
// (openssl) that is its own CA.
class GrpcTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = UniqueName("/tmp/ipcrpc-tls");
    ASSERT_EQ(mkdir(dir_.c_str(), 0700), 0);
    const std::string command = absl::StrCat(
        "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
        "-addext subjectAltName=IP:127.0.0.1,DNS:localhost -keyout ",
        key(), " -out ", cert(), " 2>/dev/null");
    ASSERT_EQ(system(command.c_str()), 0) << command;
  }
  void TearDown() override {
    unlink(key().c_str());
    unlink(cert().c_str());
    rmdir(dir_.c_str());
  }
  std::string key() const { return dir_ + "/key.pem"; }
  std::string cert() const { return dir_ + "/cert.pem"; }

  absl::Status Echo(const std::string& endpoint, const GrpcOptions& grpc) {
    ChannelOptions options;
    options.grpc = grpc;
    options.connect_timeout = absl::Seconds(2);
    auto channel = Channel::Connect(endpoint, options);
    if (!channel.ok()) return channel.status();
    interop::Interop::Stub stub(*channel);
    interop::Msg request;
    request.set_text("over tls");
    CallOptions call;
    call.timeout = absl::Seconds(10);
    auto reply = stub.Echo(request, call);
    if (!reply.ok()) return reply.status();
    return reply->text() == "over tls" ? absl::OkStatus() : absl::InternalError(reply->text());
  }

  std::string dir_;
};

TEST_F(GrpcTlsTest, ServesTlsAndRefusesPlaintextClients) {
  InteropImpl impl;
  ServerOptions options;
  options.registry = false;
  options.grpc.certificate_chain_file = cert();
  options.grpc.private_key_file = key();
  Server server(options);
  ASSERT_THAT(server.RegisterService(&impl), IsOk());
  ASSERT_THAT(server.Listen("grpc:127.0.0.1:0"), IsOk());
  ASSERT_THAT(server.Start(), IsOk());
  const std::string endpoint = server.endpoints().at(0);
  GrpcOptions tls;
  tls.root_certificates_file = cert();
  EXPECT_THAT(Echo(endpoint, tls), IsOk());
  // A plaintext client gets no answer from a TLS server.
  EXPECT_THAT(Echo(endpoint, GrpcOptions()), ::testing::Not(IsOk()));
  // Nor does a client that trusts another CA (here: none but the system's).
  GrpcOptions system_roots;
  system_roots.use_tls = true;
  EXPECT_THAT(Echo(endpoint, system_roots), ::testing::Not(IsOk()));
  server.Shutdown(absl::Seconds(1));
}

TEST_F(GrpcTlsTest, MutualTlsRequiresAClientCertificate) {
  InteropImpl impl;
  ServerOptions options;
  options.registry = false;
  options.grpc.certificate_chain_file = cert();
  options.grpc.private_key_file = key();
  options.grpc.root_certificates_file = cert();
  options.grpc.require_client_certificate = true;
  Server server(options);
  ASSERT_THAT(server.RegisterService(&impl), IsOk());
  ASSERT_THAT(server.Listen("grpc:127.0.0.1:0"), IsOk());
  ASSERT_THAT(server.Start(), IsOk());
  const std::string endpoint = server.endpoints().at(0);
  GrpcOptions no_certificate;
  no_certificate.root_certificates_file = cert();
  EXPECT_THAT(Echo(endpoint, no_certificate), ::testing::Not(IsOk()));
  GrpcOptions with_certificate = no_certificate;
  with_certificate.certificate_chain_file = cert();
  with_certificate.private_key_file = key();
  EXPECT_THAT(Echo(endpoint, with_certificate), IsOk());
  server.Shutdown(absl::Seconds(1));
}

TEST_F(GrpcTlsTest, PlaintextOffTheHostNeedsTlsOrAnExplicitOptIn) {
  Server plain;
  EXPECT_THAT(plain.Listen("grpc:0.0.0.0:0"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a loopback address")));
  EXPECT_THAT(Channel::Connect("grpc:192.0.2.1:50051"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("allow_plaintext_off_host")));
  ServerOptions opted_in;
  opted_in.registry = false;
  opted_in.grpc.allow_plaintext_off_host = true;
  Server anywhere(opted_in);
  EXPECT_THAT(anywhere.Listen("grpc:0.0.0.0:0"), IsOk());
  ServerOptions with_tls;
  with_tls.registry = false;
  with_tls.grpc.certificate_chain_file = cert();
  with_tls.grpc.private_key_file = key();
  Server tls(with_tls);
  EXPECT_THAT(tls.Listen("grpc:0.0.0.0:0"), IsOk());
  // Bad endpoints and files name what is wrong.
  EXPECT_THAT(plain.Listen("grpc:127.0.0.1:99999"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("port '99999'")));
  EXPECT_THAT(plain.Listen("grpc:unix:"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("needs a socket path")));
  EXPECT_THAT(plain.Listen("grpc:::1:5"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("in brackets")));
  ServerOptions missing;
  missing.grpc.certificate_chain_file = dir_ + "/none.pem";
  missing.grpc.private_key_file = key();
  Server broken(missing);
  EXPECT_THAT(broken.Listen("grpc:127.0.0.1:0"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("none.pem")));
}

}  // namespace
}  // namespace ipcrpc::testing
