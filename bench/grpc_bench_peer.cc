// grpc_bench_peer: the calculator in plain gRPC generated code
// (grpc_cpp_plugin's, the sync API; links gRPC, not ipcrpc): the baseline
// beside which grpc_bench measures the grpc: bridge.
//
//   grpc_bench_peer --serve=ADDRESS --cpu=N --ready_fd=FD [--api=sync|callback]
//       serves calc.Calculator on ADDRESS (127.0.0.1:0 or unix:PATH) until
//       SIGTERM; writes the address bound to FD, one line
//   grpc_bench_peer --call=ADDRESS --cpu=N --seconds=S --threads=T [--api=sync|callback]
//       calls Add on ADDRESS and prints one line of figures
// --api: gRPC's sync API (the default) or its callback API, the one the
// grpc: bridge is built on.
#include <signal.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "calculator.grpc.pb.h"
#include "grpc_bench_common.h"

namespace {

// gRPC's sync API: the handler runs on the thread that polled the request.
class CalculatorImpl final : public calc::Calculator::Service {
  grpc::Status Add(grpc::ServerContext*, const calc::AddRequest* request,
                   calc::AddReply* reply) override {
    reply->set_sum(request->a() + request->b());
    return grpc::Status::OK;
  }
};

// gRPC's callback API, the one the grpc: bridge is built on.
class CallbackCalculatorImpl final : public calc::Calculator::CallbackService {
  grpc::ServerUnaryReactor* Add(grpc::CallbackServerContext* context,
                                const calc::AddRequest* request, calc::AddReply* reply) override {
    reply->set_sum(request->a() + request->b());
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};

int Serve(const std::string& address, bool callback_api, int ready_fd) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  CalculatorImpl sync_service;
  CallbackCalculatorImpl callback_service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port);
  if (callback_api) {
    builder.RegisterService(&callback_service);
  } else {
    builder.RegisterService(&sync_service);
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::fprintf(stderr, "grpc_bench_peer: cannot serve on %s\n", address.c_str());
    return 1;
  }
  std::string bound = address;
  if (address.rfind("unix:", 0) != 0) {
    bound = address.substr(0, address.rfind(':') + 1) + std::to_string(port);
  }
  bound += "\n";
  if (write(ready_fd, bound.data(), bound.size()) != static_cast<ssize_t>(bound.size())) return 1;
  close(ready_fd);
  std::thread stopper([&server, signals] {
    int signal_number = 0;
    sigwait(&signals, &signal_number);
    server->Shutdown();
  });
  server->Wait();
  stopper.join();
  return 0;
}

int Call(const std::string& address, bool callback_api, double seconds, int threads) {
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  std::unique_ptr<calc::Calculator::Stub> stub = calc::Calculator::NewStub(channel);
  calc::AddRequest request;
  request.set_a(40);
  request.set_b(2);
  grpc_bench::PrintFigures(grpc_bench::Measure(seconds, threads, [&] {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    calc::AddReply reply;
    if (!callback_api) return stub->Add(&context, request, &reply).ok() && reply.sum() == 42;
    // The callback API, waited for as a blocking caller does.
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    grpc::Status status;
    stub->async()->Add(&context, &request, &reply, [&](grpc::Status result) {
      std::lock_guard<std::mutex> lock(mu);
      status = std::move(result);
      done = true;
      cv.notify_one();
    });
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done; });
    return status.ok() && reply.sum() == 42;
  }));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  grpc_bench::Flags flags;
  if (!grpc_bench::ParseFlags("grpc_bench_peer", argc, argv, &flags)) return 2;
  std::string api = "sync";
  grpc_bench::TakeFlag(&flags, "api", &api);
  if (!grpc_bench::NoFlagsLeft("grpc_bench_peer", flags)) return 2;
  const bool callback_api = api == "callback";
  grpc_bench::Pin(flags.cpu);
  if (!flags.serve.empty()) return Serve(flags.serve, callback_api, flags.ready_fd);
  if (!flags.call.empty()) return Call(flags.call, callback_api, flags.seconds, flags.threads);
  std::fprintf(stderr, "grpc_bench_peer: --serve=ADDRESS or --call=ADDRESS\n");
  return 2;
}
