#!/usr/bin/env bash
# bench/tls.sh: edge beside nginx as the same TLS caching proxy (same certificate: ECDSA P-256,
# TLS 1.2 and 1.3, session cache on, h2 on), in turns within one run. Prints a markdown table
# (also in $RUN/table.md) for BENCHMARKS.md.
#
#   bash bench/tls.sh                        # ~2 minutes (+ a release build)
#   DURATION=5 SCENARIOS="handshake" bash bench/tls.sh
#   PROXIES="pingora-rustls pingora-openssl pingora-boringssl" bash bench/tls.sh
#
# Proxies: nginx, edge, and pingora-<backend>: bare Pingora serving the same 1 KiB from memory
# over TLS with one TLS backend (bench/tls-backends, built once per backend; boringssl needs
# libclang-dev and cmake, installed here if missing). They compare the backends and nothing
# else, which is how the edge's backend was chosen (BENCHMARKS.md).
#
# Scenarios ($CONNS connections, $DURATION s after a warm-up; the object is cached by both):
#   tlshit1k  : wrk, HTTP/1.1 over TLS keep-alive connections, 1 KiB hits
#   h2hit1k   : h2load, h2 over TLS, $CONNS connections x $STREAMS concurrent streams, 1 KiB hits
#   handshake : wrk with `Connection: close`: a new TCP connection and a full TLS handshake per
#               request (wrk does not resume sessions), so req/CPU-s = full handshakes/CPU-s
# req/CPU-s counts the CPU of the proxy's processes only (wrk, h2load and the origin share the
# same 2 cores). Only processes started here are stopped (by PID); loopback only.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
RUN=${RUN:-/tmp/edge-bench-tls}
SHM=${SHM:-/dev/shm/edge-bench-tls}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-64}
STREAMS=${STREAMS:-10}
WORKERS=${WORKERS:-2}
SCENARIOS=${SCENARIOS:-"tlshit1k h2hit1k handshake"}
PROXIES=${PROXIES:-"nginx edge"}
PORT_ORIGIN=19280
declare -A PORT=([nginx]=19281 [edge]=19285 [pingora-rustls]=19286 [pingora-openssl]=19287
  [pingora-boringssl]=19288 [pingora-s2n]=19289)
source "$HERE/lib.sh"

install_missing nginx:nginx wrk:wrk h2load:nghttp2-client openssl:openssl
if [[ " $PROXIES " == *" edge "* ]]; then
  log "building edge (release)"
  (cd "$ROOT" && cargo build --release --quiet --bin edge) || die "build failed"
fi
EDGE=${EDGE_BIN:-$ROOT/target/release/edge}
declare -A BACKEND_BIN=()
for p in $PROXIES; do
  [[ $p == pingora-* ]] || continue
  backend=${p#pingora-}
  case $backend in
    openssl) dpkg -s libssl-dev pkg-config >/dev/null 2>&1 || install_packages libssl-dev pkg-config ;;
    boringssl) dpkg -s libclang-dev >/dev/null 2>&1 || install_packages libclang-dev cmake g++ ;;
  esac
  log "building bench/tls-backends with $backend (release)"
  target=${BACKENDS_TARGET:-/tmp/edge-bench-tls-backends}/$backend
  if cargo build --release --quiet --features "$backend" --target-dir "$target" \
      --manifest-path "$HERE/tls-backends/Cargo.toml"; then
    BACKEND_BIN[$p]=$target/release/tls-backends
  else
    log "$backend did not build: left out"; PROXIES=${PROXIES//$p/}
  fi
done

rm -rf "$RUN" "$SHM"; mkdir -p "$RUN" "$SHM/www"
head -c 1024 /dev/zero | tr '\0' 'a' >"$SHM/www/1k"
CERT=$RUN/cert.pem KEY=$RUN/key.pem
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 -subj /CN=bench.test \
  -addext subjectAltName=DNS:bench.test -keyout "$KEY" -out "$CERT" 2>/dev/null || die "openssl"

mkdir -p "$RUN/origin"
cat >"$RUN/origin/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $RUN/origin/nginx.pid; error_log $RUN/origin/error.log warn;
events { worker_connections 4096; }
http {
  access_log off; sendfile on; keepalive_requests 100000;
  server { listen 127.0.0.1:$PORT_ORIGIN; root $SHM/www; add_header Cache-Control "max-age=3600"; }
}
CONF
launch origin $PORT_ORIGIN nginx -e "$RUN/origin/error.log" -p "$RUN/origin" -c "$RUN/origin/nginx.conf"

start_proxy() {
  local name=$1 port=${PORT[$1]} d="$RUN/$1"; rm -rf "$d" "$SHM/cache-$1"; mkdir -p "$d"
  case $name in
  nginx)
    cat >"$d/nginx.conf" <<CONF
worker_processes $WORKERS; daemon off; pid $d/nginx.pid; error_log $d/error.log warn;
events { worker_connections 4096; }
http {
  access_log off; sendfile on; tcp_nodelay on; keepalive_requests 100000;
  proxy_cache_path $SHM/cache-nginx levels=1:2 keys_zone=edge:10m max_size=512m inactive=10m use_temp_path=off;
  upstream origin { server 127.0.0.1:$PORT_ORIGIN; keepalive 64; }
  server {
    listen 127.0.0.1:$port ssl http2 backlog=4096;
    ssl_certificate $CERT; ssl_certificate_key $KEY;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m; ssl_session_tickets on;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection "";
                 proxy_cache edge; }
  }
}
CONF
    launch "$name" "$port" nginx -e "$d/error.log" -p "$d" -c "$d/nginx.conf" ;;
  edge)
    cat >"$d/edge.yaml" <<CONF
