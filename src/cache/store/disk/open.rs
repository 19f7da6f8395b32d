//! Small disk objects kept open once checked, their bodies sent with `sendfile` (nginx's
//! `open_file_cache`, for the express lane's disk hits).
//!
//! Why: a disk hit opened its file, read it whole (a copy out of the page cache), checked every
//! block and wrote the copy to the socket: `open` ~10% and `pread` ~11% of the edge's CPU on
//! disk hits in `perf`, where nginx hands its cache file to the socket. Here a file read and
//! checked once keeps its descriptor, its parsed header and its freshness; a later hit checks
//! that the head was not rewritten since (the prefix's head checksum, one 8-byte read) and
//! sends the body: with `sendfile` on a plain TCP socket when `cachestat` says every page of it
//! is in the page cache (`sendfile` would otherwise wait for the disk on a runtime thread), else
//! read and written (TLS, a cold file, a kernel before 6.5 that cannot tell), which still saves
//! the open, the checks and the promotion.
//!
//! - The body is checked once, when the file is opened, not at every hit. Files are written
//!   once and renamed into place, and only their head is ever rewritten in place (a
//!   revalidation, a soft purge), which the head checksum catches; what else could change the
//!   body under an open descriptor is not the edge. A file that fails its checks is never kept.
//! - An open file belongs to the index entry it was read for (the write's id): a purge, an
//!   eviction or a newer copy of the object drops the entry and the descriptor with it, and a
//!   file read while a newer copy replaced its entry is not kept; a revalidation or a soft purge
//!   drops the descriptor (`Disk::update`, `Disk::expire`). A send in flight holds its own
//!   reference, so the kernel reads a removed file to the end, as nginx does.
//! - Bounded by `cache.disk.open_files` (by default a quarter of the descriptor limit, at most
//!   16384); past that the least recently used is closed (second chance over a queue of keys).
//!   With 4096 objects of 16 KiB read at random, 2500 open files sent 61% of the disk hits,
//!   4096 all of them (bench/disk.sh).

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use bytes::Bytes;
use pingora::cache::eviction::{CacheEntryKey, EvictionManager};
use pingora::cache::key::HashBinary;
use pingora::http::ResponseHeader;

use super::read::cached_else_blocking;
use super::record::{self, Layout, Wait};
use super::{Disk, Index};

/// A checked object file kept open, with what a fresh hit needs from its head.
pub struct OpenBody {
    file: Arc<File>,
    layout: Layout,
    /// The head checksum in the file's prefix when it was opened: a head rewritten in place
    /// has another.
    head_sum: u64,
    /// The stored header, parsed once.
    pub header: Arc<ResponseHeader>,
    pub fresh_until: SystemTime,
    /// Age counts from here.
    pub epoch: SystemTime,
    /// Used since the queue last passed it (second chance).
    used: AtomicBool,
}

/// The open files of the index, oldest first; keys may repeat or name entries that have none
/// any more (skipped when reached).
#[derive(Default)]
pub(super) struct OpenFiles {
    queue: VecDeque<HashBinary>,
    /// Entries holding an open file.
    pub(super) count: usize,
}

/// How many files may be kept open unless `cache.disk.open_files` says: a quarter of the
/// descriptor limit in force (raised to the hard limit at start; another quarter may go to
/// memory body files, `body_file`), at most 16384, so client and origin connections never run
/// short.
pub fn open_files_by_default() -> usize {
    (crate::connections::descriptor_limit() / 4).min(16384) as usize
}

impl OpenBody {
    /// Keeps a file whose head, layout and every body block were just checked.
    pub fn new(
        file: Arc<File>,
        layout: Layout,
        head_sum: u64,
        header: Arc<ResponseHeader>,
        fresh_until: SystemTime,
        epoch: SystemTime,
    ) -> Self {
        OpenBody {
            file,
            layout,
            head_sum,
            header,
            fresh_until,
            epoch,
            used: AtomicBool::new(false),
        }
    }

    pub fn body_len(&self) -> u64 {
        self.layout.body_len
    }

    /// Sends body bytes `from..` to a socket with `sendfile`, until done or the socket would
    /// block; returns where it stopped, counted from the body's start.
    pub fn send_to(&self, socket: RawFd, from: u64) -> std::io::Result<u64> {
        let base = self.layout.body_offset();
        let end = base + self.layout.body_len;
        crate::cache::body_file::send_file(socket, &self.file, base + from, end).map(|at| at - base)
    }

