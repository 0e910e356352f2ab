#!/usr/bin/env bash
# One entry point for people and CI, as root on Debian 12:
#
#   bash scripts/dev.sh example   # install what is missing, build, run the echo pair
#   bash scripts/dev.sh test      # install what is missing, build, run every test
#   bash scripts/dev.sh fuzz 600  # the libFuzzer targets, 600 s each (clang)
#   bash scripts/dev.sh tsa       # the runtime built by clang with -Wthread-safety -Werror
#
# Environment: BUILD_DIR (default build), IPCRPC_WERROR=ON, IPCRPC_SANITIZE=address|thread|fuzzer,
# BUILD_TYPE (default RelWithDebInfo), JOBS (default 2), CTEST_JOBS (tests at once; default
# JOBS), IPCRPC_CMAKE_ARGS (more -D options),
# LINKER=lld (test: link with LLVM's lld, 3-5 times faster than ld.bfd, which
# matters for tests linked with a sanitizer's runtime; kept in the tree's cache),
# IPCRPC_CTEST_ARGS (more ctest options), CXX (clang++-14: a clang build),
# FUZZ_BUILD_DIR (fuzz: a tree already configured with IPCRPC_SANITIZE=fuzzer to
# run the fuzzers from; default build-fuzz, configured here).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(cmake g++ make pkg-config ccache
          libprotobuf-dev libprotoc-dev protobuf-compiler
          libabsl-dev libasio-dev libgtest-dev libgmock-dev libbenchmark-dev
          libgrpc++-dev protobuf-compiler-grpc python3-grpcio openssl
          valgrind)

source scripts/install_missing.sh

# A build by clang (CXX=clang++-14) needs clang and its sanitizer runtimes.
[[ ${CXX:-} == clang++-14 ]] && PACKAGES+=(clang-14 libclang-rt-14-dev)
# LINKER=lld: Debian's lld package (ld.lld, for g++ and clang++ alike).
link_args=()
if [[ -n ${LINKER:-} ]]; then
  [[ $LINKER == lld ]] && PACKAGES+=(lld)
  link_args=(-DCMAKE_EXE_LINKER_FLAGS="-fuse-ld=$LINKER" -DCMAKE_SHARED_LINKER_FLAGS="-fuse-ld=$LINKER")
fi

BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-2}

# The tests' precompiled header (IPCRPC_TESTS_PCH) defeats ccache unless it
# may ignore the header's macros and time stamps (ccache's manual,
# "Precompiled headers"); added to what the caller's environment says. (A
# build run without dev.sh just compiles those files afresh.)
export CCACHE_SLOPPINESS=${CCACHE_SLOPPINESS:+$CCACHE_SLOPPINESS,}pch_defines,time_macros

configure_and_build() {
  local launcher=()
  command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  cmake -S . -B "$BUILD_DIR" "${launcher[@]}" \
    -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}" \
    -DIPCRPC_WERROR="${IPCRPC_WERROR:-OFF}" \
    -DIPCRPC_SANITIZE="${IPCRPC_SANITIZE:-}" "${link_args[@]}" ${IPCRPC_CMAKE_ARGS:-}
  cmake --build "$BUILD_DIR" -j "$JOBS"
}

# Runs the calculator server on ENDPOINT in the background, the client
# against it, then stops the server (SIGTERM: a clean shutdown) and checks
# that FILE, if given, is gone.
run_pair() {
  local bin=$1 endpoint=$2 file=${3:-}
  "$bin/calculator_server" --endpoint="$endpoint" &
  local server=$!
  trap 'kill $server 2>/dev/null || true' EXIT
  # The client waits (up to 10 s) for the server to be listening.
  "$bin/calculator_client" --endpoint="$endpoint" --wait_for_server_ms=10000
  kill -TERM "$server"
  wait "$server"
  trap - EXIT
  if [[ -n $file && -e $file ]]; then
    echo "dev.sh: $file left behind" >&2
    exit 1
  fi
}

run_example() {
  local bin="$BUILD_DIR/examples/calculator"
  local tmp="${TMPDIR:-/tmp}"
  echo "== calculator over shm: (shared-memory rings; the fastest path)"
  run_pair "$bin" "shm:ipcrpc-calculator-$$"
  echo "== calculator over pipe: (the client spawns the server as its child)"
  "$bin/calculator_client" --endpoint=pipe: --server="$bin/calculator_server"
  echo "== calculator over unix: (a server process and a client process)"
  run_pair "$bin" "unix:$tmp/ipcrpc-calculator-$$.sock" "$tmp/ipcrpc-calculator-$$.sock"
  echo "== calculator over fifo: (a server FIFO, a private FIFO pair per client)"
  run_pair "$bin" "fifo:$tmp/ipcrpc-calculator-$$.fifo" "$tmp/ipcrpc-calculator-$$.fifo"
  echo "== calculator over mq: (queue /NAME, a reply queue per client)"
  run_pair "$bin" "mq:ipcrpc-calculator-$$"
  if grep -q '^IPCRPC_GRPC:BOOL=ON' "$BUILD_DIR/CMakeCache.txt"; then
    echo "== calculator on shm: and grpc:127.0.0.1 at once: C++ over both, Python (grpcio) over grpc:"
    bash examples/calculator/run_grpc.sh "$bin"
  fi
  echo "== every transport works"
  bash examples/pubsub/run.sh "$BUILD_DIR/examples/pubsub"
}

