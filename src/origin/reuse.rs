//! What Pingora's pool does not give: a per-origin cap on requests per upstream connection
//! (nginx's upstream `keepalive_requests`), on connections kept per server (`keepalive N`), the
//! origin's own `Keep-Alive: max=`, and the idle age of a pooled connection when it is reused.
//!
//! Pingora's pool is one LRU for all peers and reports only whether a connection was reused.
//! The ledger below tracks each live connection, keyed by its file descriptor and the time it
//! was established (fd numbers are recycled; the pair is not). When a connection reaches a
//! limit, or the server already has more requests in flight than `pool_size`, the request is
//! sent with `Connection: close`: the origin closes after answering and Pingora does not pool it.
//! Nothing is torn down mid-request and the origin is told, so no request races a close.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Why a connection is not kept after this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    MaxRequests,
    PoolFull,
    PoolingOff,
    /// The origin's `Keep-Alive: max=` allows no more.
    OriginMax,
}

struct Conn {
    established: SystemTime,
    requests: u32,
    /// When its last response ended (it went back to the pool then).
    idle_since: Option<Instant>,
    /// The last request number the origin allows on it (`Keep-Alive: max=`).
    origin_last: Option<u32>,
}

/// One request's view of its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnUse {
    /// Position of this request on the connection (1 = first).
    pub request_no: u32,
    /// How long the connection had been idle in the pool (None: new or unknown).
    pub idle_age: Option<Duration>,
    /// The last request number the origin allows on it, if it said.
    pub origin_last: Option<u32>,
}

/// The upstream connection a request is on: which one (fd and the time it was established:
/// fds are recycled, the pair is not) and what the ledger knew of it when the request took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamConn {
    pub fd: i32,
    pub established: SystemTime,
    pub usage: ConnUse,
}

#[derive(Default)]
pub struct ConnectionLedger {
    // One entry per upstream fd ever used; bounded by the process's fd limit.
    conns: Mutex<HashMap<i32, Conn>>,
}

