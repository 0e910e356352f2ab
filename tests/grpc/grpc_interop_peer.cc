// The other side of the gRPC interop tests, written only against gRPC and
// the code grpc_cpp_plugin generates (no ipcrpc here):
//   grpc_interop_peer client HOST:PORT   calls an Interop server, checks
//                                        every answer; exit 0 if all hold
//   grpc_interop_peer server             serves Interop, and gRPC's standard
//                                        server reflection, on 127.0.0.1 at a
//                                        port it picks, printed as "PORT n";
//                                        stops on SIGTERM
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "interop.grpc.pb.h"

namespace {

using std::chrono::milliseconds;

int failures = 0;

void Check(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  std::fflush(stdout);
  if (!ok) ++failures;
}

std::string Describe(const grpc::Status& status) {
  return std::to_string(status.error_code()) + " " + status.error_message();
}

// One unary call, nothing else: "ok   unary: ..." or "FAIL unary: ...".
int RunOneCall(const std::string& target) {
  auto stub = interop::Interop::NewStub(
      grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  interop::Msg request, reply;
  request.set_text("hello");
  grpc::Status status = stub->Echo(&context, request, &reply);
  const bool ok = status.ok() && reply.text() == "hello";
  Check(ok, "unary: " + Describe(status) + " " + reply.text());
  return ok ? 0 : 1;
}

int RunClient(const std::string& target) {
  auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  auto stub = interop::Interop::NewStub(channel);
  {
    grpc::ClientContext context;
    context.AddMetadata("x-echo", "hi");
    interop::Msg request, reply;
    request.set_text("hello");
    grpc::Status status = stub->Echo(&context, request, &reply);
    Check(status.ok() && reply.text() == "hello", "unary: " + Describe(status) + " " + reply.text());
    bool echoed = false;
    for (const auto& [key, value] : context.GetServerTrailingMetadata()) {
      if (key == "x-echoed" && value == "hi") echoed = true;
    }
    for (const auto& [key, value] : context.GetServerInitialMetadata()) {
      if (key == "x-echoed" && value == "hi") echoed = true;
    }
    Check(echoed, "metadata both ways");
  }
  {
    grpc::ClientContext context;
    interop::Msg request, reply;
    request.set_n(5);
    auto reader = stub->Count(&context, request);
    int n = 0;
    bool in_order = true;
    while (reader->Read(&reply)) {
      if (reply.text() != std::to_string(n)) in_order = false;
      ++n;
    }
    grpc::Status status = reader->Finish();
    Check(status.ok() && n == 5 && in_order,
          "server streaming: " + Describe(status) + ", " + std::to_string(n) + " messages");
  }
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + milliseconds(100));
    interop::Msg request, reply;
    request.set_n(10000);
    const auto start = std::chrono::steady_clock::now();
    grpc::Status status = stub->Sleep(&context, request, &reply);
    const auto took = std::chrono::steady_clock::now() - start;
    Check(status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED && took < milliseconds(5000),
          "deadline: " + Describe(status));
  }
  {
    // The deadline above cancelled a Sleep too: once its handler has
    // counted it (1), this one is the next.
    interop::Msg before_request, before;
    for (int i = 0; i < 1000; ++i) {
      grpc::ClientContext before_context;
      stub->Cancellations(&before_context, before_request, &before);
      if (before.n() == 1) break;
      std::this_thread::sleep_for(milliseconds(10));
    }
    Check(before.n() == 1, "the deadline reached the handler");
    grpc::ClientContext context;
    interop::Msg request, reply;
    request.set_n(10000);
    std::thread canceller([&] {
      std::this_thread::sleep_for(milliseconds(200));
      context.TryCancel();
    });
    grpc::Status status = stub->Sleep(&context, request, &reply);
    canceller.join();
    Check(status.error_code() == grpc::StatusCode::CANCELLED, "cancel: " + Describe(status));
    // The handler saw it (it counts once it has returned).
    int seen = before.n();
    for (int i = 0; i < 500 && seen <= before.n(); ++i) {
      grpc::ClientContext after_context;
      interop::Msg after;
      stub->Cancellations(&after_context, before_request, &after);
      seen = after.n();
      if (seen <= before.n()) std::this_thread::sleep_for(milliseconds(10));
    }
    Check(seen == before.n() + 1, "the handler saw the cancellation");
  }
  {
    grpc::ClientContext context;
    interop::Msg request, reply;
    grpc::Status status = stub->Fail(&context, request, &reply);
    interop::RpcStatus details;
    interop::Msg detail;
    const bool parsed = details.ParseFromString(status.error_details()) &&
                        details.details_size() == 1 &&
                        details.details(0).type_url() == "type.googleapis.com/interop.Msg" &&
                        details.details(0).UnpackTo(&detail) && detail.text() == "detail";
    Check(status.error_code() == grpc::StatusCode::FAILED_PRECONDITION &&
              status.error_message() == "failed on purpose" && parsed,
          "error status with details: " + Describe(status));
  }
  return failures == 0 ? 0 : 1;
}

