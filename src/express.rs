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
//! `client.header_timeout`, and framing Pingora's parser would rewrite (`Content-Length` with
//! `Transfer-Encoding`); any other request the guard would refuse is simply handed over.

use std::any::Any;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::{BufMut, BytesMut};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::cache::key::CacheHashKey;
use pingora::cache::CacheKey;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cache::body_file::BodyFile;
use crate::cache::hit::{self, HitHead, RawRequest};
use crate::cache::key::{self, Scheme};
use crate::cache::status::Outcome;
use crate::cache::store::FreshHit;
use crate::client::{self, ClientConnection};
use crate::guard;
use crate::host::normalize_host;
use crate::logging::AccessEntry;
use crate::origin::router::Route;
use crate::origin::Origin;
use crate::proxy::{EdgeProxy, Handoff};
use crate::served::Served;
use crate::state::{Edge, Live};

/// Request fields the lane leaves to the proxy whatever the cache says: protocol switches. (What
/// takes a request off every fresh-hit path is `cache::hit`'s rule.)
const NEEDS_PROXY: [&str; 2] = ["expect", "upgrade"];

/// Bodies up to this size are copied behind the header and sent in one write; larger ones are
/// sent from the store with a vectored write (still one system call when the socket takes it).
const COPY_BODY_MAX: usize = 16 << 10;

/// Most request fields the lane parses; a request with more is handed to the proxy.
const MAX_FIELDS: usize = 64;

/// Pingora's proxy service behind the express lane.
pub struct EdgeApp {
    proxy: Arc<HttpProxy<EdgeProxy>>,
    edge: Arc<Edge>,
}

impl EdgeApp {
    pub fn new(proxy: HttpProxy<EdgeProxy>, edge: Arc<Edge>) -> Self {
        EdgeApp {
            proxy: Arc::new(proxy),
            edge,
        }
    }
}

/// A request the lane will answer.
struct Express<'a> {
    req: Plain<'a>,
    hit: FreshHit,
    route: &'a str,
    origin: Option<&'a Arc<Origin>>,
}

