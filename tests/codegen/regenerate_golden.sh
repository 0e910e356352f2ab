#!/usr/bin/env bash
# Rewrites tests/codegen/golden/ from the current plugin (build it first):
#   bash tests/codegen/regenerate_golden.sh [BUILD_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../../build}
exec bash "$here/golden_test.sh" "$(command -v protoc)" "$build/protoc-gen-ipcrpc" --update
