#include "wire/status_details.h"

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/wire_format_lite.h"

namespace ipcrpc::internal {
namespace {

using google::protobuf::io::CodedInputStream;
using google::protobuf::io::CodedOutputStream;
using google::protobuf::io::StringOutputStream;
using google::protobuf::internal::WireFormatLite;

// Field tags: (number << 3) | wire type (0 varint, 2 length-delimited).
constexpr uint32_t kStatusCodeTag = (1 << 3) | 0;
constexpr uint32_t kStatusMessageTag = (2 << 3) | 2;
constexpr uint32_t kStatusDetailsTag = (3 << 3) | 2;
constexpr uint32_t kAnyTypeUrlTag = (1 << 3) | 2;
constexpr uint32_t kAnyValueTag = (2 << 3) | 2;

void PutBytes(CodedOutputStream& out, uint32_t tag, std::string_view bytes) {
  out.WriteTag(tag);
  out.WriteVarint32(static_cast<uint32_t>(bytes.size()));
  out.WriteRaw(bytes.data(), static_cast<int>(bytes.size()));
}

bool ReadBytes(CodedInputStream& in, std::string* out) {
  uint32_t size = 0;
  // ReadString reserves no more than what is left of the input.
  return in.ReadVarint32(&size) && size <= INT32_MAX &&
         in.ReadString(out, static_cast<int>(size));
}

}  // namespace

bool IsReservedResponseKey(std::string_view key) {
  return key.empty() || key.substr(0, 5) == "grpc-" || key[0] == ':';
}

std::string EncodeStatusDetails(const absl::Status& status) {
  std::vector<std::pair<std::string, std::string>> payloads;
  status.ForEachPayload([&](absl::string_view type_url, const absl::Cord& payload) {
    payloads.emplace_back(std::string(type_url.data(), type_url.size()), std::string(payload));
  });
  if (payloads.empty()) return "";
  std::string encoded;
  {
    StringOutputStream stream(&encoded);
    CodedOutputStream out(&stream);
    out.WriteTag(kStatusCodeTag);
    out.WriteVarint32(static_cast<uint32_t>(status.code()));
    const absl::string_view message = status.message();
    if (!message.empty()) PutBytes(out, kStatusMessageTag, {message.data(), message.size()});
    std::string any;
    for (const auto& [type_url, value] : payloads) {
      any.clear();
      {
        StringOutputStream any_stream(&any);
        CodedOutputStream any_out(&any_stream);
        PutBytes(any_out, kAnyTypeUrlTag, type_url);
        PutBytes(any_out, kAnyValueTag, value);
      }
      PutBytes(out, kStatusDetailsTag, any);
    }
  }
  return encoded;
}

bool ApplyStatusDetails(std::string_view details, absl::Status* status) {
  std::vector<std::pair<std::string, std::string>> payloads;
  CodedInputStream in(reinterpret_cast<const uint8_t*>(details.data()),
                      static_cast<int>(details.size()));
  while (uint32_t tag = in.ReadTag()) {
    if (tag != kStatusDetailsTag) {
      // code, message (the frame's header says those) and unknown fields.
      if (!WireFormatLite::SkipField(&in, tag)) return false;
      continue;
    }
    uint32_t size = 0;
    // Within what is left (running out inside a pushed limit looks like a
    // clean end to CodedInputStream).
    if (!in.ReadVarint32(&size) || size > details.size() - in.CurrentPosition()) return false;
    const CodedInputStream::Limit limit = in.PushLimit(static_cast<int>(size));
    std::string type_url, value;
    while (uint32_t any_tag = in.ReadTag()) {
      bool ok = true;
      if (any_tag == kAnyTypeUrlTag) {
        ok = ReadBytes(in, &type_url);
      } else if (any_tag == kAnyValueTag) {
        ok = ReadBytes(in, &value);
      } else {
        ok = WireFormatLite::SkipField(&in, any_tag);
      }
      if (!ok) return false;
    }
    if (!in.ConsumedEntireMessage()) return false;
    in.PopLimit(limit);
    payloads.emplace_back(std::move(type_url), std::move(value));
  }
  if (!in.ConsumedEntireMessage()) return false;
  for (auto& [type_url, value] : payloads) {
    status->SetPayload(type_url, absl::Cord(std::move(value)));
  }
  return true;
}

Metadata TakeResponseMetadata(std::string_view block, absl::Status* status) {
  Metadata metadata = DecodeMetadata(block);
  Metadata kept;
  kept.reserve(metadata.size());
  for (auto& entry : metadata) {
    if (entry.first == kStatusDetailsKey) {
      // Bytes that are not a google.rpc.Status lose their payloads only.
      if (!status->ok()) ApplyStatusDetails(entry.second, status);
      continue;
    }
    kept.push_back(std::move(entry));
  }
  return kept;
}

}  // namespace ipcrpc::internal
