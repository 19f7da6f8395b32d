//! Fresh hits served straight from the store, before pingora-cache is involved.
//!
//! pingora-cache's hit path (cache lock setup, key hashing twice, meta rebuild, hit handler,
//! range and conditional filters) cost about twice the CPU of the response itself: a 1 KiB hit
//! ran at ~38k requests per CPU-second against ~60k for a response written directly by the
//! proxy. Most hits need none of that machinery: a plain GET or HEAD of a fresh object that does
//! not vary. Those are answered here; everything else (conditional and range requests, client
//! revalidation, stale or varying objects, objects still being written) falls through to
//! pingora-cache unchanged, which keeps every RFC 9111 behaviour in one place.

use std::time::SystemTime;

use http::header;
use pingora::cache::key::CacheHashKey;
use pingora::cache::CacheKey;
use pingora::http::{RequestHeader, ResponseHeader};

use super::store::FreshHit;
use super::{cache, key, policy};
use crate::config::{CacheSettings, RouteCache};

/// Request fields that need pingora-cache's handling of a hit (conditional requests, ranges) or
/// its refusal of one (credentials, a request body to read first).
pub const NEEDS_FULL_PATH: [header::HeaderName; 9] = [
    header::RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::AUTHORIZATION,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
];

/// What the fast path found: the hit, if any, and the cache key it built on the way, which
/// pingora-cache's path reuses instead of building and hashing it again.
pub struct Lookup {
    pub hit: Option<FreshHit>,
    pub key: Option<CacheKey>,
}

/// The stored response for this request if it can be served as it is, now.
pub fn lookup(
    req: &RequestHeader,
    host: &str,
    route: &RouteCache,
    settings: &CacheSettings,
) -> Lookup {
    if policy::bypass_reason(req, route).is_some()
        || NEEDS_FULL_PATH.iter().any(|h| req.headers.contains_key(h))
        || policy::client_wants_revalidation(req)
    {
        return Lookup {
            hit: None,
            key: None,
        };
    }
    let key = key::for_request(req, host, &route.key);
    let hit = cache(settings)
        .store
        .fresh_hit(&key.primary_bin(), SystemTime::now());
    Lookup {
        hit,
        key: Some(key),
    }
}

/// How a stored response's body is delimited on the way to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// A status that has no body (1xx, 204, 304).
    NoBody,
    /// Its (first) Content-Length.
    Length(u64),
    /// No Content-Length: sent chunked.
    Chunked,
    /// A Content-Length that is not a number: sent as stored.
    BadLength,
}

pub fn framing(h: &ResponseHeader) -> Framing {
    if matches!(h.status.as_u16(), 204 | 304) || h.status.is_informational() {
        return Framing::NoBody;
    }
    match h.headers.get(header::CONTENT_LENGTH) {
        None => Framing::Chunked,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(Framing::BadLength, Framing::Length),
    }
}

/// A complete 200 of known length can be served in ranges (pingora-cache says so too, as nginx
/// does).
pub fn accepts_ranges(h: &ResponseHeader) -> bool {
    h.status == http::StatusCode::OK && matches!(framing(h), Framing::Length(_))
}

/// The header sent for a fresh hit, as pingora-cache's hit path builds it: the stored header,
/// its Age (RFC 9111 section 4), HTTP/1.1 framing, Accept-Ranges.
pub fn response_header(hit: &FreshHit) -> ResponseHeader {
    let mut h = ResponseHeader::clone(&hit.header);
    // An integer always makes a valid header value.
    let _ = h.insert_header(header::AGE, hit.age.as_secs());
    h.set_version(http::Version::HTTP_11);
    if framing(&h) == Framing::Chunked {
        let _ = h.insert_header(header::TRANSFER_ENCODING, "chunked");
    }
    if accepts_ranges(&h) {
        let _ = h.insert_header(header::ACCEPT_RANGES, "bytes");
    }
    h
}
