//! Origins and the connections to them: reuse, time to first byte, connects, retries, why
//! connections were not kept, learned idle timeouts, server health.

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

use super::Reg;
use crate::origin::Origin;

pub struct UpstreamMetrics {
    pub requests: IntCounterVec,
    pub ttfb: HistogramVec,
    pub connect: HistogramVec,
    pub tls_handshake: HistogramVec,
    pub connect_failures: IntCounterVec,
    pub retries: IntCounterVec,
    pub fallbacks: IntCounterVec,
    pub closed: IntCounterVec,
    pub connection_lost: IntCounterVec,
    pub opened: IntCounterVec,
    pub handshake_waits: IntCounterVec,
    pub warm_ready: IntGaugeVec,
    pub idle_learned: GaugeVec,
    pub idle_effective: GaugeVec,
    /// How late this process's timers fire (`clock::SchedDelay`), a term of the idle margin.
    pub timer_lateness: Gauge,
    pub server_up: IntGaugeVec,
}

impl UpstreamMetrics {
    /// One declaration per metric family, name and help text together, read as a table: long
    /// because there are many families, not because anything is decided here.
    pub(super) fn new(r: &Reg) -> Self {
        UpstreamMetrics {
            requests: r.counters(
                "edge_upstream_requests_total",
                "Requests sent to origins, by connection: reused (pooled) or new. Reuse ratio = \
                 reused / all.",
                &["origin", "connection"],
            ),
            ttfb: r.histograms(
                "edge_upstream_ttfb_seconds",
                "Time from sending a request upstream to the first byte of the origin's response \
                 header, by connection: reused (pooled), warm (opened ahead of need, first \
                 request) or new (opened for this request).",
                &["origin", "connection", "cache"],
            ),
            connect: r.histograms(
                "edge_upstream_connect_seconds",
                "TCP connect time of new upstream connections.",
                &["origin"],
            ),
            tls_handshake: r.histograms(
                "edge_upstream_tls_handshake_seconds",
                "TLS handshake time of new upstream connections to HTTPS origins (after TCP \
                 connect), by whether the origin resumed the edge's earlier session.",
                &["origin", "resumed"],
            ),
            connect_failures: r.counters(
                "edge_upstream_connect_failures_total",
                "Failed connects to an origin server (refused, timed out, unreachable).",
                &["origin", "server"],
            ),
            retries: r.counters(
                "edge_upstream_retries_total",
                "Upstream attempts after a failed one, by reason: connect_failure (failover to \
                 another server), connection_lost (a reused connection failed; idempotent \
                 requests only) or next_server (a connection failed before any answer; \
                 idempotent requests, to another server).",
                &["origin", "reason"],
            ),
            fallbacks: r.counters(
                "edge_upstream_fallbacks_total",
                "Requests a shield tier handed to its fallback origin because no shield \
                 server was up or answered.",
                &["origin"],
            ),
            closed: r.counters(
                "edge_upstream_connections_closed_total",
                "Upstream connections not kept, by reason. Closed by the edge after a response: \
                 max_requests, pool_full, pooling_off, origin_max (the origin's Keep-Alive max), \
                 stale_for_unsafe (a POST refused a pooled connection idle past the learned \
                 limit). Closed by the origin: origin_close (it said Connection: close), \
                 origin_idle (found closed when reused: a race the learned idle timeout should \
                 prevent).",
                &["origin", "reason"],
            ),
            connection_lost: r.counters(
                "edge_upstream_connection_lost_total",
                "Requests sent on a pooled connection the origin had already closed: retried (on \
                 a new connection; idempotent requests) or failed (could not be retried: must \
                 stay 0).",
                &["origin", "outcome"],
            ),
            opened: r.counters(
                "edge_upstream_connections_opened_total",
                "Upstream connections opened, by reason: demand (a request found no pooled or \
                 warm connection and waited for this one), warm (opened ahead of need, \
                 keepalive.warm), probe (idle-timeout measurement), health_check.",
                &["origin", "reason"],
            ),
            handshake_waits: r.counters(
                "edge_upstream_handshake_waits_total",
                "Upstream requests that waited for their connection to be set up (TCP connect, \
                 and the TLS handshake for HTTPS origins) after they arrived. Share of requests \
                 that paid a handshake = this / edge_upstream_requests_total.",
                &["origin"],
            ),
            warm_ready: r.gauges(
                "edge_upstream_warm_connections",
                "Connections to a server opened ahead of need and waiting for a request \
                 (keepalive.warm).",
                &["origin", "server"],
            ),
            idle_learned: r.float_gauges(
                "edge_upstream_idle_timeout_learned_seconds",
                "The origin server's own idle timeout as learned (Keep-Alive header, probes, \
                 closed connections); absent until learned.",
                &["origin", "server"],
            ),
            idle_effective: r.float_gauges(
                "edge_upstream_idle_timeout_effective_seconds",
                "How long a pooled connection to this server may stay idle now: the configured \
                 idle_timeout, or the learned timeout minus the margin if lower.",
                &["origin", "server"],
            ),
            timer_lateness: r.add(
                Gauge::new(
                    "edge_timer_lateness_seconds",
                    "How late this process's timers fire, as the background loop sees it: the \
                     worst recent lateness, fading over about ten seconds. Part of the margin \
                     kept before a learned origin idle timeout.",
                )
                .expect("metric definition"),
            ),
            server_up: r.gauges(
                "edge_origin_server_up",
                "1 if an origin server is taking traffic, 0 if health checks or failures took it \
                 out.",
                &["origin", "server"],
            ),
        }
    }

