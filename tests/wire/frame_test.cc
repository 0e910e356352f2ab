#include "wire/frame.h"
#include "wire/status_details.h"

#include <cstring>

#include <random>
#include <string>

#include "absl/strings/cord.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/util/status_matchers.h"

namespace ipcrpc::internal {
namespace {

using ::ipcrpc::testing::IsOk;
using ::ipcrpc::testing::StatusIs;
using ::testing::HasSubstr;

constexpr size_t kMax = 1 << 20;

std::string Encode(const FrameHeader& header, std::string_view name, const Metadata& metadata,
                   std::string_view payload) {
  std::string frame;
  EXPECT_THAT(EncodeFramePrefix(header, name, metadata, payload.size(), kMax, &frame), IsOk());
  frame.append(payload);
  return frame;
}

std::string ValidRequest() {
  FrameHeader header;
  header.type = FrameType::kRequest;
  header.request_id = 0x0102030405060708;
  header.deadline_ns = 123456789;
  header.priority = 7;
  return Encode(header, "pkg.Service/Method", {{"k", "v"}, {"trace", "abc"}}, "payload bytes");
}

TEST(FrameTest, RoundTripsEveryField) {
  const std::string bytes = ValidRequest();
  auto frame = DecodeFrame(bytes, kMax);
  ASSERT_THAT(frame, IsOk());
  EXPECT_EQ(frame->header.type, FrameType::kRequest);
  EXPECT_EQ(frame->header.request_id, 0x0102030405060708u);
  EXPECT_EQ(frame->header.deadline_ns, 123456789);
  EXPECT_EQ(frame->header.priority, 7);
  EXPECT_EQ(frame->name, "pkg.Service/Method");
  EXPECT_EQ(frame->payload, "payload bytes");
  EXPECT_THAT(DecodeMetadata(frame->metadata),
              ::testing::ElementsAre(::testing::Pair("k", "v"), ::testing::Pair("trace", "abc")));
}

TEST(FrameTest, HeaderLayoutIsTheDocumentedOne) {
  FrameHeader header;
  header.type = FrameType::kResponse;
  header.request_id = 1;
  header.deadline_ns = kWireNoDeadline;
  header.status_code = 4;
  const std::string bytes = Encode(header, "late", {}, "xy");
  ASSERT_EQ(bytes.size(), kHeaderSize + 4 + 2);
  EXPECT_EQ(bytes.substr(0, 4), "IPRC");
  EXPECT_EQ(bytes[4], 1);                       // version
  EXPECT_EQ(bytes[5], 3);                       // RESPONSE
  EXPECT_EQ(bytes[8], 1);                       // request_id, little-endian
  EXPECT_EQ(static_cast<unsigned char>(bytes[23]), 0x7f);  // INT64_MAX, top byte
  EXPECT_EQ(bytes[26], 4);                      // status code
  EXPECT_EQ(bytes[28], 4);                      // name length
  EXPECT_EQ(bytes[36], 2);                      // payload length
}

TEST(FrameTest, SetFrameRequestIdChangesOnlyTheId) {
  const std::string original = ValidRequest();
  std::string bytes = original;
  SetFrameRequestId(0xfedcba9876543210, &bytes);
  auto frame = DecodeFrame(bytes, kMax);
  ASSERT_THAT(frame, IsOk());
  EXPECT_EQ(frame->header.request_id, 0xfedcba9876543210u);
  // Every other byte is as encoded.
  ASSERT_EQ(bytes.size(), original.size());
  for (size_t i = 0; i < bytes.size(); ++i) {
    if (i < 8 || i >= 16) {
      EXPECT_EQ(bytes[i], original[i]) << "byte " << i;
    }
  }
}

TEST(FrameTest, EmptyPayloadAndNoMetadata) {
  FrameHeader header;
  header.type = FrameType::kCancel;
  header.request_id = 9;
  auto frame = DecodeFrame(Encode(header, "", {}, ""), kMax);
  ASSERT_THAT(frame, IsOk());
  EXPECT_EQ(frame->header.type, FrameType::kCancel);
  EXPECT_TRUE(frame->payload.empty());
}

TEST(FrameTest, EveryTruncationIsDataLoss) {
  const std::string bytes = ValidRequest();
  for (size_t length = 0; length < bytes.size(); ++length) {
    EXPECT_THAT(DecodeFrame(std::string_view(bytes).substr(0, length), kMax),
                StatusIs(absl::StatusCode::kDataLoss))
        << "length " << length;
  }
}

TEST(FrameTest, TrailingBytesAreDataLoss) {
  EXPECT_THAT(DecodeFrame(ValidRequest() + "x", kMax),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("add up")));
}

TEST(FrameTest, OversizedPayloadIsRefusedBeforeAnythingElse) {
  std::string bytes = ValidRequest();
  // Claim a 4 GiB - 1 payload in a short message.
  bytes[36] = bytes[37] = bytes[38] = bytes[39] = static_cast<char>(0xff);
  EXPECT_THAT(DecodeFrame(bytes, kMax),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("max_message_size")));
}

