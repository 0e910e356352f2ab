// grpc_bench: the cost of ipcrpc's grpc: bridge. The calculator's Add over
// real gRPC, on a Unix socket (grpc:unix:) and on TCP loopback
// (grpc:127.0.0.1), in the same run for these pairs (client -> server):
//
//   grpc -> grpc         plain gRPC generated code, sync API (grpc_bench_peer)
//   grpc_cb -> grpc_cb   the same with gRPC's callback API, the bridge's own
//   grpc -> grpc_cb, grpc_cb -> grpc   mixed, as baselines for one bridge
//   grpc -> ipcrpc       a gRPC client calling an ipcrpc server's grpc: endpoint
//   ipcrpc -> grpc       an ipcrpc stub on a grpc: channel calling the gRPC server
//   ipcrpc -> ipcrpc     both ends ipcrpc, gRPC between them
//
// Each pair: p50 and p99 of one caller's back-to-back calls, then calls/s
// with --threads callers at once. Servers and callers are separate
// processes, placed by --pin (split: callers on CPU 0, servers on CPU 1).
//
//   grpc_bench [--seconds S] [--rounds R] [--threads T] [--pin split|same|none]
//              [--networks unix,tcp]
//
// The pairs take turns R times (default 5); each figure printed last is
// the median of its R rounds.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
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

// `register_after`: the service is registered after Listen, so that the
// grpc: listener serves its unary methods through gRPC's generic service
// (bidirectional reactors) instead of as gRPC unary methods: the way it
// took before, for comparison (--register=after; docs/GRPC.md).
int Serve(const std::string& endpoint, int ready_fd, bool register_after) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  CalculatorImpl calculator;
  ipcrpc::ServerOptions options;
  options.max_calls_in_flight = 1 << 16;
  options.max_calls_per_connection = 1 << 16;
  ipcrpc::Server server(options);
  absl::Status status =
      register_after ? server.Listen(endpoint) : server.RegisterService(&calculator);
  if (status.ok()) {
    status = register_after ? server.RegisterService(&calculator) : server.Listen(endpoint);
  }
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

// In a child: becomes argv[0] with `argv`.
[[noreturn]] void Exec(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  execv(args[0], args.data());
  _exit(127);
}

