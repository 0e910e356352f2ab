// ipcrpc: typed, deadline-aware RPC between processes on one Linux host.
// The umbrella header: the whole public surface.
#ifndef IPCRPC_IPCRPC_H_
#define IPCRPC_IPCRPC_H_

#include "ipcrpc/channel.h"
#include "ipcrpc/options.h"
#include "ipcrpc/scratch.h"
#include "ipcrpc/server.h"
#include "ipcrpc/server_context.h"
#include "ipcrpc/service.h"
#include "ipcrpc/stream.h"

#endif  // IPCRPC_IPCRPC_H_
