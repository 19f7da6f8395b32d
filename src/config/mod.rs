//! The YAML config: schema, defaults and validation.
//!
//! Every error names the file, the line and the field path, and all errors of a file are
//! reported together: an operator fixing a config should not have to run `edge -t` once per typo.
//! Each top-level section, each origin and each route is deserialized on its own so that one bad
//! entry does not hide the errors of the next.

mod locate;
pub mod units;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value;

pub use locate::Seg;
pub use units::{Dur, Size};

/// Pingora's own server settings.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// Defaults to a path derived from the first listen address, so edges run side by side.
    pub pid_file: Option<String>,
    /// Unix socket over which a new binary takes the listening sockets on upgrade (`-u`).
    pub upgrade_sock: Option<String>,
    /// After SIGTERM (or after handing the sockets over on SIGQUIT) the listeners stop and
    /// requests in flight get this long to finish; then Pingora drops what is left. Keep it
    /// above the longest response you serve.
    pub grace_period: Dur,
    /// The final step: how long Pingora waits for its runtimes (blocking work) to stop.
    pub graceful_shutdown_timeout: Dur,
    /// Size of Pingora's shared upstream connection LRU per thread. Defaults to the sum over
    /// origins of `pool_size` × servers, so per-origin limits, not the LRU, decide what is kept.
    pub upstream_pool_size: Option<usize>,
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

#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    pub listen: String,
}

/// Downstream (client-facing) connection settings, as nginx's `keepalive_timeout` and
/// `keepalive_requests`.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClientSettings {
    /// Idle time allowed between two requests on a client connection; `0s` disables keep-alive.
    pub keepalive_timeout: Dur,
    /// Requests served on one client connection before it is closed.
    pub keepalive_requests: u32,
    /// Largest request header block accepted (request line and all fields); larger gets 431.
    pub max_header_size: Size,
    /// Most header fields accepted in one request; more gets 431.
    pub max_headers: usize,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            keepalive_timeout: Dur::secs(65),
            keepalive_requests: 1000,
            max_header_size: Size(64 << 10),
            max_headers: 100,
        }
    }
}

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

/// Logging. `RUST_LOG`, when set, overrides `level` (and allows per-module filters).
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub level: LogLevel,
    /// One line per request (target `access`, level info).
    pub access: bool,
    pub access_format: crate::logging::Format,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            level: LogLevel::Info,
            access: true,
            access_format: crate::logging::Format::Text,
        }
    }
}

/// The shared cache: one store for all routes.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// Memory for cached objects: bodies, headers and per-object bookkeeping.
    pub max_size: Size,
    /// Larger responses are passed through, not stored.
    pub max_object_size: Size,
    /// How long concurrent misses for one object wait for the first one's response before
    /// going to the origin themselves.
    pub lock_timeout: Dur,
    /// A response header that targets this cache only (RFC 9213), before `CDN-Cache-Control`
    /// and `Cache-Control`. It is removed from responses to clients.
    pub targeted_field: String,
    /// Answer plain fresh hits on the client connection, before the proxy session (see
    /// `express`). `false` sends every request through the proxy's phases (for debugging;
    /// responses are the same, hits cost more CPU). Reloadable.
    pub express_lane: bool,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_size: Size(256 << 20),
            max_object_size: Size(8 << 20),
            lock_timeout: Dur::secs(5),
            targeted_field: "edge-cache-control".into(),
            express_lane: true,
        }
    }
}

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

/// What identifies a cached object besides scheme, host and path.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CacheKeySettings {
    pub query: QueryKey,
    /// Request headers whose values are part of the key.
    pub headers: Vec<String>,
    /// Cookies whose values are part of the key.
    pub cookies: Vec<String>,
}

/// Requests that skip the cache (neither looked up nor stored).
#[derive(Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CacheBypass {
    /// Any of these cookies present (e.g. a session cookie).
    pub cookies: Vec<String>,
    /// Any of these request headers present.
    pub headers: Vec<String>,
}

