//! Validation of the cache's settings: `cache:` (sizes, the targeted field) and its disk tier
//! (`cache.disk`). Part of `validate`, which calls these with its `Checker`.

use std::path::Path;

use super::schema::{CacheSettings, DiskSettings};
use super::validate::{key, Checker};

/// Whether this process may create files in `dir` (access(2), as the kernel would judge it).
pub(super) fn writable(dir: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// `cache`: sizes within the store's and the eviction policy's bounds, a valid header name.
pub(super) fn check_cache(ck: &mut Checker, c: &CacheSettings) {
    if c.max_size.0 < 1 << 20 {
        ck.error(
            &[key("cache"), key("max_size")],
            format!("expected at least 1MiB, got {} bytes", c.max_size.0),
        );
    }
    let at = |field: &str| [key("cache"), key(field)];
    match &c.disk {
        None if c.max_object_size.0 == 0 || c.max_object_size.0 > c.max_size.0 => ck.error(
            &at("max_object_size"),
            "must be more than 0 and at most max_size",
        ),
        // The eviction policy weighs objects in KiB with 16 bits: larger ones would be
        // under-counted, and max_size would no longer bound memory.
        None if c.max_object_size.0 > 64 << 20 => ck.error(
            &at("max_object_size"),
            format!(
                "at most 64MiB without a disk tier (cache.disk), got {} bytes",
                c.max_object_size.0
            ),
        ),
        None => {}
        Some(d) => check_disk(ck, c, d),
    }
    if http::HeaderName::from_bytes(c.targeted_field.as_bytes()).is_err() {
        ck.error(
            &[key("cache"), key("targeted_field")],
            format!("\"{}\" is not a header name", c.targeted_field),
        );
    }
}

/// `cache.disk`: an absolute directory that can be made and written, a size that holds the
/// largest object.
fn check_disk(ck: &mut Checker, c: &CacheSettings, d: &DiskSettings) {
    let at = |field: &str| [key("cache"), key("disk"), key(field)];
    if d.max_size.0 < 16 << 20 {
        ck.error(
            &at("max_size"),
            format!("expected at least 16MiB, got {} bytes", d.max_size.0),
        );
    }
    if c.max_object_size.0 == 0 || c.max_object_size.0 > d.max_size.0 {
        ck.error(
            &[key("cache"), key("max_object_size")],
            "must be more than 0 and at most cache.disk.max_size",
        );
    }
    let descriptors = crate::connections::descriptor_limit();
    // The warning, not an error: the limit at check time may not be the service's.
    if let Some(n) = d.open_files.filter(|&n| n as u64 > descriptors / 2) {
        ck.warn(
            &at("open_files"),
            format!(
                "{n} files kept open is more than half the process's descriptor limit \
                 ({descriptors}): client and origin connections may run short (raise \
                 LimitNOFILE, or keep fewer open)"
            ),
        );
    }
    // Only the express lane sends hits from files kept open (`Store::fresh_disk_hit`).
    if !c.express_lane && d.open_files.is_some_and(|n| n > 0) {
        ck.warn(
            &at("open_files"),
            "has no effect with cache.express_lane: false (only the express lane's hits are \
             sent from files kept open)",
        );
    }
    if !d.path.is_absolute() {
        ck.error(&at("path"), "must be an absolute path");
        return;
    }
    // The nearest directory that exists must let the edge create the rest and write there.
    let existing = d.path.ancestors().find(|p| p.exists());
    match existing {
        Some(p) if p.is_dir() && writable(p) => {}
        Some(p) => ck.error(
            &at("path"),
            format!("{} is not a directory the edge can write in", p.display()),
        ),
        None => ck.error(&at("path"), "no part of it exists"),
    }
    // Not an error (the file system may grow), but a tier that cannot reach its size fills the
    // disk first: the operator is told.
    if let Some(total) = existing.and_then(file_system_size) {
        if d.max_size.0 > total {
            eprintln!(
                "edge: warning: {}: cache.disk.max_size ({} bytes) is more than the whole file \
                 system holding {} ({total} bytes): the disk fills before the tier does",
                ck.file,
                d.max_size.0,
                d.path.display()
            );
        }
    }
}

/// The size of the file system holding `path` (statvfs), if it can be read.
fn file_system_size(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: a valid NUL-terminated path; statvfs writes into the struct we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0)
        .then(|| st.f_blocks as u64 * st.f_frsize as u64)
}