#[async_trait]
impl HttpServerApp for EdgeApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        // A session with pipelining on may carry a queued request in Pingora's buffer (private
        // to the session): the lane must not read past it, so the proxy takes it.
        let queued = matches!(&session, ServerSession::H1(h1) if h1.pipelining_enabled());
        if !matches!(session, ServerSession::H1(_)) || queued || *shutdown.borrow() {
            return self.proxy.process_new_http(session, shutdown).await;
        }
        let carried = Carried {
            idle: session.get_keepalive(),
            reuses: session.get_keepalive_reuses_remaining(),
            conn_ctx: session.take_connection_user_context(),
        };
        // What Pingora's own read would wait: the keep-alive timeout between requests
        // (Some(0): no limit), else the read timeout.
        let wait = match carried.idle {
            Some(0) => None,
            Some(secs) => Some(Duration::from_secs(secs)),
            None => session.get_read_timeout(),
        };
        let ServerSession::H1(h1) = session else {
            unreachable!("checked above")
        };
        let mut stream = h1.into_inner();
        let mut buf = BytesMut::with_capacity(4096);
        if !read_some(&mut stream, &mut buf, wait, shutdown).await {
            // Closed, idle too long, or shutting down: as the proxy would, close quietly.
            return None;
        }
        let started = Instant::now();
        let live = self.edge.snapshot();
        match read_head(
            &mut stream,
            &mut buf,
            &live.config.client,
            started,
            shutdown,
        )
        .await
        {
            Head::Complete | Head::TooLarge => {}
            Head::Closed => return None,
            Head::TimedOut => {
                let refused = &self.edge.metrics.client.refused_requests;
                refused.with_label_values(&["header_timeout"]).inc();
                let _ = stream.write_all(REQUEST_TIMEOUT).await;
                let _ = stream.shutdown().await;
                return None;
            }
        }
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let scheme = match stream.get_ssl_digest() {
            Some(_) => Scheme::Https,
            None => Scheme::Http,
        };
        match plan(&buf, &mut fields, &live, &self.edge, scheme) {
            Ok(express) => {
                self.answer(stream, &express, &live, carried, started, shutdown)
                    .await
            }
            Err(looked_up) => {
                // Pingora's parser rewrites conflicting framing before the proxy's guard sees
                // it, so it is refused here, on the bytes as sent.
                if let Err(r) = crate::guard::check_raw_framing(&buf) {
                    let refused = &self.edge.metrics.client.refused_requests;
                    refused.with_label_values(&[r.reason]).inc();
                    let _ = stream.write_all(&refusal_response(r)).await;
                    let _ = stream.shutdown().await;
                    return None;
                }
                let handoff = looked_up.map(|key| Handoff {
                    conn: None,
                    live: live.clone(),
                    looked_up: Some(key),
                });
                self.hand_over(stream, buf, carried, handoff, shutdown)
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
    /// Gives the request to the proxy with the bytes already read, which Pingora parses as if
    /// it had read them itself; `handoff`: the cache key the lane looked up in vain.
    async fn hand_over(
        &self,
        stream: Stream,
        buf: BytesMut,
        carried: Carried,
        handoff: Option<Handoff>,
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
            if holds_a_second_request(&buf) {
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

        let inline = if express.hit.file.is_some() {
            0
        } else {
            COPY_BODY_MAX.min(express.hit.body_len())
        };
        let mut out = BytesMut::with_capacity(1024 + inline);
        HitHead {
            hit: &express.hit,
            targeted: &live.config.cache.targeted_field,
        }
        .write_h1(&mut out, keep);
        let (body, file): (&[bytes::Bytes], _) = if express.req.head {
            (&[], None)
        } else {
            (&express.hit.body, express.hit.file.as_deref())
        };
        // Counted before the client can see the answer, so a client (a test) that reads the
        // counter after the response finds it counted.
        m.client.express_hits.inc();
        let gap = live.config.client.send_timeout.get();
        let written = send(&mut stream, out, body, file, gap).await;
        let bytes = if written {
            body.iter().map(|c| c.len()).sum()
        } else {
            0
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

/// Whether `buf` holds more than one request: bytes after a complete head that announces no
/// body (with a body, what follows the head is the body).
fn holds_a_second_request(buf: &[u8]) -> bool {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut fields);
    let Ok(httparse::Status::Complete(len)) = req.parse(buf) else {
        return false;
    };
    let has_body = req.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("content-length")
            || h.name.eq_ignore_ascii_case("transfer-encoding")
    });
    len < buf.len() && !has_body
}

/// The answer to a request refused on its raw bytes; the connection is closed after it.
fn refusal_response(r: crate::guard::Refusal) -> Vec<u8> {
    let body = format!("refused: {}\n", r.reason);
    let reason = http::StatusCode::from_u16(r.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        r.status,
        body.len()
    )
    .into_bytes()
}

/// How reading a request head ended.
enum Head {
    /// The blank line that ends it is in the buffer.
    Complete,
    /// Larger than `client.max_header_size` and still going: the proxy refuses it (431).
    TooLarge,
    /// Not complete within `client.header_timeout` of its first byte.
    TimedOut,
    /// The client closed, or the server is shutting down.
    Closed,
}

/// The answer to a request head that took too long (then the connection is closed).
const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; \
charset=utf-8\r\nContent-Length: 31\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n\
refused: request head too slow\n";

/// Reads until the request head is complete, bounding the whole head by
/// `client.header_timeout` from its first byte, however slowly it drips (a slowloris client
/// cannot hold a connection longer than that); Pingora bounds each read, not the head.
async fn read_head(
    stream: &mut Stream,
    buf: &mut BytesMut,
    client: &crate::config::ClientSettings,
    first_byte: Instant,
    shutdown: &ShutdownWatch,
) -> Head {
    let deadline = first_byte + client.header_timeout.get();
    loop {
        if head_complete(buf) {
            return Head::Complete;
        }
        if buf.len() as u64 > client.max_header_size.0 {
            return Head::TooLarge;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Head::TimedOut;
        }
        if !read_some(stream, buf, Some(left), shutdown).await {
            return if Instant::now() >= deadline && !*shutdown.borrow() {
                Head::TimedOut
            } else {
                Head::Closed
            };
        }
    }
}

/// Whether `buf` holds a whole request head: the blank line (CRLF CRLF, or bare LFs, which the
/// parsers accept too). Most requests end their first read with it, so that is checked first.
fn head_complete(buf: &[u8]) -> bool {
    buf.ends_with(b"\r\n\r\n")
        || buf.windows(4).any(|w| w == b"\r\n\r\n")
        || buf.windows(2).any(|w| w == b"\n\n")
}

/// Reads what the client has sent (at least one byte). False when the client closed, the wait
/// ran out, the read failed, or the server is shutting down.
async fn read_some(
    stream: &mut Stream,
    buf: &mut BytesMut,
    wait: Option<Duration>,
    shutdown: &ShutdownWatch,
) -> bool {
    let mut shutdown = shutdown.clone();
    let stopping = async move {
        while shutdown.changed().await.is_ok() {
            if *shutdown.borrow() {
                return;
            }
        }
        std::future::pending::<()>().await
    };
    let read = async {
        match wait {
            Some(d) => pingora::time::timeout(d, stream.read_buf(buf))
                .await
                .unwrap_or(Ok(0)),
            None => stream.read_buf(buf).await,
        }
    };
    tokio::select! {
        biased;
        n = read => matches!(n, Ok(n) if n > 0),
        _ = stopping => false,
    }
}

/// The hit to send for these request bytes, if the lane may answer them. Otherwise the cache
/// key it looked up without finding a fresh object, if it got that far (the proxy need not
/// look again).
fn plan<'b>(
    buf: &'b [u8],
    fields: &'b mut [httparse::Header<'b>; MAX_FIELDS],
    live: &'b Live,
    edge: &Edge,
    scheme: Scheme,
) -> Result<Express<'b>, Option<CacheKey>> {
    eligible(buf, fields, live, scheme)
        .ok_or(None)
        .and_then(|(request, route)| lookup(request, route, live, edge))
}

