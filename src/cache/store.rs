//! In-memory cache storage for pingora-cache, bounded by an eviction manager.
//!
//! - Bodies are kept as the chunks they arrived in (`Bytes`), so a hit hands out reference-
//!   counted slices instead of copying the body.
//! - An object still being written from the origin is readable at once: readers follow the
//!   writer chunk by chunk, so a large miss does not hold other clients back until it completes.
//! - Sizes count the body, the serialized header and a fixed per-object overhead; the eviction
//!   manager (Pingora's sharded LRU, weighted by these sizes) decides what leaves when the total
//!   passes `cache.max_size`, and the proxy purges what it names.
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

enum Hit {
    Complete {
        body: Arc<Vec<Bytes>>,
        next_chunk: usize,
        /// Byte range still to send, for Range requests: (start, end exclusive).
        range: Option<(usize, usize)>,
        weight: usize,
    },
    Streaming {
        chunks: Arc<RwLock<Vec<Bytes>>>,
        progress: watch::Receiver<bool>,
        next_chunk: usize,
    },
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        match self {
            Hit::Complete {
                body,
                next_chunk,
                range,
                ..
            } => match range {
                None => {
                    let c = body.get(*next_chunk).cloned();
                    *next_chunk += 1;
                    Ok(c)
                }
                Some((start, end)) => {
                    // The range is sent: without this, the next read returned an empty slice
                    // forever and a range hit never finished (the connection hung).
                    if *start >= *end {
                        return Ok(None);
                    }
                    // Walk chunks, slicing the ones that overlap [start, end).
                    let mut offset = 0;
                    for c in body.iter() {
                        let (cs, ce) = (offset, offset + c.len());
                        offset = ce;
                        if ce <= *start {
                            continue;
                        }
                        if cs >= *end {
                            break;
                        }
                        let s = (*start).max(cs) - cs;
                        let e = (*end).min(ce) - cs;
                        *start = cs + e;
                        return Ok(Some(c.slice(s..e)));
                    }
                    Ok(None)
                }
            },
            Hit::Streaming {
                chunks,
                progress,
                next_chunk,
            } => loop {
                let complete = *progress.borrow_and_update();
                let available = chunks.read().unwrap_or_else(|e| e.into_inner()).len();
                if *next_chunk < available {
                    let c = chunks.read().unwrap_or_else(|e| e.into_inner())[*next_chunk].clone();
                    *next_chunk += 1;
                    return Ok(Some(c));
                }
                if complete {
                    return Ok(None);
                }
                if progress.changed().await.is_err() {
                    // The writer went away before finishing: the body is incomplete.
                    return Error::e_explain(ErrorType::InternalError, "cache fill aborted");
                }
            },
        }
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        matches!(self, Hit::Complete { .. })
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        match self {
            Hit::Complete { body, range, .. } => {
                let len: usize = body.iter().map(Bytes::len).sum();
                if start >= len {
                    return Error::e_explain(
                        ErrorType::InternalError,
                        format!("seek start {start} beyond body length {len}"),
                    );
                }
                *range = Some((start, end.map_or(len, |e| e.min(len))));
                Ok(())
            }
            Hit::Streaming { .. } => Error::e_explain(
                ErrorType::InternalError,
                "seek on an object still being written",
            ),
        }
    }

    fn should_count_access(&self) -> bool {
        matches!(self, Hit::Complete { .. })
    }

    fn get_eviction_weight(&self) -> usize {
        match self {
            Hit::Complete { weight, .. } => *weight,
            Hit::Streaming { .. } => 0,
        }
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// Writes one object; readers follow it as it fills.
struct Fill {
    header: Arc<ResponseHeader>,
    freshness: Freshness,
    store: &'static Store,
    key: HashBinary,
    id: u64,
    id_bytes: [u8; 8],
    meta: Meta,
    chunks: Arc<RwLock<Vec<Bytes>>>,
    progress: Arc<watch::Sender<bool>>,
    written: usize,
    url: Arc<str>,
    tags: Vec<Arc<str>>,
    compact: CompactCacheKey,
}

#[async_trait]
impl HandleMiss for Fill {
    async fn write_body(&mut self, data: Bytes, eof: bool) -> Result<()> {
        self.written += data.len();
        if !data.is_empty() {
            // A copy sized to the data: the chunk Pingora hands over may be a slice of a much
            // larger read buffer, which a stored slice would keep alive (seen: 1 KiB objects
            // holding ~6 KiB each), and the size accounting would be wrong.
            let owned = Bytes::copy_from_slice(&data);
            self.chunks
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .push(owned);
        }
        // Wake readers even when not complete: they have new chunks to read.
        self.progress.send_replace(eof);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        // Chunks are reference-counted; streaming readers keep reading the shared list.
        let mut body = self
            .chunks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut file = None;
        if self.written <= COALESCE_MAX {
            if let Some((f, mapped)) = BodyFile::store(&body, self.written) {
                // Large: in a memory file the express lane sends with sendfile.
                body = vec![mapped];
                file = Some(f);
            } else if body.len() > 1 {
                // One contiguous body: a hit is then one write after the header instead of one
                // per chunk the origin happened to send (a 100 KiB object arrives in ~7).
                body = vec![Bytes::from(body.concat())];
            }
        }
        let size = size_of(&self.meta, self.written, &self.url);
        let mut maps = self.store.write();
        let still_wanted = maps
            .partial
            .get_mut(&self.key)
            .and_then(|m| m.remove(&self.id))
            .is_some();
        if maps.partial.get(&self.key).is_some_and(|m| m.is_empty()) {
            maps.partial.remove(&self.key);
        }
        self.progress.send_replace(true);
        if !still_wanted {
            // Purged while it was being written: do not resurrect it.
            return Ok(MissFinishType::Created(0));
        }
        // A previous version is replaced: its size leaves the store (the eviction manager
        // re-admits the key with the new size).
        self.store.remove_locked(&mut maps, &self.key, false);
        for t in &self.tags {
            maps.by_tag.entry(t.clone()).or_default().insert(self.key);
        }
        maps.by_url
            .entry(self.url.clone())
            .or_default()
            .insert(self.key);
        maps.variants
            .entry(self.compact.primary)
            .or_default()
            .insert(self.key);
        maps.objects.insert(
            self.key,
            Object {
                header: self.header.clone(),
                freshness: self.freshness,
                meta: self.meta.clone(),
                body: Arc::new(body),
                file,
                body_len: self.written,
                url: self.url.clone(),
                tags: self.tags.clone(),
                compact: self.compact.clone(),
            },
        );
        self.store.bytes.fetch_add(size, Ordering::Relaxed);
        Ok(MissFinishType::Created(size))
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        Some(&self.id_bytes)
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        // An unfinished write (origin failed, object too large): readers see it end, and the
        // partial entry goes.
        let mut maps = self.store.write();
        if let Some(m) = maps.partial.get_mut(&self.key) {
            m.remove(&self.id);
            if m.is_empty() {
                maps.partial.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::eviction::TinyUfoEviction;
    use pingora::cache::trace::Span;

    /// A store of its own per test (Pingora wants `'static` parts, as in `cache::cache`).
    fn store() -> (&'static Store, &'static TinyUfoEviction) {
        let eviction: &'static TinyUfoEviction =
            Box::leak(Box::new(TinyUfoEviction::new(64 << 20, 1024)));
        (Box::leak(Box::new(Store::new(eviction))), eviction)
    }

    fn span() -> SpanHandle {
        Span::inactive().handle()
    }

    /// A fixed clock: freshness is judged against times the test passes, never the real one.
    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    /// A 200 created at `t0`, fresh for 60 s, with these header fields.
    fn meta(fields: &[(&str, &str)]) -> CacheMeta {
        let mut header = ResponseHeader::build(200, None).unwrap();
        for (k, v) in fields {
            header.append_header(k.to_string(), *v).unwrap();
        }
        CacheMeta::new(t0() + Duration::from_secs(60), t0(), 0, 0, header)
    }

    fn key(primary: &str) -> CacheKey {
        CacheKey::new(primary, "")
    }

    /// Variant `v` of a URL, as pingora-cache stores one: the key and the meta both carry the
    /// variance, and the response says `Vary`.
    fn variant(primary: &str, v: u8) -> (CacheKey, CacheMeta) {
        let mut k = key(primary);
        k.set_variance_key([v; 16]);
        let mut m = meta(&[("Vary", "Accept-Encoding")]);
        m.set_variance_key([v; 16]);
        (k, m)
    }

    /// Stores an object as a miss does (a fill, chunk by chunk); returns the size it reports.
    async fn fill(
        store: &'static Store,
        key: &CacheKey,
        meta: &CacheMeta,
        chunks: &[&str],
    ) -> usize {
        let mut h = store.get_miss_handler(key, meta, &span()).await.unwrap();
        for (i, c) in chunks.iter().enumerate() {
            let eof = i + 1 == chunks.len();
            h.write_body(Bytes::copy_from_slice(c.as_bytes()), eof)
                .await
                .unwrap();
        }
        match h.finish().await.unwrap() {
            MissFinishType::Created(size) => size,
            MissFinishType::Appended(..) => panic!("a fill creates, it does not append"),
        }
    }

    async fn body_of(mut hit: HitHandler) -> String {
        let mut body = Vec::new();
        while let Some(chunk) = hit.read_body().await.unwrap() {
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body).unwrap()
    }

    async fn stored_body(store: &'static Store, key: &CacheKey) -> Option<String> {
        let (_, hit) = store.lookup(key, &span()).await.unwrap()?;
        Some(body_of(hit).await)
    }

    /// What a complete object weighs: serialized meta, body, URL and the fixed overhead.
    fn expected_size(meta: &CacheMeta, body_len: usize, url: &str) -> usize {
        let (internal, header) = meta.serialize().unwrap();
        internal.len() + header.len() + body_len + url.len() + OBJECT_OVERHEAD
    }

    #[tokio::test]
    async fn a_complete_object_is_stored_and_read_back() {
        let (store, _) = store();
        let k = key("http://a.com/x");
        let m = meta(&[("Content-Type", "text/plain")]);
        assert!(store.lookup(&k, &span()).await.unwrap().is_none());
        fill(store, &k, &m, &["hello ", "world"]).await;
        assert_eq!(store.objects(), 1);
        let (found, mut hit) = store.lookup(&k, &span()).await.unwrap().unwrap();
        assert_eq!(found.response_header().status.as_u16(), 200);
        assert_eq!(
            found.response_header().headers.get("content-type").unwrap(),
            "text/plain"
        );
        assert_eq!(found.fresh_until(), t0() + Duration::from_secs(60));
        // A small body is kept in one piece: one read hands it all out.
        assert_eq!(
            hit.read_body().await.unwrap().as_deref(),
            Some(&b"hello world"[..])
        );
        assert_eq!(hit.read_body().await.unwrap(), None);
        // A range of it (a Range request's hit) ends once the range is sent.
        let (_, mut hit) = store.lookup(&k, &span()).await.unwrap().unwrap();
        hit.seek(6, None).unwrap();
        assert_eq!(body_of(hit).await, "world");
        assert!(store
            .lookup(&key("http://a.com/y"), &span())
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn a_reader_follows_an_object_still_being_written() {
        let (store, _) = store();
        let k = key("http://a.com/slow");
        let mut fill = store
            .get_miss_handler(&k, &meta(&[]), &span())
            .await
            .unwrap();
        fill.write_body(Bytes::from_static(b"one "), false)
            .await
            .unwrap();
        let (_, mut hit) = store.lookup(&k, &span()).await.unwrap().unwrap();
        assert!(!hit.can_seek());
        assert_eq!(
            hit.read_body().await.unwrap().as_deref(),
            Some(&b"one "[..])
        );
        fill.write_body(Bytes::from_static(b"two"), true)
            .await
            .unwrap();
        assert_eq!(hit.read_body().await.unwrap().as_deref(), Some(&b"two"[..]));
        assert_eq!(hit.read_body().await.unwrap(), None);
        assert_eq!(store.objects(), 0, "not stored before the fill finishes");
        fill.finish().await.unwrap();
        assert_eq!(store.objects(), 1);
        assert_eq!(stored_body(store, &k).await.as_deref(), Some("one two"));
    }

    #[tokio::test]
    async fn an_abandoned_fill_leaves_nothing() {
        let (store, _) = store();
        let k = key("http://a.com/failed");
        let mut fill = store
            .get_miss_handler(&k, &meta(&[]), &span())
            .await
            .unwrap();
        fill.write_body(Bytes::from_static(b"part"), false)
            .await
            .unwrap();
        drop(fill);
        assert!(store.lookup(&k, &span()).await.unwrap().is_none());
        assert_eq!((store.objects(), store.bytes()), (0, 0));
    }

    #[tokio::test]
    async fn fresh_hit_is_only_for_fresh_complete_objects_that_do_not_vary() {
        let (store, _) = store();
        let k = key("http://a.com/f");
        let at = |secs| t0() + Duration::from_secs(secs);
        assert!(store.fresh_hit(&k.primary_bin(), at(1)).is_none(), "absent");

        let mut writing = store
            .get_miss_handler(&k, &meta(&[]), &span())
            .await
            .unwrap();
        writing
            .write_body(Bytes::from_static(b"body"), true)
            .await
            .unwrap();
        assert!(
            store.fresh_hit(&k.primary_bin(), at(1)).is_none(),
            "not finished"
        );
        writing.finish().await.unwrap();

        let hit = store.fresh_hit(&k.primary_bin(), at(10)).unwrap();
        assert_eq!(hit.header.status.as_u16(), 200);
        assert_eq!(hit.body_len(), 4);
        assert_eq!(hit.body.concat(), b"body");
        assert_eq!(hit.age, Duration::from_secs(10));
        assert_eq!(hit.fresh_until, at(60));
        assert!(
            store.fresh_hit(&k.primary_bin(), at(60)).is_some(),
            "last fresh second"
        );
        assert!(store.fresh_hit(&k.primary_bin(), at(61)).is_none(), "stale");

        // Revalidated (new meta, same body): fresh again, its age counted from the update.
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.insert_header("ETag", "\"v2\"").unwrap();
        let renewed = CacheMeta::new(at(200), at(100), 0, 0, header);
        assert!(store.update_meta(&k, &renewed, &span()).await.unwrap());
        let hit = store.fresh_hit(&k.primary_bin(), at(130)).unwrap();
        assert_eq!(hit.age, Duration::from_secs(30));
        assert_eq!(hit.header.headers.get("etag").unwrap(), "\"v2\"");
        assert!(!store
            .update_meta(&key("http://a.com/none"), &renewed, &span())
            .await
            .unwrap());

        // A response with Vary, even stored without a variance, is left to pingora-cache.
        let v = key("http://a.com/vary");
        fill(store, &v, &meta(&[("Vary", "Accept")]), &["v"]).await;
        assert!(store.fresh_hit(&v.primary_bin(), at(1)).is_none());
        assert!(store.lookup(&v, &span()).await.unwrap().is_some());
        // And a variant is stored under its combined key, never the primary one.
        let (kv, mv) = variant("http://a.com/variant", 1);
        fill(store, &kv, &mv, &["v1"]).await;
        assert!(store.fresh_hit(&kv.primary_bin(), at(1)).is_none());
        assert!(store.fresh_hit(&kv.combined_bin(), at(1)).is_none());
        assert_eq!(stored_body(store, &kv).await.as_deref(), Some("v1"));
    }

    #[tokio::test]
    async fn sizes_count_meta_body_url_and_overhead() {
        let (store, _) = store();
        let m = meta(&[("Content-Type", "text/plain")]);
        let a = key("http://a.com/a");
        let size_a = fill(store, &a, &m, &["12345", "67890"]).await;
        assert_eq!(size_a, expected_size(&m, 10, "http://a.com/a"));
        assert_eq!(store.bytes(), size_a);

        // Extra key lines (header and cookie values) are not part of the URL counted.
        let b = key("http://a.com/b\nx-device:mobile");
        let size_b = fill(store, &b, &m, &["xyz"]).await;
        assert_eq!(size_b, expected_size(&m, 3, "http://a.com/b"));
        assert_eq!(store.bytes(), size_a + size_b);

        // A new version replaces the old one's size.
        let size_a2 = fill(store, &a, &m, &["a longer body than before"]).await;
        assert_eq!(store.bytes(), size_a2 + size_b);
        assert_eq!(store.objects(), 2);

        // A new meta changes the size by the difference of the serialized metas.
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.insert_header("Content-Type", "text/plain").unwrap();
        header.insert_header("X-Long", "y".repeat(300)).unwrap();
        let bigger = CacheMeta::new(t0(), t0(), 0, 0, header);
        store.update_meta(&b, &bigger, &span()).await.unwrap();
        let size_b2 = expected_size(&bigger, 3, "http://a.com/b");
        assert!(size_b2 > size_b);
        assert_eq!(store.bytes(), size_a2 + size_b2);
        store.update_meta(&b, &m, &span()).await.unwrap();
        assert_eq!(store.bytes(), size_a2 + size_b);

        assert_eq!(store.purge_url("http://a.com/a"), 1);
        assert_eq!(store.bytes(), size_b);
        assert_eq!(store.purge_url("http://a.com/b"), 1);
        assert_eq!((store.objects(), store.bytes()), (0, 0));
    }

    #[tokio::test]
    async fn purge_by_url_removes_every_variant_of_that_url_only() {
        let (store, _) = store();
        let (v1, m1) = variant("http://a.com/p", 1);
        let (v2, m2) = variant("http://a.com/p", 2);
        fill(store, &v1, &m1, &["gzip"]).await;
        fill(store, &v2, &m2, &["br"]).await;
        fill(
            store,
            &key("http://a.com/p\ncookie:lang=fr"),
            &meta(&[]),
            &["fr"],
        )
        .await;
        fill(store, &key("http://a.com/p2"), &meta(&[]), &["p2"]).await;
        fill(store, &key("http://b.com/p"), &meta(&[]), &["b"]).await;
        assert_eq!(store.purge_url("http://a.com/p"), 3);
        assert_eq!(store.objects(), 2);
        assert!(store.lookup(&v1, &span()).await.unwrap().is_none());
        assert!(store.lookup(&v2, &span()).await.unwrap().is_none());
        assert_eq!(
            stored_body(store, &key("http://a.com/p2")).await.as_deref(),
            Some("p2")
        );
        assert_eq!(
            stored_body(store, &key("http://b.com/p")).await.as_deref(),
            Some("b")
        );
        assert_eq!(store.purge_url("http://a.com/p"), 0);
        assert_eq!(store.purge_url("http://a.com/"), 0, "a URL, not a prefix");
    }

    #[tokio::test]
    async fn purge_by_prefix_removes_the_urls_that_start_with_it() {
        let (store, _) = store();
        for url in [
            "http://a.com/img/1.png",
            "http://a.com/img/2.png",
            "http://a.com/img/sub/3.png",
            "http://a.com/imgs/4.png",
            "http://a.com/css/site.css",
        ] {
            fill(store, &key(url), &meta(&[]), &[url]).await;
        }
        assert_eq!(store.purge_prefix("http://a.com/img/"), 3);
        assert_eq!(store.objects(), 2);
        assert!(stored_body(store, &key("http://a.com/imgs/4.png"))
            .await
            .is_some());
        assert!(stored_body(store, &key("http://a.com/css/site.css"))
            .await
            .is_some());
        assert_eq!(store.purge_prefix("http://b.com/"), 0);
        assert_eq!(store.purge_prefix("http://a.com/"), 2);
        assert_eq!((store.objects(), store.bytes()), (0, 0));
    }

    #[tokio::test]
    async fn purge_by_tag_uses_surrogate_key_and_cache_tag() {
        let (store, _) = store();
        let one = key("http://a.com/1");
        let two = key("http://a.com/2");
        let three = key("http://a.com/3");
        // Surrogate-Key is space-separated, Cache-Tag comma-separated; a tag in both counts once.
        let m1 = meta(&[("Surrogate-Key", "red  blue"), ("Cache-Tag", "green, red")]);
        fill(store, &one, &m1, &["1"]).await;
        fill(store, &two, &meta(&[("Surrogate-Key", "blue")]), &["2"]).await;
        fill(store, &three, &meta(&[("Cache-Tag", "a,,b")]), &["3"]).await;
        assert_eq!(store.purge_tag("nothing"), 0);
        assert_eq!(store.purge_tag("red"), 1);
        assert!(store.lookup(&one, &span()).await.unwrap().is_none());
        // The removed object left every index: its other tags no longer find it.
        assert_eq!(store.purge_tag("green"), 0);
        assert_eq!(store.purge_tag("blue"), 1);
        assert_eq!(store.purge_tag(""), 0);
        assert_eq!(store.purge_tag("b"), 1);
        assert_eq!((store.objects(), store.bytes()), (0, 0));
    }

    #[tokio::test]
    async fn has_other_variants_sees_the_other_variants_of_a_url() {
        let (store, _) = store();
        let (v1, m1) = variant("http://a.com/v", 1);
        let (v2, m2) = variant("http://a.com/v", 2);
        assert!(!store.has_other_variants(&v1));
        fill(store, &v1, &m1, &["one"]).await;
        assert!(!store.has_other_variants(&v1), "only its own");
        assert!(store.has_other_variants(&v2));
        fill(store, &v2, &m2, &["two"]).await;
        assert!(store.has_other_variants(&v1));
        assert!(store.has_other_variants(&v2));
        let other_url = variant("http://a.com/w", 1).0;
        assert!(!store.has_other_variants(&other_url));
        let outcome = store
            .purge(
                PurgeTarget::Active(&v1.to_compact()),
                PurgeType::Invalidation,
                &span(),
            )
            .await
            .unwrap();
        assert!(matches!(outcome, PurgeOutcome::Purged(None)));
        assert!(!store.has_other_variants(&v2));
        assert!(store.has_other_variants(&v1));
    }

    #[tokio::test]
    async fn a_purge_during_a_fill_is_not_undone_by_it() {
        let (store, _) = store();
        let k = key("http://a.com/racing");
        fill(store, &k, &meta(&[]), &["old"]).await;
        // A refill starts, then the operator purges the URL: the refill must not bring the
        // purged content back when it finishes.
        let mut refill = store
            .get_miss_handler(&k, &meta(&[]), &span())
            .await
            .unwrap();
        refill
            .write_body(Bytes::from_static(b"new"), true)
            .await
            .unwrap();
        assert_eq!(store.purge_url("http://a.com/racing"), 1);
        assert!(matches!(
            refill.finish().await.unwrap(),
            MissFinishType::Created(0)
        ));
        assert!(store.lookup(&k, &span()).await.unwrap().is_none());
        assert_eq!((store.objects(), store.bytes()), (0, 0));
        // The same for pingora-cache's purge of the key during a first fill.
        let mut first = store
            .get_miss_handler(&k, &meta(&[]), &span())
            .await
            .unwrap();
        first
            .write_body(Bytes::from_static(b"first"), true)
            .await
            .unwrap();
        let target = k.to_compact();
        let outcome = store
            .purge(
                PurgeTarget::Active(&target),
                PurgeType::Invalidation,
                &span(),
            )
            .await
            .unwrap();
        assert!(
            matches!(outcome, PurgeOutcome::NotFound),
            "nothing complete"
        );
        assert!(matches!(
            first.finish().await.unwrap(),
            MissFinishType::Created(0)
        ));
        assert_eq!((store.objects(), store.bytes()), (0, 0));
    }

    #[tokio::test]
    async fn purges_tell_the_eviction_manager_but_evictions_do_not() {
        let (store, eviction) = store();
        let admit = |k: &CacheKey, size| {
            eviction.admit(CacheEntryKey::key_only(k.to_compact()), size, t0());
        };
        let a = key("http://a.com/a");
        let b = key("http://a.com/b");
        admit(&a, fill(store, &a, &meta(&[]), &["a"]).await);
        admit(&b, fill(store, &b, &meta(&[]), &["b"]).await);
        assert_eq!(eviction.total_items(), 2);
        // The operator's purge: the manager must forget the object too.
        assert_eq!(store.purge_url("http://a.com/a"), 1);
        assert_eq!(eviction.total_items(), 1);
        // An eviction comes from the manager, which already forgot the entry.
        let outcome = store
            .purge(
                PurgeTarget::Active(&b.to_compact()),
                PurgeType::Eviction,
                &span(),
            )
            .await
            .unwrap();
        assert!(matches!(outcome, PurgeOutcome::Purged(None)));
        assert_eq!(eviction.total_items(), 1);
        assert_eq!(store.objects(), 0);
        let again = store
            .purge(
                PurgeTarget::Active(&b.to_compact()),
                PurgeType::Invalidation,
                &span(),
            )
            .await
            .unwrap();
        assert!(matches!(again, PurgeOutcome::NotFound));
    }
}
