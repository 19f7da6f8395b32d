//! Validation: reads the YAML text section by section into the [schema](super::schema) types
//! and checks what serde cannot (ranges, references between sections, duplicates), collecting
//! every problem with its file, line and field path.
//!
//! Each top-level section, each origin and each route is deserialized on its own so that one bad
//! entry does not hide the errors of the next. Errors come out in a fixed order: unknown
//! top-level keys; what serde refused (`server`, `client`, `log`, `cache`, `cluster`, `listen`,
//! `admin`, each origin, each route); then the checks (`listen`, `admin`, `server`, `client`,
//! `log`, `cache`, `cluster`, each origin, each route).

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};

use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

use super::errors::{ConfigError, ConfigErrors};
use super::locate::{self, Seg};
use super::schema::{
    AdminSettings, CacheSettings, ClientSettings, ClusterSettings, Config, LogSettings,
    OriginConfig, RouteConfig, ServerSettings,
};
use super::tls::ListenSpec;
use super::validate_cache::{check_cache, writable};
use super::validate_cluster::{check_cluster, check_shield};
use super::validate_listen::{check_admin, check_listen, check_origin_tls};
use crate::host::valid_host;

/// The keys allowed at the top of the file.
const TOP_LEVEL: &[&str] = &[
    "server", "listen", "admin", "client", "log", "cache", "origins", "routes", "cluster",
];

/// Collects errors with their location while a file is checked.
pub(super) struct Checker<'a> {
    /// The file name, for messages only.
    pub(super) file: &'a str,
    /// The whole text, where `locate` finds the line of a field path.
    text: &'a str,
    pub(super) errors: Vec<ConfigError>,
}

impl Checker<'_> {
    /// Records a problem found after parsing, at a field path.
    pub(super) fn error(&mut self, path: &[Seg], message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line: locate::line_of(self.text, path),
            path: locate::render(path),
            message: message.into(),
        });
    }

    /// Tells the operator of something that works but is likely not what they meant, at a
    /// field path (`edge -t` and every load print it; it refuses nothing).
    pub(super) fn warn(&self, path: &[Seg], message: impl std::fmt::Display) {
        let line = locate::line_of(self.text, path).map_or(String::new(), |l| format!(":{l}"));
        eprintln!(
            "edge: warning: {}{line}: {}: {message}",
            self.file,
            locate::render(path)
        );
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

/// One key of a field path.
pub(super) fn key(s: &str) -> Seg {
    Seg::Key(s.to_string())
}

/// Parses and validates config text; `file` is only used in error messages.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigErrors> {
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
    let mut ck = Checker {
        file,
        text,
        errors: Vec::new(),
    };
    let Value::Mapping(root) = root else {
        ck.error(&[], "expected a mapping with listen, origins and routes");
        return Err(ConfigErrors(ck.errors));
    };
    let sections = top_level(&mut ck, root);
    let get = |n: &str| sections.get(n).cloned().unwrap_or(Value::Null);

    let server: ServerSettings = section_or_default(&mut ck, &sections, "server");
    let client: ClientSettings = section_or_default(&mut ck, &sections, "client");
    let log: LogSettings = section_or_default(&mut ck, &sections, "log");
    let cache: CacheSettings = section_or_default(&mut ck, &sections, "cache");
    let cluster: ClusterSettings = section_or_default(&mut ck, &sections, "cluster");
    let listen = read_listen(&mut ck, sections.get("listen"));
    let admin: Option<AdminSettings> = match sections.get("admin") {
        None | Some(Value::Null) => None,
        Some(v) => ck.section(&[key("admin")], v),
    };
    let (origins, broken_origins) = read_origins(&mut ck, get("origins"));
    let routes = read_routes(&mut ck, get("routes"));

    let listen = check_listen(&mut ck, &listen);
    let admin_token_file = admin.as_ref().and_then(|a| a.token_file.clone());
    let admin = admin.and_then(|a| check_admin(&mut ck, &a, &listen));
    check_server(&mut ck, &server);
    check_client(&mut ck, &client);
    check_log(&mut ck, &log);
    check_cache(&mut ck, &cache);
    check_cluster(&mut ck, &cluster);
    for (name, o) in &origins {
        check_origin(&mut ck, name, o);
        check_shield(&mut ck, name, o, &origins, &broken_origins, &cluster);
    }
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
        admin_token_file,
        client,
        log,
        cache,
        origins,
        routes: routes.into_iter().map(|(_, r)| r).collect(),
        cluster,
    })
}

