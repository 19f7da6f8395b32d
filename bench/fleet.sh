#!/usr/bin/env bash
# bench/fleet.sh: a fleet of edges on loopback. Two measurements:
#
# 1. Shield tier. An origin that takes $ORIGIN_DELAY_MS per request (a far origin;
#    examples/bench_origin.rs, counting requests and distinct objects), three front edges, and
#    a Zipf workload ($REQUESTS requests over $OBJECTS objects, exponent $ZIPF_S, spread in turn
#    over the fronts, examples/fleet_load.rs). Run once with the fronts going to the origin
#    directly, once through two shield edges (consistent hashing on the cache key, fallback to
#    the origin). Reported: origin requests per distinct object, front misses, and time to first
#    byte of front misses (p50/p90/p99) and of all requests, as the client sees them.
# 2. Purge propagation. A real nats-server with JetStream and $EDGES edges sharing purges; the
#    client sends $PURGES purges to the first edge's admin API one at a time, and times how long
#    after each answer every other edge has applied it (polling their metrics every 0.5 ms).
#
#   bash bench/fleet.sh                       # both (~2 min)
#   PARTS=purge EDGES=8 bash bench/fleet.sh
#   ORIGIN_DELAY_MS=50 ZIPF_S=1.1 PARTS=shield bash bench/fleet.sh
#
# A simulation on one machine: every edge, the origin and the client share 2 cores, and the
# network between tiers is loopback (no delay), so the TTFB gap between tiers is the origin's
# delay, not a real inter-site round trip. Only processes started here are stopped (by PID).
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
RUN=${RUN:-/tmp/edge-bench-fleet}
PARTS=${PARTS:-"shield purge"}
ORIGIN_DELAY_MS=${ORIGIN_DELAY_MS:-20}
OBJECTS=${OBJECTS:-10000}
REQUESTS=${REQUESTS:-30000}
ZIPF_S=${ZIPF_S:-0.9}
CONCURRENCY=${CONCURRENCY:-4}
EDGES=${EDGES:-5}
PURGES=${PURGES:-200}
BASE=19400

source "$HERE/lib.sh"
mkdir -p "$RUN"
install_missing curl:curl
[[ $PARTS != *purge* ]] || command -v nats-server >/dev/null || [[ -x /usr/sbin/nats-server ]] \
  || install_missing nats-server:nats-server
NATS=$(command -v nats-server || echo /usr/sbin/nats-server)

log "building edge, bench_origin and fleet_load (release)"
(cd "$ROOT" && cargo build --release --quiet --bin edge --example bench_origin --example fleet_load) \
  || die "build failed"
EDGE=${EDGE_BIN:-$ROOT/target/release/edge}
ORIGIN=$ROOT/target/release/examples/bench_origin
LOAD=$ROOT/target/release/examples/fleet_load

# edge NAME PORT ADMIN_PORT BODY: starts an edge on a config of its own.
edge() {
  local name=$1 port=$2 admin=$3 body=$4
  printf 'server: {threads: 1, pid_file: %s, upgrade_sock: %s}\nlisten: ["127.0.0.1:%s"]\nadmin: {listen: "127.0.0.1:%s"}\n%s' \
    "$RUN/$name.pid" "$RUN/$name.sock" "$port" "$admin" "$body" >"$RUN/$name.yaml"
  launch "$name" "$port" "$EDGE" -c "$RUN/$name.yaml"
  wait_port "$admin" || die "$name: no admin listener"
}

origin_stat() { curl -s "http://127.0.0.1:$BASE/__stats" | awk -v k="$1" '$1==k{print $2}'; }

