#!/usr/bin/env bash
# bench/disk.sh: hits from the disk tier beside nginx's proxy_cache on the same disk.
#
#   bash bench/disk.sh                       # ~2 minutes
#   OBJECTS=8192 DURATION=10 bash bench/disk.sh
#
# A working set of $OBJECTS objects of 16 KiB (64 MiB by default) far larger than the edge's
# memory tier ($MEMORY, 4 MiB): nearly every hit comes from the disk tier, as every nginx hit
# comes from its cache files. Both caches live on the same file system ($DISK_DIR, the
# machine's disk, not tmpfs). Per proxy: the set is filled (each object fetched once, in order),
# then wrk asks for random objects of the set:
#   warm : the files are in the page cache (hits cost the proxy's own work)
#   cold : the page cache dropped first (echo 3 > /proc/sys/vm/drop_caches; needs root): the
#          first reads of each file go to the disk
# Reported: req/s, requests per CPU-second of the proxy's processes, p50/p99, the origin's
# requests during the hit phases (should be 0) and, for the edge, where its hits came from.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
RUN=${RUN:-/tmp/edge-bench-disk}
SHM=${SHM:-/dev/shm/edge-bench-disk}
DISK_DIR=${DISK_DIR:-/var/tmp/edge-bench-disk}
DURATION=${DURATION:-5}
CONNS=${CONNS:-32}
WORKERS=${WORKERS:-2}
OBJECTS=${OBJECTS:-4096}
MEMORY=${MEMORY:-4MiB}
PROXIES=${PROXIES:-"nginx edge"}
PORT_ORIGIN=19280
declare -A PORT=([nginx]=19281 [edge]=19285)

source "$HERE/lib.sh"

install_missing nginx:nginx wrk:wrk cmake:cmake
log "building edge (release)"
(cd "$ROOT" && cargo build --release --quiet --bin edge) || die "build failed"
EDGE=${EDGE_BIN:-$ROOT/target/release/edge}

rm -rf "$RUN" "$SHM"; mkdir -p "$RUN" "$SHM/www" "$DISK_DIR"
head -c 16384 /dev/urandom | base64 -w0 | head -c 16384 >"$SHM/www/16k"

# The origin: every /o/N is the same 16 KiB file, cacheable for an hour; its access log counts
# what reaches it.
mkdir -p "$RUN/origin"
cat >"$RUN/origin/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $RUN/origin/nginx.pid; error_log $RUN/origin/error.log warn;
events { worker_connections 4096; }
http {
  sendfile on; keepalive_requests 100000; keepalive_timeout 65;
  access_log $RUN/origin/access.log combined buffer=64k flush=1s;
  server {
    listen 127.0.0.1:$PORT_ORIGIN backlog=4096;
    root $SHM/www;
    location /o/ { add_header Cache-Control "max-age=3600"; try_files /16k =404; }
  }
}
CONF
launch origin $PORT_ORIGIN nginx -e "$RUN/origin/error.log" -p "$RUN/origin" -c "$RUN/origin/nginx.conf"

start_proxy() {  # name
  local name=$1 port=${PORT[$1]} d="$RUN/$1"; rm -rf "$d" "$DISK_DIR/$1"; mkdir -p "$d" "$DISK_DIR/$1"
  case $name in
  nginx) nginx_cache_proxy "$d" "$port" "$PORT_ORIGIN" "$DISK_DIR/nginx" 1g 1h ;;
  edge)
    { edge_conf_head "$d" "$port"; cat <<CONF
cache:
  max_size: $MEMORY
  disk: {path: $DISK_DIR/edge, max_size: 1GiB}
origins:
  o: {servers: ["127.0.0.1:$PORT_ORIGIN"], keepalive: {idle_timeout: 60s, pool_size: 128}}
routes:
  - {origin: o}
CONF
    } >"$d/edge.yaml"
    launch "$name" "$port" "$EDGE" -c "$d/edge.yaml" ;;
  esac
}

cat >"$RUN/fill.lua" <<LUA
local n = 0
request = function() n = n % $OBJECTS + 1; return wrk.format("GET", "/o/" .. n) end
LUA
cat >"$RUN/random.lua" <<LUA
request = function() return wrk.format("GET", "/o/" .. math.random($OBJECTS)) end
LUA

