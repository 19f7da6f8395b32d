//! The purge task: holds the NATS connection, applies and publishes the admin API's purges,
//! and applies the fleet's purges read back from the stream in order. A Pingora background
//! service, so it starts after daemonizing and stops with the server.
//!
//! One task does it all, so nothing races: a purge this edge publishes is applied here before
//! it is sent, and skipped when it comes back from the stream (by its message id). Its life:
//! connect (`run`), wait until the stream opens (`wait_for_stream`), follow it until it fails
//! (`follow_stream`), and again; admin purges are taken and due repeats applied throughout.
//!
//! Over 600 lines on purpose: the one task's whole life in one file, since every step shares its
//! state (queue, applied ids, position); its unit tests are the last ~30 lines.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{self, consumer};
use async_trait::async_trait;
use futures_util::StreamExt;
use log::{info, warn};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use super::message::Envelope;
use super::position::{self, Replay};
use super::stream::{self, Messages, StreamState};
use super::{apply_here, Bus, Handled, Request};
use crate::cache::purge::Purge;
use crate::cache::store::{Named, PurgeMode};
use crate::state::Edge;

/// Purges queued while NATS is unreachable, at most; beyond, the oldest are dropped (logged and
/// counted): they were applied here, but other edges will not see them.
const QUEUE_MAX: usize = 10_000;

/// Purges waiting to be applied again (`purge_again_after`), at most; beyond, the oldest
/// repeat is skipped.
const AGAIN_MAX: usize = 100_000;

/// The first read of the stream starts this long before the process did: purges published
/// while it was starting must not be missed, and the clocks of this host and NATS may differ.
/// Reading a few purges twice costs a few misses at most.
const CLOCK_SLACK: Duration = Duration::from_secs(60);

/// Retry bounds for opening the stream while NATS is unreachable, and for reopening a stream
/// that failed soon after it opened.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// A stream that stayed open this long resets the retry delay.
const STABLE: Duration = Duration::from_secs(10);

/// How often the task looks at due repeats, the connection and the queue.
const TICK: Duration = Duration::from_millis(100);

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
        if let Some(disk) = self.edge.cache.store.disk().filter(|d| d.held()) {
            tokio::spawn(position::give_up_waiting(disk, self.edge.cache.store));
        }
        tokio::select! {
            _ = task.run(bus, &mut inbox) => {}
            _ = shutdown.changed() => {}
        }
        task.stop().await;
    }
}

struct Task {
    edge: Arc<Edge>,
    node: String,
    /// `<stream>.purge`.
    subject: String,
    purge_again_after: Duration,
    /// Set once connected (the client reconnects by itself from then on).
    js: Option<jetstream::Context>,
    /// Purges applied here that JetStream has not acknowledged yet, oldest first.
    unpublished: VecDeque<Envelope>,
    /// Message ids of purges applied here, until they come back from the stream.
    applied_here: HashSet<String>,
    /// Purges to apply once more, when due (see `NatsSettings::purge_again_after`).
    again: VecDeque<(Instant, Purge)>,
    /// The stream sequence of the last message applied (or skipped); 0 before the first.
    applied_seq: u64,
    /// The highest stream sequence known (from acknowledgements and deliveries).
    seen_seq: u64,
    /// When the stream last opened was created (a new time: it was made anew).
    stream_created: Option<SystemTime>,
    /// Counts this process's purges, for their message ids.
    next_id: u64,
    started: SystemTime,
    /// `edge_cluster_nats_connected{stream}`.
    connected: prometheus::IntGauge,
    /// With a disk tier: the position kept beside it, and the hold on its hits.
    replay: Option<Replay>,
    /// A position was loaded: the stream is read from `applied_seq + 1`, even from 1.
    resumed: bool,
}

