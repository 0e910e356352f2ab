// Crash loop: round after round, on every transport, start a server and two
// clients calling it without pause, SIGKILL one side at a random moment, and
// check that
//   - every pending call ended: a client whose server died exits at once with
//     UNAVAILABLE (never a hang: 10 s at most);
//   - the survivors still work: the other client never saw a failure, the
//     server (or a new one on the same endpoint, which reclaims it) serves a
//     new client;
//   - nothing is left: no new entries in /dev/shm or /dev/mqueue, no FIFO,
//     socket file or registry record, once the round's servers have stopped.
//
//   crash_loop --rounds=1000 [--seed=N] [--transports=unix,pipe,fifo,mq,shm]
//
// Exit 0 when every round passed; otherwise the first failure is printed.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "base/strings.h"
#include "base/syscall.h"
#include "tests/util/process.h"

namespace ipcrpc::testing {
namespace {

struct Failure {
  std::string what;
};

// A child whose stdout we read line by line. One still running when its
// Child goes (a round that failed half-way) is killed and reaped: left
// behind, it would hold our stdout open and the test's runner would wait
// for it.
struct Child {
  pid_t pid = -1;  // -1 once reaped
  internal::UniqueFd out;

  Child() = default;
  Child(pid_t child_pid, internal::UniqueFd child_out)
      : pid(child_pid), out(std::move(child_out)) {}
  Child(Child&& other) noexcept : pid(std::exchange(other.pid, -1)), out(std::move(other.out)) {}
  Child& operator=(Child&& other) noexcept {
    if (this != &other) {
      Kill();
      pid = std::exchange(other.pid, -1);
      out = std::move(other.out);
    }
    return *this;
  }
  ~Child() { Kill(); }

  void Kill() {
    if (pid <= 0) return;
    ::kill(pid, SIGKILL);
    WaitForExit(pid, absl::Seconds(10));
    pid = -1;
  }
};

std::optional<Child> Start(const std::vector<std::string>& argv) {
  int out[2];
  if (::pipe2(out, O_CLOEXEC) < 0) return std::nullopt;
  internal::UniqueFd write_end(out[1]);
  absl::StatusOr<pid_t> pid = Spawn(argv, {}, {}, out[1]);
  if (!pid.ok()) return std::nullopt;
  return Child{*pid, internal::UniqueFd(out[0])};
}

// Waits for `child` to exit within `timeout`; its exit code, or -1 (killed
// then, or by a signal).
int Exit(Child& child, absl::Duration timeout) {
  std::optional<int> status = WaitForExit(child.pid, timeout);
  if (!status.has_value()) {
    child.Kill();
    return -1;
  }
  child.pid = -1;  // reaped
  return WIFEXITED(*status) ? WEXITSTATUS(*status) : -1;
}

void Collect(const std::string& path, std::set<std::string>* out) {
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(path, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    out->insert(it->path().string());
  }
}

class CrashLoop {
 public:
  CrashLoop(uint64_t seed, std::vector<std::string> transports)
      : rng_(seed), transports_(std::move(transports)) {}

  std::optional<Failure> Setup() {
    char dir[] = "/tmp/ipcrpc-crashloop-XXXXXX";
    if (::mkdtemp(dir) == nullptr) return Failure{"mkdtemp failed"};
    dir_ = dir;
    ::setenv("XDG_RUNTIME_DIR", dir, 1);  // our servers' registry, fifo: private dirs
    if (absl::Status mounted = EnsureMqueueMounted(); !mounted.ok()) {
      return Failure{std::string(mounted.message())};
    }
    baseline_ = Snapshot();
    return std::nullopt;
  }