// Runs argv to its end and returns the first line of its stdout.
std::string RunForLine(const std::vector<std::string>& argv) {
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return "";
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], 1);
    Exec(argv);
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
    Exec(argv);
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
  grpc_bench::Flags flags;
  if (!grpc_bench::ParseFlags("grpc_bench", argc, argv, &flags)) return 2;
  std::string pin = "split", networks = "unix,tcp", peer = GRPC_BENCH_PEER, rounds_text = "5";
  grpc_bench::TakeFlag(&flags, "pin", &pin);
  grpc_bench::TakeFlag(&flags, "networks", &networks);
  grpc_bench::TakeFlag(&flags, "peer", &peer);
  grpc_bench::TakeFlag(&flags, "rounds", &rounds_text);
  std::string register_when = "before";
  grpc_bench::TakeFlag(&flags, "register", &register_when);
  if (!grpc_bench::NoFlagsLeft("grpc_bench", flags)) return 2;
  const int rounds = std::max(1, std::atoi(rounds_text.c_str()));
  const double seconds = flags.seconds;
  const int threads = flags.threads;
  grpc_bench::Pin(flags.cpu);
  if (!flags.serve.empty()) return Serve(flags.serve, flags.ready_fd, register_when == "after");
  if (!flags.call.empty()) return Call(flags.call, seconds, threads);

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
    std::string grpc_cb_address;
    const std::string grpc_cb_listen =
        network == "unix" ? absl::StrCat("unix:/tmp/ipcrpc-grpcbench-", getpid(), "-grpccb.sock")
                          : std::string("127.0.0.1:0");
    const pid_t grpc_server =
        StartServer({peer, "--serve=" + grpc_listen, server_cpu_flag}, &grpc_address);
    const pid_t grpc_cb_server = StartServer(
        {peer, "--serve=" + grpc_cb_listen, "--api=callback", server_cpu_flag}, &grpc_cb_address);
    const pid_t ipcrpc_server =
        StartServer({self, "--serve=" + ipcrpc_listen, server_cpu_flag}, &ipcrpc_endpoint);
    if (grpc_address.empty() || grpc_cb_address.empty() || ipcrpc_endpoint.empty()) {
      std::fprintf(stderr, "grpc_bench: a server did not start\n");
      return 1;
    }
    // ipcrpc_endpoint is grpc:ADDRESS; gRPC's clients take ADDRESS.
    const std::string ipcrpc_address = ipcrpc_endpoint.substr(5);
    struct Pair {
      const char* name;
      std::vector<std::string> argv;
    };
    auto grpc_client = [&](const std::string& address, bool callback) {
      std::vector<std::string> command = {peer, "--call=" + address, client_cpu_flag, timing,
                                          callers};
      if (callback) command.push_back("--api=callback");
      return command;
    };
    auto ipcrpc_client = [&](const std::string& endpoint) {
      return std::vector<std::string>{self, "--call=" + endpoint, client_cpu_flag, timing,
                                      callers};
    };
    // grpc: gRPC's sync API; grpc_cb: its callback API (the bridge's).
    const std::vector<Pair> pairs = {
        {"grpc->grpc", grpc_client(grpc_address, false)},
        {"grpc_cb->grpc_cb", grpc_client(grpc_cb_address, true)},
        {"grpc->grpc_cb", grpc_client(grpc_cb_address, false)},
        {"grpc_cb->grpc", grpc_client(grpc_address, true)},
        {"grpc->ipcrpc", grpc_client(ipcrpc_address, false)},
        {"ipcrpc->grpc", ipcrpc_client("grpc:" + grpc_address)},
        {"ipcrpc->ipcrpc", ipcrpc_client(ipcrpc_endpoint)},
    };
    // The pairs take turns, --rounds times: the machine's drift (another
    // process, frequency, the hypervisor) falls on all of them alike. Each
    // figure is the median of its rounds.
    std::map<std::string, std::vector<std::string>> lines;
    for (int round = 0; round < rounds; ++round) {
      for (const Pair& pair : pairs) {
        const std::string line = RunForLine(pair.argv);
        lines[pair.name].push_back(line);
        std::printf("%-6s %-15s round %d: %s\n", network.c_str(), pair.name, round + 1,
                    line.empty() ? "FAILED" : line.c_str());
        std::fflush(stdout);
        all_ok &= Field(line, "ok") == 1;
      }
    }
    Stop(grpc_server);
    Stop(grpc_cb_server);
    Stop(ipcrpc_server);
    auto median = [&](const char* name, const char* field) {
      std::vector<double> values;
      for (const std::string& line : lines[name]) values.push_back(Field(line, field));
      std::sort(values.begin(), values.end());
      return values.empty() ? 0.0 : values[values.size() / 2];
    };
    for (const Pair& pair : pairs) {
      std::printf("%-6s %-15s median: p50_us=%.1f p99_us=%.1f calls_per_s=%.0f\n", network.c_str(),
                  pair.name, median(pair.name, "p50_us"), median(pair.name, "p99_us"),
                  median(pair.name, "calls_per_s"));
    }
    // What the bridge adds: each ipcrpc end against gRPC's own code in its
    // place, with the sync API and with the callback API.
    auto compare = [&](const char* what, const char* name, const char* base) {
      const double base_p50 = median(base, "p50_us");
      const double base_rate = median(base, "calls_per_s");
      if (base_p50 <= 0 || base_rate <= 0 || median(name, "p50_us") <= 0) return;
      std::printf("# %s %s: %s against %s: p50 %+.1f%%, calls/s %+.1f%%\n", network.c_str(), what,
                  name, base, 100 * (median(name, "p50_us") / base_p50 - 1),
                  100 * (median(name, "calls_per_s") / base_rate - 1));
    };
    compare("server bridge", "grpc->ipcrpc", "grpc->grpc");
    compare("server bridge", "grpc->ipcrpc", "grpc->grpc_cb");
    compare("client bridge", "ipcrpc->grpc", "grpc->grpc");
    compare("client bridge", "ipcrpc->grpc", "grpc_cb->grpc");
    compare("both bridges", "ipcrpc->ipcrpc", "grpc->grpc");
    compare("both bridges", "ipcrpc->ipcrpc", "grpc_cb->grpc_cb");
  }
  return all_ok ? 0 : 1;
}
