//! Invalidation after unsafe requests (RFC 9111 section 4.4): a successful POST, PUT, DELETE...
//! removes the stored responses for its URI, and for `Location` and `Content-Location` when
//! they name the same host (another host's objects are not this request's to invalidate).

use pingora::http::{RequestHeader, ResponseHeader};

use super::key::{self, Scheme};
use super::store::Store;
use crate::config::QueryKey;
use crate::host::normalize_host;

/// Removes what `req` (answered by `resp`) invalidates; returns how many objects went.
pub fn after_unsafe(
    store: &Store,
    req: &RequestHeader,
    resp: &ResponseHeader,
    scheme: Scheme,
    host: &str,
    query: QueryKey,
) -> usize {
    let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut removed = store.invalidate_url(&key::url(scheme, host, target, query));
    for field in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
        let Some(v) = resp.headers.get(&field).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        if let Some((s, t)) = same_host_target(v, scheme, host) {
            removed += store.invalidate_url(&key::url(s, host, t, query));
        }
    }
    removed
}

/// The scheme and target of a URI reference if it is on `host`: a path (on the request's
/// scheme), or an absolute URL naming the host.
fn same_host_target<'a>(v: &'a str, scheme: Scheme, host: &str) -> Option<(Scheme, &'a str)> {
    match Scheme::split(v) {
        Some((s, rest)) => {
            let (h, t) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            (normalize_host(h) == host).then_some((s, if t.is_empty() { "/" } else { t }))
        }
        None => v.starts_with('/').then_some((scheme, v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_host() {
        let t = |v| same_host_target(v, Scheme::Https, "x.com");
        assert_eq!(t("/a?b"), Some((Scheme::Https, "/a?b")));
        assert_eq!(t("http://X.com:80/a"), Some((Scheme::Http, "/a")));
        assert_eq!(t("https://x.com"), Some((Scheme::Https, "/")));
        assert_eq!(t("http://y.com/a"), None);
        assert_eq!(t("a/relative"), None);
    }
}
