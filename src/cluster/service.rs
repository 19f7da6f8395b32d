//! The purge task: holds the NATS connection, applies and publishes the admin API's purges,
//! and applies the fleet's purges read back from the stream in order. A Pingora background
//! service, so it starts after daemonizing and stops with the server.
//!
//! One task does all three, so they never race: a purge this edge publishes is applied here
//! before it is sent, and skipped when it comes back from the stream (by its message id).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use futures_util::StreamExt;
use log::{info, warn};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use super::message::Envelope;
use super::{Bus, Outcome, Request};
use crate::cache::purge::Purge;
use crate::cache::store::{Named, PurgeMode};
use crate::state::Edge;

/// How long a publish waits for JetStream's acknowledgement before the purge is queued.
const PUBLISH_WITHIN: Duration = Duration::from_secs(2);

/// Purges queued while NATS is unreachable, at most; beyond, the oldest are dropped (and
/// logged): they were applied here, but other edges will not see them.
const QUEUE_MAX: usize = 10_000;

/// The first read of the stream starts this long before the process did: purges published
/// while it was starting must not be missed, and the clocks of this host and NATS may differ.
/// Reading a few purges twice costs a few misses at most.
const CLOCK_SLACK: Duration = Duration::from_secs(60);

/// Retry bounds for opening the stream while NATS is unreachable.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

pub struct PurgeService {
    pub edge: Arc<Edge>,
}

#[async_trait]
impl BackgroundService for PurgeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(bus) = self.edge.cluster.bus.as_ref() else {
            return;
        };
        let Some(mut inbox) = bus.inbox.lock().unwrap().take() else {
            return;
        };
        let mut task = Task::new(self.edge.clone());
        tokio::select! {
            _ = task.run(bus, &mut inbox) => {}
            _ = shutdown.changed() => {}
        }
    }
}

struct Task {
    edge: Arc<Edge>,
    node: String,
    /// `<stream>.purge`.
    subject: String,
    /// Purges applied here that JetStream has not acknowledged yet, oldest first.
    unpublished: VecDeque<Envelope>,
    /// Message ids of purges applied here, until they come back from the stream.
    applied_here: HashSet<String>,
    /// The stream sequence of the last message applied (or skipped); 0 before the first.
    applied_seq: u64,
    /// The highest stream sequence known (from acknowledgements and deliveries).
    seen_seq: u64,
    /// Counts this process's purges, for their message ids.
    next_id: u64,
    started: SystemTime,
    /// `edge_cluster_nats_connected{stream}`.
    connected: prometheus::IntGauge,
}

impl Task {
    fn new(edge: Arc<Edge>) -> Task {
        let bus = edge.cluster.bus.as_ref().expect("started with a bus");
        Task {
            node: edge.cluster.node.clone(),
            subject: format!("{}.purge", bus.settings.stream),
            unpublished: VecDeque::new(),
            applied_here: HashSet::new(),
            applied_seq: 0,
            seen_seq: 0,
            next_id: 0,
            started: SystemTime::now(),
            connected: edge
                .metrics
                .cluster
                .connected
                .with_label_values(&[bus.settings.stream.as_str()]),
            edge: edge.clone(),
        }
    }

