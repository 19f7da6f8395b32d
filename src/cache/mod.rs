//! The HTTP cache (RFC 9111) in front of the origins: one bounded in-memory store shared by all
//! routes, with pingora-cache driving lookups, fills, revalidation, stale serving, request
//! coalescing (its cache lock) and ranges.
//!
//! - `store`: the storage (bounded, streaming, purge indexes);
//! - `key`: what identifies an object;
//! - `policy`: what may be stored and for how long (Cache-Control, CDN-Cache-Control, defaults);
//! - `status`: the `Cache-Status` response header (RFC 9211) and metric labels.

pub mod key;
pub mod policy;
pub mod status;
pub mod store;

use std::sync::OnceLock;
use std::time::Duration;

use pingora::cache::eviction::lru::Manager;
use pingora::cache::eviction::EvictionManager;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};

use crate::config::CacheSettings;
use store::Store;

/// Shards of the LRU: fewer lock collisions between threads.
const LRU_SHARDS: usize = 16;

/// The process's cache. Pingora wants `'static` parts, so they are built once and live as long
/// as the process; a reload adjusts the size limit in place and keeps every object.
pub struct Cache {
    pub store: &'static Store,
    pub eviction: &'static Manager<LRU_SHARDS>,
    pub lock: &'static CacheKeyLockImpl,
    pub max_object_size: std::sync::atomic::AtomicUsize,
}

static CACHE: OnceLock<Cache> = OnceLock::new();

/// The cache, built on first use with the settings given then.
pub fn cache(settings: &CacheSettings) -> &'static Cache {
    CACHE.get_or_init(|| {
        let limit = settings.max_size.0 as usize;
        let eviction: &'static Manager<LRU_SHARDS> =
            Box::leak(Box::new(Manager::with_capacity(limit, 1024)));
        let store: &'static Store = Box::leak(Box::new(Store::new(eviction)));
        let lock: &'static CacheKeyLockImpl = Box::leak(Box::new(CacheLock::new(
            // Age after which a lock is considered abandoned by its writer.
            Duration::from_secs(60),
        )));
        Cache {
            store,
            eviction,
            lock,
            max_object_size: (settings.max_object_size.0 as usize).into(),
        }
    })
}

impl Cache {
    /// Applies reloadable settings: the size limit (shrinking evicts on the next admissions)
    /// and the largest object stored.
    pub fn apply(&self, settings: &CacheSettings) {
        self.eviction.set_weight_limit(settings.max_size.0 as usize);
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
