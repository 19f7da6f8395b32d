//! In-memory cache storage for pingora-cache, bounded by an eviction manager. This file holds
//! the store and its indexes; `hit` reads an object out, `fill` writes one in.
//!
//! - Bodies are kept as the chunks they arrived in (`Bytes`), so a hit hands out reference-
//!   counted slices instead of copying the body.
//! - An object still being written from the origin is readable at once: readers follow the
//!   writer chunk by chunk, so a large miss does not hold other clients back until it completes.
//! - Sizes count the body, the header and a fixed per-object overhead; the eviction
//!   manager (TinyUFO, see `eviction`, weighted by these sizes) decides what leaves when the
//!   total passes `cache.max_size`, and the proxy purges what it names.
//! - Indexes by URL and by tag (`Surrogate-Key`, `Cache-Tag`) serve the purge API; a prefix
//!   purge scans the URLs.
//! - A purge also covers fills in flight that began before it, first fills included: they are
//!   not stored (see `purge::Purges`, where the purges live).
//!
//! One lock discipline for all: every map lives in `Maps` (`maps`) behind the store's one
//! `RwLock`. Reading and writing objects live in `hit` and `fill`, purges and the purge record
//! in `purge`, how metadata is kept in `meta`, the key sets the indexes hold in `keys`; each
//! works on `Maps` under that lock.

use std::any::Any;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use super::body_file::BodyFile;
use super::eviction::TinyUfoEviction;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::eviction::{CacheEntryKey, CacheEntryKeyRef, EvictionManager};
use pingora::cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};
use tokio::sync::watch;

/// Memory per object beyond its body, its header as written and its internal fields (the
/// header's parsed structure, index and map entries, TinyUFO's entry, allocator slack), counted
/// in its size so that
/// `max_size` bounds the memory the cache really takes. Measured with bench/run.sh's miss
/// scenario (1 KiB objects, `CACHE_SIZE=2GiB`, jemalloc): 59.7k objects took 239 MiB of RSS over
/// the idle process, ~4.2 KiB each, of which body, serialized header and URL are ~1.2 KiB.
/// `cargo run --release --example object_cost 50000` shows the store's own share (~2.6 KiB
/// since the indexes hold one key inline and objects are boxed; ~3.1 KiB before).
pub const OBJECT_OVERHEAD: usize = 3 << 10;

/// Bodies up to this size are stored in one piece (copied once when the fill completes);
/// larger ones keep the chunks they arrived in, so a fill never holds two copies of a big body.
const COALESCE_MAX: usize = 4 << 20;

/// When a stored response stops being fresh and what its age counts from, kept beside the
/// serialized meta for `Store::fresh_hit`.
#[derive(Clone, Copy)]
struct Freshness {
    fresh_until: SystemTime,
    /// Age is counted from here (the response's arrival or its last revalidation).
    epoch: SystemTime,
    /// The response varies by request fields: only pingora-cache's lookup picks the variant.
    varies: bool,
}

impl Freshness {
    fn of(meta: &CacheMeta) -> Freshness {
        Freshness {
            fresh_until: meta.fresh_until(),
            epoch: meta.epoch(),
            varies: meta.variance().is_some() || meta.headers().contains_key(http::header::VARY),
        }
    }
}

/// Whether a stored header is a part of an object (a `206`, `cache::partial`), which only the
/// proxy's range rules may serve.
fn is_part(header: &ResponseHeader) -> bool {
    header.status == http::StatusCode::PARTIAL_CONTENT
}

/// A stored response that is fresh now, as `Store::fresh_hit` hands it out.
pub struct FreshHit {
    /// The stored header, as the origin sent it (the caller adds Age and its own fields).
    /// Shared: a hit that only serializes it (see `express`) need not copy it.
    pub header: Arc<ResponseHeader>,
    pub body: Arc<Vec<Bytes>>,
    /// The body's memory file, for bodies large enough to have one (see `body_file`).
    pub file: Option<Arc<BodyFile>>,
    /// The body is in this disk file instead, and `body` is empty: only the express lane's
    /// `fresh_disk_hit` gives such hits (see `disk::open`).
    pub on_disk: Option<Arc<disk::open::OpenBody>>,
    pub age: Duration,
    pub fresh_until: SystemTime,
}

impl FreshHit {
    pub fn body_len(&self) -> usize {
        match &self.on_disk {
            Some(file) => file.body_len() as usize,
            None => self.body.iter().map(|c| c.len()).sum(),
        }
    }
}

