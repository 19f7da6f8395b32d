# bench/lib.sh: helpers shared by the bench scripts (sourced):
# logging, starting and stopping processes by PID, waiting for a port, CPU and memory of a
# process tree, building the bare Pingora anchor, nginx as the caching proxy to compare with.

log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

declare -A PID=()
stop() { local p=${PID[$1]:-}; [[ -n $p ]] || return 0
  kill -TERM "$p" 2>/dev/null; for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; unset "PID[$1]"; }
stop_all() { for n in "${!PID[@]}"; do stop "$n"; done; }
trap stop_all EXIT
trap 'exit 130' INT TERM
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
launch() { local name=$1 port=$2; shift 2; "$@" >"$RUN/$name.out" 2>&1 & PID[$name]=$!
  wait_port "$port" || die "$name did not listen on $port (see $RUN/$name.out)"; }

tree() { local p=$1; echo "$p"; for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do tree "$c"; done; }
cpu_ticks() { local t=0 v; for p in $(tree "$1"); do v=$(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null) && t=$((t+${v:-0})); done; echo $t; }
# user_ticks PID: the user-space half of cpu_ticks (the rest is the kernel's, mostly the sockets').
user_ticks() { local t=0 v; for p in $(tree "$1"); do v=$(awk '{print $14}' "/proc/$p/stat" 2>/dev/null) && t=$((t+${v:-0})); done; echo $t; }
rss_mib() { local kb=0 v; for p in $(tree "$1"); do v=$(awk '/^VmHWM:/{print $2}' "/proc/$p/status" 2>/dev/null) && kb=$((kb+${v:-0})); done; awk -v k=$kb 'BEGIN{printf "%.1f", k/1024}'; }
to_ms() { awk -v t="$1" 'BEGIN{v=t+0; if(t~/us$/)v/=1000; else if(t~/ms$/)v=v; else if(t~/s$/)v*=1000; printf "%.2f",v}'; }

# install_missing CMD:PACKAGE ...: installs (apt) the packages whose command is missing.
install_missing() {
  local need=() pair
  for pair in "$@"; do command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}"); done
  ((${#need[@]})) || return 0
  install_packages "${need[@]}"
}

# install_packages PACKAGE ...: installs (apt) these packages.
install_packages() {
  log "installing $*"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null \
    || die "apt-get install failed"
}

# wrk_figures FILE: "requests req/s p50_ms p99_ms errors" from a wrk --latency report.
wrk_figures() {
  local f=$1
  echo "$(awk '/requests in/{print $1}' "$f") $(awk '/^Requests\/sec:/{print $2}' "$f")" \
    "$(to_ms "$(awk '$1=="50%"{print $2}' "$f")") $(to_ms "$(awk '$1=="99%"{print $2}' "$f")")" \
    "$(awk '/Non-2xx/{n+=$NF} /Socket errors/{gsub(",","");n+=$4+$6+$8+$10} END{print n+0}' "$f")"
}

# build_bare: builds the bare Pingora anchor from $BARE into $RUN when $PROXIES asks for it and
# sets BARE_BIN; without it, pingora leaves $PROXIES.
build_bare() {
  BARE_BIN=""
  [[ $PROXIES == *pingora* ]] || return 0
  if [[ -f $BARE/Cargo.toml ]]; then
    log "building bare-pingora from $BARE"
    CARGO_TARGET_DIR=$RUN/bare-target cargo build --release --quiet --manifest-path "$BARE/Cargo.toml" \
      && BARE_BIN=$RUN/bare-target/release/bare-pingora
  fi
  [[ -n $BARE_BIN ]] || { PROXIES=${PROXIES//pingora/}; log "no bare-pingora: skipped"; }
}

# nginx_cache_proxy DIR PORT UPSTREAM_PORT CACHE_DIR MAX_SIZE INACTIVE: starts nginx as the
# classic caching reverse proxy the benches compare with ($WORKERS workers, proxy_cache in
# CACHE_DIR, keep-alive to the upstream), its config and logs in DIR; named "nginx" in PID.
nginx_cache_proxy() {
  local d=$1 port=$2 up=$3 cache=$4 max=$5 inactive=$6
  cat >"$d/nginx.conf" <<CONF
worker_processes $WORKERS; daemon off; pid $d/nginx.pid; error_log $d/error.log warn;
events { worker_connections 4096; }
http {
  access_log off; sendfile on; tcp_nopush off; tcp_nodelay on; keepalive_requests 100000;
  proxy_cache_path $cache levels=1:2 keys_zone=edge:16m max_size=$max inactive=$inactive use_temp_path=off;
  upstream origin { server 127.0.0.1:$up; keepalive 64; }
  server {
    listen 127.0.0.1:$port backlog=4096;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection "";
                 proxy_cache edge; }
  }
}
CONF
  launch nginx "$port" nginx -e "$d/error.log" -p "$d" -c "$d/nginx.conf"
}

# edge_conf_head DIR PORT: the first lines of an edge's bench config (threads, listener, admin on
# PORT+10, warn-level log without access log, nginx's keepalive_requests).
edge_conf_head() {
  cat <<CONF
server: {threads: $WORKERS, pid_file: $1/edge.pid, upgrade_sock: $1/edge.sock}
listen: ["127.0.0.1:$2"]
admin: {listen: "127.0.0.1:$(($2 + 10))"}
log: {level: warn, access: false}
client: {keepalive_requests: 100000}   # as nginx's keepalive_requests
CONF
}
