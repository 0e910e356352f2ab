// A per-thread byte buffer that keeps its memory between calls, for the
// serialized request and response of a sync call (generated stubs use it).
//
// Why: a buffer allocated and freed on every call of a large message is,
// with glibc's malloc, mapped and unmapped (or its heap grown and trimmed)
// on every call, and every page of it faulted in afresh: measured, most of
// a 1 MiB call over shm: went to those page faults. A buffer kept by the
// thread faults its pages in once.
#ifndef IPCRPC_SCRATCH_H_
#define IPCRPC_SCRATCH_H_

#include <climits>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "ipcrpc/thread_spare.h"

namespace ipcrpc {

// One of this thread's kept buffers, for the life of this object (get():
// empty at first; GetSized: of a given length); a fresh one of its own if
// the thread's are all in use (a nested call from a callback inside
// another). Not for sharing across threads. A buffer grown past kKeptBytes
// gives its memory back when released; up to that, it is the thread's
// until it exits (a thread keeps at most kSlots * kKeptBytes; a generated
// sync stub uses one, for its request).
class ScratchString {
 public:
  static constexpr size_t kSlots = 4;
  static constexpr size_t kKeptBytes = (2u << 20) + (64u << 10);

  ScratchString() {
    // During this thread's exit, once its buffers are gone (a call from a
    // destructor of a thread_local or, on the main thread, a static):
    // a buffer of its own.
    Slots* pool = internal::ThreadLocalUntilExit<Slots, ScratchString>::Get();
    if (pool == nullptr) return;
    for (Slot& slot : pool->slots) {
      if (!slot.in_use) {
        slot.in_use = true;
        slot_ = &slot;
        // Emptied by get(), not here: GetSized keeps the bytes the buffer
        // had, so that growing it to a size it had before writes nothing.
        return;
      }
    }
  }
  ~ScratchString() {
    if (slot_ == nullptr) return;
    if (slot_->buffer.capacity() > kKeptBytes) std::string().swap(slot_->buffer);
    slot_->in_use = false;
  }
  ScratchString(const ScratchString&) = delete;
  ScratchString& operator=(const ScratchString&) = delete;

  // The buffer, empty the first time.
  std::string* get() {
    std::string* buffer = slot_ != nullptr ? &slot_->buffer : &own_;
    if (!handed_out_) buffer->clear();
    handed_out_ = true;
    return buffer;
  }
  std::string& operator*() { return *get(); }

  // The buffer, `size` bytes long, with unspecified bytes (what this
  // thread's last use of it left there): it is not emptied first, so only
  // bytes beyond the length its last user left are zeroed, and a warm 1 MiB
  // buffer is not written over once before it is filled
  // (SerializeAfterHeadroom).
  std::string* GetSized(size_t size) {
    std::string* buffer = slot_ != nullptr ? &slot_->buffer : &own_;
    handed_out_ = true;
    buffer->resize(size);
    return buffer;
  }

 private:
  struct Slot {
    std::string buffer;
    bool in_use = false;
  };
  struct Slots {
    Slot slots[kSlots];
  };

