#include "transports/pipe/pipe_transport.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "asio/io_context.hpp"
#include "asio/posix/stream_descriptor.hpp"
#include "asio/post.hpp"
#include "base/logging.h"
#include "base/status_macros.h"
#include "base/syscall.h"
#include "transports/stream_connection.h"
#include "base/mutex.h"

extern char** environ;

namespace ipcrpc::internal {
namespace {

std::string DescribeExit(int wait_status) {
  if (WIFEXITED(wait_status)) return absl::StrCat("exited with status ", WEXITSTATUS(wait_status));
  if (WIFSIGNALED(wait_status)) {
    return absl::StrCat("was killed by signal ", WTERMSIG(wait_status), " (",
                        strsignal(WTERMSIG(wait_status)), ")");
  }
  return absl::StrCat("ended with wait status ", wait_status);
}

// ---------------------------------------------------------------- child side

std::atomic<bool> pipe_listener_taken{false};

class PipeListener final : public Listener {
 public:
  PipeListener(Endpoint endpoint, TransportOptions options)
      : endpoint_(std::move(endpoint)), options_(std::move(options)) {}
  ~PipeListener() override { Close(); }

  absl::Status Start(asio::io_context& io, AcceptHandler on_accept) override {
    const char* value = std::getenv(kPipeFdsEnv);
    if (value == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat("endpoint 'pipe:': ", kPipeFdsEnv,
                       " is not set; a pipe: server must be started by ipcrpc::SpawnChild"));
    }
    std::vector<absl::string_view> fields = absl::StrSplit(value, ',');
    int read_fd = -1;
    int write_fd = -1;
    if (fields.size() != 2 || !absl::SimpleAtoi(fields[0], &read_fd) ||
        !absl::SimpleAtoi(fields[1], &write_fd) || read_fd < 0 || write_fd < 0 ||
        read_fd == write_fd) {
      return absl::InvalidArgumentError(absl::StrCat("endpoint 'pipe:': ", kPipeFdsEnv, "='",
                                                     value, "' is not two descriptors 'R,W'"));
    }
    for (int fd : {read_fd, write_fd}) {
      struct stat st;
      if (::fstat(fd, &st) < 0 || !S_ISFIFO(st.st_mode)) {
        return absl::FailedPreconditionError(absl::StrCat(
            "endpoint 'pipe:': descriptor ", fd, " named in ", kPipeFdsEnv, " is not an open pipe"));
      }
    }
    if (pipe_listener_taken.exchange(true)) {
      return absl::AlreadyExistsError(
          "endpoint 'pipe:': this process already serves its parent's pipes");
    }
    // Grandchildren must not inherit the pipes (they would keep them open).
    ::fcntl(read_fd, F_SETFD, FD_CLOEXEC);
    ::fcntl(write_fd, F_SETFD, FD_CLOEXEC);
    PeerCredentials parent{::getppid(), ::getuid()};
    IPCRPC_ASSIGN_OR_RETURN(
        auto connection,
        StreamConnection::Create(UniqueFd(read_fd), UniqueFd(write_fd), /*is_socket=*/false,
                                 parent, absl::StrCat("pipe: parent pid ", parent.pid),
                                 options_.max_message_size));
    asio::post(io, [on_accept = std::move(on_accept), connection]() mutable {
      on_accept(std::move(connection));
    });
    return absl::OkStatus();
  }

  void Close() override {}
  bool EndsServerWithConnection() const override { return true; }
  const std::string& endpoint() const override { return endpoint_.text; }

 private:
  const Endpoint endpoint_;
  const TransportOptions options_;
};

// --------------------------------------------------------------- parent side

// The spawned child: reaped by whoever sees it exit first.
class ChildProcess {
 public:
  ChildProcess(pid_t pid, UniqueFd pidfd) : pid_(pid), pidfd_(std::move(pidfd)) {}

  pid_t pid() const { return pid_; }
  int pidfd() const { return pidfd_.get(); }

