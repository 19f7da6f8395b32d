//! The `ProxyHttp` implementation: the request's path through Pingora's phases, in the order
//! Pingora calls them. Each phase hands its decision to the module that owns it and keeps what
//! later phases need in the [`RequestCtx`]:
//!
//! | phase | decides | owner |
//! |---|---|---|
//! | `early_request_filter` | client keep-alive | `client` |
//! | `request_filter` | refuse, route, answer a fresh hit | `guard`, `origin::router`, `cache::hit` |
//! | `request_cache_filter` .. `should_serve_stale` | cache lookup, key, variant, stale; a stored part answers only ranges inside it | `cache`, `cache::partial` |
//! | `upstream_peer` | which server, which connection | `origin` |
//! | `connected_to_upstream` | keep or close the connection after this request | `origin::reuse` |
//! | `upstream_request_filter` | what the origin receives (the client's range, with `ranges: forward`) | `forwarded`, `cache::partial` |
//! | `request_body_filter` | the body's size limit as it streams | `guard` |
//! | `upstream_response_filter` | what is learned from the origin; `Date` on receipt | `origin`, `upstream` |
//! | `response_cache_filter` | whether and how long to store | `cache::policy`, `cache::partial` |
//! | `response_filter` | what the client is told about the cache | `cache::status`, `cache::invalidate` |
//! | `fail_to_connect`, `error_while_proxy` | retry, passive health | `origin` |
//! | `fail_to_proxy` | the error's status | `errors` |
//! | `logging` | the request's record | `served` |
//!
//! The express lane (`crate::express`) answers plain fresh hits before any of this runs, and
//! hands every other request here with what it already found ([`Handoff`]).
//!
//! Over 600 lines on purpose: every phase Pingora calls, in the order it calls them, in one
//! file that reads as the request's path; each phase is short and hands its decision to the
//! module named in the table.

mod answer;
mod ctx;
mod errors;
mod forwarded;
mod upstream;

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::HashBinary;
use pingora::cache::{
    CacheKey, CacheMeta, CacheOptionOverrides, ForcedFreshness, HitHandler, NoCacheReason,
    RespCacheable,
};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, RangeType};
use pingora::{ErrorSource, ErrorType};

use crate::cache::hit;
use crate::cache::key::{self as cache_key, Scheme};
use crate::cache::request::ClientDirectives;
use crate::cache::status::Outcome;
use crate::cache::store::FillStart;
use crate::cache::{invalidate, partial, policy, vary};
use crate::client::{self, ClientConnection};
use crate::cluster::loops;
use crate::config::RangeMisses;
use crate::guard;
use crate::host::{normalize_host, request_host};
use crate::origin::reuse::{close_reason, CloseReason};
use crate::origin::InFlight;
use crate::state::Edge;
pub(crate) use ctx::Handoff;
pub use ctx::RequestCtx;
use ctx::{Attempt, Connection, Routed};
use errors::{error_text, respond_text, status_for, STALE_POOLED_CONNECTION};
use upstream::{
    choose_server, count_connection, date_on_receipt, next_server_may_answer, replayable,
    strip_hop_by_hop, ttfb_cache_kind,
};

/// Pingora's proxy around [`EdgeProxy`], with the connector for warm TLS connections.
pub type EdgeHttpProxy = pingora::proxy::HttpProxy<EdgeProxy, crate::origin::warm::tls::WarmTls>;

