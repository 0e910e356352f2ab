#include "transports/inproc/inproc_transport.h"

#include <unistd.h>

#include <cctype>
#include <deque>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "asio/io_context.hpp"
#include "asio/post.hpp"
#include "base/clock.h"
#include "base/copy.h"
#include "base/mutex.h"
#include "base/strings.h"

namespace ipcrpc::internal {
namespace {

constexpr size_t kMaxNameSize = 255;

// One end of a connection, as its Link keeps it.
struct Side {
  asio::io_context* io = nullptr;  // set by Start
  bool started = false;
  bool close_called = false;     // Close() was called on this end
  bool end_scheduled = false;    // its on_closed is posted (or will be, at Start)
  absl::Status end_reason;       // why, when end_scheduled
  std::deque<std::string> early;  // sent to this end before it started
  size_t queued_bytes = 0;        // sent to this end, not yet taken by its loop
};

// The two ends of one connection under one mutex. Index 0 is the client's
// end, 1 the server's.
struct Link {
  Mutex mu;
  CondVar room;  // a side's queued_bytes went down, or the link broke
  Side side[2] ABSL_GUARDED_BY(mu);
  bool broken ABSL_GUARDED_BY(mu) = false;  // an end closed: nothing more is sent
  // Touched only on each end's loop thread once the end has started (and
  // by Start before): the handlers, and whether on_closed has run.
  Connection::MessageHandler on_message[2];
  Connection::CloseHandler on_closed[2];
  bool finished[2] = {false, false};
  bool refused[2] ABSL_GUARDED_BY(mu) = {false, false};  // a message over the receiver's limit came
  size_t max_message_size[2] = {0, 0};
  std::string description[2];
};

// Posts `message`'s delivery to end `to`, or keeps it until that end starts.
void DeliverLocked(const std::shared_ptr<Link>& link, int to, std::string message)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(link->mu);
// Posts end `i`'s on_closed with `reason`, or keeps it until that end starts.
void ScheduleEndLocked(const std::shared_ptr<Link>& link, int i, absl::Status reason)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(link->mu);

// On end `to`'s loop: hands `message` to its owner.
void Take(const std::shared_ptr<Link>& link, int to, const std::string& message) {
  {
    MutexLock lock(&link->mu);
    link->side[to].queued_bytes -= message.size();
    link->room.SignalAll();
    // Nothing more is delivered once this end is closed (or dropped), has
    // refused a message, or has ended. (An end merely posted comes after
    // this message.)
    if (link->side[to].close_called || link->finished[to] || link->refused[to]) return;
    // The receiver's own limit, as a kernel transport checks a length
    // prefix against it.
    if (message.size() > link->max_message_size[to]) {
      link->refused[to] = true;
      link->broken = true;
      ScheduleEndLocked(
          link, to,
          absl::ResourceExhaustedError(absl::StrCat(
              link->description[to], ": a message of ", message.size(),
              " bytes is over max_message_size (", link->max_message_size[to], ")")));
      ScheduleEndLocked(link, 1 - to,
                        absl::UnavailableError(absl::StrCat(link->description[1 - to],
                                                            ": the peer closed the connection")));
      return;
    }
  }
  link->on_message[to](message);
}

// On end `i`'s loop: its owner learns the connection ended. Exactly once.
void RunEnd(const std::shared_ptr<Link>& link, int i, absl::Status reason) {
  if (link->finished[i]) return;
  link->finished[i] = true;
  Connection::CloseHandler on_closed = std::move(link->on_closed[i]);
  Connection::MessageHandler on_message = std::move(link->on_message[i]);
  if (on_closed) std::move(on_closed)(std::move(reason));
}

void DeliverLocked(const std::shared_ptr<Link>& link, int to, std::string message) {
  Side& side = link->side[to];
  side.queued_bytes += message.size();
  if (!side.started) {
    side.early.push_back(std::move(message));
    return;
  }
  asio::post(*side.io, [link, to, message = std::move(message)] { Take(link, to, message); });
}

void ScheduleEndLocked(const std::shared_ptr<Link>& link, int i, absl::Status reason) {
  Side& side = link->side[i];
  if (side.end_scheduled) return;
  side.end_scheduled = true;
  side.end_reason = reason;
  if (side.started) {
    asio::post(*side.io, [link, i, reason = std::move(reason)] { RunEnd(link, i, reason); });
  }
}

class InprocConnection final : public Connection {
 public:
  InprocConnection(std::shared_ptr<Link> link, int index) : link_(std::move(link)), index_(index) {
    peer_.pid = ::getpid();
    peer_.uid = ::geteuid();
  }
  // An end dropped without Close: its peer sees the connection end. Its
  // own loop is not posted to from now on (it may be gone with its owner):
  // its end counts as scheduled, and what is queued for it is dropped.
  ~InprocConnection() override {
    MutexLock lock(&link_->mu);
    Side& side = link_->side[index_];
    side.early.clear();
    if (side.close_called) return;
    side.close_called = true;
    side.end_scheduled = true;
    BreakLocked();
  }

