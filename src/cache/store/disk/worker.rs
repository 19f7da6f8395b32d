//! The disk tier's one writer: a thread that takes the directory's lock (waiting for a process
//! being upgraded away to let go), rebuilds the index from the files, then does every write,
//! rename and unlink the store asks for, in order. Doing them all on one thread keeps the files
//! and the index in step: a file is renamed into place only while the index still lists the
//! write that made it, and removed only while no newer one is in place.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::SystemTime;

use bytes::Bytes;
use log::info;
use pingora::cache::eviction::{CacheEntryKey, EvictionManager};
use pingora::cache::key::HashBinary;
use tokio::sync::watch;
use xxhash_rust::xxh3::Xxh3;

use super::record::{self, Head, Wait, BLOCK};
use super::{combined, hex, lock_now, Disk, Entry, Index, Spill, DISK_BLOCK, READY, SCANNING};
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
}

/// A file being written.
struct Writing {
    file: Arc<File>,
    /// What the head says, and the room it has (see `with_length`).
    head: Head,
    cap: usize,
    tmp: PathBuf,
    written: u64,
    block: Xxh3,
    in_block: usize,
    sums: Vec<u64>,
    spill: Arc<Spill>,
    progress: Arc<watch::Sender<bool>>,
    /// A write failed: the rest is ignored and `Finish` stores nothing.
    failed: bool,
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

/// Files left by a process that stopped mid-write.
fn clear_tmp(disk: &Disk) {
    let Ok(dir) = std::fs::read_dir(disk.root.join("tmp")) else {
        return;
    };
    for f in dir.flatten() {
        let _ = std::fs::remove_file(f.path());
    }
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
        .filter_map(|d| std::fs::read_dir(d.path()).ok())
        .flat_map(|d| d.flatten())
        .filter_map(|d| std::fs::read_dir(d.path()).ok());
    for file in dirs.flat_map(|d| d.flatten()) {
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
    let key = combined(&head.key);
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
    let mut fresh_until = fresh_until;
    match disk.covered_during_scan(&key, &url, &tags) {
        Some(PurgeMode::Hard) => {
            drop(index);
            let _ = std::fs::remove_file(path);
            return Ok(());
        }
        Some(PurgeMode::Soft) => {
            let now = SystemTime::now();
            fresh_until = fresh_until.min(now);
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
        },
    );
    admit(disk, &mut index, key, on_disk(layout.file_len()));
    Ok(())
}

/// Bytes a file of `len` takes on disk.
fn on_disk(len: u64) -> u64 {
    len.div_ceil(DISK_BLOCK) * DISK_BLOCK
}

/// Counts a ready entry's size and lets the eviction policy make room; evicted files go now.
fn admit(disk: &Disk, index: &mut Index, key: HashBinary, size: u64) {
    let Some(e) = index.entries.get_mut(&key) else {
        return;
    };
    e.size = size;
    index.bytes += size;
    let entry = CacheEntryKey::key_only(e.compact.clone());
    if size > u16::MAX as u64 * DISK_BLOCK {
        index.giants.push_back(key);
    }
    let mut evicted: Vec<HashBinary> = disk
        .eviction
        .admit(entry, size as usize, SystemTime::now())
        .iter()
        .map(|k| combined(k.key()))
        .collect();
    // The policy weighs giants as 256 MiB: the byte count has the last word.
    while index.bytes > disk.limit {
        let Some(g) = index.giants.pop_front() else {
            break;
        };
        evicted.push(g);
    }
    for k in evicted {
        let Some(e) = index.entries.remove(&k) else {
            continue;
        };
        disk.eviction
            .remove((&CacheEntryKey::key_only(e.compact.clone())).into());
        index.names.remove(&k, &e.url, &e.tags);
        if e.ready {
            index.bytes -= e.size;
            disk.stats.evicted_items.fetch_add(1, Ordering::Relaxed);
            disk.stats
                .evicted_bytes
                .fetch_add(e.size, Ordering::Relaxed);
            let _ = std::fs::remove_file(disk.path_of(&k));
        }
        index.giants.retain(|g| *g != k);
    }
}

fn handle(disk: &'static Disk, writing: &mut HashMap<u64, Writing>, job: Job) {
    match job {
        Job::Begin {
            id,
            head,
            spill,
            progress,
        } => begin(disk, writing, id, head, spill, progress),
        Job::Chunk { id, data } => {
            disk.queued.fetch_sub(data.len(), Ordering::AcqRel);
            if disk.has_room(0) {
                disk.drained.notify_waiters();
            }
            if let Some(w) = writing.get_mut(&id) {
                write_chunk(disk, w, &data);
            }
        }
        Job::Finish { id, key } => {
            if let Some(w) = writing.remove(&id) {
                finish(disk, w, id, key);
            }
        }
        Job::Abort { id } => {
            if let Some(w) = writing.remove(&id) {
                let _ = std::fs::remove_file(&w.tmp);
            }
        }
        Job::Rewrite { key, head } => rewrite(disk, key, |_| Some(head)),
        Job::Expire { key, at } => rewrite(disk, key, |old| {
            let internal = expire_internal(&old.internal, at)?;
            Some(Head { internal, ..old })
        }),
        Job::Remove { key } => {
            let in_place = disk.index().entries.get(&key).is_some_and(|e| e.ready);
            if !in_place {
                let _ = std::fs::remove_file(disk.path_of(&key));
            }
        }
    }
}

fn begin(
    disk: &Disk,
    writing: &mut HashMap<u64, Writing>,
    id: u64,
    head: Head,
    spill: Arc<Spill>,
    progress: Arc<watch::Sender<bool>>,
) {
    let tmp = disk
        .root
        .join("tmp")
        .join(format!("{}-{id}", std::process::id()));
    let encoded = head.encode();
    let cap = record::head_capacity(encoded.len());
    // Readable too: readers of a trimmed fill read it through this descriptor.
    let created = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(&record::head_block(&encoded, cap))?;
            Ok(f)
        });
    let file = match created {
        Ok(f) => Arc::new(f),
        Err(e) => {
            disk.error(
                &disk.stats.write_errors,
                format_args!("cannot write {}: {e}", tmp.display()),
            );
            let _ = std::fs::remove_file(&tmp);
            spill.failed.store(true, Ordering::Release);
            progress.send_modify(|_| {});
            return;
        }
    };
    let _ = spill
        .file
        .set((file.clone(), (record::PREFIX + cap) as u64));
    writing.insert(
        id,
        Writing {
            file,
            head,
            cap,
            tmp,
            written: 0,
            block: Xxh3::new(),
            in_block: 0,
            sums: Vec::new(),
            spill,
            progress,
            failed: false,
        },
    );
}