/// Caching for one route.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RouteCache {
    pub enabled: bool,
    /// Freshness for cacheable statuses when the origin gives none; `0s` = do not cache those.
    pub default_ttl: Dur,
    /// Upper bound on any freshness lifetime; `0s` = no cap.
    pub max_ttl: Dur,
    /// Serve a stale object for this long when the origin fails (5xx, unreachable), unless
    /// the origin forbids it (`must-revalidate`, `stale-if-error=0`).
    pub stale_if_error: Dur,
    pub key: CacheKeySettings,
    pub bypass: CacheBypass,
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
        }
    }
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    Weighted,
    ConsistentHash,
}

/// Upstream keep-alive, as nginx's upstream `keepalive`, `keepalive_timeout`,
/// `keepalive_requests`.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields, default)]
pub struct KeepaliveSettings {
    /// How long an idle pooled connection is kept. Keep it below the origin's own keep-alive
    /// timeout, or requests race the origin's close. `0s` disables pooling.
    pub idle_timeout: Dur,
    /// Connections kept open per server of this origin. `0` disables pooling.
    pub pool_size: usize,
    /// Requests sent on one upstream connection before the edge closes it.
    pub max_requests: u32,
    /// Learn each server's own idle timeout (from `Keep-Alive: timeout=`, and by measuring
    /// when it closes an idle connection) and close pooled connections a safety margin before
    /// it, never later than `idle_timeout`.
    pub learn: bool,
    /// The safety margin before a learned timeout; default: measured (twice the smallest
    /// recent time to first byte from that server, plus 5 ms).
    pub margin: Option<Dur>,
}

impl Default for KeepaliveSettings {
    fn default() -> Self {
        KeepaliveSettings {
            idle_timeout: Dur::secs(55),
            pool_size: 64,
            max_requests: 1000,
            learn: true,
            margin: None,
        }
    }
}

#[derive(Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// TCP connect to one server; on expiry the next server is tried.
    pub connect: Dur,
    /// Longest wait for any read from the origin (header or body); expiry gives 504.
    pub read: Dur,
    /// Longest wait for any write to the origin.
    pub write: Dur,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Dur::secs(2),
            read: Dur::secs(30),
            write: Dur::secs(30),
        }
    }
}

/// Kernel TCP keep-alive probes on upstream connections: finds dead peers behind NAT or
/// firewalls that silently drop idle flows.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields, default)]
pub struct TcpKeepalive {
    pub idle: Dur,
    pub interval: Dur,
    pub count: usize,
}

impl Default for TcpKeepalive {
    fn default() -> Self {
        TcpKeepalive {
            idle: Dur::secs(60),
            interval: Dur::secs(10),
            count: 3,
        }
    }
}

/// Active health check: an HTTP GET to every server of the origin.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Dur,
    pub timeout: Dur,
    /// Consecutive successes that bring a down server back.
    pub rise: u32,
    /// Consecutive failures that take a server down.
    pub fall: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            path: "/".into(),
            interval: Dur::secs(5),
            timeout: Dur::secs(2),
            rise: 2,
            fall: 3,
        }
    }
}

/// Passive health, as nginx's `max_fails` / `fail_timeout`: connect failures seen by real
/// traffic take a server out of rotation for `fail_timeout`.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveHealth {
    pub max_fails: u32,
    pub fail_timeout: Dur,
}