    /// Reads up to `max` body bytes from `from`: what the socket did not take at once, or a
    /// body for a TLS connection, which `sendfile` would bypass. From the page cache on this
    /// thread if it is there, else on the blocking pool.
    pub async fn read_at(self: &Arc<Self>, from: u64, max: usize) -> std::io::Result<Bytes> {
        let len = (self.layout.body_len.saturating_sub(from) as usize).min(max);
        let at = self.layout.body_offset() + from;
        let me = self.clone();
        match cached_else_blocking(move |wait| record::read_exact_at(&me.file, len, at, wait)).await
        {
            Ok(b) => Ok(Bytes::from(b)),
            Err(record::Bad::Io(e)) => Err(e),
            Err(record::Bad::Corrupt(why)) => Err(std::io::Error::other(why)),
        }
    }

    /// Whether the file's head is still the one read when it was opened, and the prefix was
    /// in the page cache.
    fn head_unchanged(&self) -> bool {
        matches!(
            record::read_exact_at(&self.file, 8, record::HEAD_SUM_AT, Wait::CachedOnly),
            Ok(b) if u64::from_le_bytes(b[..8].try_into().expect("8 bytes")) == self.head_sum
        )
    }

    /// Whether every page of the body is in the page cache, so that `sendfile` will not wait
    /// for the disk on a runtime thread; None when the kernel cannot tell (no `cachestat`
    /// before Linux 6.5, or a sandbox that forbids it): then the body is read, not sent.
    pub fn body_cached(&self) -> Option<bool> {
        pages_cached(
            self.file.as_raw_fd(),
            self.layout.body_offset(),
            self.layout.body_len,
        )
    }
}

impl Disk {
    /// The open file of `key` if one is kept and may serve a hit now: hits not held, no soft
    /// purge pending on it, its head as when opened, its body in the page cache. Counts the use
    /// for the tier's eviction policy, as any read does (`touch`).
    pub fn open_hit(&self, key: &HashBinary) -> Option<Arc<OpenBody>> {
        if self.held() {
            return None;
        }
        let (open, compact) = {
            let index = self.index();
            let e = index.entries.get(key)?;
            if !e.ready || e.expired_at.is_some() {
                return None;
            }
            (e.open.clone()?, e.compact.clone())
        };
        if !open.head_unchanged() {
            self.close_open(key, &open);
            return None;
        }
        open.used.store(true, Ordering::Relaxed);
        self.eviction
            .access(&CacheEntryKey::key_only(compact), 0, SystemTime::now());
        Some(open)
    }

    /// Keeps `open` for later hits on `key` if the index still lists, ready and not
    /// soft-purged, the entry `entry` whose file was read (a newer copy written meanwhile has
    /// another); makes room by closing the least recently used.
    pub fn keep_open(&self, key: &HashBinary, entry: u64, open: OpenBody) {
        self.index().keep_file(key, entry, open, self.open_max);
    }

    /// Files kept open now.
    pub fn open_files(&self) -> usize {
        self.index().open.count
    }

    /// Closes the kept file of `key` if it is still `open` (its head was rewritten).
    fn close_open(&self, key: &HashBinary, open: &Arc<OpenBody>) {
        let mut index = self.index();
        let closed = match index.entries.get_mut(key) {
            Some(e) if e.open.as_ref().is_some_and(|o| Arc::ptr_eq(o, open)) => e.open.take(),
            _ => None,
        };
        if closed.is_some() {
            index.open.count -= 1;
        }
    }
}

impl Index {
    /// Keeps `open` in `key`'s entry if it is still entry `id`, ready, not soft-purged and
    /// keeps none yet, then closes the least recently used past `max`.
    fn keep_file(&mut self, key: &HashBinary, id: u64, open: OpenBody, max: usize) {
        match self.entries.get_mut(key) {
            Some(e)
                if max > 0
                    && e.id == id
                    && e.ready
                    && e.expired_at.is_none()
                    && e.open.is_none() =>
            {
                e.open = Some(Arc::new(open))
            }
            _ => return,
        }
        self.open.count += 1;
        self.open.queue.push_back(*key);
        while self.open.count > max {
            close_oldest(self);
        }
        // Keys of entries gone or reopened pile up when nothing needs closing: drop them.
        if self.open.queue.len() > 2 * max {
            let entries = &self.entries;
            self.open
                .queue
                .retain(|k| entries.get(k).is_some_and(|e| e.open.is_some()));
        }
    }

