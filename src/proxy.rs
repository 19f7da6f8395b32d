//! The `ProxyHttp` implementation: orchestration only. Each phase hands its decision to the
//! module that owns it (guard, router, origin, reuse, metrics) and keeps what later phases need
//! in the request context.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use log::{info, warn};
use pingora::cache::key::HashBinary;
use pingora::cache::{
    CacheKey, CacheMeta, CacheOptionOverrides, CachePhase, ForcedFreshness, HitHandler,
    NoCacheReason, RespCacheable, VarianceBuilder,
};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::Digest;
use pingora::proxy::FailToProxy;
use pingora::{ErrorSource, ErrorType};

use crate::cache::fresh;
use crate::cache::key as cache_key;
use crate::cache::status::Outcome;
use crate::cache::store::FreshHit;
use crate::cache::{cache, policy};
use crate::config::{Balance, ClientSettings, RouteCache};
use crate::guard;
use crate::live::{Edge, Live};
use crate::logging;
use crate::metrics::{metrics, ClientConnection};
use crate::origin::keepalive;
use crate::origin::reuse::{close_reason, CloseReason, ConnUse};
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
    /// The route's cache settings, once routed.
    route_cache: Option<Arc<RouteCache>>,
    /// The request's host, normalized, once checked.
    host: String,
    /// The client sent `Cache-Control: no-cache`: stored objects need revalidation.
    client_no_cache: bool,
    /// Status of the origin's response, when the origin was asked.
    fwd_status: Option<u16>,
    /// The upstream connection in use: fd, when it was established, its ledger view.
    upstream_conn: Option<(i32, SystemTime, ConnUse)>,
    /// The next attempt must use a new connection (a pooled one was found closed).
    fresh_connection: bool,
    /// Header fields of a 304 from the origin, to update the stored response with.
    not_modified: Option<http::HeaderMap>,
    /// The cache key, when the fresh-hit lookup built it (see `cache::fresh`).
    cache_key: Option<CacheKey>,
    /// The key the express lane already looked up without a fresh hit (see `Handoff`).
    looked_up: Option<CacheKey>,
    cache: Outcome,
}

impl RequestCtx {
    fn server_address(&self) -> &str {
        match (&self.origin, self.tried.last()) {
            (Some(o), Some(&i)) => &o.servers[i].address,
            _ => "-",
        }
    }
}

/// What the express lane hands the proxy with a request it passes on (as the connection's
/// context): the client connection, and the cache key it built and found no fresh hit for, so
/// the proxy does not build, hash and look it up again.
pub(crate) struct Handoff {
    pub conn: Option<Arc<ClientConnection>>,
    pub live: Arc<Live>,
    pub looked_up: Option<CacheKey>,
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
            route_cache: None,
            host: String::new(),
            client_no_cache: false,
            fwd_status: None,
            not_modified: None,
            upstream_conn: None,
            fresh_connection: false,
            cache_key: None,
            looked_up: None,
            cache: Outcome::None,
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let (idle, remaining) = client_keepalive(
            &ctx.live.config.client,
            session.get_keepalive_reuses_remaining(),
        );
        session.set_keepalive(idle);
        session.set_keepalive_reuses_remaining(Some(remaining));
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
        match prev.downcast::<Arc<ClientConnection>>() {
            Ok(conn) => ctx.conn = Some(*conn),
            Err(prev) => {
                if let Ok(h) = prev.downcast::<Handoff>() {
                    ctx.conn = h.conn;
                    // Only valid under the config the lane looked it up with.
                    if Arc::ptr_eq(&h.live, &ctx.live) {
                        ctx.looked_up = h.looked_up;
                    }
                }
            }
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
        ctx.route_cache = Some(route.cache.clone());
        let found = match ctx.looked_up.take() {
            // The express lane built this key and found no fresh hit a moment ago.
            Some(key) => fresh::Lookup {
                hit: None,
                key: Some(key),
            },
            None => fresh::lookup(req, &host, &route.cache, &ctx.live.config.cache),
        };
        ctx.host = host;
        ctx.cache_key = found.key;
        match found.hit {
            Some(hit) => {
                self.serve_fresh_hit(session, ctx, hit).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let Some(route) = &ctx.route_cache else {
            return Ok(());
        };
        let req = session.req_header();
        if policy::bypass_reason(req, route).is_some() {
            return Ok(());
        }
        ctx.client_no_cache = policy::client_wants_revalidation(req);
        let settings = &ctx.live.config.cache;
        let c = cache(settings);
        session.cache.enable(
            c.store,
            Some(c.eviction),
            Some(c.predictor),
            Some(c.lock),
            Some({
                let mut o = CacheOptionOverrides::default();
                o.wait_timeout = Some(settings.lock_timeout.get());
                o
            }),
        );
        session
            .cache
            .set_max_file_size_bytes(c.max_object_size.load(std::sync::atomic::Ordering::Relaxed));
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        // Built already when the fast path looked for a fresh hit.
        if let Some(key) = ctx.cache_key.take() {
            return Ok(key);
        }
        let settings = ctx
            .route_cache
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "cache without a route"))?;
        Ok(cache_key::for_request(
            session.req_header(),
            &ctx.host,
            &settings.key,
        ))
    }