/// Splits the root mapping into its sections by name; unknown keys are errors.
fn top_level(ck: &mut Checker, root: Mapping) -> BTreeMap<String, Value> {
    let mut sections = BTreeMap::new();
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
    sections
}

/// A section whose every field has a default: absent means all defaults, and so does a section
/// serde refused (its error is recorded).
fn section_or_default<T: DeserializeOwned + Default>(
    ck: &mut Checker,
    sections: &BTreeMap<String, Value>,
    name: &str,
) -> T {
    match sections.get(name) {
        Some(v) => ck.section(&[key(name)], v).unwrap_or_default(),
        None => T::default(),
    }
}

/// `listen`: required; one address may be written without the list.
fn read_listen(ck: &mut Checker, listen: Option<&Value>) -> Vec<ListenSpec> {
    match listen {
        Some(Value::String(s)) => vec![ListenSpec::Address(s.clone())],
        Some(v) => ck.section(&[key("listen")], v).unwrap_or_default(),
        None => {
            ck.error(
                &[key("listen")],
                "missing: at least one address to listen on, like [\"0.0.0.0:80\"]",
            );
            Vec::new()
        }
    }
}

/// `origins`: each origin read on its own. Also returns the names of origins that exist but
/// failed to parse: routes naming them are not errors of their own.
fn read_origins(
    ck: &mut Checker,
    origins_section: Value,
) -> (BTreeMap<String, OriginConfig>, HashSet<String>) {
    let mut origins = BTreeMap::new();
    let mut broken_origins = HashSet::new();
    match origins_section {
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
    broken_origins.retain(|n| !origins.contains_key(n));
    (origins, broken_origins)
}

/// `routes`: each route read on its own, kept with its index for error paths.
fn read_routes(ck: &mut Checker, routes_section: Value) -> Vec<(usize, RouteConfig)> {
    let mut routes = Vec::new();
    match routes_section {
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
    routes
}

/// `server`: the ranges serde cannot express.
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

/// `client`: keep-alive and header limits within what Pingora supports.
fn check_client(ck: &mut Checker, c: &ClientSettings) {
    if c.header_timeout.get().is_zero() {
        ck.error(
            &[key("client"), key("header_timeout")],
            "must be longer than 0s",
        );
    }
    if c.body_timeout.get().is_zero() {
        ck.error(
            &[key("client"), key("body_timeout")],
            "must be longer than 0s",
        );
    }
    if c.body_buffer_size.0 > crate::guard::BODY_BUFFER_LIMIT as u64 {
        ck.error(
            &[key("client"), key("body_buffer_size")],
            format!(
                "expected at most {}KiB (Pingora's request body buffer), got {} bytes",
                crate::guard::BODY_BUFFER_LIMIT >> 10,
                c.body_buffer_size.0
            ),
        );
    }
    if c.keepalive_requests == 0 {
        ck.error(
            &[key("client"), key("keepalive_requests")],
            "must be at least 1 (set keepalive_timeout: 0s to disable keep-alive)",
        );
    }
    // Header sizes: 1KiB to 1MiB (Pingora reads at most 1MiB of header).
    for (field, size) in [
        ("max_header_size", c.max_header_size.0),
        ("h2_max_header_list_size", c.h2_max_header_list_size.0),
    ] {
        if !(1024..=1 << 20).contains(&size) {
            ck.error(
                &[key("client"), key(field)],
                format!("expected 1KiB to 1MiB (Pingora reads at most 1MiB of header), got {size} bytes"),
            );
        }
    }
    if c.h2_max_concurrent_streams == 0 || c.h2_max_concurrent_streams > 1000 {
        ck.error(
            &[key("client"), key("h2_max_concurrent_streams")],
            format!("expected 1 to 1000, got {}", c.h2_max_concurrent_streams),
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

/// `log.access_file`: an absolute path (a daemon runs from `/`, where a relative one would
/// land after a reload) that the edge can append to: the file if it exists, else its directory.
/// Checked without creating or changing anything, so `edge -t` stays read-only.
fn check_log(ck: &mut Checker, l: &LogSettings) {
    let Some(path) = &l.access_file else {
        return;
    };
    let at = [key("log"), key("access_file")];
    if !path.is_absolute() {
        ck.error(
            &at,
            format!("expected an absolute path, got \"{}\"", path.display()),
        );
        return;
    }
    let problem = if path.exists() {
        if path.is_dir() {
            Some("is a directory".to_string())
        } else {
            std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .err()
                .map(|e| format!("cannot be opened for appending: {e}"))
        }
    } else {
        match path.parent() {
            Some(dir) if dir.is_dir() => (!writable(dir))
                .then(|| format!("cannot be created: {} is not writable", dir.display())),
            _ => Some("cannot be created: its directory does not exist".to_string()),
        }
    };
    if let Some(p) = problem {
        ck.error(&at, format!("{} {p}", path.display()));
    }
}

/// The path of a field of origin `name`.
pub(super) fn origin_path(name: &str, rest: &[&str]) -> Vec<Seg> {
    let mut p = vec![key("origins"), key(name)];
    p.extend(rest.iter().map(|s| key(s)));
    p
}

/// One origin: its name, servers, Host, timeouts and keep-alive; then its health probes.
fn check_origin(ck: &mut Checker, name: &str, o: &OriginConfig) {
    let at = |rest: &[&str]| origin_path(name, rest);
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
    if o.keepalive.max_requests == Some(0) {
        ck.error(
            &at(&["keepalive", "max_requests"]),
            "must be at least 1 (use pool_size: 0 to disable pooling; leave it out for no limit)",
        );
    }
    check_warm(ck, name, o);
    check_probes(ck, name, o);
    check_origin_tls(ck, name, o);
}

/// `keepalive.warm`: connections opened ahead of need must have a pool to go back to.
fn check_warm(ck: &mut Checker, name: &str, o: &OriginConfig) {
    let ka = &o.keepalive;
    let at = |field: &str| origin_path(name, &["keepalive", field]);
    if ka.warm_idle.get().is_zero() {
        ck.error(&at("warm_idle"), "must be longer than 0s");
    }
    if ka.warm == 0 {
        return;
    }
    if o.tls.is_some() && o.http2 {
        // Not an error: it still saves the TCP round trip. But an operator expects TLS too.
        eprintln!(
            "edge: warning: {}: origins.{name}.keepalive.warm: with http2: true, warm connections \
             to this HTTPS origin are TCP only; the TLS handshake happens at first use",
            ck.file
        );
    }
    if ka.pool_size == 0 || ka.idle_timeout.get().is_zero() {
        ck.error(
            &at("warm"),
            "needs pooling (pool_size and idle_timeout above 0): a warm connection is kept for \
             the requests after the first",
        );
    } else if ka.warm > ka.pool_size {
        ck.error(
            &at("warm"),
            format!(
                "{} is more than pool_size ({}): the extra connections would be closed after \
                 their first request",
                ka.warm, ka.pool_size
            ),
        );
    }
}

/// One origin's `health_check` and `tcp_keepalive`, when written.
fn check_probes(ck: &mut Checker, name: &str, o: &OriginConfig) {
    let at = |rest: &[&str]| origin_path(name, rest);
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

/// One route: its origin exists, its host pattern and path prefix are well formed, and the
/// header names of its cache key and bypass are valid.
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
    if !r.cache.enabled && r.cache.ranges == super::schema::RangeMisses::Forward {
        let p = [key("routes"), Seg::Index(i), key("cache"), key("ranges")];
        ck.warn(
            &p,
            "has no effect with the cache off (cache.enabled: false): every range request \
             goes to the origin as it is anyway",
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

/// A server address: an `ip:port` as is, or a `host:port` resolved to its first address.
pub(super) fn resolve(address: &str) -> Result<SocketAddr, String> {
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
