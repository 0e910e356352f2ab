// The stream framing shared by unix: and pipe:.
#include "transports/stream_connection.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "asio/io_context.hpp"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/util/status_matchers.h"
#include "base/clock.h"
#include "base/mutex.h"

namespace ipcrpc::internal {
namespace {

using ::ipcrpc::testing::IsOk;
using ::ipcrpc::testing::StatusIs;
using ::testing::HasSubstr;

std::string Pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131 + i / 251) & 0xff);
  return s;
}

// Exactly `n` bytes read from `fd`, or fewer if it ends first.
std::string ReadExactly(int fd, size_t n) {
  std::string bytes(n, '\0');
  size_t got = 0;
  while (got < n) {
    const ssize_t r = read(fd, bytes.data() + got, n - got);
    if (r <= 0) break;
    got += static_cast<size_t>(r);
  }
  bytes.resize(got);
  return bytes;
}

// A message as the stream carries it: its length (u32 LE), then `head`
// and `body`.
std::string Framed(std::string_view head, std::string_view body) {
  const size_t size = head.size() + body.size();
  std::string bytes(4, '\0');
  for (int i = 0; i < 4; ++i) bytes[i] = static_cast<char>((size >> (8 * i)) & 0xff);
  bytes.append(head);
  bytes.append(body);
  return bytes;
}

// Two pipes, as a parent and child would hold them.
struct PipePair {
  UniqueFd a_read, a_write, b_read, b_write;
  PipePair() {
    int ab[2], ba[2];
    EXPECT_EQ(pipe2(ab, O_CLOEXEC), 0);
    EXPECT_EQ(pipe2(ba, O_CLOEXEC), 0);
    b_read.Reset(ab[0]);
    a_write.Reset(ab[1]);
    a_read.Reset(ba[0]);
    b_write.Reset(ba[1]);
  }
};

TEST(StreamConnectionTest, WritingToADeadReaderIsUnavailableNotSigpipe) {
  // SIGPIPE keeps its default disposition (which would kill this process).
  signal(SIGPIPE, SIG_DFL);
  PipePair pipes;
  pipes.b_read.Reset();  // the peer's reading end is gone
  auto connection = StreamConnection::Create(std::move(pipes.a_read), std::move(pipes.a_write),
                                             /*is_socket=*/false, {}, "test pipe", 1 << 20);
  ASSERT_THAT(connection, IsOk());
  std::string_view parts[] = {"hello"};
  EXPECT_THAT((*connection)->Send(parts, 0),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("peer closed")));
  // No SIGPIPE is left pending for the thread either.
  sigset_t pending;
  sigpending(&pending);
  EXPECT_EQ(sigismember(&pending, SIGPIPE), 0);
}

