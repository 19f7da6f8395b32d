//! The store's purges: what an operator's purge names and how it lands (removed, or marked
//! stale), the invalidation after unsafe requests, and the record of recent purges that keeps a
//! fill begun before a purge from storing what the purge was about. Part of `store` (it works on
//! the store's maps under its lock); split out so each file reads in one sitting.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use pingora::cache::key::HashBinary;

use super::{Maps, Store};

/// The purge epoch read just before a fill's request went to the origin
/// ([`Store::purge_epoch`]), carried to the store in the response's `CacheMeta` extensions.
/// A purge with a later epoch that matches the fill keeps it out of the store, even one that
/// came before the response header did (see `Purges`).
#[derive(Clone, Copy, Debug)]
pub struct FillStart(pub u64);

/// What an operator's purge names, in the store's terms: a URL as cache keys hold it
/// (`https://host/path?query`), a prefix of such URLs, or an origin's tag.
#[derive(Clone, Copy, Debug)]
pub enum Named<'a> {
    Url(&'a str),
    Prefix(&'a str),
    Tag(&'a str),
}

/// What a purge does to what it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PurgeMode {
    /// Removed: the next request is a miss.
    Hard,
    /// Marked stale: the next request revalidates (see `Store::purge`).
    Soft,
}

/// What a purge named, as recorded for fills in flight.
#[derive(Clone)]
pub(super) enum Purged {
    Key(HashBinary),
    Url(Arc<str>),
    Prefix(Box<str>),
    Tag(Box<str>),
}

impl Purged {
    pub(super) fn covers(&self, key: &HashBinary, url: &str, tags: &[Arc<str>]) -> bool {
        match self {
            Purged::Key(k) => k == key,
            Purged::Url(u) => **u == *url,
            Purged::Prefix(p) => url.starts_with(&**p),
            Purged::Tag(t) => tags.iter().any(|x| **x == **t),
        }
    }
}

/// How many recent purges are remembered for fills still waiting for their response header.
/// A fill that began before the oldest of them is not stored (it cannot be told whether a
/// forgotten purge covered it): only fills that outlast this many purges are affected.
pub(super) const PURGES_KEPT: usize = 1024;

/// Purges invalidate what began before them, fills in flight included (as in Varnish and
/// Fastly): otherwise a purge sent after the origin changed is undone by a fill that started
/// before it and stores the old content when it finishes. A purge therefore
/// - marks the partial writes it matches (by key, URL, prefix or the tags of the response being
///   written) purged: their clients still get them whole, but no new reader joins them and
///   `finish` does not store them;
/// - is remembered here with its epoch, for fills whose request went out before it but whose
///   response header (and so their partial write) comes after: `get_miss_handler` compares
///   their `FillStart` with the purges since and does not store a covered one.
///
/// Bounded: the last `PURGES_KEPT` purges, a URL, prefix or tag each. Kept in `Maps`, so a
/// purge and the start of a fill are ordered by the store's lock: a fill either starts before
/// the purge (and is marked by it) or after (and sees it here).
#[derive(Default)]
pub(super) struct Purges {
    /// Oldest first, epochs increasing.
    pub(super) recent: VecDeque<(u64, Purged)>,
    /// The epoch of the newest purge no longer in `recent`.
    forgotten: u64,
}

impl Purges {
    pub(super) fn record(&mut self, epoch: u64, what: Purged) {
        if self.recent.len() == PURGES_KEPT {
            if let Some((e, _)) = self.recent.pop_front() {
                self.forgotten = e;
            }
        }
        self.recent.push_back((epoch, what));
    }

    /// Whether a purge after `start` covers this fill (or may have: a forgotten one).
    pub(super) fn cover(&self, start: u64, key: &HashBinary, url: &str, tags: &[Arc<str>]) -> bool {
        start < self.forgotten
            || self
                .recent
                .iter()
                .rev()
                .take_while(|(e, _)| *e > start)
                .any(|(_, p)| p.covers(key, url, tags))
    }
}

impl Store {
    /// The epoch a fill starts at: read before its request goes to the origin, it is handed
    /// back as [`FillStart`] in the response's meta.
    pub fn purge_epoch(&self) -> u64 {
        self.purge_epoch.load(Ordering::Acquire)
    }

    /// Records a purge and marks the writes in flight it covers purged (see `Purges`).
    pub(super) fn purge_fills(&self, maps: &mut Maps, what: Purged) {
        match &what {
            Purged::Key(k) => Self::purge_writes(maps, k),
            _ => {
                for (k, writes) in maps.partial.iter_mut() {
                    for (_, p) in writes.iter_mut() {
                        p.purged |= what.covers(k, &p.url, &p.tags);
                    }
                }
            }
        }
        let epoch = self.purge_epoch.fetch_add(1, Ordering::AcqRel) + 1;
        maps.purges.record(epoch, what);
    }

    /// Purges `what`: first the fills in flight (a fill then either finished before, and
    /// `names` lists its object, or does not store it), then the stored objects in both tiers.
    /// Returns how many objects it removed.
    fn purge_matching(&self, what: Purged) -> usize {
        self.purge_fills(&mut self.write(), what.clone());
        self.remove_named(&what)
    }

    /// Removes what `what` names from memory and disk; returns how many objects were in either.
    fn remove_named(&self, what: &Purged) -> usize {
        let keys = self.read().names.find(what);
        let mut removed = self.remove_many(keys);
        if let Some(d) = self.disk {
            removed.extend(d.purge(what));
        }
        removed.len()
    }

    /// Removes every variant stored for this URL, and refills of them in flight: the
    /// invalidation after an unsafe request. Unlike `purge_url` it is not recorded in `Purges`:
    /// it follows every successful POST, PUT or DELETE, which would soon flush out the
    /// operator's purges (and with them slow fills: see `PURGES_KEPT`).
    pub fn invalidate_url(&self, url: &str) -> usize {
        self.invalidations.fetch_add(1, Ordering::AcqRel);
        self.remove_named(&Purged::Url(Arc::from(url)))
    }

    /// Purges what `what` names: removes it (`Hard`), or marks it stale as of now (`Soft`, as
    /// Fastly's soft purge) so that its next use revalidates with the origin (a `304` refreshes
    /// it without a body) and its stale-while-revalidate and stale-if-error windows, counted
    /// from now, still serve it. Either way fills in flight that it covers are not stored: they
    /// may carry what the purge is about. Returns how many stored objects it removed or marked,
    /// in either tier.
    pub fn purge_named(&self, what: Named, mode: PurgeMode) -> usize {
        let record = match what {
            Named::Url(u) => Purged::Url(Arc::from(u)),
            Named::Prefix(p) => Purged::Prefix(Box::from(p)),
            Named::Tag(t) => Purged::Tag(Box::from(t)),
        };
        match mode {
            PurgeMode::Hard => self.purge_matching(record),
            PurgeMode::Soft => {
                self.purge_fills(&mut self.write(), record.clone());
                let now = SystemTime::now();
                let keys = self.read().names.find(&record);
                let mut expired = self.expire_many(keys, now);
                if let Some(d) = self.disk {
                    expired.extend(d.expire(&record, now));
                }
                expired.len()
            }
        }
    }

    /// Marks these objects stale as of `now` (see `purge_named`); returns those that were fresh.
    fn expire_many(&self, keys: Vec<HashBinary>, now: SystemTime) -> HashSet<HashBinary> {
        let mut maps = self.write();
        let mut expired = HashSet::new();
        for k in keys {
            Self::purge_writes(&mut maps, &k);
            let Some(obj) = maps.objects.get_mut(&k) else {
                continue;
            };
            if obj.freshness.fresh_until <= now {
                continue;
            }
            // Only the internal part (freshness, windows) changes; the header stays as stored.
            let old = obj.meta.size();
            let Ok(fresh_until) = obj.meta.expire_at(now) else {
                continue;
            };
            let new = obj.meta.size();
            obj.freshness.fresh_until = fresh_until;
            if new >= old {
                self.bytes.fetch_add(new - old, Ordering::Relaxed);
            } else {
                self.bytes.fetch_sub(old - new, Ordering::Relaxed);
            }
            expired.insert(k);
        }
        expired
    }

    /// Removes every variant stored for this URL.
    pub fn purge_url(&self, url: &str) -> usize {
        self.purge_matching(Purged::Url(Arc::from(url)))
    }

    /// Removes every object tagged `tag` by its origin.
    pub fn purge_tag(&self, tag: &str) -> usize {
        self.purge_matching(Purged::Tag(Box::from(tag)))
    }

    /// Removes every object whose URL starts with `prefix`.
    pub fn purge_prefix(&self, prefix: &str) -> usize {
        self.purge_matching(Purged::Prefix(Box::from(prefix)))
    }
}
