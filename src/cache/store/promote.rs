//! Lookups that memory misses go to the disk tier: a small object found there is promoted into
//! memory (as if a fill had just stored it, and admitted by memory's eviction policy), a large
//! one is streamed from its file. Part of `store`.

use super::disk::read::{DiskHit, READ_WHOLE_MAX};
use super::*;

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
        let start = self.purge_epoch();
        let Some(found) = disk.lookup(&k).await else {
            return Ok(None);
        };
        let Some(header) = record::parse_header(&found.head.header) else {
            disk.drop_corrupt(&k, "unreadable header");
            return Ok(None);
        };
        let stored = StoredMeta {
            internal: found.head.internal,
            header: Arc::new(header),
        };
        let meta = stored.to_cache_meta()?;
        disk.stats.hits.fetch_add(1, Ordering::Relaxed);
        let hit = match found.body {
            Some(body) => {
                let url: Arc<str> = Arc::from(found.head.url.as_str());
                let weight = self.promote(
                    k,
                    start,
                    (&stored, &meta),
                    body.clone(),
                    found.head.key,
                    url,
                );
                Hit::Complete {
                    body: Arc::new(vec![body]),
                    next_chunk: 0,
                    range: None,
                    weight,
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

    /// Puts a body read from disk into memory, unless memory has the key (a fill finished
    /// meanwhile) or a purge since `start` covers it; returns its eviction weight.
    fn promote(
        &self,
        key: HashBinary,
        start: u64,
        (stored, meta): (&StoredMeta, &CacheMeta),
        body: Bytes,
        compact: CompactCacheKey,
        url: Arc<str>,
    ) -> usize {
        debug_assert!(body.len() as u64 <= READ_WHOLE_MAX);
        let tags = tags_in(&stored.header);
        let body_len = body.len();
        let size = size_of(stored, body_len, &url);
        let mut maps = self.write();
        if maps.objects.contains_key(&key) || maps.purges.cover(start, &key, &url, &tags) {
            return size;
        }
        maps.names.add(key, &url, &tags);
        maps.variants
            .entry(compact.primary)
            .or_default()
            .insert(key);
        maps.objects.insert(
            key,
            Object {
                freshness: Freshness::of(meta),
                meta: stored.clone(),
                body: Arc::new(vec![body]),
                file: None,
                body_len,
                url,
                tags,
                compact: compact.clone(),
            },
        );
        self.bytes.fetch_add(size, Ordering::Relaxed);
        drop(maps);
        // Memory's policy admits it like a fill; what it evicts leaves memory only (the disk
        // keeps its copy).
        let evicted =
            self.eviction
                .admit(CacheEntryKey::key_only(compact), size, meta.fresh_until());
        if !evicted.is_empty() {
            let mut maps = self.write();
            for e in evicted {
                self.remove_locked(&mut maps, &e.key().combined_bin(), false);
            }
        }
        size
    }
}