  void Start(asio::io_context& io, MessageHandler on_message, CloseHandler on_closed) override {
    link_->on_message[index_] = std::move(on_message);
    link_->on_closed[index_] = std::move(on_closed);
    MutexLock lock(&link_->mu);
    Side& side = link_->side[index_];
    side.io = &io;
    side.started = true;
    // What came before the start, then the end if it came too, in order.
    for (std::string& message : side.early) {
      asio::post(io, [link = link_, to = index_, message = std::move(message)] {
        Take(link, to, message);
      });
    }
    side.early.clear();
    if (side.end_scheduled) {
      asio::post(io, [link = link_, i = index_, reason = side.end_reason] {
        RunEnd(link, i, reason);
      });
    } else if (side.close_called) {
      ScheduleEndLocked(link_, index_, ClosedReason());
    }
  }

  absl::Status SendWithin(absl::Span<const std::string_view> parts, int /*priority*/,
                          int64_t deadline_ns) override {
    std::string message;
    absl::Status status = Assemble(parts, &message);
    if (!status.ok()) return status;
    MutexLock lock(&link_->mu);
    for (;;) {
      if (link_->broken) return Closed();
      if (HasRoomLocked(message.size())) break;
      if (deadline_ns != kNoDeadline && MonotonicNowNs() >= deadline_ns) {
        return MarkNotDelivered(absl::DeadlineExceededError(
            absl::StrCat(description(), ": the peer took nothing before the deadline")));
      }
      if (deadline_ns == kNoDeadline) {
        link_->room.Wait(&link_->mu);
      } else {
        link_->room.WaitUntil(&link_->mu, SteadyTimeOf(deadline_ns));
      }
    }
    DeliverLocked(link_, 1 - index_, std::move(message));
    return absl::OkStatus();
  }

  bool TrySend(absl::Span<const std::string_view> parts, int /*priority*/,
               absl::Status* error) override {
    std::string message;
    absl::Status status = Assemble(parts, &message);
    if (!status.ok()) {
      *error = status;
      return true;
    }
    MutexLock lock(&link_->mu);
    if (link_->broken) {
      *error = Closed();
      return true;
    }
    if (!HasRoomLocked(message.size())) return false;
    DeliverLocked(link_, 1 - index_, std::move(message));
    *error = absl::OkStatus();
    return true;
  }

  bool SendSeesPeerLeave() const override { return true; }

  void Close() override {
    MutexLock lock(&link_->mu);
    Side& side = link_->side[index_];
    if (side.close_called) return;
    side.close_called = true;
    // Not started: Start (if it comes) posts the end.
    if (side.started) ScheduleEndLocked(link_, index_, ClosedReason());
    BreakLocked();
  }

