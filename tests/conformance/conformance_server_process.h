// A conformance_server process on one transport, and the channel to it.
// Adding a transport to the suite means teaching this class to start a server
// on it (and, for a raw peer, to reach it without the library).
#ifndef IPCRPC_TESTS_CONFORMANCE_CONFORMANCE_SERVER_PROCESS_H_
#define IPCRPC_TESTS_CONFORMANCE_CONFORMANCE_SERVER_PROCESS_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "base/syscall.h"
#include "ipcrpc/ipcrpc.h"

namespace ipcrpc::testing {

struct TransportTraits {
  std::string name;
  bool many_clients;  // false for pipe: (one parent, one child)
};

// For GoogleTest's names of parameterised tests.
inline void PrintTo(const TransportTraits& transport, std::ostream* os) { *os << transport.name; }

class ConformanceServerProcess {
 public:
  // `server_args` are added to conformance_server's command line (e.g.
  // "--max_connections=16"); not for pipe:.
  // `name`: the endpoint's address (a path, or a queue or shm: name) to
  // use instead of a new unique one (a successor on a dead server's
  // endpoint); not for pipe:.
  static absl::StatusOr<std::unique_ptr<ConformanceServerProcess>> Start(
      const TransportTraits& transport, const std::vector<std::string>& server_args = {},
      const std::string& name = "");
  // The endpoint's address (see Start).
  const std::string& name() const { return socket_path_; }
  // Stops the server: unix: SIGTERM, and checks it exited 0 and removed its
  // socket file; pipe: closes the channel, which ends the child.
  ~ConformanceServerProcess();

  const std::shared_ptr<Channel>& channel() const { return channel_; }
  // Another client's channel (many_clients transports only).
  absl::StatusOr<std::shared_ptr<Channel>> NewChannel() const;
  // Arguments that let conformance_client reach this server (for pipe:, it
  // spawns its own server).
  std::vector<std::string> ClientArgs() const;
  pid_t pid() const { return pid_; }
  // SIGKILL the server process.
  void Kill();

  // A peer that speaks to a server process without the library: it frames
  // whatever bytes it is given as one transport message.
  struct RawPeer {
    // Stream transports (unix:, pipe:, fifo:).
    internal::UniqueFd to_server;
    internal::UniqueFd from_server;
    pid_t own_server = -1;  // pipe: a server spawned for this peer alone
    // mq: the server's queue, our reply queue, our connection id.
    internal::UniqueFd mq_server;
    internal::UniqueFd mq_reply;
    uint64_t mq_connection = 0;
    // shm: the socket, our mapping of the region, our end of the doorbell
    // pair (a datagram sent on it wakes the server) and, as a hostile peer
    // may keep it, a copy of the server's end.
    internal::UniqueFd shm_socket;
    std::shared_ptr<char> shm_region;
    size_t shm_ring_size = 0;
    internal::UniqueFd shm_doorbell;
    internal::UniqueFd shm_server_end;
    uint64_t shm_position = 0;  // our producer position in ring 0

    // shm: rings the server's doorbell.
    bool RingShm();

    // Sends `frame` as one whole transport message.
    bool SendMessage(std::string_view frame);
    // Announces a message longer than any limit (and sends a little of it).
    bool SendOversized();
    // Announces a message of `announced` bytes (within the limit) and sends
    // only its first `sent` bytes (at most one mq: fragment).
    bool SendPartial(uint32_t announced, size_t sent);
    bool SendAnnounced(uint32_t announced, std::string_view body);
    // True once the server has closed this connection.
    bool WaitClosed(absl::Duration timeout);
    // Ends our side (closes what we write).
    void Finish();
  };
  absl::StatusOr<RawPeer> OpenRawPeer() const;

 private:
  ConformanceServerProcess() = default;

  TransportTraits transport_;
  std::string endpoint_;
  std::string socket_path_;
  pid_t pid_ = -1;
  bool we_spawned_ = false;  // unix: our child; pipe: the channel's
  bool killed_ = false;
  std::shared_ptr<Channel> channel_;
};

}  // namespace ipcrpc::testing

#endif  // IPCRPC_TESTS_CONFORMANCE_CONFORMANCE_SERVER_PROCESS_H_
