//! Validation of the fleet's settings: `cluster:` (the node name, the NATS URL, stream and
//! credentials) and shield origins (`origins.NAME.shield`). Part of `validate`, which calls
//! these with its `Checker`.

use std::collections::{BTreeMap, HashSet};

use super::locate::Seg;
use super::schema::{valid_node_char, Balance, ClusterSettings, OriginConfig};
use super::validate::{key, origin_path, Checker};

/// `cluster`: a usable node name; with `nats`, a `nats://` or `tls://` URL with a host and
/// port, a stream name NATS accepts, a readable credentials file, bounds of at least 1.
pub(super) fn check_cluster(ck: &mut Checker, c: &ClusterSettings) {
    let at = |rest: &[&str]| -> Vec<Seg> {
        let mut p = vec![key("cluster")];
        p.extend(rest.iter().map(|k| key(k)));
        p
    };
    if let Some(node) = &c.node {
        if node.is_empty() || node.len() > 64 || !node.chars().all(valid_node_char) {
            ck.error(
                &at(&["node"]),
                format!("\"{node}\": 1 to 64 letters, digits, '-', '_' or '.'"),
            );
        }
    }
    let Some(n) = &c.nats else {
        return;
    };
    if n.url.is_empty() {
        ck.error(
            &at(&["nats", "url"]),
            "required, like nats://127.0.0.1:4222",
        );
    }
    for url in n.url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let hostport = url
            .strip_prefix("nats://")
            .or_else(|| url.strip_prefix("tls://"));
        let ok = hostport.is_some_and(|hp| {
            let hp = hp.rsplit('@').next().unwrap_or(hp);
            hp.rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
        });
        if !ok {
            ck.error(
                &at(&["nats", "url"]),
                format!("\"{url}\": expected nats://host:port or tls://host:port"),
            );
        }
    }
    // NATS stream names: no white space, '.', '*', '>', path separators.
    let bad_stream = n.stream.is_empty()
        || n.stream.len() > 64
        || !n
            .stream
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if bad_stream {
        ck.error(
            &at(&["nats", "stream"]),
            format!("\"{}\": 1 to 64 letters, digits, '-' or '_'", n.stream),
        );
    }
    if let Some(f) = &n.credentials_file {
        if let Err(e) = std::fs::File::open(f) {
            ck.error(
                &at(&["nats", "credentials_file"]),
                format!("cannot read {}: {e}", f.display()),
            );
        }
    }
    if n.max_messages < 1 {
        ck.error(&at(&["nats", "max_messages"]), "at least 1");
    }
    if n.max_age.get().as_secs() < 60 {
        ck.error(&at(&["nats", "max_age"]), "at least 1m");
    }
    if !(1..=5).contains(&n.replicas) {
        ck.error(&at(&["nats", "replicas"]), "1 to 5");
    }
    if n.purge_again_after.get() > std::time::Duration::from_secs(60) {
        ck.error(&at(&["nats", "purge_again_after"]), "at most 1m");
    }
}

/// `origins.NAME.shield`: the fallback is another origin, and not a shield itself (a chain of
/// fallbacks would hide a tier that is down); the shield's servers are chosen by consistent
/// hashing, or objects would have no home and every shield would fetch each one; and this
/// edge has a `cluster.node` to mark what it forwards with.
pub(super) fn check_shield(
    ck: &mut Checker,
    name: &str,
    o: &OriginConfig,
    origins: &BTreeMap<String, OriginConfig>,
    broken_origins: &HashSet<String>,
    cluster: &ClusterSettings,
) {
    let Some(shield) = &o.shield else {
        return;
    };
    let at = |rest: &[&str]| origin_path(name, rest);
    if cluster.node.is_none() {
        ck.error(
            &at(&["shield"]),
            "a shield tier needs cluster.node on this edge: each tier marks CDN-Loop with it \
             (loop detection) and names its Cache-Status entry with it",
        );
    }
    if o.balance != Balance::ConsistentHash {
        ck.error(
            &at(&["balance"]),
            "a shield tier needs balance: consistent_hash (each object's home is one shield)",
        );
    }
    let fallback = shield.fallback.as_str();
    match origins.get(fallback) {
        _ if fallback == name => ck.error(
            &at(&["shield", "fallback"]),
            "an origin cannot be its own fallback",
        ),
        Some(f) if f.shield.is_some() => ck.error(
            &at(&["shield", "fallback"]),
            format!("\"{fallback}\" is a shield tier itself; name the origin behind the shields"),
        ),
        Some(_) => {}
        None if broken_origins.contains(fallback) => {}
        None => ck.error(
            &at(&["shield", "fallback"]),
            format!("unknown origin \"{fallback}\""),
        ),
    }
}
