#!/usr/bin/env bash
# The Bazel build's one entry point, for people and CI, as root on Debian 12:
#
#   bash bazel-compat/run.sh                  # install what is missing, bazel test //...
#   bash bazel-compat/run.sh //:ipcrpc_cli    # ... or other targets / bazel test flags
#
# Installs Debian's bazel-bootstrap (4.2.3) and the libraries if missing, then
# builds and tests everything in bazel-compat/ offline (.bazelrc forbids
# downloads). Bazel's output goes to ~/.cache/bazel; only the bazel-*
# symlinks land in bazel-compat/.
#
# Environment: JOBS (default 2): parallel actions and CPUs Bazel may use.
set -euo pipefail
cd "$(dirname "$0")"

PACKAGES=(bazel-bootstrap bazel-rules-java g++ pkg-config
          libprotobuf-dev libprotoc-dev protobuf-compiler
          libabsl-dev libasio-dev libgtest-dev libgmock-dev)

source ../scripts/install_missing.sh

install_missing "${PACKAGES[@]}"

JOBS=${JOBS:-2}
start=$SECONDS
log=$(mktemp)
trap 'rm -f "$log"' EXIT
targets=("$@")
((${#targets[@]})) || targets=(//...)

set +e
bazel test --jobs="$JOBS" --local_cpu_resources="$JOBS" "${targets[@]}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

# One closing line, counted from Bazel's per-test summary.
passed=$(grep -cE '^(//|@)[^ ]+ +(\(cached\) )?PASSED' "$log" || true)
failed=$(grep -cE '^(//|@)[^ ]+ +(\(cached\) )?(FAILED|TIMEOUT|NO STATUS|FLAKY|INCOMPLETE|REMOTE FAILURE|FAILED TO BUILD)' "$log" || true)
echo "run.sh: bazel test exited $status after $((SECONDS - start)) s"
echo "bazel: $passed passed, $failed failed"
exit "$status"
