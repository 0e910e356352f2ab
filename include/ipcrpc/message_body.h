// A protobuf message as a BodyWriter (ipcrpc/body_writer.h): what a
// generated stub hands the channel, which serializes it where the
// transport says (into an shm: ring's free space for a large one).
#ifndef IPCRPC_MESSAGE_BODY_H_
#define IPCRPC_MESSAGE_BODY_H_

#include <google/protobuf/message_lite.h>

#include <climits>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>

#include "ipcrpc/body_writer.h"
#include "ipcrpc/scratch.h"
#include "ipcrpc/thread_spare.h"

namespace ipcrpc::internal {

// Serializes `message` (its sizes cached by ByteSizeLong) into `out`. A
// bytes or string field larger than the piece at hand is copied by the
// library itself (protobuf's aliasing hook), clear of glibc's slow copy
// distance (docs/PERFORMANCE.md).
void SerializeMessageTo(const google::protobuf::MessageLite& message, OutputSpans& out);

// `message` serialized as it is now (its sizes cached by ByteSizeLong,
// which the constructor calls); the message must outlive this and not
// change meanwhile. Over 2 GiB, which protobuf does not serialize:
// too_large(), and nothing may be written.
template <typename Message>
class MessageBody final : public BodyWriter {
 public:
  explicit MessageBody(const Message& message)
      : BodyWriter(message.ByteSizeLong()), message_(message) {}

  bool too_large() const { return size() > static_cast<size_t>(INT_MAX); }

  void WriteTo(OutputSpans& out) const override {
    SerializeMessageTo(message_, out);
  }
  void WriteFlat(char* data) const override {
    message_.SerializeWithCachedSizesToArray(reinterpret_cast<uint8_t*>(data));
  }

 private:
  const Message& message_;
};

// A generated unary handler's reply, once its handler returned OK: as
// SerializeReply (ipcrpc/scratch.h), but a reply of kBodyInPlaceMin bytes
// or more, on a server's handler thread, is sent from here, serialized by
// the transport (straight into an shm: ring), and the call ends here. The
// handler must return at once, with OK; nothing it writes into `response`
// after this is sent. False as SerializeReply (required fields missing,
// over 2 GiB): nothing was sent.
template <typename Message>
bool SendReply(const Message& reply, std::string* response) {
  ReplySlot* slot = CurrentReplySlot();
  if (slot == nullptr || slot->send_body == nullptr || slot->response != response ||
      !response->empty()) {
    return SerializeReply(reply, response);
  }
  if (!reply.IsInitialized()) return false;
  const MessageBody<Message> body(reply);
  if (body.size() < kBodyInPlaceMin) return SerializeIntoSlot(reply, body.size(), slot);
  if (body.too_large()) return false;
  slot->send_body(slot, body);
  return true;
}

// A generated unary handler's request or reply: the message its thread
// kept from the last call of that type, cleared, instead of a new one each
// call. A new message and its string fields cost an allocation and a free
// each (a 64-byte echo's server made 5.7 a call, ~700 of its ~5,700
// instructions); a cleared message keeps its strings' capacity. `Role`
// keeps a request and a reply of the same type apart. The thread's spare is
// out while a call uses it, so a handler that runs another handler of the
// same type on its thread gets a new message, as before.
//
// What a thread keeps is bounded: the generator uses this only for types
// without repeated, map, message or extension fields (whose elements
// Clear() would keep, as many as a client's small request can make), and
// keeps a message only after a call whose message was at most
// kReuseMaxBytes on the wire, with no string grown past that by the handler
// (KeepIf; SmallEnoughToKeep): otherwise it is freed at the end of the
// call, as before. Under AddressSanitizer every call gets new messages, so
// that a handler that keeps a reference past its return reads freed memory
// there, as it would without this, instead of the next call's.
inline constexpr size_t kReuseMaxBytes = 1024;

#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kReuseMessages = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool kReuseMessages = false;
#else
inline constexpr bool kReuseMessages = true;
#endif
#else
inline constexpr bool kReuseMessages = true;
#endif

// A reply of `wire_bytes` whose string fields have these capacities.
inline bool SmallEnoughToKeep(int wire_bytes, std::initializer_list<size_t> capacities) {
  if (wire_bytes < 0 || static_cast<size_t>(wire_bytes) > kReuseMaxBytes) return false;
  for (size_t capacity : capacities) {
    if (capacity > kReuseMaxBytes) return false;
  }
  return true;
}

template <typename Message, int Role>
class ReusedMessage {
 public:
  ReusedMessage() {
    if (kReuseMessages) message_ = Spare::Take();
    if (message_ == nullptr) message_ = std::make_unique<Message>();
  }
  ReusedMessage(const ReusedMessage&) = delete;
  ReusedMessage& operator=(const ReusedMessage&) = delete;
  ~ReusedMessage() {
    if (!kReuseMessages || !keep_) return;
    // Null when a nested call's gave the thread one back first, or
    // during the thread's exit: freed.
    std::unique_ptr<Message>* room = Spare::Room();
    if (room == nullptr) return;
    message_->Clear();
    *room = std::move(message_);
  }

  Message& operator*() { return *message_; }
  // Whether the thread keeps the message after this call (false unless
  // said).
  void KeepIf(bool keep) { keep_ = keep; }

 private:
  using Spare = ThreadSpare<std::unique_ptr<Message>, ReusedMessage>;

  std::unique_ptr<Message> message_;
  bool keep_ = false;
};

}  // namespace ipcrpc::internal

#endif  // IPCRPC_MESSAGE_BODY_H_
