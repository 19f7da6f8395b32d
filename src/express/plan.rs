//! Which requests the lane answers: a plain HTTP/1.1 GET or HEAD (the guard's checks, the route,
//! `cache::hit`'s rule), then a fresh stored object it can send as it is.

use std::sync::Arc;
use std::time::SystemTime;

use pingora::cache::key::CacheHashKey;
use pingora::cache::CacheKey;

use super::head::Parsed;
use crate::cache::hit::{self, HitHead, RawRequest};
use crate::cache::key::{self, Scheme};
use crate::cache::store::FreshHit;
use crate::guard;
use crate::host::normalize_host;
use crate::origin::router::Route;
use crate::origin::Origin;
use crate::state::{Edge, Live};

/// Request fields the lane leaves to the proxy whatever the cache says: protocol switches. (What
/// takes a request off every fresh-hit path is `cache::hit`'s rule.)
// A chunked body is read ahead and handed over before the plan (see `body`); any other
// `Transfer-Encoding` is Pingora's to refuse.
const NEEDS_PROXY: [&str; 3] = ["expect", "upgrade", "transfer-encoding"];

/// A request the lane will answer.
pub(super) struct Express<'a> {
    pub req: Plain<'a>,
    pub hit: FreshHit,
    pub route: &'a str,
    pub origin: Option<&'a Arc<Origin>>,
}

/// The hit to send for these request bytes, if the lane may answer them. Otherwise the cache
/// key it looked up without finding a fresh object, if it got that far (the proxy need not
/// look again).
pub(super) fn plan<'b>(
    head: &'b Parsed<'_, 'b>,
    buf_len: usize,
    live: &'b Live,
    edge: &Edge,
    scheme: Scheme,
) -> Result<Express<'b>, Option<CacheKey>> {
    eligible(head, buf_len, live, scheme)
        .ok_or(None)
        .and_then(|(request, route)| lookup(request, route, live, edge))
}

/// A request the lane may answer if its object is fresh in the store.
pub(super) struct Plain<'b> {
    pub(super) head: bool,
    pub(super) scheme: Scheme,
    pub(super) host: &'b str,
    pub(super) normalized: String,
    pub(super) target: &'b str,
}

fn eligible<'b>(
    parsed: &'b Parsed<'_, 'b>,
    buf_len: usize,
    live: &'b Live,
    scheme: Scheme,
) -> Option<(Plain<'b>, &'b Route)> {
    if !live.config.cache.express_lane {
        return None;
    }
    let req = &parsed.req;
    // Bytes behind the head (a body, a pipelined request): the proxy's parser decides.
    if parsed.len != buf_len || req.version != Some(1) {
        return None;
    }
    let head = match req.method? {
        "GET" => false,
        "HEAD" => true,
        _ => return None,
    };
    let target = req.path?;
    // Origin-form with only characters that every parser keeps as they are, so the cache key
    // is the one the proxy would build.
    if !target.starts_with('/') || !target.bytes().all(plain_target_byte) {
        return None;
    }
    let mut host = None;
    let mut host_fields = 0;
    let mut size = target.len();
    for f in req.headers.iter() {
        size += f.name.len() + f.value.len() + 4;
        let name = f.name;
        if name.eq_ignore_ascii_case("host") {
            host_fields += 1;
            host = std::str::from_utf8(f.value).ok().filter(|h| !h.is_empty());
        } else if name.eq_ignore_ascii_case("connection") {
            if !f.value.eq_ignore_ascii_case(b"keep-alive") {
                return None;
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            // A body of any length is read ahead and handed over before the plan; what is left
            // here is `0`, or a value Pingora refuses.
            if f.value != b"0" {
                return None;
            }
        } else if NEEDS_PROXY.iter().any(|n| name.eq_ignore_ascii_case(n)) {
            return None;
        }
    }
    let shape = guard::Shape {
        path: target.as_bytes(),
        host,
        host_fields,
        fields: req.headers.len(),
        size,
    };
    guard::check_shape(&shape, &live.limits).ok()?;
    let host = host?;
    let normalized = normalize_host(host);
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let route = live.router.route(&normalized, path)?;
    let raw = RawRequest {
        method: if head { "HEAD" } else { "GET" },
        fields: req.headers,
    };
    if !hit::may_serve_fresh(&raw, &route.cache) {
        return None;
    }
    let plain = Plain {
        head,
        scheme,
        host,
        normalized,
        target,
    };
    Some((plain, route))
}

fn lookup<'b>(
    req: Plain<'b>,
    route: &'b Route,
    live: &'b Live,
    edge: &Edge,
) -> Result<Express<'b>, Option<CacheKey>> {
    let key =
        key::for_url_only(req.scheme, &req.normalized, req.target, &route.cache.key).ok_or(None)?;
    let (store, now) = (edge.cache.store, SystemTime::now());
    let primary = key.primary_bin();
    // Memory first; then the disk tier, if the file is in the page cache.
    let Some(hit) = store
        .fresh_hit(&primary, now)
        .or_else(|| store.fresh_disk_hit(&primary, now))
    else {
        return Err(Some(key));
    };
    let sendable = HitHead {
        hit: &hit,
        targeted: &live.config.cache.targeted_field,
        name: &edge.cluster.cache_name,
    }
    .framed_by_length();
    if !sendable {
        // Stored, fresh, but framed otherwise: the proxy's fresh-hit path sends it.
        return Err(None);
    }
    Ok(Express {
        req,
        hit,
        route: &route.name,
        origin: live.origins.get(&route.origin),
    })
}

/// RFC 3986 unreserved, sub-delims, `:`, `@`, `/`, `?` and `%`.
fn plain_target_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}