impl Task {
    fn new(edge: Arc<Edge>) -> Task {
        let bus = edge.cluster.bus.as_ref().expect("started with a bus");
        let replay = edge
            .cache
            .store
            .disk()
            .map(|d| Replay::new(d, &bus.settings.stream));
        // Resume where the disk tier's objects last had purges applied.
        let saved = replay.as_ref().and_then(Replay::load);
        if let Some(p) = &saved {
            info!(
                "cluster: resuming purge stream {} after sequence {} (the position kept beside \
                 the disk tier)",
                p.stream, p.applied
            );
        }
        Task {
            replay,
            resumed: saved.is_some(),
            node: edge.cluster.node.clone(),
            subject: stream::subject(&bus.settings),
            purge_again_after: bus.settings.purge_again_after.get(),
            js: None,
            unpublished: VecDeque::new(),
            applied_here: HashSet::new(),
            again: VecDeque::new(),
            applied_seq: saved.as_ref().map_or(0, |p| p.applied),
            seen_seq: 0,
            stream_created: saved.map(|p| p.created),
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

    /// Connects, then follows the stream for ever: reopened after each failure, with a
    /// growing pause when it fails soon after opening (a stream that opens and fails at once,
    /// e.g. refused pulls, is not reopened in a tight loop).
    async fn run(&mut self, bus: &Bus, inbox: &mut mpsc::Receiver<Request>) {
        let Some(js) = self.connect(bus).await else {
            // The inbox is dropped with the task: admin purges then apply locally and say so.
            return;
        };
        self.js = Some(js.clone());
        let mut retry = RETRY_MIN;
        loop {
            let opened = self.wait_for_stream(&js, bus, inbox, &mut retry).await;
            let lasted = self.follow_stream(&js, bus, inbox, opened).await;
            self.set_open(bus, false);
            if lasted < STABLE {
                self.idle(&js, inbox, retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            } else {
                retry = RETRY_MIN;
            }
        }
    }

    /// The NATS client, which connects (and reconnects) in the background from now on. None:
    /// unusable settings (logged).
    async fn connect(&self, bus: &Bus) -> Option<jetstream::Context> {
        let s = &bus.settings;
        let options = match &s.credentials_file {
            Some(f) => match async_nats::ConnectOptions::with_credentials_file(f).await {
                Ok(o) => o,
                Err(e) => {
                    warn!(
                        "cluster: cannot read {}: {e}; purges stay local",
                        f.display()
                    );
                    return None;
                }
            },
            None => async_nats::ConnectOptions::new(),
        };
        let options = options
            .name(format!("edge {}", self.node))
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .reconnect_delay_callback(|attempt| {
                RETRY_MIN
                    .saturating_mul(1 << attempt.min(5) as u32)
                    .min(RETRY_MAX)
            });
        match options.connect(s.url.as_str()).await {
            Ok(client) => {
                let mut js = jetstream::new(client);
                js.set_timeout(stream::PUBLISH_WITHIN);
                Some(js)
            }
            Err(e) => {
                warn!("cluster: cannot use {}: {e}; purges stay local", s.url);
                None
            }
        }
    }

    /// Opens the stream and a consumer from where this edge stopped, retrying with a growing
    /// pause while NATS is unreachable (logged once per outage); admin purges are taken
    /// meanwhile.
    async fn wait_for_stream(
        &mut self,
        js: &jetstream::Context,
        bus: &Bus,
        inbox: &mut mpsc::Receiver<Request>,
        retry: &mut Duration,
    ) -> (StreamState, Messages) {
        let s = &bus.settings;
        let mut logged_down = false;
        loop {
            let opening = stream::open(js, s, self.start_at());
            tokio::pin!(opening);
            let mut tick = tokio::time::interval(TICK);
            let opened = loop {
                tokio::select! {
                    r = &mut opening => break r,
                    Some(req) = inbox.recv() => self.take(js, req).await,
                    _ = tick.tick() => self.repeat_due(),
                }
            };
            match opened {
                Ok(o) => {
                    if logged_down {
                        info!("cluster: purge stream {} reachable again", s.stream);
                    }
                    return o;
                }
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
                    self.idle(js, inbox, *retry).await;
                    *retry = (*retry * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Applies the stream's messages as they come, publishes queued purges, takes admin
    /// purges, until the stream fails or NATS is lost; returns how long it stayed open.
    async fn follow_stream(
        &mut self,
        js: &jetstream::Context,
        bus: &Bus,
        inbox: &mut mpsc::Receiver<Request>,
        (state, mut messages): (StreamState, Messages),
    ) -> Duration {
        let s = &bus.settings;
        self.check_history(&state);
        self.seen_seq = self.seen_seq.max(state.last_sequence);
        self.update_lag();
        if let Some(r) = &mut self.replay {
            r.opened(state.last_sequence, self.applied_seq);
            r.save(self.applied_seq, self.stream_created, false).await;
        }
        self.set_open(bus, true);
        let (opened, opened_at) = (Instant::now(), SystemTime::now());
        self.flush(js).await;
        let mut tick = tokio::time::interval(TICK);
        let mut ticks = 0u32;
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
                Some(req) = inbox.recv() => self.take(js, req).await,
                _ = tick.tick() => {
                    self.repeat_due();
                    if let Some(r) = &mut self.replay {
                        r.save(self.applied_seq, self.stream_created, false).await;
                    }
                    if js.client().connection_state() != async_nats::connection::State::Connected {
                        // Disconnected: the ordered consumer would wait for its heartbeat;
                        // reopen from the last sequence applied once NATS is back.
                        break;
                    }
                    ticks += 1;
                    if ticks.is_multiple_of(10) {
                        self.flush(js).await;
                    }
                }
            }
        }
        opened.elapsed()
    }

    /// Waits `pause`, taking admin purges and applying due repeats meanwhile.
    async fn idle(
        &mut self,
        js: &jetstream::Context,
        inbox: &mut mpsc::Receiver<Request>,
        pause: Duration,
    ) {
        let until = tokio::time::sleep(pause);
        tokio::pin!(until);
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = &mut until => return,
                Some(req) = inbox.recv() => self.take(js, req).await,
                _ = tick.tick() => self.repeat_due(),
            }
        }
    }

    /// At shutdown: one last, short try to publish what is queued; what is left is logged and
    /// counted, since no other edge will see it.
    async fn stop(&mut self) {
        if let Some(r) = &mut self.replay {
            r.save(self.applied_seq, self.stream_created, true).await;
        }
        if self.unpublished.is_empty() {
            return;
        }
        if let Some(js) = self.js.clone() {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.flush(&js)).await;
        }
        let left = self.unpublished.len();
        if left > 0 {
            let first: Vec<String> = self
                .unpublished
                .iter()
                .take(10)
                .map(|e| format!("{} {}", e.purge.kind.as_str(), e.purge.value))
                .collect();
            warn!(
                "cluster: stopping with {left} purges applied here but never published (NATS \
                 unreachable); other edges did not get them: {}{}",
                first.join(", "),
                if left > 10 { ", ..." } else { "" }
            );
            self.edge.metrics.cluster.dropped.inc_by(left as u64);
        }
    }

    /// Where a new read of the stream starts: after the last message applied, or (first read,
    /// nothing applied yet) at this process's start (see `CLOCK_SLACK`).
    fn start_at(&self) -> consumer::DeliverPolicy {
        if self.applied_seq > 0 || self.resumed {
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
    /// (`max_age`, `max_messages`), or it was deleted and made anew: what the cache holds may
    /// be purged content. Every object is then marked stale (a soft purge), not removed: each
    /// is revalidated at its next use (a `304` when unchanged), and stale-if-error still
    /// serves it if the origin is down. A hard wipe of every edge at once would send the whole
    /// working set to the origins together.
    fn check_history(&mut self, state: &StreamState) {
        let made_anew = self
            .stream_created
            .replace(state.created)
            .is_some_and(|before| before != state.created);
        if self.applied_seq == 0 && !self.resumed && !made_anew {
            return;
        }
        let lost = made_anew
            || state.first_sequence > self.applied_seq + 1
            || state.last_sequence < self.applied_seq;
        if !lost {
            return;
        }
        let n = self
            .edge
            .cache
            .store
            .purge_named(Named::Prefix(""), PurgeMode::Soft);
        warn!(
            "cluster: purges after sequence {} are no longer in the stream ({}; it holds \
             {}..={}); marked the whole cache stale ({n} objects) rather than serve what they \
             may have purged",
            self.applied_seq,
            if made_anew {
                "it was made anew"
            } else {
                "retention"
            },
            state.first_sequence,
            state.last_sequence
        );
        self.edge.metrics.cluster.history_lost.inc();
        self.applied_seq = state.first_sequence.saturating_sub(1);
        self.seen_seq = state.last_sequence;
    }

    fn set_open(&self, bus: &Bus, open: bool) {
        bus.set_reachable(open);
        self.connected.set(open as i64);
    }

    /// An admin purge: applied here, then published (or queued if NATS does not acknowledge).
    async fn take(&mut self, js: &jetstream::Context, req: Request) {
        let removed = apply_here(&self.edge, &req.purge);
        self.apply_again_later(&req.purge);
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
        let handled = if self.unpublished.is_empty() {
            match stream::publish(js, &self.subject, &envelope).await {
                Ok(sequence) => {
                    self.published(sequence);
                    Handled::Published { removed, sequence }
                }
                Err(why) => {
                    self.queue(envelope);
                    Handled::Queued { removed, why }
                }
            }
        } else {
            self.queue(envelope);
            Handled::Queued {
                removed,
                why: "earlier purges are still waiting for NATS".into(),
            }
        };
        let _ = req.reply.send(handled);
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
                self.edge.metrics.cluster.dropped.inc();
            }
        }
        self.unpublished.push_back(envelope);
        self.edge
            .metrics
            .cluster
            .queued
            .set(self.unpublished.len() as i64);
    }

    /// Publishes queued purges in order, a window at a time (see `stream::publish_window`),
    /// until one fails.
    async fn flush(&mut self, js: &jetstream::Context) {
        while !self.unpublished.is_empty() {
            let (front, _) = self.unpublished.as_slices();
            let results = stream::publish_window(js, &self.subject, front).await;
            let mut failed = false;
            for r in results {
                match r {
                    Ok(sequence) => {
                        self.unpublished.pop_front();
                        self.published(sequence);
                    }
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                break;
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
        let edge = self.edge.clone();
        let m = &edge.metrics.cluster;
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
                let removed = apply_here(&self.edge, &env.purge);
                self.apply_again_later(&env.purge);
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
        if let Some(r) = &mut self.replay {
            // Saved at the next tick (see `Replay::save`).
            r.check(sequence);
        }
    }

    /// Remembers a purge to apply once more after `purge_again_after`: a front that refilled
    /// from a shield that had not yet purged loses that copy then (see `NatsSettings`).
    fn apply_again_later(&mut self, purge: &Purge) {
        if self.purge_again_after.is_zero() {
            return;
        }
        if self.again.len() >= AGAIN_MAX {
            self.again.pop_front();
        }
        self.again
            .push_back((Instant::now() + self.purge_again_after, purge.clone()));
    }

    /// Applies the repeats that are due.
    fn repeat_due(&mut self) {
        let now = Instant::now();
        while self.again.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, purge)) = self.again.pop_front() {
                apply_here(&self.edge, &purge);
                self.edge.metrics.cluster.repeated.inc();
            }
        }
    }

    fn update_lag(&self) {
        let lag = self.seen_seq.saturating_sub(self.applied_seq);
        self.edge.metrics.cluster.lag.set(lag as i64);
    }
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
