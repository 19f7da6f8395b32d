//! Large stored bodies in memory files, sent to clients with `sendfile`.
//!
//! Why: a 100 KiB hit spent a quarter of the edge's CPU copying the body into the socket
//! (`_copy_from_iter` in `perf`), the copy nginx avoids by sending its tmpfs cache with
//! `sendfile`. A body of at least `FILE_MIN` is moved, when its fill completes, into an anonymous
//! memory file (`memfd`: RAM, like the heap) mapped read-only. Every reader still sees it as
//! `Bytes`; the express lane hands the file to the kernel instead. Pages in flight stay
//! referenced by the kernel, so an object evicted mid-send is safe (as nginx with a deleted
//! file).
//!
//! Each body file holds a file descriptor: at most a quarter of the process's limit are used
//! for them, and bodies beyond that stay on the heap.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

/// Bodies from this size are kept in a memory file. Below it the copy costs less than the
/// extra system call (the header is then written separately) and the file descriptor.
pub const FILE_MIN: usize = 64 << 10;

/// Body files open now, and the bytes they hold.
static OPEN: AtomicUsize = AtomicUsize::new(0);
static OPEN_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Bytes held in body files now: RAM that the process's RSS does not show (the pages are only
/// mapped in when a reader other than sendfile touches them).
pub fn bytes_in_files() -> usize {
    OPEN_BYTES.load(Ordering::Relaxed)
}

/// Body files open now (each holds a file descriptor).
pub fn files_open() -> usize {
    OPEN.load(Ordering::Relaxed)
}

/// How many body files may be open: a quarter of the descriptor limit, so client and origin
/// connections never run short (another quarter may go to the disk tier's open files).
fn budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| (crate::connections::descriptor_limit() / 4).min(1 << 20) as usize)
}

/// Tells the operator once per process that bodies fall back to the heap: they are still
/// served, only with a copy.
fn warn_once(msg: &str) {
    static TOLD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !TOLD.swap(true, Ordering::Relaxed) {
        log::warn!("{msg}");
    }
}

/// A body in a read-only mapped memory file.
pub struct BodyFile {
    file: File,
    ptr: *const u8,
    len: usize,
}

// SAFETY: the mapping is read-only and lives as long as the struct; nothing writes through it.
unsafe impl Send for BodyFile {}
unsafe impl Sync for BodyFile {}

impl Drop for BodyFile {
    fn drop(&mut self) {
        // SAFETY: ptr/len are the mapping made in `store`, unmapped once, here.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
        OPEN.fetch_sub(1, Ordering::Relaxed);
        OPEN_BYTES.fetch_sub(self.len, Ordering::Relaxed);
    }
}

struct Mapped(Arc<BodyFile>);

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: a live read-only mapping of `len` bytes.
        unsafe { std::slice::from_raw_parts(self.0.ptr, self.0.len) }
    }
}

impl BodyFile {
    /// Moves a body into a memory file; None (the body stays where it is) if it is small, the
    /// budget is spent or the system refuses.
    pub fn store(chunks: &[Bytes], len: usize) -> Option<(Arc<BodyFile>, Bytes)> {
        if len < FILE_MIN {
            return None;
        }
        if OPEN.fetch_add(1, Ordering::Relaxed) >= budget() {
            OPEN.fetch_sub(1, Ordering::Relaxed);
            warn_once(&format!(
                "cache: {} body files open, a quarter of the descriptor limit: larger bodies now \
                 stay on the heap and are copied to clients (raise the limit, e.g. LimitNOFILE)",
                budget()
            ));
            return None;
        }
        let made = Self::make(chunks, len);
        if made.is_none() {
            OPEN.fetch_sub(1, Ordering::Relaxed);
            warn_once(&format!(
                "cache: could not keep a body in a memory file ({}): such bodies stay on the heap",
                std::io::Error::last_os_error()
            ));
        }
        made
    }

    fn make(chunks: &[Bytes], len: usize) -> Option<(Arc<BodyFile>, Bytes)> {
        // SAFETY: plain system call; the descriptor is owned by `file` from here.
        let fd = unsafe { libc::memfd_create(c"edge-body".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let mut file = unsafe { File::from_raw_fd(fd) };
        for c in chunks {
            file.write_all(c).ok()?;
        }
        // SAFETY: maps `len` bytes of the file just written, read-only.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        OPEN_BYTES.fetch_add(len, Ordering::Relaxed);
        let body = Arc::new(BodyFile {
            file,
            ptr: ptr as *const u8,
            len,
        });
        let bytes = Bytes::from_owner(Mapped(body.clone()));
        Some((body, bytes))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sends bytes `from..` of the body to a socket with `sendfile`, until done or the socket
    /// would block; returns where it stopped (the caller writes the rest the usual way).
    pub fn send_to(&self, socket: RawFd, from: usize) -> std::io::Result<usize> {
        send_file(socket, &self.file, from as u64, self.len as u64).map(|at| at as usize)
    }
}

/// Sends bytes `from..to` of `file` to a socket with `sendfile`, until done or the socket would
/// block; returns the offset where it stopped (the caller writes the rest the usual way).
pub fn send_file(socket: RawFd, file: &File, from: u64, to: u64) -> std::io::Result<u64> {
    let mut offset = from as libc::off_t;
    while (offset as u64) < to {
        let left = (to - offset as u64) as usize;
        // SAFETY: both descriptors are open; the kernel advances `offset`.
        let n = unsafe { libc::sendfile(socket, file.as_raw_fd(), &mut offset, left) };
        if n > 0 {
            continue;
        }
        if n == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::Interrupted => continue,
            std::io::ErrorKind::WouldBlock => break,
            _ => return Err(e),
        }
    }
    Ok(offset as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_body_reads_back_and_small_ones_stay_on_the_heap() {
        let chunks = vec![
            Bytes::from(vec![7u8; 40_000]),
            Bytes::from(vec![9u8; 40_000]),
        ];
        let (file, bytes) = BodyFile::store(&chunks, 80_000).expect("a memory file");
        assert_eq!(file.len(), 80_000);
        assert_eq!(&bytes[..40_000], &chunks[0][..]);
        assert_eq!(&bytes[40_000..], &chunks[1][..]);
        let open = OPEN.load(Ordering::Relaxed);
        assert!(open >= 1);
        drop(file);
        // Still readable while a reader holds the bytes.
        assert_eq!(bytes[79_999], 9);
        drop(bytes);
        assert!(BodyFile::store(&[Bytes::from_static(b"small")], 5).is_none());
    }

    #[test]
    fn sendfile_writes_the_body_to_a_socket() {
        use std::io::Read;
        use std::os::unix::net::UnixStream;
        // sendfile needs a socket-like target; a Unix stream pair stands in for TCP here.
        let body: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let (file, _) = BodyFile::store(&[Bytes::from(body.clone())], body.len()).unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            b.read_to_end(&mut got).unwrap();
            got
        });
        let mut at = 10;
        while at < body.len() {
            at = file.send_to(a.as_raw_fd(), at).unwrap();
        }
        drop(a);
        assert_eq!(reader.join().unwrap(), body[10..]);
    }
}