    /// Closes an entry's kept file, if any (a revalidation or soft purge changes its head).
    pub(super) fn close_file(&mut self, key: &HashBinary) {
        if let Some(e) = self.entries.get_mut(key) {
            if e.open.take().is_some() {
                self.open.count -= 1;
            }
        }
    }
}

/// Closes the file at the front of the queue, or gives a used one a second chance.
fn close_oldest(index: &mut Index) {
    while let Some(k) = index.open.queue.pop_front() {
        let Some(e) = index.entries.get_mut(&k) else {
            continue;
        };
        let Some(open) = &e.open else {
            continue;
        };
        if open.used.swap(false, Ordering::Relaxed) {
            index.open.queue.push_back(k);
            continue;
        }
        e.open = None;
        index.open.count -= 1;
        return;
    }
}

/// Whether all pages of `fd` in `off..off + len` are in the page cache, by `cachestat(2)`
/// (Linux 6.5); None when it cannot be told (an older kernel, a sandbox that refuses it).
fn pages_cached(fd: RawFd, off: u64, len: u64) -> Option<bool> {
    static MISSING: AtomicBool = AtomicBool::new(false);
    if MISSING.load(Ordering::Relaxed) {
        return None;
    }
    if len == 0 {
        return Some(true);
    }
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    const SYS_CACHESTAT: libc::c_long = 451;
    let range = Range { off, len };
    let mut stat = Stat::default();
    // SAFETY: cachestat reads `range` and writes `stat`, both ours; flags must be 0.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            fd,
            &range as *const Range,
            &mut stat as *mut Stat,
            0u32,
        )
    };
    if r != 0 {
        if matches!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENOSYS | libc::EPERM)
        ) {
            MISSING.store(true, Ordering::Relaxed);
        }
        return None;
    }
    static PAGE: OnceLock<u64> = OnceLock::new();
    // SAFETY: plain query.
    let page = *PAGE.get_or_init(|| unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64);
    let pages = (off + len - 1) / page - off / page + 1;
    Some(stat.nr_cache >= pages)
}

