#include "transports/fifo/fifo_transport.h"

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <optional>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "asio/io_context.hpp"
#include "asio/posix/stream_descriptor.hpp"
#include "asio/post.hpp"
#include "base/clock.h"
#include "base/little_endian.h"
#include "base/logging.h"
#include "base/status_macros.h"
#include "base/syscall.h"
#include "transports/descriptor_watch.h"
#include "transports/named_object.h"
#include "base/runtime_dir.h"
#include "transports/stream_connection.h"

namespace ipcrpc::internal {
namespace {

constexpr char kRecordMagic[4] = {'I', 'F', 'C', 'R'};
constexpr char kAckMagic[4] = {'I', 'F', 'C', 'A'};
constexpr uint16_t kRecordVersion = 1;

static_assert(kFifoRecordSize <= PIPE_BUF, "connect records must be written atomically");

// A client's directory as named in a record: absolute, no "." or ".."
// components, no NUL.
bool ValidClientDir(const std::string& dir) {
  if (dir.empty() || dir[0] != '/' || dir.find('\0') != std::string::npos) return false;
  size_t start = 1;
  while (start <= dir.size()) {
    size_t end = dir.find('/', start);
    if (end == std::string::npos) end = dir.size();
    std::string_view part(dir.data() + start, end - start);
    if (part == "." || part == "..") return false;
    start = end + 1;
  }
  return true;
}

// ------------------------------------------------------------------ server

// What the server FIFO's watch does on the loop.
struct FifoAcceptor {
  std::string description;
  TransportOptions options;
  UniqueFd keeper;  // a write end we hold, so the read end never sees EOF
  Listener::AcceptHandler on_accept;
  std::string pending;  // bytes of a connect record not yet complete

  // Reads and handles every record that is there; false stops accepting.
  bool ReadRecords(int reader);

  // Opens one of the client's FIFOs and checks what it is, on the descriptor.
  absl::StatusOr<UniqueFd> OpenClientFifo(const std::string& path, int flags, uid_t* owner) {
    UniqueFd fd(::open(path.c_str(), flags | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW));
    if (!fd.valid()) return ErrnoStatus(errno, "open", path);
    struct stat st;
    if (::fstat(fd.get(), &st) < 0) return ErrnoStatus(errno, "fstat", path);
    if (!S_ISFIFO(st.st_mode)) {
      return absl::InvalidArgumentError(absl::StrCat(path, " is not a FIFO"));
    }
    if (!options.AllowsUid(st.st_uid)) {
      return absl::PermissionDeniedError(absl::StrCat(
          path, " belongs to uid ", st.st_uid,
          ", which is not ours and not in ServerOptions::allowed_uids"));
    }
    *owner = st.st_uid;
    return fd;
  }

