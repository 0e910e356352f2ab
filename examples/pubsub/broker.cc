// The pub/sub broker: pubsub::Broker over ipcrpc streams.
//
//   pubsub_broker --endpoint=shm:news [--queue=256]   # until SIGINT/SIGTERM
//
// Each subscriber has a queue of at most --queue events. Publish puts the
// event in the queue of every subscriber of its topic and returns: a
// publisher never waits for a subscriber. The subscriber's handler writes
// from its queue to its stream, and a stream's Write waits while the
// subscriber has not read what the flow-control window allows. So a
// subscriber that cannot keep up first fills its window, then its queue;
// then its oldest queued events are dropped (counted per subscriber, in
// GetStats: `ipcrpc call ENDPOINT pubsub.Broker/GetStats`), and the newest
// always get through. Memory per subscriber is bounded by the queue plus
// the stream's window.
#include <signal.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <deque>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_split.h"
#include "pubsub.ipcrpc.h"

ABSL_FLAG(std::string, endpoint, "", "Where to listen (comma-separated for several)");
ABSL_FLAG(int, queue, 256, "Events queued per subscriber before the oldest are dropped");

namespace {

class BrokerImpl final : public pubsub::Broker::Service {
 public:
  explicit BrokerImpl(size_t queue_limit) : queue_limit_(queue_limit) {}

  absl::Status Publish(ipcrpc::ServerContext&, const pubsub::Event& event,
                       pubsub::PublishReply& reply) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++published_;
    for (const auto& subscriber : subscribers_) {
      if (subscriber->topic != event.topic()) continue;
      {
        std::lock_guard<std::mutex> queue_lock(subscriber->mu);
        if (subscriber->queue.size() >= queue_limit_) {
          subscriber->queue.pop_front();  // drop-oldest
          ++subscriber->dropped;
        }
        subscriber->queue.push_back(event);
      }
      subscriber->ready.notify_one();
      reply.set_subscribers(reply.subscribers() + 1);
    }
    return absl::OkStatus();
  }

  absl::Status Subscribe(ipcrpc::ServerContext& context, const pubsub::SubscribeRequest& request,
                         ipcrpc::ServerWriter<pubsub::Event>& writer) override {
    auto subscriber = std::make_shared<Subscriber>();
    subscriber->topic = request.topic();
    subscriber->peer_pid = context.peer_pid();
    {
      std::lock_guard<std::mutex> lock(mu_);
      subscribers_.push_back(subscriber);
    }
    context.OnCancel([subscriber] {
      {
        std::lock_guard<std::mutex> lock(subscriber->mu);
        subscriber->cancelled = true;
      }
      subscriber->ready.notify_one();
    });
    for (;;) {
      pubsub::Event event;
      {
        std::unique_lock<std::mutex> lock(subscriber->mu);
        subscriber->ready.wait(
            lock, [&] { return subscriber->cancelled || !subscriber->queue.empty(); });
        if (subscriber->cancelled) break;
        event = std::move(subscriber->queue.front());
        subscriber->queue.pop_front();
      }
      // Waits while the subscriber's window is used up; false once the
      // subscriber is gone or cancelled.
      if (!writer.Write(event)) break;
      std::lock_guard<std::mutex> lock(subscriber->mu);
      ++subscriber->delivered;
    }
    std::lock_guard<std::mutex> lock(mu_);
    subscribers_.remove(subscriber);
    std::lock_guard<std::mutex> queue_lock(subscriber->mu);
    dropped_by_departed_ += subscriber->dropped;
    return absl::CancelledError("subscription ended");
  }

  absl::Status GetStats(ipcrpc::ServerContext&, const pubsub::StatsRequest&,
                        pubsub::BrokerStats& reply) override {
    std::lock_guard<std::mutex> lock(mu_);
    reply.set_published(published_);
    int64_t dropped = dropped_by_departed_;
    for (const auto& subscriber : subscribers_) {
      std::lock_guard<std::mutex> queue_lock(subscriber->mu);
      pubsub::SubscriberStats* stats = reply.add_subscribers();
      stats->set_topic(subscriber->topic);
      stats->set_peer_pid(subscriber->peer_pid);
      stats->set_delivered(subscriber->delivered);
      stats->set_dropped(subscriber->dropped);
      stats->set_queued(static_cast<int64_t>(subscriber->queue.size()));
      dropped += subscriber->dropped;
    }
    reply.set_dropped_total(dropped);
    return absl::OkStatus();
  }

 private:
  struct Subscriber {
    std::string topic;
    pid_t peer_pid = 0;
    std::mutex mu;
    std::condition_variable ready;
    std::deque<pubsub::Event> queue;  // guarded by mu
    int64_t delivered = 0;            // guarded by mu
    int64_t dropped = 0;              // guarded by mu
    bool cancelled = false;           // guarded by mu
  };

  const size_t queue_limit_;
  std::mutex mu_;
  std::list<std::shared_ptr<Subscriber>> subscribers_;  // guarded by mu_
  int64_t published_ = 0;                               // guarded by mu_
  int64_t dropped_by_departed_ = 0;                     // guarded by mu_
};

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string endpoints = absl::GetFlag(FLAGS_endpoint);
  if (endpoints.empty() || absl::GetFlag(FLAGS_queue) < 1) {
    std::fprintf(stderr, "pubsub_broker: --endpoint is required (and --queue >= 1)\n");
    return 2;
  }
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  BrokerImpl broker(static_cast<size_t>(absl::GetFlag(FLAGS_queue)));
  ipcrpc::Server server;
  absl::Status status = server.RegisterService(&broker);
  for (const std::string& endpoint : std::vector<std::string>(absl::StrSplit(endpoints, ','))) {
    if (status.ok()) status = server.Listen(endpoint);
  }
  if (status.ok()) status = server.Start();
  if (!status.ok()) {
    std::fprintf(stderr, "pubsub_broker: %s\n", status.ToString().c_str());
    return 1;
  }
  std::fprintf(stderr, "pubsub_broker: pid %d serving %s on %s\n", getpid(),
               pubsub::Broker::kServiceName, endpoints.c_str());
  std::thread signal_thread([&server, signals] {
    int signal_number = 0;
    sigwait(&signals, &signal_number);
    server.Shutdown(absl::Seconds(1));
  });
  server.Wait();
  pthread_kill(signal_thread.native_handle(), SIGTERM);
  signal_thread.join();
  return 0;
}