class InteropService final : public interop::Interop::Service {
  grpc::Status Echo(grpc::ServerContext* context, const interop::Msg* request,
                    interop::Msg* reply) override {
    for (const auto& [key, value] : context->client_metadata()) {
      if (key == "x-echo") context->AddTrailingMetadata("x-echoed", std::string(value.data(), value.size()));
    }
    reply->set_text(request->text());
    return grpc::Status::OK;
  }
  grpc::Status Count(grpc::ServerContext*, const interop::Msg* request,
                     grpc::ServerWriter<interop::Msg>* writer) override {
    for (int i = 0; i < request->n(); ++i) {
      interop::Msg message;
      message.set_text(std::to_string(i));
      if (!writer->Write(message)) break;
    }
    return grpc::Status::OK;
  }
  grpc::Status Sleep(grpc::ServerContext* context, const interop::Msg* request,
                     interop::Msg*) override {
    const auto until = std::chrono::steady_clock::now() + milliseconds(request->n());
    sleeping_.fetch_add(1);
    struct Leave {
      std::atomic<int>& sleeping;
      ~Leave() { sleeping.fetch_sub(1); }
    } leave{sleeping_};
    while (std::chrono::steady_clock::now() < until) {
      if (context->IsCancelled()) {
        cancellations_.fetch_add(1);
        return grpc::Status(grpc::StatusCode::CANCELLED, "Sleep was cancelled");
      }
      std::this_thread::sleep_for(milliseconds(2));
    }
    return grpc::Status::OK;
  }
  grpc::Status Sleeping(grpc::ServerContext*, const interop::Msg*,
                        interop::Msg* reply) override {
    reply->set_n(sleeping_.load());
    return grpc::Status::OK;
  }
  grpc::Status Cancellations(grpc::ServerContext*, const interop::Msg*,
                             interop::Msg* reply) override {
    reply->set_n(cancellations_.load());
    return grpc::Status::OK;
  }
  grpc::Status Fail(grpc::ServerContext*, const interop::Msg*, interop::Msg*) override {
    interop::RpcStatus details;
    details.set_code(grpc::StatusCode::FAILED_PRECONDITION);
    details.set_message("failed on purpose");
    interop::Msg detail;
    detail.set_text("detail");
    details.add_details()->PackFrom(detail);
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "failed on purpose",
                        details.SerializeAsString());
  }

  std::atomic<int> cancellations_{0};
  std::atomic<int> sleeping_{0};
};

int RunServer() {
  // SIGTERM stops it (blocked before gRPC's threads start, so it waits here).
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  InteropService service;
  // As a plain gRPC server usually does: tools such as grpcurl (and
  // `ipcrpc call`) learn its methods from gRPC's standard reflection.
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) return 1;
  std::printf("PORT %d\n", port);
  std::fflush(stdout);
  int signal_number = 0;
  sigwait(&stop, &signal_number);
  server->Shutdown(std::chrono::system_clock::now() + milliseconds(500));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "client" && argc == 3) return RunClient(argv[2]);
  if (mode == "one_call" && argc == 3) return RunOneCall(argv[2]);
  if (mode == "server" && argc == 2) return RunServer();
  std::fprintf(stderr, "usage: grpc_interop_peer client HOST:PORT | one_call HOST:PORT | server\n");
  return 2;
}
