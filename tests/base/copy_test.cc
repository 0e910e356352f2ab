// The copies that avoid slow `rep movsb` distances (base/copy.h) and the
// stubs' serialization after a headroom (ipcrpc/scratch.h): every byte
// lands where memcpy would put it, at every distance and around the piece
// size, and nothing past the end is touched. (How fast they are is for
// bench/: ipcrpc_bench prints the memcpy figures it depends on.)
#include "base/copy.h"

#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/wrappers.pb.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "ipcrpc/scratch.h"

namespace ipcrpc::internal {
namespace {

std::string Pattern(size_t n, int seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131 + seed * 7 + i / 251) & 0xff);
  return s;
}

TEST(ShortCopyDistanceTest, OneToSixtyThreeBytesAheadModuloFourKiB) {
  alignas(4096) static char page[3 * 4096];
  const char* src = page + 100;
  EXPECT_FALSE(ShortCopyDistance(page + 100, src));
  EXPECT_TRUE(ShortCopyDistance(page + 101, src));
  EXPECT_TRUE(ShortCopyDistance(page + 116, src));
  EXPECT_TRUE(ShortCopyDistance(page + 163, src));
  EXPECT_FALSE(ShortCopyDistance(page + 164, src));
  EXPECT_TRUE(ShortCopyDistance(page + 4096 + 116, src));  // modulo 4 KiB
  EXPECT_FALSE(ShortCopyDistance(page + 84, src));         // behind it
  EXPECT_FALSE(ShortCopyDistance(page + 4096 + 100, src));
}

TEST(CopyBytesTest, SameBytesAsMemcpyAtEveryDistanceAndSize) {
  const std::vector<size_t> sizes = {0,    1,    kCopyPiece - 1, kCopyPiece, kCopyPiece + 1,
                                     4099, 8192, 65536 + 17};
  const std::string source = Pattern(70000, 1);
  std::vector<char> target(70000 + 3 * 4096);
  for (size_t n : sizes) {
    for (size_t distance : {0, 1, 15, 16, 31, 32, 63, 64, 65, 4095, 4096, 4112}) {
      // dst lies `distance` bytes past src modulo 4 KiB.
      const uintptr_t src_page_offset = reinterpret_cast<uintptr_t>(source.data()) & 4095;
      const uintptr_t target_page_offset = reinterpret_cast<uintptr_t>(target.data()) & 4095;
      const size_t at = (src_page_offset + distance - target_page_offset + 8192) & 4095;
      std::fill(target.begin(), target.end(), '\x5a');
      char* dst = target.data() + at;
      EXPECT_EQ(ShortCopyDistance(dst, source.data()), distance % 4096 != 0 && distance % 4096 < 64);
      CopyBytes(dst, source.data(), n);
      ASSERT_EQ(std::string(dst, n), source.substr(0, n)) << "n=" << n << " distance=" << distance;
      for (size_t i = 0; i < at; ++i) ASSERT_EQ(target[i], '\x5a');
      for (size_t i = at + n; i < target.size(); ++i) ASSERT_EQ(target[i], '\x5a') << i;
    }
  }
}

// A string whose end lies `distance` bytes past `bytes` modulo 4 KiB, by
// choosing where in `pool` the bytes to append start.
std::string_view BytesAtDistance(const std::string& out, const std::string& pool, size_t n,
                                 size_t distance) {
  const uintptr_t end = reinterpret_cast<uintptr_t>(out.data() + out.size());
  const uintptr_t base = reinterpret_cast<uintptr_t>(pool.data());
  const size_t at = (end - distance - base) & 4095;
  return std::string_view(pool).substr(at, n);
}

TEST(AppendBytesTest, AppendsWholeAtAShortDistanceAndKeepsWhatWasThere) {
  const std::string pool = Pattern(80000, 2);
  for (size_t n : {kCopyPiece + 1, size_t{65536}, size_t{65536 + 5}}) {
    for (size_t distance : {size_t{0}, size_t{16}, size_t{40}, size_t{64}, size_t{2000}}) {
      std::string out = "head";
      out.reserve(n + 4);  // the end stays where it is
      std::string_view bytes = BytesAtDistance(out, pool, n, distance);
      ASSERT_EQ(ShortCopyDistance(out.data() + out.size(), bytes.data()),
                distance != 0 && distance < 64);
      AppendBytes(&out, bytes);
      EXPECT_EQ(out, "head" + std::string(bytes)) << "n=" << n << " distance=" << distance;
    }
  }
}

TEST(AppendBytesTest, GrowsAStringWithoutRoom) {
  const std::string bytes = Pattern(100000, 3);
  std::string out = "x";
  AppendBytes(&out, bytes);
  AppendBytes(&out, std::string_view(bytes).substr(0, 5000));
  EXPECT_EQ(out, "x" + bytes + bytes.substr(0, 5000));
}

