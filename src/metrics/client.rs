//! Requests as clients see them: answered, refused, bytes sent, client connections.

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge};

use super::Reg;

pub struct ClientMetrics {
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub refused_requests: IntCounterVec,
    pub response_bytes: IntCounterVec,
    /// Fresh hits answered by the express lane (also counted in `requests`).
    pub express_hits: IntCounter,
    pub connections: IntCounter,
    pub connections_open: IntGauge,
    /// Connections closed as soon as accepted because `client.max_connections` were open.
    pub connections_refused: IntCounter,
    pub requests_per_connection: Histogram,
    /// Completed TLS handshakes by version (`TLSv1.2`, `TLSv1.3`) and `resumed`.
    pub tls_handshakes: IntCounterVec,
    /// Failed TLS handshakes by reason (`tls::handshakes::FAILURE_REASONS`).
    pub tls_handshake_failures: IntCounterVec,
    /// Requests by protocol and scheme, resolved once: `[protocol][scheme]` as
    /// [`PROTOCOLS`] and [`SCHEMES`] (every request counts in one, the lane's hits included).
    pub requests_by_protocol: [[IntCounter; 2]; 3],
}

/// The `protocol` label of `edge_requests_by_protocol_total`.
pub const PROTOCOLS: [&str; 3] = ["http/1.0", "http/1.1", "h2"];
/// Its `scheme` label, indexed as `cache::key::Scheme`.
pub const SCHEMES: [&str; 2] = ["http", "https"];

impl ClientMetrics {
    /// Counts a request the edge refused, by reason.
    pub fn refused(&self, reason: &str) {
        self.refused_requests.with_label_values(&[reason]).inc();
    }
}

impl ClientMetrics {
    /// One declaration per metric family, name and help text together, read as a table: long
    /// because there are many families, not because anything is decided here.
    pub(super) fn new(r: &Reg) -> Self {
        ClientMetrics {
            tls_handshakes: {
                let v = r.counters(
                    "edge_client_tls_handshakes_total",
                    "Completed TLS handshakes with clients, by version and whether the client \
                     resumed an earlier session (resumed=\"true\": no certificate sent, no \
                     signature made).",
                    &["version", "resumed"],
                );
                for version in ["TLSv1.2", "TLSv1.3"] {
                    for resumed in ["true", "false"] {
                        v.with_label_values(&[version, resumed]);
                    }
                }
                v
            },
            tls_handshake_failures: r.counters_from_zero(
                "edge_client_tls_handshake_failures_total",
                "TLS handshakes with clients that failed, by reason: closed (the client went \
                 away), not_tls (it spoke something else, such as plain HTTP), \
                 certificate_rejected (its alert refused the edge's certificate), incompatible \
                 (no version, cipher suite, signature scheme or ALPN protocol in common), \
                 protocol (a malformed or misplaced TLS message), other.",
                "reason",
                &crate::tls::handshakes::FAILURE_REASONS,
            ),
            requests_by_protocol: {
                let v = r.counters(
                    "edge_requests_by_protocol_total",
                    "Client requests by HTTP version (http/1.0, http/1.1, h2) and scheme (http, \
                     https).",
                    &["protocol", "scheme"],
                );
                PROTOCOLS.map(|p| SCHEMES.map(|s| v.with_label_values(&[p, s])))
            },
            requests: r.counters(
                "edge_requests_total",
                "Client requests answered, by route, origin, status class (2xx..5xx) and cache \
                 outcome (hit, stale, revalidated, miss, expired, pass, request, bypass, none).",
                &["route", "origin", "status", "cache"],
            ),
            response_bytes: r.counters(
                "edge_response_bytes_total",
                "Response body bytes sent to clients, by origin and cache status.",
                &["origin", "cache"],
            ),
            request_duration: r.histograms(
                "edge_request_duration_seconds",
                "Time from the client's request header to the end of the response, by origin.",
                &["origin"],
            ),
            refused_requests: r.counters_from_zero(
                "edge_refused_requests_total",
                "Client requests refused by the edge before reaching an origin, by reason.",
                "reason",
                &crate::guard::REASONS,
            ),
            express_hits: r.counter(
                "edge_express_hits_total",
                "Fresh cache hits answered on the client connection before the proxy session \
                 (also counted in edge_requests_total as cache=\"hit\").",
            ),
            connections: r.counter(
                "edge_client_connections_total",
                "HTTP/1 client connections that sent at least one request (h2 connections are not \
                 counted here: Pingora hands the proxy their streams, not the connection; TLS ones \
                 show in edge_client_tls_handshakes_total).",
            ),
            connections_refused: r.counter(
                "edge_client_connections_refused_total",
                "Client connections closed as soon as they were accepted because \
                 client.max_connections were open.",
            ),
            connections_open: r.gauge(
                "edge_client_connections_open",
                "HTTP/1 client connections open now (that sent at least one request).",
            ),
            requests_per_connection: r.add(
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
            ),
        }
    }
}
