#!/usr/bin/env bash
# bench/run.sh: edge beside nginx (the classic caching reverse proxy) and a bare Pingora proxy,
# measured in turns within one run on this machine. Prints a markdown table (also saved to
# $RUN/table.md) for BENCHMARKS.md.
#
#   bash bench/run.sh                      # everything (~4 minutes)
#   DURATION=5 SCENARIOS="pass1k" bash bench/run.sh
#   bash bench/ab.sh pingora /tmp/edge-before target/release/edge   # repeated, alternating
#
# Scenarios (wrk, $CONNS connections, $WRK_THREADS thread, $DURATION s after a warm-up):
#   hit1k, hit100k : one cacheable object, served from the proxy's cache
#   pass1k         : an uncacheable (no-store) 1 KiB object, every request goes to the origin
#   miss1k         : a new URL per request against an origin that answers after $MISS_DELAY_MS
#                    ms (every request is a cache miss; measures the fill path and reuse)
# Per proxy: req/s, requests per CPU-second of the proxy's processes (the fair figure when wrk,
# origin and proxy share 2 cores), p50/p99 latency, upstream TCP connections opened (counted at
# the origin), peak RSS (VmHWM summed over the proxy's processes).
#
# Only processes started here are stopped (by PID); loopback only; every load is time-bounded.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
RUN=${RUN:-/tmp/edge-bench}
SHM=${SHM:-/dev/shm/edge-bench}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-64}
WRK_THREADS=${WRK_THREADS:-1}
WORKERS=${WORKERS:-2}                       # proxy threads / nginx workers
MISS_DELAY_MS=${MISS_DELAY_MS:-10}
CACHE_SIZE=${CACHE_SIZE:-512MiB}            # edge's cache.max_size
EDGE_NOCACHE=${EDGE_NOCACHE:-}                # set: the edge's route has its cache off (the proxy path alone)
SCENARIOS=${SCENARIOS:-"hit1k hit100k pass1k miss1k"}
PROXIES=${PROXIES:-"nginx pingora edge"}
BARE=${BARE:-$ROOT/../shared/bench/bare-pingora}   # optional: the bare Pingora anchor
PORT_ORIGIN=19180; PORT_SLOW=19190
declare -A PORT=([nginx]=19181 [pingora]=19183 [edge]=19185)

source "$HERE/lib.sh"

# ---------------------------------------------------------------- setup
install_missing nginx:nginx wrk:wrk cmake:cmake
log "building edge and the bench origin (release)"
(cd "$ROOT" && cargo build --release --quiet --bin edge --example bench_origin) || die "build failed"
EDGE=${EDGE_BIN:-$ROOT/target/release/edge}   # EDGE_BIN: measure another build (bench/ab.sh)
SLOW=$ROOT/target/release/examples/bench_origin
build_bare

mkdir -p "$RUN" "$SHM/www/nostore"
head -c 1024 /dev/zero | tr '\0' 'a' >"$SHM/www/1k"
head -c 102400 /dev/zero | tr '\0' 'b' >"$SHM/www/100k"
cp "$SHM/www/1k" "$SHM/www/nostore/1k"


# The origin: nginx serving tmpfs, counting connections per scenario tag (a fresh log per run).
rm -rf "$RUN/origin"; mkdir -p "$RUN/origin"
cat >"$RUN/origin/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $RUN/origin/nginx.pid; error_log $RUN/origin/error.log warn;
events { worker_connections 4096; }
http {
  sendfile on; keepalive_requests 100000; keepalive_timeout 65;
  log_format conn '\$connection \$connection_requests \$http_x_bench';
  server {
    listen 127.0.0.1:$PORT_ORIGIN backlog=4096;
    access_log $RUN/origin/access.log conn buffer=64k flush=1s;
    root $SHM/www;
    location / { add_header Cache-Control "max-age=3600"; }
    location /nostore/ { add_header Cache-Control "no-store"; }
  }
}
CONF
launch origin $PORT_ORIGIN nginx -e "$RUN/origin/error.log" -p "$RUN/origin" -c "$RUN/origin/nginx.conf"
launch slow $PORT_SLOW "$SLOW" 127.0.0.1:$PORT_SLOW "$MISS_DELAY_MS"

start_proxy() {  # name upstream_port
  local name=$1 up=$2 port=${PORT[$1]} d="$RUN/$1"; rm -rf "$d" "$SHM/cache-$1"; mkdir -p "$d"
  case $name in
  nginx) nginx_cache_proxy "$d" "$port" "$up" "$SHM/cache-nginx" 512m 10m ;;
  pingora)
    local mode=nocache; [[ $SCENARIO == hit* ]] && mode=cache
    BP_THREADS=$WORKERS launch "$name" "$port" "$BARE_BIN" "127.0.0.1:$port" "127.0.0.1:$up" "$mode" ;;
  edge)
    { edge_conf_head "$d" "$port"; cat <<CONF
cache: {max_size: $CACHE_SIZE}
origins:
  o:
    servers: ["127.0.0.1:$up"]
    keepalive: {idle_timeout: 60s, pool_size: 128, max_requests: 100000}
routes:
  - {origin: o$([[ -n ${EDGE_NOCACHE:-} ]] && echo ", cache: {enabled: false}")}
CONF
    } >"$d/edge.yaml"
    launch "$name" "$port" "$EDGE" -c "$d/edge.yaml" ;;
  esac
}


