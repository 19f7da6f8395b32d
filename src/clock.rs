//! The process's monotonic clock in milliseconds, for state kept in atomics (server health,
//! learned idle timeouts), where an `Instant` cannot be stored. One epoch for the whole process,
//! so values written by one module can be compared by another.

use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds since the clock was first read in this process.
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}
