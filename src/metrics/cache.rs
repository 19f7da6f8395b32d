//! The cache's size and turnover, per tier (`tier="memory"`, and `"disk"` with a disk tier).
//! Sizes are gauges read from the store at scrape time; evictions and hits are counters brought
//! up to the store's running totals then.

use pingora::cache::eviction::EvictionManager;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec};
use std::sync::atomic::Ordering;

use super::{counter_to, Reg};

pub struct CacheMetrics {
    pub bytes: IntGaugeVec,
    pub objects: IntGaugeVec,
    pub evictions: IntCounterVec,
    pub evicted_bytes: IntCounterVec,
    pub hits: IntCounterVec,
    pub purged: IntCounterVec,
    pub file_bytes: IntGauge,
    pub files: IntGauge,
    /// What only the disk tier has: failures, skipped writes, readiness.
    pub disk: DiskMetrics,
}

pub struct DiskMetrics {
    /// Failures by reason; the request is served from memory or the origin.
    pub errors: IntCounterVec,
    pub skipped: prometheus::IntCounter,
    pub ready: IntGaugeVec,
    pub open_files: IntGauge,
    pub open_hits: prometheus::IntCounter,
}

impl DiskMetrics {
    fn new(r: &Reg) -> Self {
        DiskMetrics {
            errors: r.counters_from_zero(
                "edge_cache_disk_errors_total",
                "Disk tier failures: write (disk full included), read, corrupt (a file that \
                 failed its checks, dropped). Requests are still served, from memory or the \
                 origin.",
                "reason",
                &["write", "read", "corrupt"],
            ),
            skipped: r.counter(
                "edge_cache_disk_skipped_total",
                "Small objects not written to the disk tier because its writer was too far \
                 behind (a slow disk); they are still stored in memory.",
            ),
            ready: r.gauges(
                "edge_cache_disk_ready",
                "1 once the disk tier at `path` has rebuilt its index from its files (0 while it \
                 scans, or waits for the process it takes over from; absent without a disk tier).",
                &["path"],
            ),
            open_files: r.gauge(
                "edge_cache_disk_open_files",
                "Disk tier files kept open, checked, for hits sent with sendfile (one file \
                 descriptor each; at most cache.disk.open_files).",
            ),
            open_hits: r.counter(
                "edge_cache_disk_open_file_hits_total",
                "Disk tier hits sent from a file kept open (sendfile), without opening, reading \
                 or checking it again; also counted in edge_cache_hits_total{tier=\"disk\"}.",
            ),
        }
    }

    /// Reads the tier's figures; at scrape time.
    fn refresh(&self, disk: &crate::cache::store::disk::Disk) {
        let s = &disk.stats;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        for (reason, n) in [
            ("write", &s.write_errors),
            ("read", &s.read_errors),
            ("corrupt", &s.corrupt),
        ] {
            counter_to(&self.errors.with_label_values(&[reason]), get(n));
        }
        counter_to(&self.skipped, get(&s.skipped));
        self.open_files.set(disk.open_files() as i64);
        counter_to(&self.open_hits, get(&s.open_hits));
        self.ready
            .with_label_values(&[&disk.root().display().to_string()])
            .set(disk.ready() as i64);
    }
}

impl CacheMetrics {
    /// One declaration per metric family, name and help text together, read as a table: long
    /// because there are many families, not because anything is decided here.
    pub(super) fn new(r: &Reg) -> Self {
        let purged = r.counters_from_zero(
            "edge_cache_purged_total",
            "Objects purged (url, prefix, tag: removed, or marked stale by a soft purge) or \
             invalidated by unsafe requests.",
            "kind",
            &["url", "prefix", "tag", "invalidation"],
        );
        let m = CacheMetrics {
            bytes: r.gauges(
                "edge_cache_size_bytes",
                "What cached objects take: memory (bodies, headers, bookkeeping; bounded by \
                 cache.max_size), disk (files in 4 KiB blocks; bounded by cache.disk.max_size).",
                &["tier"],
            ),
            objects: r.gauges("edge_cache_objects", "Objects in each tier.", &["tier"]),
            evictions: r.counters(
                "edge_cache_evictions_total",
                "Objects evicted to stay within each tier's max_size, since start (evicted from \
                 memory, an object stays on disk).",
                &["tier"],
            ),
            evicted_bytes: r.counters(
                "edge_cache_evicted_bytes_total",
                "Bytes evicted to stay within each tier's max_size, since start.",
                &["tier"],
            ),
            hits: r.counters(
                "edge_cache_hits_total",
                "Stored objects found, by the tier they were found in (fresh or stale: a stale \
                 one may then be revalidated). A disk hit is promoted to memory if small.",
                &["tier"],
            ),
            purged,
            file_bytes: r.gauge(
                "edge_cache_file_bytes",
                "Cached bodies held in memory files for sendfile (64 KiB and up): RAM the \
                 process's RSS does not show. Part of edge_cache_size_bytes{tier=\"memory\"}.",
            ),
            files: r.gauge(
                "edge_cache_files",
                "Memory files holding cached bodies (one file descriptor each; at most a quarter \
                 of the descriptor limit).",
            ),
            disk: DiskMetrics::new(r),
        };
        // The memory tier's series exist from the start, at 0.
        for v in [&m.evictions, &m.evicted_bytes, &m.hits] {
            v.with_label_values(&["memory"]);
        }
        m
    }

    /// Reads the store's figures; at scrape time.
    pub fn refresh(&self, c: &crate::cache::Cache) {
        let m = "memory";
        self.bytes
            .with_label_values(&[m])
            .set(c.store.bytes() as i64);
        self.objects
            .with_label_values(&[m])
            .set(c.store.objects() as i64);
        counter_to(
            &self.evictions.with_label_values(&[m]),
            c.eviction.evicted_items() as u64,
        );
        counter_to(
            &self.evicted_bytes.with_label_values(&[m]),
            c.eviction.evicted_size() as u64,
        );
        counter_to(&self.hits.with_label_values(&[m]), c.store.memory_hits());
        self.file_bytes
            .set(crate::cache::body_file::bytes_in_files() as i64);
        self.files.set(crate::cache::body_file::files_open() as i64);
        let Some(disk) = c.store.disk() else {
            return;
        };
        let d = "disk";
        let (bytes, objects) = disk.usage();
        self.bytes.with_label_values(&[d]).set(bytes as i64);
        self.objects.with_label_values(&[d]).set(objects as i64);
        let s = &disk.stats;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        counter_to(
            &self.evictions.with_label_values(&[d]),
            get(&s.evicted_items),
        );
        counter_to(
            &self.evicted_bytes.with_label_values(&[d]),
            get(&s.evicted_bytes),
        );
        counter_to(&self.hits.with_label_values(&[d]), get(&s.hits));
        self.disk.refresh(disk);
    }
}