pub struct EdgeProxy {
    pub edge: Arc<Edge>,
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.edge.snapshot())
    }

    /// A keep-alive connection's next request: take back what the previous one left (the
    /// client connection's count, or the express lane's handoff).
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
                        ctx.cache.looked_up = h.looked_up;
                    }
                }
            }
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.scheme = ctx.live.scheme_of(session);
        // A client that stops reading the response is dropped after this long without progress;
        // one that stops sending its body, after this long without a byte (HTTP/1; h2 streams
        // are read by Pingora's h2 server).
        session.set_write_timeout(Some(ctx.live.config.client.send_timeout.get()));
        session.set_read_timeout(Some(ctx.live.limits.body_timeout));
        // Pingora has applied the client's own choice by now: `Connection: close`, or HTTP/1.0
        // without `Connection: keep-alive`, left keep-alive off, and off it stays.
        if session.get_keepalive().is_some() {
            let (idle, remaining) = client::keepalive(
                &ctx.live.config.client,
                session.get_keepalive_reuses_remaining(),
            );
            session.set_keepalive(idle);
            session.set_keepalive_reuses_remaining(Some(remaining));
        }
        // An h2 request is a stream of a connection Pingora does not show the phases; counted
        // as connections they would be one per request.
        if !session.is_http2() {
            let m = &self.edge.metrics;
            ctx.conn
                .get_or_insert_with(|| Arc::new(ClientConnection::open(m)))
                .request();
        }
        Ok(())
    }

    /// Refuses hostile requests, routes, and answers fresh hits from the store.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        let checked = guard::check(req, &ctx.live.limits).and_then(|()| {
            guard::check_body_size(guard::content_length(req).unwrap_or(0), &ctx.live.limits)
        });
        let checked = checked.and_then(|()| {
            // A miss that came back to this edge through a cycle of tiers: not sent round again.
            match &self.edge.cluster.loop_mark {
                Some(node) if loops::came_through(req, node) => Err(loops::LOOP),
                _ => Ok(()),
            }
        });
        if let Err(r) = checked {
            ctx.refused = Some(r.reason);
            self.edge.metrics.client.refused(r.reason);
            respond_text(session, r.status, &format!("refused: {}", r.reason), false).await?;
            return Ok(true);
        }
        let host = normalize_host(request_host(req).unwrap_or_default());
        let scheme = ctx.scheme;
        let Some(route) = ctx.live.router.route(&host, req.uri.path()) else {
            ctx.refused = Some("no_route");
            let msg = format!("no route for host \"{host}\"");
            respond_text(session, 404, &msg, true).await?;
            return Ok(true);
        };
        let found = match ctx.cache.looked_up.take() {
            // The express lane built this key and found no fresh hit a moment ago.
            Some(key) => hit::Lookup {
                hit: None,
                key: Some(key),
            },
            None => hit::lookup(req, scheme, &host, &route.cache, self.edge.cache.store),
        };
        ctx.routed = Some(Routed {
            route: route.name.clone(),
            origin: ctx.live.origins.get(&route.origin).cloned(),
            cache: route.cache.clone(),
            host,
            scheme,
        });
        ctx.cache.key = found.key;
        match found.hit {
            Some(hit) => {
                self.serve_fresh_hit(session, ctx, hit).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let Some(route) = ctx.route_cache() else {
            return Ok(());
        };
        let req = session.req_header();
        if policy::bypass_reason(req, route).is_some() {
            return Ok(());
        }
        ctx.cache.client = ClientDirectives::of(req);
        let c = &self.edge.cache;
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(ctx.live.config.cache.lock_timeout.get());
        session.cache.enable(
            c.store,
            // The store admits and evicts itself (see `Store::admit`).
            None,
            Some(c.predictor),
            Some(c.lock),
            Some(overrides),
        );
        session.cache.set_max_file_size_bytes(c.max_object_size());
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        // Built already when the fresh-hit lookup looked for it.
        if let Some(key) = ctx.cache.key.take() {
            return Ok(key);
        }
        let routed = ctx
            .routed
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "cache without a route"))?;
        Ok(cache_key::for_request(
            session.req_header(),
            routed.scheme,
            &routed.host,
            &routed.cache.key,
        ))
    }

    /// A stored object was found: the client's directives may force it stale or fresh
    /// (`cache::request`).
    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        hit: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<ForcedFreshness>> {
        let forced = ctx.cache.client.on_hit(
            meta.headers(),
            &ctx.live.config.cache,
            is_fresh,
            meta.fresh_until(),
            SystemTime::now(),
        );
        ctx.cache.found_stale = !is_fresh && forced != Some(ForcedFreshness::ForceFresh);
        // A stored part answers only a range inside it; anything else fetches again.
        if !partial::may_answer(session.req_header(), meta.response_header(), hit.can_seek()) {
            ctx.cache.found_stale = false;
            return Ok(Some(ForcedFreshness::ForceMiss));
        }
        Ok(forced)
    }

    /// The range a hit answers: from a stored part (`cache::partial`), or Pingora's rule for a
    /// whole object (one range or several, at most 200).
    fn range_header_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> RangeType {
        if resp.status == http::StatusCode::PARTIAL_CONTENT {
            return partial::answer(session.req_header(), resp);
        }
        pingora::proxy::range_header_filter(session.req_header(), resp, Some(200))
    }

    /// The request is about to go to the origin (a miss, or a stale object to refresh): a
    /// client that asked for `only-if-cached` gets `504` instead (RFC 9111 section 5.2.1.7).
    async fn proxy_upstream_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        if !ctx.cache.client.only_if_cached {
            return Ok(true);
        }
        let keepalive = session.is_body_empty();
        respond_text(session, 504, "not in cache (only-if-cached)", keepalive).await?;
        Ok(false)
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        _ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        vary::variance(meta, req)
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

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // After a pooled connection turned out closed (or too old for this request), the same
        // server is asked again, on a new connection: the server is fine, the connection was not.
        let fresh = std::mem::take(&mut ctx.fresh_connection);
        let (origin, idx) = choose_server(ctx, session.req_header(), fresh)?;
        ctx.attempt = Some(Attempt::new(idx));
        let server = &origin.servers[idx];
        if origin.config.keepalive.warm > 0 {
            server.state.warm.touch();
        }
        Ok(server.peer(
            origin.idle_limit(server, self.edge.sched_delay.get()),
            fresh,
        ))
    }

    /// The attempt has its connection: counted, and judged (kept after the response, or closed
    /// by a limit; refused when it idled too long for a request nobody may retry).
    async fn connected_to_upstream(
        &self,
        session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        digest: Option<&Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some((origin, server)) = ctx.upstream().map(|(o, s)| (o.clone(), s.clone())) else {
            return Ok(());
        };
        server.health().connect_succeeded();
        let timing = digest
            .and_then(|d| d.timing_digest.first())
            .and_then(|t| t.as_ref());
        let established = timing.map_or(SystemTime::UNIX_EPOCH, |t| t.established_ts);
        let conn = self.edge.ledger.take(fd, established);
        if reused && !replayable(session) {
            self.refuse_if_idle_too_long(&origin, &server, &conn, fd, ctx)?;
        }
        let Some(attempt) = ctx.attempt.as_mut() else {
            return Ok(());
        };
        count_connection(&origin, attempt, reused, digest);
        let in_flight = InFlight::new(server.state.clone());
        let ka = &origin.config.keepalive;
        attempt.close = close_reason(
            origin.pooling_off(),
            &conn.usage,
            ka.max_requests,
            in_flight.concurrency,
            ka.pool_size,
        );
        attempt.upstream = Some(conn);
        attempt.in_flight = Some(in_flight);
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let scheme = ctx.routed.as_ref().map_or(Scheme::Http, |r| r.scheme);
        // Read before the request goes out (again, on a retry: its response is the one stored).
        ctx.cache.purge_epoch = Some(self.edge.cache.store.purge_epoch());
        let origin = ctx.origin().cloned();
        if let (Some(origin), Some(attempt)) = (origin, ctx.attempt.as_mut()) {
            if let Some(reason) = attempt.close {
                match reason {
                    CloseReason::MaxRequests => origin.metrics.closed_max_requests.inc(),
                    CloseReason::PoolFull => origin.metrics.closed_pool_full.inc(),
                    CloseReason::PoolingOff => origin.metrics.closed_pooling_off.inc(),
                    CloseReason::OriginMax => origin.metrics.closed_origin_max.inc(),
                }
            }
            let close = attempt.close.is_some();
            let mark = self.edge.cluster.loop_mark.as_deref();
            forwarded::prepare(upstream, &origin, close, client_ip, scheme, mark)?;
            attempt.sent_at = Some(Instant::now());
        }
        // `cache.ranges: forward`: a range request with nothing stored asks for its range.
        let forward = ctx.route_cache().map(|c| c.ranges) == Some(RangeMisses::Forward);
        if forward && session.cache.enabled() && session.cache.maybe_cache_meta().is_none() {
            ctx.cache.range_forwarded = partial::forward_range(session.req_header(), upstream);
        }
        Ok(())
    }

    /// Each piece of the request body on its way upstream (the part the express lane read
    /// ahead included): counted against `client.max_body_size`, for chunked bodies and h2
    /// streams, whose size no header announced. Past the limit the request fails: `413` if the
    /// origin has not answered yet, and the origin sees an incomplete request, never a
    /// complete one.
    /// (Pingora counts the body's bytes as it reads them from the client, once, whatever
    /// retries send again; the refusal is counted and answered by `fail_to_proxy`.)
    async fn request_body_filter(
        &self,
        session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let read = session.body_bytes_read() as u64;
        match guard::check_body_size(read, &ctx.live.limits) {
            Ok(()) => Ok(()),
            Err(_) => Error::e_explain(errors::BODY_TOO_LARGE, format!("{read} bytes read")),
        }
    }

    /// The origin's response header: its time to first byte, and what it says about its
    /// connection.
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
        if let Some((origin, server)) = ctx.upstream().map(|(o, s)| (o.clone(), s.clone())) {
            let attempt = ctx.attempt.as_mut().expect("upstream() has an attempt");
            origin.learn_from_response(
                &server,
                upstream,
                attempt.upstream.as_ref(),
                &self.edge.ledger,
                attempt.close.is_some(),
            );
            if let Some(sent) = attempt.sent_at {
                let ttfb = sent.elapsed();
                attempt.ttfb = Some(ttfb);
                let kind = ttfb_cache_kind(session.cache.phase(), upstream.status.as_u16());
                let conn = attempt.connection.unwrap_or(Connection::New) as usize;
                origin.metrics.ttfb[conn][kind].observe(ttfb.as_secs_f64());
                server.state.idle.ttfb(ttfb);
            }
        }
        // Hop-by-hop fields of the upstream connection are not the client's business, nor
        // the cache's.
        strip_hop_by_hop(upstream);
        date_on_receipt(upstream);
        // A 304's fields update the stored response: its Date too (given on receipt if the
        // origin sent none), never the connection's fields.
        if upstream.status == 304 && session.cache.enabled() {
            ctx.cache.not_modified = Some(upstream.headers.clone());
        }
        Ok(())
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        let Some(route) = ctx.route_cache() else {
            return Ok(RespCacheable::Uncacheable(NoCacheReason::NeverEnabled));
        };
        let authorization = session
            .req_header()
            .headers
            .contains_key(http::header::AUTHORIZATION);
        let settings = &ctx.live.config.cache;
        if ctx.cache.not_modified.is_none() && partial::refused(resp, ctx.cache.range_forwarded) {
            return Ok(RespCacheable::Uncacheable(NoCacheReason::Custom(
                "not a whole object nor a part of one",
            )));
        }
        let mut decision = match &ctx.cache.not_modified {
            // RFC 9111 section 4.3.4: a 304 updates every stored field it carries (Pingora
            // merges only the caching ones); the new fields also decide the new freshness.
            Some(fields) => {
                let mut updated = resp.clone();
                policy::apply_not_modified(&mut updated, fields);
                policy::response_cacheable(&updated, authorization, route, settings)
            }
            None => policy::response_cacheable(resp, authorization, route, settings),
        };
        // Stored without its cookies (cache.store_set_cookie): this client still gets them.
        if matches!(decision, RespCacheable::Cacheable(_)) {
            ctx.cache.set_cookie = resp
                .headers
                .get_all(http::header::SET_COOKIE)
                .iter()
                .cloned()
                .collect();
        }
        // The store does not keep a response that a purge since its request went out covers.
        if let (RespCacheable::Cacheable(meta), Some(epoch)) =
            (&mut decision, ctx.cache.purge_epoch)
        {
            meta.extensions_mut().insert(FillStart(epoch));
        }
        Ok(decision)
    }

    /// What the client is told about the cache; what an unsafe request invalidated.
    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let c = &mut ctx.cache;
        c.outcome = Outcome::from_phase(
            session.cache.phase(),
            ctx.fwd_status.is_some(),
            c.client.revalidate,
            c.found_stale,
        );
        if matches!(c.outcome, Outcome::Miss { stored: false, .. })
            && session.cache.predicted_uncacheable_reason().is_some()
        {
            // Known uncacheable: it went straight to the origin, skipping the lock.
            c.outcome = Outcome::Pass;
        }
        if let (Outcome::Miss { vary, .. }, Some(key)) =
            (&mut c.outcome, session.cache.maybe_cache_key())
        {
            *vary = self.edge.cache.store.has_other_variants(key);
        }
        let fresh_until = session.cache.maybe_cache_meta().map(|m| m.fresh_until());
        self.client_cache_fields(resp, ctx, fresh_until)?;
        for cookie in std::mem::take(&mut ctx.cache.set_cookie) {
            resp.append_header(http::header::SET_COOKIE, cookie)?;
        }
        let req = session.req_header();
        if !req.method.is_safe() && resp.status.as_u16() < 400 {
            if let Some(routed) = &ctx.routed {
                let removed = invalidate::after_unsafe(
                    self.edge.cache.store,
                    req,
                    resp,
                    routed.scheme,
                    &routed.host,
                    routed.cache.key.query,
                );
                if removed > 0 {
                    let purged = &self.edge.metrics.cache.purged;
                    purged
                        .with_label_values(&["invalidation"])
                        .inc_by(removed as u64);
                }
            }
        }
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
            self.connection_idle(ctx);
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
        let Some((origin, server)) = ctx.upstream() else {
            return e;
        };
        origin.connect_failed(server, &e);
        // Retry on another server of the origin, bounded by `retries` (a shield tier's fallback
        // always); a connect failure means nothing was sent, so this is safe for every method.
        if ctx.may_try_another_server() {
            e.set_retry(true);
            origin.metrics.retries_connect_failure.inc();
        }
        e
    }

    /// Pingora's policy, kept as is (retry only idempotent requests whose body can be replayed,
    /// and only after a failure on a reused connection, a warm one counting as reused), plus a
    /// count of the retries it allows.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        // A warm connection waited idle like a pooled one, and can be found closed like one.
        let warm = ctx.attempt.as_ref().and_then(|a| a.connection) == Some(Connection::Warm);
        let client_reused = client_reused || warm;
        if e.etype() == &STALE_POOLED_CONNECTION {
            // Refused before sending anything (see connected_to_upstream): retry is safe.
            return e;
        }
        if !replayable(session) {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        if e.retry() {
            if let Some(origin) = ctx.origin() {
                origin.metrics.retries_connection_lost.inc();
            }
        }
        self.note_lost_connection(session, &e, ctx, client_reused);
        if !e.retry() && next_server_may_answer(session, &e, ctx) {
            // nginx's `proxy_next_upstream error`: a server that failed an idempotent request
            // before answering anything (it died, or reset the connection) is not asked again;
            // another server of the origin is, or a shield tier's fallback. The request may
            // have reached the failed one, which idempotent methods allow (RFC 9110 9.2.2).
            // Counted as a retry, not a connect failure: the connection was made. A server
            // that keeps dropping requests is taken out by the health checks.
            if let Some(origin) = ctx.origin() {
                origin.metrics.retries_next_server.inc();
            }
            e.set_retry(true);
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        // The client's own doing is counted and answered as the guard's refusals are.
        let (code, msg) = match errors::client_refusal(e) {
            Some(r) => {
                ctx.refused = Some(r.reason);
                self.edge.metrics.client.refused(r.reason);
                (r.status, format!("refused: {}", r.reason))
            }
            None => {
                let (code, reason) = status_for(e);
                (code, error_text(code, reason, ctx.origin_name()))
            }
        };
        if code > 0 && session.response_written().is_none() {
            if let Err(we) = respond_text(session, code, &msg, false).await {
                log::warn!("could not send the {code} error response: {we}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        // A response without a body end seen above: idle from now at the latest.
        self.connection_idle(ctx);
        if let Some(a) = ctx.attempt.as_mut() {
            a.in_flight = None;
        }
        self.record(session, e, ctx);
    }

    /// Hands the client connection on to the connection's next request.
    fn persist_connection_context(
        &self,
        _session: &Session,
        ctx: &RequestCtx,
    ) -> Option<Box<dyn Any + Send + Sync>> {
        ctx.conn
            .clone()
            .map(|c| Box::new(c) as Box<dyn Any + Send + Sync>)
    }
}
