//! The disk tier's one writer: a thread that takes the directory's lock (waiting for a process
//! being upgraded away to let go), rebuilds the index from the files, then does every write,
//! rename and unlink the store asks for, in order. Doing them all on one thread keeps the files
//! and the index in step: a file is renamed into place only while the index still lists the
//! write that made it, and removed only while no newer one is in place.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::SystemTime;

use bytes::Bytes;
use log::info;
use pingora::cache::eviction::{CacheEntryKey, EvictionManager};
use pingora::cache::key::{CacheHashKey, HashBinary};
use tokio::sync::watch;

use super::record::{self, Head, Wait};
use super::write::Writing;
use super::{hex, lock_now, Disk, Entry, Index, Spill, DISK_BLOCK, READY, SCANNING};
use crate::cache::store::meta::{expire_internal, fresh_until_of};
use crate::cache::store::purge::PurgeMode;
use crate::cache::store::tags_in;

pub(super) enum Job {
    Begin {
        id: u64,
        head: Head,
        spill: Arc<Spill>,
        progress: Arc<watch::Sender<bool>>,
    },
    Chunk {
        id: u64,
        data: Bytes,
    },
    Finish {
        id: u64,
        key: HashBinary,
    },
    Abort {
        id: u64,
    },
    /// A revalidated head, written over the old one.
    Rewrite {
        key: HashBinary,
        head: Head,
    },
    /// A soft purge: the head's internal meta made stale as of `at`.
    Expire {
        key: HashBinary,
        at: SystemTime,
    },
    /// The index dropped it: the file goes unless a newer one is already in place.
    Remove {
        key: HashBinary,
    },
    /// Answered once every job before it is done (see `Disk::settled`).
    Barrier(tokio::sync::oneshot::Sender<()>),
}

pub(super) fn run(disk: &'static Disk, inbox: mpsc::Receiver<Job>) {
    if disk.busy() {
        let lock = disk.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(lock) = lock else { return };
        info!(
            "cache disk tier {}: waiting for process {} to release it",
            disk.root.display(),
            disk.holder()
        );
        if !lock_now(&lock, true) {
            disk.error(
                &disk.stats.write_errors,
                format_args!("cannot lock the directory; the tier stays unused"),
            );
            return;
        }
        disk.hold_lock(lock);
        disk.state.store(SCANNING, Ordering::Release);
    }
    clear_tmp(disk);
    // The scan runs beside the writer: fills and purges go on while a large tier is indexed
    // (lookups meanwhile open files by key; purges are checked against the files it reaches
    // later, see `Disk::covered_during_scan`).
    let scanning = std::thread::Builder::new()
        .name("edge-disk-scan".into())
        .spawn(move || {
            let started = std::time::Instant::now();
            let found = scan(disk);
            disk.state.store(READY, Ordering::Release);
            let (bytes, objects) = disk.usage();
            info!(
                "cache disk tier {}: {objects} objects ({bytes} bytes) of {found} files \
                 indexed in {:?}",
                disk.root.display(),
                started.elapsed()
            );
        });
    if scanning.is_err() {
        scan(disk);
        disk.state.store(READY, Ordering::Release);
    }
    let mut writing: HashMap<u64, Writing> = HashMap::new();
    while let Ok(job) = inbox.recv() {
        handle(disk, &mut writing, job);
    }
}

