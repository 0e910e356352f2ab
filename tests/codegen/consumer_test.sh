#!/usr/bin/env bash
# Builds tests/codegen/consumer against ipcrpc, in-tree (add_subdirectory) or
# installed (cmake --install, then find_package), and runs it. Installed, it
# also checks that ipcrpc_add_proto_library names what is wrong with a
# project whose imports cannot be satisfied.
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
    # A unity build, each target one translation unit: it builds ipcrpc
    # again, and this way takes 58 s instead of 110 s without ccache. The
    # installed mode below builds the plain way, as does CI's first tree;
    # this one keeps all of the library's files free of clashing file-local
    # names, as a user's unity build needs.
    cmake -S "$source/tests/codegen/consumer" -B "$work/build" "${launcher[@]}" \
      -DCMAKE_UNITY_BUILD=ON -DCMAKE_UNITY_BUILD_BATCH_SIZE=0 \
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

[[ $mode == installed ]] || exit 0
# Bad projects: configuring fails, naming the problem.
expect_configure_error() {  # expect_configure_error NAME PATTERN CMAKE-LINES
  local dir="$work/bad-$1"
  mkdir -p "$dir/p"
  printf 'cmake_minimum_required(VERSION 3.24)\nproject(bad LANGUAGES CXX)\nfind_package(ipcrpc CONFIG REQUIRED)\n%s\n' "$3" >"$dir/CMakeLists.txt"
  printf 'syntax = "proto3";\npackage p;\nimport "p/missing.proto";\n' >"$dir/p/a.proto"
  printf 'syntax = "proto3";\npackage q;\nmessage M {}\n' >"$dir/p/b.proto"
  if cmake -S "$dir" -B "$dir/build" -DCMAKE_PREFIX_PATH="$work/prefix" >"$dir/log" 2>&1; then
    echo "FAIL $1: configured"; exit 1
  fi
  if ! tr -s ' \n' ' ' <"$dir/log" | grep -q -- "$2"; then
    echo "FAIL $1: no '$2' in:"; cat "$dir/log"; exit 1
  fi
  echo "ok   $1"
}
expect_configure_error missing-import 'p/a.proto imports "p/missing.proto", which no DEPS library generates' \
  'ipcrpc_add_proto_library(a PROTOS p/a.proto)'
expect_configure_error bad-deps 'DEPS nothing is not a target' \
  'ipcrpc_add_proto_library(b PROTOS p/b.proto DEPS nothing)'
expect_configure_error not-a-proto-library 'DEPS ipcrpc::ipcrpc is not an ipcrpc_add_proto_library target' \
  'ipcrpc_add_proto_library(b PROTOS p/b.proto DEPS ipcrpc::ipcrpc)'
expect_configure_error missing-proto 'PROTOS p/none.proto: no such file' \
  'ipcrpc_add_proto_library(b PROTOS p/none.proto)'
