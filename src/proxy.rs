//! The `ProxyHttp` implementation: orchestration only. Each phase hands its decision to the
//! module that owns it (guard, router, origin, reuse, metrics) and keeps what later phases need
//! in the request context.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use log::{info, warn};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::Digest;
use pingora::proxy::FailToProxy;
use pingora::{ErrorSource, ErrorType};

use crate::config::Balance;
use crate::guard;
use crate::live::{Edge, Live};
use crate::logging;
use crate::metrics::{metrics, ClientConnection};
use crate::origin::reuse::{close_reason, CloseReason};
use crate::origin::router::normalize_host;
use crate::origin::{InFlight, Origin};

pub struct EdgeProxy {
    pub edge: Arc<Edge>,
}

/// What one request carries from phase to phase.
pub struct RequestCtx {
    /// The config this request started with; it finishes on it, whatever reloads happen.
    live: Arc<Live>,
    started: Instant,
    route: Option<Arc<str>>,
    origin: Option<Arc<Origin>>,
    /// Servers of the origin this request tried, in order; the last is the current one.
    tried: Vec<usize>,
    in_flight: Option<InFlight>,
    reused: Option<bool>,
    connect_time: Option<Duration>,
    sent_at: Option<Instant>,
    ttfb: Option<Duration>,
    close: Option<CloseReason>,
    refused: Option<&'static str>,
    /// The client connection, carried across its keep-alive requests.
    conn: Option<Arc<ClientConnection>>,
}

impl RequestCtx {
    fn server_address(&self) -> &str {
        match (&self.origin, self.tried.last()) {
            (Some(o), Some(&i)) => &o.servers[i].address,
            _ => "-",
        }
    }
}

