//! How a stored object's metadata is kept: pingora-cache's internal fields (freshness, windows,
//! variance) as the bytes `CacheMeta::serialize` would give for them, and the response header
//! parsed, with bytes of its own. Nothing is compressed.
//!
//! Why not `CacheMeta::serialize` as it is: it also zstd-compresses the header, which the store
//! never needs (hits clone the parsed header), and the store then decompressed and re-parsed it
//! to get a header that owns its bytes. Those two steps were ~30% of inserting a 1 KiB object
//! (`cargo bench --bench hot_paths -- "store insert"`, perf). The internal fields are written
//! here in the msgpack encoding pingora-cache uses (as `rmp_serde` writes them, its field
//! order), and `internal_bytes_match_pingora_cache` checks them against `CacheMeta::serialize`
//! byte for byte, so a Pingora upgrade that changes the format fails that test, not a hit.

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use bytes::Bytes;
use http::HeaderValue;
use pingora::cache::CacheMeta;
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};

/// A stored object's metadata.
#[derive(Clone)]
pub struct StoredMeta {
    /// pingora-cache's internal fields, serialized (see the module's note).
    pub internal: Vec<u8>,
    /// The response header with bytes of its own (see `owned_copy`).
    pub header: Arc<ResponseHeader>,
}

impl StoredMeta {
    pub fn of(meta: &CacheMeta) -> Result<StoredMeta> {
        Ok(StoredMeta {
            internal: internal_bytes(meta)?,
            header: Arc::new(owned_copy(meta.response_header())?),
        })
    }

    /// The `CacheMeta` pingora-cache gets on a lookup.
    pub fn to_cache_meta(&self) -> Result<CacheMeta> {
        let mut meta = CacheMeta::deserialize(&self.internal, stub_header())?;
        *meta.response_header_mut() = ResponseHeader::clone(&self.header);
        Ok(meta)
    }

    /// Marks it stale as of `now` (a soft purge; see `CacheMeta::expire_at`); returns the new
    /// `fresh_until`.
    pub fn expire_at(&mut self, now: SystemTime) -> Result<SystemTime> {
        let mut meta = CacheMeta::deserialize(&self.internal, stub_header())?;
        meta.expire_at(now);
        self.internal = internal_bytes(&meta)?;
        Ok(meta.fresh_until())
    }

    /// Bytes it takes beyond the fixed per-object overhead: the internal fields and the header
    /// as it would be written (names, values, separators).
    pub fn size(&self) -> usize {
        let fields: usize = self
            .header
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum();
        self.internal.len() + fields + 16
    }
}

/// When an object stored with these internal fields stops being fresh (the disk tier's index
/// keeps it).
pub fn fresh_until_of(internal: &[u8]) -> Option<SystemTime> {
    CacheMeta::deserialize(internal, stub_header())
        .ok()
        .map(|m| m.fresh_until())
}

/// These internal fields marked stale as of `at` (a soft purge on disk).
pub fn expire_internal(internal: &[u8], at: SystemTime) -> Option<Vec<u8>> {
    let mut meta = CacheMeta::deserialize(internal, stub_header()).ok()?;
    meta.expire_at(at);
    internal_bytes(&meta).ok()
}

/// The internal fields as `CacheMeta::serialize().0` gives them, without touching the header:
/// pingora-cache 0.9.1's `InternalMetaV2`, field for field in its order, as `rmp_serde` writes
/// it: a msgpack array; integers in their shortest form; a `SystemTime` as [seconds,
/// nanoseconds] since the epoch; the variance as an array of 16 integers; `None` as nil; a
/// provenance always (pingora-cache reads a missing one as `created`). Written here because
/// rmp_serde's generic path took ~0.8 µs of a miss (perf, bench/run.sh's miss scenario);
/// `internal_bytes_match_pingora_cache` checks every byte against pingora-cache's own.
fn internal_bytes(meta: &CacheMeta) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(64);
    array(&mut out, 9);
    uint(&mut out, 2); // the version: InternalMetaV2
    time(&mut out, meta.fresh_until())?;
    time(&mut out, meta.created())?;
    time(&mut out, meta.updated())?;
    uint(&mut out, meta.stale_while_revalidate_sec().into());
    uint(&mut out, meta.stale_if_error_sec().into());
    match meta.variance() {
        Some(v) => {
            array(&mut out, v.len());
            for b in v {
                uint(&mut out, b.into());
            }
        }
        None => out.push(NIL),
    }
    match meta.epoch_override() {
        Some(t) => time(&mut out, t)?,
        None => out.push(NIL),
    }
    time(&mut out, meta.provenance())?;
    Ok(out)
}

const NIL: u8 = 0xc0;