/// A request the lane may answer if its object is fresh in the store.
struct Plain<'b> {
    head: bool,
    scheme: Scheme,
    host: &'b str,
    normalized: String,
    target: &'b str,
}

fn eligible<'b>(
    buf: &'b [u8],
    fields: &'b mut [httparse::Header<'b>; MAX_FIELDS],
    live: &'b Live,
    scheme: Scheme,
) -> Option<(Plain<'b>, &'b Route)> {
    if !live.config.cache.express_lane {
        return None;
    }
    let mut req = httparse::Request::new(fields);
    // A partial or odd request, or pipelined bytes behind it: the proxy's parser decides.
    let httparse::Status::Complete(len) = req.parse(buf).ok()? else {
        return None;
    };
    if len != buf.len() || req.version != Some(1) {
        return None;
    }
    let head = match req.method? {
        "GET" => false,
        "HEAD" => true,
        _ => return None,
    };
    let target = req.path?;
    // Origin-form with only characters that every parser keeps as they are, so the cache key
    // is the one the proxy would build.
    if !target.starts_with('/') || !target.bytes().all(plain_target_byte) {
        return None;
    }
    let mut host = None;
    let mut host_fields = 0;
    let mut size = target.len();
    for f in req.headers.iter() {
        size += f.name.len() + f.value.len() + 4;
        let name = f.name;
        if name.eq_ignore_ascii_case("host") {
            host_fields += 1;
            host = std::str::from_utf8(f.value).ok().filter(|h| !h.is_empty());
        } else if name.eq_ignore_ascii_case("connection") {
            if !f.value.eq_ignore_ascii_case(b"keep-alive") {
                return None;
            }
        } else if NEEDS_PROXY.iter().any(|n| name.eq_ignore_ascii_case(n)) {
            return None;
        }
    }
    let shape = guard::Shape {
        path: target.as_bytes(),
        host,
        host_fields,
        fields: req.headers.len(),
        size,
    };
    guard::check_shape(&shape, &live.limits).ok()?;
    let host = host?;
    let normalized = normalize_host(host);
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let route = live.router.route(&normalized, path)?;
    let raw = RawRequest {
        method: if head { "HEAD" } else { "GET" },
        fields: req.headers,
    };
    if !hit::may_serve_fresh(&raw, &route.cache) {
        return None;
    }
    let plain = Plain {
        head,
        scheme,
        host,
        normalized,
        target,
    };
    Some((plain, route))
}

