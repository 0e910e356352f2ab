// A Connection over a byte stream (a socket, or a pair of pipes or FIFOs):
// each message is a little-endian u32 length followed by that many bytes.
// The length is checked against max_message_size before anything is
// allocated. Used by `unix:` and `pipe:` (and `fifo:`).
#ifndef IPCRPC_TRANSPORTS_STREAM_CONNECTION_H_
#define IPCRPC_TRANSPORTS_STREAM_CONNECTION_H_

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "asio/io_context.hpp"
#include "asio/posix/stream_descriptor.hpp"
#include "base/syscall.h"
#include "transports/transport.h"
#include "base/mutex.h"

namespace ipcrpc::internal {

class StreamConnection final : public Connection {
 public:
  // `read_fd` and `write_fd` may be the same descriptor (a socket); both are
  // owned and set non-blocking. `is_socket` selects send(MSG_NOSIGNAL) over
  // write() with SIGPIPE blocked.
  static absl::StatusOr<std::shared_ptr<StreamConnection>> Create(
      UniqueFd read_fd, UniqueFd write_fd, bool is_socket, PeerCredentials peer,
      std::string description, size_t max_message_size);

  StreamConnection(UniqueFd read_fd, UniqueFd write_fd, UniqueFd close_event, bool is_socket,
                   PeerCredentials peer, std::string description, size_t max_message_size);
  ~StreamConnection() override;

  void Start(asio::io_context& io, MessageHandler on_message, CloseHandler on_closed) override;
  absl::Status Send(absl::Span<const std::string_view> parts, int priority) override;
  void Close() override;
  const PeerCredentials& peer() const override { return peer_; }
  const std::string& description() const override { return description_; }

 private:
  void WaitReadable();
  void OnReadable();
  // Parses whole messages out of the buffer; false if the connection ended.
  bool DeliverMessages();
  void Finish(absl::Status reason);  // on the loop: close fds, run on_closed once
  absl::Status WaitWritable();       // EAGAIN on write: poll until writable or closed

  const int read_fd_;
  const int write_fd_;
  const bool is_socket_;
  const PeerCredentials peer_;
  const std::string description_;
  const size_t max_message_size_;

  UniqueFd owned_read_fd_;   // closed on the loop, in Finish
  UniqueFd owned_write_fd_;  // closed in Finish under write_mu_
  UniqueFd close_event_;     // eventfd: wakes blocked senders on Close

  std::atomic<bool> closing_{false};

  // Loop-thread state.
  std::atomic<asio::io_context*> io_{nullptr};
  std::optional<asio::posix::stream_descriptor> readable_;
  MessageHandler on_message_;
  CloseHandler on_closed_;
  bool finished_ = false;
  std::vector<char> buffer_;
  size_t begin_ = 0;  // first unparsed byte
  size_t end_ = 0;    // one past the last received byte

  Mutex write_mu_;
  bool write_fd_closed_ ABSL_GUARDED_BY(write_mu_) = false;
};

}  // namespace ipcrpc::internal

#endif  // IPCRPC_TRANSPORTS_STREAM_CONNECTION_H_
