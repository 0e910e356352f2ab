#!/bin/bash
# The user-space work of a sync unary call at 64 B, in instructions, counted
# by valgrind's callgrind: it counts instructions executed, not time, so the
# figure does not move with the VM's slow and fast spells, and a change that
# adds work to the hot path shows at once (docs/PERFORMANCE.md, "Where a 64
# B call's user-space work goes").
#
#   check_instruction_budget.sh PATH/TO/ipcrpc_bench BUILD_TYPE
#
# The fifo: echo runs twice under callgrind, 1000 and 4000 calls; each
# process's instructions per call are the difference of the two runs'
# totals over the 3000 calls between them (start-up, connection set-up and
# shut-down cancel out). The client's figure includes the benchmark's own
# loop (its clock reads and histogram, about 400 instructions a call); the
# server's is all its threads, its loop's Asio machinery included. The
# server's handler is kept inline (IPCRPC_BENCH_INLINE_LIMIT_US): under
# valgrind it runs 50x slower and would otherwise move to a handler thread
# some of the time.
#
# Budgets (2026-12-03: client 4,970, server 4,600; before that day's trims
# 5,360 and 5,750, which fail here): client 5,400, server 5,000.
#
# Exits 77 (ctest: skipped, and says why) without valgrind, or for a build
# that is not optimized (the counts are those of RelWithDebInfo or Release);
# 1 over budget or when a run fails.
set -u
bench=$1
build_type=${2:-}
client_budget=5400
server_budget=5000

case $build_type in
  RelWithDebInfo | Release) ;;
  *)
    echo "SKIPPED: the budget is for an optimized build (this one: '${build_type}')"
    exit 77
    ;;
esac
if ! command -v valgrind > /dev/null; then
  echo "SKIPPED: valgrind is not installed (scripts/dev.sh installs it)"
  exit 77
fi

dir=$(mktemp -d /tmp/ipcrpc-instructions.XXXXXX)
trap 'rm -rf "$dir"' EXIT

# Prints "client_total server_total" for a run of $1 calls.
run() {
  local calls=$1 log=$dir/log-$1
  IPCRPC_BENCH_INLINE_LIMIT_US=1000000 valgrind --tool=callgrind --trace-children=yes \
    --callgrind-out-file="$dir/out-$calls.%p" \
    "$bench" --transports fifo --sizes 64 --pin none --only rpc --calls "$calls" > "$log" 2>&1
  if ! grep -q "^rpc fifo 64 " "$log"; then
    echo "FAIL: the run of $calls calls printed no result" >&2
    cat "$log" >&2
    return 1
  fi
  # Each process's "Command:" line names it (the server runs with --serve=)
  # and its "Collected :" line gives its instructions.
  local client="" server="" pid command total
  while read -r pid command; do
    total=$(grep -E "^==$pid== Collected : [0-9]+" "$log" | grep -oE "[0-9]+$")
    if [[ -z $total ]]; then continue; fi
    if [[ $command == *"--serve="* ]]; then
      server=$total
    else
      client=$total
    fi
  done < <(sed -nE 's/^==([0-9]+)== Command: (.*)$/\1 \2/p' "$log")
  if [[ -z $client || -z $server ]]; then
    echo "FAIL: no instruction count for the client or the server ($calls calls)" >&2
    cat "$log" >&2
    return 1
  fi
  echo "$client $server"
}

short=$(run 1000) || exit 1
long=$(run 4000) || exit 1
read -r client_short server_short <<<"$short"
read -r client_long server_long <<<"$long"
client=$(((client_long - client_short) / 3000))
server=$(((server_long - server_short) / 3000))
echo "instructions per 64 B fifo call: client=$client (budget $client_budget)" \
  "server=$server (budget $server_budget)"
status=0
if ((client <= 0 || server <= 0)); then
  echo "FAIL: a count that cannot be (the longer run counted less)"
  status=1
fi
if ((client > client_budget)); then
  echo "FAIL: the client runs $client instructions a call, over its budget of $client_budget"
  status=1
fi
if ((server > server_budget)); then
  echo "FAIL: the server runs $server instructions a call, over its budget of $server_budget"
  status=1
fi
exit $status
