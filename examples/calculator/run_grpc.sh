#!/usr/bin/env bash
# One calculator server on shm: and grpc:127.0.0.1 at once (a port the kernel
# picks), called by the C++ client over both and by calculator.py (Python's
# grpcio, five lines) over grpc:. Exits non-zero if any call misbehaves.
#
#   bash examples/calculator/run_grpc.sh BUILD/examples/calculator
set -euo pipefail
bin=$1
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-/usr/bin/python3}
tmp=$(mktemp -d)
shm="shm:ipcrpc-calculator-$$"
"$bin/calculator_server" --endpoint="$shm,grpc:127.0.0.1:0" --endpoints_file="$tmp/endpoints" &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$tmp"' EXIT
# The server writes the endpoints it bound once it serves (up to 10 s).
for _ in $(seq 100); do
  [[ -e $tmp/endpoints ]] && break
  kill -0 $server 2>/dev/null || { echo "run_grpc.sh: the server exited" >&2; exit 1; }
  sleep 0.1
done
grpc=$(grep '^grpc:' "$tmp/endpoints")
echo "-- C++ over $shm"
"$bin/calculator_client" --endpoint="$shm"
echo "-- C++ over $grpc"
"$bin/calculator_client" --endpoint="$grpc"
echo "-- Python (grpcio) over $grpc: $python calculator.py ${grpc#grpc:}"
answer=$(PYTHONPATH="$bin" "$python" "$here/calculator.py" "${grpc#grpc:}")
echo "$answer"
[[ $answer == "Add(40, 2) = 42" ]] || { echo "run_grpc.sh: Python got a wrong answer" >&2; exit 1; }
kill -TERM $server
wait $server
trap 'rm -rf "$tmp"' EXIT
