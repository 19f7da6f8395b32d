//! The process itself: config reloads and the version in force, memory, the access log.

use prometheus::{Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

use super::Reg;

pub struct ProcessMetrics {
    pub reloads: IntCounterVec,
    pub last_reload_success: Gauge,
    pub config_info: IntGaugeVec,
    pub memory_allocated: IntGauge,
    pub memory_resident: IntGauge,
    pub certificate_expiry: GaugeVec,
    /// Handed to the access log's writer (`access_log`), which counts what it loses.
    pub access_log_dropped: IntCounter,
}

impl ProcessMetrics {
    pub(super) fn new(r: &Reg) -> Self {
        let reloads = r.counters_from_zero(
            "edge_config_reloads_total",
            "Config reloads (SIGHUP or POST /reload), by result: success or failure.",
            "result",
            &["success", "failure"],
        );
        ProcessMetrics {
            reloads,
            last_reload_success: r.add(
                Gauge::with_opts(Opts::new(
                    "edge_config_last_reload_success_timestamp_seconds",
                    "Unix time of the last successful config reload (0 if none since start).",
                ))
                .expect("metric definition"),
            ),
            config_info: r.gauges(
                "edge_config_info",
                "Always 1; the version label identifies the config in force (a hash of its text).",
                &["version"],
            ),
            memory_allocated: r.gauge(
                "edge_memory_allocated_bytes",
                "Heap memory in use by live allocations (jemalloc's stats.allocated).",
            ),
            certificate_expiry: r.float_gauges(
                "edge_tls_certificate_expiry_timestamp_seconds",
                "Unix time at which each listener certificate in force expires, by its first name.",
                &["name"],
            ),
            access_log_dropped: r.counter(
                "edge_access_log_dropped_lines_total",
                "Access-log lines lost: dropped because the writer fell behind (1 MiB waiting) \
                 or because writing to the destination failed.",
            ),
            memory_resident: r.gauge(
                "edge_memory_resident_bytes",
                "Memory the allocator keeps in RAM (jemalloc's stats.resident): live allocations \
                 plus its caches, metadata and fragmentation; close to the process's RSS.",
            ),
        }
    }

    /// Exposes the version in force as `edge_config_info{version}` (one series at a time).
    pub fn set_config_version(&self, version: &str) {
        self.config_info.reset();
        self.config_info.with_label_values(&[version]).set(1);
    }

    /// The expiry of every certificate in force; at scrape time (a reload may have changed them).
    pub fn refresh_certificates(
        &self,
        tables: impl Iterator<Item = std::sync::Arc<crate::tls::certs::SniTable>>,
    ) {
        self.certificate_expiry.reset();
        for t in tables {
            for c in t.certs() {
                let at = c
                    .not_after
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                self.certificate_expiry
                    .with_label_values(&[&c.label])
                    .set(at);
            }
        }
    }

    /// Reads jemalloc's statistics (a snapshot refreshed by advancing its epoch); at scrape time.
    pub fn refresh_memory(&self) {
        use tikv_jemalloc_ctl::{epoch, stats};
        if epoch::advance().is_ok() {
            if let Ok(b) = stats::allocated::read() {
                self.memory_allocated.set(b as i64);
            }
            if let Ok(b) = stats::resident::read() {
                self.memory_resident.set(b as i64);
            }
        }
    }
}
