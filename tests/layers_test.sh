#!/usr/bin/env bash
# The layers (docs/ARCHITECTURE.md) are enforced by the build: each layer's
# sources compile against an include root holding only what that layer may
# include (CMakeLists.txt, ipcrpc_layer_root). This checks that those roots
# refuse an include against the direction of the layers, and still offer
# what each layer is allowed.
#   layers_test.sh CXX LAYERS_DIR
set -uo pipefail
cxx=$1 layers=$2
failures=0
# Quote includes from standard input are looked up in the current directory
# first: run from an empty one.
empty=$(mktemp -d)
trap 'rm -rf "$empty"' EXIT
cd "$empty" || exit 1

# preprocess LAYER HEADER: 0 when HEADER is found from LAYER's root.
preprocess() {
  printf '#include "%s"\n' "$2" |
    "$cxx" -std=c++20 -E -x c++ -I"$layers/$1" -o /dev/null - 2>/dev/null
}
allowed() {
  if ! preprocess "$1" "$2"; then
    echo "FAIL: layer $1 cannot include $2, which it may"; failures=$((failures + 1))
  fi
}
refused() {
  if preprocess "$1" "$2"; then
    echo "FAIL: layer $1 can include $2, against the layers"; failures=$((failures + 1))
  fi
}

allowed base base/syscall.h
refused base wire/frame.h
refused base transports/transport.h
refused base rpc/channel_core.h

allowed wire wire/frame.h
allowed wire base/syscall.h
refused wire transports/transport.h
refused wire rpc/channel_core.h

allowed transports transports/transport.h
allowed transports transports/mq/mq_transport.h
allowed transports grpc/grpc_transport.h
allowed transports ipcrpc/thread_spare.h
refused transports ipcrpc/scratch.h
refused transports wire/frame.h
refused transports rpc/channel_core.h
refused transports grpc/grpc_common.h

allowed grpc wire/frame.h
allowed grpc transports/transport.h
refused grpc rpc/channel_core.h

allowed rpc transports/transport.h
allowed rpc wire/status_details.h
allowed rpc base/runtime_dir.h
refused rpc transports/mq/mq_transport.h
refused rpc transports/stream_connection.h
refused rpc grpc/grpc_transport.h

if ((failures > 0)); then exit 1; fi
echo "layers: every root refuses what its layer may not include"
