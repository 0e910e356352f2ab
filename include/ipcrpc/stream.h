// Streaming calls: one call id carrying ordered messages each way, a
// half-close from the client, and one final status.
//
//   // Client, server streaming (generated stubs wrap these):
//   ipcrpc::ClientReader<Event> reader = stub.Watch(request);
//   Event event;
//   while (reader.Read(&event)) Handle(event);
//   absl::Status status = reader.Finish();
//
// Flow control is per stream (docs/PROTOCOL.md, "Streams"): a writer has at
// most the reader's window (ChannelOptions / ServerOptions::stream_window) of
// messages it has sent and the reader has not consumed, plus one message;
// Write blocks while it has none left, so a slow reader slows its writer and
// neither process buffers more than that per stream.
//
// The untyped classes (GenericClientStream, in ipcrpc/channel.h, and
// GenericServerStream) carry serialized bytes, for code without a .proto;
// the typed templates below sit on them.
#ifndef IPCRPC_STREAM_H_
#define IPCRPC_STREAM_H_

#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "ipcrpc/channel.h"
#include "ipcrpc/server_context.h"

namespace ipcrpc {

// The kinds of method. A stream started as one kind on a method registered
// as another is refused UNIMPLEMENTED.
enum class MethodKind {
  kUnary,
  kServerStreaming,  // one request, a stream of responses
  kClientStreaming,  // a stream of requests, one response
  kBidiStreaming,    // both ways
};

// The server end of a stream, untyped: what a handler added with
// Service::AddStreamMethod gets. Valid while the handler runs.
class GenericServerStream {
 public:
  GenericServerStream(const GenericServerStream&) = delete;
  GenericServerStream& operator=(const GenericServerStream&) = delete;

  // The next message from the client; blocks. False once the client has
  // half-closed and every message was read, or once the call is cancelled
  // (deadline, client's Cancel, client gone, server shutdown): then
  // ServerContext::IsCancelled() is already true.
  bool Read(std::string* message);
  // Sends one message; blocks while the client's window is used up. False
  // once the call is cancelled.
  bool Write(std::string_view message);
  // Ends the stream with `status` whatever the handler returns (a message
  // that did not parse: INVALID_ARGUMENT): the call is cancelled, so that
  // Read and Write return false.
  void Fail(absl::Status status);

 private:
  friend class ServerContext::State;
  explicit GenericServerStream(std::shared_ptr<ServerContext::State> state)
      : state_(std::move(state)) {}

  std::shared_ptr<ServerContext::State> state_;
};

// ------------------------------------------------------------ typed: client

namespace internal {
// A client's typed Read: the next message of `stream` parsed into
// `message`; one that does not parse cancels the call and is remembered in
// `*parse_error` (which Finish reports), as a unary reply that does not
// parse is INTERNAL.
template <class R>
bool ReadParsed(GenericClientStream& stream, std::string& buffer, R* message,
                absl::Status* parse_error) {
  if (!stream.Read(&buffer)) return false;
  if (message->ParseFromString(buffer)) return true;
  *parse_error = absl::InternalError(
      absl::StrCat("a stream message does not parse as ", message->GetTypeName()));
  stream.Cancel();
  return false;
}

// A client's typed Write: `message` serialized into `buffer` and sent. One
// that protobuf cannot serialize (over 2 GiB) is not sent: the call is
// cancelled and the reason remembered in `*error` (which Finish reports).
template <class W>
bool WriteSerialized(GenericClientStream& stream, std::string& buffer, const W& message,
                     absl::Status* error) {
  if (message.SerializePartialToString(&buffer)) return stream.Write(buffer);
  if (error->ok()) {
    *error = absl::InvalidArgumentError(absl::StrCat(
        "a stream message of ", message.ByteSizeLong(), " bytes (", message.GetTypeName(),
        ") is over the 2 GiB protobuf serializes"));
  }
  stream.Cancel();
  return false;
}
}  // namespace internal

template <class R>
class ClientReader {
 public:
  ClientReader() = default;
  explicit ClientReader(GenericClientStream stream) : stream_(std::move(stream)) {}
  // A stream that never started (a stub whose request cannot be sent):
  // Read returns false, Finish returns `failed` (not OK: an OK one becomes
  // INTERNAL).
  explicit ClientReader(absl::Status failed)
      : parse_error_(failed.ok() ? absl::InternalError("a stream failed with an OK status")
                                 : std::move(failed)) {}
  ClientReader(ClientReader&&) noexcept = default;
  ClientReader& operator=(ClientReader&&) noexcept = default;

  bool Read(R* message) { return internal::ReadParsed(stream_, buffer_, message, &parse_error_); }
  absl::Status Finish() {
    absl::Status status = stream_.Finish();  // (of a stream never started: not used)
    return parse_error_.ok() ? status : parse_error_;
  }
  void Cancel() { stream_.Cancel(); }

