//! The one hash the edge uses wherever a value must not change between processes, builds or
//! platforms: XXH3-64 (the xxHash specification's `XXH3_64bits`, no seed, default secret).
//!
//! Why not `std`'s `DefaultHasher`: Rust documents its algorithm as unspecified and free to
//! change between releases, so two edges built with different toolchains could send the same
//! object to different servers (consistent hashing) or report different config versions for
//! the same file. XXH3 is specified, and `xxhsum -H3` computes the same values, which is how the
//! test vectors below were checked.

use xxhash_rust::xxh3::{xxh3_64, Xxh3Default};

/// XXH3-64 of `bytes`.
pub fn stable64(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

/// XXH3-64 of the concatenation of `parts`, without building it.
pub fn stable64_of(parts: &[&[u8]]) -> u64 {
    let mut h = Xxh3Default::new();
    for p in parts {
        h.update(p);
    }
    h.digest()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from `printf '%s' VALUE | xxhsum -H3` (Debian's xxhash package), independent of
    /// the crate used here.
    #[test]
    fn matches_the_xxh3_specification() {
        assert_eq!(stable64(b""), 0x2d06800538d394c2);
        assert_eq!(stable64(b"a"), 0xe6c632b61e964e1f);
        assert_eq!(
            stable64(b"http://example.com/index.html"),
            0x206ba09eb3901d2d
        );
        assert_eq!(stable64(b"10.0.0.1:8080"), 0xb655a4a4783c5011);
    }

    #[test]
    fn parts_hash_as_their_concatenation() {
        assert_eq!(
            stable64_of(&[b"http://example.com", b"/index.html"]),
            stable64(b"http://example.com/index.html")
        );
        assert_eq!(stable64_of(&[]), stable64(b""));
    }
}
