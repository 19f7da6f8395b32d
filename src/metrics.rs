//! Prometheus metrics. One registry for the process; per-origin handles are resolved once when
//! an origin is built, so the request path does no label hashing or map lookups.
//!
//! The two figures operators watch first:
//! - `edge_upstream_requests_total{origin, connection="reused"|"new"}`: the reuse ratio;
//! - `edge_upstream_ttfb_seconds{origin, connection, cache}`: how long origins take to answer.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Upstream latency buckets: 0.5 ms (a reused loopback connection) to 30 s (a read timeout).
const UPSTREAM_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_requests: IntCounterVec,
    pub upstream_ttfb: HistogramVec,
    pub upstream_connect: HistogramVec,
    pub upstream_connect_failures: IntCounterVec,
    pub upstream_retries: IntCounterVec,
    pub upstream_closed_by_edge: IntCounterVec,
    pub upstream_connection_lost: IntCounterVec,
    pub upstream_idle_learned: GaugeVec,
    pub upstream_idle_effective: GaugeVec,
    pub server_up: IntGaugeVec,
    pub refused_requests: IntCounterVec,
    pub response_bytes: IntCounterVec,
    pub client_connections: IntCounter,
    /// Fresh hits answered by the express lane (also counted in `requests`).
    pub express_hits: IntCounter,
    pub client_connections_open: IntGauge,
    pub client_requests_per_connection: Histogram,
    pub reloads: IntCounterVec,
    pub cache_bytes: IntGauge,
    pub cache_objects: IntGauge,
    pub cache_evictions: IntGauge,
    pub cache_evicted_bytes: IntGauge,
    pub cache_purged: IntCounterVec,
    pub cache_file_bytes: IntGauge,
    pub cache_files: IntGauge,
    pub memory_allocated: IntGauge,
    pub memory_resident: IntGauge,
    pub last_reload_success: Gauge,
    pub config_info: IntGaugeVec,
}