fn write_chunk(disk: &Disk, w: &mut Writing, data: &[u8]) {
    if w.failed {
        return;
    }
    if let Err(e) = (&*w.file).write_all(data) {
        disk.error(
            &disk.stats.write_errors,
            format_args!("cannot write {}: {e}", w.tmp.display()),
        );
        w.failed = true;
        w.spill.failed.store(true, Ordering::Release);
        w.progress.send_modify(|_| {});
        return;
    }
    let mut rest = data;
    while !rest.is_empty() {
        let n = rest.len().min(BLOCK - w.in_block);
        w.block.update(&rest[..n]);
        w.in_block += n;
        rest = &rest[n..];
        if w.in_block == BLOCK {
            w.sums.push(w.block.digest());
            w.block.reset();
            w.in_block = 0;
        }
    }
    w.written += data.len() as u64;
    w.spill.durable.store(w.written, Ordering::Release);
    // Readers of a trimmed fill wait for this.
    w.progress.send_modify(|_| {});
}

fn finish(disk: &Disk, mut w: Writing, id: u64, key: HashBinary) {
    let keep = !w.failed && disk.index().entries.get(&key).is_some_and(|e| e.id == id);
    if !keep {
        let _ = std::fs::remove_file(&w.tmp);
        return;
    }
    if w.in_block > 0 {
        w.sums.push(w.block.digest());
    }
    let path = disk.path_of(&key);
    let done = with_length(&w)
        .and_then(|_| (&*w.file).write_all(&record::trailer(&w.sums, w.written)))
        .and_then(|_| std::fs::create_dir_all(path.parent().expect("objects/ab/cd")))
        .and_then(|_| std::fs::rename(&w.tmp, &path));
    let len = w.file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut index = disk.index();
    // Listed still? A purge may have come while the trailer was written.
    let listed = index.entries.get(&key).is_some_and(|e| e.id == id);
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
            if let Some(old) = index.entries.remove(&key) {
                index.names.remove(&key, &old.url, &old.tags);
            }
            drop(index);
            // Neither the new version nor the one it replaces stays (that one is unlisted).
            let _ = std::fs::remove_file(&w.tmp);
            let _ = std::fs::remove_file(&path);
            disk.error(
                &disk.stats.write_errors,
                format_args!("cannot complete {}: {e}", path.display()),
            );
        }
    }
}

/// Gives a stored response that came without a Content-Length (chunked from the origin) the
/// length of its body, now known, as nginx and Varnish do for a complete cached object: a hit
/// on it is then sent with a length and can be served in ranges.
fn with_length(w: &Writing) -> std::io::Result<()> {
    let Some(mut header) = record::parse_header(&w.head.header) else {
        return Ok(());
    };
    if header.headers.contains_key(http::header::CONTENT_LENGTH) || header.status != 200 {
        return Ok(());
    }
    header.remove_header(&http::header::TRANSFER_ENCODING);
    let _ = header.insert_header(http::header::CONTENT_LENGTH, w.written.to_string());
    let head = Head {
        header: record::header_wire(&header),
        ..w.head.clone()
    }
    .encode();
    if head.len() > w.cap {
        return Ok(()); // kept as it came
    }
    w.file.write_all_at(&record::head_block(&head, w.cap), 0)
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
        let mut index = disk.index();
        if let Some(e) = index.entries.remove(&key) {
            Disk::unlist(&mut index, &key, &e);
            disk.eviction
                .remove((&CacheEntryKey::key_only(e.compact)).into());
        }
        let _ = std::fs::remove_file(&path);
    }
}
