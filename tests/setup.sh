#!/usr/bin/env bash
# Installs what the tests need and a fresh Debian/Ubuntu machine lacks (a Rust toolchain aside);
# the README's test command is `bash tests/setup.sh && cargo test`.
#   cmake, C compiler, make : Pingora's zlib-ng and jemalloc are built from source
#   prometheus              : tests/observability.rs evaluates dashboards and alerts with a real one
#   curl (with nghttp2)     : tests/tls.rs speaks h2 to the edge
#   ca-certificates         : the system roots HTTPS origins are verified against by default
#   nginx                   : tests/keepalive_margin.rs needs an origin with a precise idle timer
#   nats-server             : tests/cluster.rs runs a fleet of edges on a real NATS JetStream
#   e2fsprogs (chattr)      : tests/observability.rs makes the disk tier's directory immutable
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v cmake >/dev/null || need+=(cmake)
command -v cc >/dev/null || need+=(build-essential)
command -v make >/dev/null || need+=(make)
command -v prometheus >/dev/null || need+=(prometheus)
command -v curl >/dev/null || need+=(curl)
[[ -f /etc/ssl/certs/ca-certificates.crt ]] || need+=(ca-certificates)
{ command -v nginx || [[ -x /usr/sbin/nginx ]]; } >/dev/null || need+=(nginx)
{ command -v nats-server || [[ -x /usr/sbin/nats-server ]]; } >/dev/null || need+=(nats-server)
command -v chattr >/dev/null || need+=(e2fsprogs)
if ((${#need[@]})); then
  echo "tests/setup.sh: installing ${need[*]}" >&2
  sudo=""
  [[ $(id -u) == 0 ]] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
