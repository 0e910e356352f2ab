// What crosses an mq: queue: the header every queue message starts with,
// the CONNECT handshake's constants, and the reassembly of a message that
// came in fragments. Message layout and handshake: docs/PROTOCOL.md.
#ifndef IPCRPC_TRANSPORTS_MQ_MQ_WIRE_H_
#define IPCRPC_TRANSPORTS_MQ_MQ_WIRE_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace ipcrpc::internal {

// Kinds of queue messages, and the fragment header every message starts with.
// kWake is a client's own, sent to its own reply queue to wake its caller
// blocked in mq_timedreceive (never to a peer; a client ignores one from
// its server, a server closes the connection that sends one).
enum class MqKind : uint8_t { kConnect = 1, kAccept = 2, kData = 3, kClose = 4, kWake = 5 };
inline constexpr size_t kMqHeaderSize = 24;
// The least message size a client's reply queue may have: the least
// msgsize_max the kernel allows (its clients ask for min(512, msgsize_max)).
inline constexpr long kMqMinReplyMessageSize = 128;
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

// CONNECT: the magic and version that start its payload, and the priority
// it (and the server's answer) is sent with.
inline constexpr char kConnectMagic[4] = {'I', 'M', 'Q', 'C'};
inline constexpr uint32_t kMqVersion = 1;
inline constexpr int kConnectPriority = 31;  // new clients are not stuck behind queued work

}  // namespace ipcrpc::internal

#endif  // IPCRPC_TRANSPORTS_MQ_MQ_WIRE_H_
