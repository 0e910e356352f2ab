// One hop of a chain of servers, each in its own process: chain.Chain/Call
// calls the next hop with CallOptions::From(context), and the last hop waits
// until its call is cancelled. The first hop starts the others:
//
//   chain_server --endpoint=unix:/tmp/a.sock --hops=3 --transport=unix [--ready_fd=N]
//
// --transport is one transport for every hop, or a comma-separated list with
// one per hop, this one's first ("unix,grpc,unix": the second hop is reached
// over gRPC). A grpc hop listens on grpc:127.0.0.1:0; READY_FD gets the
// endpoint this hop bound, one line.
//
// chain.Chain/WaitCancelled returns, once this hop and every later one have
// seen their call cancelled, "1,1,1" (one entry per hop: IsCancelled() was
// true when the handler returned).
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "ipcrpc/ipcrpc.h"
#include "base/mutex.h"

namespace {

std::string Flag(int argc, char** argv, const char* name) {
  const std::string prefix = absl::StrCat("--", name, "=");
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], prefix.c_str(), prefix.size()) == 0) return argv[i] + prefix.size();
  }
  return "";
}

class ChainService : public ipcrpc::Service {
 public:
  explicit ChainService(std::shared_ptr<ipcrpc::Channel> next) : next_(std::move(next)) {
    AddMethod("chain.Chain/Call", [this](ipcrpc::ServerContext& context, std::string_view,
                                         std::string&) { return Call(context); });
    // Answers once every hop below answers: the whole chain is up.
    AddMethod("chain.Chain/Ready", [this](ipcrpc::ServerContext& context, std::string_view,
                                          std::string&) {
      if (next_ == nullptr) return absl::OkStatus();
      return next_->CallMethod("chain.Chain/Ready", "", ipcrpc::CallOptions::From(context))
          .status();
    });
    // The deadline each hop's handler sees, as milliseconds left when it
    // starts, this hop's first: "4998,4995,4991" (-1: no deadline).
    AddMethod("chain.Chain/Remaining", [this](ipcrpc::ServerContext& context, std::string_view,
                                              std::string& response) {
      const absl::Duration left = context.deadline() - absl::Now();
      response = context.deadline() == absl::InfiniteFuture()
                     ? std::string("-1")
                     : absl::StrCat(absl::ToInt64Milliseconds(left));
      if (next_ == nullptr) return absl::OkStatus();
      auto rest = next_->CallMethod("chain.Chain/Remaining", "", ipcrpc::CallOptions::From(context));
      if (!rest.ok()) return rest.status();
      absl::StrAppend(&response, ",", *rest);
      return absl::OkStatus();
    });
    AddMethod("chain.Chain/WaitCancelled",
              [this](ipcrpc::ServerContext& context, std::string_view, std::string& response) {
                ipcrpc::internal::MutexLock lock(&mu_);
                auto seen = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return saw_cancel_ > 0; };
                if (!mu_.AwaitWithDeadline(ipcrpc::internal::Condition(&seen), context.deadline())) {
                  return absl::DeadlineExceededError("this hop never saw its call cancelled");
                }
                response.clear();
                response.push_back('1');
                if (next_ == nullptr) return absl::OkStatus();
                mu_.Unlock();
                auto rest = next_->CallMethod("chain.Chain/WaitCancelled", "",
                                              ipcrpc::CallOptions::From(context));
                mu_.Lock();
                if (!rest.ok()) return rest.status();
                absl::StrAppend(&response, ",", *rest);
                return absl::OkStatus();
              });
  }

 private:
  absl::Status Call(ipcrpc::ServerContext& context) {
    absl::Status status;
    if (next_ != nullptr) {
      status = next_->CallMethod("chain.Chain/Call", "", ipcrpc::CallOptions::From(context))
                   .status();
    } else {
      ipcrpc::internal::Notification cancelled;
      context.OnCancel([&cancelled] { cancelled.Notify(); });
      cancelled.WaitForNotification();
      status = absl::CancelledError("the last hop was cancelled");
    }
    if (context.IsCancelled()) {
      ipcrpc::internal::MutexLock lock(&mu_);
      ++saw_cancel_;
    }
    return status;
  }

  std::shared_ptr<ipcrpc::Channel> next_;
  ipcrpc::internal::Mutex mu_;
  int saw_cancel_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace

int main(int argc, char** argv) {
  const std::string endpoint = Flag(argc, argv, "endpoint");
  const std::string transport = Flag(argc, argv, "transport");
  const int hops = std::atoi(Flag(argc, argv, "hops").c_str());
  const std::string ready = Flag(argc, argv, "ready_fd");
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  // The next hop, started by this one.
  std::shared_ptr<ipcrpc::Channel> next;
  pid_t next_pid = -1;
  if (hops > 1) {
    const std::string self = "/proc/self/exe";
    const std::string rest = absl::StrCat("--hops=", hops - 1);
    // The next hop's transport, and the list it passes on.
    std::vector<std::string> transports = absl::StrSplit(transport, ',');
    if (transports.size() > 1) transports.erase(transports.begin());
    const std::string next_transport = transports.front();
    const std::string transport_flag = "--transport=" + absl::StrJoin(transports, ",");
    absl::StatusOr<std::shared_ptr<ipcrpc::Channel>> channel;
    if (next_transport == "pipe") {
      channel = ipcrpc::SpawnChild({self, "--endpoint=pipe:", rest, transport_flag});
    } else {
      const std::string name = absl::StrCat("ipcrpc-chain-", getpid());
      const std::string next_endpoint =
          next_transport == "grpc" ? std::string("grpc:127.0.0.1:0")
          : (next_transport == "mq" || next_transport == "shm")
              ? absl::StrCat(next_transport, ":", name)
              : absl::StrCat(next_transport, ":/tmp/", name);
      int pipefd[2];
      if (pipe(pipefd) != 0) return 1;
      next_pid = fork();
      if (next_pid == 0) {
        close(pipefd[0]);
        const std::string ready_flag = absl::StrCat("--ready_fd=", pipefd[1]);
        const std::string endpoint_flag = "--endpoint=" + next_endpoint;
        execl(self.c_str(), self.c_str(), endpoint_flag.c_str(), rest.c_str(),
              transport_flag.c_str(), ready_flag.c_str(), static_cast<char*>(nullptr));
        _exit(127);
      }
      close(pipefd[1]);
      // The next hop's bound endpoint (a grpc: port 0 becomes its port).
      std::string bound;
      char c;
      while (read(pipefd[0], &c, 1) == 1 && c != '\n') bound.push_back(c);
      close(pipefd[0]);
      if (bound.empty()) return 1;
      channel = ipcrpc::Channel::Connect(bound);
    }
    if (!channel.ok()) {
      std::fprintf(stderr, "chain_server: next hop: %s\n", channel.status().ToString().c_str());
      return 1;
    }
    next = *std::move(channel);
  }

  ChainService service(next);
  ipcrpc::Server server;
  absl::Status status = server.RegisterService(&service);
  if (status.ok()) status = server.Listen(endpoint);
  if (status.ok()) status = server.Start();
  if (!status.ok()) {
    std::fprintf(stderr, "chain_server: %s\n", status.ToString().c_str());
    return 1;
  }
  if (!ready.empty()) {
    const int fd = std::atoi(ready.c_str());
    const std::string line = server.endpoints().front() + "\n";
    ssize_t ignored = write(fd, line.data(), line.size());
    (void)ignored;
    close(fd);
  }
  std::thread signal_thread([&server, signals] {
    int signal_number = 0;
    sigwait(&signals, &signal_number);
    server.Shutdown(absl::Seconds(1));
  });
  server.Wait();
  pthread_kill(signal_thread.native_handle(), SIGTERM);
  signal_thread.join();
  next.reset();
  if (next_pid > 0) {
    kill(next_pid, SIGTERM);
    waitpid(next_pid, nullptr, 0);
  }
  return 0;
}