impl Default for PassiveHealth {
    fn default() -> Self {
        PassiveHealth {
            max_fails: 1,
            fail_timeout: Dur::secs(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// As written by the operator (host:port).
    pub address: String,
    pub weight: u32,
    /// Resolved once at load; a reload resolves again.
    pub addr: SocketAddr,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerEntry {
    address: String,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

impl<'de> Deserialize<'de> for ServerSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let entry = match Value::deserialize(d)? {
            Value::String(address) => ServerEntry { address, weight: 1 },
            v @ Value::Mapping(_) => ServerEntry::deserialize(v).map_err(D::Error::custom)?,
            _ => {
                return Err(D::Error::custom(
                    r#"expected an address like "127.0.0.1:8000" or {address: "127.0.0.1:8000", weight: 3}"#,
                ))
            }
        };
        let addr = resolve(&entry.address).map_err(D::Error::custom)?;
        if entry.weight == 0 {
            return Err(D::Error::custom("weight must be at least 1"));
        }
        Ok(ServerSpec {
            address: entry.address,
            weight: entry.weight,
            addr,
        })
    }
}

fn resolve(address: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = address.parse() {
        return Ok(a);
    }
    if !address.contains(':') {
        return Err(format!(
            r#"expected host:port like "127.0.0.1:8000", got "{address}""#
        ));
    }
    address
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve \"{address}\": {e}"))?
        .next()
        .ok_or_else(|| format!("\"{address}\" resolves to no address"))
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OriginConfig {
    pub servers: Vec<ServerSpec>,
    #[serde(default)]
    pub balance: Balance,
    /// Host header sent upstream; by default the client's Host is passed through.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub keepalive: KeepaliveSettings,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub tcp_keepalive: Option<TcpKeepalive>,
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    #[serde(default)]
    pub passive_health: PassiveHealth,
    /// Further servers tried after a connect failure, within this origin.
    #[serde(default = "default_retries")]
    pub retries: usize,
}

fn default_retries() -> usize {
    2
}

#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `www.example.com`, `*.example.com` (any subdomain) or `*`.
    #[serde(default = "any_host")]
    pub host: String,
    #[serde(default = "root")]
    pub path_prefix: String,
    pub origin: String,
    #[serde(default)]
    pub cache: RouteCache,
}

fn any_host() -> String {
    "*".into()
}
fn root() -> String {
    "/".into()
}

/// A whole, validated config.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub server: ServerSettings,
    pub listen: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub client: ClientSettings,
    pub log: LogSettings,
    pub cache: CacheSettings,
    pub origins: BTreeMap<String, OriginConfig>,
    pub routes: Vec<RouteConfig>,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}: {}", self.file, l, self.path, self.message),
            None => write!(f, "{}: {}: {}", self.file, self.path, self.message),
        }
    }
}

/// All problems found in one config file.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

const TOP_LEVEL: &[&str] = &[
    "server", "listen", "admin", "client", "log", "cache", "origins", "routes",
];

/// Collects errors with their location while a file is checked.
struct Checker<'a> {
    file: &'a str,
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn error(&mut self, path: &[Seg], message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line: locate::line_of(self.text, path),
            path: locate::render(path),
            message: message.into(),
        });
    }

    /// Deserializes one subtree, recording its error (with the full path) if it fails.
    fn section<T: DeserializeOwned>(&mut self, base: &[Seg], v: &Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(v.clone()) {
            Ok(t) => Some(t),
            Err(e) => {
                let mut path = base.to_vec();
                for seg in e.path().iter() {
                    use serde_path_to_error::Segment;
                    match seg {
                        Segment::Seq { index } => path.push(Seg::Index(*index)),
                        Segment::Map { key } => path.push(Seg::Key(key.clone())),
                        Segment::Enum { variant } => path.push(Seg::Key(variant.clone())),
                        Segment::Unknown => {}
                    }
                }
                let message = e.into_inner().to_string();
                // serde reports an unknown key at its parent; point at the key itself.
                let mut at = path.clone();
                if let Some(key) = message
                    .strip_prefix("unknown field `")
                    .and_then(|r| r.split('`').next())
                {
                    if at.last() != Some(&Seg::Key(key.to_string())) {
                        at.push(Seg::Key(key.to_string()));
                    }
                }
                self.errors.push(ConfigError {
                    file: self.file.to_string(),
                    line: locate::line_of(self.text, &at),
                    path: locate::render(&at),
                    message,
                });
                None
            }
        }
    }
}

fn key(s: &str) -> Seg {
    Seg::Key(s.to_string())
}

/// Reads and validates a config file; returns it with the text it was read from.
pub fn load(path: &Path) -> Result<(Config, String), ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            line: None,
            path: ".".into(),
            message: format!("cannot read config: {e}"),
        }])
    })?;
    parse(&text, &file).map(|c| (c, text))
}

