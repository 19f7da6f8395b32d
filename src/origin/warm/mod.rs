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
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
            // Read through TLS: a session ticket the server sent after the handshake is
            // consumed there and is no sign of a close; a close_notify or a FIN ends the read.
            ReadyConn::Tls(s) => {
                let mut b = [0u8; 1];
                let mut buf = ReadBuf::new(&mut b);
                let mut cx = Context::from_waker(Waker::noop());
                matches!(Pin::new(s).poll_read(&mut cx, &mut buf), Poll::Pending)
            }
        }
    }
}

/// One server's warm connections; survives reloads with the server (see `ServerState`).
#[derive(Default)]
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

    /// Takes the oldest ready connection still within the idle limit and still open, if any;
    /// ones past the limit or closed by the origin are dropped on the way. Oldest first: it is
    /// the next to be closed unused, and its replacement may already be open.
    fn take(&self) -> Option<Ready> {
        let limit = Duration::from_millis(self.limit_ms.load(Ordering::Relaxed));
        let mut ready = self.lock();
        while let Some(mut r) = ready.pop_front() {
            if r.opened.elapsed() < limit && r.still_open() {
                return Some(r);
            }
        }
        None
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
        replace_at: limit.saturating_sub(tick + 2 * connect),
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
        let limit = origin.idle_limit(server, sched);
        pool.limit_ms
            .store(limit.as_millis() as u64, Ordering::Relaxed);
        let connect = Duration::from_micros(pool.connect_us.load(Ordering::Relaxed));
        let s = schedule(limit, connect, tick);
        let fresh = {
            let mut ready = pool.lock();
            ready.retain_mut(|r| r.opened.elapsed() < s.close_at && r.still_open());
            ready
                .iter()
                .filter(|r| r.opened.elapsed() < s.replace_at)
                .count()
        };
        server.metrics.warm_ready.set(pool.ready() as i64);
        let opening = pool.opening.load(Ordering::Relaxed);
        let tls = match (&server.warm_tls, transport) {
            (Some(peer), Some(t)) => Some((peer, t)),
            (Some(_), None) => continue,
            (None, _) => None,
        };
        for _ in (fresh + opening)..ka.warm {
            open_one(
                origin.clone(),
                server.clone(),
                tls.map(|(p, t)| (p.clone(), t.clone())),
            );
        }
    }
}

/// Opens one warm connection in the background and adds it to the server's ready ones: TCP
/// only, or TCP and TLS with `tls` (the peer to connect as, and the connector).
fn open_one(
    origin: Arc<Origin>,
    server: Arc<Server>,
    tls: Option<(pingora::upstreams::peer::HttpPeer, Arc<TransportConnector>)>,
) {
    server.state.warm.opening.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        let pool = &server.state.warm;
        let started = Instant::now();
        let result = match tls {
            Some((peer, transport)) => transport.new_stream(&peer).await.map(ReadyConn::Tls),
            None => connect(&server.addr, origin.config.timeouts.connect.get())
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
                // Counts toward passive health like a request's connect failure: a dead server
                // is taken out, and warm refreshing stops while it is.
                origin.connect_failed(&server, &e);
                return;
            }
        };
        server.health().connect_succeeded();
        pool.connect_us
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        origin.metrics.opened_warm.inc();
        if matches!(conn, ReadyConn::Tls(_)) {
            origin
                .metrics
                .tls_handshake
                .observe(started.elapsed().as_secs_f64());
        }
        pool.lock().push_back(Ready {
            conn,
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
        // A limit shorter than the lead: replaced at every tick, still closed at the limit.
        assert_eq!(schedule(ms(50), ms(20), ms(100)).replace_at, Duration::ZERO);
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
                opened: Instant::now(),
                opened_at: SystemTime::now(),
            });
            listener.accept().unwrap().0
        };
        let peer = add(&pool);
        assert!(
            pool.take().is_some(),
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
            pool.take().is_none(),
            "a connection the origin closed is dropped"
        );
        assert_eq!(pool.ready(), 0);
        let _peer = add(&pool);
        pool.limit_ms.store(0, Ordering::Relaxed);
        assert!(pool.take().is_none(), "past the idle limit it is dropped");
    }
}
