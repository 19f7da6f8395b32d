//! In-memory cache storage for pingora-cache, bounded by an eviction manager. This file holds
//! the store and its indexes; `hit` reads an object out, `fill` writes one in.
//!
//! - Bodies are kept as the chunks they arrived in (`Bytes`), so a hit hands out reference-
//!   counted slices instead of copying the body.
//! - An object still being written from the origin is readable at once: readers follow the
//!   writer chunk by chunk, so a large miss does not hold other clients back until it completes.
//! - Sizes count the body, the serialized header and a fixed per-object overhead; the eviction
//!   manager (TinyUFO, see `eviction`, weighted by these sizes) decides what leaves when the
//!   total passes `cache.max_size`, and the proxy purges what it names.
//! - Indexes by URL and by tag (`Surrogate-Key`, `Cache-Tag`) serve the purge API; a prefix
//!   purge scans the URLs.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use super::body_file::BodyFile;
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

/// Memory per object beyond its body and serialized header (the parsed header kept for hits,
/// index and map entries, TinyUFO's entry, allocator slack), counted in its size so that
/// `max_size` bounds the memory the cache really takes. Measured with bench/run.sh's miss
/// scenario (1 KiB objects, `CACHE_SIZE=2GiB`, jemalloc): 59.7k objects took 239 MiB of RSS over
/// the idle process, ~4.2 KiB each, of which body, serialized header and URL are ~1.2 KiB.
/// `cargo run --release --example object_cost` shows the store's own share (~3.1 KiB).
pub const OBJECT_OVERHEAD: usize = 3 << 10;

type Meta = (Vec<u8>, Vec<u8>);

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

/// A stored response that is fresh now, as `Store::fresh_hit` hands it out.
pub struct FreshHit {
    /// The stored header, as the origin sent it (the caller adds Age and its own fields).
    /// Shared: a hit that only serializes it (see `express`) need not copy it.
    pub header: Arc<ResponseHeader>,
    pub body: Arc<Vec<Bytes>>,
    /// The body's memory file, for bodies large enough to have one (see `body_file`).
    pub file: Option<Arc<BodyFile>>,
    pub age: Duration,
    pub fresh_until: SystemTime,
}

impl FreshHit {
    pub fn body_len(&self) -> usize {
        self.body.iter().map(|c| c.len()).sum()
    }
}

/// A complete object.
struct Object {
    meta: Meta,
    /// The stored response header, parsed: a hit clones it instead of decompressing `meta.1`
    /// (pingora's header serialization is zstd; decompressing it was ~40% of a hit's CPU).
    header: Arc<ResponseHeader>,
    /// What a fresh hit needs from `meta` without deserializing it.
    freshness: Freshness,
    body: Arc<Vec<Bytes>>,
    file: Option<Arc<BodyFile>>,
    body_len: usize,
    url: Arc<str>,
    tags: Vec<Arc<str>>,
    compact: CompactCacheKey,
}

/// An object being written; readers subscribe to its progress (the value turns true when the
/// body is complete; every change means new chunks or completion).
struct Partial {
    meta: Meta,
    chunks: Arc<RwLock<Vec<Bytes>>>,
    progress: Arc<watch::Sender<bool>>,
}

#[derive(Default)]
struct Maps {
    objects: HashMap<HashBinary, Object>,
    /// In-progress writes per key, by write id (several may race; the last to finish wins).
    partial: HashMap<HashBinary, HashMap<u64, Partial>>,
    /// URL (primary key) -> the combined keys of its stored variants.
    by_url: HashMap<Arc<str>, HashSet<HashBinary>>,
    by_tag: HashMap<Arc<str>, HashSet<HashBinary>>,
    /// Primary key -> the combined keys of its stored variants (for `fwd=vary-miss`).
    variants: HashMap<HashBinary, HashSet<HashBinary>>,
}

pub struct Store {
    maps: RwLock<Maps>,
    next_write: AtomicU64,
    bytes: AtomicUsize,
    /// Told about purges so its accounting matches what is stored.
    eviction: &'static (dyn EvictionManager + Sync),
}

/// The URL part of our primary key (see `cache::key`): everything before the first newline.
pub fn url_of_primary(primary: &[u8]) -> &str {
    let s = std::str::from_utf8(primary).unwrap_or("");
    s.split('\n').next().unwrap_or("")
}

