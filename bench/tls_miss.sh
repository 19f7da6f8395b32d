#!/usr/bin/env bash
# bench/tls_miss.sh: what a cache miss to an HTTPS origin costs on a reused TLS connection, on
# a new one that resumes the TLS session, and on a new one with a full handshake; TLS 1.3 and
# TLS 1.2; with and without a warm connection ready (keepalive.warm).
#
# An nginx origin serves HTTPS on four ports (TLS 1.3 or 1.2 only; session cache and tickets on,
# or both off so every handshake is full), each behind examples/delay_relay.rs adding $DELAY_MS
# each way (a round trip of twice that, the TCP handshake's round trip charged too). One edge
# has an origin per scenario: pooled connections (reused), or `max_requests: 1` (every request
# on a new connection: resumed or full, as that origin allows), or `warm: 1` behind an origin
# that closes idle connections before the next request comes.
#
#   TTFB: one client, $REQUESTS uncacheable GETs per scenario, sequential; p50/p99 as the client
#         sees it (client -> edge is loopback without delay).
#   CPU:  wrk, $CONNS connections, $DURATION s per scenario, every request on a new upstream
#         connection: CPU seconds per 1000 requests of the edge and of the origin, resumed
#         against full.
#
#   bash bench/tls_miss.sh            # ~2 minutes (+ a release build)
#
# Only processes started here are stopped (by PID); loopback only; every wait is bounded.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
RUN=${RUN:-/tmp/edge-bench-tls-miss}
REQUESTS=${REQUESTS:-50}
DELAY_MS=${DELAY_MS:-5}
DURATION=${DURATION:-5}
CONNS=${CONNS:-8}
PORT_EDGE=19300
declare -A ORIGIN_PORT=([r13]=19311 [f13]=19312 [r12]=19313 [f12]=19314 [w13]=19315)
declare -A RELAY_PORT=([r13]=19321 [f13]=19322 [r12]=19323 [f12]=19324 [w13]=19325)
source "$HERE/lib.sh"

install_missing nginx:nginx wrk:wrk curl:curl openssl:openssl
log "building edge and the delay relay (release)"
(cd "$ROOT" && cargo build --release --quiet --bin edge --example delay_relay) || die "build failed"
EDGE=${EDGE_BIN:-$ROOT/target/release/edge}
RELAY=$ROOT/target/release/examples/delay_relay

rm -rf "$RUN"; mkdir -p "$RUN/origin"
# A test CA and the origin's certificate from it (ECDSA P-256): the edge verifies the origin.
CA=$RUN/ca.pem CERT=$RUN/cert.pem KEY=$RUN/key.pem
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 -subj /CN=bench-ca \
  -keyout "$RUN/ca.key" -out "$CA" 2>/dev/null || die "openssl: CA"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=origin.test \
  -keyout "$KEY" -out "$RUN/cert.csr" 2>/dev/null || die "openssl: key"
printf 'subjectAltName=DNS:origin.test\nbasicConstraints=CA:FALSE\n' >"$RUN/ext.cnf"
openssl x509 -req -in "$RUN/cert.csr" -CA "$CA" -CAkey "$RUN/ca.key" -CAcreateserial -days 7 \
  -extfile "$RUN/ext.cnf" -out "$CERT" 2>/dev/null || die "openssl: sign"

