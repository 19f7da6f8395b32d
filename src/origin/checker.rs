//! The active health checker: a background task that probes every server of every origin that
//! has a `health_check`, on that origin's interval, and feeds results to the server's health.
//! It reads the config in force on each tick, so origins added by a reload get probed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use log::{info, warn};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::health::{probe, CHECKER_TICK};
use crate::live::Edge;

pub struct HealthChecker {
    pub edge: Arc<Edge>,
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut next_due: HashMap<String, Instant> = HashMap::new();
        loop {
            let live = self.edge.snapshot();
            let now = Instant::now();
            for origin in live.origins.values() {
                let Some(hc) = origin.health_check().cloned() else {
                    continue;
                };
                let due = next_due.entry(origin.name.clone()).or_insert(now);
                if *due > now {
                    continue;
                }
                *due = now + hc.interval.get().max(hc.timeout.get());
                for server in &origin.servers {
                    let (origin, server, hc) = (origin.clone(), server.clone(), hc.clone());
                    tokio::spawn(async move {
                        let host = origin.probe_host(&server).to_string();
                        let result = probe(server.addr, &host, &hc).await;
                        match server.health().probe_result(result.is_ok(), &hc) {
                            Some(true) => info!(
                                "origin {} server {} is up: health check {} passed {} times",
                                origin.name, server.address, hc.path, hc.rise
                            ),
                            Some(false) => warn!(
                                "origin {} server {} is down: health check {} failed {} times, last: {}",
                                origin.name,
                                server.address,
                                hc.path,
                                hc.fall,
                                result.err().unwrap_or_default()
                            ),
                            None => {}
                        }
                    });
                }
            }
            next_due.retain(|name, _| live.origins.contains_key(name));
            tokio::select! {
                _ = tokio::time::sleep(CHECKER_TICK) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
