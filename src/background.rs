//! Background services: the active health checker, the idle-timeout probes and the warm
//! connections. A task that probes every server of every origin that has a `health_check`, on
//! that origin's interval, feeds results to the server's health, measures idle timeouts when
//! they are due, and keeps each server's warm connections (`origin::warm`) topped up. It
//! reads the config in force on each tick, so origins added by a reload get probed. It lives
//! outside `origin` because it walks the config in force (`state`), which holds the origins.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use log::{info, warn};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::origin::health::{probe, CHECKER_TICK};
use crate::origin::keepalive::{probe_idle_timeout, PROBE_SAMPLES};
use crate::origin::warm::keep_warm;
use crate::origin::Origin;
use crate::state::Edge;
use std::time::Duration;

pub struct HealthChecker {
    pub edge: Arc<Edge>,
}

impl HealthChecker {
    /// Starts the due idle-timeout probes of an origin's servers (see `keepalive`).
    fn probe_idle_timeouts(&self, origin: &Arc<Origin>) {
        let ka = &origin.config.keepalive;
        if !ka.learn || origin.pooling_off() {
            return;
        }
        // Beyond the configured idle timeout the origin's own does not matter: we close first.
        let limit = ka.idle_timeout.get() + Duration::from_secs(1);
        for server in &origin.servers {
            if !server.state.idle.take_probe_turn() {
                continue;
            }
            let (origin, server) = (origin.clone(), server.clone());
            let sched = self.edge.sched_delay.get();
            tokio::spawn(async move {
                let host = origin.probe_host(&server).to_string();
                let path = origin
                    .health_check()
                    .map_or("/", |h| h.path.as_str())
                    .to_string();
                // Several connections at once: the earliest close is the timeout, the spread
                // is the origin's timer slack.
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..PROBE_SAMPLES {
                    origin.metrics.opened_probe.inc();
                    let (host, path) = (host.clone(), path.clone());
                    let (origin, server) = (origin.clone(), server.clone());
                    set.spawn(async move {
                        let tls = origin.probe_tls(&server);
                        probe_idle_timeout(server.addr, tls, &host, &path, limit).await
                    });
                }
                let mut samples = Vec::new();
                while let Some(r) = set.join_next().await {
                    match r {
                        Ok(Ok(found)) => samples.push(found),
                        Ok(Err(e)) => log::debug!(
                            "origin {} server {}: idle timeout probe failed: {e}",
                            origin.name,
                            server.address
                        ),
                        Err(_) => {}
                    }
                }
                if samples.is_empty() {
                    return;
                }
                server.state.idle.probe_measured(&samples);
                if let Some(t) = server.state.idle.learned() {
                    info!(
                        "origin {} server {} closes idle connections after {:?}; pooled \
                         connections to it now idle at most {:?}",
                        origin.name,
                        server.address,
                        t,
                        origin.idle_limit(&server, sched)
                    );
                }
            });
        }
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut next_due: HashMap<String, Instant> = HashMap::new();
        loop {
            let live = self.edge.snapshot();
            let now = Instant::now();
            let sched = self.edge.sched_delay.get();
            for origin in live.origins.values() {
                self.probe_idle_timeouts(origin);
                keep_warm(origin, CHECKER_TICK, sched, self.edge.warm_transport.get());
                let Some(hc) = origin.health_check().cloned() else {
                    continue;
                };
                let due = next_due.entry(origin.name.clone()).or_insert(now);
                if *due > now {
                    continue;
                }
                *due = now + hc.interval.get().max(hc.timeout.get());
                for server in &origin.servers {
                    origin.metrics.opened_health_check.inc();
                    let (origin, server, hc) = (origin.clone(), server.clone(), hc.clone());
                    tokio::spawn(async move {
                        let host = origin.probe_host(&server).to_string();
                        let tls = origin.probe_tls(&server);
                        let result = probe(server.addr, tls, &host, &hc).await;
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
            let asked = Instant::now();
            tokio::select! {
                _ = tokio::time::sleep(CHECKER_TICK) => {
                    self.edge.sched_delay.observe(CHECKER_TICK, asked.elapsed());
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
