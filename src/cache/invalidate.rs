//! Invalidation after unsafe requests (RFC 9111 section 4.4): a successful POST, PUT, DELETE...
//! removes the stored responses for its URI, and for `Location` and `Content-Location` when
//! they name the same host (another host's objects are not this request's to invalidate).

use pingora::http::{RequestHeader, ResponseHeader};

use super::key;
use super::store::Store;
use crate::config::QueryKey;
use crate::host::normalize_host;

/// Removes what `req` (answered by `resp`) invalidates; returns how many objects went.
pub fn after_unsafe(
    store: &Store,
    req: &RequestHeader,
    resp: &ResponseHeader,
    host: &str,
    query: QueryKey,
) -> usize {
    let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut removed = store.purge_url(&key::url(host, target, query));
    for field in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
        let Some(v) = resp.headers.get(&field).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        if let Some(t) = same_host_target(v, host) {
            removed += store.purge_url(&key::url(host, t, query));
        }
    }
    removed
}

/// The target of a URI reference if it is on `host`: a path, or an absolute URL naming it.
fn same_host_target<'a>(v: &'a str, host: &str) -> Option<&'a str> {
    match v
        .strip_prefix("http://")
        .or_else(|| v.strip_prefix("https://"))
    {
        Some(rest) => {
            let (h, t) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            (normalize_host(h) == host).then_some(if t.is_empty() { "/" } else { t })
        }
        None => v.starts_with('/').then_some(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_host() {
        assert_eq!(same_host_target("/a?b", "x.com"), Some("/a?b"));
        assert_eq!(same_host_target("http://X.com:80/a", "x.com"), Some("/a"));
        assert_eq!(same_host_target("https://x.com", "x.com"), Some("/"));
        assert_eq!(same_host_target("http://y.com/a", "x.com"), None);
        assert_eq!(same_host_target("a/relative", "x.com"), None);
    }
}
