//! Reading objects from the disk tier: a lookup opens the file by key and checks its head; a
//! small body is read whole (and promoted to memory by the store), a large one is read block by
//! block as the client takes it, from the offset a range asks for. Every block is checked
//! against its checksum before a byte of it is handed out. Reads are tried from the page cache
//! on the runtime thread (`RWF_NOWAIT`); what would wait for the disk goes to Tokio's blocking
//! pool: a cold disk must not stall the connections that share a runtime thread.

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;
use pingora::cache::key::HashBinary;
use pingora::{Error, ErrorType, Result};

use super::open::OpenBody;
use super::record::{self, Bad, Head, Layout, Wait, BLOCK};
use super::Disk;
use crate::cache::store::meta::{expire_internal, StoredMeta};
use pingora::cache::key::CacheHashKey;

/// Bodies up to this size are read whole at lookup and promoted to memory; larger ones are
/// streamed from the file.
pub const READ_WHOLE_MAX: u64 = 4 << 20;

/// An object found on disk.
pub struct Found {
    pub head: Head,
    /// The head's meta as the store keeps it, its header parsed once, here.
    pub meta: StoredMeta,
    /// The whole body, checked, when it is small (`READ_WHOLE_MAX`).
    pub body: Option<Bytes>,
    pub file: FileBody,
    /// The head's checksum in the file's prefix (see `open`).
    head_sum: u64,
    /// The index entry the file was read for (`lookup_cached`, once the index is complete): a
    /// file is kept open only under that entry.
    pub entry: Option<u64>,
}

impl Found {
    /// The file kept open for later hits (see `open`), once its whole body was read here and
    /// checked; with the stored header and the freshness the caller computed from the meta.
    pub fn keep_open(
        &self,
        fresh_until: std::time::SystemTime,
        epoch: std::time::SystemTime,
    ) -> Option<OpenBody> {
        self.body.as_ref()?;
        Some(OpenBody::new(
            self.file.file.clone(),
            self.file.layout,
            self.head_sum,
            self.meta.header.clone(),
            fresh_until,
            epoch,
        ))
    }
}

/// A body on disk and what checks it.
#[derive(Clone)]
pub struct FileBody {
    file: Arc<File>,
    layout: Layout,
    sums: Arc<Vec<u64>>,
}

impl FileBody {
    pub fn body_len(&self) -> u64 {
        self.layout.body_len
    }

    /// Reads the checked block that holds byte `at` and returns it from `at` to `end` at most:
    /// from the page cache on this thread if it is there, else on the blocking pool.
    pub async fn read_from(&self, at: u64, end: u64) -> std::result::Result<Bytes, Bad> {
        let i = (at / BLOCK as u64) as usize;
        let me = self.clone();
        let block = cached_else_blocking(move |wait| {
            record::read_block(&me.file, &me.layout, &me.sums, i, wait)
        })
        .await?;
        let start = i as u64 * BLOCK as u64;
        let to = end.min(start + block.len() as u64);
        Ok(block.slice((at - start) as usize..(to - start) as usize))
    }
}

/// Runs `read` from the page cache on this thread (`Wait::CachedOnly`); when it would wait for
/// the disk, again on Tokio's blocking pool (`Wait::Disk`), so that a cold disk does not stall
/// the connections sharing this runtime thread. Every read of the tier goes through here.
pub(super) async fn cached_else_blocking<T: Send + 'static>(
    read: impl Fn(Wait) -> std::result::Result<T, Bad> + Send + 'static,
) -> std::result::Result<T, Bad> {
    match read(Wait::CachedOnly) {
        Err(Bad::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
            tokio::task::spawn_blocking(move || read(Wait::Disk))
                .await
                .map_err(|e| Bad::Io(std::io::Error::other(e)))?
        }
        other => other,
    }
}

/// `open_found`, once more if the file failed its checks: a head being rewritten in place (a
/// revalidation, a soft purge) can be read half old, half new, and a good object must not be
/// dropped for it.
fn open_twice(
    path: &std::path::Path,
    key: &HashBinary,
    wait: Wait,
) -> std::result::Result<Found, Bad> {
    match open_found(path, key, wait) {
        Err(Bad::Corrupt(_)) => open_found(path, key, wait),
        other => other,
    }
}

