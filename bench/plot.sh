#!/usr/bin/env bash
# Renders ipcrpc_bench output to a chart: p50 round-trip latency per
# transport and payload size, rpc beside raw, one panel per file.
#   bash bench/plot.sh OUT.svg split.txt [same.txt]
# Installs gnuplot (Debian's gnuplot-nox) with apt-get if it is missing.
set -euo pipefail
out=$1
shift
if ! command -v gnuplot >/dev/null; then
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq gnuplot-nox
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
plots=()
for input in "$@"; do
  pin=$(sed -n 's/.*--pin \([a-z]*\).*/\1/p' "$input" | head -1)
  # rows: "transport/size rpc_p50 raw_p50"
  awk '
    $1 == "rpc" || $1 == "raw" {
      key = $2 "/" $3
      if (!(key in seen)) { order[++n] = key; seen[key] = 1 }
      split($4, p, "="); v[$1, key] = p[2]
    }
    END { for (i = 1; i <= n; i++) print order[i], v["rpc", order[i]], v["raw", order[i]] }
  ' "$input" >"$work/$pin.dat"
  plots+=("$pin")
done
{
  echo "set terminal ${out##*.} size 1100,$((380 * ${#plots[@]})) font ',10'"
  echo "set output '$out'"
  echo "set multiplot layout ${#plots[@]},1"
  echo "set style data histograms; set style histogram clustered gap 1; set style fill solid 0.8 border -1"
  echo "set logscale y; set ylabel 'p50 round trip (us, log)'; set grid ytics"
  echo "set xtics rotate by -35 left nomirror; set bmargin 5; set key top left"
  for pin in "${plots[@]}"; do
    echo "set title 'ipcrpc rpc vs raw primitive, --pin $pin (transport/payload bytes)'"
    echo "plot '$work/$pin.dat' using 2:xtic(1) title 'rpc', '' using 3 title 'raw'"
  done
  echo "unset multiplot"
} >"$work/plot.gp"
gnuplot "$work/plot.gp"
echo "wrote $out"