fn lookup<'b>(
    req: Plain<'b>,
    route: &'b Route,
    live: &'b Live,
    edge: &Edge,
) -> Result<Express<'b>, Option<CacheKey>> {
    let key =
        key::for_url_only(req.scheme, &req.normalized, req.target, &route.cache.key).ok_or(None)?;
    let Some(hit) = edge
        .cache
        .store
        .fresh_hit(&key.primary_bin(), SystemTime::now())
    else {
        return Err(Some(key));
    };
    let sendable = HitHead {
        hit: &hit,
        targeted: &live.config.cache.targeted_field,
    }
    .framed_by_length();
    if !sendable {
        // Stored, fresh, but framed otherwise: the proxy's fresh-hit path sends it.
        return Err(None);
    }
    Ok(Express {
        req,
        hit,
        route: &route.name,
        origin: live.origins.get(&route.origin),
    })
}

/// RFC 3986 unreserved, sub-delims, `:`, `@`, `/`, `?` and `%`.
fn plain_target_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

/// Writes the header and the body: a body in a memory file with `sendfile`, a small one in the
/// header's buffer, others with a vectored write. Each write must make progress within `gap`
/// (`client.send_timeout`): a client that stops reading is dropped, not waited for.
async fn send(
    stream: &mut Stream,
    mut head: BytesMut,
    body: &[bytes::Bytes],
    file: Option<&BodyFile>,
    gap: Duration,
) -> bool {
    // Only on a plain TCP socket: sendfile would bypass TLS.
    if let Some(file) = file.filter(|_| stream.get_ssl_digest().is_none()) {
        if !write_within(stream, &head, gap).await || !flush_within(stream, gap).await {
            return false;
        }
        let Ok(mut sent) = file.send_to(stream.id(), 0) else {
            return false;
        };
        // The socket filled up: the rest is written from the mapping the usual way, which
        // waits for the socket to drain.
        for chunk in body {
            if sent >= chunk.len() {
                sent -= chunk.len();
                continue;
            }
            if !write_within(stream, &chunk[sent..], gap).await {
                return false;
            }
            sent = 0;
        }
        return flush_within(stream, gap).await;
    }
    let total: usize = body.iter().map(|c| c.len()).sum();
    if total <= COPY_BODY_MAX {
        for chunk in body {
            head.put_slice(chunk);
        }
        return write_within(stream, &head, gap).await && flush_within(stream, gap).await;
    }
    let mut slices: Vec<IoSlice> = std::iter::once(IoSlice::new(&head))
        .chain(body.iter().map(|c| IoSlice::new(c)))
        .collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match pingora::time::timeout(gap, stream.write_vectored(rest)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return false,
            Ok(Ok(n)) => IoSlice::advance_slices(&mut rest, n),
        }
    }
    flush_within(stream, gap).await
}

/// Writes all of `bytes`, each write making progress within `gap`.
async fn write_within(stream: &mut Stream, mut bytes: &[u8], gap: Duration) -> bool {
    while !bytes.is_empty() {
        match pingora::time::timeout(gap, stream.write(bytes)).await {
            Ok(Ok(n)) if n > 0 => bytes = &bytes[n..],
            _ => return false,
        }
    }
    true
}

async fn flush_within(stream: &mut Stream, gap: Duration) -> bool {
    matches!(
        pingora::time::timeout(gap, stream.flush()).await,
        Ok(Ok(()))
    )
}

