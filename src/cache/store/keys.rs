//! A set of object keys that holds its first key inline: what the store's indexes map a URL, a
//! tag or a primary key to.
//!
//! Why not a `HashSet`: almost every URL has one stored variant and almost every primary key
//! one object, and an empty-to-one `HashSet` is a heap table of its own (~100 bytes with its
//! slot, allocated on every miss, freed on every eviction). Measured with
//! `cargo run --release --example object_cost`: the two indexes took ~440 of the ~1,900 bytes a
//! 1 KiB object cost beyond its body.

use std::borrow::Borrow;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use pingora::cache::key::HashBinary;

pub(super) enum Keys {
    One(HashBinary),
    Many(HashSet<HashBinary>),
}

impl Keys {
    pub(super) fn new(key: HashBinary) -> Keys {
        Keys::One(key)
    }

    pub(super) fn insert(&mut self, key: HashBinary) {
        match self {
            Keys::One(k) if *k == key => {}
            Keys::One(k) => *self = Keys::Many(HashSet::from([*k, key])),
            Keys::Many(set) => {
                set.insert(key);
            }
        }
    }

    /// Removes `key`; returns whether the set is now empty (the caller drops it). A set of
    /// many never empties: at one key left it holds it inline again.
    pub(super) fn remove(&mut self, key: &HashBinary) -> bool {
        match self {
            Keys::One(k) => k == key,
            Keys::Many(set) => {
                set.remove(key);
                if set.len() == 1 {
                    let last = *set.iter().next().expect("one left");
                    *self = Keys::One(last);
                }
                false
            }
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &HashBinary> {
        let (one, many) = match self {
            Keys::One(k) => (Some(k), None),
            Keys::Many(set) => (None, Some(set.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

/// Lists `key` under `name` in an index (URL, tag or primary key to object keys).
pub(super) fn list<N: Hash + Eq>(index: &mut HashMap<N, Keys>, name: N, key: HashBinary) {
    match index.entry(name) {
        Entry::Occupied(e) => e.into_mut().insert(key),
        Entry::Vacant(e) => {
            e.insert(Keys::new(key));
        }
    }
}

/// Unlists `key` from `name` in an index; the name goes with its last key.
pub(super) fn unlist<N, Q>(index: &mut HashMap<N, Keys>, name: &Q, key: &HashBinary)
where
    N: Borrow<Q> + Hash + Eq,
    Q: Hash + Eq + ?Sized,
{
    if index.get_mut(name).is_some_and(|keys| keys.remove(key)) {
        index.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(i: u8) -> HashBinary {
        [i; 16]
    }

    fn sorted(keys: &Keys) -> Vec<HashBinary> {
        let mut v: Vec<_> = keys.iter().copied().collect();
        v.sort();
        v
    }

    #[test]
    fn holds_one_inline_and_more_in_a_set() {
        let mut keys = Keys::new(k(1));
        keys.insert(k(1));
        assert!(matches!(keys, Keys::One(_)), "a repeated key stays one");
        keys.insert(k(2));
        keys.insert(k(3));
        assert_eq!(sorted(&keys), vec![k(1), k(2), k(3)]);
        assert!(!keys.remove(&k(2)));
        assert!(!keys.remove(&k(9)), "absent: nothing changes");
        assert_eq!(sorted(&keys), vec![k(1), k(3)]);
        assert!(!keys.remove(&k(1)));
        assert!(matches!(keys, Keys::One(_)), "back to one inline");
        assert_eq!(sorted(&keys), vec![k(3)]);
        assert!(!keys.remove(&k(1)), "not its key: not empty");
        assert!(keys.remove(&k(3)), "its last key: empty");
    }
}