run_tests() {
  # Sanitizer runtimes: fail on the first report, in every child process too.
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
  export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1:suppressions=$PWD/tests/tsan.supp}
  # bench.syscall_budget counts system calls with the kernel's
  # raw_syscalls tracepoint, whose id is read from tracefs: a fresh Debian
  # VM may not have it mounted (the test then skips, or fails in CI).
  if [[ $EUID -eq 0 && -d /sys/kernel/tracing && ! -e /sys/kernel/tracing/events ]]; then
    mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null ||
      echo "dev.sh: cannot mount tracefs on /sys/kernel/tracing; bench.syscall_budget cannot count" >&2
  fi
  # IPCRPC_CTEST_ARGS: extra ctest arguments, e.g. "-LE consumer".
  # shellcheck disable=SC2086
  ctest --test-dir "$BUILD_DIR" --output-on-failure -j "${CTEST_JOBS:-$JOBS}" --timeout 900 ${IPCRPC_CTEST_ARGS:-}
}

# libFuzzer targets (fuzz/), built with clang in build-fuzz/, each run for
# SECONDS on a copy of its checked-in corpus (fuzz/corpus/TARGET). A crash
# leaves its input in build-fuzz/ and fails the run.
run_fuzz() {
  local seconds=${1:-30}
  PACKAGES+=(clang-14 libclang-rt-14-dev)
  install_missing "${PACKAGES[@]}"
  local dir=${FUZZ_BUILD_DIR:-build-fuzz}
  if ! grep -qs '^IPCRPC_SANITIZE:STRING=fuzzer$' "$dir/CMakeCache.txt"; then
    CXX=clang++-14 cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DIPCRPC_SANITIZE=fuzzer \
      -DIPCRPC_BUILD_TESTS=OFF -DIPCRPC_BUILD_EXAMPLES=OFF -DIPCRPC_BUILD_BENCH=OFF \
      $(command -v ccache >/dev/null && echo -DCMAKE_CXX_COMPILER_LAUNCHER=ccache) >/dev/null
  fi
  local targets=(frame_fuzzer mq_reassembly_fuzzer shm_ring_fuzzer)
  cmake --build "$dir" -j "$JOBS" --target "${targets[@]}"
  # The targets run at once (each on its own copy of its corpus), then each
  # one's summary is printed and its outcome checked.
  local pids=() logs=() works=() status=0 i
  for target in "${targets[@]}"; do
    local work log
    work=$(mktemp -d)
    log=$(mktemp)
    cp -r "fuzz/corpus/$target/." "$work/"
    (cd "$dir" && exec "./fuzz/$target" "$work" -max_total_time="$seconds" -print_final_stats=1 \
      -artifact_prefix="$target-" >"$log" 2>&1) &
    pids+=($!)
    logs+=("$log")
    works+=("$work")
  done
  for i in "${!targets[@]}"; do
    local target=${targets[$i]}
    echo "== $target for ${seconds}s"
    if ! wait "${pids[$i]}"; then
      echo "dev.sh: $target failed:" >&2
      tail -30 "${logs[$i]}" >&2
      status=1
    fi
    grep -E "^#[0-9]+[[:space:]]+DONE|ERROR|SUMMARY|stat::number_of_executed_units" "${logs[$i]}" || true
    rm -rf "${works[$i]}" "${logs[$i]}"
    if compgen -G "$dir/$target-crash-*" >/dev/null || compgen -G "$dir/$target-leak-*" >/dev/null ||
       compgen -G "$dir/$target-timeout-*" >/dev/null; then
      echo "dev.sh: $target found a failing input (in $dir/)" >&2
      status=1
    fi
  done
  return "$status"
}

# The runtime (library, tools, gRPC bridge; not the tests) built with
# clang's -Wthread-safety and -Werror in build-clang-tsa/: the lock
# annotations (ABSL_GUARDED_BY and the rest, on base/mutex.h's Mutex) are
# checked, and a field read without its lock fails the build. Debug: the
# analysis does not depend on optimisation, and Debug compiles faster.
run_tsa() {
  PACKAGES+=(clang-14)
  install_missing "${PACKAGES[@]}"
  local dir=build-clang-tsa
  CXX=clang++-14 cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Debug -DIPCRPC_WERROR=ON \
    -DCMAKE_CXX_FLAGS=-Wthread-safety \
    -DIPCRPC_BUILD_TESTS=OFF -DIPCRPC_BUILD_EXAMPLES=OFF -DIPCRPC_BUILD_BENCH=OFF \
    $(command -v ccache >/dev/null && echo -DCMAKE_CXX_COMPILER_LAUNCHER=ccache) >/dev/null
  cmake --build "$dir" -j "$JOBS"
}

case "${1:-}" in
  example) install_missing "${PACKAGES[@]}"; configure_and_build; run_example ;;
  test) install_missing "${PACKAGES[@]}"; configure_and_build; run_tests ;;
  build-target)  # build-target TARGET: configure, build one target only
    install_missing "${PACKAGES[@]}"
    cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}" \
      -DIPCRPC_WERROR="${IPCRPC_WERROR:-OFF}" -DIPCRPC_SANITIZE="${IPCRPC_SANITIZE:-}" \
      $(command -v ccache >/dev/null && echo -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
    cmake --build "$BUILD_DIR" -j "$JOBS" --target "$2" ;;
  fuzz) run_fuzz "${2:-30}" ;;  # fuzz [SECONDS]: each libFuzzer target for SECONDS
  tsa) run_tsa ;;
  *) echo "usage: $0 example|test|build-target TARGET|fuzz [SECONDS]|tsa" >&2; exit 2 ;;
esac