  // Reaps the child if it has exited; returns true once reaped.
  bool TryReap() {
    MutexLock lock(&mu_);
    if (wait_status_.has_value()) return true;
    int status = 0;
    pid_t r = RetryEintr([&] { return ::waitpid(pid_, &status, WNOHANG); });
    if (r == pid_) {
      wait_status_ = status;
      IPCRPC_LOG(INFO) << "pipe: child pid " << pid_ << " " << DescribeExit(status);
      return true;
    }
    if (r < 0 && errno == ECHILD) {
      wait_status_ = 0;  // reaped by someone else (the application)
      return true;
    }
    return false;
  }

  std::string Describe() {
    MutexLock lock(&mu_);
    if (!wait_status_.has_value()) return absl::StrCat("child pid ", pid_, " is running");
    return absl::StrCat("child pid ", pid_, " ", DescribeExit(*wait_status_));
  }

  // Waits up to `grace` for the child to exit, then kills it; always reaps.
  void ReapOrKill(absl::Duration grace) {
    if (TryReap()) return;
    struct pollfd pfd = {pidfd_.get(), POLLIN, 0};
    int timeout_ms = static_cast<int>(absl::ToInt64Milliseconds(grace));
    RetryEintr([&] { return ::poll(&pfd, 1, timeout_ms); });
    if (TryReap()) return;
    IPCRPC_LOG(WARNING) << "pipe: child pid " << pid_ << " did not exit within "
                        << absl::FormatDuration(grace) << " of the channel closing; killing it";
    // The pidfd makes the kill safe from pid reuse: the child is unreaped.
    ::syscall(SYS_pidfd_send_signal, pidfd_.get(), SIGKILL, nullptr, 0);
    MutexLock lock(&mu_);
    if (wait_status_.has_value()) return;
    int status = 0;
    if (RetryEintr([&] { return ::waitpid(pid_, &status, 0); }) == pid_) wait_status_ = status;
  }

 private:
  const pid_t pid_;
  const UniqueFd pidfd_;
  Mutex mu_;
  std::optional<int> wait_status_ ABSL_GUARDED_BY(mu_);
};

// Watches the child's pidfd on the loop and reaps it when it exits.
struct ChildWatch {
  std::shared_ptr<ChildProcess> child;
  std::optional<asio::posix::stream_descriptor> readable;

  void Stop() {
    if (readable.has_value()) {
      readable->release();
      readable.reset();
    }
  }
};

void WatchChild(const std::shared_ptr<ChildWatch>& watch) {
  watch->readable->async_wait(asio::posix::stream_descriptor::wait_read,
                              [watch](const asio::error_code& ec) {
                                if (ec || !watch->readable.has_value()) return;
                                if (watch->child->TryReap()) {
                                  watch->Stop();
                                  return;
                                }
                                WatchChild(watch);
                              });
}

class PipeConnector final : public Connector {
 public:
  PipeConnector(std::string description, std::shared_ptr<ChildProcess> child, UniqueFd read_fd,
                UniqueFd write_fd, TransportOptions options)
      : description_(std::move(description)),
        child_(std::move(child)),
        read_fd_(std::move(read_fd)),
        write_fd_(std::move(write_fd)),
        options_(std::move(options)) {}

  ~PipeConnector() override {
    read_fd_.Reset();
    write_fd_.Reset();
    child_->ReapOrKill(options_.child_exit_grace);
  }

  absl::StatusOr<std::shared_ptr<Connection>> Connect(asio::io_context& io, int64_t) override {
    if (!read_fd_.valid()) {
      return absl::UnavailableError(absl::StrCat(
          description_, ": ", child_->Describe(), "; a pipe: channel cannot reconnect"));
    }
    PeerCredentials peer{child_->pid(), ::getuid()};
    IPCRPC_ASSIGN_OR_RETURN(
        auto connection,
        StreamConnection::Create(std::move(read_fd_), std::move(write_fd_), /*is_socket=*/false,
                                 peer, absl::StrCat(description_, " child pid ", child_->pid()),
                                 options_.max_message_size));
    watch_ = std::make_shared<ChildWatch>();
    watch_->child = child_;
    io_ = &io;
    auto watch = watch_;
    asio::post(io, [watch, &io] {
      if (watch->child->TryReap()) return;
      watch->readable.emplace(io, watch->child->pidfd());
      WatchChild(watch);
    });
    return connection;
  }