 private:
  GenericClientStream stream_;
  std::string buffer_;
  absl::Status parse_error_;
};

template <class W, class R>
class ClientWriter {
 public:
  ClientWriter() = default;
  explicit ClientWriter(GenericClientStream stream) : stream_(std::move(stream)) {}
  ClientWriter(ClientWriter&&) noexcept = default;
  ClientWriter& operator=(ClientWriter&&) noexcept = default;

  bool Write(const W& message) {
    return internal::WriteSerialized(stream_, buffer_, message, &write_error_);
  }
  bool WritesDone() { return stream_.WritesDone(); }
  // The server's reply (its one message), or the call's status (a message
  // Write could not serialize: INVALID_ARGUMENT, whatever the server said).
  absl::StatusOr<R> Finish() {
    if (!write_error_.ok()) {
      stream_.Finish().IgnoreError();  // cancelled by Write: ends at once
      return write_error_;
    }
    stream_.WritesDone();
    std::string bytes;
    const bool got = stream_.Read(&bytes);
    absl::Status status = stream_.Finish();
    if (!status.ok()) return status;
    R reply;
    if (!got) return absl::InternalError("the server ended the stream OK without a reply");
    if (!reply.ParseFromString(bytes)) {
      return absl::InternalError(
          absl::StrCat("the reply does not parse as ", reply.GetTypeName()));
    }
    return reply;
  }
  void Cancel() { stream_.Cancel(); }

 private:
  GenericClientStream stream_;
  std::string buffer_;
  absl::Status write_error_;
};

template <class W, class R>
class ClientReaderWriter {
 public:
  ClientReaderWriter() = default;
  explicit ClientReaderWriter(GenericClientStream stream) : stream_(std::move(stream)) {}
  ClientReaderWriter(ClientReaderWriter&&) noexcept = default;
  ClientReaderWriter& operator=(ClientReaderWriter&&) noexcept = default;

  bool Write(const W& message) {
    return internal::WriteSerialized(stream_, write_buffer_, message, &write_error_);
  }
  bool WritesDone() { return stream_.WritesDone(); }
  bool Read(R* message) {
    return internal::ReadParsed(stream_, read_buffer_, message, &parse_error_);
  }
  // The call's status, or first a message Write could not serialize
  // (INVALID_ARGUMENT), then one Read could not parse (INTERNAL).
  absl::Status Finish() {
    absl::Status status = stream_.Finish();
    if (!write_error_.ok()) return write_error_;
    return parse_error_.ok() ? status : parse_error_;
  }
  void Cancel() { stream_.Cancel(); }

 private:
  GenericClientStream stream_;
  std::string write_buffer_;
  std::string read_buffer_;
  // Apart: one thread may write while another reads.
  absl::Status write_error_;
  absl::Status parse_error_;
};

// ------------------------------------------------------------ typed: server
// A message from the client that does not parse ends the stream
// INVALID_ARGUMENT (Read returns false), whatever the handler returns.

template <class W>
class ServerWriter {
 public:
  explicit ServerWriter(GenericServerStream& stream) : stream_(stream) {}
  // A message protobuf cannot serialize (over 2 GiB) is not sent: the
  // stream ends INTERNAL, as a unary reply that cannot be serialized does.
  bool Write(const W& message) {
    if (message.SerializePartialToString(&buffer_)) return stream_.Write(buffer_);
    stream_.Fail(absl::InternalError(absl::StrCat(
        "the handler's stream message of ", message.ByteSizeLong(), " bytes (",
        message.GetTypeName(), ") is over the 2 GiB protobuf serializes")));
    return false;
  }

 private:
  GenericServerStream& stream_;
  std::string buffer_;
};

template <class R>
class ServerReader {
 public:
  explicit ServerReader(GenericServerStream& stream) : stream_(stream) {}
  bool Read(R* message) {
    if (!stream_.Read(&buffer_)) return false;
    if (message->ParseFromString(buffer_)) return true;
    stream_.Fail(absl::InvalidArgumentError(
        absl::StrCat("a stream message does not parse as ", message->GetTypeName())));
    return false;
  }

 private:
  GenericServerStream& stream_;
  std::string buffer_;
};

template <class W, class R>
class ServerReaderWriter {
 public:
  explicit ServerReaderWriter(GenericServerStream& stream) : reader_(stream), writer_(stream) {}
  bool Read(R* message) { return reader_.Read(message); }
  bool Write(const W& message) { return writer_.Write(message); }

 private:
  ServerReader<R> reader_;
  ServerWriter<W> writer_;
};

}  // namespace ipcrpc

#endif  // IPCRPC_STREAM_H_