pub struct Store {
    maps: RwLock<Maps>,
    next_write: AtomicU64,
    /// Counts purges (see `Purges`); only changed with `maps` locked for writing.
    purge_epoch: AtomicU64,
    bytes: AtomicUsize,
    /// Told about purges so its accounting matches what is stored.
    eviction: &'static TinyUfoEviction,
    /// The disk tier, when `cache.disk` is set.
    disk: Option<&'static Disk>,
    /// Lookups answered from memory (fresh or not), for `edge_cache_hits_total{tier}`.
    memory_hits: AtomicU64,
    /// Counts invalidations (which `Purges` does not record): a disk lookup that saw one
    /// happen while it read does not promote what it read.
    invalidations: AtomicU64,
}

/// The URL part of our primary key (see `cache::key`): everything before the first newline.
pub fn url_of_primary(primary: &[u8]) -> &str {
    let s = std::str::from_utf8(primary).unwrap_or("");
    s.split('\n').next().unwrap_or("")
}

fn size_of(meta: &StoredMeta, body_len: usize, url: &str) -> usize {
    meta.size() + body_len + url.len() + OBJECT_OVERHEAD
}

/// The purge tags an origin gave a response (see `SURROGATE_KEY`, `CACHE_TAG`).
pub(crate) fn tags_in(header: &ResponseHeader) -> Vec<Arc<str>> {
    let h = &header.headers;
    let mut tags: Vec<Arc<str>> = Vec::new();
    for v in h
        .get_all(super::SURROGATE_KEY)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        tags.extend(v.split_ascii_whitespace().map(Arc::from));
    }
    for v in h
        .get_all(super::CACHE_TAG)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        tags.extend(
            v.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(Arc::from),
        );
    }
    tags.sort_unstable();
    tags.dedup();
    tags
}

impl Store {
    pub fn new(eviction: &'static TinyUfoEviction) -> Self {
        Self::with_disk(eviction, None)
    }

    pub fn with_disk(eviction: &'static TinyUfoEviction, disk: Option<&'static Disk>) -> Self {
        Store {
            maps: RwLock::new(Maps::default()),
            next_write: AtomicU64::new(1),
            purge_epoch: AtomicU64::new(0),
            bytes: AtomicUsize::new(0),
            eviction,
            disk,
            memory_hits: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
        }
    }

