#!/usr/bin/env bash
# Generates golden.proto's code and compares it with tests/codegen/golden/.
#   golden_test.sh PROTOC PLUGIN              # the test: fails on any difference
#   golden_test.sh PROTOC PLUGIN --update     # rewrites the golden files
set -euo pipefail
protoc=$1 plugin=$2
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$protoc" --plugin=protoc-gen-ipcrpc="$plugin" --ipcrpc_out="$out" -I"$here/protos" \
  "$here/protos/golden.proto"
if [[ ${3:-} == --update ]]; then
  cp "$out/golden.ipcrpc.h" "$out/golden.ipcrpc.cc" "$here/golden/"
  echo "golden files updated"
  exit 0
fi
diff -u "$here/golden/golden.ipcrpc.h" "$out/golden.ipcrpc.h"
diff -u "$here/golden/golden.ipcrpc.cc" "$out/golden.ipcrpc.cc"
echo "golden files match"
