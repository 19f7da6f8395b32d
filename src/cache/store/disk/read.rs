//! Reading objects from the disk tier: a lookup opens the file by key and checks its head; a
//! small body is read whole (and promoted to memory by the store), a large one is read block by
//! block as the client takes it, from the offset a range asks for. Every block is checked
//! against its checksum before a byte of it is handed out. File reads run on Tokio's blocking
//! pool: a cold disk must not stall the connections that share a runtime thread.

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;
use pingora::cache::key::HashBinary;
use pingora::{Error, ErrorType, Result};

use super::record::{self, Bad, Head, Layout, BLOCK};
use super::{combined, Disk};

/// Bodies up to this size are read whole at lookup and promoted to memory; larger ones are
/// streamed from the file.
pub const READ_WHOLE_MAX: u64 = 4 << 20;

/// An object found on disk.
pub struct Found {
    pub head: Head,
    /// The whole body, checked, when it is small (`READ_WHOLE_MAX`).
    pub body: Option<Bytes>,
    pub file: FileBody,
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

    /// Reads the checked block that holds byte `at` and returns it from `at` to `end` at most.
    pub async fn read_from(&self, at: u64, end: u64) -> std::result::Result<Bytes, Bad> {
        let i = (at / BLOCK as u64) as usize;
        let me = self.clone();
        let block = tokio::task::spawn_blocking(move || {
            record::read_block(&me.file, &me.layout, &me.sums, i)
        })
        .await
        .map_err(|e| Bad::Io(std::io::Error::other(e)))??;
        let start = i as u64 * BLOCK as u64;
        let to = end.min(start + block.len() as u64);
        Ok(block.slice((at - start) as usize..(to - start) as usize))
    }
}

impl Disk {
    /// Finds the object with this combined key. `None` for anything that cannot be served
    /// (absent, unreadable, corrupt: those two are counted and the file dropped).
    pub async fn lookup(&'static self, key: &HashBinary) -> Option<Found> {
        if !self.may_hold(key) {
            return None;
        }
        let path = self.path_of(key);
        let key = *key;
        let opened = tokio::task::spawn_blocking(move || -> std::result::Result<_, Bad> {
            let f = File::open(path)?;
            let (head, layout, sums) = record::open(&f)?;
            if combined(&head.key) != key {
                return Err(Bad::Corrupt("the file holds another key"));
            }
            let file = FileBody {
                file: Arc::new(f),
                layout,
                sums: Arc::new(sums),
            };
            let body = if layout.body_len <= READ_WHOLE_MAX {
                let mut body = Vec::with_capacity(layout.body_len as usize);
                for i in 0..layout.blocks as usize {
                    body.extend_from_slice(&record::read_block(
                        &file.file, &layout, &file.sums, i,
                    )?);
                }
                Some(Bytes::from(body))
            } else {
                None
            };
            Ok(Found { head, body, file })
        })
        .await
        .ok()?;
        match opened {
            Ok(found) if !self.ready() && self.purged_while_scanning(&key, &found.head) => None,
            Ok(found) => {
                self.touch(&key);
                Some(found)
            }
            Err(Bad::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(Bad::Io(e)) => {
                self.error(
                    &self.stats.read_errors,
                    format_args!("cannot read {}: {e}", self.path_of(&key).display()),
                );
                None
            }
            Err(Bad::Corrupt(why)) => {
                self.drop_corrupt(&key, why);
                None
            }
        }
    }
}

impl Disk {
    /// Whether a purge made during the start-up scan covers a file read before the scan
    /// reached it (conservatively: a soft purge makes it a miss too).
    fn purged_while_scanning(&self, key: &HashBinary, head: &Head) -> bool {
        let tags = record::parse_header(&head.header)
            .map(|h| crate::cache::store::tags_in(&h))
            .unwrap_or_default();
        self.covered_during_scan(key, &head.url, &tags).is_some()
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