fn array(out: &mut Vec<u8>, len: usize) {
    match u16::try_from(len) {
        Ok(n) if n <= 15 => out.push(0x90 | n as u8),
        Ok(n) => {
            out.push(0xdc);
            out.extend_from_slice(&n.to_be_bytes());
        }
        Err(_) => {
            out.push(0xdd);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
    }
}

fn uint(out: &mut Vec<u8>, v: u64) {
    if v <= 0x7f {
        out.push(v as u8);
    } else if let Ok(v) = u8::try_from(v) {
        out.extend_from_slice(&[0xcc, v]);
    } else if let Ok(v) = u16::try_from(v) {
        out.push(0xcd);
        out.extend_from_slice(&v.to_be_bytes());
    } else if let Ok(v) = u32::try_from(v) {
        out.push(0xce);
        out.extend_from_slice(&v.to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// As serde writes a `SystemTime` (which must not be before the epoch).
fn time(out: &mut Vec<u8>, t: SystemTime) -> Result<()> {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).map_err(|_| {
        Error::explain(
            ErrorType::InternalError,
            "cannot encode cache meta: a time before 1970",
        )
    })?;
    array(out, 2);
    uint(out, since.as_secs());
    uint(out, since.subsec_nanos().into());
    Ok(())
}

/// A copy of the header whose names and values own their bytes. The header Pingora hands over
/// holds slices of the whole upstream read buffer (4 KiB or more, with the start of the body);
/// keeping it would pin that buffer for the object's lifetime (measured: ~4.7 KiB per cached
/// object, more than a small object's body and header together). Names keep their case.
///
/// All names and values are copied into one buffer and the copy's fields are slices of it: one
/// allocation per header, not two per field (a field each cost ~5% of a 1 KiB hit's throughput,
/// bench/ab.sh hit1k, since every hit clones and drops them).
fn owned_copy(h: &ResponseHeader) -> Result<ResponseHeader> {
    let mut out = ResponseHeader::build(h.status, Some(h.headers.len()))?;
    out.set_version(h.version);
    if let Some(reason) = h.get_reason_phrase() {
        out.set_reason_phrase(Some(reason))?;
    }
    let fields: Vec<(&[u8], &HeaderValue)> = if h.has_case() {
        h.case_header_iter()
            .map(|(n, v)| (n.as_slice(), v))
            .collect()
    } else {
        h.headers
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v))
            .collect()
    };
    let total = fields.iter().map(|(n, v)| n.len() + v.len()).sum();
    let mut buf = Vec::with_capacity(total);
    for (n, v) in &fields {
        buf.extend_from_slice(n);
        buf.extend_from_slice(v.as_bytes());
    }
    let buf = Bytes::from(buf);
    let mut at = 0;
    for (n, v) in &fields {
        let name = buf.slice(at..at + n.len());
        at += n.len();
        let mut value = HeaderValue::from_maybe_shared(buf.slice(at..at + v.len()))
            .map_err(|_| Error::explain(ErrorType::InternalError, "a valid value stays valid"))?;
        at += v.len();
        value.set_sensitive(v.is_sensitive());
        out.append_header(name, value)?;
    }
    Ok(out)
}

/// A `CacheMeta` that says nothing, for a caller known to drop it unread (see
/// `Store::lookup_streaming_write`).
pub fn placeholder_meta() -> CacheMeta {
    let epoch = std::time::SystemTime::UNIX_EPOCH;
    let header = ResponseHeader::build(200, Some(0)).expect("a valid status");
    CacheMeta::new(epoch, epoch, 0, 0, header)
}

/// The serialized header of an empty 200: small enough that zstd stores it raw, so
/// decompressing it is a copy. `CacheMeta::deserialize` wants one.
pub fn stub_header() -> &'static [u8] {
    static STUB: OnceLock<Vec<u8>> = OnceLock::new();
    STUB.get_or_init(|| {
        let now = std::time::SystemTime::now();
        let header = ResponseHeader::build(200, Some(0)).expect("a valid status");
        CacheMeta::new(now, now, 0, 0, header)
            .serialize()
            .map(|(_, h)| h)
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample() -> CacheMeta {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.append_header("Content-Type", "text/plain").unwrap();
        h.append_header("X-Custom-Case", "v").unwrap();
        h.append_header("Set-Cookie", "a=1").unwrap();
        h.append_header("Set-Cookie", "b=2").unwrap();
        let mut m = CacheMeta::new(t + Duration::from_secs(60), t, 30, 300, h);
        m.set_variance_key([7; 16]);
        m.set_epoch_override(t + Duration::from_secs(5));
        m
    }

    #[test]
    fn internal_bytes_match_pingora_cache() {
        let wide = {
            // Every integer width: a variance of bytes over 127, seconds beyond u16, u32 windows.
            let t = SystemTime::UNIX_EPOCH + Duration::new(4_000_000_000, 999_999_999);
            let h = ResponseHeader::build(200, None).unwrap();
            let mut m = CacheMeta::new(t, t, 100_000, 200, h);
            m.set_variance_key([0xff; 16]);
            m
        };
        for m in [sample(), wide, {
            let h = ResponseHeader::build(404, None).unwrap();
            CacheMeta::new(SystemTime::now(), SystemTime::now(), 0, 0, h)
        }] {
            assert_eq!(internal_bytes(&m).unwrap(), m.serialize().unwrap().0);
        }
    }

    #[test]
    fn a_stored_meta_reads_back_as_it_was() {
        let m = sample();
        let stored = StoredMeta::of(&m).unwrap();
        let back = stored.to_cache_meta().unwrap();
        assert_eq!(back.fresh_until(), m.fresh_until());
        assert_eq!(back.epoch(), m.epoch());
        assert_eq!(back.variance(), m.variance());
        assert_eq!(
            (back.stale_while_revalidate_sec(), back.stale_if_error_sec()),
            (30, 300)
        );
        let h = back.response_header();
        assert_eq!(h.status, 200);
        let names: Vec<String> = h
            .case_header_iter()
            .map(|(n, _)| String::from_utf8(n.as_slice().to_vec()).unwrap())
            .collect();
        assert_eq!(
            names,
            ["Content-Type", "X-Custom-Case", "Set-Cookie", "Set-Cookie"]
        );
        assert_eq!(h.headers.get_all("set-cookie").iter().count(), 2);
    }

    #[test]
    fn a_soft_purge_moves_only_the_deadline() {
        let m = sample();
        let mut stored = StoredMeta::of(&m).unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_010);
        assert_eq!(stored.expire_at(now).unwrap(), now);
        let back = stored.to_cache_meta().unwrap();
        assert!(!back.is_fresh(now + Duration::from_secs(1)));
        assert_eq!(back.stale_while_revalidate_sec(), 30);
        assert_eq!(back.epoch(), m.epoch());
    }
}
