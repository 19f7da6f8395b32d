//! The express lane: fresh cache hits answered on the client connection, before Pingora's
//! proxy session exists.
//!
//! Why: a bare Pingora HTTP/1 server writing a 1 KiB response from memory runs at ~1.5× nginx's
//! requests per CPU-second, while the same hit answered from the proxy's `request_filter` ran at
//! ~0.9× (bench/ab.sh, BENCHMARKS.md). The proxy session around a hit (its phases, modules,
//! cache state and context, a header map cloned per response) cost more than the hit itself.
//!
//! So this lane reads the request bytes itself. A plain HTTP/1.1 GET or HEAD, without a body,
//! conditions, ranges, credentials or client cache directives, on a route whose cache key is the
//! URL alone, for an object that is fresh, complete, does not vary and has a Content-Length, is
//! written straight to the socket from the stored header and body. Everything else, and anything
//! this narrow parser is unsure of, is handed to the proxy with the bytes already read, which
//! Pingora then parses as if it had read them itself: refusals, misses, revalidation, stale
//! serving, conditional and range requests keep their one implementation. The lane refuses only
//! what the proxy cannot see, through the guard: a head that does not arrive within
//! `client.header_timeout`, what Pingora's parser would rewrite (`Content-Length` with
//! `Transfer-Encoding`, a space or control byte in the request line), and a small body that is broken, too large or too slow, which it reads
//! ahead before handing the request over (see `body`); any other request the guard would
//! refuse is simply handed over.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncWriteExt;

use crate::cache::hit::HitHead;
use crate::cache::key::Scheme;
use crate::cache::status::Outcome;
use crate::client::{self, ClientConnection};
use crate::guard;
use crate::logging::AccessEntry;
use crate::origin::Origin;
use crate::proxy::{EdgeHttpProxy, Handoff};
use crate::served::{Protocol, Served};
use crate::state::{Edge, Live};

/// Most request fields the lane parses; a request with more is handed to the proxy.
const MAX_FIELDS: usize = 64;

mod body;
mod h2;
mod head;
mod plan;
mod send;
#[cfg(test)]
mod tests;

use body::Ahead;
use head::{Framing, Head};
use plan::{plan, Express};
use send::{send, Body, COPY_BODY_MAX};

/// Pingora's proxy service behind the express lane.
pub struct EdgeApp {
    proxy: Arc<EdgeHttpProxy>,
    edge: Arc<Edge>,
    /// A shutdown signal that never comes (its sender is gone): the first request of a new
    /// connection is read with it, so a stop does not drop it unanswered (see
    /// `process_new_http`).
    never_stops: ShutdownWatch,
}

impl EdgeApp {
    pub fn new(proxy: EdgeHttpProxy, edge: Arc<Edge>) -> Self {
        let (_gone, never_stops) = tokio::sync::watch::channel(false);
        EdgeApp {
            proxy: Arc::new(proxy),
            edge,
            never_stops,
        }
    }
}

impl EdgeApp {
    /// The shutdown signal this session's reads give up on; None: the lane does not take it
    /// (see `lane_takes`). A new connection's first request is read even while the edge stops
    /// (an upgrade's handover, SIGTERM): its client connected while the listener was open and
    /// is sending it now, and dropping it unanswered fails a request no client retries (seen
    /// once in tests/reload.rs's upgrade test, 1 in 12,730); it is answered with `Connection:
    /// close`, and the stop is bounded by `server.grace_period` anyway. An idle kept-alive
    /// connection is closed at the stop, as Pingora does: its client retries on a new one.
    fn stop_signal<'a>(
        &'a self,
        session: &mut ServerSession,
        shutdown: &'a ShutdownWatch,
    ) -> Option<&'a ShutdownWatch> {
        // Every request leaves the connection's context (its `ClientConnection`) to the next;
        // a new connection has none.
        let conn_ctx = session.take_connection_user_context();
        let fresh = conn_ctx.is_none();
        session.set_connection_user_context(conn_ctx);
        lane_takes(session, shutdown, fresh).then_some(if fresh {
            &self.never_stops
        } else {
            shutdown
        })
    }
}