/// A short plain-text response written by the edge itself.
async fn respond_text(
    session: &mut Session,
    status: u16,
    text: &str,
    keepalive: bool,
) -> Result<()> {
    let body = Bytes::from(format!("{text}\n"));
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header("Content-Type", "text/plain; charset=utf-8")?;
    resp.insert_header("Content-Length", body.len().to_string())?;
    resp.insert_header("Cache-Control", "no-store")?;
    if !keepalive {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            live: self.edge.snapshot(),
            started: Instant::now(),
            route: None,
            origin: None,
            tried: Vec::new(),
            in_flight: None,
            reused: None,
            connect_time: None,
            sent_at: None,
            ttfb: None,
            close: None,
            refused: None,
            conn: None,
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Client keep-alive, as nginx's keepalive_timeout / keepalive_requests. Pingora keeps
        // the remaining count across requests of a connection and closes at zero.
        let client = &ctx.live.config.client;
        let idle = client.keepalive_timeout.get();
        if idle.is_zero() {
            session.set_keepalive(None);
        } else {
            // Whole seconds: Pingora's unit. Some(0) would mean "forever", so round up.
            session.set_keepalive(Some(idle.as_secs().max(1)));
        }
        if session.get_keepalive_reuses_remaining().is_none() {
            let limit = client.keepalive_requests;
            session.set_keepalive_reuses_remaining(Some(limit.saturating_sub(1)));
        }
        ctx.conn
            .get_or_insert_with(|| Arc::new(ClientConnection::open()))
            .request();
        Ok(())
    }

    fn persist_connection_context(
        &self,
        _session: &Session,
        ctx: &RequestCtx,
    ) -> Option<Box<dyn Any + Send + Sync>> {
        ctx.conn
            .clone()
            .map(|c| Box::new(c) as Box<dyn Any + Send + Sync>)
    }

    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
        prev: Box<dyn Any + Send + Sync>,
    ) {
        if let Ok(conn) = prev.downcast::<Arc<ClientConnection>>() {
            ctx.conn = Some(*conn);
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        if let Err(r) = guard::check(req, &ctx.live.config.client) {
            ctx.refused = Some(r.reason);
            metrics()
                .refused_requests
                .with_label_values(&[r.reason])
                .inc();
            respond_text(session, r.status, &format!("refused: {}", r.reason), false).await?;
            return Ok(true);
        }
        let host = normalize_host(guard::request_host(req).unwrap_or_default());
        let Some(route) = ctx.live.router.route(&host, req.uri.path()) else {
            ctx.refused = Some("no_route");
            let msg = format!("no route for host \"{host}\"");
            respond_text(session, 404, &msg, true).await?;
            return Ok(true);
        };
        ctx.route = Some(route.name.clone());
        ctx.origin = ctx.live.origins.get(&route.origin).cloned();
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let origin = ctx
            .origin
            .clone()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "request has no origin"))?;
        // Consistent hashing keys on what the cache will key on: host and target. Other modes
        // need no key, so they skip building it.
        let key = if origin.config.balance == Balance::ConsistentHash {
            let req = session.req_header();
            format!(
                "{}{}",
                guard::request_host(req).unwrap_or_default(),
                req.uri
            )
        } else {
            String::new()
        };
        let Some(idx) = origin.pick(key.as_bytes(), &ctx.tried) else {
            return Error::e_explain(
                ErrorType::ConnectRefused,
                format!("origin {}: every server was tried", origin.name),
            );
        };
        ctx.tried.push(idx);
        Ok(origin.servers[idx].peer())
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        digest: Option<&Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let (Some(origin), Some(&idx)) = (ctx.origin.as_ref(), ctx.tried.last()) else {
            return Ok(());
        };
        let server = &origin.servers[idx];
        server.health().connect_succeeded();
        ctx.reused = Some(reused);
        let timing = digest
            .and_then(|d| d.timing_digest.first())
            .and_then(|t| t.as_ref());
        if reused {
            origin.metrics.reused.inc();
        } else {
            origin.metrics.new.inc();
            ctx.connect_time = timing.and_then(|t| t.establishment_duration);
            if let Some(t) = ctx.connect_time {
                origin.metrics.connect.observe(t.as_secs_f64());
            }
        }
        let established = timing.map_or(SystemTime::UNIX_EPOCH, |t| t.established_ts);
        let request_no = self.edge.ledger.record(fd, established);
        let in_flight = InFlight::new(server.state.clone());
        let ka = &origin.config.keepalive;
        ctx.close = close_reason(
            origin.pooling_off(),
            request_no,
            ka.max_requests,
            in_flight.concurrency,
            ka.pool_size,
        );
        ctx.in_flight = Some(in_flight);
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(origin) = &ctx.origin {
            if let Some(h) = &origin.host_header {
                upstream.insert_header(http::header::HOST, h.clone())?;
            }
            match ctx.close {
                Some(reason) => {
                    upstream.insert_header(http::header::CONNECTION, "close")?;
                    match reason {
                        CloseReason::MaxRequests => origin.metrics.closed_max_requests.inc(),
                        CloseReason::PoolFull => origin.metrics.closed_pool_full.inc(),
                        CloseReason::PoolingOff => origin.metrics.closed_pooling_off.inc(),
                    }
                }
                None => {
                    upstream.remove_header(&http::header::CONNECTION);
                }
            }
        }
        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            let xff = match upstream
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(prev) => format!("{prev}, {ip}"),
                None => ip.to_string(),
            };
            upstream.insert_header("X-Forwarded-For", xff)?;
        }
        upstream.insert_header("X-Forwarded-Proto", "http")?;
        let via = match upstream
            .headers
            .get(http::header::VIA)
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) => format!("{prev}, 1.1 edge"),
            None => "1.1 edge".to_string(),
        };
        upstream.insert_header(http::header::VIA, via)?;
        ctx.sent_at = Some(Instant::now());
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if upstream.status.is_informational() {
            return Ok(());
        }
        if let (Some(sent), Some(origin)) = (ctx.sent_at, &ctx.origin) {
            let ttfb = sent.elapsed();
            ctx.ttfb = Some(ttfb);
            let h = if ctx.reused == Some(true) {
                &origin.metrics.ttfb_reused
            } else {
                &origin.metrics.ttfb_new
            };
            h.observe(ttfb.as_secs_f64());
        }
        // Hop-by-hop fields of the upstream connection are not the client's business.
        upstream.remove_header("keep-alive");
        upstream.remove_header("proxy-connection");
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let (Some(origin), Some(&idx)) = (ctx.origin.as_ref(), ctx.tried.last()) else {
            return e;
        };
        let server = &origin.servers[idx];
        server.metrics.connect_failures.inc();
        if server
            .health()
            .connect_failed(&origin.config.passive_health)
        {
            warn!(
                "origin {} server {} marked down for {} after connect failure: {}",
                origin.name, server.address, origin.config.passive_health.fail_timeout, e
            );
        }
        // Retry on another server of the origin, bounded by `retries`; a connect failure means
        // nothing was sent, so this is safe for every method.
        let retries_used = ctx.tried.len() - 1;
        let untried_left = ctx.tried.len() < origin.servers.len();
        if retries_used < origin.config.retries && untried_left {
            e.set_retry(true);
            origin.metrics.retries_connect_failure.inc();
        }
        e
    }

    /// Pingora's policy, kept as is (retry only idempotent requests whose body can be replayed,
    /// and only after a failure on a reused connection), plus a count of the retries it allows.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        if e.retry() {
            if let Some(origin) = &ctx.origin {
                origin.metrics.retries_connection_lost.inc();
            }
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let (code, text) = match e.etype() {
            ErrorType::HTTPStatus(code) => (*code, "error"),
            ErrorType::ConnectTimedout => (504, "origin connect timed out"),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => (504, "origin timed out"),
            ErrorType::ConnectRefused | ErrorType::ConnectNoRoute | ErrorType::ConnectError => {
                (502, "origin unreachable")
            }
            _ => match e.esource() {
                ErrorSource::Upstream => (502, "bad response from origin"),
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                        (0, "")
                    }
                    _ => (400, "bad request"),
                },
                ErrorSource::Internal | ErrorSource::Unset => (500, "internal error"),
            },
        };
        if code > 0 && session.response_written().is_none() {
            let origin = ctx.origin.as_ref().map_or("-", |o| o.name.as_str());
            let msg = if code >= 500 {
                format!("{code} {text} (origin {origin})")
            } else {
                format!("{code} {text}")
            };
            if let Err(we) = respond_text(session, code, &msg, false).await {
                warn!("could not send the {code} error response: {we}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        ctx.in_flight = None;
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "none",
        };
        let origin = ctx.origin.as_ref().map_or("-", |o| o.name.as_str());
        let route = ctx.route.as_deref().unwrap_or("-");
        // Until the cache lands, every request that reached an origin is a pass.
        let cache = if ctx.tried.is_empty() { "none" } else { "pass" };
        let bytes = session.body_bytes_sent();
        let m = metrics();
        m.requests
            .with_label_values(&[route, origin, class, cache])
            .inc();
        m.response_bytes
            .with_label_values(&[origin, cache])
            .inc_by(bytes as u64);
        let total = ctx.started.elapsed();
        if let Some(o) = &ctx.origin {
            o.metrics.duration.observe(total.as_secs_f64());
        }
        let log = &ctx.live.config.log;
        if log.access && log::log_enabled!(target: "access", log::Level::Info) {
            let req = session.req_header();
            let entry = logging::AccessEntry {
                client: session
                    .client_addr()
                    .map_or("-".to_string(), |a| a.to_string()),
                method: req.method.as_str(),
                host: guard::request_host(req).unwrap_or("-"),
                path: req.uri.to_string(),
                status,
                bytes,
                route,
                origin,
                server: ctx.server_address(),
                conn: match ctx.reused {
                    Some(true) => "reused",
                    Some(false) => "new",
                    None => "-",
                },
                cache,
                connect: ctx.connect_time,
                ttfb: ctx.ttfb,
                total,
                tries: ctx.tried.len(),
                refused: ctx.refused,
                error: e.map(|e| e.to_string()),
            };
            info!(target: "access", "{}", entry.render(log.access_format));
        }
    }
}
