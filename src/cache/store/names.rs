//! What purges find objects by, for either tier: the URL each object was stored under and the
//! tags its origin gave it (`Surrogate-Key`, `Cache-Tag`). A prefix purge scans the URLs.

use std::collections::HashMap;
use std::sync::Arc;

use pingora::cache::key::HashBinary;

use super::keys::{list, unlist, Keys};
use super::purge::Purged;

#[derive(Default)]
pub(super) struct Names {
    /// URL (primary key) -> the combined keys of its stored variants.
    by_url: HashMap<Arc<str>, Keys>,
    by_tag: HashMap<Arc<str>, Keys>,
}

impl Names {
    pub(super) fn add(&mut self, key: HashBinary, url: &Arc<str>, tags: &[Arc<str>]) {
        list(&mut self.by_url, url.clone(), key);
        for t in tags {
            list(&mut self.by_tag, t.clone(), key);
        }
    }

    pub(super) fn remove(&mut self, key: &HashBinary, url: &str, tags: &[Arc<str>]) {
        unlist(&mut self.by_url, url, key);
        for t in tags {
            unlist(&mut self.by_tag, t, key);
        }
    }

    /// The keys `what` names (a URL, a prefix of URLs, a tag; a key names itself).
    pub(super) fn find(&self, what: &Purged) -> Vec<HashBinary> {
        let listed = |index: &HashMap<Arc<str>, Keys>, name: &str| {
            index
                .get(name)
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default()
        };
        match what {
            Purged::Key(k) => vec![*k],
            Purged::Url(u) => listed(&self.by_url, u),
            Purged::Tag(t) => listed(&self.by_tag, t),
            Purged::Prefix(p) => self
                .by_url
                .iter()
                .filter(|(u, _)| u.starts_with(&**p))
                .flat_map(|(_, s)| s.iter().copied())
                .collect(),
        }
    }
}