server: {threads: $WORKERS, pid_file: $d/edge.pid, upgrade_sock: $d/edge.sock}
listen:
  - address: "127.0.0.1:$port"
    tls: {certificates: [{cert: "$CERT", key: "$KEY"}]}
    http2: true
admin: {listen: "127.0.0.1:$((port + 10))"}
log: {level: warn, access: false}
client: {keepalive_requests: 100000}   # as nginx's keepalive_requests above
origins:
  o:
    servers: ["127.0.0.1:$PORT_ORIGIN"]
    keepalive: {idle_timeout: 60s, pool_size: 128, max_requests: 100000}
routes:
  - {origin: o}
CONF
    launch "$name" "$port" "$EDGE" -c "$d/edge.yaml" ;;
  pingora-*)
    THREADS=$WORKERS launch "$name" "$port" "${BACKEND_BIN[$name]}" "127.0.0.1:$port" "$CERT" "$KEY" ;;
  esac
}

load() {  # scenario port secs out
  local url="https://127.0.0.1:$2/1k"
  case $1 in
    tlshit1k) timeout $(($3 + 20)) wrk -t1 -c"$CONNS" -d"$3s" --latency "$url" >"$4" 2>&1 ;;
    handshake) timeout $(($3 + 20)) wrk -t1 -c16 -d"$3s" --latency -H "Connection: close" "$url" >"$4" 2>&1 ;;
    h2hit1k) timeout $(($3 + 20)) h2load -t1 -c"$CONNS" -m"$STREAMS" -D"$3" "$url" >"$4" 2>&1 ;;
  esac
}

CLK=$(getconf CLK_TCK)
echo "| proxy | scenario | req/s | req/CPU-s | p50 ms | p99 ms | errors | peak RSS MiB |" >"$RUN/table.md"
echo "|---|---|---|---|---|---|---|---|" >>"$RUN/table.md"
for SCENARIO in $SCENARIOS; do
  for p in $PROXIES; do
    start_proxy "$p"
    port=${PORT[$p]} f=$RUN/$p-$SCENARIO.txt
    load "$SCENARIO" "$port" "$WARMUP" /dev/null
    c0=$(cpu_ticks "${PID[$p]}")
    load "$SCENARIO" "$port" "$DURATION" "$f"
    c1=$(cpu_ticks "${PID[$p]}")
    if [[ $SCENARIO == h2hit1k ]]; then
      reqs=$(awk '/^requests:/{print $8}' "$f"); rps=$(awk '/^finished in/{print $4}' "$f")
      errs=$(awk '/^requests:/{print $10+$12}' "$f")
      p50=$(to_ms "$(awk '/^time for request:/{print $6}' "$f")") p99=n/a   # h2load: mean, no percentiles
    else
      read -r reqs rps p50 p99 errs <<<"$(wrk_figures "$f")"
    fi
    cpu_s=$(awk -v d=$((c1-c0)) -v hz=$CLK 'BEGIN{printf "%.2f", d/hz}')
    per_cpu=$(awk -v r="${reqs:-0}" -v c="$cpu_s" 'BEGIN{ if (c>0) printf "%.0f", r/c; else print "n/a"}')
    log "$p $SCENARIO: $rps req/s, $per_cpu req/CPU-s, p99 $p99 ms, errors $errs"
    echo "| $p | $SCENARIO | ${rps:-0} | $per_cpu | $p50 | $p99 | $errs | $(rss_mib "${PID[$p]}") |" >>"$RUN/table.md"
    stop "$p"
  done
done
echo
echo "bench/tls.sh: $(nproc) cores, $CONNS connections ($STREAMS streams each for h2), ${DURATION}s, $WORKERS proxy workers, $(date -u +%F)"
cat "$RUN/table.md"