    async fn cache_hit_filter(
        &self,
        _session: &mut Session,
        _meta: &CacheMeta,
        _hit: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<ForcedFreshness>> {
        // RFC 9111 section 5.2.1.4: a request's no-cache means validate with the origin first.
        if ctx.client_no_cache && is_fresh {
            return Ok(Some(ForcedFreshness::ForceExpired));
        }
        Ok(None)
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        let Some(route) = &ctx.route_cache else {
            return Ok(RespCacheable::Uncacheable(NoCacheReason::NeverEnabled));
        };
        let authorization = session
            .req_header()
            .headers
            .contains_key(http::header::AUTHORIZATION);
        let settings = &ctx.live.config.cache;
        Ok(match &ctx.not_modified {
            // RFC 9111 section 4.3.4: a 304 updates every stored field it carries (Pingora
            // merges only the caching ones); the new fields also decide the new freshness.
            Some(fields) => {
                let mut updated = resp.clone();
                policy::apply_not_modified(&mut updated, fields);
                policy::response_cacheable(&updated, authorization, route, settings)
            }
            None => policy::response_cacheable(resp, authorization, route, settings),
        })
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        _ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        let mut fields: Vec<String> = meta
            .headers()
            .get_all(http::header::VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|f| f.trim().to_ascii_lowercase())
            .filter(|f| !f.is_empty())
            .collect();
        if fields.is_empty() {
            return None;
        }
        fields.sort_unstable();
        fields.dedup();
        let mut variance = VarianceBuilder::new();
        for f in &fields {
            let value: Vec<u8> = req
                .headers
                .get_all(f.as_str())
                .iter()
                .flat_map(|v| v.as_bytes().iter().copied().chain(*b","))
                .collect();
            variance.add_owned_name_value(f.clone(), value);
        }
        variance.finalize()
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        // Pingora has already checked the object's stale-while-revalidate / stale-if-error
        // window (from the origin, or the route's stale_if_error): within it, serve stale while
        // revalidating, and when the origin fails.
        error.is_none_or(|e| e.esource() == &ErrorSource::Upstream)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.cache = Outcome::from_phase(
            session.cache.phase(),
            ctx.fwd_status.is_some(),
            ctx.client_no_cache,
        );
        if matches!(ctx.cache, Outcome::Miss { stored: false, .. })
            && session.cache.predicted_uncacheable_reason().is_some()
        {
            // Known uncacheable: it went straight to the origin, skipping the lock.
            ctx.cache = Outcome::Pass;
        }
        if let (Outcome::Miss { vary, .. }, Some(key)) =
            (&mut ctx.cache, session.cache.maybe_cache_key())
        {
            *vary = cache(&ctx.live.config.cache).store.has_other_variants(key);
        }
        let fresh_until = session.cache.maybe_cache_meta().map(|m| m.fresh_until());
        client_cache_fields(resp, ctx, fresh_until)?;
        let req = session.req_header();
        if !req.method.is_safe() && resp.status.as_u16() < 400 {
            invalidate_after_unsafe(req, resp, &ctx.host, ctx.route_cache.as_deref(), &ctx.live);
        }
        Ok(())
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
        // After a pooled connection turned out closed (or too old for this request), the same
        // server is asked again, on a new connection: the server is fine, the connection was not.
        let fresh = std::mem::take(&mut ctx.fresh_connection);
        let idx = match ctx.tried.last() {
            Some(&last) if fresh => last,
            _ => {
                let Some(idx) = origin.pick(key.as_bytes(), &ctx.tried) else {
                    return Error::e_explain(
                        ErrorType::ConnectRefused,
                        format!("origin {}: every server was tried", origin.name),
                    );
                };
                ctx.tried.push(idx);
                idx
            }
        };
        let server = &origin.servers[idx];
        Ok(server.peer(origin.idle_limit(server), fresh))
    }

    async fn connected_to_upstream(
        &self,
        session: &mut Session,
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
        let timing = digest
            .and_then(|d| d.timing_digest.first())
            .and_then(|t| t.as_ref());
        let established = timing.map_or(SystemTime::UNIX_EPOCH, |t| t.established_ts);
        let conn = self.edge.ledger.record(fd, established);
        if reused && !replayable(session) {
            // A request nobody may retry never rides a pooled connection that has been idle
            // past the current limit (it was pooled under an older, longer one): it takes
            // another connection instead. Nothing was sent, so this refusal is always safe.
            let limit = origin.idle_limit(server);
            if conn.idle_age.is_some_and(|age| age > limit) {
                ctx.fresh_connection = true;
                origin.metrics.closed_stale_for_unsafe.inc();
                let mut e = Error::explain(
                    STALE_POOLED_CONNECTION,
                    format!(
                        "pooled connection idle {:?} > {limit:?}",
                        conn.idle_age.unwrap_or_default()
                    ),
                );
                e.set_retry(true);
                return Err(e);
            }
        }
        ctx.reused = Some(reused);
        if reused {
            origin.metrics.reused.inc();
        } else {
            origin.metrics.new.inc();
            ctx.connect_time = timing.and_then(|t| t.establishment_duration);
            if let Some(t) = ctx.connect_time {
                origin.metrics.connect.observe(t.as_secs_f64());
            }
        }
        let in_flight = InFlight::new(server.state.clone());
        let ka = &origin.config.keepalive;
        ctx.close = close_reason(
            origin.pooling_off(),
            &conn,
            ka.max_requests,
            in_flight.concurrency,
            ka.pool_size,
        );
        ctx.upstream_conn = Some((fd, established, conn));
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
                        CloseReason::OriginMax => origin.metrics.closed_origin_max.inc(),
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
        session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if upstream.status.is_informational() {
            return Ok(());
        }
        ctx.fwd_status = Some(upstream.status.as_u16());
        self.learn_from_response(upstream, ctx);
        if upstream.status == 304 && session.cache.enabled() {
            ctx.not_modified = Some(upstream.headers.clone());
        }
        if let (Some(sent), Some(origin)) = (ctx.sent_at, &ctx.origin) {
            let ttfb = sent.elapsed();
            ctx.ttfb = Some(ttfb);
            // Why the origin was asked: see metrics::TTFB_CACHE_LABELS.
            let kind = match session.cache.phase() {
                CachePhase::Miss => 0,
                CachePhase::Stale | CachePhase::StaleUpdating | CachePhase::Expired => {
                    if upstream.status == 304 {
                        2
                    } else {
                        1
                    }
                }
                _ => 3,
            };
            let conn = (ctx.reused == Some(true)) as usize;
            origin.metrics.ttfb[conn][kind].observe(ttfb.as_secs_f64());
        }
        if let (Some(ttfb), Some(origin), Some(&idx)) = (ctx.ttfb, &ctx.origin, ctx.tried.last()) {
            origin.servers[idx].state.idle.ttfb(ttfb);
        }
        // Hop-by-hop fields of the upstream connection are not the client's business.
        upstream.remove_header("keep-alive");
        upstream.remove_header("proxy-connection");
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if end_of_stream {
            // The origin has sent its last byte: its idle timer runs from about now, and the
            // connection goes back to the pool.
            if let Some((fd, established, _)) = ctx.upstream_conn.take() {
                self.edge.ledger.idle(fd, established);
            }
        }
        Ok(None)
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
        if e.etype() == &STALE_POOLED_CONNECTION {
            // Refused before sending anything (see connected_to_upstream): retry is safe.
            return e;
        }
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
        self.note_lost_connection(session, &e, ctx, client_reused);
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
        if let Some((fd, established, _)) = ctx.upstream_conn.take() {
            // A response without a body end seen above: idle from now at the latest.
            self.edge.ledger.idle(fd, established);
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let origin = ctx.origin.as_ref().map_or("-", |o| o.name.as_str());
        let route = ctx.route.as_deref().unwrap_or("-");
        let cache = ctx.cache.label();
        let bytes = session.body_bytes_sent();
        let total = ctx.started.elapsed();
        count_request(route, ctx.origin.as_deref(), status, cache, bytes, total);
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

/// Client keep-alive, as nginx's keepalive_timeout / keepalive_requests, in Pingora's terms:
/// the idle timeout in whole seconds (None: no keep-alive), and the requests the connection may
/// still carry after this one. Pingora carries `remaining` from request to request (one less
/// each time) and closes at zero; None means this is the connection's first request.
pub(crate) fn client_keepalive(
    client: &ClientSettings,
    remaining: Option<u32>,
) -> (Option<u64>, u32) {
    let idle = client.keepalive_timeout.get();
    // Whole seconds: Pingora's unit. Some(0) would mean "forever", so round up.
    let idle = (!idle.is_zero()).then(|| idle.as_secs().max(1));
    let remaining = remaining.unwrap_or(client.keepalive_requests.saturating_sub(1));
    (idle, remaining)
}

/// Counts a finished request in the request, byte and duration metrics (the proxy's requests
/// and the express lane's alike).
pub(crate) fn count_request(
    route: &str,
    origin: Option<&Origin>,
    status: u16,
    cache: &str,
    bytes: usize,
    total: Duration,
) {
    let class = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    };
    let origin_name = origin.map_or("-", |o| o.name.as_str());
    let m = metrics();
    m.requests
        .with_label_values(&[route, origin_name, class, cache])
        .inc();
    m.response_bytes
        .with_label_values(&[origin_name, cache])
        .inc_by(bytes as u64);
    if let Some(o) = origin {
        o.metrics.duration.observe(total.as_secs_f64());
    }
}

/// What the client is told about the cache (`Cache-Status`), less the fields meant for this
/// cache alone. `fresh_until`: of the stored response involved, if any.
fn client_cache_fields(
    resp: &mut ResponseHeader,
    ctx: &RequestCtx,
    fresh_until: Option<SystemTime>,
) -> Result<()> {
    if ctx.route_cache.is_some() {
        let value = ctx.cache.header(fresh_until, ctx.fwd_status);
        resp.insert_header("cache-status", value)?;
    }
    resp.remove_header(ctx.live.config.cache.targeted_field.as_str());
    resp.remove_header(crate::cache::SURROGATE_KEY);
    resp.remove_header(crate::cache::CACHE_TAG);
    Ok(())
}

/// RFC 9111 section 4.4: a successful unsafe request invalidates the stored responses for its
/// URI, and for `Location` and `Content-Location` when they are on the same host.
fn invalidate_after_unsafe(
    req: &RequestHeader,
    resp: &ResponseHeader,
    host: &str,
    route: Option<&RouteCache>,
    live: &Live,
) {
    let Some(route) = route else { return };
    let c = cache(&live.config.cache);
    let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut removed = c
        .store
        .purge_url(&cache_key::url(host, target, route.key.query));
    for field in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
        let Some(v) = resp.headers.get(&field).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let same_host_target = match v
            .strip_prefix("http://")
            .or_else(|| v.strip_prefix("https://"))
        {
            Some(rest) => {
                let (h, t) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                (normalize_host(h) == host).then_some(if t.is_empty() { "/" } else { t })
            }
            None => v.starts_with('/').then_some(v),
        };
        if let Some(t) = same_host_target {
            removed += c.store.purge_url(&cache_key::url(host, t, route.key.query));
        }
    }
    if removed > 0 {
        metrics()
            .cache_purged
            .with_label_values(&["invalidation"])
            .inc_by(removed as u64);
    }
}

impl EdgeProxy {
    /// Answers with a fresh stored response (see `cache::fresh`), as pingora-cache's hit path
    /// would have.
    async fn serve_fresh_hit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        hit: FreshHit,
    ) -> Result<()> {
        ctx.cache = Outcome::Hit;
        let mut header = fresh::response_header(&hit);
        client_cache_fields(&mut header, ctx, Some(hit.fresh_until))?;
        if session.req_header().method == http::Method::HEAD {
            return session.write_response_header(Box::new(header), true).await;
        }
        session
            .write_response_header(Box::new(header), false)
            .await?;
        let last = hit.body.len().saturating_sub(1);
        if hit.body.is_empty() {
            return session.write_response_body(None, true).await;
        }
        for (i, chunk) in hit.body.iter().enumerate() {
            session
                .write_response_body(Some(chunk.clone()), i == last)
                .await?;
        }
        Ok(())
    }

    /// What the origin's response says about its connection: `Keep-Alive: timeout=, max=` and
    /// `Connection: close`.
    fn learn_from_response(&self, resp: &ResponseHeader, ctx: &RequestCtx) {
        let (Some(origin), Some(&idx)) = (&ctx.origin, ctx.tried.last()) else {
            return;
        };
        if let Some(ka) = resp.headers.get("keep-alive").and_then(|v| v.to_str().ok()) {
            let (timeout, max) = keepalive::parse_keep_alive(ka);
            if let Some(t) = timeout {
                origin.servers[idx].state.idle.header_said(t);
            }
            if let (Some(max), Some((fd, established, conn))) = (max, ctx.upstream_conn) {
                self.edge
                    .ledger
                    .origin_max(fd, established, conn.request_no, max);
            }
        }
        let closing = resp
            .headers
            .get(http::header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("close"));
        if closing && ctx.close.is_none() {
            origin.metrics.closed_by_origin.inc();
        }
    }

    /// A request failed on a pooled connection before any response: the origin had closed it
    /// while it was idle. Learn from its idle age, and count the request as retried (Pingora
    /// retries idempotent requests; the retry goes on a new connection) or lost.
    fn note_lost_connection(
        &self,
        session: &Session,
        e: &Error,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) {
        // Only the origin's side: a client that goes away mid-request is not the origin's close.
        let lost_connection = e.esource() == &ErrorSource::Upstream
            && matches!(
                e.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            );
        if !client_reused || !lost_connection || ctx.fwd_status.is_some() {
            return;
        }
        let (Some(origin), Some(&idx)) = (&ctx.origin, ctx.tried.last()) else {
            return;
        };
        let server = &origin.servers[idx];
        origin.metrics.closed_origin_idle.inc();
        if let Some(age) = ctx.upstream_conn.and_then(|(_, _, c)| c.idle_age) {
            if origin.config.keepalive.learn {
                server.state.idle.found_closed_at(age);
                server.state.idle.request_probe();
            }
            warn!(
                "origin {} server {}: pooled connection idle for {:?} was closed by the origin; {} {}",
                origin.name,
                server.address,
                age,
                session.req_header().method,
                if e.retry() { "retried on a new connection" } else { "failed (not retryable)" }
            );
        }
        if e.retry() {
            ctx.fresh_connection = true;
            origin.metrics.lost_connection_retried.inc();
        } else {
            origin.metrics.lost_connection_failed.inc();
        }
    }
}

/// The error by which a non-retryable request refuses a pooled connection idle too long.
const STALE_POOLED_CONNECTION: ErrorType = ErrorType::Custom("stale pooled connection");

/// Whether the request may be sent again if its connection fails: an idempotent method and a
/// body Pingora can still replay.
fn replayable(session: &Session) -> bool {
    session.req_header().method.is_idempotent() && !session.as_ref().retry_buffer_truncated()
}
