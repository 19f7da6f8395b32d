//! Lookups that memory misses go to the disk tier: a small object found there is promoted into
//! memory (as if a fill had just stored it, and admitted by memory's eviction policy), a large
//! one is streamed from its file. Part of `store`.

use super::disk::read::{DiskHit, READ_WHOLE_MAX};
use super::*;
use crate::cache::hit;

impl Store {
    /// The disk tier's copy of `key`, if any (see the module's note).
    pub(super) async fn lookup_disk(
        &'static self,
        key: &CacheKey,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(disk) = self.disk else {
            return Ok(None);
        };
        let k = key.combined_bin();
        // Read before the file: a purge after this point keeps the promoted copy out.
        let start = self.read_start();
        let Some(found) = disk.lookup(&k).await else {
            return Ok(None);
        };
        let stored = found.meta;
        let meta = stored.to_cache_meta()?;
        disk.stats.hits.fetch_add(1, Ordering::Relaxed);
        let hit = match found.body {
            Some(body) => {
                let url: Arc<str> = Arc::from(found.head.url.as_str());
                let compact = found.head.key;
                self.promote(
                    k,
                    start,
                    (&stored, &meta),
                    body.clone(),
                    compact.clone(),
                    url,
                );
                // A hit through pingora-cache counts its use, as one from memory does.
                self.eviction.count_use(&compact);
                Hit::Complete {
                    body: Arc::new(vec![body]),
                    next_chunk: 0,
                    range: None,
                }
            }
            None => {
                let len = found.file.body_len();
                Hit::Disk(DiskHit {
                    disk,
                    key: k,
                    body: found.file,
                    pos: 0,
                    end: len,
                })
            }
        };
        Ok(Some((meta, Box::new(hit))))
    }

    /// The express lane's disk hit: an object that memory does not hold (see `fresh_hit`),
    /// small, fresh, not varying. A file kept open since an earlier hit is answered from as it
    /// is (`disk::open`); otherwise the file, if in the page cache, is read on this thread,
    /// checked, promoted to memory and kept open. Anything else is `None`, and the proxy's
    /// cache path decides (it may read the file again, on the blocking pool).
    pub fn fresh_disk_hit(&self, primary: &HashBinary, now: SystemTime) -> Option<FreshHit> {
        let disk = self.disk?;
        if let Some(open) = disk.open_hit(primary) {
            // Stale: the proxy's path revalidates it, and the revalidation closes the file.
            if open.fresh_until < now {
                return None;
            }
            disk.stats.hits.fetch_add(1, Ordering::Relaxed);
            disk.stats.open_hits.fetch_add(1, Ordering::Relaxed);
            return Some(FreshHit {
                header: open.header.clone(),
                // The body is in the file: no chunks (one shared empty list, no allocation).
                body: no_chunks(),
                file: None,
                age: now.duration_since(open.epoch).unwrap_or_default(),
                fresh_until: open.fresh_until,
                on_disk: Some(open),
            });
        }
        let start = self.read_start();
        let found = disk.lookup_cached(primary)?;
        let body = found.body.clone()?;
        let stored = &found.meta;
        let meta = stored.to_cache_meta().ok()?;
        let f = Freshness::of(&meta);
        if f.varies || f.fresh_until < now || super::is_part(&stored.header) {
            return None;
        }
        disk.stats.hits.fetch_add(1, Ordering::Relaxed);
        let url: Arc<str> = Arc::from(found.head.url.as_str());
        self.promote(
            *primary,
            start,
            (stored, &meta),
            body.clone(),
            found.head.key.clone(),
            url,
        );
        // Kept open only if nothing was purged or invalidated since the read began, and only
        // what the lane can send as it is (framed by its Content-Length), so that every hit
        // from an open file is one the lane answers.
        let entry = found.entry.filter(|_| self.read_start() == start);
        if let Some(entry) = entry.filter(|_| hit::framed_by_length(&stored.header, body.len())) {
            if let Some(open) = found.keep_open(f.fresh_until, f.epoch) {
                disk.keep_open(primary, entry, open);
            }
        }
        Some(FreshHit {
            header: found.meta.header,
            body: Arc::new(vec![body]),
            file: None,
            on_disk: None,
            age: now.duration_since(f.epoch).unwrap_or_default(),
            fresh_until: f.fresh_until,
        })
    }

    /// Where purges and invalidations stand before a disk read (see `promote`).
    fn read_start(&self) -> (u64, u64) {
        (
            self.purge_epoch(),
            self.invalidations.load(Ordering::Acquire),
        )
    }

    /// Puts a body read from disk into memory, unless memory has the key (a fill finished
    /// meanwhile), a purge since the read began covers it, or any invalidation happened since.
    fn promote(
        &self,
        key: HashBinary,
        (start, invalidations): (u64, u64),
        (stored, meta): (&StoredMeta, &CacheMeta),
        body: Bytes,
        compact: CompactCacheKey,
        url: Arc<str>,
    ) {
        debug_assert!(body.len() as u64 <= READ_WHOLE_MAX);
        let tags = tags_in(&stored.header);
        let body_len = body.len();
        let size = size_of(stored, body_len, &url);
        let mut maps = self.write();
        if maps.objects.contains_key(&key)
            || maps.purges.cover(start, &key, &url, &tags)
            || self.invalidations.load(Ordering::Acquire) != invalidations
        {
            return;
        }
        maps.names.add(key, &url, &tags);
        keys::list(&mut maps.variants, compact.primary, key);
        maps.objects.insert(
            key,
            Box::new(Object {
                freshness: Freshness::of(meta),
                meta: stored.clone(),
                body: Arc::new(vec![body]),
                file: None,
                body_len,
                url,
                tags,
                compact: compact.clone(),
            }),
        );
        self.bytes.fetch_add(size, Ordering::Relaxed);
        // Memory's policy admits it like a fill (the disk keeps its copy of what it evicts).
        // Memory did not hold the key (checked above).
        self.admit_locked(&mut maps, compact, size, None);
    }
}

/// The empty chunk list of a hit whose body is sent from its disk file, shared.
fn no_chunks() -> Arc<Vec<Bytes>> {
    static EMPTY: std::sync::OnceLock<Arc<Vec<Bytes>>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(Arc::default).clone()
}
