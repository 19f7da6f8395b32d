//! The fleet's purge stream as this edge sees it (`crate::cluster`): what it published, applied
//! and replayed, how far behind the stream it is, and whether it can reach NATS. Counted by the
//! cluster's task as things happen. All but `edge_cluster_nats_connected` exist from the start
//! (at 0) whether or not `cluster.nats` is set; that one only where it is.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

use super::Reg;

pub struct ClusterMetrics {
    /// Purges this edge's admin API published to the stream (acknowledged by JetStream).
    pub published: IntCounter,
    /// Purges applied from the stream (published by other edges, or by this one before a
    /// restart), live or replayed.
    pub applied: IntCounter,
    /// Of `applied`, those published while this edge was away (down, or cut off from NATS),
    /// applied when it caught up.
    pub replayed: IntCounter,
    /// Messages on the stream that were not purges this edge can read (skipped), by reason.
    pub rejected: IntCounterVec,
    /// Purges applied here but not yet published (NATS unreachable); sent on reconnect.
    pub queued: IntGauge,
    /// Stream messages this edge knows of and has not applied yet.
    pub lag: IntGauge,
    /// The stream sequence of the last purge applied.
    pub applied_sequence: IntGauge,
    /// By stream: 1 while connected to NATS with the purge stream open, else 0. Only edges with
    /// `cluster.nats` have the series, so an alert on it ignores lone edges.
    pub connected: IntGaugeVec,
    /// Times the whole cache was marked stale because purges it missed had left the stream.
    pub history_lost: IntCounter,
    /// Purges applied a second time (`cluster.nats.purge_again_after`).
    pub repeated: IntCounter,
    /// Purges applied here that were never published (queue overflow, or stopped while NATS
    /// was unreachable): other edges did not get them.
    pub dropped: IntCounter,
}

impl ClusterMetrics {
    pub(super) fn new(r: &Reg) -> Self {
        ClusterMetrics {
            published: r.counter(
                "edge_cluster_purges_published_total",
                "Purges this edge's admin API published to the fleet's stream.",
            ),
            applied: r.counter(
                "edge_cluster_purges_applied_total",
                "Purges applied from the fleet's stream (live or replayed).",
            ),
            replayed: r.counter(
                "edge_cluster_purges_replayed_total",
                "Purges applied that were published while this edge was down or cut off.",
            ),
            rejected: r.counters_from_zero(
                "edge_cluster_messages_rejected_total",
                "Messages on the purge stream skipped as unreadable.",
                "reason",
                &["malformed"],
            ),
            queued: r.gauge(
                "edge_cluster_purges_queued",
                "Purges applied here and waiting to be published (NATS unreachable).",
            ),
            lag: r.gauge(
                "edge_cluster_purge_lag",
                "Purge stream messages known to this edge and not yet applied.",
            ),
            applied_sequence: r.gauge(
                "edge_cluster_purge_applied_sequence",
                "Stream sequence of the last purge this edge applied.",
            ),
            connected: r.gauges(
                "edge_cluster_nats_connected",
                "1 while connected to NATS with the purge stream open; 0 otherwise.",
                &["stream"],
            ),
            history_lost: r.counter(
                "edge_cluster_history_lost_total",
                "Times the whole cache was marked stale because missed purges had left the \
                 stream.",
            ),
            repeated: r.counter(
                "edge_cluster_purges_repeated_total",
                "Purges applied a second time, cluster.nats.purge_again_after after the first.",
            ),
            dropped: r.counter(
                "edge_cluster_purges_dropped_total",
                "Purges applied here but never published (queue full, or stopped while NATS was \
                 unreachable): other edges did not get them.",
            ),
        }
    }
}
