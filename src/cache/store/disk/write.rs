//! Writing one object's file, on the disk tier's worker thread (see `worker`): the head, the
//! body as it streams in, the trailer, then the rename into `objects/`.
//!
//! Small objects are gathered in memory and written at once when they complete: one create,
//! one write and one rename each (measured: the worker wrote ~8k objects of 16 KiB a second
//! with a write per chunk and a `mkdir` per object, slower than one connection filling the cache,
//! so fills skipped the disk). A large one is written every `FLUSH_AT` bytes, which is what
//! readers of a trimmed fill wait for (`Spill::durable`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use pingora::cache::key::HashBinary;
use tokio::sync::watch;
use xxhash_rust::xxh3::Xxh3;

use super::record::{self, Head, BLOCK};
use super::worker::{admit, on_disk};
use super::{Disk, Spill};

/// Bytes gathered before they are written.
const FLUSH_AT: usize = 256 << 10;

/// A file being written.
pub(super) struct Writing {
    /// Created at the first flush.
    file: Option<Arc<File>>,
    /// What the head says, and the room it has (see `with_length`).
    head: Head,
    cap: usize,
    tmp: PathBuf,
    /// Bytes not in the file yet (the prefix and head first, until the first flush).
    buf: Vec<u8>,
    /// Body bytes received, and of those in the file.
    written: u64,
    in_file: u64,
    block: Xxh3,
    in_block: usize,
    sums: Vec<u64>,
    spill: Arc<Spill>,
    progress: Arc<watch::Sender<bool>>,
    /// A write failed: the rest is ignored and `finish` stores nothing.
    failed: bool,
}

impl Writing {
    pub(super) fn begin(
        disk: &Disk,
        id: u64,
        head: Head,
        spill: Arc<Spill>,
        progress: Arc<watch::Sender<bool>>,
    ) -> Writing {
        let tmp = disk
            .root
            .join("tmp")
            .join(format!("{}-{id}", std::process::id()));
        let encoded = head.encode();
        let cap = record::head_capacity(encoded.len());
        Writing {
            file: None,
            buf: record::head_block(&encoded, cap),
            head,
            cap,
            tmp,
            written: 0,
            in_file: 0,
            block: Xxh3::new(),
            in_block: 0,
            sums: Vec::new(),
            spill,
            progress,
            failed: false,
        }
    }

    pub(super) fn chunk(&mut self, disk: &Disk, data: &[u8]) {
        if self.failed {
            return;
        }
        let mut rest = data;
        while !rest.is_empty() {
            let n = rest.len().min(BLOCK - self.in_block);
            self.block.update(&rest[..n]);
            self.in_block += n;
            rest = &rest[n..];
            if self.in_block == BLOCK {
                self.sums.push(self.block.digest());
                self.block.reset();
                self.in_block = 0;
            }
        }
        self.buf.extend_from_slice(data);
        self.written += data.len() as u64;
        if self.buf.len() >= FLUSH_AT {
            self.flush(disk);
        }
    }

    /// Writes what is gathered (creating the file the first time); readers of a trimmed fill
    /// are told.
    fn flush(&mut self, disk: &Disk) {
        let written = self.file().and_then(|f| (&*f).write_all(&self.buf));
        match written {
            Ok(()) => {
                self.buf.clear();
                self.in_file = self.written;
                self.spill.durable.store(self.in_file, Ordering::Release);
            }
            Err(e) => {
                disk.error(
                    &disk.stats.write_errors,
                    format_args!("cannot write {}: {e}", self.tmp.display()),
                );
                self.failed = true;
                self.spill.failed.store(true, Ordering::Release);
            }
        }
        self.progress.send_modify(|_| {});
    }