fn size_of(meta: &Meta, body_len: usize, url: &str) -> usize {
    meta.0.len() + meta.1.len() + body_len + url.len() + OBJECT_OVERHEAD
}

/// The serialized header of an empty 200: small enough that zstd stores it raw, so
/// decompressing it is a copy.
fn stub_header() -> &'static [u8] {
    static STUB: OnceLock<Vec<u8>> = OnceLock::new();
    STUB.get_or_init(|| {
        let now = std::time::SystemTime::now();
        let header = ResponseHeader::build(200, Some(0)).expect("a valid status");
        CacheMeta::new(now, now, 0, 0, header)
            .serialize()
            .map(|(_, h)| h)
            .unwrap_or_default()
    })
}

/// The response header as stored: parsed from its serialized form, so that it owns its bytes.
/// The header Pingora hands over holds slices of the whole upstream read buffer (4 KiB or more,
/// with the start of the body); keeping it would pin that buffer for the object's lifetime:
/// measured ~4.7 KiB per cached object, more than a small object's body and header together.
fn owned_header(serialized: &Meta) -> Result<ResponseHeader> {
    Ok(CacheMeta::deserialize(&serialized.0, &serialized.1)?
        .response_header()
        .clone())
}

/// Builds the `CacheMeta` of a hit from the stored internal fields and the parsed header.
fn fast_meta(internal: &[u8], header: &ResponseHeader) -> Result<CacheMeta> {
    let mut meta = CacheMeta::deserialize(internal, stub_header())?;
    *meta.response_header_mut() = header.clone();
    Ok(meta)
}

fn tags_of(meta: &CacheMeta) -> Vec<Arc<str>> {
    let h = &meta.response_header().headers;
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
    pub fn new(eviction: &'static (dyn EvictionManager + Sync)) -> Self {
        Store {
            maps: RwLock::new(Maps::default()),
            next_write: AtomicU64::new(1),
            bytes: AtomicUsize::new(0),
            eviction,
        }
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
        let Some(obj) = maps.objects.remove(key) else {
            return false;
        };
        self.bytes.fetch_sub(
            size_of(&obj.meta, obj.body_len, &obj.url),
            Ordering::Relaxed,
        );
        let primary = obj.compact.primary;
        if let Some(set) = maps.variants.get_mut(&primary) {
            set.remove(key);
            if set.is_empty() {
                maps.variants.remove(&primary);
            }
        }
        if let Some(set) = maps.by_url.get_mut(&obj.url) {
            set.remove(key);
            if set.is_empty() {
                maps.by_url.remove(&obj.url);
            }
        }
        for t in &obj.tags {
            if let Some(set) = maps.by_tag.get_mut(t) {
                set.remove(key);
                if set.is_empty() {
                    maps.by_tag.remove(t);
                }
            }
        }
        if tell_eviction {
            self.eviction
                .remove(CacheEntryKeyRef::KeyOnly(&obj.compact));
        }
        true
    }

    fn remove_many(&self, keys: Vec<HashBinary>) -> usize {
        let mut maps = self.write();
        let mut n = 0;
        for k in keys {
            // Also drop writes in flight, so a purge is not undone by a fill that started before.
            maps.partial.remove(&k);
            n += self.remove_locked(&mut maps, &k, true) as usize;
        }
        n
    }

    /// The object stored under this primary key if it can be served as it is at `now`: complete,
    /// fresh, not varying by request fields. Counts the use for eviction, as a hit through
    /// pingora-cache would. Anything else (stale, varying, still being written, absent) is
    /// `None`, and pingora-cache's full lookup decides.
    pub fn fresh_hit(&self, primary: &HashBinary, now: SystemTime) -> Option<FreshHit> {
        let maps = self.read();
        let obj = maps.objects.get(primary)?;
        let f = obj.freshness;
        if f.varies || f.fresh_until < now {
            return None;
        }
        let hit = FreshHit {
            header: obj.header.clone(),
            body: obj.body.clone(),
            file: obj.file.clone(),
            age: now.duration_since(f.epoch).unwrap_or_default(),
            fresh_until: f.fresh_until,
        };
        let weight = size_of(&obj.meta, obj.body_len, &obj.url);
        let entry = CacheEntryKey::key_only(obj.compact.clone());
        drop(maps);
        self.eviction.access(&entry, weight, f.fresh_until);
        Some(hit)
    }

    /// Whether variants of this key's URL other than the key's own are stored.
    pub fn has_other_variants(&self, key: &CacheKey) -> bool {
        let own = key.combined_bin();
        self.read()
            .variants
            .get(&key.primary_bin())
            .is_some_and(|set| set.iter().any(|k| *k != own))
    }

    /// Removes the objects an index lists under `name` (a URL, a tag).
    fn purge_indexed(
        &self,
        index: impl Fn(&Maps) -> &HashMap<Arc<str>, HashSet<HashBinary>>,
        name: &str,
    ) -> usize {
        let keys: Vec<HashBinary> = index(&self.read())
            .get(name)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        self.remove_many(keys)
    }

    /// Removes every variant stored for this URL.
    pub fn purge_url(&self, url: &str) -> usize {
        self.purge_indexed(|m| &m.by_url, url)
    }

    /// Removes every object tagged `tag` by its origin.
    pub fn purge_tag(&self, tag: &str) -> usize {
        self.purge_indexed(|m| &m.by_tag, tag)
    }

    /// Removes every object whose URL starts with `prefix`.
    pub fn purge_prefix(&self, prefix: &str) -> usize {
        let keys: Vec<HashBinary> = self
            .read()
            .by_url
            .iter()
            .filter(|(u, _)| u.starts_with(prefix))
            .flat_map(|(_, s)| s.iter().copied())
            .collect();
        self.remove_many(keys)
    }

    fn hit_from_partial(p: &Partial) -> Result<Option<(CacheMeta, HitHandler)>> {
        let meta = CacheMeta::deserialize(&p.meta.0, &p.meta.1)?;
        let hit = Hit::Streaming {
            chunks: p.chunks.clone(),
            progress: p.progress.subscribe(),
            next_chunk: 0,
        };
        Ok(Some((meta, Box::new(hit))))
    }
}