// Runs `body` in a forked child (a fresh SIGPIPE disposition to play with)
// and returns its wait status.
template <typename F>
int InChild(F&& body) {
  const pid_t pid = fork();
  if (pid == 0) _exit(body());
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

// In a child: a connection's send to a pipe whose reader is gone. 0 if it
// failed UNAVAILABLE (and, with `check_pending`, left no SIGPIPE pending),
// else an exit code that says which part did not.
int SendToADeadReader(bool check_pending = true) {
  PipePair pipes;
  pipes.b_read.Reset();
  auto connection = StreamConnection::Create(std::move(pipes.a_read), std::move(pipes.a_write),
                                             /*is_socket=*/false, {}, "test pipe", 1 << 20);
  if (!connection.ok()) return 10;
  std::string_view parts[] = {"hello"};
  if ((*connection)->Send(parts, 0).code() != absl::StatusCode::kUnavailable) return 11;
  if (!check_pending) return 0;
  sigset_t pending;
  sigpending(&pending);
  return sigismember(&pending, SIGPIPE) != 0 ? 12 : 0;
}

// With SIG_DFL, a connection's writes cost no system call for SIGPIPE (the
// disposition is decided once, at Create), and the process still dies of a
// SIGPIPE raised by a write that is not ipcrpc's, as SIG_DFL would have it.
TEST(StreamConnectionTest, WithTheDefaultDispositionAForeignSigpipeStillKills) {
  const int status = InChild([] {
    signal(SIGPIPE, SIG_DFL);
    if (const int failed = SendToADeadReader(); failed != 0) return failed;
    // The application's own write to a dead pipe: SIGPIPE kills, as before.
    int p[2];
    if (pipe(p) != 0) return 13;
    close(p[0]);
    ssize_t ignored = write(p[1], "x", 1);
    (void)ignored;
    return 14;  // not reached
  });
  ASSERT_TRUE(WIFSIGNALED(status)) << "exit status " << WEXITSTATUS(status);
  EXPECT_EQ(WTERMSIG(status), SIGPIPE);
}

// An application's own SIGPIPE handler never sees ipcrpc's SIGPIPE.
int handled_sigpipes = 0;
TEST(StreamConnectionTest, AnApplicationsSigpipeHandlerNeverSeesOurs) {
  const int status = InChild([] {
    signal(SIGPIPE, [](int) { ++handled_sigpipes; });
    if (const int failed = SendToADeadReader(/*check_pending=*/false); failed != 0) return failed;
    if (handled_sigpipes != 0) return 12;
    // Its own still reach it.
    raise(SIGPIPE);
    return handled_sigpipes == 1 ? 0 : 13;
  });
  ASSERT_TRUE(WIFEXITED(status)) << "killed by signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

// With SIGPIPE blocked by the application in the writing thread, no SIGPIPE
// is left pending by ipcrpc's write.
TEST(StreamConnectionTest, NoSigpipeLeftPendingWhereTheApplicationBlocksIt) {
  const int status = InChild([] {
    signal(SIGPIPE, SIG_DFL);
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &block, nullptr);
    if (const int failed = SendToADeadReader(); failed != 0) return failed;
    // Unblocked, nothing arrives that would kill us.
    pthread_sigmask(SIG_UNBLOCK, &block, nullptr);
    return 0;
  });
  ASSERT_TRUE(WIFEXITED(status)) << "killed by signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(StreamConnectionTest, MessagesArriveWholeAndInOrderAcrossPartialReads) {
  PipePair pipes;
  auto sender = StreamConnection::Create(std::move(pipes.a_read), std::move(pipes.a_write), false,
                                         {}, "sender", 1 << 20);
  auto receiver = StreamConnection::Create(std::move(pipes.b_read), std::move(pipes.b_write),
                                           false, {}, "receiver", 1 << 20);
  ASSERT_THAT(sender, IsOk());
  ASSERT_THAT(receiver, IsOk());
  asio::io_context io;
  std::vector<std::string> received;
  absl::Status closed;
  (*receiver)->Start(
      io, [&](std::string_view message) { received.emplace_back(message); },
      [&](absl::Status reason) { closed = reason; });
  // Bigger than the pipe buffer, so the receiver sees it in pieces; sent from
  // a thread because the pipe blocks until the loop reads.
  const std::string big(300 * 1024, 'z');
  std::thread writer([&] {
    for (std::string_view message : {std::string_view(""), std::string_view("one"),
                                     std::string_view(big), std::string_view("two")}) {
      std::string_view parts[] = {message.substr(0, message.size() / 2),
                                  message.substr(message.size() / 2)};
      EXPECT_THAT((*sender)->Send(parts, 0), IsOk());
    }
    // The sender was never started: destroying it closes its pipes, which
    // ends the receiver with EOF.
    sender->reset();
  });
  io.run();
  writer.join();
  ASSERT_EQ(received.size(), 4u);
  EXPECT_EQ(received[0], "");
  EXPECT_EQ(received[1], "one");
  EXPECT_EQ(received[2], big);
  EXPECT_EQ(received[3], "two");
  EXPECT_THAT(closed, StatusIs(absl::StatusCode::kUnavailable));
}

// The read buffer moves what it keeps by whole pages (so that a read
// continuing a message keeps its place relative to the kernel's pages):
// many messages that leave a partial one at the buffer's end, then one
// larger than the buffer, all arrive whole, byte for byte.
TEST(StreamConnectionTest, MessagesSurviveTheBuffersCompactionAndGrowth) {
  PipePair pipes;
  auto sender = StreamConnection::Create(std::move(pipes.a_read), std::move(pipes.a_write), false,
                                         {}, "sender", 1 << 20);
  auto receiver = StreamConnection::Create(std::move(pipes.b_read), std::move(pipes.b_write),
                                           false, {}, "receiver", 1 << 20);
  ASSERT_THAT(sender, IsOk());
  ASSERT_THAT(receiver, IsOk());
  std::vector<std::string> messages;
  for (int i = 0; i < 40; ++i) messages.push_back(Pattern(5000 + 37 * i) + std::to_string(i));
  messages.push_back(Pattern(300 * 1024) + "big");
  for (int i = 0; i < 5; ++i) messages.push_back(Pattern(3000 + i) + "tail");
  asio::io_context io;
  std::vector<std::string> received;
  (*receiver)->Start(
      io, [&](std::string_view message) { received.emplace_back(message); },
      [&](absl::Status) {});
  std::thread writer([&] {
    for (const std::string& message : messages) {
      std::string_view parts[] = {message};
      EXPECT_THAT((*sender)->Send(parts, 0), IsOk());
    }
    sender->reset();  // EOF ends the receiver's loop
  });
  io.run();
  writer.join();
  ASSERT_EQ(received.size(), messages.size());
  for (size_t i = 0; i < messages.size(); ++i) EXPECT_EQ(received[i], messages[i]) << i;
}

// KeepDeliveredMessage: a large message stays where it was read, intact
// while the connection reads on into its other buffer, and so do the
// messages read with it; one buffer is out at a time (a second large
// message is then copied by its handler) and comes back once its owner is
// done. All messages are in the pipe before the receiver reads, so that
// one read takes a large message and what follows it.
struct KeptMessage {
  std::string_view view;
  std::shared_ptr<const void> owner;  // (null once given back)
  bool kept = false;
};

// Delivers `messages` (all in the pipe first) and asks to keep every one of
// 64 KiB or more; `release_before_keeping`: the previous kept message's
// owner is checked and dropped before the next is asked for.
std::vector<KeptMessage> DeliverAndKeep(const std::vector<std::string>& messages,
                                        bool release_before_keeping,
                                        std::vector<std::string>* received) {
  PipePair pipes;
  EXPECT_GE(fcntl(pipes.a_write.get(), F_SETPIPE_SZ, 1 << 20), 1 << 20);
  auto sender = StreamConnection::Create(std::move(pipes.a_read), std::move(pipes.a_write), false,
                                         {}, "sender", 1 << 20);
  auto receiver = StreamConnection::Create(std::move(pipes.b_read), std::move(pipes.b_write),
                                           false, {}, "receiver", 1 << 20);
  EXPECT_THAT(sender, IsOk());
  EXPECT_THAT(receiver, IsOk());
  if (!sender.ok() || !receiver.ok()) return {};
  for (const std::string& message : messages) {
    std::string_view parts[] = {message};
    EXPECT_THAT((*sender)->Send(parts, 0), IsOk());
  }
  sender->reset();  // EOF after the messages
  std::vector<KeptMessage> kept;
  asio::io_context io;
  StreamConnection* connection = receiver->get();
  (*receiver)->Start(
      io,
      [&](std::string_view message) {
        received->emplace_back(message);
        if (message.size() < 64 * 1024) return;
        if (release_before_keeping && !kept.empty() && kept.back().owner != nullptr) {
          EXPECT_EQ(kept.back().view, messages[received->size() - 3]);
          kept.back().owner.reset();
        }
        std::shared_ptr<const void> owner = connection->KeepDeliveredMessage();
        const bool was_kept = owner != nullptr;
        kept.push_back({message, std::move(owner), was_kept});
      },
      [&](absl::Status) {});
  io.run();
  return kept;
}

TEST(StreamConnectionTest, AKeptMessageStaysIntactWhileTheConnectionReadsOn) {
  const std::vector<std::string> messages = {
      "a",         Pattern(200 * 1024) + "A", "b", Pattern(200 * 1024) + "B",
      "c",         Pattern(130 * 1024) + "C", "d", Pattern(1000) + "small",
      Pattern(140 * 1024) + "D", "e"};
  std::vector<std::string> received;
  std::vector<KeptMessage> kept = DeliverAndKeep(messages, false, &received);
  EXPECT_EQ(received, messages);
  ASSERT_EQ(kept.size(), 4u);
  ASSERT_NE(kept[0].owner, nullptr);
  // Read after it, into the other buffer; it is untouched.
  EXPECT_EQ(kept[0].view, messages[1]);
  // Not kept while the first is out (each was copied, above).
  EXPECT_EQ(kept[1].owner, nullptr);
  EXPECT_EQ(kept[2].owner, nullptr);
  EXPECT_EQ(kept[3].owner, nullptr);
}

TEST(StreamConnectionTest, AKeptBufferComesBackForTheNextLargeMessage) {
  const std::vector<std::string> messages = {
      "a", Pattern(200 * 1024) + "A", "b", Pattern(200 * 1024) + "B",
      "c", Pattern(130 * 1024) + "C", "d", Pattern(150 * 1024) + "D",
      "e", Pattern(70 * 1024) + "E"};
  std::vector<std::string> received;
  std::vector<KeptMessage> kept = DeliverAndKeep(messages, true, &received);
  EXPECT_EQ(received, messages);
  ASSERT_EQ(kept.size(), 5u);
  // Each kept, once the one before was given back (checked intact then,
  // in DeliverAndKeep: A when B came, ..., D when E came)...
  for (size_t i = 0; i < 4; ++i) EXPECT_TRUE(kept[i].kept) << i;
  // ...but one that fills less than half the buffer (256 KiB here): a kept
  // buffer holds at most twice its message.
  EXPECT_FALSE(kept[4].kept);
}

TEST(StreamConnectionTest, OversizedLengthClosesBeforeAllocating) {
  PipePair pipes;
  auto receiver = StreamConnection::Create(std::move(pipes.b_read), std::move(pipes.b_write),
                                           false, {}, "receiver", 1024);
  ASSERT_THAT(receiver, IsOk());
  asio::io_context io;
  absl::Status closed;
  int messages = 0;
  (*receiver)->Start(
      io, [&](std::string_view) { ++messages; }, [&](absl::Status reason) { closed = reason; });
  const char prefix[] = "\x01\x04\x00\x00";  // 1025 bytes announced
  ASSERT_EQ(write(pipes.a_write.get(), prefix, 4), 4);
  io.run();
  EXPECT_EQ(messages, 0);
  EXPECT_THAT(closed, StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("1025")));
}

