//! Origins: where requests go (routing), which server gets them (balancing, health), how the
//! connection to it is made and kept (peer options, pool limits), and what the edge learns of
//! each server's connections (its idle timeout, its `Keep-Alive` limits, closes found on reuse).

mod balance;
pub mod health;
pub mod keepalive;
pub mod reuse;
pub mod router;
pub mod warm;

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use log::warn;
use pingora::http::ResponseHeader;
use pingora::protocols::l4::ext::TcpKeepalive;
use pingora::upstreams::peer::HttpPeer;

use crate::config::{HealthCheck, OriginConfig, ServerSpec};
use crate::metrics::{Metrics, OriginMetrics, ServerMetrics};
use balance::Balancer;
use health::Health;
use reuse::{ConnectionLedger, UpstreamConn};

/// What a server keeps across reloads: its health and its in-flight count. A reload that keeps
/// a server (same origin, same address) hands this on, so a server that is down stays down and
/// pool limits keep counting the requests already on it.
#[derive(Default)]
pub struct ServerState {
    pub health: Health,
    /// The server's own idle timeout, as learned.
    pub idle: keepalive::IdleLearning,
    /// Requests on this server right now; bounds how many connections are kept (pool_size).
    in_flight: AtomicUsize,
    /// Connections opened ahead of need (`keepalive.warm`).
    pub warm: warm::WarmPool,
}

/// One server of an origin.
pub struct Server {
    pub address: String,
    pub addr: SocketAddr,
    pub state: Arc<ServerState>,
    pub metrics: ServerMetrics,
    /// The name sent in SNI to this server (HTTPS origins), for the edge's own probes.
    pub sni: String,
    /// Pre-built peer: cloning it per request is cheaper than rebuilding options.
    peer: HttpPeer,
    /// For an HTTPS server over HTTP/1.1 with warm connections: the peer its connections are
    /// opened as (TLS, ALPN `http/1.1`), by the warm loop and by `warm::tls::WarmTls`.
    pub warm_tls: Option<warm::tls::WarmTlsPeer>,
}

impl Server {
    /// The peer for one request: pooled connections stay idle at most `idle` after it.
    /// `fresh` forces a new connection (its own pool group), for retries after a pooled
    /// connection was found closed.
    pub fn peer(&self, idle: Duration, fresh: bool) -> Box<HttpPeer> {
        let mut p = Box::new(self.peer.clone());
        if p.options.idle_timeout != Some(Duration::ZERO) {
            p.options.idle_timeout = Some(idle);
        }
        if fresh {
            p.group_key ^= FRESH_CONNECTION_GROUP;
            // Not pooled afterwards either: pooled under the flipped group, it would be what
            // the next "fresh" retry picks up, possibly closed by then (seen: a GET retried
            // onto a second stale connection, and failed).
            p.options.idle_timeout = Some(Duration::ZERO);
        }
        p
    }

    pub fn health(&self) -> &Health {
        &self.state.health
    }

    pub fn set_up(&self, up: bool) {
        self.metrics.up.set(up as i64);
    }
}

/// Holds one unit of a server's in-flight count; released on drop so that every exit path of
/// a request (success, error, retry on another server) gives it back.
pub struct InFlight {
    state: Arc<ServerState>,
    /// In-flight requests on the server, this one included, when it started.
    pub concurrency: usize,
}