    pub fn disk(&self) -> Option<&'static Disk> {
        self.disk
    }

    /// Lookups answered from memory since start.
    pub fn memory_hits(&self) -> u64 {
        self.memory_hits.load(Ordering::Relaxed)
    }

    fn read(&self) -> RwLockReadGuard<'_, Maps> {
        self.maps.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write(&self) -> RwLockWriteGuard<'_, Maps> {
        self.maps.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes held by complete objects, overhead included.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn objects(&self) -> usize {
        self.read().objects.len()
    }

    /// Removes one object by combined key; returns whether it was there.
    fn remove_locked(&self, maps: &mut Maps, key: &HashBinary, tell_eviction: bool) -> bool {
        self.take_locked(maps, key, tell_eviction).is_some()
    }

    /// Removes one object by combined key; returns the size it was counted at, if it was there.
    fn take_locked(&self, maps: &mut Maps, key: &HashBinary, tell_eviction: bool) -> Option<usize> {
        let obj = maps.objects.remove(key)?;
        let size = size_of(&obj.meta, obj.body_len, &obj.url);
        self.bytes.fetch_sub(size, Ordering::Relaxed);
        keys::unlist(&mut maps.variants, &obj.compact.primary, key);
        maps.names.remove(key, &obj.url, &obj.tags);
        if tell_eviction {
            self.eviction
                .remove(CacheEntryKeyRef::KeyOnly(&obj.compact));
        }
        Some(size)
    }

    /// Removes these objects from memory; returns those that were there.
    fn remove_many(&self, keys: Vec<HashBinary>) -> HashSet<HashBinary> {
        let mut maps = self.write();
        let mut removed = HashSet::new();
        for k in keys {
            // Also refills of what is removed, whatever they are tagged with now, so a purge is
            // not undone by a fill that started before (`purge_fills` marked those that the
            // purge itself matches).
            Self::purge_writes(&mut maps, &k);
            if self.remove_locked(&mut maps, &k, true) {
                removed.insert(k);
            }
        }
        removed
    }

    /// Memory's eviction policy admits an object just stored in memory by a fill or a promotion
    /// from disk (`size` bytes, as the store counts them; `replaced`: the size of the object it
    /// replaced, if any), and what it evicts to make room leaves memory (a disk copy stays: that
    /// is the demotion), fills in flight for it included, as a purge of the evicted key would.
    ///
    /// Under the store's lock, so the policy holds a key exactly when memory holds its object,
    /// and `replaced` tells it what it holds (sparing it a lookup per miss).
    ///
    /// Why here and not through pingora-cache's `EvictionManager` hook: pingora-cache admits
    /// after every fill and then spawns a task to purge what was evicted, even when nothing
    /// was. One task per miss woke an idle worker thread per miss (context switches, futex
    /// wake-ups) for nothing; the store does the same bookkeeping inline, and pingora-cache
    /// runs without an eviction manager (`Cache::enable`).
    fn admit_locked(
        &self,
        maps: &mut Maps,
        compact: CompactCacheKey,
        size: usize,
        replaced: Option<usize>,
    ) {
        let evicted = self
            .eviction
            .admit_known(CacheEntryKey::key_only(compact), size, replaced);
        for e in evicted {
            // The manager already forgot the entry: not told again.
            let k = e.key().combined_bin();
            Self::purge_writes(maps, &k);
            self.remove_locked(maps, &k, false);
        }
    }

    /// Marks the writes in flight for this key purged (see `Partial::purged`).
    fn purge_writes(maps: &mut Maps, key: &HashBinary) {
        for p in maps
            .partial
            .get_mut(key)
            .into_iter()
            .flat_map(|fills| fills.iter_mut().map(|(_, p)| p))
        {
            p.purged = true;
        }
    }

    /// The object stored under this primary key if it can be served as it is at `now`: complete,
    /// fresh, not varying by request fields, a whole object. Counts the use for eviction, as a
    /// hit through pingora-cache would. Anything else (stale, varying, a stored part, still
    /// being written, absent) is `None`, and pingora-cache's full lookup decides.
    pub fn fresh_hit(&self, primary: &HashBinary, now: SystemTime) -> Option<FreshHit> {
        let maps = self.read();
        let obj = maps.objects.get(primary)?;
        let f = obj.freshness;
        if f.varies || f.fresh_until < now || is_part(&obj.meta.header) {
            return None;
        }
        let hit = FreshHit {
            header: obj.meta.header.clone(),
            body: obj.body.clone(),
            file: obj.file.clone(),
            on_disk: None,
            age: now.duration_since(f.epoch).unwrap_or_default(),
            fresh_until: f.fresh_until,
        };
        self.eviction.count_use(&obj.compact);
        drop(maps);
        self.memory_hits.fetch_add(1, Ordering::Relaxed);
        Some(hit)
    }

    /// Whether variants of this key's URL other than the key's own are stored.
    pub fn has_other_variants(&self, key: &CacheKey) -> bool {
        let own = key.combined_bin();
        self.read()
            .variants
            .get(&key.primary_bin())
            .is_some_and(|keys| keys.iter().any(|k| *k != own))
    }

    /// The object (or the fill in progress) memory holds under this key, if any.
    fn lookup_memory(&self, k: &HashBinary) -> Option<Result<Option<(CacheMeta, HitHandler)>>> {
        let maps = self.read();
        if let Some(p) = maps
            .partial
            .get(k)
            .and_then(|fills| fills.iter().map(|(_, p)| p).find(|p| !p.purged))
        {
            return Some(Self::hit_from_partial(p));
        }
        let obj = maps.objects.get(k)?;
        let meta = match obj.meta.to_cache_meta() {
            Ok(m) => m,
            Err(e) => return Some(Err(e)),
        };
        let hit = Hit::Complete {
            body: obj.body.clone(),
            next_chunk: 0,
            range: None,
        };
        // The use counts for eviction, as pingora-cache's own hook would count it (see `admit`).
        self.eviction.count_use(&obj.compact);
        drop(maps);
        self.memory_hits.fetch_add(1, Ordering::Relaxed);
        Some(Ok(Some((meta, Box::new(hit)))))
    }

    fn hit_from_partial(p: &Partial) -> Result<Option<(CacheMeta, HitHandler)>> {
        let meta = p.meta.to_cache_meta()?;
        Ok(Some((meta, Self::follow(p))))
    }

    /// A reader that follows a fill from its first byte.
    fn follow(p: &Partial) -> HitHandler {
        Box::new(Hit::Streaming {
            chunks: p.chunks.clone(),
            progress: p.progress.subscribe(),
            spill: p.spill.clone(),
            pos: 0,
            next: 0,
        })
    }
}

