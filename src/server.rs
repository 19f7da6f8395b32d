//! Wiring: turns a validated config into a Pingora server with the proxy, admin and health
//! check services, and runs it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pingora::apps::HttpServerOptions;
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use pingora::server::RunArgs;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::access_log::AccessLogService;
use crate::admin::Admin;
use crate::background::HealthChecker;
use crate::config::Config;
use crate::connections::{AtCapacity, Limited, OpenConnections};
use crate::express::EdgeApp;
use crate::origin::warm::tls::{FindServer, WarmTls};
use crate::proxy::{EdgeHttpProxy, EdgeProxy};
use crate::reload::SighupReloader;
use crate::state::Edge;
use pingora::proxy::HttpProxy;

/// How the process was asked to start.
#[derive(Debug, Default, Clone)]
pub struct StartOptions {
    /// Take over the listening sockets of a running edge (Pingora's graceful upgrade).
    pub upgrade: bool,
    pub daemon: bool,
}

/// Pingora's server settings from ours. Paths default to names derived from the first listen
/// address, so several edges on one machine never share a pid file or an upgrade socket.
pub fn pingora_conf(config: &Config, daemon: bool) -> ServerConf {
    let s = &config.server;
    let tag = config
        .listen
        .first()
        .map(|l| l.addr.to_string().replace([':', '.', '[', ']'], "_"))
        .unwrap_or_else(|| "edge".into());
    let pooled: usize = config
        .origins
        .values()
        .map(|o| o.keepalive.pool_size * o.servers.len())
        .sum();
    // Pingora's LRU is per process but sized per thread; size it so that per-origin limits, not
    // LRU eviction, decide which idle connections are kept.
    let per_thread = pooled.div_ceil(s.threads.max(1)).max(128);
    ServerConf {
        threads: s.threads,
        daemon,
        // With -d the parent returns once the child is ready (for an upgrade: ready to receive
        // the listening sockets), so systemd and scripts know when to send SIGQUIT.
        daemon_wait_for_ready: daemon,
        pid_file: s
            .pid_file
            .clone()
            .unwrap_or_else(|| format!("/tmp/edge-{tag}.pid")),
        upgrade_sock: s
            .upgrade_sock
            .clone()
            .unwrap_or_else(|| format!("/tmp/edge-{tag}.upgrade.sock")),
        grace_period_seconds: Some(s.grace_period.get().as_secs()),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout.get().as_secs()),
        upstream_keepalive_pool_size: s.upstream_pool_size.unwrap_or(per_thread),
        error_log: s.error_log.clone(),
        // What Pingora's connector trusts for HTTPS origins (see `tls::upstream`).
        ca_file: crate::tls::upstream::write_bundle(config, Path::new(&format!("/tmp/edge-{tag}.ca.pem")))
            .unwrap_or_else(|e| {
                log::error!("cannot write the origins' CA bundle: {e}; HTTPS origins with a ca_file will fail verification");
                None
            })
            .map(|p| p.display().to_string()),
        ..Default::default()
    }
}

/// Checks that every listen address can be bound. Pingora binds inside its service threads and
/// keeps running when a bind fails; an operator must instead get an error and an exit status.
/// Skipped on upgrade, where the sockets come from the running edge.
pub fn check_listeners(config: &Config) -> Result<(), String> {
    let all = config.listen.iter().map(|l| ("listen", &l.addr));
    for (what, addr) in all.chain(config.admin.iter().map(|a| ("admin.listen", a))) {
        std::net::TcpListener::bind(addr)
            .map_err(|e| format!("{what}: cannot listen on {addr}: {e}"))?;
    }
    Ok(())
}

