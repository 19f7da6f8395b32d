//! The config schema: the types operators write in the YAML, each field with what it means and
//! its default.
//!
//! Defaults have one home: each struct's `impl Default`, which serde uses for missing fields
//! through `#[serde(default)]` on the struct. Three entries also have a field that must be
//! written (an origin's `servers`, a route's `origin`, a server's `address`); serde's
//! struct-level `default` cannot keep one field required, so they are read through a private
//! "as written" twin where that field is an `Option` (see [`OriginFields`]). `AdminSettings`
//! has no defaults at all. Checks serde cannot express are in `validate.rs`.
//!
//! The one place an operator's every key is defined with its meaning and default, read top to
//! bottom like `conf/edge.yaml`; an origin's keys are in [`origin`], the TLS listener and
//! origin types in `tls.rs`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::de::{Deserializer, Error as _};
use serde::Deserialize;

use super::tls::Listener;
use super::units::{Dur, Size};

mod cluster;
mod origin;
pub use cluster::*;
pub use origin::*;

/// A whole, validated config, built by `validate::parse` section by section (not by serde).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `server:`; default: [`ServerSettings::default`].
    pub server: ServerSettings,
    /// `listen:` (required): the proxy's listeners, at least one, no address twice. An entry is
    /// an `ip:port` string (cleartext) or a [`ListenSpec`] mapping (TLS, h2); a single string is
    /// accepted for a list of one.
    pub listen: Vec<Listener>,
    /// `admin.listen`; default: none (no admin listener). Never one of `listen`.
    pub admin: Option<SocketAddr>,
    /// `admin.token_file`: a file holding the bearer token every admin endpoint but `/healthz`
    /// requires; default: none (no authentication, loopback only).
    pub admin_token_file: Option<std::path::PathBuf>,
    /// `client:`; default: [`ClientSettings::default`].
    pub client: ClientSettings,
    /// `log:`; default: [`LogSettings::default`].
    pub log: LogSettings,
    /// `cache:`; default: [`CacheSettings::default`].
    pub cache: CacheSettings,
    /// `origins:` (required, at least one): origins by name. Names use letters, digits, `-`,
    /// `_` and `.` (they become metric labels).
    pub origins: BTreeMap<String, OriginConfig>,
    /// `routes:` (required, at least one), in config order.
    pub routes: Vec<RouteConfig>,
    /// `cluster:`; default: [`ClusterSettings::default`] (a lone edge).
    pub cluster: ClusterSettings,
}

/// Pingora's own server settings (`server:`).
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Worker threads of the proxy service, 1 to 1024. Default: `2`.
    pub threads: usize,
    /// Pingora's pid file. Default: `/tmp/edge-<first listen address>.pid`, so edges run side
    /// by side.
    pub pid_file: Option<String>,
    /// Unix socket over which a new binary takes the listening sockets on upgrade (`-u`).
    /// Default: `/tmp/edge-<first listen address>.upgrade.sock`.
    pub upgrade_sock: Option<String>,
    /// After SIGTERM (or after handing the sockets over on SIGQUIT) the listeners stop and
    /// requests in flight get this long to finish; then Pingora drops what is left. Keep it
    /// above the longest response you serve. Default: `5s`.
    pub grace_period: Dur,
    /// The final step: how long Pingora waits for its runtimes (blocking work) to stop.
    /// Default: `5s`.
    pub graceful_shutdown_timeout: Dur,
    /// Size of Pingora's shared upstream connection LRU per thread, at least 1. Default: the sum
    /// over origins of `pool_size` × servers, spread over the threads, at least 128 per thread,
    /// so per-origin limits, not the LRU, decide what is kept.
    pub upstream_pool_size: Option<usize>,
    /// Log file used when daemonized (`-d`). Default: none (stderr).
    pub error_log: Option<String>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            threads: 2,
            pid_file: None,
            upgrade_sock: None,
            grace_period: Dur::secs(5),
            graceful_shutdown_timeout: Dur::secs(5),
            upstream_pool_size: None,
            error_log: None,
        }
    }
}