TEST(FrameTest, OversizedNameAndMetadataAreRefused) {
  std::string bytes = ValidRequest();
  bytes[28] = bytes[29] = bytes[30] = static_cast<char>(0xff);
  EXPECT_THAT(DecodeFrame(bytes, kMax), StatusIs(absl::StatusCode::kResourceExhausted));
  bytes = ValidRequest();
  bytes[32] = bytes[33] = bytes[34] = static_cast<char>(0xff);
  EXPECT_THAT(DecodeFrame(bytes, kMax), StatusIs(absl::StatusCode::kResourceExhausted));
}

TEST(FrameTest, EncoderRefusesOversizedPayloadAndBadPriority) {
  std::string out;
  FrameHeader header;
  EXPECT_THAT(EncodeFramePrefix(header, "m", {}, kMax + 1, kMax, &out),
              StatusIs(absl::StatusCode::kResourceExhausted));
  header.priority = 32;
  EXPECT_THAT(EncodeFramePrefix(header, "m", {}, 0, kMax, &out),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("priority")));
}

TEST(FrameTest, NonZeroReservedByteIsDataLoss) {
  std::string frame;
  ASSERT_THAT(EncodeFramePrefix(FrameHeader{}, "a.B/C", {}, 0, 100, &frame), IsOk());
  frame[25] = '0';  // the input fuzz/frame_fuzzer found
  EXPECT_EQ(DecodeFrame(frame, 100).status().code(), absl::StatusCode::kDataLoss);
}

TEST(FrameTest, WrongMagicIsDataLoss) {
  std::string bytes = ValidRequest();
  bytes[0] = 'X';
  EXPECT_THAT(DecodeFrame(bytes, kMax), StatusIs(absl::StatusCode::kDataLoss, HasSubstr("magic")));
}

TEST(FrameTest, WrongVersionIsNamed) {
  std::string bytes = ValidRequest();
  bytes[4] = 2;
  EXPECT_THAT(DecodeFrame(bytes, kMax),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("version 2")));
}

TEST(FrameTest, UnknownTypeBadPriorityBadStatusAreDataLoss) {
  std::string bytes = ValidRequest();
  bytes[5] = 99;
  EXPECT_THAT(DecodeFrame(bytes, kMax), StatusIs(absl::StatusCode::kDataLoss, HasSubstr("type")));
  bytes = ValidRequest();
  bytes[24] = 40;
  EXPECT_THAT(DecodeFrame(bytes, kMax),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("priority")));
  bytes = ValidRequest();
  bytes[26] = 17;
  EXPECT_THAT(DecodeFrame(bytes, kMax),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("status code")));
}

TEST(FrameTest, MetadataLengthsThatLieAreDataLoss) {
  FrameHeader header;
  header.type = FrameType::kRequest;
  std::string bytes = Encode(header, "m", {{"key", "value"}}, "");
  // The key's length (first 4 bytes of the block, after the 1-byte name)
  // now points past the block.
  bytes[kHeaderSize + 1] = 100;
  EXPECT_THAT(DecodeFrame(bytes, kMax),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("metadata")));
}

// Decoded, an empty entry costs far more than its 8 wire bytes: their
// number is bounded on both sides.
TEST(FrameTest, MetadataEntriesAreBounded) {
  FrameHeader header;
  header.type = FrameType::kRequest;
  Metadata most(kMaxMetadataEntries, {"", ""});
  EXPECT_THAT(DecodeFrame(Encode(header, "m", most, ""), kMax), IsOk());
  Metadata too_many(kMaxMetadataEntries + 1, {"", ""});
  std::string frame;
  EXPECT_THAT(EncodeFramePrefix(header, "m", too_many, 0, kMax, &frame),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("entries")));
  // One more empty entry by hand: the block grows by 8 zero bytes.
  std::string bytes = Encode(header, "m", most, "");
  bytes.append(8, '\0');
  const uint32_t block = static_cast<uint32_t>((kMaxMetadataEntries + 1) * 8);
  std::memcpy(bytes.data() + 32, &block, 4);
  EXPECT_THAT(DecodeFrame(bytes, kMax),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("entries")));
}

// DecodeMetadata never trusts DecodeFrame's check: a block that changed
// since (it lay in memory a peer can write) yields what parses, never a read
// past the block.
TEST(FrameTest, DecodeMetadataOfABlockThatLiesStaysInside) {
  // "key" (3) then "value" (5): 16 bytes; the key's length made 10 puts the
  // value's length 2 bytes before the end.
  std::string block("\x03\0\0\0key\x05\0\0\0value", 16);
  ASSERT_EQ(DecodeMetadata(block).size(), 1u);
  for (int length : {9, 10, 11, 12, 13, 255}) {
    block[0] = static_cast<char>(length);
    EXPECT_TRUE(DecodeMetadata(block).empty()) << "key length " << length;
  }
}

