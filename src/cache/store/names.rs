//! What purges find objects by, for either tier: the URL each object was stored under and the
//! tags its origin gave it (`Surrogate-Key`, `Cache-Tag`). A prefix purge scans the URLs.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use pingora::cache::key::HashBinary;

use super::purge::Purged;

#[derive(Default)]
pub(super) struct Names {
    /// URL (primary key) -> the combined keys of its stored variants.
    by_url: HashMap<Arc<str>, HashSet<HashBinary>>,
    by_tag: HashMap<Arc<str>, HashSet<HashBinary>>,
}

fn unlist(index: &mut HashMap<Arc<str>, HashSet<HashBinary>>, name: &str, key: &HashBinary) {
    if let Some(set) = index.get_mut(name) {
        set.remove(key);
        if set.is_empty() {
            index.remove(name);
        }
    }
}

impl Names {
    pub(super) fn add(&mut self, key: HashBinary, url: &Arc<str>, tags: &[Arc<str>]) {
        self.by_url.entry(url.clone()).or_default().insert(key);
        for t in tags {
            self.by_tag.entry(t.clone()).or_default().insert(key);
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
        let listed = |index: &HashMap<Arc<str>, HashSet<HashBinary>>, name: &str| {
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
