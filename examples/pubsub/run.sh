#!/usr/bin/env bash
# The pub/sub demo over every transport: a broker, two subscribers (one of
# them slow) and a publisher, each its own process.
#
#   bash examples/pubsub/run.sh [BIN_DIR]   # BIN_DIR: build/examples/pubsub
set -euo pipefail
bin=${1:-build/examples/pubsub}
tmp=${TMPDIR:-/tmp}
count=${PUBSUB_EVENTS:-2000}
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

# demo NAME BROKER_ENDPOINT PUBLISHER_ENDPOINT [SUBSCRIBER_ENDPOINT...]
demo() {
  local name=$1 endpoint=$2
  echo "== pub/sub over $name"
  "$bin/pubsub_broker" --endpoint="$endpoint" --queue=64 &
  local broker=$!
  pids+=("$broker")
  "$bin/pubsub_subscriber" --endpoint="$endpoint" --topic=demo &
  local fast=$!
  "$bin/pubsub_subscriber" --endpoint="$endpoint" --topic=demo --slow_us=500 --window_kib=64 &
  local slow=$!
  pids+=("$fast" "$slow")
  "$bin/pubsub_publisher" --endpoint="$endpoint" --topic=demo --count="$count" \
    --interval_us=20 --wait_for_subscribers=2
  wait "$fast"
  wait "$slow"
  kill -TERM "$broker"
  wait "$broker"
  pids=()
}

demo "shm:" "shm:ipcrpc-pubsub-$$"
demo "unix:" "unix:$tmp/ipcrpc-pubsub-$$.sock"
demo "fifo:" "fifo:$tmp/ipcrpc-pubsub-$$.fifo"
demo "mq:" "mq:ipcrpc-pubsub-$$"

# pipe: joins one parent and the child it starts: the subscriber starts the
# broker as its child, which also listens on unix: for the publisher.
echo "== pub/sub over pipe: (the subscriber starts the broker; the publisher uses unix:)"
sock="$tmp/ipcrpc-pubsub-pipe-$$.sock"
"$bin/pubsub_subscriber" --endpoint=pipe: --broker="$bin/pubsub_broker" \
  --broker_endpoints="unix:$sock" --topic=demo &
sub=$!
pids+=("$sub")
"$bin/pubsub_publisher" --endpoint="unix:$sock" --topic=demo --count="$count" \
  --interval_us=20 --wait_for_subscribers=1
wait "$sub"
pids=()
echo "== pub/sub ran over every transport"
