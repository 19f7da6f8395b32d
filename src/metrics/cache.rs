//! The cache's size and turnover. Sizes are gauges read from the store at scrape time;
//! evictions are counters brought up to the eviction manager's running totals then.

use pingora::cache::eviction::EvictionManager;
use prometheus::{IntCounter, IntCounterVec, IntGauge};

use super::{counter_to, Reg};

pub struct CacheMetrics {
    pub bytes: IntGauge,
    pub objects: IntGauge,
    pub evictions: IntCounter,
    pub evicted_bytes: IntCounter,
    pub purged: IntCounterVec,
    pub file_bytes: IntGauge,
    pub files: IntGauge,
}

impl CacheMetrics {
    pub(super) fn new(r: &Reg) -> Self {
        let purged = r.counters_from_zero(
            "edge_cache_purged_total",
            "Objects purged (url, prefix, tag: removed, or marked stale by a soft purge) or \
             invalidated by unsafe requests.",
            "kind",
            &["url", "prefix", "tag", "invalidation"],
        );
        CacheMetrics {
            bytes: r.gauge(
                "edge_cache_size_bytes",
                "Memory held by cached objects (bodies, headers, bookkeeping); bounded by \
                 cache.max_size.",
            ),
            objects: r.gauge("edge_cache_objects", "Objects in the cache."),
            evictions: r.counter(
                "edge_cache_evictions_total",
                "Objects evicted to stay within cache.max_size, since start.",
            ),
            evicted_bytes: r.counter(
                "edge_cache_evicted_bytes_total",
                "Bytes evicted to stay within cache.max_size, since start.",
            ),
            purged,
            file_bytes: r.gauge(
                "edge_cache_file_bytes",
                "Cached bodies held in memory files for sendfile (64 KiB and up): RAM the \
                 process's RSS does not show. Part of edge_cache_size_bytes.",
            ),
            files: r.gauge(
                "edge_cache_files",
                "Memory files holding cached bodies (one file descriptor each; at most a quarter \
                 of the descriptor limit).",
            ),
        }
    }

    /// Reads the store's figures; at scrape time.
    pub fn refresh(&self, c: &crate::cache::Cache) {
        self.bytes.set(c.store.bytes() as i64);
        self.objects.set(c.store.objects() as i64);
        counter_to(&self.evictions, c.eviction.evicted_items() as u64);
        counter_to(&self.evicted_bytes, c.eviction.evicted_size() as u64);
        self.file_bytes
            .set(crate::cache::body_file::bytes_in_files() as i64);
        self.files.set(crate::cache::body_file::files_open() as i64);
    }
}