TEST(StreamConnectionTest, SendOverTheLimitIsRefused) {
  PipePair pipes;
  auto connection = StreamConnection::Create(std::move(pipes.a_read), std::move(pipes.a_write),
                                             false, {}, "c", 16);
  ASSERT_THAT(connection, IsOk());
  std::string_view parts[] = {"0123456789", "0123456789"};
  EXPECT_THAT((*connection)->Send(parts, 0), StatusIs(absl::StatusCode::kResourceExhausted));
}

TEST(StreamConnectionTest, CloseWakesABlockedSender) {
  PipePair pipes;  // nobody reads b_read: the pipe fills up
  auto connection = StreamConnection::Create(std::move(pipes.a_read), std::move(pipes.a_write),
                                             false, {}, "c", 8 << 20);
  ASSERT_THAT(connection, IsOk());
  ipcrpc::internal::Notification returned;
  absl::Status status;
  std::thread sender([&] {
    const std::string big(4 << 20, 'x');
    std::string_view parts[] = {big};
    status = (*connection)->Send(parts, 0);
    returned.Notify();
  });
  EXPECT_FALSE(returned.WaitForNotificationWithTimeout(absl::Milliseconds(50)));
  (*connection)->Close();
  EXPECT_TRUE(returned.WaitForNotificationWithTimeout(absl::Seconds(10)));
  sender.join();
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kUnavailable));
}

