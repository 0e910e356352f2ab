// The generated code of a deliberately awkward .proto compiles with
// -Wall -Wextra -Wshadow -Werror and works over real transports.
#include <pthread.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ipcrpc/message_body.h"
#include "tests/codegen/awkward_services.h"
#include "tests/util/process.h"
#include "tests/util/status_matchers.h"
#include "base/little_endian.h"
#include "base/mutex.h"
#include "base/syscall.h"
#include "wire/frame.h"

namespace awk_test {
namespace {

using ::ipcrpc::testing::IsOk;
using ::ipcrpc::testing::StatusIs;
using ::testing::HasSubstr;
using Clashes = ::awk::ward::v1::Clashes;

static_assert(std::string_view(Clashes::kServiceName) == "awk.ward.v1.Clashes");
static_assert(std::string_view(::awk::ward::v1::union_::kServiceName) == "awk.ward.v1.union");
static_assert(std::string_view(::First::kServiceName) == "First");

// Every generated method of every service, against a server on `channel`.
void ExerciseAll(const std::shared_ptr<ipcrpc::Channel>& channel) {
  Clashes::Stub clashes(channel);
  Request in;
  in.set_text("x");
  auto expect = [&](absl::StatusOr<Reply> reply, const std::string& label) {
    ASSERT_THAT(reply, IsOk()) << label;
    EXPECT_EQ(reply->text(), label + ":x");
  };
  expect(clashes.Stub_(in), "Stub");
  expect(clashes.Service_(in), "Service");
  expect(clashes.Call(in), "Call");
  expect(clashes.channel(in), "channel");
  expect(clashes.New(in), "New");
  expect(clashes.Delete(in), "Delete");
  expect(clashes.delete_(in), "delete");
  expect(clashes.class_(in), "class");
  expect(clashes.AddMethod(in), "AddMethod");
  expect(clashes.kServiceName_(in), "kServiceName");
  expect(clashes.context(in), "context");
  expect(clashes.request(in), "request");
  expect(clashes.reply(in), "reply");
  expect(clashes.done(in), "done");
  expect(clashes.options(in), "options");

  ipcrpc::internal::Notification async_done;
  absl::StatusOr<Reply> async_reply;
  clashes.CallAsync(in, {}, [&](absl::StatusOr<Reply> reply) {
    async_reply = std::move(reply);
    async_done.Notify();
  });
  ASSERT_TRUE(async_done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  expect(async_reply, "Call");

  ::awk::ward::v1::Types::Stub types(channel);
  auto now = types.Now(::google::protobuf::Empty());
  ASSERT_THAT(now, IsOk());
  EXPECT_EQ(now->seconds(), 1234);
  ::other::types::Thing thing;
  thing.set_name("apples");
  thing.set_count(3);
  auto counted = types.Count(thing);
  ASSERT_THAT(counted, IsOk());
  EXPECT_EQ(counted->value(), "apples=3");
  // proto2: a request missing a required field does not parse on the server.
  EXPECT_THAT(types.Count(::other::types::Thing()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("other.types.Thing")));
  // proto2 replies: one whole, one the handler left without its required
  // name, which the server does not send (the generated handler's
  // ipcrpc::SerializeReply checks it in every build; protobuf's
  // SerializeToString checks it only in a debug build).
  thing.set_name(std::string(300 * 1024, 'a'));
  auto copied = types.Copy(thing);
  ASSERT_THAT(copied, IsOk());
  EXPECT_EQ(copied->name(), thing.name());
  EXPECT_EQ(copied->count(), 3);
  thing.set_count(-1);
  EXPECT_THAT(types.Copy(thing), StatusIs(absl::StatusCode::kInternal,
                                          HasSubstr("reply cannot be serialized")));
  // A method the implementation did not override.
  EXPECT_THAT(types.Wait(::google::protobuf::Duration()),
              StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("awk.ward.v1.Types/Wait")));

  ::awk::ward::v1::union_::Stub union_stub(channel);
  EXPECT_THAT(union_stub.Ping(::google::protobuf::Empty()), IsOk());

  ::First::Stub first(channel);
  ::Ping ping;
  ping.set_n(41);
  auto pong = first.Go(ping);
  ASSERT_THAT(pong, IsOk());
  EXPECT_EQ(pong->n(), 42);
  ::Second::Stub second(channel);
  EXPECT_THAT(second.Go(ping), StatusIs(absl::StatusCode::kUnimplemented));
}

TEST(AwkwardProtoTest, WorksOverUnix) {
  AllServices services;
  ipcrpc::Server server;
  ASSERT_THAT(services.RegisterWith(server), IsOk());
  const std::string endpoint = "unix:" + ipcrpc::testing::UniqueName("/tmp/ipcrpc-awk") + ".sock";
  ASSERT_THAT(server.Listen(endpoint), IsOk());
  ASSERT_THAT(server.Start(), IsOk());
  auto channel = ipcrpc::Channel::Connect(endpoint);
  ASSERT_THAT(channel, IsOk());
  ExerciseAll(*channel);
}

TEST(AwkwardProtoTest, WorksOverPipeToAServerProcess) {
  auto channel = ipcrpc::SpawnChild({IPCRPC_AWKWARD_SERVER, "--endpoint=pipe:"});
  ASSERT_THAT(channel, IsOk());
  ExerciseAll(*channel);
}

TEST(AwkwardProtoTest, GarbageRequestBytesAreInvalidArgument) {
  AllServices services;
  ipcrpc::Server server;
  ASSERT_THAT(services.RegisterWith(server), IsOk());
  const std::string endpoint = "unix:" + ipcrpc::testing::UniqueName("/tmp/ipcrpc-awk") + ".sock";
  ASSERT_THAT(server.Listen(endpoint), IsOk());
  ASSERT_THAT(server.Start(), IsOk());
  auto channel = ipcrpc::Channel::Connect(endpoint);
  ASSERT_THAT(channel, IsOk());
  EXPECT_THAT((*channel)->CallMethod("First/Go", std::string("\xff\xff\xff", 3)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("Ping")));
}

// A generated handler's request and reply are its thread's messages from
// the last call, cleared (ipcrpc::internal::ReusedMessage): nothing of one
// call may show in the next, neither to the handler nor to the client.
class PresenceTypes final : public ::awk::ward::v1::Types::Service {
 public:
  ::absl::Status Copy(::ipcrpc::ServerContext&, const ::other::types::Thing& thing,
                      ::other::types::Thing& reply) override {
    ipcrpc::internal::MutexLock lock(&mu_);
    if (reply.has_name() || reply.has_count() || reply.ByteSizeLong() != 0) ++dirty_replies_;
    seen_.push_back(thing.has_count() ? thing.name() + "=" + std::to_string(thing.count())
                                      : thing.name());
    // What the reply's string had room for on entry: more than a new
    // message's when the thread kept the last call's reply.
    capacities_.push_back(reply.name().capacity());
    reply.set_name(thing.name());
    if (thing.has_count()) reply.set_count(thing.count());
    return ::absl::OkStatus();
  }
  int dirty_replies() {
    ipcrpc::internal::MutexLock lock(&mu_);
    return dirty_replies_;
  }
  std::vector<std::string> seen() {
    ipcrpc::internal::MutexLock lock(&mu_);
    return seen_;
  }
  std::vector<size_t> capacities() {
    ipcrpc::internal::MutexLock lock(&mu_);
    return capacities_;
  }

