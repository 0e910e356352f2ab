#!/usr/bin/env bash
# Builds tests/codegen/consumer against ipcrpc, in-tree (add_subdirectory) or
# installed (cmake --install, then find_package), and runs it.
#   consumer_test.sh in-tree SOURCE_DIR
#   consumer_test.sh installed SOURCE_DIR BUILD_DIR
set -euo pipefail
mode=$1 source=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
case "$mode" in
  in-tree)
    cmake -S "$source/tests/codegen/consumer" -B "$work/build" "${launcher[@]}" \
      -DIPCRPC_SOURCE_DIR="$source" >"$work/configure.log" || { cat "$work/configure.log"; exit 1; }
    ;;
  installed)
    cmake --install "$3" --prefix "$work/prefix" >"$work/install.log"
    cmake -S "$source/tests/codegen/consumer" -B "$work/build" "${launcher[@]}" \
      -DCMAKE_PREFIX_PATH="$work/prefix" >"$work/configure.log" || { cat "$work/configure.log"; exit 1; }
    ;;
  *) echo "usage: $0 in-tree|installed SOURCE [BUILD]" >&2; exit 2 ;;
esac
cmake --build "$work/build" -j 2 >"$work/build.log" 2>&1 || { tail -50 "$work/build.log"; exit 1; }
"$work/build/consumer"