/// Builds and runs the edge until it is told to stop. Never returns. `source` is the config
/// text and `path` the file reloads read (None: reload is refused).
pub fn run(config: Config, source: String, path: Option<PathBuf>, start: StartOptions) -> ! {
    let conf = pingora_conf(&config, start.daemon);
    let opt = Opt {
        upgrade: start.upgrade,
        daemon: start.daemon,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    // Bootstrap (which, on upgrade, receives the listening sockets from the running edge) runs
    // as a service after daemonizing, so `edge -u -d` returns at once and the caller can then
    // send SIGQUIT to the old process; the listeners start once it is done.
    let bootstrap = server.bootstrap_as_a_service();

    let listen = config.listen.clone();
    let admin_addr = config.admin;
    // The process's state (cache, metrics, certificates, config in force), built once and
    // handed to every service below.
    let edge = match Edge::new(config, source, path) {
        Ok(edge) => edge,
        Err(e) => {
            eprintln!("edge: {e}; nothing was started");
            std::process::exit(1);
        }
    };

    if let Some(disk) = edge.cache.store.disk().filter(|d| d.busy()) {
        // A graceful upgrade takes the tier over once the old process lets go (see
        // `cache::store::disk`); anything else would have two edges writing one directory.
        if !start.upgrade {
            eprintln!(
                "edge: cache.disk.path {} is in use by another edge (process {}); stop it, or \
                 take over from it with -u; nothing was started",
                disk.root().display(),
                disk.holder()
            );
            std::process::exit(1);
        }
    }
    warn_if_descriptors_short(&edge);

    let proxy = proxy_service(&server.configuration, &edge, &listen);
    if let Some(bundle) = &server.configuration.ca_file {
        // Pingora's connectors read the CA bundle when they are built (just above), and nothing
        // reads it again (a reload cannot change it): it is not left behind in /tmp.
        let _ = std::fs::remove_file(bundle);
    }
    server.add_service(proxy).add_dependency(&bootstrap);
    if let Some(addr) = admin_addr {
        let mut admin = Service::new("edge admin".to_string(), Admin { edge: edge.clone() });
        admin.add_tcp(&addr.to_string());
        server.add_service(admin).add_dependency(&bootstrap);
    }
    add_background_services(&mut server, &edge);
    // Not run_forever(), which exits the process as soon as Pingora is done: run() returns
    // after the stop (SIGTERM or SIGQUIT: once the grace period and the runtimes are over, so
    // every request has logged; SIGINT: at once), and the access log writes what it holds.
    server.run(RunArgs::default());
    edge.access_log.close();
    edge.cache.settle_disk();
    std::process::exit(0)
}

/// Raises the descriptor limit and says so when it cannot cover `client.max_connections`
/// (each needs a descriptor, and so do pooled upstream connections, listeners and files).
pub(crate) fn warn_if_descriptors_short(edge: &Edge) {
    let max = edge.snapshot().config.client.max_connections as u64;
    match crate::connections::raise_descriptor_limit() {
        Some(fds) if max > 0 && fds < max + 1024 => log::warn!(
            "open files limit is {fds}: client.max_connections ({max}) can run \
             out of descriptors (accept then pauses 1s at a time); raise LimitNOFILE/ulimit -n"
        ),
        Some(fds) => log::info!("open files limit: {fds}"),
        None => log::warn!("cannot read the open files limit"),
    }
}

/// Pingora's proxy around ours, with the custom upstream connector that hands out warm TLS
/// connections (`origin::warm::tls`); its transport is shared with the warm loop.
fn edge_http_proxy(conf: &Arc<ServerConf>, edge: &Arc<Edge>) -> EdgeHttpProxy {
    let transport = edge
        .warm_transport
        .get_or_init(|| {
            Arc::new(TransportConnector::new(Some(
                ConnectorOptions::from_server_conf(conf),
            )))
        })
        .clone();
    let state = edge.clone();
    let find: Arc<FindServer> = Arc::new(move |key: u64| {
        let live = state.snapshot();
        let found = live
            .origins
            .values()
            .flat_map(|o| o.servers.iter())
            .find(|s| s.warm_tls.as_ref().is_some_and(|w| w.key == key))
            .cloned();
        found
    });
    let mut proxy = HttpProxy::new_custom(
        EdgeProxy { edge: edge.clone() },
        conf.clone(),
        WarmTls { transport, find },
        None,
        None,
        None,
    );
    proxy.handle_init_modules();
    proxy
}

/// HTTP/2 toward clients: the stream and header-list limits, and how long a connection with no
/// stream open is kept (the keep-alive timeout, as for HTTP/1). Pingora's starting point keeps
/// the `h2` crate's defences against stream floods: at most 20 streams reset by the client
/// before the server accepted them, and 1024 the server had to reset for the client's errors,
/// before the connection is closed with `ENHANCE_YOUR_CALM` (rapid reset, CVE-2023-44487).
/// Fixed at start: a reload that changes them says a restart is needed.
fn h2_settings(
    c: &crate::config::ClientSettings,
) -> (pingora::protocols::http::v2::server::H2Options, Duration) {
    let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
    h2.max_concurrent_streams(c.h2_max_concurrent_streams);
    h2.max_header_list_size(c.h2_max_header_list_size.0 as u32);
    (h2, c.keepalive_timeout.get())
}

/// The client-facing service: the express lane in front of the proxy (see `express`), behind
/// the connection limit (see `connections`), on every listener.
fn proxy_service(
    conf: &Arc<ServerConf>,
    edge: &Arc<Edge>,
    listen: &[crate::config::Listener],
) -> Service<Limited<EdgeApp>> {
    let mut proxy = edge_http_proxy(conf, edge);
    let (h2, h2_idle) = h2_settings(&edge.boot.client);
    proxy.h2_options = Some(h2);
    let mut options = HttpServerOptions::default();
    options.h2_idle_timeout = Some(h2_idle);
    // Cleartext h2 with prior knowledge, on every cleartext listener of the service.
    options.h2c = listen.iter().any(|l| l.tls.is_none() && l.http2);
    proxy.server_options = Some(options);
    // Every client connection counts against client.max_connections.
    let open = Arc::new(OpenConnections::default());
    let app = Limited::new(
        EdgeApp::new(proxy, edge.clone()),
        edge.clone(),
        open.clone(),
    );
    let mut service = Service::new("edge proxy".to_string(), app);
    service.set_connection_filter(Arc::new(AtCapacity {
        open,
        edge: edge.clone(),
    }));
    for l in listen {
        let addr = l.addr.to_string();
        match edge.tls.get(&l.addr) {
            None => service.add_tcp(&addr),
            Some(resolver) => {
                let settings = crate::tls::listener_settings(resolver.clone(), l.http2, edge);
                service.add_tls_with_settings(&addr, None, settings);
            }
        }
    }
    service
}

/// Starts the disk tier's worker thread, if there is a tier: in a service, because services
/// start after daemonizing and a thread started before would not survive the fork.
struct DiskTierStart {
    edge: Arc<Edge>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for DiskTierStart {
    async fn start(&self, _shutdown: pingora::server::ShutdownWatch) {
        self.edge.cache.start_disk();
    }
}

/// The services without listeners: health checks and idle-timeout probes, reload on SIGHUP,
/// and the access log's writer.
fn add_background_services(server: &mut Server, edge: &Arc<Edge>) {
    server.add_service(background_service(
        "health checks",
        HealthChecker { edge: edge.clone() },
    ));
    server.add_service(background_service(
        "reload on SIGHUP",
        SighupReloader { edge: edge.clone() },
    ));
    server.add_service(background_service(
        "access log",
        AccessLogService {
            log: edge.access_log.clone(),
        },
    ));
    server.add_service(background_service(
        "cache disk tier",
        DiskTierStart { edge: edge.clone() },
    ));
    if edge.cluster.shares_purges() {
        server.add_service(background_service(
            "cluster purges",
            crate::cluster::PurgeService { edge: edge.clone() },
        ));
    }
}