    fn file(&mut self) -> std::io::Result<Arc<File>> {
        if let Some(f) = &self.file {
            return Ok(f.clone());
        }
        // Readable too: readers of a trimmed fill read it through this descriptor.
        let f = Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&self.tmp)?,
        );
        let _ = self
            .spill
            .file
            .set((f.clone(), (record::PREFIX + self.cap) as u64));
        self.file = Some(f.clone());
        Ok(f)
    }

    /// The fill was not stored, or the write failed: the temporary file goes.
    pub(super) fn discard(self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }

    /// Completes the file and renames it into place if the index still lists this write.
    pub(super) fn finish(mut self, disk: &Disk, id: u64, key: HashBinary) {
        let mine = |index: &super::Index| index.entries.get(&key).is_some_and(|e| e.id == id);
        if !mine(&disk.index()) {
            return self.discard(); // purged or replaced meanwhile
        }
        if self.failed {
            // Listed, not written: unlisted, and the version it replaced (already unlisted)
            // goes too, so the files and the index agree.
            return self.abandon(disk, id, key);
        }
        if self.in_block > 0 {
            self.sums.push(self.block.digest());
        }
        let trailer = record::trailer(&self.sums, self.written);
        let len = (record::PREFIX + self.cap) as u64 + self.written + trailer.len() as u64;
        let head = with_length(&self.head, self.written, self.cap);
        let head_in_buf = self.file.is_none();
        if let (Some(h), true) = (&head, head_in_buf) {
            self.buf[..h.len()].copy_from_slice(h);
        }
        self.buf.extend_from_slice(&trailer);
        self.flush(disk);
        let path = disk.path_of(&key);
        let done = match (&head, &self.file) {
            _ if self.failed => Err(std::io::Error::other("write failed")),
            (Some(h), Some(f)) if !head_in_buf => f.write_all_at(h, 0),
            _ => Ok(()),
        }
        .and_then(|_| rename_into(&self.tmp, &path));
        let mut index = disk.index();
        // Listed still? A purge may have come while the file was written.
        let listed = mine(&index);
        match done {
            Ok(()) if listed => {
                if let Some(e) = index.entries.get_mut(&key) {
                    e.ready = true;
                }
                admit(disk, &mut index, key, on_disk(len));
            }
            Ok(()) => {
                let _ = std::fs::remove_file(&path);
            }
            Err(e) => {
                drop(index);
                if !self.failed {
                    disk.error(
                        &disk.stats.write_errors,
                        format_args!("cannot complete {}: {e}", path.display()),
                    );
                }
                self.abandon(disk, id, key);
            }
        }
    }

    /// A listed write that cannot be completed: its entry (if still this write's), its
    /// temporary file and the version it replaced (already unlisted) go.
    fn abandon(self, disk: &Disk, id: u64, key: HashBinary) {
        let mut index = disk.index();
        if index.entries.get(&key).is_some_and(|e| e.id == id) {
            disk.forget(&mut index, &key);
            let _ = std::fs::remove_file(disk.path_of(&key));
        }
        drop(index);
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Renames a complete file into place, making its directories the first time.
fn rename_into(tmp: &Path, path: &Path) -> std::io::Result<()> {
    match std::fs::rename(tmp, path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path.parent().expect("objects/ab/cd"))?;
            std::fs::rename(tmp, path)
        }
        other => other,
    }
}

/// The head block for a stored response that came without a Content-Length (chunked from the
/// origin), with the length of its body, now known, as nginx and Varnish do for a complete
/// cached object: a hit on it is then sent with a length and can be served in ranges. None
/// when it has one (or it does not fit the room left: then it is kept as it came).
fn with_length(head: &Head, body_len: u64, cap: usize) -> Option<Vec<u8>> {
    let mut header = record::parse_header(&head.header)?;
    if header.headers.contains_key(http::header::CONTENT_LENGTH) || header.status != 200 {
        return None;
    }
    header.remove_header(&http::header::TRANSFER_ENCODING);
    header
        .insert_header(http::header::CONTENT_LENGTH, body_len.to_string())
        .ok()?;
    let encoded = Head {
        header: record::header_wire(&header),
        ..head.clone()
    }
    .encode();
    (encoded.len() <= cap).then(|| record::head_block(&encoded, cap))
}
