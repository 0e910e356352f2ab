#!/bin/bash
# ipcrpc_bench --uring_floor (bench/raw_uring.h) still measures what it says:
# the raw pipe and socket ping-pongs over io_uring, at 64 B (each side one
# io_uring_enter a round trip) and at 300000 B (more than a 256 KiB pipe
# holds: writes and reads come back short and the rest is sent on), every
# round trip complete (a ping-pong that fails prints no line).
#
#   check_uring_floor.sh PATH/TO/ipcrpc_bench
#
# Exits 77 (ctest: skipped, and says why) where io_uring is refused (a
# seccomp filter, kernel.io_uring_disabled); 1 when a round trip failed, a
# line is missing or the 64 B count is not 1 a side. The timeout's firing
# is not exercised here (the deadline is 10 s away).
set -u
bench=$1
out=$("$bench" --transports pipe,unix --sizes 64,300000 --calls 300 --pin none --only raw \
  --uring_floor 2>&1)
echo "$out"
# Refused outright (a seccomp filter, kernel.io_uring_disabled, no
# io_uring in the kernel): skipped. Any other setup error is a failure.
if grep -qE -- "--uring_floor: io_uring_setup: (Operation not permitted|Function not implemented)" \
  <<<"$out"; then
  echo "SKIPPED: io_uring is refused here"
  exit 77
fi
status=0
# A round trip that failed (an error, a timeout, an answer that did not
# bring its request's number back) ends the measurement early: its line
# would still print.
if grep -q -- "--uring_floor: .*failed\|--uring_floor: io_uring" <<<"$out"; then
  echo "FAIL: the io_uring ping-pong failed"
  status=1
fi
for want in "pipe 64 " "pipe 300000 " "unix 64 " "unix 300000 "; do
  if ! grep -q "^# raw_uring $want" <<<"$out"; then
    echo "FAIL: no '# raw_uring $want' line"
    status=1
  fi
done
# Counted (syscalls=n/a where the kernel refuses to count): one
# io_uring_enter a side for a 64 B round trip.
for transport in pipe unix; do
  line=$(grep "^# raw_uring $transport 64 " <<<"$out")
  if [[ $line == *"syscalls="[0-9]* && $line != *"client=1.00 server=1.00"* ]]; then
    echo "FAIL: $transport 64 B over io_uring is not one system call a side: $line"
    status=1
  fi
done
exit $status
