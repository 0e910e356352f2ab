// mq: queues themselves: the names an endpoint may give, the sizes they are
// created with under the kernel's limits, and mq_open's errors.
#ifndef IPCRPC_TRANSPORTS_MQ_MQ_QUEUE_H_
#define IPCRPC_TRANSPORTS_MQ_MQ_QUEUE_H_

#include <mqueue.h>

#include <string_view>

#include "absl/status/status.h"
#include "transports/transport.h"

namespace ipcrpc::internal {

// The kernel's limits, read from /proc/sys/fs/mqueue (10 and 8192 if absent).
struct MqLimits {
  long max_messages;
  long message_size;
};
MqLimits ReadMqLimits();

// Queue sizes. Every queue is charged to its creator's RLIMIT_MSGQUEUE
// (800 KiB per user by default) for maxmsg * msgsize plus about 100 bytes of
// overhead per message, so the server's queue takes the kernel's largest
// messages (8 KiB by default: about 82 KiB), and each client's reply queue
// by default four small ones (1 KiB: about 4.5 KiB), so that a hundred
// clients of one user fit under the default limit beside their server;
// larger responses are fragmented (ChannelOptions may ask for a larger
// reply queue: ReplyQueueAttributes). When the limit is reached all the same, a reply queue of one
// message is tried before giving up (ReplyQueueFallback).
struct mq_attr QueueAttributes(bool server);
// A client's reply queue as its ChannelOptions ask (messages, bytes each;
// the default is QueueAttributes(false)), within the kernel's limits and
// at least 1 message of 512 bytes (or msgsize_max, if that is less).
struct mq_attr ReplyQueueAttributes(long messages, long message_size);

// An errno from mq_open as a status that names the limit and how to raise it.
absl::Status MqOpenError(int error, std::string_view name);

// INVALID_ARGUMENT unless the endpoint's address can name a queue.
absl::Status ValidateMqName(const Endpoint& endpoint);

}  // namespace ipcrpc::internal

#endif  // IPCRPC_TRANSPORTS_MQ_MQ_QUEUE_H_
