//! This edge as one of a fleet: purges shared over NATS JetStream, and the tiers' hop marks
//! (a shield tier is an origin whose servers are edges: `origins.NAME.shield`).
//!
//! A purge accepted by any edge's admin API is applied there at once, then published to the
//! JetStream stream `cluster.nats.stream`; every edge reads the stream in order and applies
//! what others published. JetStream keeps the messages (file storage, bounded by age and
//! count), so an edge cut off from NATS reads what it missed when it is back, from the last
//! sequence it applied. Purges are idempotent (removing what is gone removes nothing), so a
//! purge applied twice does no harm; each carries a message id so a publish repeated after a
//! lost acknowledgement is stored once.
//!
//! Availability first: an edge that cannot reach NATS keeps serving, queues the purges its own
//! admin API takes (applied here, published on reconnect), says so in `/healthz` and in the
//! metrics (`edge_cluster_nats_connected`, `edge_cluster_purge_lag`).
//!
//! - `message`: a purge's wire format;
//! - `service`: the background task that holds the NATS connection;
//! - `stream`: the JetStream calls it makes (open the stream, publish);
//! - `loops`: `CDN-Loop`, which stops a request that comes back to an edge it passed;
//! - [`client_scheme`]: the scheme a request's client used, as a shield tier learns it.
//!
//! Without `cluster.nats` there is no task and purges stay local.

pub mod loops;
pub mod message;
mod position;
mod service;
mod stream;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};

use crate::cache::key::Scheme;
use crate::cache::purge::Purge;
use crate::config::{ClusterSettings, NatsSettings};
use crate::state::Edge;
pub use service::PurgeService;

/// The scheme the client used, which the cache key carries. A front edge knows it from its
/// client connection (TLS or not) and says it in `X-Forwarded-Proto` to the shield tier, which
/// takes it from there on listeners marked `from_edges` (and only there: on a listener
/// clients reach, anyone could send the header and fill the `https` keys with what an `http`
/// request got). Same object, same key, on both tiers, so a purge of an `https://` URL reaches
/// the shields' copies too.
pub fn client_scheme(tls: bool, from_edges: bool, forwarded_proto: Option<&[u8]>) -> Scheme {
    match forwarded_proto
        .filter(|_| from_edges)
        .map(<[u8]>::trim_ascii)
    {
        Some(p) if p.eq_ignore_ascii_case(b"https") => Scheme::Https,
        Some(p) if p.eq_ignore_ascii_case(b"http") => Scheme::Http,
        _ if tls => Scheme::Https,
        _ => Scheme::Http,
    }
}

/// What became of a purge sent to the fleet, as the admin API reports it.
#[derive(Debug)]
pub enum Handled {
    /// Applied here only (`removed` objects): purges are local (no `cluster.nats`), or the
    /// purge task is not running (`why`; its log line says more).
    Local {
        removed: usize,
        why: Option<&'static str>,
    },
    /// Applied here (`removed` objects) and stored in the stream at `sequence`.
    Published { removed: usize, sequence: u64 },
    /// Applied here; NATS did not acknowledge it (`why`), so it waits in this edge's queue and
    /// is published when the stream is reachable again.
    Queued { removed: usize, why: String },
    /// The task took it but did not answer within `ANSWER_WITHIN`: it will apply and publish
    /// it.
    Pending,
    /// `INBOX` purges already wait for the task: refused, nothing applied.
    Busy,
}

/// A purge handed from the admin API to the task, with where to answer.
struct Request {
    purge: Purge,
    reply: oneshot::Sender<Handled>,
}

/// How many admin purges may wait for the task at once; more get refused (503) rather than
/// pile up while NATS is slow.
const INBOX: usize = 1024;

/// The longest an admin purge waits for the task's answer (it publishes with a shorter bound).
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// The fleet as this edge sees it; built once with the edge, shared by the admin API and the
/// purge task.
pub struct Cluster {
    /// `cluster.node`, or the host name: who sent a purge message.
    pub node: String,
    /// `cluster.node` when it is set: this edge's mark in `CDN-Loop`. Unset, the edge neither
    /// marks nor checks (a lone edge does not tell origins its host name, and two lone edges on
    /// one host in a chain are not a loop).
    pub loop_mark: Option<String>,
    /// This cache's name in `Cache-Status` (RFC 9211): `cluster.node` when it is set, so each
    /// tier's entry says which edge it was; else `edge` (a lone edge does not tell clients its
    /// host name).
    pub cache_name: String,
    bus: Option<Bus>,
}

