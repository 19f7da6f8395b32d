//! The config in force: the validated config plus what is built from it (router, origins with
//! their balancers, health state and metric handles). Requests take a snapshot when they start
//! and keep it to the end, so a swap never shows a request half of one config and half of another.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::origin::reuse::ConnectionLedger;
use crate::origin::router::Router;
use crate::origin::Origin;

pub struct Live {
    pub config: Config,
    pub router: Router,
    pub origins: HashMap<String, Arc<Origin>>,
}

impl Live {
    pub fn build(config: Config) -> Self {
        let origins = config
            .origins
            .iter()
            .map(|(name, o)| (name.clone(), Arc::new(Origin::new(name, o))))
            .collect();
        Live {
            router: Router::new(&config.routes),
            origins,
            config,
        }
    }
}

/// Process-wide state shared by the proxy, the admin listener and background tasks.
pub struct Edge {
    pub live: ArcSwap<Live>,
    pub ledger: ConnectionLedger,
}

impl Edge {
    pub fn new(config: Config) -> Arc<Self> {
        Arc::new(Edge {
            live: ArcSwap::from_pointee(Live::build(config)),
            ledger: ConnectionLedger::default(),
        })
    }

    pub fn snapshot(&self) -> Arc<Live> {
        self.live.load_full()
    }
}
