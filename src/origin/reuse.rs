//! What Pingora's pool does not give: a per-origin cap on requests per upstream connection
//! (nginx's upstream `keepalive_requests`) and on connections kept per server (`keepalive N`).
//!
//! Pingora's pool is one LRU for all peers and reports only whether a connection was reused.
//! The ledger below counts requests per live connection, keyed by its file descriptor and the
//! time it was established (fd numbers are recycled; the pair is not). When a connection reaches
//! its limit, or the server already has more requests in flight than `pool_size`, the request is
//! sent with `Connection: close`: the origin closes after answering and Pingora does not pool it.
//! Nothing is torn down mid-request and the origin is told, so no request races a close.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

/// Why a connection is not kept after this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    MaxRequests,
    PoolFull,
    PoolingOff,
}

#[derive(Default)]
pub struct ConnectionLedger {
    // One entry per upstream fd ever used; bounded by the process's fd limit.
    conns: Mutex<HashMap<i32, (SystemTime, u32)>>,
}

impl ConnectionLedger {
    /// Records a request on a connection and returns its position on it (1 = first).
    pub fn record(&self, fd: i32, established: SystemTime) -> u32 {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let e = conns.entry(fd).or_insert((established, 0));
        if e.0 != established {
            *e = (established, 0);
        }
        e.1 += 1;
        e.1
    }
}

/// The keep-or-close decision for one upstream request.
pub fn close_reason(
    pooling_off: bool,
    request_no: u32,
    max_requests: u32,
    concurrency: usize,
    pool_size: usize,
) -> Option<CloseReason> {
    if pooling_off {
        Some(CloseReason::PoolingOff)
    } else if request_no >= max_requests {
        Some(CloseReason::MaxRequests)
    } else if concurrency > pool_size {
        Some(CloseReason::PoolFull)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counts_per_connection_and_resets_on_fd_reuse() {
        let l = ConnectionLedger::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1);
        let t1 = t0 + Duration::from_millis(5);
        assert_eq!(l.record(7, t0), 1);
        assert_eq!(l.record(7, t0), 2);
        assert_eq!(l.record(8, t0), 1);
        // fd 7 closed and reopened for a new connection
        assert_eq!(l.record(7, t1), 1);
    }

    #[test]
    fn decision() {
        assert_eq!(close_reason(false, 1, 100, 1, 4), None);
        assert_eq!(
            close_reason(false, 100, 100, 1, 4),
            Some(CloseReason::MaxRequests)
        );
        assert_eq!(
            close_reason(false, 1, 100, 5, 4),
            Some(CloseReason::PoolFull)
        );
        assert_eq!(
            close_reason(true, 1, 100, 1, 4),
            Some(CloseReason::PoolingOff)
        );
    }
}