TEST(StaggeredCapacityTest, ItsHeapBlockSpansWholePagesAndTwoKiB) {
  EXPECT_EQ(StaggeredCapacity(100), 100u);
  EXPECT_EQ(StaggeredCapacity(SIZE_MAX), SIZE_MAX);  // no wrap-around
  for (size_t n : {size_t{4096}, size_t{65536}, size_t{65536 + 40}, size_t{100000}}) {
    const size_t capacity = StaggeredCapacity(n);
    EXPECT_GE(capacity, n);
    EXPECT_LT(capacity, n + 4096 + 16);
    // glibc's chunk for malloc(capacity + 1): 8 bytes of size, rounded to 16.
    EXPECT_EQ((capacity + 1 + 8) % 4096, 2048u) << n;
  }
}

TEST(StaggeredCapacityTest, TheNextHeapBlockLiesTwoKiBOnInItsPage) {
  // glibc's malloc carves a block right after one just made when the heap's
  // top is free; under other allocators (the sanitizers') it may not.
  std::string first;
  first.reserve(StaggeredCapacity(20000));
  std::string second(20000, 'x');
  const uintptr_t a = reinterpret_cast<uintptr_t>(first.data());
  const uintptr_t b = reinterpret_cast<uintptr_t>(second.data());
  if (b < a || b - a > first.capacity() + 64) {
    GTEST_SKIP() << "the allocator did not place the blocks next to each other";
  }
  EXPECT_EQ((b - a) % 4096, 2048u);  // not 16: clear of the short distance
}

TEST(AppendBytesTest, GrowsToAStaggeredCapacity) {
  const std::string bytes = Pattern(70000, 7);
  std::string out;
  AppendBytes(&out, bytes);
  EXPECT_EQ((out.capacity() + 1 + 8) % 4096, 2048u);
}

TEST(AssignBytesTest, ReplacesTheContentsAndKeepsTheBuffer) {
  const std::string pool = Pattern(80000, 4);
  std::string out = Pattern(70000, 5);
  const char* buffer = out.data();
  std::string_view bytes = std::string_view(pool).substr(16, 65536);
  AssignBytes(&out, bytes);
  EXPECT_EQ(out, bytes);
  EXPECT_EQ(out.data(), buffer);  // a warm call allocates nothing
  AssignBytes(&out, "short");
  EXPECT_EQ(out, "short");
  AssignBytes(&out, "");
  EXPECT_EQ(out, "");
  EXPECT_EQ(StringOf(bytes), bytes);
  EXPECT_EQ(StringOf(""), "");
}

// KernelBuffer: its bytes start kPageOffset bytes into a page, whatever its
// size and however often it is resized; a resize keeps what it was told to
// keep; a moved-from buffer is empty.
TEST(KernelBufferTest, BytesStartAtThePageOffsetAndResizeKeepsWhatItIsTold) {
  KernelBuffer buffer;
  EXPECT_TRUE(buffer.empty());
  EXPECT_EQ(buffer.data(), nullptr);
  for (size_t size : {size_t{1}, size_t{100}, size_t{4096 - 128}, size_t{4096},
                      size_t{64 * 1024}, size_t{200 * 1024}, size_t{3 << 20}}) {
    SCOPED_TRACE(size);
    buffer.Resize(size, 0);
    ASSERT_EQ(buffer.size(), size);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(buffer.data()) % 4096, KernelBuffer::kPageOffset);
    // Every byte is writable (ASan would see an overrun).
    std::memset(buffer.data(), 0x5a, size);
  }
  const std::string pattern = Pattern(10000, 3);
  buffer.Resize(pattern.size(), 0);
  std::memcpy(buffer.data(), pattern.data(), pattern.size());
  buffer.Resize(2 * pattern.size(), 7000);  // grow, keeping 7000
  EXPECT_EQ(std::string(buffer.data(), 7000), pattern.substr(0, 7000));
  buffer.Resize(5000, 99999);  // shrink: keeps at most the new size
  ASSERT_EQ(buffer.size(), 5000u);
  EXPECT_EQ(std::string(buffer.data(), 5000), pattern.substr(0, 5000));

  KernelBuffer moved(std::move(buffer));
  EXPECT_TRUE(buffer.empty());  // NOLINT(bugprone-use-after-move): checked on purpose
  EXPECT_EQ(buffer.data(), nullptr);
  ASSERT_EQ(moved.size(), 5000u);
  EXPECT_EQ(std::string(moved.data(), 5000), pattern.substr(0, 5000));
  KernelBuffer assigned(16);
  assigned = std::move(moved);
  ASSERT_EQ(assigned.size(), 5000u);
  EXPECT_EQ(std::string(assigned.data(), 5000), pattern.substr(0, 5000));
  assigned.Resize(0, 0);
  EXPECT_TRUE(assigned.empty());
  EXPECT_EQ(assigned.data(), nullptr);
}

TEST(SerializeAfterHeadroomTest, TheBytesAreTheMessagesAfterTheHeadroom) {
  google::protobuf::BytesValue message;
  message.set_value(Pattern(65536, 6));
  std::string buffer = "stale contents from the call before";
  std::string_view bytes = SerializeAfterHeadroom(message, &buffer);
  EXPECT_EQ(bytes.data(), buffer.data() + kSerializeHeadroom);
  EXPECT_EQ(bytes, message.SerializePartialAsString());
  google::protobuf::BytesValue parsed;
  ASSERT_TRUE(parsed.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())));
  EXPECT_EQ(parsed.value(), message.value());

  google::protobuf::BytesValue empty;
  EXPECT_EQ(SerializeAfterHeadroom(empty, &buffer), "");
}

