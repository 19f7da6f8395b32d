//! The edge's state, built once at start and passed to every service (proxy, express lane,
//! admin, background tasks); nothing is reached through globals.
//!
//! - [`Edge`]: what lives as long as the process: the cache, the metrics registry, the upstream
//!   connection ledger, the access log's writer, the fleet (`cluster`), and the config in force
//!   behind one atomic pointer.
//! - [`Live`]: the config in force plus what is built from it (router, origins with their
//!   balancers, health state and metric handles). Requests take a snapshot when they start and
//!   keep it to the end, so a reload never shows a request half of one config and half of
//!   another.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use pingora::protocols::http::ServerSession;

use crate::access_log::{AccessLog, Destination};
use crate::cache::Cache;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::guard;
use crate::metrics::Metrics;
use crate::origin::reuse::ConnectionLedger;
use crate::origin::router::Router;
use crate::origin::Origin;
use crate::tls::certs::CertResolver;

pub struct Live {
    pub config: Config,
    pub router: Router,
    pub origins: HashMap<String, Arc<Origin>>,
    /// The bearer token the admin API requires (`admin.token_file`, read when this config was
    /// built); None: no authentication.
    pub admin_token: Option<String>,
    /// The client request limits the guard enforces, from `client.*`.
    pub limits: guard::Limits,
    /// Identifies the config text in force (a hash of it), for operators and dashboards.
    pub version: String,
    pub loaded_at: SystemTime,
    /// The YAML it came from, as served at `GET /config`.
    pub source: String,
    /// Settings of this config that differ from the running process but need a restart or an
    /// upgrade to take effect (listeners, threads, Pingora server settings).
    pub pending_restart: Vec<String>,
}

impl Live {
    /// Builds from `config`; `previous` (the config being replaced) hands on server state;
    /// `ca_bundle`: the CA files Pingora's connector trusts (see `tls::upstream`).
    pub fn build(
        config: Config,
        source: String,
        previous: Option<&Live>,
        m: &Metrics,
        ca_bundle: &BTreeSet<PathBuf>,
    ) -> Self {
        let origins = config
            .origins
            .iter()
            .map(|(name, o)| {
                let prev = previous.and_then(|p| p.origins.get(name)).map(Arc::as_ref);
                (
                    name.clone(),
                    Arc::new(Origin::new(name, o, prev, m, ca_bundle)),
                )
            })
            .collect();
        Live {
            router: Router::new(&config.routes),
            origins,
            admin_token: admin_token(&config),
            limits: guard::Limits::from(&config.client),
            version: version_of(&source),
            loaded_at: SystemTime::now(),
            source,
            pending_restart: Vec::new(),
            config,
        }
    }
}

impl Live {
    /// The scheme of a request's client, which the cache key carries: the connection's (`tls`),
    /// or on a listener marked `from_edges` the front's `X-Forwarded-Proto` (see
    /// `cluster::client_scheme`). `local` (the connection's local address) and `forwarded` are
    /// asked for only when some listener is marked, so an edge without one pays nothing per
    /// request. The express lane and the proxy both decide it here, so they look up the same
    /// key.
    pub fn client_scheme<'h>(
        &self,
        tls: bool,
        local: impl FnOnce() -> Option<SocketAddr>,
        forwarded: impl FnOnce() -> Option<&'h [u8]>,
    ) -> crate::cache::key::Scheme {
        let from_edges =
            self.config.listen.iter().any(|l| l.from_edges) && self.listener_for_edges(local());
        let forwarded = if from_edges { forwarded() } else { None };
        crate::cluster::client_scheme(tls, from_edges, forwarded)
    }

    /// `client_scheme` for a request Pingora has read (the proxy's and the h2 lane's; the
    /// HTTP/1 lane reads its raw bytes and asks `client_scheme` itself).
    pub fn scheme_of(&self, session: &ServerSession) -> crate::cache::key::Scheme {
        let tls = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .is_some();
        self.client_scheme(
            tls,
            || session.server_addr().and_then(|a| a.as_inet()).copied(),
            || {
                let v = session.req_header().headers.get("x-forwarded-proto");
                v.map(|v| v.as_bytes())
            },
        )
    }

    /// Whether the listener a connection arrived on (`local`: its local address) is marked
    /// `from_edges`; a listener on an unspecified address (`0.0.0.0:8080`) matches by port.
    fn listener_for_edges(&self, local: Option<SocketAddr>) -> bool {
        let Some(local) = local else {
            return false;
        };
        self.config.listen.iter().any(|l| {
            l.from_edges
                && (l.addr == local
                    || (l.addr.ip().is_unspecified() && l.addr.port() == local.port()))
        })
    }
}