// TrySend (a server loop's send, which must never wait for a peer) takes a
// message larger than PIPE_BUF only when nothing is queued, so that it goes
// whole in one non-blocking write; otherwise it declines with nothing
// written, and a thread that may wait sends it.
TEST(StreamConnectionTest, TrySendTakesALargeMessageOnlyIntoAnEmptyPipeOrSocket) {
  for (bool is_socket : {false, true}) {
    SCOPED_TRACE(is_socket ? "socket" : "pipe");
    UniqueFd ours_read, ours_write, peer;
    if (is_socket) {
      int pair[2];
      ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
      ours_read.Reset(pair[0]);
      peer.Reset(pair[1]);
    } else {
      int ours[2], theirs[2];
      ASSERT_EQ(pipe2(ours, O_CLOEXEC), 0);    // peer -> us (unused here)
      ASSERT_EQ(pipe2(theirs, O_CLOEXEC), 0);  // us -> peer
      ours_read.Reset(ours[0]);
      close(ours[1]);
      ours_write.Reset(theirs[1]);
      peer.Reset(theirs[0]);
    }
    auto connection = StreamConnection::Create(std::move(ours_read), std::move(ours_write),
                                               is_socket, {}, "c", 1 << 20);
    ASSERT_THAT(connection, IsOk());
    const std::string large(48 * 1024, 'L');
    std::string_view parts[] = {large};
    absl::Status error;
    // Empty: taken, whole.
    ASSERT_TRUE((*connection)->TrySend(parts, 0, &error));
    EXPECT_THAT(error, IsOk());
    // Not read yet: declined, nothing written.
    EXPECT_FALSE((*connection)->TrySend(parts, 0, &error));
    std::string received(4 + large.size(), '\0');
    size_t got = 0;
    while (got < received.size()) {
      const ssize_t n = read(peer.get(), received.data() + got, received.size() - got);
      ASSERT_GT(n, 0);
      got += static_cast<size_t>(n);
    }
    EXPECT_EQ(received.substr(4), large);
    // Nothing else came (the declined one wrote nothing).
    ASSERT_EQ(fcntl(peer.get(), F_SETFL, O_NONBLOCK), 0);
    char extra;
    EXPECT_EQ(read(peer.get(), &extra, 1), -1);
    // Read, the pipe or socket is empty again: taken.
    EXPECT_TRUE((*connection)->TrySend(parts, 0, &error));
    EXPECT_THAT(error, IsOk());
  }
}