/// Parses and validates config text; `file` is only used in error messages.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigErrors> {
    let mut ck = Checker {
        file,
        text,
        errors: Vec::new(),
    };
    let root: Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return Err(ConfigErrors(vec![ConfigError {
                file: file.to_string(),
                line: e.location().map(|l| l.line()),
                path: ".".into(),
                message: format!("not valid YAML: {e}"),
            }]))
        }
    };
    let Value::Mapping(root) = root else {
        ck.error(&[], "expected a mapping with listen, origins and routes");
        return Err(ConfigErrors(ck.errors));
    };
    let mut sections: BTreeMap<String, Value> = BTreeMap::new();
    for (k, v) in root {
        let name = match k {
            Value::String(s) => s,
            other => format!("{other:?}"),
        };
        if TOP_LEVEL.contains(&name.as_str()) {
            sections.insert(name, v);
        } else {
            ck.error(
                &[key(&name)],
                format!("unknown key, expected one of: {}", TOP_LEVEL.join(", ")),
            );
        }
    }
    let get = |n: &str| sections.get(n).cloned().unwrap_or(Value::Null);

    let server: ServerSettings = match sections.get("server") {
        Some(v) => ck.section(&[key("server")], v).unwrap_or_default(),
        None => ServerSettings::default(),
    };
    let client: ClientSettings = match sections.get("client") {
        Some(v) => ck.section(&[key("client")], v).unwrap_or_default(),
        None => ClientSettings::default(),
    };
    let log: LogSettings = match sections.get("log") {
        Some(v) => ck.section(&[key("log")], v).unwrap_or_default(),
        None => LogSettings::default(),
    };
    let cache: CacheSettings = match sections.get("cache") {
        Some(v) => ck.section(&[key("cache")], v).unwrap_or_default(),
        None => CacheSettings::default(),
    };
    let listen: Vec<String> = match sections.get("listen") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(v) => ck.section(&[key("listen")], v).unwrap_or_default(),
        None => {
            ck.error(
                &[key("listen")],
                "missing: at least one address to listen on, like [\"0.0.0.0:80\"]",
            );
            Vec::new()
        }
    };
    let admin: Option<AdminSettings> = match sections.get("admin") {
        None | Some(Value::Null) => None,
        Some(v) => ck.section(&[key("admin")], v),
    };

    let mut origins = BTreeMap::new();
    // Origins that exist but failed to parse: routes naming them are not errors of their own.
    let mut broken_origins = HashSet::new();
    match get("origins") {
        Value::Mapping(m) => {
            for (k, v) in m {
                let name = k
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{k:?}"));
                broken_origins.insert(name.clone());
                let base = [key("origins"), key(&name)];
                if let Some(o) = ck.section::<OriginConfig>(&base, &v) {
                    origins.insert(name, o);
                }
            }
        }
        Value::Null => ck.error(&[key("origins")], "missing: define at least one origin"),
        _ => ck.error(
            &[key("origins")],
            "expected a mapping of origin names to origins",
        ),
    }

    let mut routes = Vec::new();
    match get("routes") {
        Value::Sequence(items) => {
            for (i, v) in items.iter().enumerate() {
                if let Some(r) = ck.section::<RouteConfig>(&[key("routes"), Seg::Index(i)], v) {
                    routes.push((i, r));
                }
            }
        }
        Value::Null => ck.error(&[key("routes")], "missing: define at least one route"),
        _ => ck.error(&[key("routes")], "expected a list of routes"),
    }

    let listen = check_listen(&mut ck, &listen);
    let admin = admin.and_then(|a| match a.listen.parse::<SocketAddr>() {
        Ok(addr) => {
            if listen.contains(&addr) {
                ck.error(
                    &[key("admin"), key("listen")],
                    format!("{addr} is also a proxy listen address"),
                );
            }
            Some(addr)
        }
        Err(_) => {
            ck.error(
                &[key("admin"), key("listen")],
                format!(
                    r#"expected ip:port like "127.0.0.1:9090", got "{}""#,
                    a.listen
                ),
            );
            None
        }
    });
    check_server(&mut ck, &server);
    check_client(&mut ck, &client);
    check_cache(&mut ck, &cache);
    for (name, o) in &origins {
        check_origin(&mut ck, name, o);
    }
    broken_origins.retain(|n| !origins.contains_key(n));
    for (i, r) in &routes {
        check_route(&mut ck, *i, r, &origins, &broken_origins);
    }

    if !ck.errors.is_empty() {
        return Err(ConfigErrors(ck.errors));
    }
    Ok(Config {
        server,
        listen,
        admin,
        client,
        log,
        cache,
        origins,
        routes: routes.into_iter().map(|(_, r)| r).collect(),
    })
}

