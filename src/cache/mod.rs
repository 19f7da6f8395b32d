//! The HTTP cache (RFC 9111) in front of the origins: one bounded in-memory store shared by all
//! routes, optionally over a disk tier, with pingora-cache driving lookups, fills,
//! revalidation, stale serving, request coalescing (its cache lock) and ranges.
//!
//! - `store`: the storage (bounded, streaming, purge indexes), and its disk tier
//!   (`store::disk`);
//! - `eviction`: which objects stay when it is full (TinyUFO);
//! - `hit`: fresh hits answered from the store without pingora-cache's machinery (the rule and
//!   the response head both the express lane and the proxy use);
//! - `body_file`: large bodies in memory files, sent with sendfile;
//! - `key`: what identifies an object; `vary`: which variant a request gets;
//! - `policy`: what may be stored and for how long (Cache-Control, CDN-Cache-Control, defaults);
//!   `directives`: those fields parsed, without a regex in the usual case;
//!   `sf`: whether a targeted field is a valid Structured Field Dictionary;
//! - `request`: what a request's `Cache-Control` asks of the cache, and makes of a hit;
//! - `invalidate`: what an unsafe request removes; `purge`: what an operator's purge removes
//!   or marks stale;
//! - `status`: the `Cache-Status` response header (RFC 9211) and metric labels.

pub mod body_file;
mod directives;
pub mod eviction;
pub mod hit;
pub mod invalidate;
pub mod key;
pub mod partial;
pub mod policy;
pub mod purge;
pub mod request;
mod sf;
pub mod status;
pub mod store;
pub mod vary;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::predictor::Predictor;

use crate::config::CacheSettings;
use eviction::TinyUfoEviction;
use store::disk::open::open_files_by_default;
use store::disk::Disk;
use store::Store;

/// Response fields that tag objects for purge by tag: `Surrogate-Key` (tags separated by
/// spaces) and `Cache-Tag` (by commas). Read by the store, never sent to clients.
pub const SURROGATE_KEY: &str = "surrogate-key";
pub const CACHE_TAG: &str = "cache-tag";

/// The process's cache, built once at start by [`crate::state::Edge`] and handed to whoever
/// needs it. Pingora wants `'static` parts, so they are leaked: they live as long as the
/// process. A reload keeps every object (a new `max_size` or `disk` needs a restart).
pub struct Cache {
    pub store: &'static Store,
    pub eviction: &'static TinyUfoEviction,
    pub lock: &'static CacheKeyLockImpl,
    /// Remembers URLs whose responses were uncacheable, so their next requests go straight to
    /// the origin without queueing on the cache lock (Varnish's hit-for-pass). Pingora takes
    /// a URL off the list as soon as one of its responses is cacheable again.
    pub predictor: &'static Predictor<16>,
    /// `cache.max_object_size`, reloadable.
    pub max_object_size: AtomicUsize,
}

impl Cache {
    /// Builds the cache with `settings.max_size`, and opens the disk tier if there is one (its
    /// worker starts with [`Cache::start_disk`]); called once per process.
    pub fn new(settings: &CacheSettings) -> Result<Self, String> {
        let limit = settings.max_size.0 as usize;
        // Sized for objects of 16 KiB on average; only the frequency sketch depends on it.
        let eviction: &'static TinyUfoEviction =
            Box::leak(Box::new(TinyUfoEviction::new(limit, limit / (16 << 10))));
        let disk = match &settings.disk {
            Some(d) => {
                let open_files = d.open_files.unwrap_or_else(open_files_by_default);
                Some(&*Box::leak(Box::new(Disk::open(
                    &d.path,
                    d.max_size.0,
                    open_files,
                )?)))
            }
            None => None,
        };
        let store: &'static Store = Box::leak(Box::new(Store::with_disk(eviction, disk)));
        let lock: &'static CacheKeyLockImpl = Box::leak(Box::new(CacheLock::new(
            // Age after which a lock is considered abandoned by its writer.
            Duration::from_secs(60),
        )));
        let predictor: &'static Predictor<16> =
            Box::leak(Box::new(Predictor::new(4096, Some(per_request_reason))));
        Ok(Cache {
            predictor,
            store,
            eviction,
            lock,
            max_object_size: (settings.max_object_size.0 as usize).into(),
        })
    }

    /// At stop: waits until the disk tier's writer has done what it was given (purges'
    /// removals, fills that completed), so what the edge answered is what a restart finds.
    pub fn settle_disk(&self) {
        // Not while it waits for the lock (nothing was written) or is given up; at most 10 s.
        let Some(d) = self.store.disk().filter(|d| d.writable()) else {
            return;
        };
        let mut done = d.settled();
        for _ in 0..1000 {
            match done.try_recv() {
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                _ => return,
            }
        }
    }

    /// Starts the disk tier's worker, if there is a tier: after daemonizing, since a thread
    /// does not survive the fork.
    pub fn start_disk(&self) {
        if let Some(d) = self.store.disk() {
            d.start();
        }
    }

    /// Applies reloadable settings: the largest object stored.
    pub fn apply(&self, settings: &CacheSettings) {
        self.max_object_size
            .store(settings.max_object_size.0 as usize, Ordering::Relaxed);
    }

    pub fn max_object_size(&self) -> usize {
        self.max_object_size.load(Ordering::Relaxed)
    }
}

/// Reasons that belong to one request, not to the URL: not remembered.
fn per_request_reason(reason: &'static str) -> bool {
    reason == "authorization"
}