// A send that gives up at its deadline after part of its message went out
// leaves the stream in the middle of that message: no later send may write
// after it (the connection is about to be closed by the caller).
TEST(StreamConnectionTest, NothingIsWrittenAfterHalfAMessage) {
  PipePair pipes;  // nobody reads b_read yet
  auto connection = StreamConnection::Create(std::move(pipes.a_read), std::move(pipes.a_write),
                                             false, {}, "c", 8 << 20);
  ASSERT_THAT(connection, IsOk());
  const std::string big(1 << 20, 'B');  // more than the pipe holds
  std::string_view parts[] = {big};
  const absl::Status half =
      (*connection)->SendWithin(parts, 0, MonotonicNowNs() + 50'000'000);
  EXPECT_EQ(half.code(), absl::StatusCode::kDeadlineExceeded) << half;
  EXPECT_FALSE(IsNotDelivered(half));
  // Room now: still refused, with nothing of it sent.
  std::string drained(256 * 1024, '\0');
  ASSERT_EQ(fcntl(pipes.b_read.get(), F_SETFL, O_NONBLOCK), 0);
  const ssize_t got = read(pipes.b_read.get(), drained.data(), drained.size());
  ASSERT_GT(got, 0);
  std::string_view small[] = {"next"};
  const absl::Status next = (*connection)->Send(small, 0);
  EXPECT_EQ(next.code(), absl::StatusCode::kUnavailable) << next;
  EXPECT_TRUE(IsNotDelivered(next));
  absl::Status error;
  EXPECT_TRUE((*connection)->TrySend(small, 0, &error));
  EXPECT_EQ(error.code(), absl::StatusCode::kUnavailable) << error;
  // Only the first message's bytes were ever written.
  drained.resize(static_cast<size_t>(got));
  char more[64];
  const ssize_t rest = read(pipes.b_read.get(), more, sizeof(more));
  EXPECT_EQ(rest, -1);
  EXPECT_EQ(drained.find("next"), std::string::npos);
}