impl InFlight {
    pub fn new(state: Arc<ServerState>) -> Self {
        let concurrency = state.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        InFlight { state, concurrency }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct Origin {
    pub name: String,
    pub config: OriginConfig,
    pub servers: Vec<Arc<Server>>,
    balancer: Balancer,
    pub metrics: OriginMetrics,
    /// The Host header sent upstream when the origin sets one (parsed once).
    pub host_header: Option<http::HeaderValue>,
    /// TLS for the edge's own probes of an HTTPS origin (health checks, idle-timeout probes).
    pub probe_tls: Option<Arc<pingora::tls::ClientConfig>>,
}

impl Origin {
    /// Builds an origin; `previous` is the origin of the same name in the config being
    /// replaced, whose servers hand their state on to servers with the same address.
    pub fn new(
        name: &str,
        config: &OriginConfig,
        previous: Option<&Origin>,
        m: &Metrics,
        ca_bundle: &BTreeSet<PathBuf>,
    ) -> Self {
        let key = connection_group(name, config);
        let servers = config
            .servers
            .iter()
            .map(|s| {
                let state = previous
                    .and_then(|p| p.servers.iter().find(|old| old.addr == s.addr))
                    .map(|old| old.state.clone())
                    .unwrap_or_default();
                Arc::new(Server {
                    address: s.address.clone(),
                    addr: s.addr,
                    metrics: ServerMetrics::new(m, name, &s.address),
                    sni: config
                        .tls
                        .as_ref()
                        .map(|t| crate::tls::upstream::sni(config, t, &s.address))
                        .unwrap_or_default(),
                    peer: build_peer(s, key, config, ca_bundle, &state),
                    warm_tls: warm_over_tls(config).then(|| {
                        warm::tls::WarmTlsPeer::new(build_peer(s, key, config, ca_bundle, &state))
                    }),
                    state,
                })
            })
            .collect();
        let balancer = Balancer::new(
            config.balance,
            &config
                .servers
                .iter()
                .map(|s| (s.address.clone(), s.weight))
                .collect::<Vec<_>>(),
        );
        Origin {
            name: name.to_string(),
            config: config.clone(),
            servers,
            balancer,
            metrics: OriginMetrics::new(m, name),
            probe_tls: config.tls.as_ref().map(crate::tls::upstream::probe_config),
            host_header: config
                .host
                .as_deref()
                .and_then(|h| http::HeaderValue::from_str(h).ok()),
        }
    }

    /// Picks a server for a request, skipping those already tried by it. Healthy servers first;
    /// if none is healthy, any untried one (Envoy's "panic mode"): when every health signal says
    /// down, trying is better than refusing, and a dead server fails fast anyway.
    /// A shield tier has no panic mode: with every shield down its fallback origin answers.
    pub fn pick(&self, key: &[u8], tried: &[usize]) -> Option<usize> {
        let untried = |i: usize| !tried.contains(&i);
        let healthy = self
            .balancer
            .pick(key, |i| untried(i) && self.servers[i].health().is_up());
        if self.config.shield.is_some() {
            return healthy;
        }
        healthy.or_else(|| self.balancer.pick(key, untried))
    }

    /// The origin asked when no server of this shield tier answers (`shield.fallback`).
    pub fn fallback(&self) -> Option<&str> {
        self.config.shield.as_ref().map(|s| s.fallback.as_str())
    }

    pub fn health_check(&self) -> Option<&HealthCheck> {
        self.config.health_check.as_ref()
    }

    /// How a probe reaches `server`: TLS settings and SNI for an HTTPS origin, None for TCP.
    pub fn probe_tls<'a>(
        &'a self,
        server: &'a Server,
    ) -> Option<(&'a Arc<pingora::tls::ClientConfig>, &'a str)> {
        self.probe_tls.as_ref().map(|c| (c, server.sni.as_str()))
    }

    /// Host header for health probes.
    pub fn probe_host<'a>(&'a self, server: &'a Server) -> &'a str {
        self.config.host.as_deref().unwrap_or(&server.address)
    }

    /// How long a pooled connection to this server may stay idle now: the configured
    /// `idle_timeout`, or less when the server's own timeout was learned; `sched` is how late
    /// this process's timers fire (`clock::SchedDelay`).
    pub fn idle_limit(&self, server: &Server, sched: Duration) -> Duration {
        let ka = &self.config.keepalive;
        server.state.idle.effective_idle(
            ka.idle_timeout.get(),
            ka.learn,
            ka.margin.map(|m| m.get()),
            sched,
        )
    }

    /// Whether pooled reuse is switched off for this origin.
    pub fn pooling_off(&self) -> bool {
        self.config.keepalive.pool_size == 0 || self.config.keepalive.idle_timeout.get().is_zero()
    }

    /// Learns from the response header of `server` what it says about its connection:
    /// `Keep-Alive: timeout=` (its idle timeout), `max=` (requests left on `conn`), and
    /// `Connection: close` (counted, unless the edge itself asked for the close).
    pub fn learn_from_response(
        &self,
        server: &Server,
        resp: &ResponseHeader,
        conn: Option<&UpstreamConn>,
        ledger: &ConnectionLedger,
        edge_asked_close: bool,
    ) {
        if let Some(ka) = resp.headers.get("keep-alive").and_then(|v| v.to_str().ok()) {
            let (timeout, max) = keepalive::parse_keep_alive(ka);
            if let Some(t) = timeout {
                server.state.idle.header_said(t);
            }
            if let (Some(max), Some(c)) = (max, conn) {
                ledger.origin_max(c.fd, c.established, c.usage.request_no, max);
            }
        }
        let closing = resp
            .headers
            .get(http::header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("close"));
        if closing && !edge_asked_close {
            self.metrics.closed_by_origin.inc();
        }
    }

    /// A request failed on a pooled connection of `server` before any response: the origin had
    /// closed it while it was idle. Learns from its idle age (a close earlier than the learned
    /// timeout caps it, and a new probe is asked for) and counts the request as retried on a new
    /// connection or lost.
    pub fn found_closed(
        &self,
        server: &Server,
        idle_age: Option<Duration>,
        method: &str,
        retried: bool,
    ) {
        self.metrics.closed_origin_idle.inc();
        if let Some(age) = idle_age {
            if self.config.keepalive.learn {
                server.state.idle.found_closed_at(age);
                server.state.idle.request_probe();
            }
            warn!(
                "origin {} server {}: pooled connection idle for {:?} was closed by the origin; {} {}",
                self.name,
                server.address,
                age,
                method,
                if retried { "retried on a new connection" } else { "failed (not retryable)" }
            );
        }
        if retried {
            self.metrics.lost_connection_retried.inc();
        } else {
            self.metrics.lost_connection_failed.inc();
        }
    }

    /// A connect to `server` failed: passive health (it may be marked down) and the count.
    pub fn connect_failed(&self, server: &Server, error: &dyn std::fmt::Display) {
        server.metrics.connect_failures.inc();
        if server.health().connect_failed(&self.config.passive_health) {
            warn!(
                "origin {} server {} marked down for {} after connect failure: {error}",
                self.name, server.address, self.config.passive_health.fail_timeout
            );
        }
    }
}

/// Flips a peer's group so that it matches no pooled connection.
const FRESH_CONNECTION_GROUP: u64 = 0x5EED_F00D_0000_0001;

/// Connections of origins with the same name and connection settings may be shared; anything
/// else gets its own pool group. So two origins on one address never share connections (their
/// timeouts and limits differ), and a reload that changes an origin's connection settings
/// starts it on fresh connections while origins it did not touch keep theirs warm.
fn connection_group(name: &str, c: &OriginConfig) -> u64 {
    // In-process only (pool keys), but with the edge's one specified hash all the same.
    let mut h = xxhash_rust::xxh3::Xxh3Default::new();
    name.hash(&mut h);
    c.keepalive.hash(&mut h);
    c.timeouts.hash(&mut h);
    c.tcp_keepalive.hash(&mut h);
    c.tls.hash(&mut h);
    c.http2.hash(&mut h);
    h.finish()
}

fn build_peer(
    server: &ServerSpec,
    group_key: u64,
    c: &OriginConfig,
    ca_bundle: &BTreeSet<PathBuf>,
    state: &Arc<ServerState>,
) -> HttpPeer {
    let sni = c
        .tls
        .as_ref()
        .map(|t| crate::tls::upstream::sni(c, t, &server.address))
        .unwrap_or_default();
    let mut p = HttpPeer::new(server.addr, c.tls.is_some(), sni);
    if let Some(t) = &c.tls {
        crate::tls::upstream::configure_peer(&mut p, c, t, ca_bundle);
    }
    p.group_key = group_key;
    let o = &mut p.options;
    o.connection_timeout = Some(c.timeouts.connect.get());
    o.read_timeout = Some(c.timeouts.read.get());
    o.write_timeout = Some(c.timeouts.write.get());
    // Pingora: None = keep forever, Some(0) = never pool.
    o.idle_timeout = Some(if c.keepalive.pool_size == 0 {
        Duration::ZERO
    } else {
        c.keepalive.idle_timeout.get()
    });
    o.tcp_keepalive = c.tcp_keepalive.as_ref().map(|k| TcpKeepalive {
        idle: k.idle.get(),
        interval: k.interval.get(),
        count: k.count,
        #[cfg(target_os = "linux")]
        user_timeout: Duration::ZERO,
    });
    if warm_over_tls(c) {
        // Its new connections come from the proxy's custom connector (`warm::tls`).
        o.alpn = warm::tls::warm_alpn();
    } else if c.keepalive.warm > 0 {
        o.custom_l4 = Some(Arc::new(warm::tcp::WarmTcp {
            server: state.clone(),
            connect_timeout: c.timeouts.connect.get(),
        }));
    }
    p
}

/// Whether an origin's warm connections are TLS ones (HTTPS over HTTP/1.1), opened whole
/// ahead of need; otherwise they are TCP ones (`warm::tcp`).
fn warm_over_tls(c: &OriginConfig) -> bool {
    c.keepalive.warm > 0 && c.tls.is_some() && !c.http2
}
