//! What the proxy itself answers the client from the cache (a fresh hit written from the store,
//! the cache's fields on every response: `Cache-Status`, less the fields meant for this cache
//! alone), and the record a finished request leaves.

use std::time::SystemTime;

use pingora::http::ResponseHeader;
use pingora::prelude::*;

use crate::host::request_host;
use crate::logging::AccessEntry;
use crate::served::{Protocol, Served};

use super::{EdgeProxy, RequestCtx};
use crate::cache::hit::{self, HitHead};
use crate::cache::status::{self, Outcome};
use crate::cache::store::FreshHit;

impl EdgeProxy {
    /// Answers with a fresh stored response (see `cache::hit`), as pingora-cache's hit path
    /// would have.
    pub(super) async fn serve_fresh_hit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        hit: FreshHit,
    ) -> Result<()> {
        ctx.cache.outcome = Outcome::Hit;
        let head = HitHead {
            hit: &hit,
            targeted: &ctx.live.config.cache.targeted_field,
            name: &self.edge.cluster.cache_name,
        }
        .response_header();
        if session.req_header().method == http::Method::HEAD {
            return session.write_response_header(Box::new(head), true).await;
        }
        session.write_response_header(Box::new(head), false).await?;
        if hit.body.is_empty() {
            return session.write_response_body(None, true).await;
        }
        let last = hit.body.len() - 1;
        for (i, chunk) in hit.body.iter().enumerate() {
            session
                .write_response_body(Some(chunk.clone()), i == last)
                .await?;
        }
        Ok(())
    }

    /// What the client is told about the cache (`Cache-Status`), less the fields meant for this
    /// cache alone. `fresh_until`: of the stored response involved, if any.
    pub(super) fn client_cache_fields(
        &self,
        resp: &mut ResponseHeader,
        ctx: &RequestCtx,
        fresh_until: Option<SystemTime>,
    ) -> Result<()> {
        if ctx.routed.is_some() {
            let name = &self.edge.cluster.cache_name;
            let ours = ctx.cache.outcome.header(name, fresh_until, ctx.fwd_status);
            // After the entries of the caches it came through (a shield tier's, an origin's
            // own CDN), stored with it or received with it.
            let upstream = resp
                .headers
                .get("cache-status")
                .and_then(|v| v.to_str().ok());
            let value = status::listed_after(upstream, ours);
            resp.insert_header("cache-status", value)?;
        }
        hit::strip_cache_only_fields(resp, &ctx.live.config.cache.targeted_field);
        Ok(())
    }

    /// The request's record: counted in the metrics and written to the access log.
    pub(super) fn record(&self, session: &Session, e: Option<&Error>, ctx: &RequestCtx) {
        let req = session.req_header();
        let client = session.client_addr();
        let error = e.map(|e| e.to_string());
        let attempt = ctx.attempt.as_ref();
        let served = Served {
            entry: AccessEntry {
                client: client.map(|c| c as &dyn std::fmt::Display),
                method: req.method.as_str(),
                host: request_host(req).unwrap_or("-"),
                path: &req.uri,
                status: session.response_written().map_or(0, |r| r.status.as_u16()),
                bytes: session.body_bytes_sent(),
                route: ctx.routed.as_ref().map_or("-", |r| &r.route),
                origin: ctx.origin_name(),
                server: ctx.server_address(),
                conn: attempt
                    .and_then(|a| a.connection)
                    .map_or("-", |c| c.label()),
                cache: ctx.cache.outcome.label(),
                connect: attempt.and_then(|a| a.connect_time),
                ttfb: attempt.and_then(|a| a.ttfb),
                total: ctx.started.elapsed(),
                tries: ctx.tried.len(),
                refused: ctx.refused,
                error,
            },
            origin: ctx.origin().map(|o| o.as_ref()),
            protocol: Protocol::of(req.version),
            scheme: ctx.scheme,
        };
        served.record(
            &self.edge.metrics,
            &self.edge.access_log,
            &ctx.live.config.log,
        );
    }
}
