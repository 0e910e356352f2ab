#include "transports/mq/mq_wire.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "base/copy.h"
#include "base/little_endian.h"

namespace ipcrpc::internal {

void EncodeMqHeader(const MqHeader& header, char* out) {
  out[0] = static_cast<char>(header.kind);
  out[1] = header.last ? 1 : 0;
  out[2] = out[3] = 0;
  PutLe(out + 4, header.sequence, 4);
  PutLe(out + 8, header.connection, 8);
  PutLe(out + 16, header.total_length, 4);
  PutLe(out + 20, header.offset, 4);
}

absl::StatusOr<MqHeader> DecodeMqHeader(std::string_view message) {
  if (message.size() < kMqHeaderSize) {
    return absl::DataLossError(absl::StrCat("queue message of ", message.size(),
                                            " bytes is shorter than its ", kMqHeaderSize,
                                            "-byte header"));
  }
  const uint8_t kind = static_cast<uint8_t>(message[0]);
  if (kind < 1 || kind > 5) return absl::DataLossError(absl::StrCat("unknown message kind ", kind));
  MqHeader header;
  header.kind = static_cast<MqKind>(kind);
  header.last = (message[1] & 1) != 0;
  header.sequence = static_cast<uint32_t>(GetLe(message.data() + 4, 4));
  header.connection = GetLe(message.data() + 8, 8);
  header.total_length = static_cast<uint32_t>(GetLe(message.data() + 16, 4));
  header.offset = static_cast<uint32_t>(GetLe(message.data() + 20, 4));
  return header;
}

absl::StatusOr<std::optional<std::string_view>> MqReassembler::Add(const MqHeader& header,
                                                                   std::string_view chunk) {
  const size_t total = header.total_length;
  if (total > max_message_size_) {
    return absl::ResourceExhaustedError(absl::StrCat("fragmented message of ", total,
                                                     " bytes exceeds max_message_size ",
                                                     max_message_size_));
  }
  if (static_cast<uint64_t>(header.offset) + chunk.size() > total) {
    return absl::DataLossError("fragment runs past its message's length");
  }
  const bool ends = header.offset + chunk.size() == total;
  if (ends != header.last) return absl::DataLossError("fragment's 'last' flag is wrong");
  auto it = partial_.find(header.sequence);
  if (header.offset == 0) {
    if (it != partial_.end()) {
      return absl::DataLossError(absl::StrCat("message ", header.sequence, " started twice"));
    }
    if (ends) return std::optional<std::string_view>(chunk);  // the common case: no copy
    if (partial_.size() >= max_partial_) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "more than ", max_partial_, " partially received messages on one connection"));
    }
    std::string& data = partial_[header.sequence];
    // Grows with the fragments that come, not to the length announced.
    data.reserve(std::min<size_t>(total, 64 * 1024));
    AppendBytes(&data, chunk);
    return std::optional<std::string_view>();
  }
  if (it == partial_.end() || it->second.size() != header.offset) {
    return absl::DataLossError(absl::StrCat("fragment of message ", header.sequence, " at offset ",
                                            header.offset, " is out of order"));
  }
  AppendBytes(&it->second, chunk);
  if (!ends) return std::optional<std::string_view>();
  complete_ = std::move(it->second);
  partial_.erase(it);
  return std::optional<std::string_view>(complete_);
}

}  // namespace ipcrpc::internal