    async fn run(&mut self, bus: &Bus, inbox: &mut mpsc::Receiver<Request>) {
        let s = &bus.settings;
        let mut options = match &s.credentials_file {
            Some(f) => match async_nats::ConnectOptions::with_credentials_file(f).await {
                Ok(o) => o,
                Err(e) => {
                    warn!(
                        "cluster: cannot read {}: {e}; purges stay local",
                        f.display()
                    );
                    return;
                }
            },
            None => async_nats::ConnectOptions::new(),
        };
        options = options
            .name(format!("edge {}", self.node))
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .reconnect_delay_callback(|attempt| {
                RETRY_MIN
                    .saturating_mul(1 << attempt.min(5) as u32)
                    .min(RETRY_MAX)
            });
        let client = match options.connect(s.url.as_str()).await {
            Ok(c) => c,
            Err(e) => {
                warn!("cluster: cannot use {}: {e}; purges stay local", s.url);
                return;
            }
        };
        let mut js = jetstream::new(client);
        js.set_timeout(PUBLISH_WITHIN);
        let mut retry = RETRY_MIN;
        let mut logged_down = false;
        loop {
            let opening = open(&js, s, self.start_at());
            tokio::pin!(opening);
            let opened = loop {
                tokio::select! {
                    r = &mut opening => break r,
                    Some(req) = inbox.recv() => self.take(&js, req).await,
                }
            };
            let (info, mut messages) = match opened {
                Ok(o) => o,
                Err(e) => {
                    if !logged_down {
                        warn!(
                            "cluster: purge stream {} at {} unreachable: {e}; serving on, \
                               purges from other edges wait",
                            s.stream, s.url
                        );
                        logged_down = true;
                    }
                    self.set_open(bus, false);
                    let pause = tokio::time::sleep(retry);
                    tokio::pin!(pause);
                    loop {
                        tokio::select! {
                            _ = &mut pause => break,
                            Some(req) = inbox.recv() => self.take(&js, req).await,
                        }
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                    continue;
                }
            };
            retry = RETRY_MIN;
            if logged_down {
                info!("cluster: purge stream {} reachable again", s.stream);
                logged_down = false;
            }
            self.check_history(&info);
            self.seen_seq = self.seen_seq.max(info.last_sequence);
            self.set_open(bus, true);
            let opened_at = SystemTime::now();
            self.flush(&js).await;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    m = messages.next() => match m {
                        Some(Ok(msg)) => self.apply(&msg, opened_at),
                        Some(Err(e)) => {
                            warn!("cluster: reading purge stream {}: {e}; reopening", s.stream);
                            break;
                        }
                        None => break,
                    },
                    Some(req) = inbox.recv() => self.take(&js, req).await,
                    _ = tick.tick() => {
                        if js.client().connection_state() != async_nats::connection::State::Connected {
                            // Disconnected: the ordered consumer would wait for its heartbeat;
                            // reopen from the last sequence applied once NATS is back.
                            break;
                        }
                        self.flush(&js).await;
                    }
                }
            }
            self.set_open(bus, false);
        }
    }

    /// Where a new read of the stream starts: after the last message applied, or (first read,
    /// nothing applied yet) at this process's start (see `CLOCK_SLACK`).
    fn start_at(&self) -> consumer::DeliverPolicy {
        if self.applied_seq > 0 {
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: self.applied_seq + 1,
            }
        } else {
            let t = self
                .started
                .checked_sub(CLOCK_SLACK)
                .unwrap_or(self.started);
            consumer::DeliverPolicy::ByStartTime {
                start_time: t.into(),
            }
        }
    }

    /// After a long absence the stream may no longer hold every purge this edge missed
    /// (`max_age`, `max_messages`), or it was deleted and made anew: what the cache holds
    /// may then be purged content, so the cache is emptied.
    fn check_history(&mut self, info: &StreamState) {
        if self.applied_seq == 0 {
            return;
        }
        let lost =
            info.first_sequence > self.applied_seq + 1 || info.last_sequence < self.applied_seq;
        if !lost {
            return;
        }
        let n = self
            .edge
            .cache
            .store
            .purge_named(Named::Prefix(""), PurgeMode::Hard);
        warn!(
            "cluster: purges after sequence {} have left the stream (it now holds {}..={}); \
             emptied the cache ({n} objects) rather than serve what they may have purged",
            self.applied_seq, info.first_sequence, info.last_sequence
        );
        self.edge.metrics.cluster.history_lost.inc();
        self.applied_seq = info.first_sequence.saturating_sub(1);
    }

    fn set_open(&self, bus: &Bus, open: bool) {
        bus.set_reachable(open);
        self.connected.set(open as i64);
    }

    /// An admin purge: applied here, then published (or queued if NATS does not acknowledge).
    async fn take(&mut self, js: &jetstream::Context, req: Request) {
        let removed = self.apply_here(&req.purge);
        self.next_id += 1;
        let started = self
            .started
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let envelope = Envelope {
            purge: req.purge,
            node: self.node.clone(),
            id: format!("{}-{started}-{}", self.node, self.next_id),
        };
        self.applied_here.insert(envelope.id.clone());
        // Purges queued before this one go first, so the stream keeps this edge's order.
        let outcome = if self.unpublished.is_empty() {
            match publish(js, &self.subject, &envelope).await {
                Ok(sequence) => {
                    self.published(sequence);
                    Outcome::Published { removed, sequence }
                }
                Err(why) => {
                    self.queue(envelope);
                    Outcome::Queued { removed, why }
                }
            }
        } else {
            self.queue(envelope);
            Outcome::Queued {
                removed,
                why: "earlier purges are still waiting for NATS".into(),
            }
        };
        let _ = req.reply.send(outcome);
    }

    fn queue(&mut self, envelope: Envelope) {
        if self.unpublished.len() >= QUEUE_MAX {
            if let Some(dropped) = self.unpublished.pop_front() {
                warn!(
                    "cluster: {QUEUE_MAX} purges wait for NATS; dropped the oldest ({} {}), \
                     which other edges will not see",
                    dropped.purge.kind.as_str(),
                    dropped.purge.value
                );
                self.applied_here.remove(&dropped.id);
            }
        }
        self.unpublished.push_back(envelope);
        self.edge
            .metrics
            .cluster
            .queued
            .set(self.unpublished.len() as i64);
    }

    /// Publishes queued purges in order, until one fails.
    async fn flush(&mut self, js: &jetstream::Context) {
        while let Some(envelope) = self.unpublished.front() {
            match publish(js, &self.subject, envelope).await {
                Ok(sequence) => {
                    self.unpublished.pop_front();
                    self.published(sequence);
                }
                Err(_) => break,
            }
        }
        self.edge
            .metrics
            .cluster
            .queued
            .set(self.unpublished.len() as i64);
    }

    fn published(&mut self, sequence: u64) {
        self.edge.metrics.cluster.published.inc();
        self.seen_seq = self.seen_seq.max(sequence);
        self.update_lag();
    }

    /// A message from the stream: applied unless this edge applied it when publishing it.
    fn apply(&mut self, msg: &jetstream::Message, opened_at: SystemTime) {
        let m = &self.edge.metrics.cluster;
        let (sequence, published) = match msg.info() {
            Ok(i) => {
                self.seen_seq = self.seen_seq.max(i.stream_sequence + i.pending);
                (i.stream_sequence, SystemTime::from(i.published))
            }
            Err(e) => {
                warn!("cluster: a purge stream message without its metadata: {e}");
                return;
            }
        };
        match Envelope::decode(msg.headers.as_ref(), &msg.payload) {
            Err(e) => {
                m.rejected.with_label_values(&["malformed"]).inc();
                warn!("cluster: skipped purge stream message {sequence}: {e}");
            }
            Ok(env) if env.node == self.node && self.applied_here.remove(&env.id) => {}
            Ok(env) => {
                let removed = self.apply_here(&env.purge);
                m.applied.inc();
                let replayed = published < opened_at;
                if replayed {
                    m.replayed.inc();
                }
                log::debug!(
                    "cluster: {} purge of {} {} from {} (sequence {sequence}{}): {removed} objects",
                    env.purge.mode_str(),
                    env.purge.kind.as_str(),
                    env.purge.value,
                    env.node,
                    if replayed { ", replayed" } else { "" }
                );
            }
        }
        self.applied_seq = sequence;
        m.applied_sequence.set(sequence as i64);
        self.update_lag();
    }

    /// Applies a purge to this edge's cache with the routes in force; counts it.
    fn apply_here(&self, purge: &Purge) -> usize {
        let live = self.edge.snapshot();
        let removed = purge.apply(self.edge.cache.store, &live.router);
        self.edge
            .metrics
            .cache
            .purged
            .with_label_values(&[purge.kind.as_str()])
            .inc_by(removed as u64);
        removed
    }

    fn update_lag(&self) {
        let lag = self.seen_seq.saturating_sub(self.applied_seq);
        self.edge.metrics.cluster.lag.set(lag as i64);
    }
}