  void Shutdown() override {
    if (watch_ == nullptr) return;
    auto watch = std::move(watch_);
    asio::post(*io_, [watch] { watch->Stop(); });
  }

  const std::string& endpoint() const override { return description_; }

 private:
  const std::string description_;
  const std::shared_ptr<ChildProcess> child_;
  UniqueFd read_fd_;   // from the child, until Connect
  UniqueFd write_fd_;  // to the child, until Connect
  const TransportOptions options_;
  asio::io_context* io_ = nullptr;
  std::shared_ptr<ChildWatch> watch_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Listener>> CreatePipeListener(const Endpoint& endpoint,
                                                             const TransportOptions& options) {
  if (!endpoint.address.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "endpoint '", endpoint.text, "': pipe: takes no address (the pipes are inherited)"));
  }
  return std::make_unique<PipeListener>(endpoint, options);
}

absl::StatusOr<std::unique_ptr<Connector>> CreatePipeConnector(const Endpoint& endpoint,
                                                               const TransportOptions&) {
  return absl::InvalidArgumentError(
      absl::StrCat("endpoint '", endpoint.text,
                   "': a pipe: channel is made by ipcrpc::SpawnChild, not Channel::Connect"));
}

absl::StatusOr<std::unique_ptr<Connector>> SpawnChildConnector(
    const std::vector<std::string>& argv, const TransportOptions& options) {
  if (argv.empty() || argv[0].empty()) {
    return absl::InvalidArgumentError("SpawnChild: argv is empty; argv[0] names the program");
  }
  const std::string& program = argv[0];
  int to_child[2];
  int from_child[2];
  if (::pipe2(to_child, O_CLOEXEC) < 0) return ErrnoStatus(errno, "pipe2", program);
  UniqueFd child_read(to_child[0]);
  UniqueFd parent_write(to_child[1]);
  if (::pipe2(from_child, O_CLOEXEC) < 0) return ErrnoStatus(errno, "pipe2", program);
  UniqueFd parent_read(from_child[0]);
  UniqueFd child_write(from_child[1]);

  // dup2(fd, fd) in the file actions clears O_CLOEXEC in the child only, so
  // these two ends, and nothing else of ours, survive exec.
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, child_read.get(), child_read.get());
  posix_spawn_file_actions_adddup2(&actions, child_write.get(), child_write.get());
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t empty;
  sigemptyset(&empty);
  posix_spawnattr_setsigmask(&attr, &empty);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);

  std::string fds_var =
      absl::StrCat(kPipeFdsEnv, "=", child_read.get(), ",", child_write.get());
  std::vector<char*> envp;
  const std::string prefix = absl::StrCat(kPipeFdsEnv, "=");
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, prefix.c_str(), prefix.size()) != 0) envp.push_back(*e);
  }
  envp.push_back(fds_var.data());
  envp.push_back(nullptr);
  std::vector<char*> args;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);

  pid_t pid = 0;
  int error = ::posix_spawnp(&pid, program.c_str(), &actions, &attr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (error != 0) {
    if (error == ENOENT) {
      return absl::NotFoundError(absl::StrCat("SpawnChild: program '", program, "' not found"));
    }
    return ErrnoStatus(error, "posix_spawnp", program);
  }
  child_read.Reset();
  child_write.Reset();
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  if (!pidfd.valid()) {
    absl::Status status = ErrnoStatus(errno, "pidfd_open", program);
    ::kill(pid, SIGKILL);
    RetryEintr([&] { return ::waitpid(pid, nullptr, 0); });
    return status;
  }
  auto child = std::make_shared<ChildProcess>(pid, std::move(pidfd));
  return std::make_unique<PipeConnector>(absl::StrCat("pipe:", program), std::move(child),
                                         std::move(parent_read), std::move(parent_write), options);
}

}  // namespace ipcrpc::internal
