#!/usr/bin/env bash
# bench/keepalive.sh: what a short origin keep-alive costs cache misses, proxy by proxy.
#
# An origin (nginx) that closes idle connections after $ORIGIN_IDLE seconds without saying so,
# behind a relay that delays every byte $DELAY_MS each way (a round trip of twice that), and
# one client sending uncacheable POSTs one at a time with idle gaps spread around the origin's
# timeout ($GAP_LO_MS to $GAP_HI_MS): about half the gaps are longer than the timeout. For each
# proxy: POSTs that failed (a pooled connection closed under them), time to first byte p50/p99
# as the client sees it, and upstream connections opened: those that carried a request
# (counted at the origin), and all TCP connections (counted at the relay: warm connections
# closed unused and the edge's probes included), also per minute. The physical floor is the
# first request and one new connection per gap longer than the origin's timeout less a round
# trip, the gaps as measured (curl's start-up included). The relay charges a new connection the
# TCP handshake's round trip (examples/delay_relay.rs).
#
#   bash bench/keepalive.sh                 # nginx, bare Pingora, edge, edge with warm: 1 (~5 min)
#   GAP_LO_MS=1500 GAP_HI_MS=2500 bash bench/keepalive.sh   # low rate: every gap beyond the timeout
#   REQUESTS=100 PROXIES="edge" bash bench/keepalive.sh
#   EDGE_KEEPALIVE="learn: false" PROXIES=edge bash bench/keepalive.sh   # other edge settings
#
# Only processes started here are stopped (by PID); loopback only; every wait is bounded.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
RUN=${RUN:-/tmp/edge-bench-keepalive}
REQUESTS=${REQUESTS:-60}
DELAY_MS=${DELAY_MS:-5}
ORIGIN_IDLE=${ORIGIN_IDLE:-1}
GAP_LO_MS=${GAP_LO_MS:-850}
GAP_HI_MS=${GAP_HI_MS:-1150}
PROXIES=${PROXIES:-"nginx pingora edge edge-warm"}
BARE=${BARE:-$ROOT/../shared/bench/bare-pingora}
PORT_ORIGIN=19280; PORT_RELAY=19281
declare -A PORT=([nginx]=19282 [pingora]=19283 [edge]=19285 [edge-warm]=19287)

source "$HERE/lib.sh"

install_missing nginx:nginx curl:curl
log "building edge and the delay relay (release)"
(cd "$ROOT" && cargo build --release --quiet --bin edge --example delay_relay) || die "build failed"
EDGE=${EDGE_BIN:-$ROOT/target/release/edge}
RELAY=$ROOT/target/release/examples/delay_relay
build_bare

# The origin: a keep-alive timeout it does not announce; one log line per request with its
# connection's serial and the request's number on it, the client's tag and user agent.
rm -rf "$RUN/origin"; mkdir -p "$RUN/origin"
cat >"$RUN/origin/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $RUN/origin/nginx.pid; error_log $RUN/origin/error.log warn;
events { worker_connections 1024; }
http {
  keepalive_timeout ${ORIGIN_IDLE}s; keepalive_requests 100000;
  log_format conn '\$connection \$connection_requests \$http_x_bench "\$http_user_agent"';
  server {
    listen 127.0.0.1:$PORT_ORIGIN;
    access_log $RUN/origin/access.log conn buffer=4k flush=1s;
    location / { add_header Cache-Control "no-store" always; return 200 "ok\n"; }
  }
}
CONF
launch origin $PORT_ORIGIN nginx -e "$RUN/origin/error.log" -p "$RUN/origin" -c "$RUN/origin/nginx.conf"
launch relay $PORT_RELAY "$RELAY" 127.0.0.1:$PORT_RELAY 127.0.0.1:$PORT_ORIGIN "$DELAY_MS"

start_proxy() {  # name
  local name=$1 port=${PORT[$1]} d="$RUN/$1"; rm -rf "$d"; mkdir -p "$d"
  case $name in
  nginx)
    cat >"$d/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $d/nginx.pid; error_log $d/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  upstream origin { server 127.0.0.1:$PORT_RELAY; keepalive 16; }
  server {
    listen 127.0.0.1:$port;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
    launch "$name" "$port" nginx -e "$d/error.log" -p "$d" -c "$d/nginx.conf" ;;
  pingora)
    BP_THREADS=1 launch "$name" "$port" "$BARE_BIN" "127.0.0.1:$port" "127.0.0.1:$PORT_RELAY" nocache ;;
  edge|edge-warm)
    local ka=${EDGE_KEEPALIVE:-}
    [[ $name == edge-warm ]] && ka="${ka:+$ka, }warm: 1"
    [[ -n $ka ]] && ka=", keepalive: {$ka}"
    cat >"$d/edge.yaml" <<CONF
