//! Live reload: re-read the config file, validate it whole, and swap it in atomically.
//!
//! A refused config changes nothing. An accepted one is built next to the running one, handing
//! on what must survive (server health and in-flight counts; pooled connections survive by
//! themselves because their pool key is derived from the origin's name and connection settings),
//! then swapped in with one pointer store. Requests in flight finish on the config they started
//! with. Settings that only a restart can change are reported, not silently ignored.

use std::time::UNIX_EPOCH;

use log::{error, info, warn};

use crate::config::{self, Config, ConfigErrors};
use crate::metrics::Metrics;
use crate::state::{Edge, Live};

/// The result of an accepted reload.
#[derive(Debug)]
pub struct Applied {
    pub version: String,
    /// True if the file was the same as the config in force (nothing rebuilt).
    pub unchanged: bool,
    pub pending_restart: Vec<String>,
}

/// Why a reload was refused.
#[derive(Debug)]
pub enum Refused {
    NoConfigFile,
    Invalid(ConfigErrors),
    /// The config was valid but a listener's certificates could not be loaded (changed since).
    Certificates(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::NoConfigFile => f.write_str("no config file to reload (started without -c)"),
            Refused::Invalid(e) => write!(f, "{e}"),
            Refused::Certificates(e) => f.write_str(e),
        }
    }
}

/// Settings the running process cannot change: listeners and Pingora's server settings.
pub fn needs_restart(boot: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    // Certificates reload live; addresses, TLS on or off and h2 are the sockets' own.
    let sockets = |c: &Config| -> Vec<_> {
        c.listen
            .iter()
            .map(|l| (l.addr, l.tls.is_some(), l.http2))
            .collect()
    };
    if sockets(boot) != sockets(new) {
        out.push("listen".to_string());
    }
    if crate::tls::upstream::ca_files(boot) != crate::tls::upstream::ca_files(new) {
        out.push("origins.*.tls.ca_file (the CA bundle)".to_string());
    }
    if boot.admin != new.admin {
        out.push("admin.listen".to_string());
    }
    if boot.cluster != new.cluster {
        // The purge task connects once, with the node name and stream it started with.
        out.push("cluster".to_string());
    }
    if boot.cache.max_size != new.cache.max_size {
        out.push("cache.max_size".to_string());
    }
    if boot.cache.disk != new.cache.disk {
        out.push("cache.disk".to_string());
    }
    // HTTP/2 settings are the proxy's, built once (see server::h2_settings).
    let (bc, nc) = (&boot.client, &new.client);
    for (field, changed) in [
        (
            "client.h2_max_concurrent_streams",
            bc.h2_max_concurrent_streams != nc.h2_max_concurrent_streams,
        ),
        (
            "client.h2_max_header_list_size",
            bc.h2_max_header_list_size != nc.h2_max_header_list_size,
        ),
        (
            "client.keepalive_timeout (for HTTP/2 connections)",
            bc.keepalive_timeout != nc.keepalive_timeout,
        ),
    ] {
        if changed {
            out.push(field.to_string());
        }
    }
    let (b, n) = (&boot.server, &new.server);
    let fields = [
        ("server.threads", b.threads != n.threads),
        ("server.pid_file", b.pid_file != n.pid_file),
        ("server.upgrade_sock", b.upgrade_sock != n.upgrade_sock),
        ("server.grace_period", b.grace_period != n.grace_period),
        (
            "server.graceful_shutdown_timeout",
            b.graceful_shutdown_timeout != n.graceful_shutdown_timeout,
        ),
        (
            "server.upstream_pool_size",
            b.upstream_pool_size != n.upstream_pool_size,
        ),
        ("server.error_log", b.error_log != n.error_log),
    ];
    out.extend(
        fields
            .iter()
            .filter(|(_, changed)| *changed)
            .map(|(name, _)| name.to_string()),
    );
    out
}

/// Reloads the config file; `trigger` says who asked (for the log).
pub fn reload(edge: &Edge, trigger: &str) -> Result<Applied, Refused> {
    let _one_at_a_time = edge.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
    let m = &edge.metrics.process;
    let Some(path) = &edge.config_path else {
        m.reloads.with_label_values(&["failure"]).inc();
        return Err(Refused::NoConfigFile);
    };
    let (config, source) = match config::load(path) {
        Ok(loaded) => loaded,
        Err(errors) => {
            m.reloads.with_label_values(&["failure"]).inc();
            error!(
                "config reload ({trigger}) refused, the previous config keeps serving:\n{errors}"
            );
            return Err(Refused::Invalid(errors));
        }
    };
    let old = edge.snapshot();
    // Certificates are read even when the file did not change: renewed certificate files are
    // the usual reason to reload.
    if let Err(e) = crate::tls::reload_certificates(&edge.tls, &config) {
        m.reloads.with_label_values(&["failure"]).inc();
        error!("config reload ({trigger}) refused, the previous config keeps serving:\n{e}");
        return Err(Refused::Certificates(e));
    }
    let pending_restart = needs_restart(&edge.boot, &config);
    let version = crate::state::version_of(&source);
    // A rotated admin token changes no config text, but must take effect.
    let unchanged = version == old.version && crate::state::admin_token(&config) == old.admin_token;
    if !unchanged {
        let mut live = Live::build(config, source, Some(&old), &edge.metrics, &edge.ca_bundle);
        live.pending_restart = pending_restart.clone();
        forget_removed_servers(&old, &live, &edge.metrics);
        crate::logging::set_level(live.config.log.level.filter());
        let to = crate::access_log::Destination::of(&live.config.log);
        edge.access_log.set_destination(&to);
        edge.cache.apply(&live.config.cache);
        let limit_changed = live.config.client.max_connections != old.config.client.max_connections;
        edge.live.store(std::sync::Arc::new(live));
        if limit_changed {
            // The open-files limit is checked against the new limit, as at start.
            crate::server::warn_if_descriptors_short(edge);
        }
    }
    m.reloads.with_label_values(&["success"]).inc();
    m.last_reload_success.set(
        UNIX_EPOCH
            .elapsed()
            .map(|d| d.as_secs_f64())
            .unwrap_or_default(),
    );
    m.set_config_version(&version);
    if pending_restart.is_empty() {
        info!("config reload ({trigger}): version {version} in force");
    } else {
        warn!(
            "config reload ({trigger}): version {version} in force, but {} need a restart or an \
             upgrade (-u) to take effect",
            pending_restart.join(", ")
        );
    }
    Ok(Applied {
        version,
        unchanged,
        pending_restart,
    })
}

/// Drops the metric series of servers that are gone, so dashboards do not show them forever.
fn forget_removed_servers(old: &Live, new: &Live, m: &Metrics) {
    for (name, origin) in &old.origins {
        for s in &origin.servers {
            let kept = new
                .origins
                .get(name)
                .is_some_and(|o| o.servers.iter().any(|n| n.address == s.address));
            if !kept {
                m.upstream.forget_server(name, &s.address);
            }
        }
    }
}

/// Reloads on SIGHUP, as nginx does. Pingora handles INT, TERM and QUIT; HUP would otherwise
/// kill the process.
pub struct SighupReloader {
    pub edge: std::sync::Arc<Edge>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for SighupReloader {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                error!("cannot listen for SIGHUP, reload only through POST /reload: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    // Reading and parsing a file is quick but blocking: keep it off the reactor.
                    let edge = self.edge.clone();
                    let _ = tokio::task::spawn_blocking(move || reload(&edge, "SIGHUP")).await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