 private:
  ipcrpc::internal::Mutex mu_;
  int dirty_replies_ = 0;
  std::vector<std::string> seen_;
  std::vector<size_t> capacities_;
};

TEST(GeneratedHandlerTest, NoCallSeesWhatTheCallBeforeItLeftInItsMessages) {
  PresenceTypes types;
  // One handler thread: the first calls (before the server has seen the
  // method run short 8 times and runs it inline) all run on it.
  ipcrpc::ServerOptions options;
  options.handler_threads = 1;
  ipcrpc::Server server(options);
  ASSERT_THAT(server.RegisterService(&types), IsOk());
  const std::string endpoint = "unix:" + ipcrpc::testing::UniqueName("/tmp/ipcrpc-awk") + ".sock";
  ASSERT_THAT(server.Listen(endpoint), IsOk());
  ASSERT_THAT(server.Start(), IsOk());
  auto channel = ipcrpc::Channel::Connect(endpoint);
  ASSERT_THAT(channel, IsOk());
  ::awk::ward::v1::Types::Stub stub(*channel);
  // Pairs: a name of 500 bytes with a count (kept by the thread: under
  // ipcrpc::internal::kReuseMaxBytes), then one without the count, whose
  // name is small, 64 KiB (over the limit: that call's messages are freed)
  // or small again.
  const std::string medium(500, 'm');
  const std::string large(64 * 1024, 'L');
  std::vector<std::string> expected;
  for (int round = 0; round < 3; ++round) {
    ::other::types::Thing with_count;
    with_count.set_name(medium);
    with_count.set_count(round + 1);
    auto first = stub.Copy(with_count);
    ASSERT_THAT(first, IsOk());
    EXPECT_EQ(first->count(), round + 1);
    expected.push_back(medium + "=" + std::to_string(round + 1));

    ::other::types::Thing without_count;
    without_count.set_name(round == 1 ? large : "b");
    auto second = stub.Copy(without_count);
    ASSERT_THAT(second, IsOk());
    EXPECT_EQ(second->name(), without_count.name());
    EXPECT_FALSE(second->has_count()) << "round " << round << ": the reply kept the count";
    expected.push_back(without_count.name());
  }
  EXPECT_EQ(types.dirty_replies(), 0);
  EXPECT_EQ(types.seen(), expected);
  const std::vector<size_t> capacities = types.capacities();
  ASSERT_EQ(capacities.size(), 6u);
  if (ipcrpc::internal::kReuseMessages) {
    // The second call of each pair got the first's reply, cleared.
    for (int round = 0; round < 3; ++round) {
      EXPECT_GE(capacities[2 * round + 1], medium.size()) << "round " << round;
    }
  }
}

// Copy, recording the name of the thread each call ran on.
class WhereTypes final : public ::awk::ward::v1::Types::Service {
 public:
  ::absl::Status Copy(::ipcrpc::ServerContext&, const ::other::types::Thing& thing,
                      ::other::types::Thing& reply) override {
    char name[32] = {};
    pthread_getname_np(pthread_self(), name, sizeof(name));
    reply.set_name(thing.name());
    ipcrpc::internal::MutexLock lock(&mu_);
    threads_.push_back(name);
    return ::absl::OkStatus();
  }
  // Waits until `n` calls have run; their threads' names.
  std::vector<std::string> AwaitCalls(size_t n) {
    ipcrpc::internal::MutexLock lock(&mu_);
    struct Arg {
      std::vector<std::string>* threads;
      size_t n;
    } arg{&threads_, n};
    mu_.Await(ipcrpc::internal::Condition(
        +[](Arg* a) { return a->threads->size() >= a->n; }, &arg));
    return threads_;
  }