  // `record` is well formed (RecordWellFormed).
  void HandleRecord(const char* record) {
    const size_t dir_length = GetLe(record + 6, 2);
    const uint32_t pid = static_cast<uint32_t>(GetLe(record + 8, 4));
    const std::string dir(record + 16, dir_length);
    if (!ValidClientDir(dir)) {
      IPCRPC_LOG(WARNING) << description << ": dropping a connect record from pid " << pid
                          << ": directory is not a clean absolute path";
      return;
    }
    const std::string c2s = dir + "/c2s";
    const std::string s2c = dir + "/s2c";
    uid_t c2s_owner = 0;
    uid_t s2c_owner = 0;
    auto requests = OpenClientFifo(c2s, O_RDONLY, &c2s_owner);
    absl::StatusOr<UniqueFd> responses =
        requests.ok() ? OpenClientFifo(s2c, O_WRONLY, &s2c_owner) : requests.status();
    absl::Status refused = responses.status();
    if (refused.ok() && c2s_owner != s2c_owner) {
      refused = absl::PermissionDeniedError("the two FIFOs have different owners");
    }
    if (!refused.ok()) {
      IPCRPC_LOG(WARNING) << description << ": refusing a connection from pid " << pid << ": "
                          << refused;
      // If the response FIFO is one, opening and closing our end of it tells
      // the client (EOF) at once instead of leaving it to its timeout.
      // Only a FIFO: opening anything else (a device) could have effects.
      struct stat st;
      if (::lstat(s2c.c_str(), &st) == 0 && S_ISFIFO(st.st_mode)) {
        UniqueFd signal(::open(s2c.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW));
      }
      return;
    }
    // Both ends are open on both sides: the names have served their purpose.
    ::unlink(c2s.c_str());
    ::unlink(s2c.c_str());
    ::rmdir(dir.c_str());
    char ack[kFifoAckSize];
    std::memcpy(ack, kAckMagic, 4);
    PutLe(ack + 4, static_cast<uint32_t>(::getpid()), 4);
    // The client may die at any moment: EPIPE, never SIGPIPE.
    const ssize_t written =
        WithoutSigpipe([&] { return ::write(responses->get(), ack, sizeof(ack)); });
    if (written != static_cast<ssize_t>(sizeof(ack))) {
      IPCRPC_LOG(WARNING) << description << ": client pid " << pid
                          << " went away during the handshake";
      return;
    }
    auto connection = StreamConnection::Create(
        *std::move(requests), *std::move(responses), /*is_socket=*/false,
        PeerCredentials{static_cast<pid_t>(pid), c2s_owner},
        absl::StrCat(description, " peer pid ", pid), options.max_message_size);
    if (!connection.ok()) {
      IPCRPC_LOG(WARNING) << description << ": dropping a connection: " << connection.status();
      return;
    }
    on_accept(*std::move(connection));
  }
};

// Whether `record` (kFifoRecordSize bytes) is well formed: magic, version,
// a directory length in range, zeros after the directory and in the reserved
// field.
bool RecordWellFormed(const char* record) {
  if (std::memcmp(record, kRecordMagic, 4) != 0 || GetLe(record + 4, 2) != kRecordVersion ||
      GetLe(record + 12, 4) != 0) {
    return false;
  }
  const size_t dir_length = GetLe(record + 6, 2);
  if (dir_length == 0 || dir_length > kFifoMaxDirLength) return false;
  for (size_t i = 16 + dir_length; i < kFifoRecordSize; ++i) {
    if (record[i] != 0) return false;
  }
  return true;
}

bool FifoAcceptor::ReadRecords(int reader) {
  char buffer[16 * kFifoRecordSize];
  for (;;) {
    ssize_t n = ::read(reader, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
    if (n <= 0) {
      // We hold a write end ourselves, so EOF or an error here is our bug.
      IPCRPC_LOG(ERROR) << description << ": stops accepting: read returned " << n;
      return false;
    }
    // Honest clients write whole records atomically. Bytes from a peer that
    // does not (a short or garbage write) would shift every record after
    // them, so records are found by their magic and checked whole; what lies
    // between is dropped, and a record not yet complete waits for the rest.
    pending.append(buffer, static_cast<size_t>(n));
    size_t at = 0;
    size_t dropped = 0;
    for (;;) {
      size_t magic = pending.find(std::string_view(kRecordMagic, 4), at);
      if (magic == std::string::npos) {
        // Keep a tail that may be the start of a magic.
        size_t keep = std::min<size_t>(3, pending.size() - at);
        dropped += pending.size() - at - keep;
        at = pending.size() - keep;
        break;
      }
      dropped += magic - at;
      at = magic;
      if (pending.size() - at < kFifoRecordSize) break;
      if (RecordWellFormed(pending.data() + at)) {
        HandleRecord(pending.data() + at);
        at += kFifoRecordSize;
      } else {
        dropped += 1;
        at += 1;
      }
    }
    pending.erase(0, at);
    if (dropped > 0) {
      IPCRPC_LOG(WARNING) << description << ": dropped " << dropped
                          << " bytes that are not a well-formed connect record";
    }
  }
}

class FifoListener final : public Listener {
 public:
  FifoListener(Endpoint endpoint, TransportOptions options)
      : endpoint_(std::move(endpoint)), options_(std::move(options)) {}
  ~FifoListener() override { Close(); }

  absl::Status Start(asio::io_context& io, AcceptHandler on_accept) override {
    NamedObjectKind kind;
    kind.type = S_IFIFO;
    kind.noun = "FIFO";
    kind.is_live = &FifoHasReader;
    kind.create = [](const std::string& path) -> absl::StatusOr<UniqueFd> {
      if (::mkfifo(path.c_str(), 0600) < 0) {
        if (errno == EEXIST) return absl::AlreadyExistsError(path + " is taken");
        return ErrnoStatus(errno, "mkfifo", path);
      }
      // Open the read end before the FIFO is published, so that it is never
      // seen at PATH without a reader (which would look stale).
      UniqueFd reader(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
      if (!reader.valid()) {
        absl::Status status = ErrnoStatus(errno, "open", path);
        ::unlink(path.c_str());
        return status;
      }
      return reader;
    };
    IPCRPC_ASSIGN_OR_RETURN(auto published, PublishNamedObject(endpoint_.text, endpoint_.address,
                                                               options_.mode, kind, PATH_MAX - 1));
    published_ = std::move(published.second);
    auto acceptor = std::make_shared<FifoAcceptor>();
    acceptor->description = endpoint_.text;
    acceptor->options = options_;
    acceptor->keeper.Reset(::open(endpoint_.address.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC));
    if (!acceptor->keeper.valid()) {
      absl::Status status = ErrnoStatus(errno, "open", endpoint_.text);
      published_.Remove();
      return status;
    }
    acceptor->on_accept = std::move(on_accept);
    const int reader = published.first.get();
    watch_ = DescriptorWatch::Start(io, std::move(published.first),
                                    [acceptor, reader] { return acceptor->ReadRecords(reader); });
    return absl::OkStatus();
  }

  void Close() override {
    if (closed_) return;
    closed_ = true;
    published_.Remove();
    if (watch_ != nullptr) watch_->Stop();
  }

  const std::string& endpoint() const override { return endpoint_.text; }

 private:
  const Endpoint endpoint_;
  const TransportOptions options_;
  std::shared_ptr<DescriptorWatch> watch_;
  PublishedObject published_;
  bool closed_ = false;
};

// ------------------------------------------------------------------ client

class FifoConnector final : public Connector {
 public:
  FifoConnector(Endpoint endpoint, TransportOptions options)
      : endpoint_(std::move(endpoint)), options_(std::move(options)) {}

  absl::StatusOr<std::shared_ptr<Connection>> Connect(asio::io_context&,
                                                      int64_t call_deadline_ns) override {
    const std::string& text = endpoint_.text;
    const TransportOptions::ConnectDeadline deadline = options_.ConnectDeadlineFor(call_deadline_ns);
    const int64_t deadline_ns = deadline.ns;
    // The server first: no private objects for nothing.
    UniqueFd server(::open(endpoint_.address.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC));
    if (!server.valid()) {
      if (errno == ENOENT || errno == ENXIO) {
        return absl::UnavailableError(absl::StrCat(text, ": no server is listening (",
                                                   std::strerror(errno), ")"));
      }
      return ErrnoStatus(errno, "open", text);
    }
    struct stat server_st;
    if (::fstat(server.get(), &server_st) < 0) return ErrnoStatus(errno, "fstat", text);
    if (!S_ISFIFO(server_st.st_mode)) {
      return absl::FailedPreconditionError(
          absl::StrCat(text, ": ", endpoint_.address, " is not a FIFO"));
    }
    // A FIFO squatted by another uid would read our connect record.
    IPCRPC_RETURN_IF_ERROR(
        options_.CheckServerUid(text, server_st.st_uid, "the owner of the FIFO"));

    IPCRPC_ASSIGN_OR_RETURN(std::string base, RuntimeDirectory());
    std::string dir = absl::StrCat(base, "/", kFifoPrivateDirPrefix, ::getpid(), "-XXXXXX");
    if (dir.size() > kFifoMaxDirLength) {
      return absl::FailedPreconditionError(absl::StrCat(
          text, ": runtime directory ", base, " is too long for a connect record"));
    }
    if (::mkdtemp(dir.data()) == nullptr) return ErrnoStatus(errno, "mkdtemp", dir);
    const std::string c2s = dir + "/c2s";
    const std::string s2c = dir + "/s2c";
    // Whatever happens, the names go: nothing stays on disk.
    absl::Cleanup remove_names = [&] {
      ::unlink(c2s.c_str());
      ::unlink(s2c.c_str());
      ::rmdir(dir.c_str());
    };
    // A widened mode lets a server of another (allowed) uid reach the FIFOs.
    if (options_.mode != 0600 && ::chmod(dir.c_str(), 0711) < 0) {
      return ErrnoStatus(errno, "chmod", dir);
    }
    for (const std::string& fifo : {c2s, s2c}) {
      if (::mkfifo(fifo.c_str(), 0600) < 0) return ErrnoStatus(errno, "mkfifo", fifo);
      if (::chmod(fifo.c_str(), options_.mode) < 0) return ErrnoStatus(errno, "chmod", fifo);
    }
    UniqueFd responses(::open(s2c.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
    if (!responses.valid()) return ErrnoStatus(errno, "open", s2c);
    // O_RDWR opens a FIFO for writing without waiting for a reader (Linux).
    UniqueFd requests(::open(c2s.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC));
    if (!requests.valid()) return ErrnoStatus(errno, "open", c2s);

    const std::string record = MakeFifoConnectRecord(dir, static_cast<uint32_t>(::getpid()));
    for (;;) {
      // The server may die at any moment: EPIPE, never SIGPIPE.
      ssize_t n = WithoutSigpipe([&] { return ::write(server.get(), record.data(), record.size()); });
      if (n == static_cast<ssize_t>(record.size())) break;
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) {
        // The server's FIFO is full of other clients' records: wait for room.
        struct pollfd pfd = {server.get(), POLLOUT, 0};
        if (RetryEintr([&] { return ::poll(&pfd, 1, PollTimeoutMs(deadline_ns)); }) == 1) continue;
        return absl::UnavailableError(absl::StrCat(text, ": the server's FIFO stayed full"));
      }
      if (n < 0 && errno == EPIPE) {
        return absl::UnavailableError(absl::StrCat(text, ": the server went away"));
      }
      return ErrnoStatus(n < 0 ? errno : EIO, "write", text);
    }

    // Until the answer comes, the server's FIFO stays open for writing: its
    // descriptor reports POLLERR once the FIFO has no reader, which is how a
    // server that dies before it answers (killed a moment ago, its FIFO
    // still open when ours was) is seen at once, not at the deadline.
    char ack[kFifoAckSize];
    size_t got = 0;
    while (got < sizeof(ack)) {
      struct pollfd pfds[2] = {{responses.get(), POLLIN, 0}, {server.get(), 0, 0}};
      int ready = RetryEintr([&] { return ::poll(pfds, 2, PollTimeoutMs(deadline_ns)); });
      if (ready == 0) {
        return absl::UnavailableError(absl::StrCat(
            text, ": the server did not answer the connect record ", deadline.bound));
      }
      if (pfds[0].revents == 0 && (pfds[1].revents & POLLERR) != 0) {
        // poll looks at the two in turn: an answer written just before the
        // server closed its FIFO (a kill, or Shutdown, right after it) may
        // have come after `responses` was looked at.
        struct pollfd again = {responses.get(), POLLIN, 0};
        if (RetryEintr([&] { return ::poll(&again, 1, 0); }) != 1) {
          return absl::UnavailableError(
              absl::StrCat(text, ": the server went away before it answered the connect record"));
        }
      }
      ssize_t n = ::read(responses.get(), ack + got, sizeof(ack) - got);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) {
        return absl::UnavailableError(
            absl::StrCat(text, ": the server refused the connection (its log says why)"));
      }
      got += static_cast<size_t>(n);
    }
    if (std::memcmp(ack, kAckMagic, 4) != 0) {
      return absl::UnavailableError(absl::StrCat(text, ": bad acknowledgement from the server"));
    }
    const pid_t server_pid = static_cast<pid_t>(GetLe(ack + 4, 4));
    // From now on requests go through a write-only descriptor: while ours
    // is also a reader, a write to a server that has died would fill the
    // FIFO instead of failing with EPIPE (which lets a call go to a new
    // server with nothing sent to the old one). The server has unlinked
    // `c2s` already: it is reopened through /proc (a new open file
    // description of the same FIFO; ours reads it, so the open never waits).
    // Without /proc (a sandbox) the read-write descriptor stays: calls
    // still work, but one sent to a server that has died fails (its EOF on
    // `s2c`) instead of going to a new server.
    const std::string reopen = absl::StrCat("/proc/self/fd/", requests.get());
    UniqueFd writer(::open(reopen.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC));
    if (writer.valid()) {
      struct stat opened, created;
      if (::fstat(writer.get(), &opened) < 0 || ::fstat(requests.get(), &created) < 0) {
        return ErrnoStatus(errno, "fstat", c2s);
      }
      if (opened.st_dev != created.st_dev || opened.st_ino != created.st_ino) {
        return absl::FailedPreconditionError(
            absl::StrCat(reopen, " is not ", c2s, " (is /proc this process's?)"));
      }
      requests = std::move(writer);
    } else {
      IPCRPC_LOG(WARNING) << text << ": " << ErrnoStatus(errno, "open", reopen)
                          << "; writing through a read-write descriptor (a server that dies is "
                             "seen only when the call's answer fails to come)";
    }
    std::move(remove_names).Invoke();
    IPCRPC_ASSIGN_OR_RETURN(
        auto connection,
        StreamConnection::Create(std::move(responses), std::move(requests), /*is_socket=*/false,
                                 PeerCredentials{server_pid, server_st.st_uid},
                                 absl::StrCat(text, " server pid ", server_pid),
                                 options_.max_message_size));
    return connection;
  }

  const std::string& endpoint() const override { return endpoint_.text; }

 private:
  const Endpoint endpoint_;
  const TransportOptions options_;
};

absl::Status ValidateFifoAddress(const Endpoint& endpoint) {
  const std::string& address = endpoint.address;
  if (address.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("endpoint '", endpoint.text, "': fifo: needs a path"));
  }
  if (address.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("endpoint '", endpoint.text, "': the path contains a NUL byte"));
  }
  if (address.size() >= PATH_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("endpoint '", endpoint.text, "': the path is longer than PATH_MAX"));
  }
  if (address.back() == '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("endpoint '", endpoint.text, "': the path names a directory"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<bool> FifoHasReader(const std::string& path) {
  // A FIFO with no reader cannot be opened for writing without blocking.
  UniqueFd probe(::open(path.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC));
  if (probe.valid()) return true;
  if (errno == ENXIO || errno == ENOENT) return false;
  return ErrnoStatus(errno, "open", path);
}

std::string MakeFifoConnectRecord(const std::string& dir, uint32_t pid) {
  std::string record(kFifoRecordSize, '\0');
  std::memcpy(record.data(), kRecordMagic, 4);
  PutLe(record.data() + 4, kRecordVersion, 2);
  PutLe(record.data() + 6, std::min(dir.size(), kFifoMaxDirLength), 2);
  PutLe(record.data() + 8, pid, 4);
  std::memcpy(record.data() + 16, dir.data(), std::min(dir.size(), kFifoMaxDirLength));
  return record;
}

absl::StatusOr<std::unique_ptr<Listener>> CreateFifoListener(const Endpoint& endpoint,
                                                             const TransportOptions& options) {
  IPCRPC_RETURN_IF_ERROR(ValidateFifoAddress(endpoint));
  return std::make_unique<FifoListener>(endpoint, options);
}

absl::StatusOr<std::unique_ptr<Connector>> CreateFifoConnector(const Endpoint& endpoint,
                                                               const TransportOptions& options) {
  IPCRPC_RETURN_IF_ERROR(ValidateFifoAddress(endpoint));
  return std::make_unique<FifoConnector>(endpoint, options);
}

}  // namespace ipcrpc::internal