/// The admin API's side of the purge task.
struct Bus {
    settings: NatsSettings,
    to_task: mpsc::Sender<Request>,
    /// Taken by the task when it starts.
    inbox: Mutex<Option<mpsc::Receiver<Request>>>,
    /// Whether the task has the stream open, and since when it has not.
    reachable: AtomicBool,
    unreachable_since: Mutex<Option<SystemTime>>,
}

impl Cluster {
    pub fn new(settings: &ClusterSettings) -> Cluster {
        let bus = settings.nats.clone().map(|settings| {
            let (to_task, inbox) = mpsc::channel(INBOX);
            Bus {
                settings,
                to_task,
                inbox: Mutex::new(Some(inbox)),
                reachable: AtomicBool::new(false),
                unreachable_since: Mutex::new(Some(SystemTime::now())),
            }
        });
        Cluster {
            node: settings.node_name(),
            loop_mark: settings.node.clone(),
            cache_name: settings.node.clone().unwrap_or_else(|| "edge".into()),
            bus,
        }
    }

    /// Whether purges go to the fleet (`cluster.nats` is set).
    pub fn shares_purges(&self) -> bool {
        self.bus.is_some()
    }

    /// Applies a purge here and, with `cluster.nats`, hands it to the task, which applies it
    /// here and publishes it (see [`Handled`]).
    pub async fn purge(&self, edge: &Edge, purge: Purge) -> Handled {
        let Some(bus) = self.bus.as_ref() else {
            let removed = apply_here(edge, &purge);
            return Handled::Local { removed, why: None };
        };
        let (reply, answer) = oneshot::channel();
        match bus.to_task.try_send(Request { purge, reply }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Handled::Busy,
            Err(mpsc::error::TrySendError::Closed(r)) => {
                let removed = apply_here(edge, &r.purge);
                let why = Some("the cluster task is not running; the purge was not shared");
                return Handled::Local { removed, why };
            }
        }
        match tokio::time::timeout(ANSWER_WITHIN, answer).await {
            Ok(Ok(handled)) => handled,
            // Dropped unanswered: the task stopped with it (shutdown).
            Ok(Err(_)) => Handled::Local {
                removed: 0,
                why: Some("the cluster task stopped before applying it"),
            },
            Err(_) => Handled::Pending,
        }
    }

    /// A line for `/healthz` while the purge stream is out of reach (the edge still serves).
    pub fn health_detail(&self) -> Option<String> {
        let bus = self.bus.as_ref()?;
        if bus.reachable.load(Ordering::Acquire) {
            return None;
        }
        let since = bus
            .unreachable_since
            .lock()
            .unwrap()
            .unwrap_or(SystemTime::now());
        let secs = SystemTime::now()
            .duration_since(since)
            .unwrap_or_default()
            .as_secs();
        Some(format!(
            "cluster: purge stream at {} unreachable for {secs}s; serving, purges from other \
             edges are applied when it is back",
            bus.settings.url
        ))
    }
}

impl Bus {
    fn set_reachable(&self, up: bool) {
        let was = self.reachable.swap(up, Ordering::AcqRel);
        let mut since = self.unreachable_since.lock().unwrap();
        if up {
            *since = None;
        } else if was || since.is_none() {
            *since = Some(SystemTime::now());
        }
    }
}

/// Applies a purge to this edge's cache with the routes in force, and counts what it removed
/// (or marked stale).
pub fn apply_here(edge: &Edge, purge: &Purge) -> usize {
    let removed = purge.apply(edge.cache.store, &edge.snapshot().router);
    edge.metrics
        .cache
        .purged
        .with_label_values(&[purge.kind.as_str()])
        .inc_by(removed as u64);
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listeners_for_edges_take_the_forwarded_scheme() {
        assert_eq!(client_scheme(false, true, Some(b" HTTPS")), Scheme::Https);
        assert_eq!(client_scheme(true, true, Some(b"http")), Scheme::Http);
        assert_eq!(
            client_scheme(false, false, Some(b"https")),
            Scheme::Http,
            "clients' listener"
        );
        assert_eq!(client_scheme(true, false, None), Scheme::Https);
        assert_eq!(client_scheme(false, true, Some(b"gopher")), Scheme::Http);
        assert_eq!(client_scheme(true, true, None), Scheme::Https);
    }
}