 private:
  ipcrpc::internal::Mutex mu_;
  std::vector<std::string> threads_;
};

// Reads one whole message (its 4-byte length, then the frame) from `fd`.
std::string ReadMessage(int fd) {
  auto read_exactly = [fd](char* data, size_t size) {
    for (size_t got = 0; got < size;) {
      const ssize_t n = ::read(fd, data + got, size - got);
      if (n <= 0) return false;
      got += static_cast<size_t>(n);
    }
    return true;
  };
  char prefix[4];
  if (!read_exactly(prefix, 4)) return {};
  std::string frame(static_cast<size_t>(ipcrpc::internal::GetLe(prefix, 4)), '\0');
  if (!read_exactly(frame.data(), frame.size())) return {};
  return frame;
}

// A generated handler's large reply is sent from the handler thread, by the
// transport (SendReply). What the server learns of the handler's time
// counts serializing the reply, not sending it: a client slow to read made
// the handler look slow, and a method once sent to the handler threads by
// one slow run never came back to the loop while its sends took longer
// than inline_handler_limit (a 64 KiB echo over a FIFO takes ~20 us to
// send: one wake-up more a call). Here the first 8 replies wait 250 ms for
// the client each, against a limit of 100 ms; the 9th call then runs on
// the loop, as the handler itself was short all 8 times.
TEST(GeneratedHandlerTest, AReplyWaitingForTheClientIsNotCountedAsTheHandlersTime) {
  WhereTypes types;
  ipcrpc::ServerOptions options;
  options.inline_handler_limit = absl::Milliseconds(100);  // 512 KiB serialize: well below
  ipcrpc::Server server(options);
  ASSERT_THAT(server.RegisterService(&types), IsOk());
  const std::string path = ipcrpc::testing::UniqueName("/tmp/ipcrpc-awk") + ".sock";
  ASSERT_THAT(server.Listen("unix:" + path), IsOk());
  ASSERT_THAT(server.Start(), IsOk());
  // A raw client, which reads its answers only when this test says.
  ipcrpc::internal::UniqueFd peer(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(peer.valid());
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(::connect(peer.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0)
      << std::strerror(errno);
  // More than a socket holds (twice a new socket's send buffer, at least
  // 512 KiB), so that a reply's send waits for the client to read.
  int send_buffer = 0;
  socklen_t length = sizeof(send_buffer);
  ASSERT_EQ(::getsockopt(peer.get(), SOL_SOCKET, SO_SNDBUF, &send_buffer, &length), 0);
  ::other::types::Thing thing;
  thing.set_name(std::string(std::max<size_t>(512 * 1024, 2 * static_cast<size_t>(send_buffer)),
                             'n'));
  const std::string payload = thing.SerializeAsString();
  constexpr int kSlowReads = 8;  // the short runs after which a handler runs inline
  for (int call = 1; call <= kSlowReads + 1; ++call) {
    // The last call has ended on the server: what it learned of the handler
    // (before the call is released) counts for the next.
    for (const absl::Time give_up = absl::Now() + absl::Seconds(30);
         server.stats().calls_in_flight != 0 && absl::Now() < give_up;) {
      absl::SleepFor(absl::Milliseconds(1));
    }
    ASSERT_EQ(server.stats().calls_in_flight, 0) << "call " << call - 1 << " never ended";
    ipcrpc::internal::FrameHeader header;
    header.type = ipcrpc::internal::FrameType::kRequest;
    header.request_id = static_cast<uint64_t>(call);
    std::string frame;
    ASSERT_THAT(ipcrpc::internal::EncodeFramePrefix(header, "awk.ward.v1.Types/Copy", {},
                                                    payload.size(), 1 << 30, &frame),
                IsOk());
    frame.append(payload);
    std::string message(4, '\0');  // the stream's length prefix
    ipcrpc::internal::PutLe(message.data(), frame.size(), 4);
    message.append(frame);
    for (size_t sent = 0; sent < message.size();) {
      const ssize_t n =
          ::send(peer.get(), message.data() + sent, message.size() - sent, MSG_NOSIGNAL);
      ASSERT_GT(n, 0) << std::strerror(errno);
      sent += static_cast<size_t>(n);
    }
    const std::vector<std::string> threads = types.AwaitCalls(static_cast<size_t>(call));
    if (call <= kSlowReads) {
      // The handler has returned; its reply waits for us (a stimulus, not
      // a wait for something to happen).
      absl::SleepFor(absl::Milliseconds(250));
    } else {
      EXPECT_EQ(threads.back(), "ipcrpc-server")
          << "after " << kSlowReads << " short runs whose replies waited for the client, "
          << "the handler still ran on a handler thread";
    }
    const std::string reply = ReadMessage(peer.get());
    absl::StatusOr<ipcrpc::internal::FrameView> view =
        ipcrpc::internal::DecodeFrame(reply, 1 << 30);
    ASSERT_THAT(view, IsOk()) << "call " << call;
    EXPECT_EQ(view->header.request_id, static_cast<uint64_t>(call));
    EXPECT_EQ(view->payload, payload) << "call " << call;
  }
  server.Shutdown(absl::Seconds(5));
}

// The spare's own rules: a nested use of the same type on the same thread
// gets a message of its own, and a kept one comes back, cleared.
TEST(ReusedMessageTest, NestedUsesGetTheirOwnMessageAndKeptOnesComeBackCleared) {
  if (!ipcrpc::internal::kReuseMessages) {
    GTEST_SKIP() << "messages are not reused under AddressSanitizer";
  }
  using Slot = ipcrpc::internal::ReusedMessage<::other::types::Thing, 7>;
  const ::other::types::Thing* inner_address = nullptr;
  {
    Slot outer;
    (*outer).set_name("outer");
    {
      Slot inner;
      inner_address = &*inner;
      EXPECT_NE(inner_address, &*outer);
      EXPECT_FALSE((*inner).has_name());
      (*inner).set_name("inner");
      (*inner).set_count(3);
      inner.KeepIf(true);
    }  // the thread's spare is the inner's now
    outer.KeepIf(true);  // a spare is there already: freed
  }
  Slot again;
  EXPECT_EQ(&*again, inner_address) << "the kept message was not handed out again";
  EXPECT_FALSE((*again).has_name()) << "kept, but not cleared";
  EXPECT_FALSE((*again).has_count()) << "kept, but not cleared";
}

TEST(ReusedMessageTest, AReplyIsKeptOnlyWhenSmallOnTheWireAndInItsStrings) {
  using ipcrpc::internal::kReuseMaxBytes;
  using ipcrpc::internal::SmallEnoughToKeep;
  EXPECT_TRUE(SmallEnoughToKeep(10, {}));
  EXPECT_TRUE(SmallEnoughToKeep(static_cast<int>(kReuseMaxBytes), {15, kReuseMaxBytes}));
  EXPECT_FALSE(SmallEnoughToKeep(static_cast<int>(kReuseMaxBytes) + 1, {}));
  // A handler that grew a string and then shrank it: small on the wire,
  // large in memory.
  EXPECT_FALSE(SmallEnoughToKeep(10, {15, kReuseMaxBytes + 1}));
  EXPECT_FALSE(SmallEnoughToKeep(-1, {}));
}

}  // namespace
}  // namespace awk_test