TEST(FrameTest, RequestWithoutMethodIsDataLoss) {
  FrameHeader header;
  header.type = FrameType::kRequest;
  EXPECT_THAT(DecodeFrame(Encode(header, "", {}, "x"), kMax),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("method")));
}

TEST(FrameTest, RandomGarbageNeverDecodesWrongly) {
  std::mt19937 rng(12345);
  for (int i = 0; i < 20000; ++i) {
    std::string bytes(rng() % 200, '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    if (i % 2 == 0 && bytes.size() >= 5) std::memcpy(bytes.data(), "IPRC\x01", 5);
    auto frame = DecodeFrame(bytes, kMax);
    if (frame.ok()) {
      // Anything accepted must be self-consistent.
      EXPECT_EQ(kHeaderSize + frame->name.size() + frame->metadata.size() + frame->payload.size(),
                bytes.size());
      DecodeMetadata(frame->metadata);
    }
  }
}

TEST(FrameTest, RandomMutationsOfAValidFrame) {
  std::mt19937 rng(777);
  const std::string valid = ValidRequest();
  for (int i = 0; i < 20000; ++i) {
    std::string bytes = valid;
    const int flips = 1 + rng() % 4;
    for (int f = 0; f < flips; ++f) bytes[rng() % bytes.size()] = static_cast<char>(rng());
    auto frame = DecodeFrame(bytes, kMax);
    if (frame.ok()) {
      EXPECT_LE(frame->payload.size(), kMax);
      DecodeMetadata(frame->metadata);
    }
  }
}


TEST(StatusDetailsTest, PayloadsRoundTripAsAGoogleRpcStatus) {
  absl::Status sent = absl::FailedPreconditionError("no");
  sent.SetPayload("type.googleapis.com/google.rpc.ErrorInfo", absl::Cord(std::string("\0\x01x", 3)));
  sent.SetPayload("type.example/b", absl::Cord(""));
  const std::string details = EncodeStatusDetails(sent);
  // google.rpc.Status: code 9 (field 1), message "no" (field 2), then the Anys.
  EXPECT_EQ(details.substr(0, 6), std::string("\x08\x09\x12\x02no", 6));
  absl::Status received = absl::FailedPreconditionError("no");
  ASSERT_TRUE(ApplyStatusDetails(details, &received));
  EXPECT_EQ(received, sent);
  EXPECT_EQ(EncodeStatusDetails(absl::InternalError("no payload")), "");
}

TEST(StatusDetailsTest, BytesThatAreNotAStatusChangeNothing) {
  absl::Status sent = absl::InternalError("x");
  sent.SetPayload("t", absl::Cord("value"));
  const std::string details = EncodeStatusDetails(sent);
  // Cut anywhere in the payload's Any (a cut before it leaves a valid,
  // shorter google.rpc.Status).
  for (size_t cut = details.find('\x1a') + 1; cut < details.size(); ++cut) {
    absl::Status status = absl::InternalError("x");
    EXPECT_FALSE(ApplyStatusDetails(details.substr(0, cut), &status)) << "cut at " << cut;
    EXPECT_FALSE(status.GetPayload("t").has_value());
  }
  // An Any that claims more bytes than there are, and one whose string does.
  for (const std::string& lie : {std::string("\x1a\xff\xff\xff\x07", 5),
                                 std::string("\x1a\x06\x0a\x7f", 4) + "abcd",
                                 std::string("\x00", 1)}) {
    absl::Status status = absl::InternalError("x");
    EXPECT_FALSE(ApplyStatusDetails(lie, &status));
    EXPECT_EQ(status, absl::InternalError("x"));
  }
}

TEST(StatusDetailsTest, TheDetailsEntryIsTakenOutOfTheResponseMetadata) {
  absl::Status sent = absl::NotFoundError("gone");
  sent.SetPayload("t", absl::Cord("v"));
  std::string prefix;
  const Metadata metadata = {{"a", "1"}, {std::string(kStatusDetailsKey), EncodeStatusDetails(sent)},
                             {"b", "2"}};
  FrameHeader header;
  header.type = FrameType::kResponse;
  ASSERT_TRUE(EncodeFramePrefix(header, "", metadata, 0, 0, &prefix).ok());
  auto frame = DecodeFrame(prefix, 0);
  ASSERT_TRUE(frame.ok());
  absl::Status status = absl::NotFoundError("gone");
  EXPECT_EQ(TakeResponseMetadata(frame->metadata, &status), (Metadata{{"a", "1"}, {"b", "2"}}));
  EXPECT_EQ(status, sent);
  absl::Status ok;
  EXPECT_EQ(TakeResponseMetadata(frame->metadata, &ok).size(), 2u);
  EXPECT_TRUE(ok.ok());
}

}  // namespace
}  // namespace ipcrpc::internal