/// Counts the hit and writes its access-log line, as the proxy's `logging` phase does.
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
    let served = Served {
        entry: AccessEntry {
            client: client.as_ref().map(|c| c as &dyn std::fmt::Display),
            method: if express.req.head { "HEAD" } else { "GET" },
            host: express.req.host,
            path: &express.req.target,
            status: express.hit.header.status.as_u16(),
            bytes,
            route: express.route,
            origin: express.origin.map_or("-", |o| o.name.as_str()),
            server: "-",
            conn: "-",
            cache: Outcome::Hit.label(),
            connect: None,
            ttfb: None,
            total: started.elapsed(),
            tries: 0,
            refused: None,
            error: (!written).then(|| "writing to the client failed".to_string()),
        },
        origin: express.origin.map(|o| o.as_ref()),
        protocol: "http/1.1",
        scheme: express.req.scheme,
    };
    served.record(&edge.metrics, &live.config.log);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pingora::cache::CacheMeta;
    use pingora::http::ResponseHeader;

    use super::*;
    use crate::cache::key::{for_url_only, Scheme};

    const CONFIG: &str = "listen: [\"127.0.0.1:1\"]\norigins:\n  web: {servers: [\"127.0.0.1:1\"]}\nroutes:\n  - {origin: web}\n";

    /// An edge with `/e` fresh in its cache (5 bytes, with a Content-Length).
    async fn edge_with_object(extra: &str) -> Arc<Edge> {
        let text = format!("{extra}{CONFIG}");
        let config = crate::config::parse(&text, "test").unwrap();
        let edge = Edge::new(config, text, None).unwrap();
        let live = edge.snapshot();
        let route = live.router.route("example.com", "/e").unwrap();
        let key = for_url_only(Scheme::Http, "example.com", "/e", &route.cache.key).unwrap();
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.append_header("Content-Length", "5").unwrap();
        let now = SystemTime::now();
        let meta = CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header);
        crate::cache::store::tests::fill(edge.cache.store, &key, &meta, &["hello"]).await;
        edge
    }

    /// What the lane decides for these bytes: answer (`Ok`), hand over with the key it looked
    /// up (`Err(true)`), or hand over without one (`Err(false)`).
    fn decide(edge: &Edge, bytes: &str) -> Result<usize, bool> {
        let live = edge.snapshot();
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        match plan(bytes.as_bytes(), &mut fields, &live, edge, Scheme::Http) {
            Ok(e) => Ok(e.hit.body_len()),
            Err(key) => Err(key.is_some()),
        }
    }

    #[tokio::test]
    async fn plain_fresh_hits_take_the_lane_and_nothing_else_does() {
        let edge = edge_with_object("").await;
        let cases: [(&str, Result<usize, bool>); 12] = [
            ("GET /e HTTP/1.1\r\nHost: example.com\r\n\r\n", Ok(5)),
            ("HEAD /e HTTP/1.1\r\nHost: EXAMPLE.com:80\r\n\r\n", Ok(5)),
            ("GET /e HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive\r\n\r\n", Ok(5)),
            // Not stored: the proxy gets the key it need not build again.
            ("GET /other HTTP/1.1\r\nHost: example.com\r\n\r\n", Err(true)),
            ("GET /e HTTP/1.1\r\nHost: example.com\r\nRange: bytes=0-1\r\n\r\n", Err(false)),
            ("GET /e HTTP/1.1\r\nHost: example.com\r\nCache-Control: max-age=9\r\n\r\n", Err(false)),
            ("GET /e HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n", Err(false)),
            ("GET /e HTTP/1.0\r\nHost: example.com\r\n\r\n", Err(false)),
            ("GET /x/../e HTTP/1.1\r\nHost: example.com\r\n\r\n", Err(false)),
            ("GET /e HTTP/1.1\r\n\r\n", Err(false)),
            // Partial, or pipelined behind another: Pingora's parser decides.
            ("GET /e HTTP/1.1\r\nHost: exa", Err(false)),
            (
                "GET /e HTTP/1.1\r\nHost: example.com\r\n\r\nGET /e HTTP/1.1\r\nHost: example.com\r\n\r\n",
                Err(false),
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(decide(&edge, bytes), expected, "{bytes:?}");
        }
    }

    #[test]
    fn a_second_request_is_told_from_a_body() {
        let two = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(holds_a_second_request(two));
        assert!(!holds_a_second_request(
            b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
        ));
        let body = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
        assert!(!holds_a_second_request(body));
        assert!(!holds_a_second_request(b"GET /a HTTP/1.1\r\nHo"));
    }

    #[test]
    fn a_head_is_complete_at_its_blank_line() {
        assert!(head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"));
        assert!(head_complete(b"GET / HTTP/1.1\nHost: a\n\n"));
        assert!(!head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n"));
        assert!(!head_complete(b"GET / HTT"));
        // The 408 is well framed: its Content-Length is its body's.
        let mut fields = [httparse::EMPTY_HEADER; 8];
        let mut resp = httparse::Response::new(&mut fields);
        let head = resp.parse(REQUEST_TIMEOUT).unwrap().unwrap();
        let length = resp
            .headers
            .iter()
            .find(|h| h.name == "Content-Length")
            .unwrap();
        let length: usize = std::str::from_utf8(length.value).unwrap().parse().unwrap();
        assert_eq!(
            (resp.code, REQUEST_TIMEOUT.len() - head),
            (Some(408), length)
        );
    }

    #[tokio::test]
    async fn the_operators_switch_closes_the_lane() {
        let edge = edge_with_object("cache: {express_lane: false}\n").await;
        assert_eq!(
            decide(&edge, "GET /e HTTP/1.1\r\nHost: example.com\r\n\r\n"),
            Err(false)
        );
    }
}
