//! The express lane for HTTP/2 streams: a plain fresh hit answered on its stream before
//! Pingora's proxy session exists, as the lane does for HTTP/1 connections.
//!
//! Why: with h2, Pingora's h2 server has already read and checked the request; what a hit then
//! costs beyond it is the proxy session (its context, phases and cache state, built and torn down
//! per stream). A bare Pingora `HttpServerApp` answering 1 KiB over h2 ran at 0.89x nginx's
//! requests per CPU-second where the same answer from a proxy's `request_filter` ran at 0.80x
//! (`MODE=app` in bench/tls-backends, BENCHMARKS.md).
//!
//! The rule is the proxy's own, in the same order as its `request_filter`: the guard's checks,
//! no loop mark, a route, `cache::hit::lookup` (a fresh object in memory, a request the hit rule
//! lets through), and no request body. Anything else goes to the proxy untouched, which then
//! decides (and refuses) exactly as it would have; the head sent is `HitHead`'s, as the proxy's
//! fresh-hit path sends it.

use std::time::Instant;

use pingora::apps::{HttpServerApp, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;

use super::{EdgeApp, LaneHit};
use crate::cache::hit::{self, HitHead};
use crate::cache::key::Scheme;
use crate::cache::store::FreshHit;
use crate::cluster::loops;
use crate::guard;
use crate::host::{normalize_host, request_host};
use crate::origin::router::Route;
use crate::served::Protocol;
use crate::state::Live;

impl EdgeApp {
    /// Answers a stream's request if it is a plain fresh hit, else hands it to the proxy.
    pub(super) async fn h2_stream(
        &self,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let started = Instant::now();
        let live = self.edge.snapshot();
        let Some((hit, route, scheme)) = self.h2_plan(&mut session, &live) else {
            return self.proxy.process_new_http(session, shutdown).await;
        };
        let head = HitHead {
            hit: &hit,
            targeted: &live.config.cache.targeted_field,
            name: &self.edge.cluster.cache_name,
        }
        .response_header();
        let status = head.status.as_u16();
        let body = match session.req_header().method == http::Method::HEAD {
            true => &[][..],
            false => &hit.body[..],
        };
        session.set_write_timeout(Some(live.config.client.send_timeout.get()));
        // Counted before the client can see the answer (as the HTTP/1 lane does).
        self.edge.metrics.client.express_hits.inc();
        let mut written = session.write_response_header(Box::new(head)).await;
        for (i, chunk) in body.iter().enumerate() {
            if written.is_err() {
                break;
            }
            let last = i + 1 == body.len();
            written = session.write_response_body(chunk.clone(), last).await;
        }
        self.h2_record(&session, &live, route, scheme, status, started, &written);
        if written.is_ok() {
            // Ends the stream if the body did not (HEAD, an empty body).
            let _ = session.finish().await;
        }
        None
    }

    /// The hit to send on this stream, with its route and the scheme its key was built with;
    /// None when the proxy is to take the request.
    fn h2_plan<'l>(
        &self,
        session: &mut ServerSession,
        live: &'l Live,
    ) -> Option<(FreshHit, &'l Route, Scheme)> {
        if !live.config.cache.express_lane || !session.is_body_empty() {
            return None;
        }
        let req = session.req_header();
        guard::check(req, &live.limits).ok()?;
        if let Some(node) = &self.edge.cluster.loop_mark {
            if loops::came_through(req, node) {
                return None;
            }
        }
        let host = normalize_host(request_host(req)?);
        let route = live.router.route(&host, req.uri.path())?;
        let scheme = live.scheme_of(session);
        let store = self.edge.cache.store;
        let hit = hit::lookup(req, scheme, &host, &route.cache, store).hit?;
        Some((hit, route, scheme))
    }

    /// Counts the hit and writes its access-log line.
    #[allow(clippy::too_many_arguments)]
    fn h2_record(
        &self,
        session: &ServerSession,
        live: &Live,
        route: &Route,
        scheme: Scheme,
        status: u16,
        started: Instant,
        written: &pingora::Result<()>,
    ) {
        let req = session.req_header();
        LaneHit {
            client: session.client_addr().map(|c| c as &dyn std::fmt::Display),
            method: req.method.as_str(),
            host: request_host(req).unwrap_or("-"),
            path: &req.uri,
            status,
            bytes: session.body_bytes_sent(),
            route: &route.name,
            origin: live.origins.get(&route.origin),
            protocol: Protocol::of(req.version),
            scheme,
            started,
            error: written.as_ref().err().map(|e| e.to_string()),
        }
        .record(&self.edge, live);
    }
}