    /// Drops the series of a server that a reload removed, so dashboards do not show it forever.
    pub fn forget_server(&self, origin: &str, server: &str) {
        let labels = [origin, server];
        let _ = self.server_up.remove_label_values(&labels);
        let _ = self.connect_failures.remove_label_values(&labels);
        let _ = self.idle_learned.remove_label_values(&labels);
        let _ = self.idle_effective.remove_label_values(&labels);
        let _ = self.warm_ready.remove_label_values(&labels);
    }

    /// Health and idle-timeout gauges, derived at scrape time: passive marks expire by the
    /// clock, not by an event, so only a read at scrape time shows them exactly.
    pub fn refresh<'a>(
        &self,
        origins: impl Iterator<Item = &'a std::sync::Arc<Origin>>,
        sched: std::time::Duration,
    ) {
        self.timer_lateness.set(sched.as_secs_f64());
        for origin in origins {
            for s in &origin.servers {
                s.metrics.up.set(s.health().is_up() as i64);
                let labels = [origin.name.as_str(), s.address.as_str()];
                match s.state.idle.learned() {
                    Some(t) => self
                        .idle_learned
                        .with_label_values(&labels)
                        .set(t.as_secs_f64()),
                    None => {
                        let _ = self.idle_learned.remove_label_values(&labels);
                    }
                }
                self.idle_effective
                    .with_label_values(&labels)
                    .set(origin.idle_limit(s, sched).as_secs_f64());
            }
        }
    }
}

/// The `cache` label of upstream TTFB: why the origin was asked. `miss`: not in cache;
/// `expired`: stale in cache and refetched; `revalidate`: stale and confirmed (304);
/// `pass`: the request or response does not use the cache.
pub const TTFB_CACHE_LABELS: [&str; 4] = ["miss", "expired", "revalidate", "pass"];

/// Handles for one origin, resolved once.
pub struct OriginMetrics {
    pub reused: IntCounter,
    pub new: IntCounter,
    /// By [connection][cache kind]: see [`TTFB_CONNECTION_LABELS`], [`TTFB_CACHE_LABELS`].
    pub ttfb: [[Histogram; 4]; 3],
    pub connect: Histogram,
    /// TLS handshake time by `[full, resumed]`.
    pub tls_handshake: [Histogram; 2],
    pub retries_connect_failure: IntCounter,
    pub retries_connection_lost: IntCounter,
    pub retries_next_server: IntCounter,
    pub fallbacks: IntCounter,
    pub closed_max_requests: IntCounter,
    pub closed_pool_full: IntCounter,
    pub closed_pooling_off: IntCounter,
    pub closed_origin_max: IntCounter,
    /// The origin answered with `Connection: close`.
    pub closed_by_origin: IntCounter,
    /// A pooled connection was found closed by the origin on reuse.
    pub closed_origin_idle: IntCounter,
    /// A non-retryable request refused a pooled connection idle past the current limit.
    pub closed_stale_for_unsafe: IntCounter,
    /// Requests that hit a pooled connection the origin had closed: retried on a new one...
    pub lost_connection_retried: IntCounter,
    /// ...or failed because they could not be retried (the figure that must stay at zero).
    pub lost_connection_failed: IntCounter,
    pub duration: Histogram,
    pub opened_demand: IntCounter,
    pub opened_warm: IntCounter,
    pub opened_probe: IntCounter,
    pub opened_health_check: IntCounter,
    pub handshake_waits: IntCounter,
}

