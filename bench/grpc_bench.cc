// grpc_bench: the cost of ipcrpc's grpc: bridge. The calculator's Add over
// real gRPC, on a Unix socket (grpc:unix:) and on TCP loopback
// (grpc:127.0.0.1), in the same run for four pairs:
//
//   grpc   -> grpc     plain gRPC generated code both sides (grpc_bench_peer)
//   grpc   -> ipcrpc   a gRPC client calling an ipcrpc server's grpc: endpoint
//   ipcrpc -> grpc     an ipcrpc stub on a grpc: channel calling the gRPC server
//   ipcrpc -> ipcrpc   both ends ipcrpc, gRPC between them
//
// Each pair: p50 and p99 of one caller's back-to-back calls, then calls/s
// with --threads callers at once. Servers and callers are separate
// processes, placed by --pin (split: callers on CPU 0, servers on CPU 1).
//
//   grpc_bench [--seconds S] [--threads T] [--pin split|same|none] [--networks unix,tcp]
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "calculator.ipcrpc.h"
#include "grpc_bench_common.h"

namespace {

class CalculatorImpl final : public calc::Calculator::Service {
  absl::Status Add(ipcrpc::ServerContext&, const calc::AddRequest& request,
                   calc::AddReply& reply) override {
    reply.set_sum(request.a() + request.b());
    return absl::OkStatus();
  }
};

int Serve(const std::string& endpoint, int ready_fd) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  CalculatorImpl calculator;
  ipcrpc::ServerOptions options;
  options.max_calls_in_flight = 1 << 16;
  options.max_calls_per_connection = 1 << 16;
  ipcrpc::Server server(options);
  absl::Status status = server.RegisterService(&calculator);
  if (status.ok()) status = server.Listen(endpoint);
  if (status.ok()) status = server.Start();
  if (!status.ok()) {
    std::fprintf(stderr, "grpc_bench: %s\n", status.ToString().c_str());
    return 1;
  }
  const std::string bound = server.endpoints().front() + "\n";
  if (write(ready_fd, bound.data(), bound.size()) != static_cast<ssize_t>(bound.size())) return 1;
  close(ready_fd);
  std::thread stopper([&server, signals] {
    int signal_number = 0;
    sigwait(&signals, &signal_number);
    server.Shutdown(absl::ZeroDuration());
  });
  server.Wait();
  stopper.join();
  return 0;
}

int Call(const std::string& endpoint, double seconds, int threads) {
  auto channel = ipcrpc::Channel::Connect(endpoint);
  if (!channel.ok()) {
    std::fprintf(stderr, "grpc_bench: %s\n", channel.status().ToString().c_str());
    return 1;
  }
  calc::Calculator::Stub stub(*channel);
  calc::AddRequest request;
  request.set_a(40);
  request.set_b(2);
  ipcrpc::CallOptions options;
  options.timeout = absl::Seconds(10);
  grpc_bench::PrintFigures(grpc_bench::Measure(seconds, threads, [&] {
    absl::StatusOr<calc::AddReply> reply = stub.Add(request, options);
    return reply.ok() && reply->sum() == 42;
  }));
  return 0;
}

