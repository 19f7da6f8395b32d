//! The disk tier under the memory tier (`cache.disk`): every object the store keeps is also
//! written to a file as it streams in, so the tier holds what memory holds and more; memory
//! evicts to it by dropping its own copy, and a disk hit is promoted back into memory. It
//! survives restarts: the files describe themselves (`record`), and the index is rebuilt from
//! them at start.
//!
//! - One worker thread (`worker`) does every write (`write`), rename and unlink, in the order
//!   the store asked for them, so the files on disk follow the index without locks across
//!   threads.
//! - Readers open files by key (`read`); every byte is checked against its checksum first.
//! - Bounded by `disk.max_size` in bytes on disk (files rounded up to 4 KiB blocks), with the
//!   same eviction policy as memory (TinyUFO) in its own instance.
//! - Failures (disk full, I/O errors, a corrupt file) never fail a request: the object is
//!   served from memory or the origin, the error is counted and logged at most once a minute.
//!
//! One edge per path: `lock` in the directory is held with `flock`. A graceful upgrade's new
//! process waits for the old one to let go before it reads or writes the tier.

pub mod open;
pub mod read;
pub mod record;
mod worker;
mod write;

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use log::warn;
use pingora::cache::eviction::{CacheEntryKey, CacheEntryKeyRef, EvictionManager};
use pingora::cache::key::{CompactCacheKey, HashBinary};
use tokio::sync::{watch, Notify};

use super::names::Names;
use super::purge::{PurgeMode, Purged};
use crate::cache::eviction::TinyUfoEviction;
pub use read::Found;
use record::Head;
use worker::Job;

/// Body bytes fills may have waiting for the worker. A fill that would pass it waits (a large
/// object: its memory copy is being trimmed to what is on disk) or gives up its disk copy (a
/// small one: a slow disk must not slow misses). It bounds the memory a large fill takes: with
/// 4 MiB, streaming 200 MiB to two clients grew the peak RSS by ~9 MiB, with 32 MiB by ~26
/// (tests/disk.rs prints it).
const QUEUE_MAX: usize = 4 << 20;

/// Files are counted in blocks of this size, as the file system allocates them.
pub const DISK_BLOCK: u64 = 4096;

const WAITING: u8 = 0;
const SCANNING: u8 = 1;
const READY: u8 = 2;
/// The worker is gone (it could not start, or stopped): the tier is not used any more.
const DEAD: u8 = 3;

/// The file of an object being written, as the worker makes it, for readers that follow a
/// large fill whose memory copy is trimmed to what is already written.
#[derive(Default)]
pub struct Spill {
    /// The temporary file and where its body starts, once the worker has created it.
    pub file: OnceLock<(Arc<File>, u64)>,
    /// Body bytes written to it so far.
    pub durable: AtomicU64,
    /// The worker could not write it: the fill keeps its whole body in memory from here on.
    pub failed: AtomicBool,
}

/// An object in the index.
struct Entry {
    /// The write that made it; a newer write of the same key replaces it.
    id: u64,
    /// Renamed into place (before that, only the worker's temporary file exists).
    ready: bool,
    /// Bytes on disk (blocks), counted in `Index::bytes`.
    size: u64,
    url: Arc<str>,
    tags: Vec<Arc<str>>,
    compact: CompactCacheKey,
    fresh_until: SystemTime,
    /// A soft purge marked it stale at this time; its file's head says so only once the worker
    /// has rewritten it, so reads apply it themselves until a revalidation clears it.
    expired_at: Option<SystemTime>,
    /// Its file, kept open and checked, for hits sent with `sendfile` (see `open`).
    open: Option<Arc<open::OpenBody>>,
}

#[derive(Default)]
struct Index {
    entries: HashMap<HashBinary, Entry>,
    names: Names,
    /// Bytes on disk of ready entries.
    bytes: u64,
    /// Objects too large for the eviction policy's weights (more than 65535 blocks), oldest
    /// first: evicted by age when `bytes` passes the limit (see `worker::admit`).
    giants: VecDeque<HashBinary>,
    /// Which entries keep their file open (see `open`).
    open: open::OpenFiles,
}