# A Lua script giving wrk a new URL per request (misses). The run's tag is part of every URL:
# wrk's random numbers repeat from run to run (never seeded), so without it the measured run
# asked again for the warm-up's URLs, and ~20% of its "misses" were hits (before 2026-12-03).
cat >"$RUN/unique.lua" <<'LUA'
local n, tag = 0, "run"
init = function(args) tag = args[1] or tag end
request = function() n = n + 1; return wrk.format("GET", "/m/" .. tag .. "/" .. n) end
LUA

run_wrk() {  # port path secs tag out [lua]
  local extra=(); [[ -n ${6:-} ]] && extra=(-s "$6")
  timeout $(($3 + 20)) wrk -t"$WRK_THREADS" -c"$CONNS" -d"$3s" --timeout 5s --latency "${extra[@]}" \
    -H "X-Bench: $4" "http://127.0.0.1:$1$2" -- "$4" >"$5" 2>&1
}

CLK=$(getconf CLK_TCK)
echo "| proxy | scenario | req/s | req/CPU-s | p50 ms | p99 ms | errors | upstream conns | peak RSS MiB | CPU µs/req user+sys |" >"$RUN/table.md"
echo "|---|---|---|---|---|---|---|---|---|---|" >>"$RUN/table.md"
for SCENARIO in $SCENARIOS; do
  case $SCENARIO in
    hit1k) path=/1k; up=$PORT_ORIGIN; lua="" ;;
    hit100k) path=/100k; up=$PORT_ORIGIN; lua="" ;;
    pass1k) path=/nostore/1k; up=$PORT_ORIGIN; lua="" ;;
    miss1k) path=/; up=$PORT_SLOW; lua=$RUN/unique.lua ;;
  esac
  for p in $PROXIES; do
    start_proxy "$p" "$up"
    port=${PORT[$p]}; tag="$p-$SCENARIO"
    if [[ $SCENARIO == miss1k ]]; then before=$(curl -s "http://127.0.0.1:$PORT_SLOW/__stats" | awk '/^accepted/{print $2}'); fi
    run_wrk "$port" "$path" "$WARMUP" "warm-$tag" /dev/null "$lua"
    c0=$(cpu_ticks "${PID[$p]}"); u0=$(user_ticks "${PID[$p]}")
    [[ $SCENARIO == miss1k ]] && before=$(curl -s "http://127.0.0.1:$PORT_SLOW/__stats" | awk '/^accepted/{print $2}')
    run_wrk "$port" "$path" "$DURATION" "$tag" "$RUN/wrk-$tag.txt" "$lua"
    c1=$(cpu_ticks "${PID[$p]}"); u1=$(user_ticks "${PID[$p]}")
    f=$RUN/wrk-$tag.txt
    read -r reqs rps p50 p99 errs <<<"$(wrk_figures "$f")"
    cpu_s=$(awk -v d=$((c1-c0)) -v hz=$CLK 'BEGIN{printf "%.2f", d/hz}')
    split=$(awk -v r="${reqs:-0}" -v u=$((u1-u0)) -v a=$((c1-c0)) -v hz=$CLK \
      'BEGIN{ if (r>0) printf "%.0f+%.0f", u/hz/r*1e6, (a-u)/hz/r*1e6; else print "n/a"}')
    per_cpu=$(awk -v r="${reqs:-0}" -v c="$cpu_s" 'BEGIN{ if (c>0) printf "%.0f", r/c; else print "n/a"}')
    if [[ $SCENARIO == miss1k ]]; then
      after=$(curl -s "http://127.0.0.1:$PORT_SLOW/__stats" | awk '/^accepted/{print $2}')
      conns=$(( after - before - 1 ))   # less the /__stats request's own connection
    else
      sleep 1.3   # nginx flushes its access log every second
      conns=$(awk -v t="$tag" '$3==t && $2==1 {n++} END{print n+0}' "$RUN/origin/access.log")
    fi
    rss=$(rss_mib "${PID[$p]}")
    [[ $p == edge ]] && curl -s "http://127.0.0.1:$((port + 10))/metrics" >"$RUN/metrics-$tag.txt"
    log "$p $SCENARIO: $rps req/s, $per_cpu req/CPU-s, p99 ${p99} ms, $conns upstream conns"
    echo "| $p | $SCENARIO | ${rps:-0} | $per_cpu | $p50 | $p99 | $errs | $conns | $rss | $split |" >>"$RUN/table.md"
    stop "$p"
  done
done
echo
echo "bench: $(nproc) cores, wrk -t$WRK_THREADS -c$CONNS -d${DURATION}s, $WORKERS proxy threads, miss delay ${MISS_DELAY_MS} ms, $(date -u +%F)"
cat "$RUN/table.md"
