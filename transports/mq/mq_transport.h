// `mq:NAME`: POSIX message queues.
//
// The server owns queue /NAME (ServerOptions::mode, 0600 by default); every
// client sends its requests there, tagged with its connection id. Each client
// creates its own reply queue, announces it in a CONNECT message, and unlinks
// it once the server has opened it (the ACCEPT message says so). A frame
// larger than a queue message is split into fragments and reassembled, within
// max_message_size and a bound on partial messages per connection. Queues
// have no EOF: each side watches the other's pid with pidfd_open on its loop.
// CallOptions::priority is the mq_send priority, so urgent calls overtake
// queued ones. Liveness of /NAME: its server holds the abstract Unix socket
// "@ipcrpc-mq-NAME" while it lives (the kernel frees it at death); a queue
// without that socket is stale.
//
// Message layout and handshake: docs/PROTOCOL.md.
#ifndef IPCRPC_TRANSPORTS_MQ_MQ_TRANSPORT_H_
#define IPCRPC_TRANSPORTS_MQ_MQ_TRANSPORT_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "transports/transport.h"

namespace ipcrpc::internal {

// Kinds of queue messages, and the fragment header every message starts with.
enum class MqKind : uint8_t { kConnect = 1, kAccept = 2, kData = 3, kClose = 4 };
inline constexpr size_t kMqHeaderSize = 24;
inline constexpr size_t kMqMaxPartialMessages = 64;

struct MqHeader {
  MqKind kind = MqKind::kData;
  bool last = true;           // DATA: the last fragment of its message
  uint32_t sequence = 0;      // DATA: which message of the connection's direction
  uint64_t connection = 0;    // DATA, CLOSE, ACCEPT: the connection id
  uint32_t total_length = 0;  // DATA: the whole message's length
  uint32_t offset = 0;        // DATA: this fragment's offset in it
};

void EncodeMqHeader(const MqHeader& header, char* out);
// DATA_LOSS if `message` is shorter than a header or has an unknown kind.
absl::StatusOr<MqHeader> DecodeMqHeader(std::string_view message);

// Reassembles fragmented messages of one connection's direction.
// Fragments of one message arrive in order (same sender, same priority);
// fragments of different messages may interleave (different priorities).
class MqReassembler {
 public:
  MqReassembler(size_t max_message_size, size_t max_partial)
      : max_message_size_(max_message_size), max_partial_(max_partial) {}

  // Takes one DATA fragment. Returns the whole message once its last
  // fragment is in (a view into `chunk` for a single-fragment message, valid
  // as long as `chunk`; otherwise into the reassembler, valid until the next
  // call), nullopt before, or an error for a fragment that breaks the rules
  // (out of order, over the limits, a sequence number reused).
  absl::StatusOr<std::optional<std::string_view>> Add(const MqHeader& header,
                                                      std::string_view chunk);

 private:
  const size_t max_message_size_;
  const size_t max_partial_;
  absl::flat_hash_map<uint32_t, std::string> partial_;
  std::string complete_;
};

// The kernel's limits, read from /proc/sys/fs/mqueue (10 and 8192 if absent).
struct MqLimits {
  long max_messages;
  long message_size;
};
MqLimits ReadMqLimits();

// For `ipcrpc gc`. Whether queue /NAME exists and no live server owns it (its
// token is unbound). Names are given without the leading '/'.
absl::StatusOr<bool> MqQueueIsStale(const std::string& name);
// Removes /NAME if it is stale, holding its token meanwhile so that no server
// starts on it in between; FAILED_PRECONDITION if a live server owns it.
absl::Status RemoveStaleMqQueue(const std::string& name);

// The owner of queue /`name` (fstat of the opened queue). NOT_FOUND if there
// is none.
absl::StatusOr<uid_t> MqQueueOwner(const std::string& name);
// Clients' reply queues are "/ipcrpc-<pid>-<n>-<random>".
inline constexpr char kMqReplyQueuePrefix[] = "ipcrpc-";

absl::StatusOr<std::unique_ptr<Listener>> CreateMqListener(const Endpoint& endpoint,
                                                           const TransportOptions& options);
absl::StatusOr<std::unique_ptr<Connector>> CreateMqConnector(const Endpoint& endpoint,
                                                             const TransportOptions& options);

}  // namespace ipcrpc::internal

#endif  // IPCRPC_TRANSPORTS_MQ_MQ_TRANSPORT_H_
