// The server's side of a stream, as its handler sees it (GenericServerStream):
// reads what the loop queued, writes within the client's window, and grants
// the client more as it reads. ServerCore (rpc/server.cc) starts streams,
// queues their frames and ends them.
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/clock.h"
#include "base/mutex.h"
#include "ipcrpc/stream.h"
#include "wire/frame.h"
#include "rpc/server_call_state.h"

namespace ipcrpc {
namespace {

using internal::ServerCallState;
using internal::ServerStreamState;

// Waits for a notification or the call's deadline (after which
// IsCancelled() is true).
void WaitForProgress(const ServerCallState& call, ServerStreamState& stream)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(stream.mu) {
  if (call.deadline_ns == internal::kNoDeadline) {
    stream.cv.Wait(&stream.mu);
  } else {
    stream.cv.WaitUntil(&stream.mu, internal::SteadyTimeOf(call.deadline_ns));
  }
}

}  // namespace

bool GenericServerStream::Read(std::string* message) {
  ServerStreamState& stream = *state_->stream;
  int64_t grant = 0;
  {
    internal::MutexLock lock(&stream.mu);
    for (;;) {
      if (state_->IsCancelled()) return false;
      if (!stream.inbox.empty()) break;
      if (stream.half_closed) return false;
      WaitForProgress(*state_, stream);
    }
    message->swap(stream.inbox.front());
    stream.inbox.pop_front();
    stream.consumed_ungranted += internal::StreamCost(message->size());
    stream.unread_bytes -= internal::StreamCost(message->size());
    stream.charged->fetch_sub(internal::StreamCost(message->size()));  // set before the handler ran
    // One WINDOW per half window consumed, not one per message.
    if (!stream.half_closed && stream.consumed_ungranted >= stream.window / 2) {
      grant = stream.consumed_ungranted;
      stream.consumed_ungranted = 0;
      stream.receive_limit += grant;
    }
  }
  if (grant > 0) {
    std::string payload;
    internal::PutLe(&payload, static_cast<uint64_t>(grant), 8);
    stream.send(internal::FrameType::kWindow, payload);
  }
  return true;
}

bool GenericServerStream::Write(std::string_view message) {
  ServerStreamState& stream = *state_->stream;
  if (message.size() > stream.max_message_size) {
    Fail(absl::ResourceExhaustedError(absl::StrCat(
        state_->method, ": stream message of ", message.size(),
        " bytes exceeds the server's max_message_size ", stream.max_message_size)));
    return false;
  }
  internal::MutexLock send_lock(&stream.send_mu);
  {
    internal::MutexLock lock(&stream.mu);
    for (;;) {
      if (state_->IsCancelled()) return false;
      // Room while anything of the client's window is left (see
      // docs/PROTOCOL.md: a message may use more than what is left).
      if (stream.sent < stream.send_limit) break;
      WaitForProgress(*state_, stream);
    }
    stream.sent += internal::StreamCost(message.size());
    ++stream.messages_sent;
  }
  return stream.send(internal::FrameType::kMessage, message);
}

void GenericServerStream::Fail(absl::Status status) {
  ServerStreamState& stream = *state_->stream;
  {
    internal::MutexLock lock(&stream.mu);
    if (stream.failed) return;
    stream.failed = true;
    stream.failure = std::move(status);
  }
  state_->Cancel();  // wakes Read and Write (the stream's OnCancel callback)
}

}  // namespace ipcrpc