/// What the tier counts, read at scrape time.
#[derive(Default)]
pub struct DiskStats {
    pub hits: AtomicU64,
    /// Hits sent from a file kept open (see `open`), without opening or reading it.
    pub open_hits: AtomicU64,
    /// By cause: a write (disk full included), a read, a corrupt or half-written file.
    pub write_errors: AtomicU64,
    pub read_errors: AtomicU64,
    pub corrupt: AtomicU64,
    /// Small objects not written because the worker was too far behind.
    pub skipped: AtomicU64,
    pub evicted_items: AtomicU64,
    pub evicted_bytes: AtomicU64,
}

pub struct Disk {
    root: PathBuf,
    limit: u64,
    state: AtomicU8,
    /// The directory's lock file, once held.
    lock: Mutex<Option<File>>,
    index: Mutex<Index>,
    eviction: TinyUfoEviction,
    jobs: Mutex<mpsc::Sender<Job>>,
    /// Taken by the worker when it starts.
    inbox: Mutex<Option<mpsc::Receiver<Job>>>,
    queued: AtomicUsize,
    drained: Notify,
    pub stats: DiskStats,
    last_error_log: Mutex<Option<Instant>>,
    /// Purges made before the start-up scan was over: the files it had not indexed yet are
    /// checked against them (see `covered_during_scan`), so a purge sent while an edge starts
    /// is not undone by the scan.
    during_scan: Mutex<Vec<(Purged, PurgeMode)>>,
    /// Disk hits are held back (lookups miss) until the fleet's purge stream has been
    /// replayed up to where it was when this edge started (see `cluster`): a file may hold
    /// what a purge sent while the edge was down removed everywhere else.
    held: AtomicBool,
    /// Object files kept open at most (`cache.disk.open_files`).
    open_max: usize,
}

fn lock_now(file: &File, wait: bool) -> bool {
    let op = libc::LOCK_EX | if wait { 0 } else { libc::LOCK_NB };
    // SAFETY: flock on a descriptor this file owns.
    unsafe { libc::flock(file.as_raw_fd(), op) == 0 }
}

