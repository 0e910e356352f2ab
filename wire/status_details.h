// What a RESPONSE carries besides its code and message (docs/PROTOCOL.md,
// "Response metadata and status details"): the handler's response metadata
// and the payloads of its absl::Status.
//
// The payloads travel in the RESPONSE's metadata block under the key
// kStatusDetailsKey, as gRPC carries them in `grpc-status-details-bin`: a
// serialized google.rpc.Status (code 1, message 2, details 3) with one
// google.protobuf.Any per payload, its type URL the payload's key. The
// encoding is written and read here by hand (three fields), so that the
// runtime does not define a google.rpc.Status of its own that would clash
// with a user's copy of googleapis.
#ifndef IPCRPC_WIRE_STATUS_DETAILS_H_
#define IPCRPC_WIRE_STATUS_DETAILS_H_

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "wire/frame.h"

namespace ipcrpc::internal {

inline constexpr std::string_view kStatusDetailsKey = "grpc-status-details-bin";

// True for keys a handler may not set in its response metadata: gRPC's own
// (`grpc-` prefix, kStatusDetailsKey among them) and pseudo-headers.
bool IsReservedResponseKey(std::string_view key);

// The google.rpc.Status of `status` with its payloads; empty if it has none.
std::string EncodeStatusDetails(const absl::Status& status);

// Adds to `status` the payloads of a google.rpc.Status in `details`. False
// (and `status` unchanged) if the bytes are not one.
bool ApplyStatusDetails(std::string_view details, absl::Status* status);

// Splits a RESPONSE's metadata block: the status details (if any) go to
// `status` (if not OK); every other entry is returned, in order.
Metadata TakeResponseMetadata(std::string_view block, absl::Status* status);

}  // namespace ipcrpc::internal

#endif  // IPCRPC_WIRE_STATUS_DETAILS_H_
