//! Writing an object as it arrives from the origin: the miss handler pingora-cache drives.
//! Readers follow the fill; a fill that does not finish leaves nothing behind.
//!
//! With a disk tier every chunk also goes to the disk worker as it arrives. A large fill
//! (beyond `TRIM_AT`) keeps in memory only what is not on disk yet, so an object of any size
//! streams through a bounded amount of memory: its readers read what memory dropped from the
//! file being written. Such an object lives on disk only.

use super::*;

/// Beyond this many body bytes, a fill with a disk copy drops from memory the chunks the disk
/// has (and the object is not kept in memory), keeping the newest `KEEP` bytes for the readers
/// that follow closely.
const TRIM_AT: usize = COALESCE_MAX;
const KEEP: usize = 1 << 20;

/// The largest body the memory tier keeps (the eviction policy weighs in KiB with 16 bits).
const MEMORY_OBJECT_MAX: usize = 64 << 20;

/// Writes one object; readers follow it as it fills.
pub(super) struct Fill {
    pub(super) freshness: Freshness,
    pub(super) store: &'static Store,
    pub(super) key: HashBinary,
    pub(super) id: u64,
    pub(super) id_bytes: [u8; 8],
    pub(super) meta: StoredMeta,
    pub(super) chunks: Arc<RwLock<Chunks>>,
    pub(super) progress: Arc<watch::Sender<bool>>,
    pub(super) written: usize,
    pub(super) url: Arc<str>,
    pub(super) tags: Vec<Arc<str>>,
    pub(super) compact: CompactCacheKey,
    /// The disk tier and this object's file as it is written; `None` once given up.
    pub(super) disk: Option<(&'static Disk, Arc<Spill>)>,
    /// The disk worker was told how this fill ended (finished or aborted).
    pub(super) disk_done: bool,
    /// Its write is still listed among the key's fills in flight (until `store_it`), which
    /// `drop` then unlists: an unfinished write leaves nothing behind.
    pub(super) listed: bool,
}

impl Fill {
    /// Sends a chunk to the disk copy, or gives the copy up (a small object when the worker is
    /// behind, or the worker failed). A large fill waits for room instead: its memory copy is
    /// being trimmed to what is on disk.
    async fn copy_to_disk(&mut self, data: &Bytes, trimming: bool) {
        let Some((disk, spill)) = &self.disk else {
            return;
        };
        if spill.failed.load(Ordering::Acquire) {
            return self.give_up_disk(false);
        }
        let room = if trimming {
            disk.room().await
        } else {
            disk.has_room(data.len())
        };
        if !room {
            return self.give_up_disk(!trimming && disk.writable());
        }
        if !disk.chunk(self.id, data.clone()) {
            self.give_up_disk(false);
        }
    }

    fn give_up_disk(&mut self, skipped: bool) {
        if let Some((disk, _)) = self.disk.take() {
            if skipped {
                disk.stats.skipped.fetch_add(1, Ordering::Relaxed);
            }
            disk.abort(self.id);
            self.disk_done = true;
        }
    }

    /// Drops from memory the chunks that are on disk, keeping the newest `KEEP` bytes.
    fn trim(&self) {
        let Some((_, spill)) = &self.disk else {
            return;
        };
        let durable = spill.durable.load(Ordering::Acquire);
        let mut c = self.chunks.write().unwrap_or_else(|e| e.into_inner());
        while c.held > KEEP {
            let Some(front) = c.list.front() else { break };
            let end = c.base + front.len() as u64;
            if end > durable {
                break;
            }
            c.held -= front.len();
            c.base = end;
            c.first += 1;
            c.list.pop_front();
        }
    }
}

#[async_trait]
impl HandleMiss for Fill {
    async fn write_body(&mut self, data: Bytes, eof: bool) -> Result<()> {
        self.written += data.len();
        if !data.is_empty() {
            let trimming = self.written > TRIM_AT;
            // A copy sized to the data: the chunk Pingora hands over may be a slice of a much
            // larger read buffer, which a stored slice (or one queued for the disk) would keep
            // alive (seen: 1 KiB objects holding ~6 KiB each), and the size accounting would be
            // wrong.
            let owned = Bytes::copy_from_slice(&data);
            self.copy_to_disk(&owned, trimming).await;
            {
                let mut c = self.chunks.write().unwrap_or_else(|e| e.into_inner());
                c.held += owned.len();
                c.list.push_back(owned);
            }
            if trimming {
                self.trim();
            }
        }
        // Wake readers even when not complete: they have new chunks to read.
        self.progress.send_replace(eof);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        Ok(MissFinishType::Created(self.store_it()))
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        Some(&self.id_bytes)
    }
}

impl Fill {
    /// Lists the complete object (in memory, on disk, or both), and memory's policy admits what
    /// memory keeps (see `Store::admit_locked`); returns the bytes memory holds for it, 0 when
    /// it is on disk only or was purged while it was written.
    fn store_it(mut self: Box<Self>) -> usize {
        let (in_memory, trimmed) = {
            let c = self.chunks.read().unwrap_or_else(|e| e.into_inner());
            (c.list.iter().cloned().collect::<Vec<_>>(), c.base > 0)
        };
        // In memory unless trimmed (then on disk only) or too large for memory's policy.
        let keep_in_memory = !trimmed && self.written <= MEMORY_OBJECT_MAX;
        let (mut body, mut file) = (in_memory, None);
        if keep_in_memory && self.written <= COALESCE_MAX {
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
        let store = self.store;
        let mut maps = store.write();
        let still_wanted = maps
            .take_fill(&self.key, self.id)
            .is_some_and(|p| !p.purged);
        self.listed = false;
        self.progress.send_replace(true);
        if !still_wanted {
            // Purged while it was being written, or since its request went to the origin
            // (`Purges`): do not resurrect it.
            drop(maps);
            self.give_up_disk(false);
            return 0;
        }
        // A previous version is replaced: its size leaves the store (the eviction manager
        // re-admits the key with the new size, or forgets it if this one stays on disk only).
        let replaced = store.take_locked(&mut maps, &self.key, false);
        if let Some((disk, spill)) = self.disk.take() {
            if spill.failed.load(Ordering::Acquire) {
                disk.abort(self.id);
            } else {
                // Listed under the store's lock: a purge after this point finds it.
                disk.finish(
                    self.id,
                    self.key,
                    self.url.clone(),
                    self.tags.clone(),
                    self.compact.clone(),
                    self.freshness.fresh_until,
                );
            }
            self.disk_done = true;
        }
        if !keep_in_memory {
            // On disk only: nothing for memory's policy to weigh.
            if replaced.is_some() {
                store
                    .eviction
                    .remove(CacheEntryKeyRef::KeyOnly(&self.compact));
            }
            return 0;
        }
        maps.names.add(self.key, &self.url, &self.tags);
        keys::list(&mut maps.variants, self.compact.primary, self.key);
        maps.objects.insert(
            self.key,
            Box::new(Object {
                freshness: self.freshness,
                meta: self.meta.clone(),
                body: Arc::new(body),
                file,
                body_len: self.written,
                url: self.url.clone(),
                tags: self.tags.clone(),
                compact: self.compact.clone(),
            }),
        );
        store.bytes.fetch_add(size, Ordering::Relaxed);
        store.admit_locked(&mut maps, self.compact.clone(), size, replaced);
        size
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        // An unfinished write (origin failed, object too large): readers see it end, the
        // partial entry goes, and so does its disk copy.
        if !self.disk_done {
            self.give_up_disk(false);
        }
        if self.listed {
            self.store.write().take_fill(&self.key, self.id);
        }
    }
}