/// Registers a metric and hands it back (a clone shares the same series).
fn register<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("metric definition"),
    )
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    register(
        r,
        HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        )
        .expect("metric definition"),
    )
}

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        let requests = counter(
            &r,
            "edge_requests_total",
            "Client requests answered, by route, origin, status class (2xx..5xx) and cache outcome \
             (hit, stale, revalidated, miss, expired, pass, request, bypass, none).",
            &["route", "origin", "status", "cache"],
        );
        let response_bytes = counter(
            &r,
            "edge_response_bytes_total",
            "Response body bytes sent to clients, by origin and cache status.",
            &["origin", "cache"],
        );
        let request_duration = histogram(
            &r,
            "edge_request_duration_seconds",
            "Time from the client's request header to the end of the response, by origin.",
            &["origin"],
            UPSTREAM_BUCKETS,
        );
        let upstream_requests = counter(
            &r,
            "edge_upstream_requests_total",
            "Requests sent to origins, by connection: reused (pooled) or new. Reuse ratio = reused / all.",
            &["origin", "connection"],
        );
        let upstream_ttfb = histogram(
            &r,
            "edge_upstream_ttfb_seconds",
            "Time from sending a request upstream to the first byte of the origin's response header.",
            &["origin", "connection", "cache"],
            UPSTREAM_BUCKETS,
        );
        let upstream_connect = histogram(
            &r,
            "edge_upstream_connect_seconds",
            "TCP connect time of new upstream connections.",
            &["origin"],
            UPSTREAM_BUCKETS,
        );
        let upstream_connect_failures = counter(
            &r,
            "edge_upstream_connect_failures_total",
            "Failed connects to an origin server (refused, timed out, unreachable).",
            &["origin", "server"],
        );
        let upstream_retries = counter(
            &r,
            "edge_upstream_retries_total",
            "Upstream attempts after a failed one, by reason: connect_failure (failover to another \
             server) or connection_lost (a reused connection failed; idempotent requests only).",
            &["origin", "reason"],
        );
        let upstream_closed_by_edge = counter(
            &r,
            "edge_upstream_connections_closed_total",
            "Upstream connections not kept, by reason. Closed by the edge after a response: \
             max_requests, pool_full, pooling_off, origin_max (the origin's Keep-Alive max), \
             stale_for_unsafe (a POST refused a pooled connection idle past the learned limit). \
             Closed by the origin: origin_close (it said Connection: close), origin_idle (found \
             closed when reused: a race the learned idle timeout should prevent).",
            &["origin", "reason"],
        );
        let upstream_connection_lost = counter(
            &r,
            "edge_upstream_connection_lost_total",
            "Requests sent on a pooled connection the origin had already closed: retried (on a \
             new connection; idempotent requests) or failed (could not be retried: must stay 0).",
            &["origin", "outcome"],
        );
        let upstream_idle_learned = register(
            &r,
            GaugeVec::new(
                Opts::new(
                    "edge_upstream_idle_timeout_learned_seconds",
                    "The origin server's own idle timeout as learned (Keep-Alive header, probes, \
                 closed connections); absent until learned.",
                ),
                &["origin", "server"],
            )
            .expect("metric definition"),
        );
        let upstream_idle_effective = register(
            &r,
            GaugeVec::new(
            Opts::new(
                "edge_upstream_idle_timeout_effective_seconds",
                "How long a pooled connection to this server may stay idle now: the configured \
                 idle_timeout, or the learned timeout minus the margin if lower.",
            ),
            &["origin", "server"],
        ).expect("metric definition"),
        );
        let server_up = register(
            &r,
            IntGaugeVec::new(
            Opts::new(
                "edge_origin_server_up",
                "1 if an origin server is taking traffic, 0 if health checks or failures took it out.",
            ),
            &["origin", "server"],
        ).expect("metric definition"),
        );
        let refused_requests = counter(
            &r,
            "edge_refused_requests_total",
            "Client requests refused by the edge before reaching an origin, by reason.",
            &["reason"],
        );
        let express_hits = register(
            &r,
            IntCounter::new(
                "edge_express_hits_total",
                "Fresh cache hits answered on the client connection before the proxy session \
                 (also counted in edge_requests_total as cache=\"hit\").",
            )
            .expect("metric definition"),
        );
        let client_connections = register(
            &r,
            IntCounter::new(
                "edge_client_connections_total",
                "Client connections that sent at least one request.",
            )
            .expect("metric definition"),
        );
        let client_connections_open = register(
            &r,
            IntGauge::new(
                "edge_client_connections_open",
                "Client connections open now (that sent at least one request).",
            )
            .expect("metric definition"),
        );
        let client_requests_per_connection = register(
            &r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "edge_client_requests_per_connection",
                    "Requests served on a client connection, observed when it closes.",
                )
                .buckets(vec![
                    1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 10000.0,
                ]),
            )
            .expect("metric definition"),
        );
        let reloads = counter(
            &r,
            "edge_config_reloads_total",
            "Config reloads (SIGHUP or POST /reload), by result: success or failure.",
            &["result"],
        );
        // Both results exist from the start at 0, so that increase() sees the first failure.
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]);
        }
        let last_reload_success = register(
            &r,
            Gauge::with_opts(Opts::new(
                "edge_config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful config reload (0 if none since start).",
            ))
            .expect("metric definition"),
        );
        let config_info = register(
            &r,
            IntGaugeVec::new(
            Opts::new(
                "edge_config_info",
                "Always 1; the version label identifies the config in force (a hash of its text).",
            ),
            &["version"],
        ).expect("metric definition"),
        );
        let gauge = |name: &str, help: &str| {
            register(&r, IntGauge::new(name, help).expect("metric definition"))
        };
        let cache_bytes = gauge(
            "edge_cache_size_bytes",
            "Memory held by cached objects (bodies, headers, bookkeeping); bounded by cache.max_size.",
        );
        let cache_objects = gauge("edge_cache_objects", "Objects in the cache.");
        // Counters in meaning, read from the eviction manager's running totals at scrape time.
        let cache_evictions = gauge(
            "edge_cache_evictions_total",
            "Objects evicted to stay within cache.max_size, since start.",
        );
        let cache_evicted_bytes = gauge(
            "edge_cache_evicted_bytes_total",
            "Bytes evicted to stay within cache.max_size, since start.",
        );
        let cache_file_bytes = gauge(
            "edge_cache_file_bytes",
            "Cached bodies held in memory files for sendfile (64 KiB and up): RAM the process's \
             RSS does not show. Part of edge_cache_size_bytes.",
        );
        let cache_files = gauge(
            "edge_cache_files",
            "Memory files holding cached bodies (one file descriptor each; at most a quarter of \
             the descriptor limit).",
        );
        let memory_allocated = gauge(
            "edge_memory_allocated_bytes",
            "Heap memory in use by live allocations (jemalloc's stats.allocated).",
        );
        let memory_resident = gauge(
            "edge_memory_resident_bytes",
            "Memory the allocator keeps in RAM (jemalloc's stats.resident): live allocations plus \
             its caches, metadata and fragmentation; close to the process's RSS.",
        );
        let cache_purged = counter(
            &r,
            "edge_cache_purged_total",
            "Objects removed by purge (url, prefix, tag) or invalidated by unsafe requests.",
            &["kind"],
        );
        for kind in ["url", "prefix", "tag", "invalidation"] {
            cache_purged.with_label_values(&[kind]);
        }
        Metrics {
            registry: r,
            cache_bytes,
            cache_objects,
            cache_evictions,
            cache_evicted_bytes,
            cache_purged,
            cache_file_bytes,
            cache_files,
            memory_allocated,
            memory_resident,
            reloads,
            last_reload_success,
            config_info,
            requests,
            request_duration,
            upstream_requests,
            upstream_ttfb,
            upstream_connect,
            upstream_connect_failures,
            upstream_retries,
            upstream_closed_by_edge,
            upstream_connection_lost,
            upstream_idle_learned,
            upstream_idle_effective,
            server_up,
            refused_requests,
            response_bytes,
            client_connections,
            express_hits,
            client_connections_open,
            client_requests_per_connection,
        }
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 << 10);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        out
    }
}

pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

/// The `cache` label of upstream TTFB: why the origin was asked. `miss`: not in cache;
/// `expired`: stale in cache and refetched; `revalidate`: stale and confirmed (304);
/// `pass`: the request or response does not use the cache.
pub const TTFB_CACHE_LABELS: [&str; 4] = ["miss", "expired", "revalidate", "pass"];

/// Handles for one origin, resolved once.
pub struct OriginMetrics {
    pub reused: IntCounter,
    pub new: IntCounter,
    /// By [reused as usize][cache kind]: see [`TTFB_CACHE_LABELS`].
    pub ttfb: [[Histogram; 4]; 2],
    pub connect: Histogram,
    pub retries_connect_failure: IntCounter,
    pub retries_connection_lost: IntCounter,
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
}

impl OriginMetrics {
    pub fn new(origin: &str) -> Self {
        let m = metrics();
        OriginMetrics {
            reused: m.upstream_requests.with_label_values(&[origin, "reused"]),
            new: m.upstream_requests.with_label_values(&[origin, "new"]),
            ttfb: ["new", "reused"].map(|conn| {
                TTFB_CACHE_LABELS
                    .map(|cache| m.upstream_ttfb.with_label_values(&[origin, conn, cache]))
            }),
            connect: m.upstream_connect.with_label_values(&[origin]),
            retries_connect_failure: m
                .upstream_retries
                .with_label_values(&[origin, "connect_failure"]),
            retries_connection_lost: m
                .upstream_retries
                .with_label_values(&[origin, "connection_lost"]),
            closed_max_requests: m
                .upstream_closed_by_edge
                .with_label_values(&[origin, "max_requests"]),
            closed_pool_full: m
                .upstream_closed_by_edge
                .with_label_values(&[origin, "pool_full"]),
            closed_pooling_off: m
                .upstream_closed_by_edge
                .with_label_values(&[origin, "pooling_off"]),
            duration: m.request_duration.with_label_values(&[origin]),
            closed_origin_max: m
                .upstream_closed_by_edge
                .with_label_values(&[origin, "origin_max"]),
            closed_by_origin: m
                .upstream_closed_by_edge
                .with_label_values(&[origin, "origin_close"]),
            closed_origin_idle: m
                .upstream_closed_by_edge
                .with_label_values(&[origin, "origin_idle"]),
            closed_stale_for_unsafe: m
                .upstream_closed_by_edge
                .with_label_values(&[origin, "stale_for_unsafe"]),
            lost_connection_retried: m
                .upstream_connection_lost
                .with_label_values(&[origin, "retried"]),
            lost_connection_failed: m
                .upstream_connection_lost
                .with_label_values(&[origin, "failed"]),
        }
    }
}

/// Per-server handles.
pub struct ServerMetrics {
    pub up: IntGauge,
    pub connect_failures: IntCounter,
}

impl ServerMetrics {
    pub fn new(origin: &str, server: &str) -> Self {
        let m = metrics();
        let up = m.server_up.with_label_values(&[origin, server]);
        up.set(1);
        ServerMetrics {
            up,
            connect_failures: m
                .upstream_connect_failures
                .with_label_values(&[origin, server]),
        }
    }
}

/// One client connection, counted while it lives. Created with its first request and carried
/// from request to request (Pingora hands per-connection state over between keep-alive
/// requests); dropped with the connection, whenever and however it closes.
pub struct ClientConnection {
    requests: std::sync::atomic::AtomicU32,
}

impl ClientConnection {
    pub fn open() -> Self {
        let m = metrics();
        m.client_connections.inc();
        m.client_connections_open.inc();
        ClientConnection {
            requests: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Counts a request; returns its position on the connection (1 = first).
    pub fn request(&self) -> u32 {
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1
    }
}

impl Drop for ClientConnection {
    fn drop(&mut self) {
        let m = metrics();
        m.client_connections_open.dec();
        m.client_requests_per_connection
            .observe(self.requests.load(std::sync::atomic::Ordering::Relaxed) as f64);
    }
}
