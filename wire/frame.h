// Wire protocol v1: the frame codec. docs/PROTOCOL.md is the normative text;
// this file implements it.
//
// A frame is one transport message: a fixed 40-byte little-endian header,
// then `name` (the method of a REQUEST, the status message of a RESPONSE, the
// reason of a GOAWAY), then the metadata block, then the payload. Decoding
// checks every length against the bytes received and the limits before
// anything is allocated or copied; a frame that fails is reported as
// DATA_LOSS (corrupt), RESOURCE_EXHAUSTED (over a limit) or
// FAILED_PRECONDITION (a protocol version we do not speak).
#ifndef IPCRPC_WIRE_FRAME_H_
#define IPCRPC_WIRE_FRAME_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/little_endian.h"  // PutLe, GetLe: every wire field

namespace ipcrpc::internal {

inline constexpr uint8_t kMagic[4] = {'I', 'P', 'R', 'C'};
inline constexpr uint8_t kProtocolVersion = 1;
inline constexpr size_t kHeaderSize = 40;
inline constexpr size_t kMaxNameSize = 64 * 1024;
inline constexpr size_t kMaxMetadataSize = 64 * 1024;
// Entries in one frame's metadata: decoded, an empty entry costs far more
// than its 8 wire bytes, so their number is bounded too.
inline constexpr size_t kMaxMetadataEntries = 256;
inline constexpr int kMaxPriority = 31;
// Bytes a frame may add around its payload: header, name, metadata (and a
// stream REQUEST's 4-byte head, kStreamHeadSize below).
inline constexpr size_t kMaxFrameOverhead = kHeaderSize + kMaxNameSize + kMaxMetadataSize + 4;
// The wire value for "no deadline".
inline constexpr int64_t kWireNoDeadline = INT64_MAX;

// RESPONSE flag: the server refused the call without starting it (it is
// shutting down), so the client may send it again on a new connection.
inline constexpr uint16_t kFlagRefused = 1;

// REQUEST flags of a stream (docs/PROTOCOL.md, "Streams"). kFlagStream: the
// call is a stream; its payload starts with the client's receive window
// (u32 LE). kFlagWithMessage: the stream's first message follows that.
// kFlagHalfClose: the client sends nothing more on this stream (a
// server-streaming call is one REQUEST with all three).
inline constexpr uint16_t kFlagStream = 2;
inline constexpr uint16_t kFlagWithMessage = 4;
inline constexpr uint16_t kFlagHalfClose = 8;

// What one stream message counts against a window: its payload, plus this
// (so that empty messages are not free).
inline constexpr int64_t kStreamMessageCost = 64;
// The window a client may use on a new stream before the server grants
// more: a server whose ServerOptions::stream_window is larger grants the
// rest when the stream starts.
inline constexpr int64_t kInitialStreamWindow = 64 * 1024;
// The smallest window a side may announce (a smaller stream_window is
// raised to it).
inline constexpr int64_t kMinStreamWindow = 64 * 1024;
inline constexpr int64_t kMaxStreamWindow = 1LL << 30;
inline constexpr size_t kStreamHeadSize = 4;  // the window in a stream REQUEST
static_assert(kMaxFrameOverhead == kHeaderSize + kMaxNameSize + kMaxMetadataSize + kStreamHeadSize);
inline constexpr size_t kWindowPayloadSize = 8;  // the u64 grant of a WINDOW

enum class FrameType : uint8_t {
  kHello = 1,
  kRequest = 2,
  kResponse = 3,
  kCancel = 4,
  kGoAway = 5,
  kPing = 6,
  kPong = 7,
  kMessage = 8,    // a stream message, either way
  kHalfClose = 9,  // client: no more messages on this stream
  kWindow = 10,    // either way: the sender may send this many more bytes
};

using Metadata = std::vector<std::pair<std::string, std::string>>;

struct FrameHeader {
  FrameType type = FrameType::kRequest;
  uint16_t flags = 0;
  uint64_t request_id = 0;
  int64_t deadline_ns = kWireNoDeadline;  // absolute CLOCK_MONOTONIC
  uint8_t priority = 0;
  uint16_t status_code = 0;  // absl::StatusCode of a RESPONSE
};

// A decoded frame; the views point into the bytes given to DecodeFrame.
struct FrameView {
  FrameHeader header;
  std::string_view name;
  std::string_view metadata;  // the raw block, already checked well formed
  std::string_view payload;
};

// Writes header, name and metadata of a frame whose payload has
// `payload_size` bytes into `out` (replacing its contents). The payload is
// sent after it as a separate part, so it is never copied.
// INVALID_ARGUMENT/RESOURCE_EXHAUSTED if a field is out of range.
absl::Status EncodeFramePrefix(const FrameHeader& header, std::string_view name,
                               const Metadata& metadata, size_t payload_size,
                               size_t max_payload_size, std::string* out);

// Rewrites the request id in a prefix EncodeFramePrefix wrote, leaving the
// rest as it is: a call's frame is encoded before the call has a connection,
// which numbers it.
void SetFrameRequestId(uint64_t request_id, std::string* prefix);

// Decodes one whole frame; see the file comment for the errors.
absl::StatusOr<FrameView> DecodeFrame(std::string_view bytes, size_t max_payload_size);

// Decodes a metadata block returned by DecodeFrame.
Metadata DecodeMetadata(std::string_view block);

const char* FrameTypeName(FrameType type);

// A configured stream_window as used: within [kMinStreamWindow, kMaxStreamWindow].
inline int64_t ClampStreamWindow(size_t window) {
  if (window < static_cast<size_t>(kMinStreamWindow)) return kMinStreamWindow;
  if (window > static_cast<size_t>(kMaxStreamWindow)) return kMaxStreamWindow;
  return static_cast<int64_t>(window);
}

// What a stream message of `payload_size` bytes counts against a window.
inline int64_t StreamCost(size_t payload_size) {
  return static_cast<int64_t>(payload_size) + kStreamMessageCost;
}

}  // namespace ipcrpc::internal

#endif  // IPCRPC_WIRE_FRAME_H_
