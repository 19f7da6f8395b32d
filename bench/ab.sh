#!/usr/bin/env bash
# bench/ab.sh: compares builds in alternation, several rounds, and prints the median of each
# figure: single runs on a shared 2-core machine swing by ±15-20%, alternation spreads the drift
# over every variant, and medians ignore the odd disturbed run.
#
#   cp target/release/edge /tmp/edge-before      # then change, rebuild, and:
#   ROUNDS=5 SCENARIOS="pass1k hit1k" bash bench/ab.sh pingora /tmp/edge-before target/release/edge
#
# A variant is `nginx`, `pingora` (the bare Pingora anchor) or the path of an edge binary;
# `PATH:nocache` runs that binary with its route's cache off (what the proxy path alone costs).
# DURATION, WARMUP, CONNS, ... as in bench/run.sh. Output: one line per scenario and variant
# with the medians of req/s, req/CPU-s and p99 ms, the req/CPU-s ratio to the first variant,
# and the CPU µs per request spent in user space and in the kernel.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROUNDS=${ROUNDS:-5}
export DURATION=${DURATION:-5} WARMUP=${WARMUP:-1}
SCENARIOS=${SCENARIOS:-"hit1k hit100k pass1k"}
(($# >= 2)) || { echo "usage: bash bench/ab.sh VARIANT VARIANT [...]" >&2; exit 2; }
OUT=${OUT:-/tmp/edge-ab}; rm -rf "$OUT"; mkdir -p "$OUT"

for r in $(seq "$ROUNDS"); do
  i=0
  for v in "$@"; do
    i=$((i + 1))
    case $v in
      nginx | pingora) env PROXIES="$v" SCENARIOS="$SCENARIOS" RUN="$OUT/run" bash "$HERE/run.sh" >/dev/null 2>"$OUT/log" ;;
      *:nocache) env PROXIES=edge EDGE_BIN="$(realpath "${v%:nocache}")" EDGE_NOCACHE=1 SCENARIOS="$SCENARIOS" \
           RUN="$OUT/run" bash "$HERE/run.sh" >/dev/null 2>"$OUT/log" ;;
      *) env PROXIES=edge EDGE_BIN="$(realpath "$v")" SCENARIOS="$SCENARIOS" RUN="$OUT/run" \
           bash "$HERE/run.sh" >/dev/null 2>"$OUT/log" ;;
    esac || { cat "$OUT/log" >&2; exit 1; }
    # | proxy | scenario | req/s | req/CPU-s | p50 | p99 | ...
    awk -F'|' -v i="$i" 'NR > 2 {gsub(/ /, ""); split($11, us, "+"); print i, $3, $4, $5, $7, us[1], us[2]}' "$OUT/run/table.md" >>"$OUT/rows"
    echo "round $r: $v done" >&2
  done
done

median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
printf '%-10s %-40s %10s %10s %8s %8s %12s\n' scenario variant "req/s" "req/CPU-s" "p99 ms" "ratio" "µs user+sys"
for s in $SCENARIOS; do
  base=""
  i=0
  for v in "$@"; do
    i=$((i + 1))
    rows=$(awk -v i="$i" -v s="$s" '$1 == i && $2 == s' "$OUT/rows")
    rps=$(awk '{print $3}' <<<"$rows" | median)
    cpu=$(awk '{print $4}' <<<"$rows" | median)
    p99=$(awk '{print $5}' <<<"$rows" | median)
    usr=$(awk '{print $6}' <<<"$rows" | median)
    sys=$(awk '{print $7}' <<<"$rows" | median)
    [[ -z $base ]] && base=$cpu
    printf '%-10s %-40s %10.0f %10.0f %8.2f %8.2f %12s\n' "$s" "$v" "$rps" "$cpu" "$p99" \
      "$(awk -v a="$cpu" -v b="$base" 'BEGIN{print a / b}')" "$usr+$sys"
  done
done
