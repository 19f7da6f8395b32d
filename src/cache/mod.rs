//! The HTTP cache (RFC 9111) in front of the origins: one bounded in-memory store shared by all
//! routes, with pingora-cache driving lookups, fills, revalidation, stale serving, request
//! coalescing (its cache lock) and ranges.
//!
//! - `store`: the storage (bounded, streaming, purge indexes);
//! - `fresh`: fresh hits answered from the store without pingora-cache's machinery;
//! - `body_file`: large bodies in memory files, sent with sendfile;
//! - `key`: what identifies an object;
//! - `policy`: what may be stored and for how long (Cache-Control, CDN-Cache-Control, defaults);
//! - `status`: the `Cache-Status` response header (RFC 9211) and metric labels.

pub mod body_file;
pub mod eviction;
pub mod fresh;
pub mod key;
pub mod policy;
pub mod status;
pub mod store;

use std::sync::OnceLock;
use std::time::Duration;

use pingora::cache::eviction::EvictionManager;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::predictor::Predictor;

use crate::config::CacheSettings;

/// Response fields that tag objects for purge by tag: `Surrogate-Key` (tags separated by
/// spaces) and `Cache-Tag` (by commas). Read by the store, never sent to clients.
pub const SURROGATE_KEY: &str = "surrogate-key";
pub const CACHE_TAG: &str = "cache-tag";
use eviction::TinyUfoEviction;
use store::Store;

/// The process's cache. Pingora wants `'static` parts, so they are built once and live as long
/// as the process; a reload keeps every object (a new `max_size` needs a restart).
pub struct Cache {
    pub store: &'static Store,
    pub eviction: &'static TinyUfoEviction,
    pub lock: &'static CacheKeyLockImpl,
    /// Remembers URLs whose responses were uncacheable, so their next requests go straight to
    /// the origin without queueing on the cache lock (Varnish's hit-for-pass). Pingora takes
    /// a URL off the list as soon as one of its responses is cacheable again.
    pub predictor: &'static Predictor<16>,
    pub max_object_size: std::sync::atomic::AtomicUsize,
}

static CACHE: OnceLock<Cache> = OnceLock::new();

/// The cache, built on first use with the settings given then.
pub fn cache(settings: &CacheSettings) -> &'static Cache {
    CACHE.get_or_init(|| {
        let limit = settings.max_size.0 as usize;
        // Sized for objects of 16 KiB on average; only the frequency sketch depends on it.
        let eviction: &'static TinyUfoEviction =
            Box::leak(Box::new(TinyUfoEviction::new(limit, limit / (16 << 10))));
        let store: &'static Store = Box::leak(Box::new(Store::new(eviction)));
        let lock: &'static CacheKeyLockImpl = Box::leak(Box::new(CacheLock::new(
            // Age after which a lock is considered abandoned by its writer.
            Duration::from_secs(60),
        )));
        let predictor: &'static Predictor<16> =
            Box::leak(Box::new(Predictor::new(4096, Some(per_request_reason))));
        Cache {
            predictor,
            store,
            eviction,
            lock,
            max_object_size: (settings.max_object_size.0 as usize).into(),
        }
    })
}

/// Reasons that belong to one request, not to the URL: not remembered.
fn per_request_reason(reason: &'static str) -> bool {
    reason == "authorization"
}

impl Cache {
    /// Applies reloadable settings: the largest object stored.
    pub fn apply(&self, settings: &CacheSettings) {
        self.max_object_size.store(
            settings.max_object_size.0 as usize,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    pub fn evicted_items(&self) -> usize {
        self.eviction.evicted_items()
    }

    pub fn evicted_bytes(&self) -> usize {
        self.eviction.evicted_size()
    }
}
