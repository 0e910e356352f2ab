// A protobuf message as a BodyWriter (ipcrpc/body_writer.h): what a
// generated stub hands the channel, which serializes it where the
// transport says (into an shm: ring's free space for a large one).
#ifndef IPCRPC_MESSAGE_BODY_H_
#define IPCRPC_MESSAGE_BODY_H_

#include <google/protobuf/message_lite.h>

#include <climits>
#include <cstddef>
#include <cstdint>
#include <string>

#include "ipcrpc/body_writer.h"
#include "ipcrpc/scratch.h"

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

}  // namespace ipcrpc::internal

#endif  // IPCRPC_MESSAGE_BODY_H_