// Into a thread's kept buffer (ScratchString::GetSized, which leaves the
// last call's bytes in place rather than zeroing them): the bytes are the
// message's whatever the buffer held before, larger or smaller; get()
// still starts empty; ParseFromBytes reads them back.
TEST(SerializeAfterHeadroomTest, IntoAKeptBufferWhateverItHeldBefore) {
  for (size_t size : {size_t{65536}, size_t{100}, size_t{300 * 1024}, size_t{5000}, size_t{0}}) {
    SCOPED_TRACE(size);
    google::protobuf::BytesValue message;
    message.set_value(Pattern(size, static_cast<int>(size % 251)));
    ScratchString scratch;
    std::string_view bytes = SerializeAfterHeadroom(message, &scratch);
    EXPECT_EQ(bytes, message.SerializePartialAsString());
    google::protobuf::BytesValue parsed;
    ASSERT_TRUE(ParseFromBytes(bytes, &parsed));
    EXPECT_EQ(parsed.value(), message.value());
  }
  {
    ScratchString scratch;
    EXPECT_TRUE(scratch.get()->empty());  // after a 300 KiB message in it
    scratch.get()->append("kept");
    EXPECT_EQ(*scratch.get(), "kept");  // emptied only the first time
  }
  google::protobuf::BytesValue parsed;
  EXPECT_FALSE(ParseFromBytes("\xff\xff\xff", &parsed));
}

// The server's part around a handler, for SerializeReply: this thread's
// slot for `response`, with `kept` as its buffer, until the end of scope.
class ScopedReplySlot {
 public:
  ScopedReplySlot(std::string* response, std::string* kept) {
    slot.response = response;
    slot.buffer = kept;
    CurrentReplySlot() = &slot;
  }
  ~ScopedReplySlot() { CurrentReplySlot() = nullptr; }
  ScopedReplySlot(const ScopedReplySlot&) = delete;
  ScopedReplySlot& operator=(const ScopedReplySlot&) = delete;

  ReplySlot slot;
};

// A generated handler's reply (ipcrpc::SerializeReply): into the server's
// slot, after the headroom, only for the response string the slot was set
// for while that string is empty (a later reply replaces an earlier one);
// anywhere else into the string itself, as SerializeToString.
TEST(SerializeReplyTest, IntoTheServersSlotOnlyForItsOwnResponseString) {
  google::protobuf::BytesValue message;
  message.set_value(Pattern(65536, 9));
  const std::string serialized = message.SerializeAsString();

  std::string response;
  ASSERT_TRUE(SerializeReply(message, &response));  // no slot on this thread
  EXPECT_EQ(response, serialized);

  // A kept buffer holding a longer reply of the call before.
  std::string kept = Pattern(kSerializeHeadroom + 100000, 4);
  std::string server_response;
  ScopedReplySlot scoped(&server_response, &kept);
  const ReplySlot& slot = scoped.slot;

  std::string other;  // a handler calling another handler with its own string
  ASSERT_TRUE(SerializeReply(message, &other));
  EXPECT_EQ(other, serialized);
  EXPECT_FALSE(slot.used);

  ASSERT_TRUE(SerializeReply(message, &server_response));
  EXPECT_TRUE(server_response.empty());
  ASSERT_TRUE(slot.used);
  EXPECT_EQ(slot.bytes.data(), kept.data() + kSerializeHeadroom);
  EXPECT_EQ(slot.bytes, serialized);

  // A second reply replaces the first, in the slot...
  message.set_value("second");
  ASSERT_TRUE(SerializeReply(message, &server_response));
  EXPECT_TRUE(server_response.empty());
  EXPECT_EQ(slot.bytes, message.SerializeAsString());
  // ...and into a response the handler wrote into itself, there.
  server_response = "written by the handler";
  message.set_value("third");
  ASSERT_TRUE(SerializeReply(message, &server_response));
  EXPECT_EQ(server_response, message.SerializeAsString());
}

TEST(SerializeReplyTest, AReplyMissingARequiredFieldIsRefusedWithOrWithoutASlot) {
  google::protobuf::UninterpretedOption::NamePart part;  // proto2: two required fields
  part.set_name_part("x");
  std::string response;
  EXPECT_FALSE(SerializeReply(part, &response));  // no slot: in a release build too
  std::string kept;
  std::string server_response;
  ScopedReplySlot scoped(&server_response, &kept);
  const ReplySlot& slot = scoped.slot;
  EXPECT_FALSE(SerializeReply(part, &server_response));
  EXPECT_FALSE(slot.used);
  part.set_is_extension(true);
  ASSERT_TRUE(SerializeReply(part, &server_response));
  ASSERT_TRUE(slot.used);
  EXPECT_EQ(slot.bytes, part.SerializeAsString());
}

}  // namespace
}  // namespace ipcrpc::internal

