// The server registry: every running server records itself in a small JSON
// file (an ipcrpc.ServerRecord) under RuntimeDirectory()/servers/, removed on
// shutdown. `ipcrpc ls` lists the live ones; a record whose process is gone,
// or whose pid now runs another process (the start time differs), is stale
// and `ipcrpc gc` removes it with the objects its endpoints left.
#ifndef IPCRPC_RPC_SERVER_REGISTRY_H_
#define IPCRPC_RPC_SERVER_REGISTRY_H_

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "ipcrpc/introspection.pb.h"

namespace ipcrpc::internal {

// The start time of process `pid` in clock ticks since boot (field 22 of
// /proc/PID/stat); NOT_FOUND if there is no such process.
absl::StatusOr<uint64_t> ProcessStartTime(pid_t pid);

// Whether the process that wrote a record still runs: `pid` exists and
// started at `start_time` (pids are reused).
bool ProcessIsAlive(pid_t pid, uint64_t start_time);

// A record describing this process, without endpoints or services.
ServerRecord RecordForThisProcess();

// RuntimeDirectory()/servers, created 0700 if missing.
absl::StatusOr<std::string> RegistryDirectory();

// This server's entry: written (whole, by rename) at Start and whenever its
// endpoints change; removed on shutdown. Not thread-safe.
class RegistryEntry {
 public:
  RegistryEntry() = default;
  ~RegistryEntry() { Remove(); }
  RegistryEntry(const RegistryEntry&) = delete;
  RegistryEntry& operator=(const RegistryEntry&) = delete;

  absl::Status Write(const ServerRecord& record);
  // Idempotent.
  void Remove();

 private:
  std::string path_;
};

struct RegistryListing {
  std::string path;
  ServerRecord record;
  bool live = false;
  std::string problem;  // why the file could not be read, if it could not
};

// Every record in `directory` (RegistryDirectory() if empty), live or stale,
// sorted by pid. A file that is not a valid record is listed as stale with a
// problem (the process that wrote it was killed mid-write, or it is foreign).
absl::StatusOr<std::vector<RegistryListing>> ReadRegistry(const std::string& directory = "");

// Removes the stale records that name any of `endpoints`: a server that took
// an endpoint over from a dead one (reclaiming what it left) also retires its
// record, so that nothing of the dead server stays behind.
void RemoveStaleRecordsSharing(const std::vector<std::string>& endpoints);

}  // namespace ipcrpc::internal

#endif  // IPCRPC_RPC_SERVER_REGISTRY_H_