/// Opens the object's file and reads what a lookup needs (the whole body when small).
fn open_found(
    path: &std::path::Path,
    key: &HashBinary,
    wait: Wait,
) -> std::result::Result<Found, Bad> {
    let f = File::open(path)?;
    let whole = record::open_checked(&f, wait)?;
    if whole.head.key.combined_bin() != *key {
        return Err(Bad::Corrupt("the file holds another key"));
    }
    let header =
        record::parse_header(&whole.head.header).ok_or(Bad::Corrupt("unreadable header"))?;
    let meta = StoredMeta {
        internal: whole.head.internal.clone(),
        header: Arc::new(header),
    };
    let file = FileBody {
        file: Arc::new(f),
        layout: whole.layout,
        sums: Arc::new(whole.sums),
    };
    let body = if whole.body.is_some() {
        whole.body
    } else if file.layout.body_len <= READ_WHOLE_MAX {
        let mut body = Vec::with_capacity(file.layout.body_len as usize);
        for i in 0..file.layout.blocks as usize {
            body.extend_from_slice(&record::read_block(
                &file.file,
                &file.layout,
                &file.sums,
                i,
                wait,
            )?);
        }
        Some(Bytes::from(body))
    } else {
        None
    };
    Ok(Found {
        head: whole.head,
        meta,
        body,
        file,
        head_sum: whole.head_sum,
        entry: None,
    })
}

impl Disk {
    /// Finds the object with this combined key. `None` for anything that cannot be served
    /// (absent, unreadable, corrupt: those two are counted and the file dropped). A file in the
    /// page cache is read on this thread (a few system calls); one that is not, on Tokio's
    /// blocking pool (handing over costs two context switches: 27% of a disk hit's CPU when
    /// every read went there).
    pub async fn lookup(&'static self, key: &HashBinary) -> Option<Found> {
        self.may_hold(key)?;
        let (path, key) = (self.path_of(key), *key);
        let opened = cached_else_blocking(move |wait| open_twice(&path, &key, wait)).await;
        self.settle(&key, opened)
    }

    /// As `lookup`, for a small object whose file is in the page cache: read on this thread,
    /// without waiting for anything (the express lane asks; anything else is `None` and goes
    /// the proxy's way).
    pub fn lookup_cached(&self, key: &HashBinary) -> Option<Found> {
        // Before the file: an entry replaced while it is read has another id.
        let entry = self.may_hold(key)?;
        match open_twice(&self.path_of(key), key, Wait::CachedOnly) {
            Err(Bad::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            opened => {
                let mut found = self.settle(key, opened).filter(|f| f.body.is_some())?;
                found.entry = entry;
                Some(found)
            }
        }
    }

    /// What a read came to: the object, or `None` with errors counted and corrupt files
    /// dropped.
    fn settle(&self, key: &HashBinary, opened: std::result::Result<Found, Bad>) -> Option<Found> {
        match opened {
            Ok(found) if !self.ready() && self.purged_while_scanning(key, &found) => None,
            Ok(mut found) => {
                if let Some(at) = self.touch(key) {
                    // Soft-purged, and the file not rewritten yet: stale as of the purge.
                    found.meta.internal = expire_internal(&found.meta.internal, at)?;
                }
                Some(found)
            }
            Err(Bad::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(Bad::Io(e)) => {
                self.error(
                    &self.stats.read_errors,
                    format_args!("cannot read {}: {e}", self.path_of(key).display()),
                );
                None
            }
            Err(Bad::Corrupt(why)) => {
                self.drop_corrupt(key, why);
                None
            }
        }
    }
}

impl Disk {
    /// Whether a purge made during the start-up scan covers a file read before the scan
    /// reached it (conservatively: a soft purge makes it a miss too).
    fn purged_while_scanning(&self, key: &HashBinary, found: &Found) -> bool {
        let tags = crate::cache::store::tags_in(&found.meta.header);
        self.covered_during_scan(key, &found.head.url, &tags)
            .is_some()
    }
}

/// A large body read from disk as the client takes it.
pub struct DiskHit {
    pub disk: &'static Disk,
    pub key: HashBinary,
    pub body: FileBody,
    pub pos: u64,
    pub end: u64,
}

impl DiskHit {
    pub async fn read(&mut self) -> Result<Option<Bytes>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        match self.body.read_from(self.pos, self.end).await {
            Ok(b) => {
                self.pos += b.len() as u64;
                Ok(Some(b))
            }
            Err(e) => {
                // The header is sent: the client sees the body cut short, never wrong bytes.
                match &e {
                    Bad::Corrupt(why) => self.disk.drop_corrupt(&self.key, why),
                    Bad::Io(io) => self.disk.error(
                        &self.disk.stats.read_errors,
                        format_args!("cannot read a body: {io}"),
                    ),
                }
                Error::e_explain(ErrorType::InternalError, format!("disk tier read: {e:?}"))
            }
        }
    }

    pub fn seek(&mut self, start: u64, end: Option<u64>) -> Result<()> {
        let len = self.body.body_len();
        if start >= len {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("seek start {start} beyond body length {len}"),
            );
        }
        self.pos = start;
        self.end = end.map_or(len, |e| e.min(len));
        Ok(())
    }
}