server() {  # name protocols resumption(on|off) keepalive_timeout
  local cache="ssl_session_cache shared:SSL:10m; ssl_session_tickets on;"
  [[ $3 == off ]] && cache="ssl_session_cache off; ssl_session_tickets off;"
  echo "  server { listen 127.0.0.1:${ORIGIN_PORT[$1]} ssl; keepalive_timeout $4;
    ssl_certificate $CERT; ssl_certificate_key $KEY; ssl_protocols $2; $cache
    location / { add_header Cache-Control no-store always; return 200 \"ok\n\"; } }"
}
cat >"$RUN/origin/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $RUN/origin/nginx.pid; error_log $RUN/origin/error.log warn;
events { worker_connections 1024; }
http {
  access_log off; keepalive_requests 100000;
$(server r13 TLSv1.3 on 60s)
$(server f13 TLSv1.3 off 60s)
$(server r12 TLSv1.2 on 60s)
$(server f12 TLSv1.2 off 60s)
$(server w13 TLSv1.3 on 300ms)
}
CONF
launch origin "${ORIGIN_PORT[r13]}" nginx -e "$RUN/origin/error.log" -p "$RUN/origin" -c "$RUN/origin/nginx.conf"
for o in "${!RELAY_PORT[@]}"; do
  launch "relay-$o" "${RELAY_PORT[$o]}" "$RELAY" "127.0.0.1:${RELAY_PORT[$o]}" "127.0.0.1:${ORIGIN_PORT[$o]}" "$DELAY_MS"
done

# One origin per scenario: name, relay, keep-alive settings.
origin() {
  echo "  $1:
    servers: [\"127.0.0.1:${RELAY_PORT[$2]}\"]
    tls: {sni: origin.test, ca_file: \"$CA\"}
    keepalive: {$3}"
}
cat >"$RUN/edge.yaml" <<CONF
server: {threads: 2, pid_file: $RUN/edge.pid, upgrade_sock: $RUN/edge.sock}
listen: ["127.0.0.1:$PORT_EDGE"]
admin: {listen: "127.0.0.1:$((PORT_EDGE + 10))"}
log: {level: warn, access: false}
origins:
$(origin reused13 r13 "idle_timeout: 60s")
$(origin resumed13 r13 "max_requests: 1")
$(origin full13 f13 "max_requests: 1")
$(origin reused12 r12 "idle_timeout: 60s")
$(origin resumed12 r12 "max_requests: 1")
$(origin full12 f12 "max_requests: 1")
$(origin cold13 w13 "idle_timeout: 200ms, learn: false")
$(origin warm13 w13 "idle_timeout: 200ms, learn: false, warm: 1")
routes:
$(for o in reused13 resumed13 full13 reused12 resumed12 full12 cold13 warm13; do
    echo "  - {host: $o.test, origin: $o, cache: {enabled: false}}"; done)
CONF
launch edge $PORT_EDGE "$EDGE" -c "$RUN/edge.yaml"

pct() {  # sorted values on stdin (seconds), percentile -> ms
  awk -v p="$1" '{a[NR]=$1} END{ if (NR==0) {print "n/a"; exit}; i=int(NR*p/100+0.999); if(i<1)i=1; printf "%.1f", a[i]*1000 }'
}

ttfb() {  # origin gap_s -> "p50 p99"
  local f=$RUN/ttfb-$1.txt; : >"$f"
  local code t
  for i in $(seq "$REQUESTS"); do
    read -r code t <<<"$(curl -s -o /dev/null -m 10 -H "Host: $1.test" \
      -w '%{http_code} %{time_starttransfer}' "http://127.0.0.1:$PORT_EDGE/x/$i")"
    [[ $code == 200 ]] || die "$1: status $code (see $RUN/edge.out)"
    echo "$t" >>"$f"
    [[ $2 != 0 ]] && sleep "$2"
  done
  echo "$(sort -g "$f" | pct 50) $(sort -g "$f" | pct 99)"
}

CLK=$(getconf CLK_TCK)
cpu_per_1000() {  # origin -> "edge_ms origin_ms requests"
  local e0 o0 e1 o1 f=$RUN/wrk-$1.txt
  e0=$(cpu_ticks "${PID[edge]}"); o0=$(cpu_ticks "${PID[origin]}")
  timeout $((DURATION + 20)) wrk -t1 -c"$CONNS" -d"${DURATION}s" -H "Host: $1.test" \
    "http://127.0.0.1:$PORT_EDGE/cpu" >"$f" 2>&1
  e1=$(cpu_ticks "${PID[edge]}"); o1=$(cpu_ticks "${PID[origin]}")
  local n; n=$(awk '/requests in/{print $1}' "$f")
  awk -v e=$((e1 - e0)) -v o=$((o1 - o0)) -v n="${n:-0}" -v hz="$CLK" \
    'BEGIN{ if (n>0) printf "%.2f %.2f %d", e/hz*1e6/n, o/hz*1e6/n, n; else print "n/a n/a 0"}'
}

# A first request per origin: the learning probes and the first handshakes are not measured.
for o in reused13 resumed13 full13 reused12 resumed12 full12 cold13 warm13; do
  curl -s -o /dev/null -m 10 -H "Host: $o.test" "http://127.0.0.1:$PORT_EDGE/first"
done
sleep 1   # the warm connection's first refresh

{
  echo "| scenario | what a miss waits for | TTFB p50 ms | TTFB p99 ms |"
  echo "|---|---|---:|---:|"
  for row in "reused13|reused TLS 1.3 connection: the request's round trip|0" \
    "resumed13|new TLS 1.3 connection, resumed: TCP + 1 TLS round trip + request|0" \
    "full13|new TLS 1.3 connection, full handshake: TCP + 1 TLS round trip + request|0" \
    "reused12|reused TLS 1.2 connection|0" \
    "resumed12|new TLS 1.2 connection, resumed: TCP + 1 TLS round trip + request|0" \
    "full12|new TLS 1.2 connection, full handshake: TCP + 2 TLS round trips + request|0" \
    "cold13|TLS 1.3, requests 0.4 s apart, origin idle timeout 0.3 s: new connection each time|0.4" \
    "warm13|the same with \`warm: 1\`: a TLS connection opened ahead|0.4"; do
    IFS='|' read -r o what gap <<<"$row"
    read -r p50 p99 <<<"$(ttfb "$o" "$gap")"
    log "$o: p50 $p50 ms, p99 $p99 ms"
    echo "| $o | $what | $p50 | $p99 |"
  done
} >"$RUN/ttfb.md"

{
  echo "| scenario | requests | edge CPU µs/request | origin CPU µs/request |"
  echo "|---|---:|---:|---:|"
  for o in resumed13 full13 resumed12 full12; do
    read -r e or n <<<"$(cpu_per_1000 "$o")"
    log "$o: edge $e µs, origin $or µs of CPU per request ($n requests)"
    echo "| $o | $n | $e | $or |"
  done
} >"$RUN/cpu.md"

curl -s "http://127.0.0.1:$((PORT_EDGE + 10))/metrics" | grep -E '^edge_upstream_handshake_waits_total|^edge_upstream_requests_total' >"$RUN/metrics.txt"
echo
echo "bench/tls_miss.sh: relay ${DELAY_MS} ms each way, $REQUESTS requests per TTFB scenario, wrk -c$CONNS ${DURATION}s per CPU scenario, $(date -u +%F)"
cat "$RUN/ttfb.md"
echo
cat "$RUN/cpu.md"