  Slot* slot_ = nullptr;
  bool handed_out_ = false;
  std::string own_;
};

// Bytes a stub leaves free at the front of the buffer it serializes a
// request into (SerializeAfterHeadroom).
//
// Why: glibc 2.36 copies 2-512 KiB with `rep movsb` on CPUs that report
// "fast short rep mov", and on AMD Zen that runs about 20 times slower when
// the destination lies 1-31 bytes past the source modulo 4 KiB. Two large
// heap blocks allocated one after the other lie 16 bytes apart modulo 4 KiB,
// and a bytes field is serialized a few bytes into the output: serialized
// from the start of a buffer, a large field copied at such a distance on
// every call (measured: 27 us instead of 2 for 64 KiB). 128 bytes in front
// put the usual layouts (either block first, or both at the same offset in
// their pages) 112 or more bytes clear of it. docs/PERFORMANCE.md.
inline constexpr size_t kSerializeHeadroom = 128;

// Serializes `message` (a protobuf message; proto2 required fields are not
// checked, as SerializePartialToString) into *buffer after
// kSerializeHeadroom bytes, and returns the serialized bytes (inside
// *buffer). A message over 2 GiB (INT_MAX bytes), which protobuf does not
// serialize: an empty view whose data() is null, *buffer empty.
template <typename Message>
std::string_view SerializeAfterHeadroom(const Message& message, std::string* buffer) {
  const size_t size = message.ByteSizeLong();
  if (size > static_cast<size_t>(INT_MAX)) {
    buffer->clear();
    return std::string_view();
  }
  buffer->resize(kSerializeHeadroom + size);
  message.SerializeWithCachedSizesToArray(
      reinterpret_cast<uint8_t*>(buffer->data() + kSerializeHeadroom));
  return std::string_view(*buffer).substr(kSerializeHeadroom);
}

// The same into a thread's kept buffer (ScratchString::GetSized: a warm
// buffer is not zeroed first); over 2 GiB, the same null view.
template <typename Message>
std::string_view SerializeAfterHeadroom(const Message& message, ScratchString* scratch) {
  const size_t size = message.ByteSizeLong();
  if (size > static_cast<size_t>(INT_MAX)) return SerializeAfterHeadroom(message, scratch->get());
  std::string* buffer = scratch->GetSized(kSerializeHeadroom + size);
  message.SerializeWithCachedSizesToArray(
      reinterpret_cast<uint8_t*>(buffer->data() + kSerializeHeadroom));
  return std::string_view(*buffer).substr(kSerializeHeadroom);
}

namespace internal {

class BodyWriter;

// Where a unary handler's reply may be serialized (SerializeReply): set by
// the server on the handler's thread for as long as the handler runs.
struct ReplySlot {
  // The handler's `response` argument: SerializeReply uses the slot only
  // for that string (a handler that calls another method's handler
  // directly, with a string of its own, gets its bytes there).
  const std::string* response = nullptr;
  // Kept by the thread, with the length its last use left it (so a warm
  // buffer is not zeroed before it is written over).
  std::string* buffer = nullptr;
  // Once used: the reply's bytes, inside *buffer (*response stays empty;
  // the server sends these unless the handler then wrote into it).
  std::string_view bytes;
  bool used = false;
  // Where the server runs a handler on a thread that may wait for the
  // client (its handler threads, grpc:'s own): sends a generated handler's
  // large reply now, serialized by the transport (internal::SendReply,
  // ipcrpc/message_body.h), and ends the call; once. Null on a server's
  // loop (inline handlers), and once used.
  void (*send_body)(ReplySlot* slot, const BodyWriter& body) = nullptr;
  void* send_context = nullptr;  // the server's, for send_body
};

// This thread's slot, or null outside a server's unary handler.
ReplySlot*& CurrentReplySlot();

}  // namespace internal

// Serializes a unary handler's reply for the server (generated services
// call it): into *response, replacing what it held, as SerializeToString;
// false if proto2 required fields are missing (checked in every build:
// protobuf's SerializeToString checks them only in debug builds) or the
// message is over 2 GiB. When the server has a slot for `response`, and it
// is empty, the bytes go instead into a buffer the server's thread keeps,
// after kSerializeHeadroom bytes, without zeroing the buffer first; the
// server sends them from there unless the handler then writes into
// `response` itself (whatever is written last is sent). Why: std::string's
// resize zeroes what it adds, and SerializeToString resizes from empty: 70
// us of a 1 MiB echo over `unix:` went to zeroing a response that was then
// written over.
namespace internal {

// SerializeReply's work with the slot: `reply`, whose ByteSizeLong was
// `size`, into the slot's buffer.
template <typename Message>
bool SerializeIntoSlot(const Message& reply, size_t size, ReplySlot* slot) {
  if (size > static_cast<size_t>(INT_MAX)) return false;
  slot->buffer->resize(kSerializeHeadroom + size);
  reply.SerializeWithCachedSizesToArray(
      reinterpret_cast<uint8_t*>(slot->buffer->data() + kSerializeHeadroom));
  slot->bytes = std::string_view(*slot->buffer).substr(kSerializeHeadroom);
  slot->used = true;
  return true;
}

}  // namespace internal

template <typename Message>
bool SerializeReply(const Message& reply, std::string* response) {
  if (!reply.IsInitialized()) return false;
  internal::ReplySlot* slot = internal::CurrentReplySlot();
  if (slot == nullptr || slot->response != response || !response->empty()) {
    return reply.SerializePartialToString(response);
  }
  return internal::SerializeIntoSlot(reply, reply.ByteSizeLong(), slot);
}

// Parses `bytes` into *message (as ParseFromArray: false if they do not
// parse, or are beyond what protobuf parses).
template <typename Message>
bool ParseFromBytes(std::string_view bytes, Message* message) {
  return bytes.size() <= static_cast<size_t>(INT_MAX) &&
         message->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()));
}

}  // namespace ipcrpc

#endif  // IPCRPC_SCRATCH_H_
