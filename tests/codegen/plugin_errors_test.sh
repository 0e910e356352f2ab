#!/usr/bin/env bash
# The plugin refuses what it cannot do, with a message that names it, and
# generates what it can.
set -uo pipefail
protoc=$1 plugin=$2
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
failed=0

expect_error() {  # expect_error DESCRIPTION PATTERN protoc-args...
  local what=$1 pattern=$2
  shift 2
  local log
  if log=$("$protoc" --plugin=protoc-gen-ipcrpc="$plugin" "$@" 2>&1); then
    echo "FAIL $what: protoc succeeded"; failed=1; return
  fi
  if ! grep -q -- "$pattern" <<<"$log"; then
    echo "FAIL $what: message does not match '$pattern': $log"; failed=1; return
  fi
  echo "ok   $what: $log"
}

# Streaming methods generate (they were refused before streams existed).
if "$protoc" --plugin=protoc-gen-ipcrpc="$plugin" --ipcrpc_out="$out" -I"$here/protos" \
    "$here/protos/streaming.proto" &&
   grep -q 'ClientReaderWriter<::stream::M, ::stream::M> Talk' "$out/streaming.ipcrpc.h"; then
  echo "ok   streaming method"
else
  echo "FAIL streaming method"; failed=1
fi
expect_error "unknown parameter" "unknown parameter 'bogus'" \
  --ipcrpc_out=bogus=1:"$out" -I"$here/protos" "$here/protos/golden.proto"
# A known parameter works.
if "$protoc" --plugin=protoc-gen-ipcrpc="$plugin" --ipcrpc_out=include_prefix=gen:"$out" \
    -I"$here/protos" "$here/protos/golden.proto" &&
   grep -q '#include "gen/golden.pb.h"' "$out/golden.ipcrpc.h"; then
  echo "ok   include_prefix"
else
  echo "FAIL include_prefix"; failed=1
fi
# Run by hand, it answers --help and --version, and names a bad argument.
if "$plugin" --help | grep -q -- "--ipcrpc_out" && "$plugin" --version | grep -q "^protoc-gen-ipcrpc [0-9]"; then
  echo "ok   --help, --version"
else
  echo "FAIL --help or --version"; failed=1
fi
if log=$("$plugin" --bogus 2>&1) || ! grep -q "unknown argument '--bogus'" <<<"$log"; then
  echo "FAIL unknown argument: $log"; failed=1
else
  echo "ok   unknown argument: $log"
fi
exit $failed