/// An object file with `body`, opened and checked, for tests elsewhere (the lane's writer).
#[cfg(test)]
pub fn opened_for_test(name: &str, body: &[u8]) -> (Arc<OpenBody>, std::path::PathBuf) {
    let (path, _) = tests::object_file(name, body, &[1]);
    (tests::opened(&path), path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::cache::CacheKey;
    use std::io::{Read, Write};
    use std::os::unix::fs::FileExt;
    use xxhash_rust::xxh3::xxh3_64;

    /// An object file as the worker writes it, with `internal` as its meta.
    pub(super) fn object_file(
        name: &str,
        body: &[u8],
        internal: &[u8],
    ) -> (std::path::PathBuf, Vec<u8>) {
        let head = record::Head {
            key: CacheKey::new("http://h/p", "").to_compact(),
            url: "http://h/p".into(),
            internal: internal.to_vec(),
            header: record::header_wire(&ResponseHeader::build(200, None).unwrap()),
        }
        .encode();
        let cap = record::head_capacity(head.len());
        let sums: Vec<u64> = body.chunks(record::BLOCK).map(xxh3_64).collect();
        let path = std::env::temp_dir().join(format!("edge-open-{name}-{}", std::process::id()));
        let mut f = File::create(&path).unwrap();
        f.write_all(&record::head_block(&head, cap)).unwrap();
        f.write_all(body).unwrap();
        f.write_all(&record::trailer(&sums, body.len() as u64))
            .unwrap();
        (path, record::head_block(&head, cap))
    }

    pub(super) fn opened(path: &std::path::Path) -> Arc<OpenBody> {
        let f = File::open(path).unwrap();
        let whole = record::open_checked(&f, Wait::Disk).unwrap();
        let now = SystemTime::now();
        Arc::new(OpenBody::new(
            Arc::new(f),
            whole.layout,
            whole.head_sum,
            Arc::new(ResponseHeader::build(200, None).unwrap()),
            now,
            now,
        ))
    }

    #[test]
    fn past_the_limit_the_least_recently_used_file_is_closed() {
        let (path, _) = object_file("limit", b"body", &[1]);
        let mut index = Index::default();
        let keys: Vec<HashBinary> = (0..4u8).map(|i| [i; 16]).collect();
        for k in &keys {
            index.entries.insert(
                *k,
                super::super::Entry {
                    id: 0,
                    ready: true,
                    size: 4096,
                    url: Arc::from("http://h/p"),
                    tags: Vec::new(),
                    compact: CacheKey::new("http://h/p", "").to_compact(),
                    fresh_until: SystemTime::now(),
                    expired_at: None,
                    open: None,
                },
            );
        }
        let is_open = |index: &Index, k: &HashBinary| index.entries[k].open.is_some();
        let body = |path| Arc::into_inner(opened(path)).unwrap();
        index.keep_file(&keys[0], 0, body(&path), 2);
        index.keep_file(&keys[1], 0, body(&path), 2);
        // Used since it was opened: it gets a second chance, and the next oldest goes.
        index.entries[&keys[0]]
            .open
            .as_ref()
            .unwrap()
            .used
            .store(true, Ordering::Relaxed);
        index.keep_file(&keys[2], 0, body(&path), 2);
        assert_eq!(index.open.count, 2);
        assert!(is_open(&index, &keys[0]) && !is_open(&index, &keys[1]));
        // Its second chance put it behind the third: that one is the oldest now.
        index.keep_file(&keys[3], 0, body(&path), 2);
        assert!(is_open(&index, &keys[0]) && !is_open(&index, &keys[2]));
        assert!(is_open(&index, &keys[3]));
        assert_eq!(index.open.count, 2);
        // Closing an entry's file, or a second file for the same entry, keeps the count right.
        index.close_file(&keys[3]);
        index.keep_file(&keys[0], 0, body(&path), 2);
        assert_eq!(index.open.count, 1);
        // The file of an entry since replaced (another write's id), or soft-purged, is not kept.
        index.keep_file(&keys[1], 7, body(&path), 2);
        index.entries.get_mut(&keys[2]).unwrap().expired_at = Some(SystemTime::now());
        index.keep_file(&keys[2], 0, body(&path), 2);
        assert!(!is_open(&index, &keys[1]) && !is_open(&index, &keys[2]));
        assert_eq!(index.open.count, 1);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn the_body_goes_to_a_socket_from_its_offset_and_a_rewritten_head_is_seen() {
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (path, _) = object_file("send", &body, &[1, 2, 3]);
        let open = opened(&path);
        assert!(open.head_unchanged());
        assert_ne!(open.body_cached(), Some(false), "a file just written");

        // From an offset, through a real socket: the body's bytes, none of the head's.
        let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            ours.read_to_end(&mut got).unwrap();
            got
        });
        let mut at = 1000;
        while at < open.body_len() {
            at = open.send_to(theirs.as_raw_fd(), at).unwrap();
        }
        drop(theirs);
        assert!(reader.join().unwrap() == body[1000..]);

        // A revalidation rewrites the head in place (the worker's `rewrite`): caught.
        let (other, new_head) = object_file("other", &body, &[9, 9, 9, 9]);
        std::fs::remove_file(other).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&new_head, 0).unwrap();
        assert!(!open.head_unchanged());
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn cachestat_sees_a_file_just_written_and_not_one_dropped_from_the_page_cache() {
        let path = std::env::temp_dir().join(format!("edge-open-{}", std::process::id()));
        let mut f = File::create(&path).unwrap();
        f.write_all(&vec![5u8; 64 << 10]).unwrap();
        f.sync_all().unwrap();
        let f = File::open(&path).unwrap();
        let _ = std::fs::read(&path).unwrap();
        let cached = pages_cached(f.as_raw_fd(), 100, 40_000);
        // SAFETY: advice on a descriptor we own; clean pages go.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        let dropped = pages_cached(f.as_raw_fd(), 100, 40_000);
        // Where the kernel cannot tell (before Linux 6.5), it says so instead of guessing.
        if cached.is_some() {
            assert_eq!((cached, dropped), (Some(true), Some(false)));
        } else {
            assert_eq!(dropped, None);
        }
        std::fs::remove_file(path).unwrap();
    }
}
