// libFuzzer: the frame decoder and the status details reader facing
// arbitrary bytes. A frame the decoder accepts must re-encode to exactly the
// bytes it came from (nothing is accepted that the encoder would not
// produce), and nothing else may happen: no crash, no read out of bounds
// (ASan), no undefined behaviour (UBSan).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "wire/frame.h"
#include "wire/status_details.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ipcrpc::internal;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  constexpr size_t kMaxPayload = 1 << 16;
  // The same bytes as a RESPONSE's status details (a google.rpc.Status).
  absl::Status status = absl::InternalError("fuzz");
  ApplyStatusDetails(bytes, &status);
  absl::StatusOr<FrameView> frame = DecodeFrame(bytes, kMaxPayload);
  if (!frame.ok()) return 0;
  if (frame->payload.size() > kMaxPayload) std::abort();
  const Metadata metadata = DecodeMetadata(frame->metadata);
  TakeResponseMetadata(frame->metadata, &status);
  std::string prefix;
  if (!EncodeFramePrefix(frame->header, frame->name, metadata, frame->payload.size(), kMaxPayload,
                         &prefix)
           .ok()) {
    std::abort();  // decoded, so it must encode
  }
  if (prefix + std::string(frame->payload) != bytes) std::abort();
  return 0;
}