/// The admin API's bearer token as `admin.token_file` holds it now. Checked readable when the
/// config was validated; if it went since, nothing matches an empty token and the admin API
/// stays locked.
pub fn admin_token(config: &Config) -> Option<String> {
    config.admin_token_file.as_ref().map(|f| {
        std::fs::read_to_string(f)
            .map(|t| t.trim().to_string())
            .unwrap_or_else(|e| {
                log::error!(
                    "admin.token_file {}: {e}; the admin API is locked",
                    f.display()
                );
                String::new()
            })
    })
}

/// The config version: XXH3-64 of its text, so every edge and build names a file alike.
pub fn version_of(source: &str) -> String {
    format!("{:016x}", crate::hash::stable64(source.as_bytes()))
}

/// Process-wide state shared by the proxy, the express lane, the admin listener and background
/// tasks.
pub struct Edge {
    pub live: ArcSwap<Live>,
    /// The one cache, whatever the config in force (a reload keeps every object).
    pub cache: Cache,
    pub metrics: Metrics,
    pub ledger: ConnectionLedger,
    /// The origins' CA files in the bundle Pingora's connector loaded at start.
    pub ca_bundle: BTreeSet<PathBuf>,
    /// Each HTTPS listener's certificates, by address; a reload swaps their contents.
    pub tls: HashMap<SocketAddr, Arc<CertResolver>>,
    /// The file reloads read; None in demo mode.
    pub config_path: Option<PathBuf>,
    /// The config the process started with: what in-process reloads cannot change is judged
    /// against it.
    pub boot: Config,
    /// Serializes reloads: two at once would race on which one is "previous".
    pub reload_lock: Mutex<()>,
    /// The access log's buffered writer (`log.access_file` or stderr); a reload moves it.
    pub access_log: Arc<AccessLog>,
    /// How late this process's timers fire (part of every keep-alive margin).
    pub sched_delay: crate::clock::SchedDelay,
    /// The connector warm TLS connections to HTTPS origins are opened with, shared by the
    /// proxy's custom connector and the warm loop (set when the proxy service is built).
    pub warm_transport: std::sync::OnceLock<Arc<pingora::connectors::TransportConnector>>,
    /// This edge in its fleet: the node name, and the purge stream when `cluster.nats` is set.
    pub cluster: Cluster,
}

impl Edge {
    /// Fails when a listener's certificates cannot be loaded or `log.access_file` opened.
    pub fn new(
        config: Config,
        source: String,
        config_path: Option<PathBuf>,
    ) -> Result<Arc<Self>, String> {
        let tls = crate::tls::resolvers(&config)?;
        let metrics = Metrics::new();
        let to = Destination::of(&config.log);
        let access_log = AccessLog::open(&to, metrics.process.access_log_dropped.clone())
            .map_err(|e| format!("log.access_file: cannot open {to}: {e}"))?;
        let cache = Cache::new(&config.cache)?;
        let cluster = Cluster::new(&config.cluster);
        if let Some(disk) = cache.store.disk().filter(|_| cluster.shares_purges()) {
            // Purges sent while this edge was down apply to its disk tier before it serves
            // from it (see `cluster::service`).
            disk.hold();
        }
        let ca_bundle = crate::tls::upstream::ca_files(&config);
        let live = Live::build(config.clone(), source, None, &metrics, &ca_bundle);
        metrics.process.set_config_version(&live.version);
        Ok(Arc::new(Edge {
            tls,
            ca_bundle,
            boot: config,
            live: ArcSwap::from_pointee(live),
            cache,
            metrics,
            ledger: ConnectionLedger::default(),
            config_path,
            reload_lock: Mutex::new(()),
            access_log: Arc::new(access_log),
            sched_delay: Default::default(),
            warm_transport: Default::default(),
            cluster,
        }))
    }

    pub fn snapshot(&self) -> Arc<Live> {
        self.live.load_full()
    }
}

/// The guard's limits from `client.*` (the guard does not read the config itself).
impl From<&crate::config::ClientSettings> for guard::Limits {
    fn from(c: &crate::config::ClientSettings) -> Self {
        guard::Limits {
            max_headers: c.max_headers,
            max_header_size: c.max_header_size.0 as usize,
            body_buffer_size: c.body_buffer_size.0 as usize,
            max_body_size: c.max_body_size.0,
            body_timeout: c.body_timeout.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `printf 'listen: ["127.0.0.1:8080"]\n' | xxhsum -H3`: every edge, build and platform
    /// reports this version for this text.
    #[test]
    fn version_is_stable() {
        assert_eq!(
            version_of("listen: [\"127.0.0.1:8080\"]\n"),
            "88c945c0ef6ed877"
        );
    }
}