  void Teardown() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  std::optional<Failure> Round(int round) {
    const std::string& transport = transports_[static_cast<size_t>(round) % transports_.size()];
    const std::string name = absl::StrCat("crashloop-", ::getpid(), "-", round);
    std::string endpoint;
    if (transport == "unix") endpoint = absl::StrCat("unix:", dir_, "/", name, ".sock");
    if (transport == "fifo") endpoint = absl::StrCat("fifo:", dir_, "/", name, ".fifo");
    if (transport == "mq" || transport == "shm") endpoint = absl::StrCat(transport, ":", name);
    if (transport == "pipe") endpoint = "pipe:";
    const bool pipe = transport == "pipe";
    const std::string where = absl::StrCat("round ", round, " (", endpoint, ")");

    std::optional<Child> server;
    if (!pipe) {
      server = StartServer(endpoint);
      if (!server.has_value()) return Failure{where + ": the server did not start"};
    }
    Child clients[2];
    pid_t client_server[2] = {0, 0};
    for (int i = 0; i < 2; ++i) {
      std::optional<Child> client = Start(ClientArgv(endpoint, 0));
      if (!client.has_value()) return Failure{where + ": a client did not start"};
      clients[i] = std::move(*client);
      clients_.insert(clients[i].pid);
      absl::StatusOr<std::string> ready = ReadLine(clients[i].out.get(), absl::Seconds(30));
      int pid = 0;
      if (!ready.ok() || !absl::StartsWith(*ready, "READY ") ||
          !absl::SimpleAtoi(internal::Av(ready->substr(6)), &pid)) {
        return Failure{absl::StrCat(where, ": client ", i, " not ready: ",
                                    ready.ok() ? *ready : ready.status().ToString())};
      }
      client_server[i] = pid;
    }
    // A random moment: the clients call without pause, so almost any moment
    // is in the middle of a call on one side or the other.
    std::this_thread::sleep_for(std::chrono::microseconds(rng_() % 20000));

    const bool kill_server = rng_() % 2 == 0;
    if (kill_server) {
      // pipe: the server that dies is client 0's own child.
      const pid_t victim = pipe ? client_server[0] : server->pid;
      ::kill(victim, SIGKILL);
      if (!pipe) {
        Exit(*server, absl::Seconds(10));
        server.reset();
      }
      for (int i = 0; i < (pipe ? 1 : 2); ++i) {
        absl::StatusOr<std::string> line = ReadLine(clients[i].out.get(), absl::Seconds(10));
        const int code = Exit(clients[i], absl::Seconds(10));
        if (code != 3 || !line.ok() || !absl::StartsWith(*line, "FAIL UNAVAILABLE")) {
          return Failure{absl::StrCat(where, ": after the server's death client ", i,
                                      " exited ", code, " saying '",
                                      line.ok() ? *line : line.status().ToString(),
                                      "' (want UNAVAILABLE, exit 3, within 10 s)")};
        }
      }
      if (pipe) {
        if (auto failure = StopSurvivor(clients[1], where)) return failure;
      } else {
        // A new server on the same endpoint reclaims what the dead one left.
        server = StartServer(endpoint);
        if (!server.has_value()) {
          return Failure{where + ": a new server could not take over the endpoint"};
        }
      }
    } else {
      ::kill(clients[0].pid, SIGKILL);
      Exit(clients[0], absl::Seconds(10));
      if (pipe && !WaitUntilGone(client_server[0], absl::Seconds(10))) {
        return Failure{where + ": the pipe: server outlived its killed parent"};
      }
      if (auto failure = StopSurvivor(clients[1], where)) return failure;
    }
    // The server (pipe: a new child) serves a new client.
    std::optional<Child> check = Start(ClientArgv(endpoint, 10));
    if (!check.has_value()) return Failure{where + ": the check client did not start"};
    clients_.insert(check->pid);
    std::string last;
    for (;;) {
      absl::StatusOr<std::string> line = ReadLine(check->out.get(), absl::Seconds(30));
      if (!line.ok()) break;
      last = *line;
      if (!absl::StartsWith(last, "READY")) break;
    }
    if (Exit(*check, absl::Seconds(30)) != 0 || last != "OK 10") {
      return Failure{absl::StrCat(where, ": a new client was not served: '", last, "'")};
    }
    if (server.has_value()) {
      ::kill(server->pid, SIGTERM);
      if (Exit(*server, absl::Seconds(30)) != 0) {
        return Failure{where + ": the server did not shut down cleanly"};
      }
    }
    return CheckNothingLeft(where);
  }

 private:
  std::optional<Child> StartServer(const std::string& endpoint) {
    int ready[2];
    if (::pipe2(ready, O_CLOEXEC) < 0) return std::nullopt;
    internal::UniqueFd read_end(ready[0]);
    internal::UniqueFd write_end(ready[1]);
    absl::StatusOr<pid_t> pid =
        Spawn({IPCRPC_CONFORMANCE_SERVER, "--endpoint=" + endpoint,
               absl::StrCat("--ready_fd=", ready[1])},
              {ready[1]});
    if (!pid.ok()) return std::nullopt;
    write_end.Reset();
    Child child{*pid, internal::UniqueFd()};
    absl::StatusOr<std::string> line = ReadLine(read_end.get(), absl::Seconds(30));
    if (!line.ok() || *line != "READY") {
      ::kill(*pid, SIGKILL);
      WaitForExit(*pid, absl::Seconds(10));
      return std::nullopt;
    }
    return child;
  }

