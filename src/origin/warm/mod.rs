//! Warm connections (`origins.NAME.keepalive.warm: N`): connections to a server opened ahead of
//! need, so that a request finding no pooled connection does not wait for a handshake.
//!
//! Pingora opens upstream connections itself, when a request finds its pool empty, and offers
//! no way to put a connection in its pool. It does let the edge bring the connection it opens:
//! - cleartext origins (and HTTPS origins with `http2: true`): the peer's own layer-4 connector
//!   (`PeerOptions::custom_l4`, [`tcp::WarmTcp`]) hands a ready TCP connection; for an h2 origin
//!   the TLS handshake then still happens at first use;
//! - HTTPS origins over HTTP/1.1: the proxy's custom upstream connector ([`tls::WarmTls`],
//!   asked for every new connection of a peer marked with [`WARM_ALPN`]) hands a connection
//!   with TCP and TLS both done, opened by the same kind of Pingora connector, with the same
//!   trust and session resumption.
//!
//! After its first response the connection goes to Pingora's pool like any other.
//!
//! The background loop ([`keep_warm`], every health-checker tick) keeps `N` ready per server:
//! a ready connection is replaced shortly before it would idle past the server's effective idle
//! limit (the one pooled connections obey, learned timeout minus margin), and closed at that
//! limit, so it never races the origin's idle close any more than a pooled one does. Refreshing
//! stops while the server is down and after `warm_idle` without a request to it.
//!
//! Pingora sees a warm connection as new: `edge_upstream_requests_total{connection="new"}`
//! counts it, `edge_upstream_handshake_waits_total` does not (a request waited for a handshake
//! only if its connection, or its TLS, was set up after it arrived).

pub mod tcp;
pub mod tls;

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use pingora::connectors::TransportConnector;
use pingora::prelude::*;
use pingora::protocols::Stream;
use pingora::ErrorType;
use tokio::io::{AsyncRead, ReadBuf};

use super::{Origin, Server};
use crate::clock::now_ms;

pub use tls::WARM_ALPN;

/// A connection opened ahead of need, waiting for a request.
enum ReadyConn {
    /// Held as a std socket (non-blocking): tokio registers it with the runtime of the request
    /// that takes it, not with the background loop's that opened it.
    Tcp(std::net::TcpStream),
    /// TCP and TLS done, by Pingora's connector.
    Tls(Stream),
}

struct Ready {
    conn: ReadyConn,
    /// For a TLS connection, the reuse hash of the peer it was opened as (address, SNI,
    /// verification, connection group): it goes only to a request whose peer has the same.
    key: Option<u64>,
    opened: Instant,
    /// Reported to Pingora as a TCP connection's establishment time, so the request sees that
    /// its connection was set up before it arrived (a TLS stream carries its own).
    opened_at: SystemTime,
}