/// The admin HTTP listener (`admin:`): `/metrics`, `/healthz`, `/config`, `POST /reload`,
/// `POST /purge`.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// `ip:port` (required when `admin:` is present). Not a loopback address only with
    /// `token_file`.
    pub listen: String,
    /// A file holding a bearer token (surrounding white space ignored): every endpoint but
    /// `GET /healthz` then requires `Authorization: Bearer <token>`. Re-read on reload.
    /// Default: none (no authentication).
    #[serde(default)]
    pub token_file: Option<std::path::PathBuf>,
}

/// Downstream (client-facing) settings (`client:`): keep-alive (nginx's `keepalive_timeout`,
/// `keepalive_requests`), the request head and body limits and timeouts, and the connection
/// limit.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClientSettings {
    /// Idle time allowed between two requests on a client connection; `0s` disables keep-alive.
    /// Default: `65s`.
    pub keepalive_timeout: Dur,
    /// Requests served on one client connection before it is closed, at least 1.
    /// Default: `1000`.
    pub keepalive_requests: u32,
    /// Largest request header block accepted (request line and all fields), 1KiB to 1MiB;
    /// larger gets 431. Default: `64KiB`.
    pub max_header_size: Size,
    /// Most header fields accepted in one request, 1 to 256; more gets 431. Default: `100`.
    pub max_headers: usize,
    /// The whole request head, from its first byte to the blank line, must arrive within this,
    /// whatever the drip rate (nginx's `client_header_timeout`); else `408` and the connection
    /// is closed. Default: `10s`.
    pub header_timeout: Dur,
    /// Longest time a write to the client may make no progress (nginx's `send_timeout`): a
    /// client that stops reading a response is dropped. Default: `60s`.
    pub send_timeout: Dur,
    /// Request bodies up to this size are read whole, and their framing checked, before the
    /// origin is chosen (nginx's `proxy_request_buffering on`): a broken body gets `400` and the
    /// origin sees nothing of the request. Larger bodies stream. At most `64KiB` (Pingora's
    /// request body buffer); `0` streams every body. Default: `64KiB`.
    pub body_buffer_size: Size,
    /// Largest request body accepted: a larger `Content-Length` gets `413` before any of the
    /// body is read; a chunked or h2 body that grows past it gets `413` (an aborted upstream
    /// request if the origin has already answered). `0` = unlimited. Default: `100MiB`.
    pub max_body_size: Size,
    /// Longest gap between two reads of an HTTP/1 request body (nginx's
    /// `client_body_timeout`); else `408` and the connection is closed. h2 streams are read by
    /// Pingora's h2 server, which this does not reach. Default: `60s`.
    pub body_timeout: Dur,
    /// Client connections open at once; a new connection beyond this is closed as soon as it is
    /// accepted (before any TLS handshake) and counted. Each connection costs a file descriptor
    /// (two while it has an upstream connection): the edge raises its soft descriptor limit to
    /// the hard one at start. `0` = unlimited. Default: `10000`.
    pub max_connections: usize,
    /// Streams one HTTP/2 client connection may have open at once (its
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`); more are refused (`RST_STREAM REFUSED_STREAM`),
    /// 1 to 1000. An HTTP/2 connection with no stream open is closed after
    /// `keepalive_timeout`, as an idle HTTP/1 one is. Default: `100`.
    pub h2_max_concurrent_streams: u32,
    /// Largest decoded header list of one HTTP/2 request (`SETTINGS_MAX_HEADER_LIST_SIZE`),
    /// 1KiB to 1MiB; a larger one is refused. Default: `64KiB`.
    pub h2_max_header_list_size: Size,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            keepalive_timeout: Dur::secs(65),
            keepalive_requests: 1000,
            max_header_size: Size(64 << 10),
            max_headers: 100,
            header_timeout: Dur::secs(10),
            send_timeout: Dur::secs(60),
            body_buffer_size: Size(64 << 10),
            max_body_size: Size(100 << 20),
            body_timeout: Dur::secs(60),
            max_connections: 10_000,
            h2_max_concurrent_streams: 100,
            h2_max_header_list_size: Size(64 << 10),
        }
    }
}

/// `log.level`: `error`, `warn`, `info`, `debug` or `trace`. Default: `info`.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// Logging (`log:`). `RUST_LOG`, when set, overrides `level` (and allows per-module filters).
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// Most verbose level logged. Default: `info`.
    pub level: LogLevel,
    /// One line per request, whatever `level` (see `access_log`). Default: `true`.
    pub access: bool,
    /// `text` (`key=value`) or `json` (one object per line). Default: `text`.
    pub access_format: crate::logging::Format,
    /// The access log's file, an absolute path (a daemon runs from `/`): opened for appending,
    /// created `0640` if missing, reopened on `SIGUSR1` (logrotate) and when a reload changes
    /// it. Default: none (stderr).
    pub access_file: Option<std::path::PathBuf>,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            level: LogLevel::Info,
            access: true,
            access_format: crate::logging::Format::Text,
            access_file: None,
        }
    }
}

/// The shared cache (`cache:`): one store for all routes.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// Memory for cached objects: bodies, headers and per-object bookkeeping; at least 1MiB.
    /// Default: `256MiB`.
    pub max_size: Size,
    /// Larger responses are passed through, not stored. More than 0; without a disk tier at
    /// most `max_size` and at most 64MiB (the eviction policy's weight range); with one, at
    /// most `disk.max_size` (objects beyond 4MiB then live on disk only). Default: `8MiB`.
    pub max_object_size: Size,
    /// How long concurrent misses for one object wait for the first one's response before
    /// going to the origin themselves. Default: `5s`.
    pub lock_timeout: Dur,
    /// A response header that targets this cache only (RFC 9213), before `CDN-Cache-Control`
    /// and `Cache-Control`. It is removed from responses to clients.
    /// Default: `edge-cache-control`.
    pub targeted_field: String,
    /// Answer plain fresh hits on the client connection, before the proxy session (see
    /// `express`). `false` sends every request through the proxy's phases (for debugging;
    /// responses are the same, hits cost more CPU). Reloadable. Default: `true`.
    pub express_lane: bool,
    /// Store responses that carry `Set-Cookie` (without the `Set-Cookie` field: the cookie goes
    /// only to the client whose request filled the cache). Off by default: a response that
    /// sets a cookie is usually personal (a session), and serving it to others leaks it; turn
    /// it on only for origins that set the same, non-identifying cookie for everyone.
    /// Default: `false`.
    pub store_set_cookie: bool,
    /// A disk tier under memory (`cache.disk`); none by default. Changes need a restart.
    pub disk: Option<DiskSettings>,
}

/// `cache.disk`: where the disk tier keeps its files and how much it may take.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DiskSettings {
    /// A directory of its own (created if missing), used by one edge at a time (it holds
    /// `PATH/lock`). Required.
    pub path: std::path::PathBuf,
    /// Bytes on disk the tier may take, files' metadata and block rounding included; at least
    /// 16MiB. Required.
    pub max_size: Size,
    /// Object files kept open once read and checked, so that later HTTP/1.1 hits in the
    /// express lane are sent from them (nginx's `open_file_cache max=`): with `sendfile` on
    /// plain TCP when the body is in the page cache, else read and written. One file
    /// descriptor each, the least recently used closed past it. `0` turns it off. Default: a quarter of the process's
    /// descriptor limit (`LimitNOFILE`), at most 16384.
    #[serde(default)]
    pub open_files: Option<usize>,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_size: Size(256 << 20),
            max_object_size: Size(8 << 20),
            lock_timeout: Dur::secs(5),
            targeted_field: "edge-cache-control".into(),
            express_lane: true,
            store_set_cookie: false,
            disk: None,
        }
    }
}

/// `routes[].cache.key.query`: how the query string joins the cache key. Default: `keep`.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum QueryKey {
    /// The query string as sent.
    #[default]
    Keep,
    /// Parameters sorted, so `?b=1&a=2` and `?a=2&b=1` share an object.
    Sort,
    /// Ignored: every query string shares the object of the bare path.
    Strip,
}

/// What identifies a cached object besides scheme, host and path (`routes[].cache.key`).
#[derive(Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CacheKeySettings {
    /// How the query string counts. Default: `keep`.
    pub query: QueryKey,
    /// Request headers whose values are part of the key. Default: none.
    pub headers: Vec<String>,
    /// Cookies whose values are part of the key. Default: none.
    pub cookies: Vec<String>,
}

/// Requests that skip the cache, neither looked up nor stored (`routes[].cache.bypass`).
#[derive(Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CacheBypass {
    /// Any of these cookies present (e.g. a session cookie). Default: none.
    pub cookies: Vec<String>,
    /// Any of these request headers present. Default: none.
    pub headers: Vec<String>,
}

/// What a range request that misses asks the origin for (`routes[].cache.ranges`).
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum RangeMisses {
    /// The whole object, stored, and the range answered from it (nginx's and Varnish's way).
    #[default]
    Whole,
    /// The client's range, as it asked (one range of bytes): the origin's `206` is stored and
    /// answers later requests for ranges inside it; anything else fetches again (a request for
    /// the whole object stores the `200` in its place). For large objects that are seldom
    /// read whole (video seeks, resumed downloads).
    Forward,
}

/// Caching for one route (`routes[].cache`).
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RouteCache {
    /// `false`: the route never uses the cache. Default: `true`.
    pub enabled: bool,
    /// Freshness for cacheable statuses when the origin gives none; `0s` = do not cache those.
    /// Default: `0s`.
    pub default_ttl: Dur,
    /// Upper bound on any freshness lifetime; `0s` = no cap. Default: `0s`.
    pub max_ttl: Dur,
    /// Serve a stale object for this long when the origin fails (5xx, unreachable), unless
    /// the origin forbids it (`must-revalidate`, `stale-if-error=0`). Default: `0s`.
    pub stale_if_error: Dur,
    /// What identifies a cached object. Default: [`CacheKeySettings::default`].
    pub key: CacheKeySettings,
    /// Requests that skip the cache. Default: none skip it.
    pub bypass: CacheBypass,
    /// What a range request that misses fetches. Default: `whole`.
    pub ranges: RangeMisses,
}

impl Default for RouteCache {
    fn default() -> Self {
        RouteCache {
            enabled: true,
            default_ttl: Dur::secs(0),
            max_ttl: Dur::secs(0),
            stale_if_error: Dur::secs(0),
            key: CacheKeySettings::default(),
            bypass: CacheBypass::default(),
            ranges: RangeMisses::Whole,
        }
    }
}

/// One route (`routes[]`): which requests go to which origin, and how they are cached. Read
/// through `RouteFields`, where the defaults are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// `www.example.com`, `*.example.com` (any subdomain) or `*`. Default: `*`.
    pub host: String,
    /// Requests whose path starts with this; starts with `/`. Default: `/`.
    pub path_prefix: String,
    /// Name of an origin under `origins`. Required.
    pub origin: String,
    /// Default: [`RouteCache::default`] (cached, nothing forced).
    pub cache: RouteCache,
}

/// [`RouteConfig`] as written; required `origin` is an `Option` as in [`OriginFields`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "struct RouteConfig")]
struct RouteFields {
    host: String,
    path_prefix: String,
    origin: Option<String>,
    cache: RouteCache,
}

impl Default for RouteFields {
    fn default() -> Self {
        RouteFields {
            host: "*".into(),
            path_prefix: "/".into(),
            origin: None,
            cache: RouteCache::default(),
        }
    }
}

impl<'de> Deserialize<'de> for RouteConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let f = RouteFields::deserialize(d)?;
        Ok(RouteConfig {
            host: f.host,
            path_prefix: f.path_prefix,
            origin: f.origin.ok_or_else(|| D::Error::missing_field("origin"))?,
            cache: f.cache,
        })
    }
}
