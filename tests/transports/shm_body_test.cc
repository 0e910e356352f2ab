// A body that serializes itself straight into an shm: ring
// (Connection::SendBodyWithin): whole at every offset and through a ring
// smaller than itself, in whatever pieces the writer takes; a body that
// writes another size than it said breaks its connection and nothing
// else; a ring that stays full ends the send at its deadline.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <google/protobuf/struct.pb.h>

#include "absl/strings/str_cat.h"
#include "asio/executor_work_guard.hpp"
#include "asio/io_context.hpp"
#include "base/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ipcrpc/body_writer.h"
#include "ipcrpc/message_body.h"
#include "tests/util/process.h"
#include "tests/util/status_matchers.h"
#include "transports/transport.h"

namespace ipcrpc::internal {
namespace {

using ::ipcrpc::testing::IsOk;
using ::ipcrpc::testing::StatusIs;
using ::testing::HasSubstr;

// The byte at `i` of a body of `size` bytes.
char PatternAt(size_t i, size_t size) { return static_cast<char>('a' + (i * 31 + size) % 26); }

// Writes `written` pattern bytes of a body that says it has `size`, taking
// pieces of at most `step` bytes of what each Next gives and giving the
// rest back (a serializer that stops short of a piece's end).
class PatternBody final : public BodyWriter {
 public:
  PatternBody(size_t size, size_t written, size_t step)
      : BodyWriter(size), written_(written), step_(step) {}
  explicit PatternBody(size_t size) : PatternBody(size, size, size_t{1} << 30) {}

  void WriteTo(OutputSpans& out) const override {
    size_t at = 0;
    while (at < written_) {
      absl::Span<char> piece = out.Next();
      if (piece.empty()) return;  // the transport cannot go on
      const size_t n = std::min({piece.size(), step_, written_ - at});
      for (size_t i = 0; i < n; ++i) piece[i] = PatternAt(at + i, size());
      at += n;
      if (n < piece.size()) out.BackUp(piece.size() - n);
    }
  }
  void WriteFlat(char* data) const override {
    for (size_t i = 0; i < size(); ++i) data[i] = PatternAt(i, size());
  }

 private:
  const size_t written_;
  const size_t step_;
};

std::string Pattern(size_t size) {
  std::string bytes(size, '\0');
  for (size_t i = 0; i < size; ++i) bytes[i] = PatternAt(i, size);
  return bytes;
}

// A listener and a connected client with 4 KiB rings; the server side's
// messages are collected (once started).
class ShmBodyTest : public ::testing::Test {
 protected:
  static constexpr size_t kRing = 4096;

