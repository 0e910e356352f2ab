// libFuzzer: the mq: transport's fragment reassembly facing an arbitrary
// stream of queue messages. The input is cut into messages, each prefixed by
// a one-byte length; each is decoded (header) and fed to one reassembler with
// small limits. A message it completes must have the length its fragments
// announced and never exceed the limit; errors are fine (the connection
// would close), crashes and out-of-bounds reads are not.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "transports/mq/mq_wire.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ipcrpc::internal;
  constexpr size_t kMaxMessage = 4096;
  MqReassembler reassembler(kMaxMessage, /*max_partial=*/4);
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  size_t at = 0;
  while (at < input.size()) {
    const size_t length = static_cast<uint8_t>(input[at++]);
    const std::string_view message = input.substr(at, length);
    at += message.size();
    absl::StatusOr<MqHeader> header = DecodeMqHeader(message);
    if (!header.ok() || header->kind != MqKind::kData) continue;
    absl::StatusOr<std::optional<std::string_view>> whole =
        reassembler.Add(*header, message.substr(kMqHeaderSize));
    if (!whole.ok()) return 0;  // the connection would be closed here
    if (whole->has_value()) {
      if ((*whole)->size() != header->total_length || (*whole)->size() > kMaxMessage) std::abort();
      // Every byte must be readable (ASan checks the copy).
      if (std::string(**whole).size() != header->total_length) std::abort();
    }
  }
  return 0;
}
