// Subscribes to a topic of a pubsub broker and reports what it received.
//
//   pubsub_subscriber --endpoint=shm:news --topic=weather [--slow_us=0]
//   pubsub_subscriber --endpoint=pipe: --broker=./pubsub_broker
//                     --broker_endpoints=unix:/tmp/news.sock
//
// Reads until the publisher's last event (or --timeout_s), then prints the
// count, the events it never saw (dropped by the broker because this
// subscriber was slower than the publisher: --slow_us makes it so), and the
// publish-to-receive latency. Over pipe: it starts the broker as its child
// (which also listens on --broker_endpoints, for the publisher).
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "pubsub.ipcrpc.h"

ABSL_FLAG(std::string, endpoint, "", "The broker's endpoint (pipe: starts --broker)");
ABSL_FLAG(std::string, broker, "", "pipe: the broker program to start");
ABSL_FLAG(std::string, broker_endpoints, "", "pipe: more endpoints for the broker");
ABSL_FLAG(std::string, topic, "news", "Topic to subscribe to");
ABSL_FLAG(int, slow_us, 0, "Pause after each event (a slow subscriber)");
ABSL_FLAG(int, timeout_s, 60, "Give up after this long");
ABSL_FLAG(int, window_kib, 1024,
          "The stream's flow-control window (ChannelOptions::stream_window), at least 64");
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
  absl::StatusOr<std::shared_ptr<ipcrpc::Channel>> channel;
  ipcrpc::ChannelOptions channel_options;
  channel_options.stream_window = static_cast<size_t>(absl::GetFlag(FLAGS_window_kib)) << 10;
  if (endpoint == "pipe:") {
    std::string endpoints = "pipe:";
    if (!absl::GetFlag(FLAGS_broker_endpoints).empty()) {
      absl::StrAppend(&endpoints, ",", absl::GetFlag(FLAGS_broker_endpoints));
    }
    channel = ipcrpc::SpawnChild({absl::GetFlag(FLAGS_broker), "--endpoint=" + endpoints},
                                 channel_options);
  } else {
    channel = ipcrpc::Channel::Connect(endpoint, channel_options);
    const absl::Time give_up =
        absl::Now() + absl::Milliseconds(absl::GetFlag(FLAGS_wait_for_server_ms));
    while (!channel.ok() && absl::IsUnavailable(channel.status()) && absl::Now() < give_up) {
      absl::SleepFor(absl::Milliseconds(20));
      channel = ipcrpc::Channel::Connect(endpoint, channel_options);
    }
  }
  if (!channel.ok()) {
    std::fprintf(stderr, "pubsub_subscriber: %s\n", channel.status().ToString().c_str());
    return 1;
  }
  pubsub::Broker::Stub broker(*channel);
  pubsub::SubscribeRequest request;
  request.set_topic(absl::GetFlag(FLAGS_topic));
  ipcrpc::CallOptions options;
  options.timeout = absl::Seconds(absl::GetFlag(FLAGS_timeout_s));
  ipcrpc::ClientReader<pubsub::Event> events = broker.Subscribe(request, options);
  pubsub::Event event;
  int64_t received = 0;
  int64_t missed = 0;
  int64_t next = -1;
  bool last = false;
  std::vector<int64_t> latency_ns;
  while (!last && events.Read(&event)) {
    latency_ns.push_back(MonotonicNs() - event.published_ns());
    ++received;
    if (next >= 0 && event.sequence() > next) missed += event.sequence() - next;
    next = event.sequence() + 1;
    last = event.last();
    if (absl::GetFlag(FLAGS_slow_us) > 0) {
      absl::SleepFor(absl::Microseconds(absl::GetFlag(FLAGS_slow_us)));
    }
  }
  events.Cancel();  // done: the broker forgets this subscriber
  absl::Status status = events.Finish();
  if (!last) {
    std::fprintf(stderr, "pubsub_subscriber: the stream ended before the last event: %s\n",
                 status.ToString().c_str());
    return 1;
  }
  std::sort(latency_ns.begin(), latency_ns.end());
  auto percentile = [&](double p) {
    return latency_ns[std::min(latency_ns.size() - 1,
                               static_cast<size_t>(p * static_cast<double>(latency_ns.size())))] /
           1000.0;
  };
  std::printf("subscriber %d%s: %lld events, %lld dropped by the broker (too slow), "
              "latency p50 %.1f us, p99 %.1f us\n",
              static_cast<int>(getpid()), absl::GetFlag(FLAGS_slow_us) > 0 ? " (slow)" : "",
              static_cast<long long>(received), static_cast<long long>(missed), percentile(0.5),
              percentile(0.99));
  return 0;
}