fn check_listen(ck: &mut Checker, listen: &[String]) -> Vec<SocketAddr> {
    if listen.is_empty() && !ck.errors.iter().any(|e| e.path == "listen") {
        ck.error(&[key("listen")], "at least one address is needed");
    }
    let mut out = Vec::new();
    for (i, l) in listen.iter().enumerate() {
        let path = [key("listen"), Seg::Index(i)];
        match l.parse::<SocketAddr>() {
            Ok(a) if out.contains(&a) => ck.error(&path, format!("{a} is listed twice")),
            Ok(a) => out.push(a),
            Err(_) => ck.error(
                &path,
                format!(r#"expected ip:port like "127.0.0.1:8080", got "{l}""#),
            ),
        }
    }
    out
}

fn check_server(ck: &mut Checker, s: &ServerSettings) {
    if s.threads == 0 || s.threads > 1024 {
        ck.error(
            &[key("server"), key("threads")],
            format!("expected 1 to 1024 threads, got {}", s.threads),
        );
    }
    if s.upstream_pool_size == Some(0) {
        ck.error(
            &[key("server"), key("upstream_pool_size")],
            "must be at least 1 (use an origin's keepalive.pool_size: 0 to disable pooling)",
        );
    }
}

fn check_client(ck: &mut Checker, c: &ClientSettings) {
    if c.keepalive_requests == 0 {
        ck.error(
            &[key("client"), key("keepalive_requests")],
            "must be at least 1 (set keepalive_timeout: 0s to disable keep-alive)",
        );
    }
    if c.max_header_size.0 < 1024 || c.max_header_size.0 > 1 << 20 {
        ck.error(
            &[key("client"), key("max_header_size")],
            format!(
                "expected 1KiB to 1MiB (Pingora reads at most 1MiB of header), got {} bytes",
                c.max_header_size.0
            ),
        );
    }
    if c.max_headers == 0 || c.max_headers > 256 {
        ck.error(
            &[key("client"), key("max_headers")],
            format!(
                "expected 1 to 256 (Pingora parses at most 256), got {}",
                c.max_headers
            ),
        );
    }
}

fn check_cache(ck: &mut Checker, c: &CacheSettings) {
    if c.max_size.0 < 1 << 20 {
        ck.error(
            &[key("cache"), key("max_size")],
            format!("expected at least 1MiB, got {} bytes", c.max_size.0),
        );
    }
    if c.max_object_size.0 == 0 || c.max_object_size.0 > c.max_size.0 {
        ck.error(
            &[key("cache"), key("max_object_size")],
            "must be more than 0 and at most max_size",
        );
    } else if c.max_object_size.0 > 64 << 20 {
        // The eviction policy weighs objects in KiB with 16 bits: larger ones would be
        // under-counted, and max_size would no longer bound memory.
        ck.error(
            &[key("cache"), key("max_object_size")],
            format!("at most 64MiB, got {} bytes", c.max_object_size.0),
        );
    }
    if http::HeaderName::from_bytes(c.targeted_field.as_bytes()).is_err() {
        ck.error(
            &[key("cache"), key("targeted_field")],
            format!("\"{}\" is not a header name", c.targeted_field),
        );
    }
}

fn check_origin(ck: &mut Checker, name: &str, o: &OriginConfig) {
    let at = |rest: &[&str]| {
        let mut p = vec![key("origins"), key(name)];
        p.extend(rest.iter().map(|s| key(s)));
        p
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        ck.error(
            &at(&[]),
            "origin names may use letters, digits, '-', '_' and '.' (they become metric labels)",
        );
    }
    if o.servers.is_empty() {
        ck.error(&at(&["servers"]), "at least one server is needed");
    }
    let mut seen = HashSet::new();
    for (i, s) in o.servers.iter().enumerate() {
        if !seen.insert(s.addr) {
            let mut p = at(&["servers"]);
            p.push(Seg::Index(i));
            ck.error(&p, format!("{} is listed twice", s.address));
        }
    }
    if let Some(h) = &o.host {
        if !valid_host(h) {
            ck.error(
                &at(&["host"]),
                format!("\"{h}\" is not a valid Host header value"),
            );
        }
    }
    for (field, d) in [
        ("connect", o.timeouts.connect),
        ("read", o.timeouts.read),
        ("write", o.timeouts.write),
    ] {
        if d.get().is_zero() {
            ck.error(&at(&["timeouts", field]), "must be longer than 0s");
        }
    }
    if o.keepalive.max_requests == 0 {
        ck.error(
            &at(&["keepalive", "max_requests"]),
            "must be at least 1 (use pool_size: 0 to disable pooling)",
        );
    }
    if let Some(hc) = &o.health_check {
        if !hc.path.starts_with('/') {
            ck.error(
                &at(&["health_check", "path"]),
                format!("expected a path starting with '/', got \"{}\"", hc.path),
            );
        }
        if hc.interval.get().is_zero() {
            ck.error(&at(&["health_check", "interval"]), "must be longer than 0s");
        }
        if hc.timeout.get().is_zero() {
            ck.error(&at(&["health_check", "timeout"]), "must be longer than 0s");
        }
        if hc.rise == 0 {
            ck.error(&at(&["health_check", "rise"]), "must be at least 1");
        }
        if hc.fall == 0 {
            ck.error(&at(&["health_check", "fall"]), "must be at least 1");
        }
    }
    if let Some(tk) = &o.tcp_keepalive {
        if tk.idle.get().as_secs() == 0 || tk.interval.get().as_secs() == 0 || tk.count == 0 {
            ck.error(
                &at(&["tcp_keepalive"]),
                "idle and interval must be at least 1s and count at least 1",
            );
        }
    }
}

fn check_route(
    ck: &mut Checker,
    i: usize,
    r: &RouteConfig,
    origins: &BTreeMap<String, OriginConfig>,
    broken_origins: &HashSet<String>,
) {
    let at = |f: &str| vec![key("routes"), Seg::Index(i), key(f)];
    if !origins.contains_key(&r.origin) && !broken_origins.contains(&r.origin) {
        let mut known: Vec<&str> = origins
            .keys()
            .chain(broken_origins.iter())
            .map(String::as_str)
            .collect();
        known.sort_unstable();
        ck.error(
            &at("origin"),
            format!(
                "unknown origin \"{}\" (defined: {})",
                r.origin,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        );
    }
    let host_ok = r.host == "*"
        || r.host.strip_prefix("*.").map(valid_host).unwrap_or(false)
        || (!r.host.contains('*') && valid_host(&r.host));
    if !host_ok {
        ck.error(
            &at("host"),
            format!(
                r#"expected "www.example.com", "*.example.com" or "*", got "{}""#,
                r.host
            ),
        );
    }
    let header_lists = [
        (&r.cache.key.headers, ["cache", "key", "headers"]),
        (&r.cache.bypass.headers, ["cache", "bypass", "headers"]),
    ];
    for (names, field) in header_lists {
        for n in names {
            if http::HeaderName::from_bytes(n.as_bytes()).is_err() {
                let mut p = vec![key("routes"), Seg::Index(i)];
                p.extend(field.iter().map(|f| key(f)));
                ck.error(&p, format!("\"{n}\" is not a header name"));
            }
        }
    }
    if !r.path_prefix.starts_with('/') {
        ck.error(
            &at("path_prefix"),
            format!(
                "expected a path starting with '/', got \"{}\"",
                r.path_prefix
            ),
        );
    }
}

/// A Host header value: a DNS name or IP literal, optionally with a port.
pub fn valid_host(h: &str) -> bool {
    if h.is_empty() || h.len() > 255 {
        return false;
    }
    let (name, port) = match h.rsplit_once(':') {
        Some((n, _)) if !n.ends_with(']') && n.contains(':') => (h, None), // bare IPv6
        Some((n, p)) => (n, Some(p)),
        None => (h, None),
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    if let Some(v6) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

#[cfg(test)]
mod tests;