server: {threads: 1, pid_file: $d/edge.pid, upgrade_sock: $d/edge.sock}
listen: ["127.0.0.1:$port"]
admin: {listen: "127.0.0.1:$((port + 10))"}
log: {level: ${EDGE_LOG_LEVEL:-warn}, access: false}
origins:
  o: {servers: ["127.0.0.1:$PORT_RELAY"]$ka}
routes:
  - {origin: o}
CONF
    launch "$name" "$port" "$EDGE" -c "$d/edge.yaml"
    # Let the edge measure the origin's idle timeout first (its probe waits out the timeout).
    sleep $((ORIGIN_IDLE + 1)) ;;
  esac
}

pct() {  # sorted values on stdin, percentile
  awk -v p="$1" '{a[NR]=$1} END{ if (NR==0) {print "n/a"; exit}; i=int(NR*p/100+0.999); if(i<1)i=1; printf "%.1f", a[i]*1000 }'
}

echo "| proxy | POSTs | failed | TTFB p50 ms | TTFB p99 ms | conns with requests | per minute | all TCP conns | per minute | floor |" >"$RUN/table.md"
echo "|---|---|---|---|---|---|---|---|---|---|" >>"$RUN/table.md"
floor_ms=$((ORIGIN_IDLE * 1000 - 2 * DELAY_MS))
for p in $PROXIES; do
  start_proxy "$p"
  port=${PORT[$p]}; tag="ka-$p"; out=$RUN/$p.results; : >"$out"
  accepts_before=$(grep -c accept "$RUN/relay.out")
  RANDOM=42   # the same gaps for every proxy
  started=$(date +%s.%N)
  for i in $(seq "$REQUESTS"); do
    gap=$((GAP_LO_MS + RANDOM % (GAP_HI_MS - GAP_LO_MS + 1)))
    ((i > 1)) && sleep "$(awk -v g=$gap 'BEGIN{printf "%.3f", g/1000}')"
    # status, TTFB, time until the request left curl, and when curl started and ended: the idle
    # gap the proxy saw is from the previous end to this start plus curl's own set-up.
    t0=$EPOCHREALTIME
    w=$(curl -s -o /dev/null -m 10 -X POST --data "x=$i" -H "X-Bench: $tag" \
      -w '%{http_code} %{time_starttransfer} %{time_pretransfer}' "http://127.0.0.1:$port/p/$i")
    echo "$w $t0 $EPOCHREALTIME" >>"$out"
  done
  # The floor: the first request, and every one whose measured gap exceeds the timeout less
  # a round trip (the nominal gaps leave out curl's start-up, about 10 ms per request).
  long=$(awk -v f="$floor_ms" 'NR==1 {n=1} NR>1 && ($4 + $3 - prev) * 1000 > f {n++} {prev=$5} END{print n+0}' "$out")
  minutes=$(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN{printf "%.3f", (e-s)/60}')
  failed=$(awk '$1 != 200' "$out" | wc -l)
  p50=$(awk '{print $2}' "$out" | sort -g | pct 50)
  p99=$(awk '{print $2}' "$out" | sort -g | pct 99)
  sleep 1.5   # the origin flushes its access log every second
  conns=$(awk -v t="$tag" '$3==t && $2==1 {n++} END{print n+0}' "$RUN/origin/access.log")
  per_min=$(awk -v c="$conns" -v m="$minutes" 'BEGIN{printf "%.1f", c/m}')
  all=$(($(grep -c accept "$RUN/relay.out") - accepts_before))
  all_min=$(awk -v c="$all" -v m="$minutes" 'BEGIN{printf "%.1f", c/m}')
  log "$p: $failed of $REQUESTS POSTs failed, TTFB p50 $p50 ms p99 $p99 ms, $conns upstream connections with requests ($per_min/min), $all in all ($all_min/min), floor $long"
  echo "| $p | $REQUESTS | $failed | $p50 | $p99 | $conns | $per_min | $all | $all_min | $long |" >>"$RUN/table.md"
  if [[ $p == edge* ]]; then   # what the edge learned, and the margin it kept
    curl -s "http://127.0.0.1:$((port + 10))/metrics" |
      grep -E '^edge_upstream_idle_timeout_(learned|effective)_seconds|^edge_upstream_connections_opened_total' |
      sed "s/^/[bench] $p: /" >&2
  fi
  stop "$p"
done
probes=$(awk '$2==1 && /edge-keepalive-probe/ {n++} END{print n+0}' "$RUN/origin/access.log")
echo
echo "bench: origin idle timeout ${ORIGIN_IDLE}s (unannounced), relay ${DELAY_MS} ms each way, gaps ${GAP_LO_MS}-${GAP_HI_MS} ms, $REQUESTS POSTs, one client, $(date -u +%F)"
echo "edge probe connections (idle-timeout measurement) during the run: $probes"
cat "$RUN/table.md"