#[async_trait]
impl HttpServerApp for EdgeApp {
    // The lane's whole decision for one request, in the order it happens (read, refuse, read a
    // body ahead, plan, answer or hand over); each step is a call.
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if session.is_http2() {
            // Boxed: its state (the h2 writes) would otherwise widen every HTTP/1 request's
            // future, allocated and moved per request (hit1k at 0.93-0.97 of the build before
            // the h2 lane unboxed, 1.03 boxed: bench/ab.sh).
            return Box::pin(self.h2_stream(session, shutdown)).await;
        }
        let Some(stop) = self.stop_signal(&mut session, shutdown) else {
            return self.proxy.process_new_http(session, shutdown).await;
        };
        let (mut stream, carried, wait) = into_lane(session);
        let mut buf = BytesMut::with_capacity(4096);
        if head::read_some(&mut stream, &mut buf, wait, stop).await != head::Read::Data {
            // Closed, idle too long, or shutting down: as the proxy would, close quietly.
            return None;
        }
        let started = Instant::now();
        let live = self.edge.snapshot();
        match head::read_head(&mut stream, &mut buf, &live.config.client, started, stop).await {
            Head::Complete | Head::TooLarge => {}
            Head::Closed => return None,
            Head::TimedOut => return self.refuse(stream, guard::HEADER_TIMEOUT).await,
        }
        // The head is parsed once: for the guard's framing check, for the lane's own plan, and
        // for what Pingora must know when it takes the request over.
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let parsed = head::parse(&buf, &mut fields);
        let framing = head::framing(&buf, parsed.as_ref());
        if let Err(r) = refuse_as_sent(&buf, parsed.is_some(), &framing) {
            return self.refuse(stream, r).await;
        }
        if framing.body.is_some() {
            // Never the lane's to answer: read the body ahead (see `body`), then hand over.
            let limits = &live.limits;
            return match body::read_ahead(&mut stream, &mut buf, &framing, limits, stop).await {
                Ahead::Ready { pipelined } => {
                    self.hand_over(stream, buf, carried, None, pipelined, shutdown)
                        .await
                }
                Ahead::Refused(r) => self.refuse(stream, r).await,
                Ahead::Closed => None,
            };
        }
        // As the proxy decides it (`Live::client_scheme`), so both look up the same key.
        let scheme = live.client_scheme(
            stream.get_ssl_digest().is_some(),
            || {
                let digest = stream.get_socket_digest()?;
                digest.local_addr().and_then(|a| a.as_inet()).copied()
            },
            || {
                let mut fields = parsed.as_ref()?.req.headers.iter();
                fields
                    .find(|f| f.name.eq_ignore_ascii_case("x-forwarded-proto"))
                    .map(|f| f.value)
            },
        );
        let planned = parsed
            .as_ref()
            .ok_or(None)
            .and_then(|p| plan(p, buf.len(), &live, &self.edge, scheme));
        match planned {
            Ok(express) => {
                self.answer(stream, &express, &live, carried, started, shutdown)
                    .await
            }
            Err(looked_up) => {
                let handoff = looked_up.map(|key| Handoff {
                    conn: None,
                    live: live.clone(),
                    looked_up: Some(key),
                });
                self.hand_over(stream, buf, carried, handoff, framing.pipelined, shutdown)
                    .await
            }
        }
    }

    fn server_options(&self) -> Option<&pingora::apps::HttpServerOptions> {
        self.proxy.server_options()
    }

    fn h2_options(&self) -> Option<pingora::protocols::http::v2::server::H2Options> {
        self.proxy.h2_options()
    }

    async fn http_cleanup(&self) {
        self.proxy.http_cleanup().await
    }
}

/// What a connection carries into its next request: Pingora's keep-alive state and the
/// connection's context (the client connection's count).
struct Carried {
    idle: Option<u64>,
    reuses: Option<u32>,
    conn_ctx: Option<Box<dyn Any + Send + Sync>>,
}

impl EdgeApp {
    /// Answers a refusal on the raw connection, counts it, and closes the connection.
    async fn refuse(&self, mut stream: Stream, r: guard::Refusal) -> Option<ReusedHttpStream> {
        self.edge.metrics.client.refused(r.reason);
        let _ = stream.write_all(&head::refusal_response(r)).await;
        let _ = stream.shutdown().await;
        None
    }