impl Ready {
    /// Whether the origin has not closed (or written on) it while it waited: nothing to read.
    fn still_open(&mut self) -> bool {
        match &mut self.conn {
            ReadyConn::Tcp(s) => {
                let mut b = [0u8; 1];
                matches!(s.peek(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
            ReadyConn::Tls(s) => {
                // The socket first: nothing to read is open, a FIN (or an error) is closed.
                let mut b = [0u8; 1];
                // SAFETY: a one-byte buffer we own, and the stream's own open descriptor; with
                // MSG_PEEK nothing is taken from the socket.
                let peeked = unsafe {
                    libc::recv(
                        s.id(),
                        b.as_mut_ptr().cast(),
                        1,
                        libc::MSG_PEEK | libc::MSG_DONTWAIT,
                    )
                };
                if peeked <= 0 {
                    return peeked < 0
                        && std::io::Error::last_os_error().kind()
                            == std::io::ErrorKind::WouldBlock;
                }
                // Bytes waiting: read them through TLS. A session ticket the server sent after
                // the handshake is consumed there and is no sign of a close; a close_notify or
                // data ends the read. Unconstrained, so tokio's cooperative budget cannot make
                // the read look pending.
                let mut buf = ReadBuf::new(&mut b);
                let mut read =
                    std::pin::pin!(tokio::task::unconstrained(std::future::poll_fn(|cx| {
                        match Pin::new(&mut *s).poll_read(cx, &mut buf) {
                            Poll::Pending => Poll::Ready(true),
                            Poll::Ready(_) => Poll::Ready(false),
                        }
                    })));
                let mut cx = Context::from_waker(Waker::noop());
                matches!(read.as_mut().poll(&mut cx), Poll::Ready(true))
            }
        }
    }
}

/// One server's warm connections; survives reloads with the server (see `ServerState`).
pub struct WarmPool {
    ready: Mutex<VecDeque<Ready>>,
    /// Connects started by the loop and not finished, so a slow connect is not doubled.
    opening: AtomicUsize,
    /// The effective idle limit in force, in ms, as the loop last computed it (0: not yet):
    /// a ready connection older than this is not handed out.
    limit_ms: AtomicU64,
    /// When a request last went to this server (ms since start; 0: never). Warm connections
    /// start with the edge and stop after `warm_idle` without one.
    last_request_ms: AtomicU64,
    /// The last connect time the loop measured, in µs: how far ahead a replacement is opened.
    connect_us: AtomicU64,
    /// The youngest age at which the origin closed a ready connection that never carried a
    /// request, in ms (`NONE`: never seen), and when (ms since start). Servers often give a
    /// new connection less time for its first request than a used one between requests
    /// (nginx's `client_header_timeout`, Go's `ReadHeaderTimeout`); ready connections then
    /// close sooner than the learned idle limit, and are closed before that age instead.
    fresh_closed_ms: AtomicU64,
    fresh_closed_at_ms: AtomicU64,
    /// No warm connect before this (ms since start): after failures, the loop backs off
    /// (100 ms doubling to 30 s) instead of marking the server down for no client's sake.
    backoff_until_ms: AtomicU64,
    failures: AtomicU32,
}

const NONE: u64 = u64::MAX;

/// How long an early close of a ready connection caps their lifetime.
const FRESH_CLOSED_MEMORY: Duration = Duration::from_secs(600);

impl Default for WarmPool {
    fn default() -> Self {
        WarmPool {
            ready: Mutex::default(),
            opening: AtomicUsize::new(0),
            limit_ms: AtomicU64::new(0),
            last_request_ms: AtomicU64::new(0),
            connect_us: AtomicU64::new(0),
            fresh_closed_ms: AtomicU64::new(NONE),
            fresh_closed_at_ms: AtomicU64::new(0),
            backoff_until_ms: AtomicU64::new(0),
            failures: AtomicU32::new(0),
        }
    }
}

impl WarmPool {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Ready>> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request went to this server (called on every request of an origin with `warm`).
    pub fn touch(&self) {
        self.last_request_ms
            .store(now_ms().max(1), Ordering::Relaxed);
    }

    /// Connections ready now.
    pub fn ready(&self) -> usize {
        self.lock().len()
    }

    /// Takes the oldest ready connection for `key` (a TLS peer's reuse hash; None for TCP)
    /// still within the idle limit and still open, if any; ones past the limit or closed by the
    /// origin are dropped on the way. Oldest first: it is the next to be closed unused, and its
    /// replacement may already be open.
    fn take(&self, key: Option<u64>) -> Option<Ready> {
        let limit = Duration::from_millis(self.limit_ms.load(Ordering::Relaxed));
        let mut ready = self.lock();
        let mut i = 0;
        while i < ready.len() {
            if ready[i].key != key {
                i += 1;
                continue;
            }
            let mut r = ready.remove(i).expect("in range");
            if r.opened.elapsed() < limit && r.still_open() {
                return Some(r);
            }
        }
        None
    }

    /// A ready connection that never carried a request was found closed at `age`.
    fn closed_fresh(&self, age: Duration) {
        let age = age.as_millis() as u64;
        let recent = now_ms().saturating_sub(self.fresh_closed_at_ms.load(Ordering::Relaxed))
            < FRESH_CLOSED_MEMORY.as_millis() as u64;
        let prev = self.fresh_closed_ms.load(Ordering::Relaxed);
        let keep = if recent { prev.min(age) } else { age };
        self.fresh_closed_ms.store(keep, Ordering::Relaxed);
        self.fresh_closed_at_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// How long a ready connection may wait: the idle limit, or less when the origin was seen
    /// closing ready connections sooner (a tenth and a tick before that).
    fn close_at(&self, limit: Duration, tick: Duration) -> Duration {
        let fresh = self.fresh_closed_ms.load(Ordering::Relaxed);
        let recent = now_ms().saturating_sub(self.fresh_closed_at_ms.load(Ordering::Relaxed))
            < FRESH_CLOSED_MEMORY.as_millis() as u64;
        if fresh == NONE || !recent {
            return limit;
        }
        let fresh = Duration::from_millis(fresh);
        limit.min(fresh.saturating_sub(fresh / 10 + tick))
    }

    /// Closes every ready connection (warm off, server down, or no requests for `warm_idle`).
    fn clear(&self) {
        self.lock().clear();
    }
}

/// A TCP connect bounded by `timeout`, with Pingora's own error types (refused, timed out).
async fn connect(addr: &SocketAddr, timeout: Duration) -> Result<tokio::net::TcpStream> {
    match tokio::time::timeout(timeout, pingora::protocols::l4::ext::connect(addr, None)).await {
        Ok(r) => r,
        Err(_) => Error::e_explain(
            ErrorType::ConnectTimedout,
            format!("timeout {timeout:?} connecting to server {addr}"),
        ),
    }
}

/// How long a server's ready connections are kept, and when a replacement is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Schedule {
    /// Closed at this age: the effective idle limit.
    close_at: Duration,
    /// Replaced from this age: early enough that the replacement is connected (twice the last
    /// connect time) before the loop's next tick after the old one closes.
    replace_at: Duration,
}

fn schedule(limit: Duration, connect: Duration, tick: Duration) -> Schedule {
    Schedule {
        close_at: limit,
        // Never before half the lifetime: a limit shorter than the lead would otherwise open
        // N connections at every tick.
        replace_at: limit.saturating_sub(tick + 2 * connect).max(limit / 2),
    }
}

/// One tick of the warm loop for every server of `origin`: drops what aged out, opens what is
/// missing, or closes all when warm connections are not wanted now. `tick` is the loop's
/// period; `sched` how late this process's timers fire (part of the idle limit's margin);
/// `transport` the connector HTTPS servers' warm connections are opened with (None until the
/// proxy service exists).
pub fn keep_warm(
    origin: &Arc<Origin>,
    tick: Duration,
    sched: Duration,
    transport: Option<&Arc<TransportConnector>>,
) {
    let ka = &origin.config.keepalive;
    for server in &origin.servers {
        let pool = &server.state.warm;
        let last = pool.last_request_ms.load(Ordering::Relaxed);
        let quiet =
            last != 0 && now_ms().saturating_sub(last) > ka.warm_idle.get().as_millis() as u64;
        if ka.warm == 0 || origin.pooling_off() || quiet || !server.health().is_up() {
            pool.clear();
            pool.limit_ms.store(0, Ordering::Relaxed);
            server.metrics.warm_ready.set(0);
            continue;
        }
        if last == 0 {
            // Warm from the start: the first request does not wait either.
            pool.touch();
        }
        let limit = pool.close_at(origin.idle_limit(server, sched), tick);
        pool.limit_ms
            .store(limit.as_millis() as u64, Ordering::Relaxed);
        let connect = Duration::from_micros(pool.connect_us.load(Ordering::Relaxed));
        let s = schedule(limit, connect, tick);
        // Ready connections of this server's current kind only: a reload may have changed
        // its TLS settings (another key) or turned TLS on or off.
        let key = server.warm_tls.as_ref().map(|w| w.key);
        let fresh = {
            let mut ready = pool.lock();
            ready.retain_mut(|r| {
                let age = r.opened.elapsed();
                if r.key != key || age >= s.close_at {
                    return false;
                }
                let open = r.still_open();
                if !open {
                    pool.closed_fresh(age);
                }
                open
            });
            ready
                .iter()
                .filter(|r| r.opened.elapsed() < s.replace_at)
                .count()
        };
        server.metrics.warm_ready.set(pool.ready() as i64);
        if now_ms() < pool.backoff_until_ms.load(Ordering::Relaxed) {
            continue;
        }
        if server.warm_tls.is_some() && transport.is_none() {
            continue; // the proxy service, which makes the connector, is not built yet
        }
        let opening = pool.opening.load(Ordering::Relaxed);
        for _ in (fresh + opening)..ka.warm {
            open_one(origin.clone(), server.clone(), transport.cloned());
        }
    }
}

/// Opens one warm connection in the background and adds it to the server's ready ones: TCP
/// and TLS (with `transport`) for a server with `warm_tls`, else TCP only.
fn open_one(origin: Arc<Origin>, server: Arc<Server>, transport: Option<Arc<TransportConnector>>) {
    server.state.warm.opening.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        let pool = &server.state.warm;
        let started = Instant::now();
        let key = server.warm_tls.as_ref().map(|w| w.key);
        let result = match (&server.warm_tls, transport) {
            (Some(w), Some(t)) => t.new_stream(&w.peer).await.map(ReadyConn::Tls),
            _ => connect(&server.addr, origin.config.timeouts.connect.get())
                .await
                .and_then(|s| {
                    s.into_std()
                        .or_err(ErrorType::ConnectError, "detaching a warm connection")
                })
                .map(|s| {
                    let _ = s.set_nodelay(true);
                    ReadyConn::Tcp(s)
                }),
        };
        pool.opening.fetch_sub(1, Ordering::Relaxed);
        let conn = match result {
            Ok(c) => c,
            Err(e) => {
                // Counted, and backed off; not a mark on the server's health, which no client
                // has seen fail (health checks and requests decide that).
                server.metrics.connect_failures.inc();
                let n = pool.failures.fetch_add(1, Ordering::Relaxed).min(9);
                let wait = (100u64 << n).min(30_000);
                pool.backoff_until_ms
                    .store(now_ms() + wait, Ordering::Relaxed);
                log::debug!(
                    "origin {} server {}: warm connection failed, next try in {wait} ms: {e}",
                    origin.name,
                    server.address
                );
                return;
            }
        };
        pool.failures.store(0, Ordering::Relaxed);
        pool.connect_us
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        origin.metrics.opened_warm.inc();
        if let ReadyConn::Tls(stream) = &conn {
            // The TLS layer's own time, after the TCP connect.
            let layers = stream.get_timing_digest();
            if let Some(Some(t)) = layers.last().filter(|_| layers.len() > 1) {
                if let Some(d) = t.establishment_duration {
                    let resumed = stream.get_ssl_digest().and_then(|s| s.resumed);
                    origin.metrics.tls_handshake_done(d, resumed);
                }
            }
        }
        pool.lock().push_back(Ready {
            conn,
            key,
            opened: Instant::now(),
            opened_at: SystemTime::now(),
        });
        server.metrics.warm_ready.set(pool.ready() as i64);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacements_are_opened_a_connect_and_a_tick_ahead() {
        let ms = Duration::from_millis;
        let s = schedule(ms(900), ms(20), ms(100));
        assert_eq!(s.close_at, ms(900));
        assert_eq!(s.replace_at, ms(760));
        // A limit shorter than the lead: replaced at half its lifetime, closed at the limit.
        assert_eq!(schedule(ms(50), ms(20), ms(100)).replace_at, ms(25));
    }

    #[test]
    fn ready_connections_closed_early_by_the_origin_shorten_their_lifetime() {
        let ms = Duration::from_millis;
        let pool = WarmPool::default();
        assert_eq!(pool.close_at(ms(5000), ms(100)), ms(5000));
        // The origin gives a new connection 2 s for its first request.
        pool.closed_fresh(ms(2000));
        assert_eq!(pool.close_at(ms(5000), ms(100)), ms(1700));
        assert_eq!(
            pool.close_at(ms(1000), ms(100)),
            ms(1000),
            "never beyond the limit"
        );
    }

    #[test]
    fn a_closed_or_aged_connection_is_not_handed_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = WarmPool::default();
        pool.limit_ms.store(60_000, Ordering::Relaxed);
        let add = |pool: &WarmPool| {
            let s = std::net::TcpStream::connect(addr).unwrap();
            s.set_nonblocking(true).unwrap();
            pool.lock().push_back(Ready {
                conn: ReadyConn::Tcp(s),
                key: None,
                opened: Instant::now(),
                opened_at: SystemTime::now(),
            });
            listener.accept().unwrap().0
        };
        let peer = add(&pool);
        assert!(
            pool.take(None).is_some(),
            "an open, young connection is handed out"
        );
        drop(peer);
        let peer = add(&pool);
        drop(peer); // the origin closes it while it waits
        let closed_seen = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(5));
            !pool.lock()[0].still_open()
        });
        assert!(closed_seen);
        assert!(
            pool.take(None).is_none(),
            "a connection the origin closed is dropped"
        );
        assert_eq!(pool.ready(), 0);
        let _peer = add(&pool);
        assert!(
            pool.take(Some(7)).is_none(),
            "a TCP connection is no TLS peer's"
        );
        pool.limit_ms.store(0, Ordering::Relaxed);
        assert!(
            pool.take(None).is_none(),
            "past the idle limit it is dropped"
        );
    }
}