// A message larger than the pipe grows it (F_SETPIPE_SZ) to hold the
// message whole, so the writer does not wait for the reader halfway (a
// wake-up across CPUs each way); up to 256 KiB. The first message that
// fits the first size gives a grown pipe back its first size, once the
// reader has taken what it held (until then the kernel refuses, and the
// message still goes). Every byte arrives in order throughout.
TEST(StreamConnectionTest, APipeGrowsForALargeMessageAndShrinksBackAfterwards) {
  PipePair pipes;
  const int first = fcntl(pipes.b_read.get(), F_GETPIPE_SZ);
  ASSERT_GT(first, 0);
  if (first != 64 * 1024) GTEST_SKIP() << "pipes here start at " << first << " bytes, not 64 KiB";
  {
    // Where this user may not grow a pipe to 256 KiB (pipe-max-size, its
    // pipe limits), there is nothing to see.
    PipePair probe;
    if (fcntl(probe.a_write.get(), F_SETPIPE_SZ, 256 * 1024) < 256 * 1024) {
      GTEST_SKIP() << "F_SETPIPE_SZ to 256 KiB refused here: " << std::strerror(errno);
    }
  }
  auto connection = StreamConnection::Create(std::move(pipes.a_read), std::move(pipes.a_write),
                                             false, {}, "c", 8 << 20);
  ASSERT_THAT(connection, IsOk());
  auto read_exactly = [&](size_t n) { return ReadExactly(pipes.b_read.get(), n); };
  auto framed = [](std::string_view message) { return Framed(message, ""); };
  auto size_now = [&] { return fcntl(pipes.b_read.get(), F_GETPIPE_SZ); };

  // 100 KiB: fits a 128 KiB pipe, so it goes in one write with nobody
  // reading (the default pipe would block this thread forever).
  const std::string large = Pattern(100 * 1024);
  std::string_view large_parts[] = {large};
  ASSERT_THAT((*connection)->SendWithin(large_parts, 0, MonotonicNowNs() + 10'000'000'000),
              IsOk());
  EXPECT_EQ(size_now(), 128 * 1024);
  // A small message while the large one is unread: the pipe stays as it is.
  std::string_view small_parts[] = {"small"};
  ASSERT_THAT((*connection)->Send(small_parts, 0), IsOk());
  EXPECT_EQ(size_now(), 128 * 1024);
  EXPECT_EQ(read_exactly(4 + large.size()), framed(large));
  EXPECT_EQ(read_exactly(4 + 5), framed("small"));
  // Read: the next small message gives the pipe back its first size.
  ASSERT_THAT((*connection)->Send(small_parts, 0), IsOk());
  EXPECT_EQ(size_now(), 64 * 1024);
  EXPECT_EQ(read_exactly(4 + 5), framed("small"));

  // 1 MiB: the pipe grows to 256 KiB, no more, and the message goes in
  // pieces to a reader that takes them.
  const std::string huge = Pattern(1 << 20);
  std::string received;
  std::thread reader([&] { received = read_exactly(4 + huge.size()); });
  std::string_view huge_parts[] = {huge};
  EXPECT_THAT((*connection)->Send(huge_parts, 0), IsOk());
  reader.join();
  EXPECT_EQ(received, framed(huge));
  EXPECT_EQ(size_now(), 256 * 1024);
}

// A body given as bytes (a generated stub's is a protobuf message).
class BytesBody final : public BodyWriter {
 public:
  explicit BytesBody(std::string bytes) : BodyWriter(bytes.size()), bytes_(std::move(bytes)) {}
  void WriteTo(OutputSpans& out) const override {
    size_t done = 0;
    while (done < bytes_.size()) {
      absl::Span<char> piece = out.Next();
      if (piece.empty()) return;
      const size_t n = std::min(piece.size(), bytes_.size() - done);
      std::memcpy(piece.data(), bytes_.data() + done, n);
      out.BackUp(piece.size() - n);
      done += n;
    }
  }
  void WriteFlat(char* data) const override { std::memcpy(data, bytes_.data(), bytes_.size()); }

 private:
  std::string bytes_;
};

// A large body goes to a pipe by lending the pages of the connection's
// buffer (vmsplice): the pipe then holds those pages, not a copy. So the
// next large body must not be serialized into that buffer while the pipe
// still holds it: it is copied instead, and the first message arrives as
// it was sent. Once the pipe has been read empty, the buffer is lent again.
TEST(StreamConnectionTest, ALentBodyIsNeverWrittenOverWhileThePipeHoldsIt) {
  PipePair pipes;
  // Room for two large messages with nobody reading, so that the second is
  // sent while the first is in the pipe, on this thread.
  if (fcntl(pipes.a_write.get(), F_SETPIPE_SZ, 1 << 20) < (1 << 20)) {
    GTEST_SKIP() << "F_SETPIPE_SZ to 1 MiB refused here: " << std::strerror(errno);
  }
  auto connection = StreamConnection::Create(std::move(pipes.a_read), std::move(pipes.a_write),
                                             false, {}, "c", 8 << 20);
  ASSERT_THAT(connection, IsOk());
  auto read_exactly = [&](size_t n) { return ReadExactly(pipes.b_read.get(), n); };
  const size_t size = StreamConnection::kLendMin + 1000;
  const std::string first = Pattern(size);
  std::string second(size, 'x');
  const std::string third(size, 'y');
  std::string_view first_head[] = {"first:"};
  std::string_view second_head[] = {"second:"};
  std::string_view third_head[] = {"third:"};
  const int64_t deadline = MonotonicNowNs() + 10'000'000'000;

  ASSERT_THAT((*connection)->SendBodyWithin(first_head, BytesBody(first), 0, deadline), IsOk());
  EXPECT_EQ((*connection)->lent_messages(), 1u);
  ASSERT_THAT((*connection)->SendBodyWithin(second_head, BytesBody(second), 0, deadline), IsOk());
  EXPECT_EQ((*connection)->lent_messages(), 1u);  // copied: the first is in the pipe
  EXPECT_EQ(read_exactly(4 + 6 + size), Framed("first:", first));
  EXPECT_EQ(read_exactly(4 + 7 + size), Framed("second:", second));

  // The pipe is empty: the buffer is lent again.
  ASSERT_THAT((*connection)->SendBodyWithin(third_head, BytesBody(third), 0, deadline), IsOk());
  EXPECT_EQ((*connection)->lent_messages(), 2u);
  EXPECT_EQ(read_exactly(4 + 6 + size), Framed("third:", third));

  // Below kLendMin, or over a socket: copied.
  std::string_view small_head[] = {"small:"};
  ASSERT_THAT((*connection)->SendBodyWithin(small_head, BytesBody(std::string(1000, 's')), 0,
                                            deadline),
              IsOk());
  EXPECT_EQ((*connection)->lent_messages(), 2u);
  EXPECT_EQ(read_exactly(4 + 6 + 1000), Framed("small:", std::string(1000, 's')));
}

// Likewise when the reader has taken part of the lent message: the next
// large body is copied, and both arrive as sent. Lending goes on across the
// pipe's growth and its return to its first size.
TEST(StreamConnectionTest, ALentBodyPartlyReadIsNotWrittenOverEither) {
  PipePair pipes;
  if (fcntl(pipes.b_read.get(), F_GETPIPE_SZ) != 64 * 1024) GTEST_SKIP() << "pipes here are not 64 KiB";
  {
    PipePair probe;
    if (fcntl(probe.a_write.get(), F_SETPIPE_SZ, 256 * 1024) < 256 * 1024) {
      GTEST_SKIP() << "F_SETPIPE_SZ to 256 KiB refused here: " << std::strerror(errno);
    }
  }
  auto connection = StreamConnection::Create(std::move(pipes.a_read), std::move(pipes.a_write),
                                             false, {}, "c", 8 << 20);
  ASSERT_THAT(connection, IsOk());
  auto read_exactly = [&](size_t n) { return ReadExactly(pipes.b_read.get(), n); };
  const size_t size = StreamConnection::kLendMin + 1000;
  const std::string first = Pattern(size);
  const std::string second(size, 'x');
  const std::string third(size, 'y');
  std::string_view head[] = {"h:"};
  const int64_t deadline = MonotonicNowNs() + 10'000'000'000;

  // Grows the pipe to 256 KiB and goes whole, lent.
  ASSERT_THAT((*connection)->SendBodyWithin(head, BytesBody(first), 0, deadline), IsOk());
  EXPECT_EQ((*connection)->lent_messages(), 1u);
  EXPECT_EQ(fcntl(pipes.b_read.get(), F_GETPIPE_SZ), 256 * 1024);
  const std::string expected_first = Framed("h:", first);
  std::string got_first = read_exactly(expected_first.size() / 2);
  // Half of it is still in the pipe: the second is copied (it fits beside).
  ASSERT_THAT((*connection)->SendBodyWithin(head, BytesBody(second), 0, deadline), IsOk());
  EXPECT_EQ((*connection)->lent_messages(), 1u);
  got_first += read_exactly(expected_first.size() - got_first.size());
  EXPECT_EQ(got_first, expected_first);
  EXPECT_EQ(read_exactly(4 + 2 + size), Framed("h:", second));

  // A small message gives the pipe back its first size; the next large
  // body grows it again, and is lent again.
  std::string_view small[] = {"small"};
  ASSERT_THAT((*connection)->Send(small, 0), IsOk());
  EXPECT_EQ(fcntl(pipes.b_read.get(), F_GETPIPE_SZ), 64 * 1024);
  EXPECT_EQ(read_exactly(4 + 5), Framed("small", ""));
  ASSERT_THAT((*connection)->SendBodyWithin(head, BytesBody(third), 0, deadline), IsOk());
  EXPECT_EQ((*connection)->lent_messages(), 2u);
  EXPECT_EQ(read_exactly(4 + 2 + size), Framed("h:", third));
}

}  // namespace
}  // namespace ipcrpc::internal