    /// Gives the request to the proxy with the bytes already read, which Pingora parses as if
    /// it had read them itself; `handoff`: the cache key the lane looked up in vain.
    async fn hand_over(
        &self,
        stream: Stream,
        buf: BytesMut,
        carried: Carried,
        handoff: Option<Handoff>,
        pipelined: bool,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let conn_ctx = match handoff {
            None => carried.conn_ctx,
            Some(mut h) => {
                h.conn = client_connection(carried.conn_ctx);
                Some(Box::new(h) as Box<dyn Any + Send + Sync>)
            }
        };
        let mut s = ServerSession::new_http1(stream);
        s.set_keepalive(carried.idle);
        s.set_keepalive_reuses_remaining(carried.reuses);
        s.set_connection_user_context(conn_ctx);
        if let ServerSession::H1(h1) = &mut s {
            // Pingora drops a request pipelined behind another unless told to answer them in
            // order (RFC 9112 section 9.3): then it keeps it for the connection's next session.
            if pipelined {
                h1.set_pipelining_enabled(true);
            }
            h1.set_pipelined_prefix(buf);
        }
        self.proxy.process_new_http(s, shutdown).await
    }

    /// Writes the hit, records it, and keeps the connection for its next request if the
    /// client keep-alive rule allows.
    async fn answer(
        &self,
        mut stream: Stream,
        express: &Express<'_>,
        live: &Live,
        carried: Carried,
        started: Instant,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let (keepalive, remaining) = client::keepalive(&live.config.client, carried.reuses);
        let keep = keepalive.is_some() && remaining > 0 && !*shutdown.borrow();
        let m = &self.edge.metrics;
        let conn = client_connection(carried.conn_ctx)
            .unwrap_or_else(|| Arc::new(ClientConnection::open(m)));
        conn.request();

        let inline = if express.hit.file.is_some() || express.hit.on_disk.is_some() {
            0
        } else {
            COPY_BODY_MAX.min(express.hit.body_len())
        };
        let mut out = BytesMut::with_capacity(1024 + inline);
        HitHead {
            hit: &express.hit,
            targeted: &live.config.cache.targeted_field,
            name: &self.edge.cluster.cache_name,
        }
        .write_h1(&mut out, keep);
        let body = match (&express.hit.on_disk, express.req.head) {
            (_, true) => Body::Memory(&[], None),
            (Some(file), false) => Body::Disk(file),
            (None, false) => Body::Memory(&express.hit.body, express.hit.file.as_deref()),
        };
        // Counted before the client can see the answer, so a client (a test) that reads the
        // counter after the response finds it counted.
        m.client.express_hits.inc();
        let gap = live.config.client.send_timeout.get();
        let written = send(&mut stream, out, body, gap).await;
        let bytes = match written && !express.req.head {
            true => express.hit.body_len(),
            false => 0,
        };
        record(&self.edge, live, &stream, express, bytes, started, written);
        if !written {
            return None;
        }
        if !keep {
            let _ = stream.shutdown().await;
            return None;
        }
        // HttpPersistentSettings (how the next request on this connection starts) can only be
        // built from a session.
        let mut next = ServerSession::new_http1(stream);
        next.set_keepalive(keepalive);
        next.set_keepalive_reuses_remaining(Some(remaining));
        let mut settings = HttpPersistentSettings::for_session(&next);
        settings.set_user_context(Box::new(conn) as Box<dyn Any + Send + Sync>);
        let ServerSession::H1(h1) = next else {
            unreachable!("built as HTTP/1")
        };
        Some(ReusedHttpStream::new(h1.into_inner(), Some(settings)))
    }
}

/// The client connection carried in the connection's context, if any.
fn client_connection(ctx: Option<Box<dyn Any + Send + Sync>>) -> Option<Arc<ClientConnection>> {
    ctx?.downcast::<Arc<ClientConnection>>().ok().map(|c| *c)
}