shield_run() { # shield_run LABEL WITH_SHIELD(0|1)
  local label=$1 with=$2 fronts=() i
  launch origin $BASE "$ORIGIN" 127.0.0.1:$BASE "$ORIGIN_DELAY_MS"
  local web="  web: {servers: [\"127.0.0.1:$BASE\"]}"
  if ((with)); then
    for i in 1 2; do
      edge "s$i" $((BASE + 10 + i)) $((BASE + 20 + i)) \
        "cluster: {node: s$i}"$'\n'"origins:"$'\n'"$web"$'\n'"routes: [{origin: web}]"$'\n'
    done
    local up="  shield: {servers: [\"127.0.0.1:$((BASE + 11))\", \"127.0.0.1:$((BASE + 12))\"], balance: consistent_hash, shield: {fallback: web}}"$'\n'"$web"
    local route=shield
  else
    local up=$web route=web
  fi
  for i in 1 2 3; do
    edge "f$i" $((BASE + 30 + i)) $((BASE + 40 + i)) \
      "cluster: {node: f$i}"$'\n'"origins:"$'\n'"$up"$'\n'"routes: [{origin: $route}]"$'\n'
    fronts+=("127.0.0.1:$((BASE + 30 + i))")
  done
  local out
  out=$("$LOAD" zipf "$(IFS=,; echo "${fronts[*]}")" "$OBJECTS" "$REQUESTS" "$ZIPF_S" "$CONCURRENCY" 7) \
    || die "fleet_load failed"
  local reqs objs
  reqs=$(origin_stat requests); objs=$(origin_stat objects)
  echo "$label $reqs $objs $out" >>"$RUN/shield.txt"
  for n in f1 f2 f3 s1 s2 origin; do stop "$n"; done
}

if [[ $PARTS == *shield* ]]; then
  : >"$RUN/shield.txt"
  log "shield: $REQUESTS requests, $OBJECTS objects, Zipf s=$ZIPF_S, origin ${ORIGIN_DELAY_MS} ms, 3 fronts"
  shield_run direct 0
  shield_run shield 1
  echo
  echo "| fronts go to | origin requests | objects fetched | origin requests per object | front misses | of which shield hits | front-miss TTFB p50 / p90 / p99 (ms) | TTFB p50 of shield hits / origin fetches (ms) | all TTFB p50 / p99 (ms) | errors |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  while read -r label reqs objs rest; do
    declare -A f=(); for kv in $rest; do f[${kv%%=*}]=${kv#*=}; done
    printf '| %s | %s | %s | %.2f | %s | %s | %s / %s / %s | %s / %s | %s / %s | %s |\n' \
      "$([[ $label == shield ]] && echo "2 shields" || echo "the origin")" "$reqs" "$objs" \
      "$(awk -v r="$reqs" -v o="$objs" 'BEGIN{print r/o}')" "${f[front_misses]}" "${f[shield_hits]}" \
      "${f[miss_ttfb_p50]}" "${f[miss_ttfb_p90]}" "${f[miss_ttfb_p99]}" \
      "${f[shield_hit_ttfb_p50]}" "${f[origin_ttfb_p50]}" "${f[ttfb_p50]}" "${f[ttfb_p99]}" "${f[errors]}"
    unset f
  done <"$RUN/shield.txt"
fi

if [[ $PARTS == *purge* ]]; then
  log "purge: $PURGES purges from one edge to $((EDGES - 1)) others over NATS JetStream"
  rm -rf "$RUN/nats"; mkdir -p "$RUN/nats"
  launch nats $((BASE + 50)) "$NATS" -js -a 127.0.0.1 -p $((BASE + 50)) -sd "$RUN/nats"
  admins=()
  for ((i = 1; i <= EDGES; i++)); do
    edge "p$i" $((BASE + 60 + i)) $((BASE + 80 + i)) \
      "cluster: {node: p$i, nats: {url: \"nats://127.0.0.1:$((BASE + 50))\", stream: BENCH_PURGE}}"$'\n'"origins: {web: {servers: [\"127.0.0.1:$BASE\"]}}"$'\n'"routes: [{origin: web}]"$'\n'
    admins+=("127.0.0.1:$((BASE + 80 + i))")
  done
  for ((i = 1; i <= EDGES; i++)); do
    for _ in $(seq 100); do
      curl -s "http://${admins[i-1]}/metrics" | grep -q '^edge_cluster_nats_connected{stream="BENCH_PURGE"} 1' && break
      sleep 0.1
    done
  done
  out=$("$LOAD" purge "$(IFS=,; echo "${admins[*]}")" "$PURGES") || die "fleet_load purge failed"
  echo
  echo "| edges | purges | applications timed | p50 (ms) | p99 (ms) | max (ms) |"
  echo "|---:|---:|---:|---:|---:|---:|"
  declare -A f=(); for kv in $out; do f[${kv%%=*}]=${kv#*=}; done
  echo "| ${f[edges]} | ${f[purges]} | ${f[applied]} | ${f[p50_ms]} | ${f[p99_ms]} | ${f[max_ms]} |"
fi