#[async_trait]
impl Storage for Store {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        if let Some(found) = self.lookup_memory(&key.combined_bin()) {
            return found;
        }
        self.lookup_disk(key).await
    }

    async fn lookup_streaming_write(
        &'static self,
        key: &CacheKey,
        tag: Option<&[u8]>,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(id) = tag
            .and_then(|t| <[u8; 8]>::try_from(t).ok())
            .map(u64::from_be_bytes)
        else {
            return self.lookup(key, trace).await;
        };
        let k = key.combined_bin();
        let maps = self.read();
        // pingora-cache asks this only for the filling request's own reader, and drops the meta
        // unread (`HttpCache::set_miss_handler`): it has the meta it is writing. A placeholder
        // spares rebuilding it from the stored form once per miss (~2.5 µs of ~150).
        let own = maps
            .partial
            .get(&k)
            .and_then(|fills| fills.iter().find(|(i, _)| *i == id));
        match own {
            Some((_, p)) => Ok(Some((placeholder_meta(), Self::follow(p)))),
            None => Ok(None),
        }
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let k = key.combined_bin();
        let stored = StoredMeta::of(meta)?;
        let id = self.next_write.fetch_add(1, Ordering::Relaxed);
        let (tx, _) = watch::channel(false);
        let url: Arc<str> = Arc::from(url_of_primary(key.primary_key()));
        let tags = tags_in(meta.response_header());
        let progress = Arc::new(tx);
        let spill = self.disk.filter(|d| d.writable()).map(|d| {
            let head = Head {
                key: key.to_compact(),
                url: url.to_string(),
                internal: stored.internal.clone(),
                header: record::header_wire(&stored.header),
            };
            d.begin(id, head, progress.clone())
        });
        let mut partial = Partial {
            meta: stored.clone(),
            chunks: Arc::new(RwLock::new(Chunks::default())),
            progress,
            spill: spill.clone(),
            url: url.clone(),
            tags: tags.clone(),
            purged: false,
        };
        let handler = Fill {
            freshness: Freshness::of(meta),
            store: self,
            key: k,
            id,
            id_bytes: id.to_be_bytes(),
            meta: stored,
            chunks: partial.chunks.clone(),
            progress: partial.progress.clone(),
            written: 0,
            url,
            tags,
            compact: key.to_compact(),
            disk: self.disk.zip(spill),
            disk_done: false,
            listed: true,
        };
        let mut maps = self.write();
        // A purge since the request went to the origin covers this response: it goes to its
        // client but is not stored, and no other reader joins it.
        partial.purged = meta
            .extensions()
            .get::<FillStart>()
            .is_some_and(|s| maps.purges.cover(s.0, &k, &handler.url, &handler.tags));
        maps.partial.entry(k).or_default().push((id, partial));
        Ok(Box::new(handler))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let k = target.key().combined_bin();
        let mut maps = self.write();
        // On eviction the manager already forgot the entry; on invalidation, tell it. Eviction
        // from memory leaves the disk copy (that is the demotion); invalidation removes both.
        let tell = matches!(purge_type, PurgeType::Invalidation);
        if tell {
            self.purge_fills(&mut maps, Purged::Key(k));
        } else {
            Self::purge_writes(&mut maps, &k);
        }
        let mut found = self.remove_locked(&mut maps, &k, tell);
        drop(maps);
        if let Some(d) = self.disk.filter(|_| tell) {
            found |= !d.purge(&Purged::Key(k)).is_empty();
        }
        Ok(if found {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let k = key.combined_bin();
        let stored = StoredMeta::of(meta)?;
        let on_disk = self.disk.is_some_and(|d| {
            let head = Head {
                key: key.to_compact(),
                url: url_of_primary(key.primary_key()).to_string(),
                internal: stored.internal.clone(),
                header: record::header_wire(&stored.header),
            };
            d.update(k, head, meta.fresh_until())
        });
        let mut maps = self.write();
        let Some(obj) = maps.objects.get_mut(&k) else {
            return Ok(on_disk);
        };
        let (old, new) = (obj.meta.size(), stored.size());
        obj.meta = stored;
        obj.freshness = Freshness::of(meta);
        if new >= old {
            self.bytes.fetch_add(new - old, Ordering::Relaxed);
        } else {
            self.bytes.fetch_sub(old - new, Ordering::Relaxed);
        }
        Ok(true)
    }

    fn support_streaming_partial_write(&self) -> bool {
        true
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

pub mod disk;
mod fill;
mod hit;
mod keys;
mod maps;
mod meta;
mod names;
mod promote;
mod purge;
#[cfg(test)]
pub(crate) mod tests;

use disk::record::{self, Head};
use disk::{Disk, Spill};
use fill::Fill;
use hit::Hit;
use maps::{Chunks, Maps, Object, Partial};
use meta::placeholder_meta;
pub(crate) use meta::StoredMeta;
use purge::Purged;
pub use purge::{FillStart, Named, PurgeMode};