/// Counts an HTTP/1 hit and writes its access-log line.
fn record(
    edge: &Edge,
    live: &Live,
    stream: &Stream,
    express: &Express,
    bytes: usize,
    started: Instant,
    written: bool,
) {
    let client = stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().cloned());
    LaneHit {
        client: client.as_ref().map(|c| c as &dyn std::fmt::Display),
        method: if express.req.head { "HEAD" } else { "GET" },
        host: express.req.host,
        path: &express.req.target,
        status: express.hit.header.status.as_u16(),
        bytes,
        route: express.route,
        origin: express.origin,
        protocol: Protocol::Http11,
        scheme: express.req.scheme,
        started,
        error: (!written).then(|| "writing to the client failed".to_string()),
    }
    .record(edge, live);
}

/// A hit the lane answered (on HTTP/1 or h2), as the metrics and the access log see it.
struct LaneHit<'a> {
    client: Option<&'a dyn std::fmt::Display>,
    method: &'a str,
    host: &'a str,
    path: &'a dyn std::fmt::Display,
    status: u16,
    bytes: usize,
    route: &'a str,
    origin: Option<&'a Arc<Origin>>,
    protocol: Protocol,
    scheme: Scheme,
    started: Instant,
    error: Option<String>,
}

impl LaneHit<'_> {
    /// Counts the hit and writes its access-log line, as the proxy's `logging` phase does: no
    /// upstream, no connection, no tries.
    fn record(self, edge: &Edge, live: &Live) {
        let served = Served {
            entry: AccessEntry {
                client: self.client,
                method: self.method,
                host: self.host,
                path: self.path,
                status: self.status,
                bytes: self.bytes,
                route: self.route,
                origin: self.origin.map_or("-", |o| o.name.as_str()),
                server: "-",
                conn: "-",
                cache: Outcome::Hit.label(),
                connect: None,
                ttfb: None,
                total: self.started.elapsed(),
                tries: 0,
                refused: None,
                error: self.error,
            },
            origin: self.origin.map(|o| o.as_ref()),
            protocol: self.protocol,
            scheme: self.scheme,
        };
        served.record(&edge.metrics, &edge.access_log, &live.config.log);
    }
}

/// Whether the lane reads this session's request. Not h2; not a kept-alive session while the
/// server shuts down (a `fresh` one, a new connection's first request, it does read); and not
/// a session with pipelining on: it may hold a queued request in Pingora's buffer (private to
/// the session) that the lane must not read past.
fn lane_takes(session: &ServerSession, shutdown: &ShutdownWatch, fresh: bool) -> bool {
    matches!(session, ServerSession::H1(h1) if !h1.pipelining_enabled())
        && (fresh || !*shutdown.borrow())
}

/// Takes an HTTP/1 session's connection for the lane (see [`lane_takes`]), with what it
/// carries into its next request and how long to wait for this one: what Pingora's own read
/// would wait, the keep-alive timeout between requests (Some(0): no limit), else the read
/// timeout.
fn into_lane(mut session: ServerSession) -> (Stream, Carried, Option<Duration>) {
    let carried = Carried {
        idle: session.get_keepalive(),
        reuses: session.get_keepalive_reuses_remaining(),
        conn_ctx: session.take_connection_user_context(),
    };
    let wait = match carried.idle {
        Some(0) => None,
        Some(secs) => Some(Duration::from_secs(secs)),
        None => session.get_read_timeout(),
    };
    let ServerSession::H1(h1) = session else {
        unreachable!("lane_takes only HTTP/1 sessions")
    };
    (h1.into_inner(), carried, wait)
}

/// The refusals only the head as sent can show, since Pingora's parser rewrites both before
/// the proxy's guard sees them: conflicting framing (`Content-Length` with
/// `Transfer-Encoding`), and, in a head the lane could not parse, a space or control byte in
/// the request line (which Pingora would percent-encode and forward).
fn refuse_as_sent(buf: &[u8], parsed: bool, framing: &Framing) -> Result<(), guard::Refusal> {
    guard::check_framing(framing.content_length, framing.transfer_encoding)?;
    if !parsed {
        guard::check_request_line(buf)?;
    }
    Ok(())
}