origin_requests() { sleep 1.2; wc -l <"$RUN/origin/access.log"; }
CLK=$(getconf CLK_TCK)
echo "| proxy | phase | req/s | req/CPU-s | p50 ms | p99 ms | errors | origin requests | hits memory / disk |" >"$RUN/table.md"
echo "|---|---|---|---|---|---|---|---|---|" >>"$RUN/table.md"
for p in $PROXIES; do
  start_proxy "$p"
  port=${PORT[$p]}
  # Fill: one connection, every object once, in order.
  timeout 120 wrk -t1 -c1 -d60s -s "$RUN/fill.lua" "http://127.0.0.1:$port/" >/dev/null 2>&1 &
  wrk_pid=$!
  for _ in $(seq 600); do
    (( $(wc -l <"$RUN/origin/access.log" 2>/dev/null || echo 0) >= OBJECTS )) && break
    sleep 0.1
  done
  kill "$wrk_pid" 2>/dev/null; wait "$wrk_pid" 2>/dev/null
  sleep 2   # the edge's disk writer and nginx's cache manager settle
  # Objects whose fill skipped the edge's disk (its writer behind: counted) are fetched again
  # once memory evicts them; fill passes until the disk holds the whole set (bounded).
  for _ in $(seq 5); do
    [[ $p == edge ]] || break
    on_disk=$(curl -s "http://127.0.0.1:$((port + 10))/metrics" | awk '/^edge_cache_objects\{tier="disk"\}/{print $2}')
    (( ${on_disk:-0} >= OBJECTS )) && break
    timeout 30 wrk -t1 -c1 -d3s -s "$RUN/fill.lua" "http://127.0.0.1:$port/" >/dev/null 2>&1
    sleep 1
  done
  [[ $p == edge ]] && log "edge after the fill: $(curl -s "http://127.0.0.1:$((port + 10))/metrics" \
    | grep -E '^edge_cache_(objects|disk_skipped)' | tr '\n' ' ')"
  for phase in warm cold; do
    if [[ $phase == cold ]]; then
      sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || { log "cannot drop the page cache (not root?): cold skipped"; continue; }
    fi
    before=$(origin_requests)
    h0=$(curl -s "http://127.0.0.1:$((port + 10))/metrics" 2>/dev/null | awk '/^edge_cache_hits_total/{printf "%s ", $2}')
    c0=$(cpu_ticks "${PID[$p]}")
    f=$RUN/wrk-$p-$phase.txt
    timeout $((DURATION + 20)) wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 5s --latency -s "$RUN/random.lua" \
      "http://127.0.0.1:$port/" >"$f" 2>&1
    c1=$(cpu_ticks "${PID[$p]}")
    read -r reqs rps p50 p99 errs <<<"$(wrk_figures "$f")"
    cpu_s=$(awk -v d=$((c1 - c0)) -v hz=$CLK 'BEGIN{printf "%.2f", d/hz}')
    per_cpu=$(awk -v r="${reqs:-0}" -v c="$cpu_s" 'BEGIN{ if (c>0) printf "%.0f", r/c; else print "n/a"}')
    origin=$(( $(origin_requests) - before ))
    tiers="-"
    if [[ $p == edge ]]; then
      h1=$(curl -s "http://127.0.0.1:$((port + 10))/metrics" | awk '/^edge_cache_hits_total/{printf "%s ", $2}')
      tiers=$(awk -v a="$h0" -v b="$h1" 'BEGIN{split(a,x," "); split(b,y," "); printf "%d / %d", y[2]-x[2], y[1]-x[1]}')
    fi
    log "$p $phase: $rps req/s, $per_cpu req/CPU-s, p99 $p99 ms, origin $origin, hits $tiers"
    echo "| $p | $phase | ${rps:-0} | $per_cpu | $p50 | $p99 | $errs | $origin | $tiers |" >>"$RUN/table.md"
  done
  [[ $p == edge ]] && curl -s "http://127.0.0.1:$((port + 10))/metrics" >"$RUN/metrics-edge.txt"
  stop "$p"
  : >"$RUN/origin/access.log"   # opened for appending: nginx goes on at its new end
done
echo
echo "bench: $(nproc) cores, $OBJECTS objects of 16 KiB, edge memory tier $MEMORY, wrk -t1 -c$CONNS -d${DURATION}s, $WORKERS proxy threads, $(date -u +%F)"
cat "$RUN/table.md"
