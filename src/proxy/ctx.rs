//! What one request carries from phase to phase ([`RequestCtx`]), and what one attempt at an
//! origin server carries ([`Attempt`]): a retry on another server, or on a new connection to the
//! same one, starts a new attempt.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use pingora::cache::CacheKey;
use pingora::http::RequestHeader;

use crate::cache::request::ClientDirectives;

use crate::cache::key::Scheme;
use crate::cache::status::Outcome;
use crate::client::ClientConnection;
use crate::config::RouteCache;
use crate::origin::reuse::{CloseReason, UpstreamConn};
use crate::origin::{InFlight, Origin, Server};
use crate::state::Live;

pub struct RequestCtx {
    /// The config this request started with; it finishes on it, whatever reloads happen.
    pub live: Arc<Live>,
    pub started: Instant,
    /// The client connection, carried across its keep-alive requests.
    pub conn: Option<Arc<ClientConnection>>,
    /// Where the router sent the request; None until routed (or when refused).
    pub routed: Option<Routed>,
    /// Servers of the origin this request tried, in order.
    pub tried: Vec<usize>,
    /// The latest attempt at an origin server.
    pub attempt: Option<Attempt>,
    /// The next attempt must use a new connection (a pooled one was found closed, or was idle
    /// too long for a request nobody may retry).
    pub fresh_connection: bool,
    pub cache: CacheCtx,
    /// Status of the origin's response, when the origin was asked.
    pub fwd_status: Option<u16>,
    /// Why the edge refused the request itself (a guard reason, `no_route`).
    pub refused: Option<&'static str>,
    /// The scheme the client used (its connection is TLS or not), known from the start.
    pub scheme: Scheme,
}

/// The router's decision for a request.
pub struct Routed {
    pub route: Arc<str>,
    /// Present whenever the config is valid (routes name existing origins).
    pub origin: Option<Arc<Origin>>,
    pub cache: Arc<RouteCache>,
    /// The request's host, normalized.
    pub host: String,
    /// The scheme the client used (part of the cache key).
    pub scheme: Scheme,
}

/// The request's part in the cache.
#[derive(Default)]
pub struct CacheCtx {
    /// What the request's `Cache-Control` asks of the cache (read in `request_cache_filter`).
    pub client: ClientDirectives,
    /// The lookup found a stored object that was stale, so the origin was asked for a new one.
    pub found_stale: bool,
    /// Header fields of a 304 from the origin, to update the stored response with.
    pub not_modified: Option<http::HeaderMap>,
    /// The cache key, when the fresh-hit lookup built it (see `cache::hit`).
    pub key: Option<CacheKey>,
    /// The key the express lane already looked up without a fresh hit (see `Handoff`).
    pub looked_up: Option<CacheKey>,
    /// The store's purge epoch when the request last went to the origin: purges after it
    /// keep the response out of the cache (`store::FillStart`).
    pub purge_epoch: Option<u64>,
    pub outcome: Outcome,
    /// The origin's `Set-Cookie` fields of a response stored without them
    /// (`cache.store_set_cookie`): the client whose request fetched it still gets them.
    pub set_cookie: Vec<http::HeaderValue>,
    /// The miss went to the origin with the client's `Range` (`cache.ranges: forward`), so a
    /// `206` may be stored (`cache::partial`).
    pub range_forwarded: bool,
}

/// One attempt at an origin server.
pub struct Attempt {
    /// Index of the server in its origin.
    pub server: usize,
    /// The connection it went out on, until its response ended (the connection then idles).
    pub upstream: Option<UpstreamConn>,
    /// Holds one unit of the server's in-flight count while the attempt lasts.
    pub in_flight: Option<InFlight>,
    /// How it got its connection; None before it was connected.
    pub connection: Option<Connection>,
    /// When the attempt began (the server was picked): a connection established before this
    /// was ready when the request needed it.
    pub began: SystemTime,
    /// TCP connect time of a connection opened for this request.
    pub connect_time: Option<Duration>,
    pub sent_at: Option<Instant>,
    pub ttfb: Option<Duration>,
    /// Why the connection is not kept after this request, if it is not.
    pub close: Option<CloseReason>,
}

/// How an attempt got its upstream connection. The values index the `connection` label of
/// `edge_upstream_ttfb_seconds` (`metrics::TTFB_CONNECTION_LABELS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    /// Opened for this request: it waited for the handshake.
    New = 0,
    /// From Pingora's pool.
    Reused = 1,
    /// Opened ahead of need (`keepalive.warm`), first used by this request.
    Warm = 2,
}

impl Connection {
    pub fn label(self) -> &'static str {
        crate::metrics::TTFB_CONNECTION_LABELS[self as usize]
    }
}

impl Attempt {
    pub fn new(server: usize) -> Self {
        Attempt {
            server,
            upstream: None,
            in_flight: None,
            connection: None,
            began: SystemTime::now(),
            connect_time: None,
            sent_at: None,
            ttfb: None,
            close: None,
        }
    }
}

impl RequestCtx {
    pub fn new(live: Arc<Live>) -> Self {
        RequestCtx {
            live,
            started: Instant::now(),
            conn: None,
            routed: None,
            tried: Vec::new(),
            attempt: None,
            fresh_connection: false,
            cache: CacheCtx::default(),
            fwd_status: None,
            refused: None,
            scheme: Scheme::Http,
        }
    }

    pub fn origin(&self) -> Option<&Arc<Origin>> {
        self.routed.as_ref()?.origin.as_ref()
    }

    pub fn origin_name(&self) -> &str {
        self.origin().map_or("-", |o| o.name.as_str())
    }

    pub fn route_cache(&self) -> Option<&RouteCache> {
        self.routed.as_ref().map(|r| r.cache.as_ref())
    }

    /// The origin and the server of the current attempt.
    pub fn upstream(&self) -> Option<(&Arc<Origin>, &Arc<Server>)> {
        let origin = self.origin()?;
        Some((origin, origin.servers.get(self.attempt.as_ref()?.server)?))
    }

    pub fn server_address(&self) -> &str {
        self.upstream().map_or("-", |(_, s)| s.address.as_str())
    }

    /// The URL part of the request's cache key (`https://host/path?query` in the route's query
    /// form): what consistent hashing keys on, so an object has the same home on every edge.
    pub fn key_url(&self, req: &RequestHeader) -> String {
        let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
        match &self.routed {
            Some(r) => crate::cache::key::url(r.scheme, &r.host, target, r.cache.key.query),
            None => target.to_string(),
        }
    }

    /// The request goes on to another origin (a shield tier's fallback): its servers are
    /// numbered anew.
    pub fn switch_origin(&mut self, origin: Arc<Origin>) {
        if let Some(r) = self.routed.as_mut() {
            r.origin = Some(origin);
        }
        self.tried.clear();
    }

    /// Whether a failed attempt may be followed by one at another server: within the origin's
    /// `retries` while it has untried servers, or (a shield tier) at its fallback origin, which
    /// is always allowed: it is what the tier is configured to do when its servers fail.
    pub fn may_try_another_server(&self) -> bool {
        let Some(origin) = self.origin() else {
            return false;
        };
        let untried_left = self.tried.len() < origin.servers.len();
        (self.retry_budget_left(origin) && untried_left) || origin.fallback().is_some()
    }

    /// The first attempt at an origin and `retries` more.
    pub fn retry_budget_left(&self, origin: &Origin) -> bool {
        self.tried.len() <= origin.config.retries
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
