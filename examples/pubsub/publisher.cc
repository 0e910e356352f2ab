// Publishes events to a pubsub broker.
//
//   pubsub_publisher --endpoint=shm:news --topic=weather --count=1000
//                    [--interval_us=100] [--size=64] [--wait_for_subscribers=N]
//
// With --wait_for_subscribers, it first waits (up to 10 s) until the broker
// has N subscribers of the topic, so that they see every event. The last
// event has `last` set.
#include <time.h>

#include <cstdio>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/time/clock.h"
#include "pubsub.ipcrpc.h"

ABSL_FLAG(std::string, endpoint, "", "The broker's endpoint");
ABSL_FLAG(std::string, topic, "news", "Topic to publish to");
ABSL_FLAG(int, count, 1000, "Events to publish");
ABSL_FLAG(int, interval_us, 100, "Pause between events");
ABSL_FLAG(int, size, 64, "Bytes of data per event");
ABSL_FLAG(int, wait_for_subscribers, 0, "Wait until the topic has this many subscribers");
ABSL_FLAG(int, wait_for_server_ms, 10000, "Keep trying to connect this long");

namespace {

int64_t MonotonicNs() {
  timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return int64_t{now.tv_sec} * 1'000'000'000 + now.tv_nsec;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string endpoint = absl::GetFlag(FLAGS_endpoint);
  const std::string topic = absl::GetFlag(FLAGS_topic);
  absl::StatusOr<std::shared_ptr<ipcrpc::Channel>> channel = ipcrpc::Channel::Connect(endpoint);
  const absl::Time give_up = absl::Now() + absl::Milliseconds(absl::GetFlag(FLAGS_wait_for_server_ms));
  while (!channel.ok() && absl::IsUnavailable(channel.status()) && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(20));
    channel = ipcrpc::Channel::Connect(endpoint);
  }
  if (!channel.ok()) {
    std::fprintf(stderr, "pubsub_publisher: %s\n", channel.status().ToString().c_str());
    return 1;
  }
  pubsub::Broker::Stub broker(*channel);
  ipcrpc::CallOptions options;
  options.timeout = absl::Seconds(5);
  const int want = absl::GetFlag(FLAGS_wait_for_subscribers);
  for (const absl::Time until = absl::Now() + absl::Seconds(10);;) {
    absl::StatusOr<pubsub::BrokerStats> stats = broker.GetStats(pubsub::StatsRequest(), options);
    if (!stats.ok()) {
      std::fprintf(stderr, "pubsub_publisher: %s\n", stats.status().ToString().c_str());
      return 1;
    }
    int subscribers = 0;
    for (const auto& subscriber : stats->subscribers()) subscribers += subscriber.topic() == topic;
    if (subscribers >= want) break;
    if (absl::Now() > until) {
      std::fprintf(stderr, "pubsub_publisher: %d of %d subscribers after 10 s\n", subscribers,
                   want);
      return 1;
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  const int count = absl::GetFlag(FLAGS_count);
  pubsub::Event event;
  event.set_topic(topic);
  event.set_data(std::string(static_cast<size_t>(absl::GetFlag(FLAGS_size)), 'e'));
  for (int i = 0; i < count; ++i) {
    event.set_sequence(i);
    event.set_last(i == count - 1);
    event.set_published_ns(MonotonicNs());
    absl::StatusOr<pubsub::PublishReply> reply = broker.Publish(event, options);
    if (!reply.ok()) {
      std::fprintf(stderr, "pubsub_publisher: Publish: %s\n", reply.status().ToString().c_str());
      return 1;
    }
    if (absl::GetFlag(FLAGS_interval_us) > 0) {
      absl::SleepFor(absl::Microseconds(absl::GetFlag(FLAGS_interval_us)));
    }
  }
  absl::StatusOr<pubsub::BrokerStats> stats = broker.GetStats(pubsub::StatsRequest(), options);
  if (stats.ok()) {
    std::printf("publisher: %d events on '%s'; broker: %lld published, %lld dropped for slow "
                "subscribers so far\n",
                count, topic.c_str(), static_cast<long long>(stats->published()),
                static_cast<long long>(stats->dropped_total()));
  }
  return 0;
}
