//! A purge as it travels between edges: one NATS message on `<stream>.purge`.
//!
//! - header `Edge-Purge`: `url`, `prefix` or `tag`;
//! - header `Edge-Purge-Mode`: `hard` or `soft`;
//! - header `Edge-Node`: the node that published it (it applied it already);
//! - header `Nats-Msg-Id`: `<node>-<process start>-<n>`, unique per purge, so a publish
//!   repeated after a lost acknowledgement is stored once (JetStream's duplicate window);
//! - payload: the URL, prefix or tag as the operator wrote it (each edge turns it into its own
//!   cache key, see `cache::purge`).
//!
//! Headers rather than a JSON body: the format is a handful of strings, readable with
//! `nats stream view`, and needs no serialization crate.

use async_nats::HeaderMap;
use bytes::Bytes;

use crate::cache::purge::{Kind, Purge};
use crate::cache::store::PurgeMode;

const KIND: &str = "Edge-Purge";
const MODE: &str = "Edge-Purge-Mode";
const NODE: &str = "Edge-Node";
const MSG_ID: &str = "Nats-Msg-Id";

/// A purge with who sent it and its publish identity.
#[derive(Debug, PartialEq, Eq)]
pub struct Envelope {
    pub purge: Purge,
    pub node: String,
    pub id: String,
}

impl Envelope {
    pub fn encode(&self) -> (HeaderMap, Bytes) {
        let mut h = HeaderMap::new();
        h.insert(KIND, self.purge.kind.as_str());
        h.insert(MODE, self.purge.mode_str());
        h.insert(NODE, self.node.as_str());
        h.insert(MSG_ID, self.id.as_str());
        (h, Bytes::from(self.purge.value.clone().into_bytes()))
    }

    /// Reads a message back; Err says what is wrong with it (it is then skipped, and counted).
    pub fn decode(headers: Option<&HeaderMap>, payload: &[u8]) -> Result<Envelope, String> {
        let h = headers.ok_or("no headers")?;
        let get = |name: &str| h.get(name).map(|v| v.as_str().to_string());
        let kind = get(KIND).ok_or("no Edge-Purge header")?;
        let kind = Kind::parse(&kind).ok_or_else(|| format!("unknown purge kind \"{kind}\""))?;
        let mode = match get(MODE).as_deref() {
            Some("hard") => PurgeMode::Hard,
            Some("soft") => PurgeMode::Soft,
            other => return Err(format!("unknown purge mode {other:?}")),
        };
        let value = String::from_utf8(payload.to_vec()).map_err(|_| "payload is not UTF-8")?;
        Ok(Envelope {
            purge: Purge::new(kind, value, mode)?,
            node: get(NODE).unwrap_or_default(),
            id: get(MSG_ID).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_purge_reads_back_as_it_was_sent() {
        let e = Envelope {
            purge: Purge::new(Kind::Url, "https://x.com/a?b".into(), PurgeMode::Soft).unwrap(),
            node: "edge-fra-1".into(),
            id: "edge-fra-1-1700000000-7".into(),
        };
        let (h, payload) = e.encode();
        assert_eq!(h.get("Nats-Msg-Id").unwrap().as_str(), e.id);
        assert_eq!(Envelope::decode(Some(&h), &payload).unwrap(), e);
    }

    #[test]
    fn broken_messages_are_refused() {
        assert!(Envelope::decode(None, b"x").is_err());
        let mut h = HeaderMap::new();
        h.insert(KIND, "everything");
        h.insert(MODE, "hard");
        assert!(Envelope::decode(Some(&h), b"x").is_err());
        h.insert(KIND, "url");
        assert!(
            Envelope::decode(Some(&h), b"/relative").is_err(),
            "checked as the admin API checks it"
        );
        h.insert(MODE, "gentle");
        assert!(Envelope::decode(Some(&h), b"https://x.com/").is_err());
    }
}
