//! Prometheus metrics. One registry per process, owned by [`crate::state::Edge`] and handed to
//! whoever counts; per-origin handles are resolved once when an origin is built, so the request
//! path does no label hashing or map lookups.
//!
//! The two figures operators watch first:
//! - `edge_upstream_requests_total{origin, connection="reused"|"new"}`: the reuse ratio;
//! - `edge_upstream_ttfb_seconds{origin, connection, cache}`: how long origins take to answer.
//!
//! Families by concern: [`client`] (requests as clients see them), [`upstream`] (origins and
//! their connections), [`cache`] (the store), [`cluster`] (the fleet's purge stream),
//! [`process`] (config, memory).

pub mod cache;
pub mod client;
pub mod cluster;
pub mod process;
pub mod upstream;

use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub use upstream::{OriginMetrics, ServerMetrics, TTFB_CACHE_LABELS, TTFB_CONNECTION_LABELS};

/// Upstream latency buckets: 0.5 ms (a reused loopback connection) to 30 s (a read timeout).
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Metrics {
    pub registry: Registry,
    pub client: client::ClientMetrics,
    pub upstream: upstream::UpstreamMetrics,
    pub cache: cache::CacheMetrics,
    pub cluster: cluster::ClusterMetrics,
    pub process: process::ProcessMetrics,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = Reg(&registry);
        Metrics {
            client: client::ClientMetrics::new(&r),
            upstream: upstream::UpstreamMetrics::new(&r),
            cache: cache::CacheMetrics::new(&r),
            cluster: cluster::ClusterMetrics::new(&r),
            process: process::ProcessMetrics::new(&r),
            registry,
        }
    }

    /// The text exposition format, for `GET /metrics`.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 << 10);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers metrics in one registry. A definition error is a bug in this module's constants,
/// caught by the first test that builds `Metrics`, hence the `expect`s.
struct Reg<'a>(&'a Registry);

impl Reg<'_> {
    fn add<M: Collector + Clone + 'static>(&self, m: M) -> M {
        self.0.register(Box::new(m.clone())).expect("unique metric");
        m
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::new(name, help).expect("metric definition"))
    }

    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels).expect("metric definition"))
    }

    /// A counter family of one label whose `values` all exist at 0 from the start, so their
    /// panels and `rate()`/`increase()` show them before the first event.
    fn counters_from_zero(
        &self,
        name: &str,
        help: &str,
        label: &str,
        values: &[&str],
    ) -> IntCounterVec {
        let family = self.counters(name, help, &[label]);
        for v in values {
            family.with_label_values(&[v]);
        }
        family
    }

    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::new(name, help).expect("metric definition"))
    }

    fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels).expect("metric definition"))
    }

    fn float_gauges(&self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        self.add(GaugeVec::new(Opts::new(name, help), labels).expect("metric definition"))
    }

    fn histograms(&self, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
        self.add(HistogramVec::new(opts, labels).expect("metric definition"))
    }
}

/// Brings a counter up to a running total kept elsewhere (read at scrape time), so the series
/// is a real counter (`# TYPE ... counter`) although the count lives in another component.
pub fn counter_to(c: &IntCounter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition() -> String {
        String::from_utf8(Metrics::new().render()).unwrap()
    }

    /// Prometheus' naming convention: a `_total` is a counter, and nothing else is.
    #[test]
    fn every_total_is_a_counter() {
        let text = exposition();
        let mut seen = 0;
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut parts = line.split_whitespace().skip(2);
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            if name.ends_with("_total") {
                seen += 1;
                assert_eq!(kind, "counter", "{name} is a {kind}");
            }
        }
        assert!(seen >= 5, "{text}");
        assert!(text.contains("# TYPE edge_cache_evictions_total counter"));
        assert!(text.contains("# TYPE edge_cache_evicted_bytes_total counter"));
    }

    /// Known label values exist at 0 from the start, so `rate()` and panels show them before
    /// the first event.
    #[test]
    fn bounded_label_sets_start_at_zero() {
        let text = exposition();
        for reason in crate::guard::REASONS {
            let series = format!("edge_refused_requests_total{{reason=\"{reason}\"}} 0");
            assert!(text.contains(&series), "missing {series}");
        }
        for result in ["success", "failure"] {
            assert!(text.contains(&format!(
                "edge_config_reloads_total{{result=\"{result}\"}} 0"
            )));
        }
        for kind in ["url", "prefix", "tag", "invalidation"] {
            assert!(text.contains(&format!("edge_cache_purged_total{{kind=\"{kind}\"}} 0")));
        }
    }

    #[test]
    fn counter_follows_a_running_total() {
        let m = Metrics::new();
        counter_to(&m.cache.disk.skipped, 5);
        counter_to(&m.cache.disk.skipped, 3);
        assert_eq!(m.cache.disk.skipped.get(), 5);
        counter_to(&m.cache.disk.skipped, 9);
        assert_eq!(m.cache.disk.skipped.get(), 9);
    }
}
