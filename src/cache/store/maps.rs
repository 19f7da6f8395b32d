//! What the store's one lock guards (`Maps`), and the objects and writes in flight it holds.
//! Every reader and writer of the store works on these under that lock (see the store's
//! module note).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use pingora::cache::key::{CompactCacheKey, HashBinary};
use tokio::sync::watch;

use super::keys::Keys;
use super::names::Names;
use super::purge::Purges;
use super::{Freshness, Spill, StoredMeta};
use crate::cache::body_file::BodyFile;

/// A complete object.
pub(super) struct Object {
    /// The internal fields and the parsed header (see `meta`): a hit clones the header instead
    /// of decompressing one.
    pub(super) meta: StoredMeta,
    /// What a fresh hit needs from `meta` without deserializing it.
    pub(super) freshness: Freshness,
    pub(super) body: Arc<Vec<Bytes>>,
    pub(super) file: Option<Arc<BodyFile>>,
    pub(super) body_len: usize,
    pub(super) url: Arc<str>,
    pub(super) tags: Vec<Arc<str>>,
    pub(super) compact: CompactCacheKey,
}

/// The body of an object being written, as far as memory holds it. A large fill with a disk
/// copy drops chunks from the front once they are on disk (`base` counts what it dropped):
/// readers behind it read those bytes from the file.
#[derive(Default)]
pub(super) struct Chunks {
    pub(super) list: VecDeque<Bytes>,
    /// Body bytes before `list[0]`.
    pub(super) base: u64,
    /// The index (since the fill began) of `list[0]`.
    pub(super) first: usize,
    /// Bytes in `list`.
    pub(super) held: usize,
}

/// An object being written; readers subscribe to its progress (the value turns true when the
/// body is complete; every change means new chunks, new bytes on disk, or completion).
pub(super) struct Partial {
    pub(super) meta: StoredMeta,
    pub(super) chunks: Arc<RwLock<Chunks>>,
    pub(super) progress: Arc<watch::Sender<bool>>,
    /// Its disk copy as it is written, for readers of what memory dropped.
    pub(super) spill: Option<Arc<Spill>>,
    /// What a purge matches it by, as it will be stored.
    pub(super) url: Arc<str>,
    pub(super) tags: Vec<Arc<str>>,
    /// A purge covers it: new readers do not join it and it is not stored. It stays listed
    /// until its fill ends, because the fill's own client reads it by its write tag
    /// (pingora-cache panics if that lookup finds nothing).
    pub(super) purged: bool,
}

/// The writes in flight for one key, with their write ids: almost always one, so a short list
/// rather than a table of its own per miss.
pub(super) type Fills = Vec<(u64, Partial)>;

#[derive(Default)]
pub(super) struct Maps {
    /// Boxed: the table then moves 24-byte slots when it grows (it grows with every object
    /// stored until the cache is full) and its empty slots cost 24 bytes, not an `Object`'s ~190.
    pub(super) objects: HashMap<HashBinary, Box<Object>>,
    /// In-progress writes per key (several may race; the last to finish wins).
    pub(super) partial: HashMap<HashBinary, Fills>,
    /// URLs and tags of stored objects, for purges.
    pub(super) names: Names,
    /// Primary key -> the combined keys of its stored variants (for `fwd=vary-miss`).
    pub(super) variants: HashMap<HashBinary, Keys>,
    pub(super) purges: Purges,
}

impl Maps {
    /// Unlists one write in flight; returns it if it was listed.
    pub(super) fn take_fill(&mut self, key: &HashBinary, id: u64) -> Option<Partial> {
        let fills = self.partial.get_mut(key)?;
        let at = fills.iter().position(|(i, _)| *i == id)?;
        let (_, p) = fills.swap_remove(at);
        if fills.is_empty() {
            self.partial.remove(key);
        }
        Some(p)
    }
}