// Runs argv to its end and returns the first line of its stdout.
std::string RunForLine(const std::vector<std::string>& argv) {
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return "";
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], 1);
    std::vector<char*> args;
    for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  close(out[1]);
  std::string text;
  char buffer[512];
  for (ssize_t n; (n = read(out[0], buffer, sizeof(buffer))) > 0;) text.append(buffer, n);
  close(out[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return text.substr(0, text.find('\n'));
}

// Starts a server process; returns its pid and the address it bound.
pid_t StartServer(std::vector<std::string> argv, std::string* bound) {
  int ready[2];
  if (pipe(ready) != 0) return -1;
  argv.push_back(absl::StrCat("--ready_fd=", ready[1]));
  const pid_t pid = fork();
  if (pid == 0) {
    close(ready[0]);
    std::vector<char*> args;
    for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  close(ready[1]);
  bound->clear();
  char c;
  while (read(ready[0], &c, 1) == 1 && c != '\n') bound->push_back(c);
  close(ready[0]);
  return pid;
}

void Stop(pid_t pid) {
  kill(pid, SIGTERM);
  waitpid(pid, nullptr, 0);
}

double Field(const std::string& line, const std::string& name) {
  for (const std::string& part : std::vector<std::string>(absl::StrSplit(line, ' '))) {
    if (part.rfind(name + "=", 0) == 0) return std::atof(part.c_str() + name.size() + 1);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string serve, call, pin = "split", networks = "unix,tcp";
  std::string peer = GRPC_BENCH_PEER;
  int ready_fd = -1, threads = 8, cpu = -1;
  double seconds = 2;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](const char* name) -> const char* {
      const std::string prefix = std::string("--") + name + "=";
      return arg.rfind(prefix, 0) == 0 ? argv[i] + prefix.size() : nullptr;
    };
    if (const char* v_serve = value("serve")) serve = v_serve;
    else if (const char* v_call = value("call")) call = v_call;
    else if (const char* v_cpu = value("cpu")) cpu = std::atoi(v_cpu);
    else if (const char* v_ready_fd = value("ready_fd")) ready_fd = std::atoi(v_ready_fd);
    else if (const char* v_seconds = value("seconds")) seconds = std::atof(v_seconds);
    else if (const char* v_threads = value("threads")) threads = std::atoi(v_threads);
    else if (const char* v_pin = value("pin")) pin = v_pin;
    else if (const char* v_networks = value("networks")) networks = v_networks;
    else if (const char* v_peer = value("peer")) peer = v_peer;
    else {
      std::fprintf(stderr, "grpc_bench: unknown argument %s\n", arg.c_str());
      return 2;
    }
  }
  grpc_bench::Pin(cpu);
  if (!serve.empty()) return Serve(serve, ready_fd);
  if (!call.empty()) return Call(call, seconds, threads);

  int client_cpu = -1, server_cpu = -1;
  const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  if (pin == "split") {
    client_cpu = 0;
    server_cpu = cpus > 1 ? 1 : 0;
  } else if (pin == "same") {
    client_cpu = server_cpu = 0;
  } else if (pin != "none") {
    std::fprintf(stderr, "grpc_bench: --pin must be split, same or none\n");
    return 2;
  }
  std::printf("# grpc_bench: %ld CPUs; --pin %s: callers on CPU %d, servers on CPU %d "
              "(-1: not pinned); %.1f s per figure; calls/s with %d callers\n",
              cpus, pin.c_str(), client_cpu, server_cpu, seconds, threads);
  const std::string self = "/proc/self/exe";
  const std::string server_cpu_flag = absl::StrCat("--cpu=", server_cpu);
  const std::string client_cpu_flag = absl::StrCat("--cpu=", client_cpu);
  const std::string timing = absl::StrCat("--seconds=", seconds);
  const std::string callers = absl::StrCat("--threads=", threads);
  bool all_ok = true;
  for (const std::string& network : std::vector<std::string>(absl::StrSplit(networks, ','))) {
    std::string grpc_address, ipcrpc_endpoint;
    std::string grpc_listen = "127.0.0.1:0";
    std::string ipcrpc_listen = "grpc:127.0.0.1:0";
    if (network == "unix") {
      grpc_listen = absl::StrCat("unix:/tmp/ipcrpc-grpcbench-", getpid(), "-grpc.sock");
      ipcrpc_listen = absl::StrCat("grpc:unix:/tmp/ipcrpc-grpcbench-", getpid(), "-ipcrpc.sock");
    } else if (network != "tcp") {
      std::fprintf(stderr, "grpc_bench: --networks takes unix and tcp\n");
      return 2;
    }
    const pid_t grpc_server =
        StartServer({peer, "--serve=" + grpc_listen, server_cpu_flag}, &grpc_address);
    const pid_t ipcrpc_server =
        StartServer({self, "--serve=" + ipcrpc_listen, server_cpu_flag}, &ipcrpc_endpoint);
    if (grpc_address.empty() || ipcrpc_endpoint.empty()) {
      std::fprintf(stderr, "grpc_bench: a server did not start\n");
      return 1;
    }
    // ipcrpc_endpoint is grpc:ADDRESS; gRPC's clients take ADDRESS.
    const std::string ipcrpc_address = ipcrpc_endpoint.substr(5);
    struct Pair {
      const char* name;
      std::vector<std::string> argv;
    };
    const std::vector<Pair> pairs = {
        {"grpc->grpc", {peer, "--call=" + grpc_address, client_cpu_flag, timing, callers}},
        {"grpc->ipcrpc", {peer, "--call=" + ipcrpc_address, client_cpu_flag, timing, callers}},
        {"ipcrpc->grpc",
         {self, "--call=grpc:" + grpc_address, client_cpu_flag, timing, callers}},
        {"ipcrpc->ipcrpc", {self, "--call=" + ipcrpc_endpoint, client_cpu_flag, timing, callers}},
    };
    std::map<std::string, std::string> lines;
    for (const Pair& pair : pairs) {
      const std::string line = RunForLine(pair.argv);
      lines[pair.name] = line;
      std::printf("%-6s %-15s %s\n", network.c_str(), pair.name,
                  line.empty() ? "FAILED" : line.c_str());
      std::fflush(stdout);
      all_ok &= Field(line, "ok") == 1;
    }
    Stop(grpc_server);
    Stop(ipcrpc_server);
    const std::string& base = lines["grpc->grpc"];
    for (const char* name : {"grpc->ipcrpc", "ipcrpc->grpc", "ipcrpc->ipcrpc"}) {
      const std::string& line = lines[name];
      if (Field(base, "p50_us") <= 0 || Field(line, "p50_us") <= 0) continue;
      std::printf("# %s %s against grpc->grpc: p50 %+.1f%%, calls/s %+.1f%%\n", network.c_str(),
                  name, 100 * (Field(line, "p50_us") / Field(base, "p50_us") - 1),
                  100 * (Field(line, "calls_per_s") / Field(base, "calls_per_s") - 1));
    }
  }
  return all_ok ? 0 : 1;
}