  const PeerCredentials& peer() const override { return peer_; }
  const std::string& description() const override { return link_->description[index_]; }

 private:
  absl::Status Assemble(absl::Span<const std::string_view> parts, std::string* message) const {
    absl::StatusOr<size_t> size = SendSize(parts, link_->max_message_size[index_], description());
    if (!size.ok()) return MarkNotDelivered(size.status());
    message->reserve(*size);
    for (std::string_view part : parts) AppendBytes(message, part);
    return absl::OkStatus();
  }

  // A message always goes when the peer has nothing queued; else only
  // within kInprocQueueLimit.
  bool HasRoomLocked(size_t size) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(link_->mu) {
    const size_t queued = link_->side[1 - index_].queued_bytes;
    return queued == 0 || queued + size <= kInprocQueueLimit;
  }

  absl::Status ClosedReason() const {
    return absl::CancelledError(absl::StrCat(description(), ": closed"));
  }

  absl::Status Closed() const {
    return MarkNotDelivered(absl::UnavailableError(absl::StrCat(description(),
                                                                ": connection closed")));
  }

  // Nothing more is sent either way; the peer's owner learns it (once).
  void BreakLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(link_->mu) {
    link_->broken = true;
    link_->room.SignalAll();
    ScheduleEndLocked(link_, 1 - index_,
                      absl::UnavailableError(absl::StrCat(link_->description[1 - index_],
                                                          ": the peer closed the connection")));
  }

  const std::shared_ptr<Link> link_;
  const int index_;
  PeerCredentials peer_;
};

// A listening name: what a connector needs to hand a server its end.
struct Listening {
  Mutex mu;
  asio::io_context* io ABSL_GUARDED_BY(mu) = nullptr;
  bool closed ABSL_GUARDED_BY(mu) = false;
  std::deque<std::shared_ptr<Connection>> early ABSL_GUARDED_BY(mu);  // before Start
  // Set by Start; called only on the server's loop.
  Listener::AcceptHandler on_accept;
  size_t max_message_size = 0;
  std::string endpoint;
  uint64_t next_connection ABSL_GUARDED_BY(mu) = 1;
};

// The process's listening names.
struct Table {
  Mutex mu;
  absl::flat_hash_map<std::string, std::shared_ptr<Listening>> by_name ABSL_GUARDED_BY(mu);
};
Table& Names() {
  static Table* const table = new Table;  // never destroyed: used until exit
  return *table;
}

class InprocListener final : public Listener {
 public:
  explicit InprocListener(std::shared_ptr<Listening> listening)
      : listening_(std::move(listening)) {}
  ~InprocListener() override { Close(); }

  absl::Status Start(asio::io_context& io, AcceptHandler on_accept) override {
    listening_->on_accept = std::move(on_accept);
    MutexLock lock(&listening_->mu);
    listening_->io = &io;
    for (std::shared_ptr<Connection>& connection : listening_->early) Post(std::move(connection));
    listening_->early.clear();
    return absl::OkStatus();
  }

  void Close() override {
    {
      MutexLock lock(&Names().mu);
      auto it = Names().by_name.find(listening_->endpoint);
      if (it != Names().by_name.end() && it->second == listening_) Names().by_name.erase(it);
    }
    std::deque<std::shared_ptr<Connection>> early;
    {
      MutexLock lock(&listening_->mu);
      listening_->closed = true;
      early.swap(listening_->early);
    }
    for (auto& connection : early) connection->Close();
  }

  const std::string& endpoint() const override { return listening_->endpoint; }

  // With the mutex held: the server's loop accepts `connection`.
  void Post(std::shared_ptr<Connection> connection) ABSL_EXCLUSIVE_LOCKS_REQUIRED(listening_->mu) {
    PostAccept(listening_, std::move(connection));
  }