/// The stream's bounds when it was opened.
struct StreamState {
    first_sequence: u64,
    last_sequence: u64,
}

type Messages = consumer::pull::Ordered;

/// Opens (creating it if missing) the stream and an ordered consumer on it from `start`.
async fn open(
    js: &jetstream::Context,
    s: &crate::config::NatsSettings,
    start: consumer::DeliverPolicy,
) -> Result<(StreamState, Messages), String> {
    let stream = js
        .get_or_create_stream(stream::Config {
            name: s.stream.clone(),
            subjects: vec![format!("{}.purge", s.stream)],
            storage: stream::StorageType::File,
            max_age: s.max_age.get(),
            max_messages: s.max_messages,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let state = &stream.cached_info().state;
    let bounds = StreamState {
        first_sequence: state.first_sequence,
        last_sequence: state.last_sequence,
    };
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: start,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let messages = consumer.messages().await.map_err(|e| e.to_string())?;
    Ok((bounds, messages))
}

/// Publishes one purge and waits for JetStream to store it; its stream sequence.
async fn publish(js: &jetstream::Context, subject: &str, e: &Envelope) -> Result<u64, String> {
    let (headers, payload) = e.encode();
    let send = async {
        let ack = js
            .publish_with_headers(subject.to_string(), headers, payload)
            .await
            .map_err(|e| e.to_string())?;
        ack.await.map(|a| a.sequence).map_err(|e| e.to_string())
    };
    tokio::time::timeout(PUBLISH_WITHIN + Duration::from_millis(500), send)
        .await
        .unwrap_or_else(|_| Err(format!("no acknowledgement within {PUBLISH_WITHIN:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_read_starts_before_the_process_and_later_ones_after_the_last_applied() {
        let text = "listen: [\"127.0.0.1:1\"]\norigins: {o: {servers: [\"127.0.0.1:2\"]}}\n\
                    routes: [{host: \"*\", origin: o}]\n\
                    cluster: {node: a, nats: {url: \"nats://127.0.0.1:3\"}}\n";
        let config = crate::config::parse(text, "t.yaml").unwrap();
        let edge = Edge::new(config, text.into(), None).unwrap();
        let mut t = Task::new(edge);
        match t.start_at() {
            consumer::DeliverPolicy::ByStartTime { start_time } => {
                assert_eq!(SystemTime::from(start_time), t.started - CLOCK_SLACK)
            }
            other => panic!("{other:?}"),
        }
        t.applied_seq = 41;
        assert!(matches!(
            t.start_at(),
            consumer::DeliverPolicy::ByStartSequence { start_sequence: 42 }
        ));
    }
}
