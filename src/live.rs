//! The config in force: the validated config plus what is built from it (router, origins with
//! their balancers, health state and metric handles). Requests take a snapshot when they start
//! and keep it to the end, so a swap never shows a request half of one config and half of another.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::origin::reuse::ConnectionLedger;
use crate::origin::router::Router;
use crate::origin::Origin;

pub struct Live {
    pub config: Config,
    pub router: Router,
    pub origins: HashMap<String, Arc<Origin>>,
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
    /// Builds from `config`; `previous` (the config being replaced) hands on server state.
    pub fn build(config: Config, source: String, previous: Option<&Live>) -> Self {
        let origins = config
            .origins
            .iter()
            .map(|(name, o)| {
                let prev = previous.and_then(|p| p.origins.get(name)).map(Arc::as_ref);
                (name.clone(), Arc::new(Origin::new(name, o, prev)))
            })
            .collect();
        Live {
            router: Router::new(&config.routes),
            origins,
            version: version_of(&source),
            loaded_at: SystemTime::now(),
            source,
            pending_restart: Vec::new(),
            config,
        }
    }
}

pub fn version_of(source: &str) -> String {
    let mut h = DefaultHasher::new();
    source.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Process-wide state shared by the proxy, the admin listener and background tasks.
pub struct Edge {
    pub live: ArcSwap<Live>,
    pub ledger: ConnectionLedger,
    /// The file reloads read; None in demo mode.
    pub config_path: Option<PathBuf>,
    /// The config the process started with: what in-process reloads cannot change is judged
    /// against it.
    pub boot: Config,
    /// Serializes reloads: two at once would race on which one is "previous".
    pub reload_lock: Mutex<()>,
}

impl Edge {
    pub fn new(config: Config, source: String, config_path: Option<PathBuf>) -> Arc<Self> {
        Arc::new(Edge {
            boot: config.clone(),
            live: ArcSwap::from_pointee(Live::build(config, source, None)),
            ledger: ConnectionLedger::default(),
            config_path,
            reload_lock: Mutex::new(()),
        })
    }

    pub fn snapshot(&self) -> Arc<Live> {
        self.live.load_full()
    }
}