  static void PostAccept(const std::shared_ptr<Listening>& listening,
                         std::shared_ptr<Connection> connection)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(listening->mu) {
    asio::post(*listening->io, [listening, connection = std::move(connection)]() mutable {
      bool closed;
      {
        MutexLock lock(&listening->mu);
        closed = listening->closed;
      }
      if (closed) {
        connection->Close();
        return;
      }
      listening->on_accept(std::move(connection));
    });
  }

 private:
  const std::shared_ptr<Listening> listening_;
};

class InprocConnector final : public Connector {
 public:
  InprocConnector(std::string endpoint, size_t max_message_size)
      : endpoint_(std::move(endpoint)), max_message_size_(max_message_size) {}

  absl::StatusOr<std::shared_ptr<Connection>> Connect(asio::io_context& /*io*/,
                                                      int64_t /*deadline_ns*/) override {
    std::shared_ptr<Listening> listening;
    {
      MutexLock lock(&Names().mu);
      auto it = Names().by_name.find(endpoint_);
      if (it != Names().by_name.end()) listening = it->second;
    }
    if (listening == nullptr) {
      return absl::UnavailableError(
          absl::StrCat(endpoint_, ": no server listens on it in this process"));
    }
    auto link = std::make_shared<Link>();
    MutexLock lock(&listening->mu);
    if (listening->closed) {
      return absl::UnavailableError(absl::StrCat(endpoint_, ": the server stopped listening"));
    }
    const uint64_t number = listening->next_connection++;
    link->max_message_size[0] = max_message_size_;
    link->max_message_size[1] = listening->max_message_size;
    link->description[0] = absl::StrCat(endpoint_, " connection ", number);
    link->description[1] = absl::StrCat(endpoint_, " connection ", number, " (server end)");
    auto client = std::make_shared<InprocConnection>(link, 0);
    auto server = std::make_shared<InprocConnection>(link, 1);
    if (listening->io == nullptr) {
      listening->early.push_back(std::move(server));
    } else {
      InprocListener::PostAccept(listening, std::move(server));
    }
    return client;
  }

  const std::string& endpoint() const override { return endpoint_; }

 private:
  const std::string endpoint_;
  const size_t max_message_size_;
};

absl::Status ValidateName(const Endpoint& endpoint) {
  const std::string& name = endpoint.address;
  if (name.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("endpoint '", Av(endpoint.text), "': empty name (expected inproc:NAME)"));
  }
  if (name.size() > kMaxNameSize) {
    return absl::InvalidArgumentError(absl::StrCat("endpoint '", Av(endpoint.text), "': name of ",
                                                   name.size(), " bytes, over ", kMaxNameSize));
  }
  for (char c : name) {
    if (!std::isgraph(static_cast<unsigned char>(c))) {
      return absl::InvalidArgumentError(
          absl::StrCat("endpoint '", Av(endpoint.text),
                       "': the name has a space or a control character"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Listener>> CreateInprocListener(const Endpoint& endpoint,
                                                               const TransportOptions& options) {
  absl::Status valid = ValidateName(endpoint);
  if (!valid.ok()) return valid;
  auto listening = std::make_shared<Listening>();
  listening->endpoint = endpoint.text;
  listening->max_message_size = options.max_message_size;
  MutexLock lock(&Names().mu);
  if (!Names().by_name.try_emplace(endpoint.text, listening).second) {
    return absl::AlreadyExistsError(
        absl::StrCat(endpoint.text, ": a server in this process already listens on it"));
  }
  return std::make_unique<InprocListener>(std::move(listening));
}

absl::StatusOr<std::unique_ptr<Connector>> CreateInprocConnector(const Endpoint& endpoint,
                                                                 const TransportOptions& options) {
  absl::Status valid = ValidateName(endpoint);
  if (!valid.ok()) return valid;
  return std::make_unique<InprocConnector>(endpoint.text, options.max_message_size);
}

}  // namespace ipcrpc::internal