  std::vector<std::string> ClientArgv(const std::string& endpoint, int calls) {
    std::vector<std::string> argv = {IPCRPC_LOAD_CLIENT, "--endpoint=" + endpoint,
                                     absl::StrCat("--calls=", calls), "--max_payload=512"};
    if (endpoint == "pipe:") argv.push_back(std::string("--server=") + IPCRPC_CONFORMANCE_SERVER);
    return argv;
  }

  // The other client never saw a failure: SIGTERM ends its loop with OK.
  std::optional<Failure> StopSurvivor(Child& client, const std::string& where) {
    ::kill(client.pid, SIGTERM);
    absl::StatusOr<std::string> line = ReadLine(client.out.get(), absl::Seconds(30));
    const int code = Exit(client, absl::Seconds(30));
    if (code != 0 || !line.ok() || !absl::StartsWith(*line, "OK ")) {
      return Failure{absl::StrCat(where, ": the surviving client exited ", code, " saying '",
                                  line.ok() ? *line : line.status().ToString(), "'")};
    }
    return std::nullopt;
  }

  std::set<std::string> Snapshot() {
    std::set<std::string> entries;
    Collect("/dev/shm", &entries);
    Collect(dir_, &entries);
    // Queues: ours are named after us or after our children's pids; other
    // tests running beside us may create and remove their own.
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator("/dev/mqueue", ec)) {
      const std::string name = entry.path().filename().string();
      if (absl::StartsWith(name, "crashloop-") || absl::StartsWith(name, "ipcrpc-")) {
        entries.insert(entry.path().string());
      }
    }
    return entries;
  }

  std::optional<Failure> CheckNothingLeft(const std::string& where) {
    std::set<std::string> now = Snapshot();
    std::vector<std::string> left;
    for (const std::string& entry : now) {
      if (baseline_.count(entry) == 0) left.push_back(entry);
    }
    // Directories our runtime directory always has once used.
    std::erase_if(left, [&](const std::string& entry) {
      return entry == dir_ + "/ipcrpc" || entry == dir_ + "/ipcrpc/servers";
    });
    // Reply queues of other processes (other tests) are not ours to judge.
    std::erase_if(left, [this](const std::string& entry) {
      return absl::StartsWith(entry, "/dev/mqueue/ipcrpc-") && !OwnReplyQueue(entry);
    });
    if (left.empty()) return std::nullopt;
    return Failure{absl::StrCat(where, ": left behind: ", absl::StrJoin(left, ", "))};
  }

  // A reply queue "/dev/mqueue/ipcrpc-<pid>-..." of a client we started.
  bool OwnReplyQueue(const std::string& entry) const {
    std::vector<std::string> parts =
        absl::StrSplit(entry.substr(std::strlen("/dev/mqueue/ipcrpc-")), '-');
    int pid = 0;
    return !parts.empty() && absl::SimpleAtoi(parts[0], &pid) && clients_.count(pid) > 0;
  }

  std::mt19937_64 rng_;
  std::vector<std::string> transports_;
  std::string dir_;
  std::set<std::string> baseline_;
  std::set<pid_t> clients_;  // every client process started
};

int Main(int argc, char** argv) {
  int rounds = 25;
  uint64_t seed = std::random_device{}();
  std::vector<std::string> transports = {"unix", "pipe", "fifo", "mq", "shm"};
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--rounds=", 9) == 0) rounds = std::atoi(argv[i] + 9);
    if (std::strncmp(argv[i], "--seed=", 7) == 0) seed = std::strtoull(argv[i] + 7, nullptr, 10);
    if (std::strncmp(argv[i], "--transports=", 13) == 0) {
      transports = absl::StrSplit(argv[i] + 13, ',', absl::SkipEmpty());
    }
  }
  std::printf("crash_loop: %d rounds over %s, seed %llu\n", rounds,
              absl::StrJoin(transports, ",").c_str(), static_cast<unsigned long long>(seed));
  std::fflush(stdout);
  CrashLoop loop(seed, transports);
  if (auto failure = loop.Setup()) {
    std::printf("FAILED: %s\n", failure->what.c_str());
    return 1;
  }
  const absl::Time start = absl::Now();
  for (int round = 0; round < rounds; ++round) {
    if (auto failure = loop.Round(round)) {
      std::printf("FAILED: %s\n", failure->what.c_str());
      loop.Teardown();
      return 1;
    }
  }
  loop.Teardown();
  std::printf("crash_loop: %d rounds passed in %.1f s\n", rounds,
              absl::ToDoubleSeconds(absl::Now() - start));
  return 0;
}

}  // namespace
}  // namespace ipcrpc::testing

int main(int argc, char** argv) { return ipcrpc::testing::Main(argc, argv); }