#[async_trait]
impl Storage for Store {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let k = key.combined_bin();
        let maps = self.read();
        if let Some(p) = maps.partial.get(&k).and_then(|m| m.values().next()) {
            return Self::hit_from_partial(p);
        }
        let Some(obj) = maps.objects.get(&k) else {
            return Ok(None);
        };
        let meta = fast_meta(&obj.meta.0, &obj.header)?;
        let hit = Hit::Complete {
            body: obj.body.clone(),
            next_chunk: 0,
            range: None,
            weight: size_of(&obj.meta, obj.body_len, &obj.url),
        };
        Ok(Some((meta, Box::new(hit))))
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
        match maps.partial.get(&k).and_then(|m| m.get(&id)) {
            Some(p) => Self::hit_from_partial(p),
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
        let serialized = meta.serialize()?;
        let id = self.next_write.fetch_add(1, Ordering::Relaxed);
        let (tx, _) = watch::channel(false);
        let partial = Partial {
            meta: serialized.clone(),
            chunks: Arc::new(RwLock::new(Vec::new())),
            progress: Arc::new(tx),
        };
        let handler = Fill {
            header: Arc::new(owned_header(&serialized)?),
            freshness: Freshness::of(meta),
            store: self,
            key: k,
            id,
            id_bytes: id.to_be_bytes(),
            meta: serialized,
            chunks: partial.chunks.clone(),
            progress: partial.progress.clone(),
            written: 0,
            url: Arc::from(url_of_primary(key.primary_key())),
            tags: tags_of(meta),
            compact: key.to_compact(),
        };
        self.write()
            .partial
            .entry(k)
            .or_default()
            .insert(id, partial);
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
        maps.partial.remove(&k);
        // On eviction the manager already forgot the entry; on invalidation, tell it.
        let tell = matches!(purge_type, PurgeType::Invalidation);
        Ok(if self.remove_locked(&mut maps, &k, tell) {
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
        let serialized = meta.serialize()?;
        let header = Arc::new(owned_header(&serialized)?);
        let mut maps = self.write();
        let Some(obj) = maps.objects.get_mut(&k) else {
            return Ok(false);
        };
        let old = obj.meta.0.len() + obj.meta.1.len();
        let new = serialized.0.len() + serialized.1.len();
        obj.meta = serialized;
        obj.header = header;
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

mod fill;
mod hit;
#[cfg(test)]
pub(crate) mod tests;

use fill::Fill;
use hit::Hit;