/// The `connection` label of upstream TTFB, indexed by [`OriginMetrics::ttfb`]'s first level.
pub const TTFB_CONNECTION_LABELS: [&str; 3] = ["new", "reused", "warm"];

impl OriginMetrics {
    pub fn new(m: &super::Metrics, origin: &str) -> Self {
        let u = &m.upstream;
        let closed = |reason| u.closed.with_label_values(&[origin, reason]);
        OriginMetrics {
            reused: u.requests.with_label_values(&[origin, "reused"]),
            new: u.requests.with_label_values(&[origin, "new"]),
            ttfb: TTFB_CONNECTION_LABELS.map(|conn| {
                TTFB_CACHE_LABELS.map(|cache| u.ttfb.with_label_values(&[origin, conn, cache]))
            }),
            connect: u.connect.with_label_values(&[origin]),
            tls_handshake: ["false", "true"]
                .map(|resumed| u.tls_handshake.with_label_values(&[origin, resumed])),
            retries_connect_failure: u.retries.with_label_values(&[origin, "connect_failure"]),
            retries_connection_lost: u.retries.with_label_values(&[origin, "connection_lost"]),
            retries_next_server: u.retries.with_label_values(&[origin, "next_server"]),
            fallbacks: u.fallbacks.with_label_values(&[origin]),
            closed_max_requests: closed("max_requests"),
            closed_pool_full: closed("pool_full"),
            closed_pooling_off: closed("pooling_off"),
            closed_origin_max: closed("origin_max"),
            closed_by_origin: closed("origin_close"),
            closed_origin_idle: closed("origin_idle"),
            closed_stale_for_unsafe: closed("stale_for_unsafe"),
            lost_connection_retried: u.connection_lost.with_label_values(&[origin, "retried"]),
            lost_connection_failed: u.connection_lost.with_label_values(&[origin, "failed"]),
            duration: m.client.request_duration.with_label_values(&[origin]),
            opened_demand: u.opened.with_label_values(&[origin, "demand"]),
            opened_warm: u.opened.with_label_values(&[origin, "warm"]),
            opened_probe: u.opened.with_label_values(&[origin, "probe"]),
            opened_health_check: u.opened.with_label_values(&[origin, "health_check"]),
            handshake_waits: u.handshake_waits.with_label_values(&[origin]),
        }
    }

    /// Records a TLS handshake with this origin: how long it took (after the TCP connect),
    /// filed by whether the origin resumed the session (a backend that does not say counts as
    /// full).
    pub fn tls_handshake_done(&self, took: std::time::Duration, resumed: Option<bool>) {
        self.tls_handshake[resumed.unwrap_or(false) as usize].observe(took.as_secs_f64());
    }
}

/// Per-server handles.
pub struct ServerMetrics {
    pub up: IntGauge,
    pub connect_failures: IntCounter,
    pub warm_ready: IntGauge,
}

impl ServerMetrics {
    pub fn new(m: &super::Metrics, origin: &str, server: &str) -> Self {
        let u = &m.upstream;
        let up = u.server_up.with_label_values(&[origin, server]);
        up.set(1);
        ServerMetrics {
            up,
            connect_failures: u.connect_failures.with_label_values(&[origin, server]),
            warm_ready: u.warm_ready.with_label_values(&[origin, server]),
        }
    }
}
