//! `cluster:`: this edge as one of a fleet. Part of the schema (see the parent module for the
//! conventions). Today the fleet shares purges over NATS JetStream (`cluster.nats`, see
//! `crate::cluster`); the node name also marks this edge in `CDN-Loop` (RFC 8586).

use std::path::PathBuf;

use serde::Deserialize;

use super::super::units::Dur;

/// `cluster:`; absent: a lone edge (purges stay local, the node is the host name).
#[derive(Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// This edge's name, unique in the fleet: purge messages say who sent them; when it is set,
    /// the edge marks what it forwards with it in `CDN-Loop` (and refuses what already carries
    /// it, `508`), and names its `Cache-Status` entry with it. Letters, digits, `-`, `_`, `.`.
    /// Default: the host name, for purge messages only (a lone edge tells neither origins nor
    /// clients its host name).
    pub node: Option<String>,
    /// Cluster-wide purge over NATS JetStream; default: none (purges stay on this edge).
    pub nats: Option<NatsSettings>,
}

/// `cluster.nats`: where purges are published and read back in order.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSettings {
    /// `nats://host:port` (or `tls://host:port` for TLS to NATS, verified against the system's
    /// roots). Required. Several servers of one NATS cluster: comma-separated.
    pub url: String,
    /// The JetStream stream purges are kept in, created if missing (file storage, bounded by
    /// `max_age` and `max_messages`); its subject is `<stream>.purge`. Default: `EDGE_PURGE`.
    pub stream: String,
    /// A NATS credentials file (JWT and NKey seed), for servers that require authentication.
    /// Default: none.
    pub credentials_file: Option<PathBuf>,
    /// Purges older than this leave the stream (when this edge creates it). An edge that was
    /// away longer cannot replay what it missed, so it empties its cache instead. Default: `7d`.
    pub max_age: Dur,
    /// The stream's bound in messages (when this edge creates it), oldest dropped first.
    /// Default: `1000000`.
    pub max_messages: i64,
    /// Copies of the stream in a NATS cluster (when this edge creates it), 1 to 5: with 3, losing
    /// a NATS server loses no purge. Default: `1` (a single NATS server).
    pub replicas: usize,
    /// Every purge is applied once more this long after it was first applied here (Fastly's
    /// advice to purge twice, made automatic). Tiers apply a purge a few milliseconds apart: a
    /// front that misses in between refills from a shield that has not purged yet, and would
    /// keep that old copy for its whole lifetime. `0s` applies each purge once.
    /// Default: `2s`.
    pub purge_again_after: Dur,
}

impl Default for NatsSettings {
    fn default() -> Self {
        NatsSettings {
            url: String::new(),
            stream: "EDGE_PURGE".into(),
            credentials_file: None,
            max_age: Dur::secs(7 * 86_400),
            max_messages: 1_000_000,
            replicas: 1,
            purge_again_after: Dur::secs(2),
        }
    }
}

impl ClusterSettings {
    /// The node name in force: the configured one, else the host name, else `edge`.
    pub fn node_name(&self) -> String {
        self.node.clone().unwrap_or_else(host_name)
    }
}

/// This machine's host name (gethostname(2)), cut at the first character a node name may not
/// hold.
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer and its length are valid; the name is NUL-terminated on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name: String = if rc == 0 {
        buf.iter()
            .take_while(|&&b| b != 0)
            .map(|&b| b as char)
            .take_while(|c| valid_node_char(*c))
            .collect()
    } else {
        String::new()
    };
    if name.is_empty() {
        "edge".into()
    } else {
        name
    }
}

/// What a node name is made of: it is a `CDN-Loop` token and a metric label value.
pub fn valid_node_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}