impl Disk {
    /// Opens (creates) the tier's directory and takes its lock if it is free. When another
    /// process holds it, the tier waits (`busy`): the caller refuses to start unless it is
    /// taking over from that process (a graceful upgrade).
    /// `open_files`: how many object files may be kept open (see `open`).
    pub fn open(root: &Path, limit: u64, open_files: usize) -> Result<Disk, String> {
        let explain = |what: &str, e: std::io::Error| format!("cache.disk.path: {what}: {e}");
        for dir in [root.to_path_buf(), root.join("objects"), root.join("tmp")] {
            std::fs::create_dir_all(&dir)
                .map_err(|e| explain(&format!("cannot create {}", dir.display()), e))?;
        }
        let lock_path = root.join("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .read(true)
            .open(&lock_path)
            .map_err(|e| explain(&format!("cannot open {}", lock_path.display()), e))?;
        let (tx, rx) = mpsc::channel();
        let disk = Disk {
            root: root.to_path_buf(),
            limit,
            state: AtomicU8::new(WAITING),
            lock: Mutex::new(None),
            index: Mutex::new(Index::default()),
            // 4 KiB units: a file's blocks weigh exactly, up to 256 MiB (see `Index::giants`).
            eviction: TinyUfoEviction::with_unit(
                limit as usize,
                (limit / (64 << 10)) as usize,
                DISK_BLOCK as usize,
            ),
            jobs: Mutex::new(tx),
            inbox: Mutex::new(Some(rx)),
            queued: AtomicUsize::new(0),
            drained: Notify::new(),
            stats: DiskStats::default(),
            last_error_log: Mutex::new(None),
            during_scan: Mutex::new(Vec::new()),
            held: AtomicBool::new(false),
            open_max: open_files,
        };
        if lock_now(&lock, false) {
            disk.hold_lock(lock);
            disk.state.store(SCANNING, Ordering::Release);
        } else {
            *disk.lock.lock().unwrap_or_else(|e| e.into_inner()) = Some(lock);
        }
        Ok(disk)
    }

    /// Keeps the lock and writes this process's id in it (for the operator who finds it).
    fn hold_lock(&self, mut lock: File) {
        let _ = lock.set_len(0);
        let _ = writeln!(lock, "{}", std::process::id());
        *self.lock.lock().unwrap_or_else(|e| e.into_inner()) = Some(lock);
    }

    /// Another process holds the directory: this one has not started using it.
    pub fn busy(&self) -> bool {
        self.state.load(Ordering::Acquire) == WAITING
    }

    /// The process whose id the lock file names.
    pub fn holder(&self) -> String {
        std::fs::read_to_string(self.root.join("lock"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether fills may be written: the lock is held and the index is being or was rebuilt.
    pub fn writable(&self) -> bool {
        matches!(self.state.load(Ordering::Acquire), SCANNING | READY)
    }

    /// Gives the tier up: its worker is gone, so nothing would be written or removed.
    fn die(&self, why: &str) {
        if self.state.swap(DEAD, Ordering::AcqRel) != DEAD {
            self.error(
                &self.stats.write_errors,
                format_args!("{why}; the disk tier is no longer used"),
            );
            self.drained.notify_waiters();
        }
    }

    /// Whether the index is complete (the start-up scan is over).
    pub fn ready(&self) -> bool {
        self.state.load(Ordering::Acquire) == READY
    }

    /// Starts the worker thread (once; later calls do nothing): it waits for the lock if
    /// another process has it, rebuilds the index from the files, then writes what fills send.
    pub fn start(&'static self) {
        let Some(inbox) = self.inbox.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("edge-disk".into())
            .spawn(move || worker::run(self, inbox));
        if let Err(e) = spawned {
            self.die(&format!("cannot start its worker thread: {e}"));
        }
    }

    /// Where the object with this combined key lives: `objects/ab/cd/abcd...` (hex).
    pub fn path_of(&self, key: &HashBinary) -> PathBuf {
        let hex = hex(key);
        self.root
            .join("objects")
            .join(&hex[..2])
            .join(&hex[2..4])
            .join(hex)
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands a job to the worker; false (and the tier given up) if it is gone.
    fn send(&self, job: Job) -> bool {
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .is_ok();
        if !sent {
            self.die("its worker thread stopped");
        }
        sent
    }

    /// Resolves once the worker has done every job sent before (a purge's removals and
    /// rewrites included): what the fleet's purge position waits for before it is saved, and
    /// the last thing a stopping edge does with the tier.
    pub fn settled(&self) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Job::Barrier(tx));
        rx
    }

    /// Counts an error and logs it, at most once a minute (a full disk fails every write).
    pub(super) fn error(&self, counter: &AtomicU64, what: std::fmt::Arguments) {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut last = self
            .last_error_log
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed().as_secs() >= 60) {
            *last = Some(Instant::now());
            warn!(
                "cache disk tier {}: {what} (serving from memory and the origin; counted in \
                 edge_cache_disk_errors_total, logged at most once a minute)",
                self.root.display()
            );
        }
    }

    /// Bytes on disk and objects (ready ones).
    pub fn usage(&self) -> (u64, usize) {
        let index = self.index();
        (
            index.bytes,
            index.entries.values().filter(|e| e.ready).count(),
        )
    }

    // --- What fills ask for -----------------------------------------------------------------

    /// Starts writing an object: the worker creates its temporary file with this head.
    pub(super) fn begin(
        &self,
        id: u64,
        head: Head,
        progress: Arc<watch::Sender<bool>>,
    ) -> Arc<Spill> {
        let spill = Arc::new(Spill::default());
        self.send(Job::Begin {
            id,
            head,
            spill: spill.clone(),
            progress,
        });
        spill
    }

    /// Whether `len` more bytes fit in the worker's queue now (never once the tier is given up).
    pub(super) fn has_room(&self, len: usize) -> bool {
        self.writable() && self.queued.load(Ordering::Acquire) + len <= QUEUE_MAX
    }

    /// Waits until the worker's queue has room (a large fill: see `QUEUE_MAX`); false if the
    /// tier was given up meanwhile.
    pub(super) async fn room(&self) -> bool {
        while !self.has_room(0) {
            if !self.writable() {
                return false;
            }
            let notified = self.drained.notified();
            if self.has_room(0) || !self.writable() {
                continue;
            }
            notified.await;
        }
        true
    }

    /// Queues a chunk for the worker; false if it is gone (the chunk is not counted then).
    pub(super) fn chunk(&self, id: u64, data: Bytes) -> bool {
        let len = data.len();
        self.queued.fetch_add(len, Ordering::AcqRel);
        let sent = self.send(Job::Chunk { id, data });
        if !sent {
            self.queued.fetch_sub(len, Ordering::AcqRel);
        }
        sent
    }

    /// The fill completed: lists the object (not yet ready) and has the worker finish its file
    /// and rename it into place. Called under the store's lock, so purges see it in order.
    pub(super) fn finish(
        &self,
        id: u64,
        key: HashBinary,
        url: Arc<str>,
        tags: Vec<Arc<str>>,
        compact: CompactCacheKey,
        fresh_until: SystemTime,
    ) {
        let mut index = self.index();
        self.forget(&mut index, &key);
        index.names.add(key, &url, &tags);
        index.entries.insert(
            key,
            Entry {
                id,
                ready: false,
                size: 0,
                url,
                tags,
                compact,
                fresh_until,
                expired_at: None,
                open: None,
            },
        );
        drop(index);
        self.send(Job::Finish { id, key });
    }

    /// The fill did not complete, or is not to be stored: its temporary file goes.
    pub(super) fn abort(&self, id: u64) {
        self.send(Job::Abort { id });
    }

    // --- Purges and revalidations -----------------------------------------------------------

    /// Takes an object out of the index: its names, its bytes, and the eviction policy's entry.
    /// The file stays (the caller removes it, or has the worker do so).
    fn forget(&self, index: &mut Index, key: &HashBinary) -> Option<Entry> {
        let e = index.entries.remove(key)?;
        Self::unlist(index, key, &e);
        self.eviction.remove(CacheEntryKeyRef::KeyOnly(&e.compact));
        Some(e)
    }

    fn unlist(index: &mut Index, key: &HashBinary, e: &Entry) {
        index.names.remove(key, &e.url, &e.tags);
        if e.open.is_some() {
            index.open.count -= 1;
        }
        if e.ready {
            index.bytes -= e.size;
        }
        if e.size > u16::MAX as u64 * DISK_BLOCK {
            index.giants.retain(|g| g != key);
        }
    }

    /// Removes one object (the file goes in the worker's turn).
    fn remove_locked(&self, index: &mut Index, key: &HashBinary) -> bool {
        let found = self.forget(index, key).is_some();
        if found {
            self.send(Job::Remove { key: *key });
        }
        found
    }

    /// Records a purge for the files the start-up scan has not reached (if it is running).
    fn note_during_scan(&self, what: &Purged, mode: PurgeMode) {
        if !self.ready() {
            let mut missed = self.during_scan.lock().unwrap_or_else(|e| e.into_inner());
            missed.push((what.clone(), mode));
        }
    }

    /// The strongest purge made during the start-up scan that covers this object, if any.
    pub(super) fn covered_during_scan(
        &self,
        key: &HashBinary,
        url: &str,
        tags: &[Arc<str>],
    ) -> Option<PurgeMode> {
        let missed = self.during_scan.lock().unwrap_or_else(|e| e.into_inner());
        let covering = missed.iter().filter(|(p, _)| p.covers(key, url, tags));
        covering
            .map(|(_, m)| *m)
            .max_by_key(|m| *m == PurgeMode::Hard)
    }

    /// Removes what `what` names; returns the keys removed.
    pub(super) fn purge(&self, what: &Purged) -> Vec<HashBinary> {
        self.note_during_scan(what, PurgeMode::Hard);
        let mut index = self.index();
        let keys = index.names.find(what);
        keys.into_iter()
            .filter(|k| self.remove_locked(&mut index, k))
            .collect()
    }

    /// Marks what `what` names stale as of `now` (a soft purge); returns the keys that were
    /// fresh.
    pub(super) fn expire(&self, what: &Purged, now: SystemTime) -> Vec<HashBinary> {
        self.note_during_scan(what, PurgeMode::Soft);
        let mut index = self.index();
        let keys = index.names.find(what);
        let mut expired = Vec::new();
        for k in keys {
            let Some(e) = index.entries.get_mut(&k) else {
                continue;
            };
            if e.fresh_until > now {
                e.fresh_until = now;
                e.expired_at = Some(now);
                index.close_file(&k);
                expired.push(k);
                self.send(Job::Expire { key: k, at: now });
            }
        }
        expired
    }

    /// A revalidation changed an object's meta: its head is rewritten in place.
    pub(super) fn update(&self, key: HashBinary, head: Head, fresh_until: SystemTime) -> bool {
        let mut index = self.index();
        let Some(e) = index.entries.get_mut(&key) else {
            return false;
        };
        e.fresh_until = fresh_until;
        e.expired_at = None;
        index.close_file(&key);
        self.send(Job::Rewrite { key, head });
        true
    }

    /// A file that failed its checks: out of the index and off the disk.
    pub(super) fn drop_corrupt(&self, key: &HashBinary, why: &str) {
        self.error(
            &self.stats.corrupt,
            format_args!("dropped the corrupt file of object {}: {why}", hex(key)),
        );
        let mut index = self.index();
        if !self.remove_locked(&mut index, key) {
            self.send(Job::Remove { key: *key });
        }
    }

    /// Holds disk hits back until `release` (see `held`).
    pub fn hold(&self) {
        self.held.store(true, Ordering::Release);
    }

    pub fn release(&self) {
        self.held.store(false, Ordering::Release);
    }

    pub fn held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }

    /// Where the fleet's purge task keeps its position in the purge stream, beside the objects
    /// it applies to.
    pub fn position_file(&self) -> PathBuf {
        self.root.join("cluster-position")
    }

    /// Whether the key may be read from disk: `Some(Some(id))` when the index lists it as ready
    /// (the id of the write that made it, see `open`), `Some(None)` while the start-up scan runs
    /// (any key may be on disk), `None` otherwise, and always while hits are held.
    pub(super) fn may_hold(&self, key: &HashBinary) -> Option<Option<u64>> {
        if self.held() {
            return None;
        }
        match self.state.load(Ordering::Acquire) {
            READY => {
                let index = self.index();
                index
                    .entries
                    .get(key)
                    .filter(|e| e.ready)
                    .map(|e| Some(e.id))
            }
            SCANNING => Some(None),
            _ => None, // waiting for the lock, or given up
        }
    }

    /// A read found it: counts the use for eviction, and returns when a soft purge its file
    /// does not show yet marked it stale (see `Entry::expired_at`).
    pub(super) fn touch(&self, key: &HashBinary) -> Option<SystemTime> {
        let (compact, expired_at) = {
            let index = self.index();
            let e = index.entries.get(key)?;
            (e.compact.clone(), e.expired_at)
        };
        self.eviction
            .access(&CacheEntryKey::key_only(compact), 0, SystemTime::now());
        expired_at
    }
}

/// A key in hexadecimal, as file names spell it.
pub fn hex(key: &HashBinary) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}
