//! Writing an object as it arrives from the origin: the miss handler pingora-cache drives.
//! Readers follow the fill; a fill that does not finish leaves nothing behind.

use super::*;

/// Writes one object; readers follow it as it fills.
pub(super) struct Fill {
    pub(super) freshness: Freshness,
    pub(super) store: &'static Store,
    pub(super) key: HashBinary,
    pub(super) id: u64,
    pub(super) id_bytes: [u8; 8],
    pub(super) meta: StoredMeta,
    pub(super) chunks: Arc<RwLock<Vec<Bytes>>>,
    pub(super) progress: Arc<watch::Sender<bool>>,
    pub(super) written: usize,
    pub(super) url: Arc<str>,
    pub(super) tags: Vec<Arc<str>>,
    pub(super) compact: CompactCacheKey,
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
            .is_some_and(|p| !p.purged);
        if maps.partial.get(&self.key).is_some_and(|m| m.is_empty()) {
            maps.partial.remove(&self.key);
        }
        self.progress.send_replace(true);
        if !still_wanted {
            // Purged while it was being written, or since its request went to the origin
            // (`Purges`): do not resurrect it.
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