  void SetUp() override {
    endpoint_ = "shm:" + ::ipcrpc::testing::UniqueName("shm-body-test");
    TransportOptions options;
    options.shm_ring_size = kRing;
    auto listener = CreateListener(endpoint_, options);
    ASSERT_THAT(listener, IsOk());
    listener_ = *std::move(listener);
    ASSERT_THAT(listener_->Start(io_,
                                 [this](std::shared_ptr<Connection> connection) {
                                   std::lock_guard<std::mutex> lock(mu_);
                                   accepted_ = std::move(connection);
                                 }),
                IsOk());
    loop_ = std::thread([this] { io_.run(); });
    auto connector = CreateConnector(endpoint_, options);
    ASSERT_THAT(connector, IsOk());
    connector_ = *std::move(connector);
    auto client = connector_->Connect(io_, MonotonicNowNs() + 10'000'000'000);
    ASSERT_THAT(client, IsOk());
    client_ = *std::move(client);
    client_->Start(io_, [](std::string_view) {}, [](absl::Status) {});
    // The server side is accepted on the loop once the handshake is done.
    for (int i = 0; i < 10000 && server() == nullptr; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ASSERT_NE(server(), nullptr);
  }

  void TearDown() override {
    if (client_) client_->Close();
    if (auto accepted = server()) accepted->Close();
    if (connector_) connector_->Shutdown();
    if (listener_) listener_->Close();
    work_.reset();
    io_.stop();
    if (loop_.joinable()) loop_.join();
  }

  std::shared_ptr<Connection> server() {
    std::lock_guard<std::mutex> lock(mu_);
    return accepted_;
  }

  // Starts reading on the server side: every message is kept.
  void StartReading() {
    server()->Start(
        io_,
        [this](std::string_view message) {
          std::lock_guard<std::mutex> lock(mu_);
          received_.emplace_back(message);
        },
        [](absl::Status) {});
  }

  // The messages received, once `count` have come (within 10 s).
  std::vector<std::string> Received(size_t count) {
    for (int i = 0; i < 10000; ++i) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (received_.size() >= count) return received_;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    std::lock_guard<std::mutex> lock(mu_);
    return received_;
  }

  std::string endpoint_;
  asio::io_context io_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_{
      asio::make_work_guard(io_)};
  std::thread loop_;
  std::unique_ptr<Listener> listener_;
  std::unique_ptr<Connector> connector_;
  std::shared_ptr<Connection> client_;
  std::mutex mu_;
  std::shared_ptr<Connection> accepted_;
  std::vector<std::string> received_;
};

// Bodies from 1 byte to three rings, after a head of every length mod 8
// (so they start at every offset of the ring and wrap anywhere), written
// in pieces of 1, 7 and 4096 bytes: each arrives whole, head and body.
TEST_F(ShmBodyTest, ABodyArrivesWholeAtEveryOffsetAndThroughASmallerRing) {
  StartReading();
  std::vector<std::string> expected;
  const size_t sizes[] = {1, 15, 16, 17, 1000, kRing - 5, kRing, kRing + 1, 3 * kRing + 123};
  const size_t steps[] = {1, 7, 4096};
  int n = 0;
  for (size_t size : sizes) {
    for (size_t step : steps) {
      const std::string head(static_cast<size_t>(n++ % 8), 'h');
      const std::string_view parts[] = {head};
      ASSERT_THAT(client_->SendBodyWithin(parts, PatternBody(size, size, step), 0, kNoDeadline),
                  IsOk())
          << size << " bytes in pieces of " << step;
      expected.push_back(head + Pattern(size));
    }
  }
  EXPECT_EQ(Received(expected.size()), expected);
}

// A protobuf message of many small fields and some large ones (so that
// protobuf's own 16 spare bytes at a piece's end, pieces of 16 bytes or
// less at the wrap, and its hand-over of large fields all meet the 4 KiB
// ring's edges), serialized by the library's stream straight into the
// ring, at many offsets: the bytes are exactly SerializeAsString's.
TEST_F(ShmBodyTest, AProtobufMessageOfManyFieldsArrivesAsItSerializes) {
  StartReading();
  google::protobuf::ListValue list;
  for (int i = 0; i < 3000; ++i) {
    google::protobuf::Value* value = list.add_values();
    switch (i % 5) {
      case 0: value->set_number_value(i * 1.5); break;
      case 1: value->set_string_value(std::string(static_cast<size_t>(i % 40), 's')); break;
      case 2: value->set_bool_value(true); break;
      case 3: value->mutable_list_value()->add_values()->set_string_value("nested"); break;
      default: value->set_string_value(std::string(static_cast<size_t>(i % 7) * 1000, 'L'));
    }
  }
  const std::string expected = list.SerializeAsString();
  ASSERT_GT(expected.size(), 3 * kRing);
  std::vector<std::string> all;
  for (int n = 0; n < 12; ++n) {
    const std::string head(static_cast<size_t>(n * 5), 'h');
    const std::string_view parts[] = {head};
    ASSERT_THAT(client_->SendBodyWithin(parts, MessageBody<google::protobuf::ListValue>(list), 0,
                                        kNoDeadline),
                IsOk());
    all.push_back(head + expected);
  }
  EXPECT_EQ(Received(all.size()), all);
}

// A body that writes less than it said, or asks for more: INTERNAL naming
// the connection, which then carries nothing more (the message in the
// ring is not what its length says; the caller closes it, as after any
// failed send), and the reader never gets the message. A connection made
// afterwards sends as it should.
TEST_F(ShmBodyTest, ABodyOfAnotherSizeThanItSaidBreaksOnlyItsConnection) {
  StartReading();
  const std::string_view none[] = {std::string_view("x")};
  EXPECT_THAT(client_->SendBodyWithin(none, PatternBody(3000, 1000, 512), 0, kNoDeadline),
              StatusIs(absl::StatusCode::kInternal, HasSubstr("shorter")));
  EXPECT_THAT(client_->Send(none, 0), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(client_->SendBodyWithin(none, PatternBody(100), 0, kNoDeadline),
              StatusIs(absl::StatusCode::kUnavailable));
  client_->Close();

  const std::shared_ptr<Connection> first = server();
  auto longer = connector_->Connect(io_, MonotonicNowNs() + 10'000'000'000);
  ASSERT_THAT(longer, IsOk());
  (*longer)->Start(io_, [](std::string_view) {}, [](absl::Status) {});
  for (int i = 0; i < 10000 && server() == first; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_NE(server(), first);
  std::atomic<int> second_got{0};
  server()->Start(
      io_,
      [&second_got](std::string_view message) {
        if (message == "x" + Pattern(2 * kRing)) second_got++;
      },
      [](absl::Status) {});
  EXPECT_THAT((*longer)->SendBodyWithin(none, PatternBody(2 * kRing), 0,
                                        MonotonicNowNs() + 10'000'000'000),
              IsOk());
  for (int i = 0; i < 10000 && second_got == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(second_got.load(), 1);
  class Longer final : public BodyWriter {
   public:
    Longer() : BodyWriter(100) {}
    void WriteTo(OutputSpans& out) const override {
      for (;;) {
        absl::Span<char> piece = out.Next();
        if (piece.empty()) return;
        std::fill(piece.begin(), piece.end(), 'L');
      }
    }
    void WriteFlat(char* data) const override { std::fill(data, data + 100, 'L'); }
  };
  EXPECT_THAT((*longer)->SendBodyWithin(none, Longer(), 0, kNoDeadline),
              StatusIs(absl::StatusCode::kInternal, HasSubstr("longer")));
  EXPECT_THAT((*longer)->Send(none, 0), StatusIs(absl::StatusCode::kUnavailable));
  (*longer)->Close();
  EXPECT_TRUE(Received(0).empty()) << "the first connection's reader got a broken message";
}

// Nobody reads the server side: a body larger than the ring fills it and
// the send ends DEADLINE_EXCEEDED at its deadline, with part of the
// message in the ring (not marked undelivered: the connection must go).
// A send that finds the ring full from the start delivers nothing.
TEST_F(ShmBodyTest, ARingThatStaysFullEndsTheSendAtItsDeadline) {
  const std::string_view head[] = {std::string_view("h")};
  const int64_t start = MonotonicNowNs();
  const int64_t deadline = start + 100'000'000;
  absl::Status sent = client_->SendBodyWithin(head, PatternBody(3 * kRing), 0, deadline);
  const int64_t ended = MonotonicNowNs();
  EXPECT_THAT(sent, StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("stayed full")));
  EXPECT_FALSE(IsNotDelivered(sent));
  EXPECT_GE(ended, deadline);
  EXPECT_LT(ended - deadline, 5'000'000'000) << "generous: the machine may be busy";
}

// The ring has room for the length prefix and the head but not one byte
// of the body: at the deadline, DEADLINE_EXCEEDED with part of the message
// out (not marked undelivered), and the connection carries nothing more.
TEST_F(ShmBodyTest, AHeadThatFitsWithoutItsBodyBreaksTheConnectionAtTheDeadline) {
  // A message of 4 + filler bytes, leaving 4 + 1 free (nobody reads).
  const std::string filler(kRing - 4 - 5, 'f');
  const std::string_view parts[] = {filler};
  ASSERT_THAT(client_->Send(parts, 0), IsOk());
  const std::string_view head[] = {std::string_view("h")};
  absl::Status sent =
      client_->SendBodyWithin(head, PatternBody(100), 0, MonotonicNowNs() + 50'000'000);
  EXPECT_THAT(sent, StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("stayed full")));
  EXPECT_FALSE(IsNotDelivered(sent));
  EXPECT_THAT(client_->Send(head, 0), StatusIs(absl::StatusCode::kUnavailable));
}

}  // namespace
}  // namespace ipcrpc::internal