impl ConnectionLedger {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<i32, Conn>) -> R) -> R {
        f(&mut self.conns.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Records a request on a connection.
    pub fn take(&self, fd: i32, established: SystemTime) -> UpstreamConn {
        UpstreamConn {
            fd,
            established,
            usage: self.record(fd, established),
        }
    }

    /// Records a request on a connection; returns the request's view of it.
    pub fn record(&self, fd: i32, established: SystemTime) -> ConnUse {
        self.with(|conns| {
            let c = conns.entry(fd).or_insert(Conn {
                established,
                requests: 0,
                idle_since: None,
                origin_last: None,
            });
            if c.established != established {
                *c = Conn {
                    established,
                    requests: 0,
                    idle_since: None,
                    origin_last: None,
                };
            }
            c.requests += 1;
            ConnUse {
                request_no: c.requests,
                idle_age: c.idle_since.take().map(|t| t.elapsed()),
                origin_last: c.origin_last,
            }
        })
    }

    /// The origin allows `max` more requests after request `request_no` on this connection.
    pub fn origin_max(&self, fd: i32, established: SystemTime, request_no: u32, max: u32) {
        self.with(|conns| {
            if let Some(c) = conns.get_mut(&fd).filter(|c| c.established == established) {
                c.origin_last = Some(request_no.saturating_add(max));
            }
        })
    }

    /// The connection's response ended: it is idle from now.
    pub fn idle(&self, fd: i32, established: SystemTime) {
        self.with(|conns| {
            if let Some(c) = conns.get_mut(&fd).filter(|c| c.established == established) {
                c.idle_since = Some(Instant::now());
            }
        })
    }
}

/// How long the kernel has seen no data arrive on connection `fd` (`TCP_INFO`'s
/// `tcpi_last_data_recv`, at the kernel tick's granularity): the idle age counted from when the
/// origin's last byte arrived. The ledger counts from when the edge handled the response's end,
/// which a starved process does late, undercounting the origin's idle time by as much; the
/// larger of the two is the one to trust.
pub fn kernel_idle(fd: i32) -> Option<Duration> {
    pingora::protocols::l4::ext::get_tcp_info(fd)
        .ok()
        .map(|i| Duration::from_millis(i.tcpi_last_data_recv as u64))
}

/// A pooled connection's idle age: the edge's count, or the kernel's where that is longer by
/// more than the kernel clock's granularity (its tick, up to 10 ms; within it the kernel's
/// count runs ahead of the truth and would only cost connections). What it catches is a
/// starved process that handled a response's end long after it arrived.
pub fn idle_age(edge: Duration, kernel: Option<Duration>) -> Duration {
    match kernel {
        Some(k) if k > edge + KERNEL_TICK => k,
        _ => edge,
    }
}

/// The coarsest kernel tick (`CONFIG_HZ=100`).
const KERNEL_TICK: Duration = Duration::from_millis(10);

/// The keep-or-close decision for one upstream request.
pub fn close_reason(
    pooling_off: bool,
    conn: &ConnUse,
    max_requests: Option<u32>,
    concurrency: usize,
    pool_size: usize,
) -> Option<CloseReason> {
    if pooling_off {
        Some(CloseReason::PoolingOff)
    } else if max_requests.is_some_and(|max| conn.request_no >= max) {
        Some(CloseReason::MaxRequests)
    } else if conn.origin_last.is_some_and(|last| conn.request_no >= last) {
        Some(CloseReason::OriginMax)
    } else if concurrency > pool_size {
        Some(CloseReason::PoolFull)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_connection_and_resets_on_fd_reuse() {
        let l = ConnectionLedger::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1);
        let t1 = t0 + Duration::from_millis(5);
        assert_eq!(l.record(7, t0).request_no, 1);
        l.idle(7, t0);
        let u = l.record(7, t0);
        assert_eq!(u.request_no, 2);
        assert!(u.idle_age.is_some());
        assert_eq!(l.record(8, t0).request_no, 1);
        // fd 7 closed and reopened for a new connection
        assert_eq!(l.record(7, t1).request_no, 1);
    }

    #[test]
    fn decision() {
        let c = |request_no, origin_last| ConnUse {
            request_no,
            idle_age: None,
            origin_last,
        };
        assert_eq!(close_reason(false, &c(1, None), Some(100), 1, 4), None);
        assert_eq!(
            close_reason(false, &c(100, None), Some(100), 1, 4),
            Some(CloseReason::MaxRequests)
        );
        assert_eq!(
            close_reason(false, &c(1, None), Some(100), 5, 4),
            Some(CloseReason::PoolFull)
        );
        assert_eq!(
            close_reason(true, &c(1, None), Some(100), 1, 4),
            Some(CloseReason::PoolingOff)
        );
        assert_eq!(
            close_reason(false, &c(5, Some(5)), Some(100), 1, 4),
            Some(CloseReason::OriginMax)
        );
        assert_eq!(close_reason(false, &c(4, Some(5)), Some(100), 1, 4), None);
        // No limit of our own (the default): only the origin, the pool or idle time retire it.
        assert_eq!(close_reason(false, &c(1_000_000, None), None, 1, 4), None);
    }

    #[test]
    fn the_kernel_counts_idle_time_from_the_last_byte_received() {
        use std::io::Write;
        use std::os::unix::io::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut theirs, _) = listener.accept().unwrap();
        theirs.write_all(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
        let sent = Instant::now();
        // However late this process looks, the kernel counts from the byte's arrival.
        std::thread::sleep(Duration::from_millis(60));
        let idle = kernel_idle(ours.as_raw_fd()).unwrap();
        assert!(
            idle >= Duration::from_millis(50) && idle <= sent.elapsed() + Duration::from_millis(10),
            "{idle:?}"
        );
    }

    #[test]
    fn the_kernel_count_wins_only_beyond_its_tick() {
        let ms = Duration::from_millis;
        assert_eq!(idle_age(ms(100), Some(ms(108))), ms(100));
        assert_eq!(
            idle_age(ms(100), Some(ms(300))),
            ms(300),
            "a starved process"
        );
        assert_eq!(idle_age(ms(100), None), ms(100));
    }

    #[test]
    fn origin_max_counts_from_the_request_that_said_it() {
        let l = ConnectionLedger::default();
        let t0 = SystemTime::UNIX_EPOCH;
        l.record(3, t0);
        l.origin_max(3, t0, 1, 2);
        assert_eq!(l.record(3, t0).origin_last, Some(3));
    }
}