/// Files left by a process that stopped mid-write. Only names the tier gives them
/// (`<pid>-<write id>`): a directory shared by mistake keeps what is not the tier's.
fn clear_tmp(disk: &Disk) {
    let Ok(dir) = std::fs::read_dir(disk.root.join("tmp")) else {
        return;
    };
    let ours = |name: &str| {
        name.split_once('-').is_some_and(|(pid, id)| {
            [pid, id]
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
    };
    for f in dir.flatten() {
        if f.file_name().to_str().is_some_and(ours) {
            let _ = std::fs::remove_file(f.path());
        }
    }
}

/// Whether a name is one the tier gives an object file or its directories (lowercase hex of
/// `len` characters): the scan reads and may drop only those.
fn hex_name(name: &std::ffi::OsStr, len: usize) -> bool {
    name.to_str().is_some_and(|n| {
        n.len() == len && n.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// Rebuilds the index from the files; returns how many it looked at. A file that fails its
/// checks is removed. Fills that finished meanwhile are newer and win.
fn scan(disk: &'static Disk) -> usize {
    let mut seen = 0;
    let Ok(level1) = std::fs::read_dir(disk.root.join("objects")) else {
        return 0;
    };
    let dirs = level1
        .flatten()
        .filter(|d| hex_name(&d.file_name(), 2))
        .filter_map(|d| std::fs::read_dir(d.path()).ok())
        .flat_map(|d| d.flatten())
        .filter(|d| hex_name(&d.file_name(), 2))
        .filter_map(|d| std::fs::read_dir(d.path()).ok());
    let files = dirs
        .flat_map(|d| d.flatten())
        .filter(|f| hex_name(&f.file_name(), 32));
    for file in files {
        seen += 1;
        let path = file.path();
        match index_file(disk, &path) {
            Ok(()) => {}
            Err(why) => {
                disk.error(
                    &disk.stats.corrupt,
                    format_args!("dropped {} at start: {why}", path.display()),
                );
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    seen
}

fn index_file(disk: &'static Disk, path: &std::path::Path) -> Result<(), String> {
    let f = File::open(path).map_err(|e| e.to_string())?;
    let (head, layout, _) = record::open(&f, Wait::Disk).map_err(|e| format!("{e:?}"))?;
    let key = head.key.combined_bin();
    if path.file_name().and_then(|n| n.to_str()) != Some(hex(&key).as_str()) {
        return Err("its name is not its key".into());
    }
    let fresh_until = fresh_until_of(&head.internal).ok_or("unreadable meta")?;
    let header = record::parse_header(&head.header).ok_or("unreadable header")?;
    let mut index = disk.index();
    if index.entries.contains_key(&key) {
        return Ok(()); // a fill since start replaces it
    }
    let url: Arc<str> = Arc::from(head.url.as_str());
    let tags = tags_in(&header);
    let (mut fresh_until, mut expired_at) = (fresh_until, None);
    match disk.covered_during_scan(&key, &url, &tags) {
        Some(PurgeMode::Hard) => {
            drop(index);
            let _ = std::fs::remove_file(path);
            return Ok(());
        }
        Some(PurgeMode::Soft) => {
            let now = SystemTime::now();
            fresh_until = fresh_until.min(now);
            expired_at = Some(now);
            disk.send(Job::Expire { key, at: now });
        }
        None => {}
    }
    index.names.add(key, &url, &tags);
    index.entries.insert(
        key,
        Entry {
            id: 0,
            ready: true,
            size: 0,
            url,
            tags,
            compact: head.key,
            fresh_until,
            expired_at,
            open: None,
        },
    );
    admit(disk, &mut index, key, on_disk(layout.file_len()));
    Ok(())
}

/// Bytes a file of `len` takes on disk.
pub(super) fn on_disk(len: u64) -> u64 {
    len.div_ceil(DISK_BLOCK) * DISK_BLOCK
}

/// Counts a ready entry's size and lets the eviction policy make room; evicted files go now.
pub(super) fn admit(disk: &Disk, index: &mut Index, key: HashBinary, size: u64) {
    let Some(e) = index.entries.get_mut(&key) else {
        return;
    };
    e.size = size;
    index.bytes += size;
    let entry = CacheEntryKey::key_only(e.compact.clone());
    if size > u16::MAX as u64 * DISK_BLOCK {
        index.giants.push_back(key);
    }
    let evicted = disk.eviction.admit(entry, size as usize, SystemTime::now());
    for k in evicted {
        evict(disk, index, &k.key().combined_bin());
    }
    // The policy weighs giants as 256 MiB: the byte count has the last word, oldest giant first.
    while index.bytes > disk.limit {
        let Some(g) = index.giants.front().copied() else {
            break;
        };
        if !evict(disk, index, &g) {
            index.giants.pop_front(); // no longer stored
        }
    }
}

/// Removes an object the eviction policy (or the size bound) gave up; returns whether it was
/// listed.
fn evict(disk: &Disk, index: &mut Index, key: &HashBinary) -> bool {
    let Some(e) = disk.forget(index, key) else {
        return false;
    };
    if e.ready {
        disk.stats.evicted_items.fetch_add(1, Ordering::Relaxed);
        disk.stats
            .evicted_bytes
            .fetch_add(e.size, Ordering::Relaxed);
        let _ = std::fs::remove_file(disk.path_of(key));
    }
    true
}

fn handle(disk: &'static Disk, writing: &mut HashMap<u64, Writing>, job: Job) {
    match job {
        Job::Begin {
            id,
            head,
            spill,
            progress,
        } => {
            writing.insert(id, Writing::begin(disk, id, head, spill, progress));
        }
        Job::Chunk { id, data } => {
            disk.queued.fetch_sub(data.len(), Ordering::AcqRel);
            if disk.has_room(0) {
                disk.drained.notify_waiters();
            }
            if let Some(w) = writing.get_mut(&id) {
                w.chunk(disk, &data);
            }
        }
        Job::Finish { id, key } => {
            if let Some(w) = writing.remove(&id) {
                w.finish(disk, id, key);
            }
        }
        Job::Abort { id } => {
            if let Some(w) = writing.remove(&id) {
                w.discard();
            }
        }
        Job::Rewrite { key, head } => rewrite(disk, key, |_| Some(head)),
        Job::Expire { key, at } => rewrite(disk, key, |old| {
            let internal = expire_internal(&old.internal, at)?;
            Some(Head { internal, ..old })
        }),
        Job::Barrier(done) => {
            let _ = done.send(());
        }
        Job::Remove { key } => {
            let in_place = disk.index().entries.get(&key).is_some_and(|e| e.ready);
            if !in_place {
                let _ = std::fs::remove_file(disk.path_of(&key));
            }
        }
    }
}

/// Writes a new head over an object's old one, in place when it fits (a revalidated header
/// that grew past the room left at the start, or an unreadable file: the object goes).
fn rewrite(disk: &Disk, key: HashBinary, new_head: impl FnOnce(Head) -> Option<Head>) {
    let path = disk.path_of(&key);
    let done = (|| {
        let f = OpenOptions::new().read(true).write(true).open(&path).ok()?;
        let (old, layout, _) = record::open(&f, Wait::Disk).ok()?;
        let head = new_head(old)?.encode();
        if head.len() > layout.head_cap {
            return None;
        }
        f.write_all_at(&record::head_block(&head, layout.head_cap), 0)
            .ok()
    })();
    if done.is_none() && path.exists() {
        disk.forget(&mut disk.index(), &key);
        let _ = std::fs::remove_file(&path);
    }
}
