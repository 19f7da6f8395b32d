//! The cache key: `http://host/path?query`, then, on following lines, the values of the request
//! headers and cookies the route names. The URL comes first and alone on its line so that purge
//! by URL and by prefix can work on it (see `store::url_of_primary`).

use pingora::cache::key::CacheHashKey;
use pingora::cache::CacheKey;
use pingora::http::RequestHeader;

use crate::config::{CacheKeySettings, QueryKey};

/// The URL part of the key for a host (already normalized) and a request target.
/// The scheme the client used: part of the key, so a route served over HTTP and HTTPS keeps
/// the two apart (an origin may answer them differently).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheme {
    #[default]
    Http = 0,
    Https = 1,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// `http://...` or `https://...`: the scheme and the rest.
    pub fn split(url: &str) -> Option<(Scheme, &str)> {
        url.strip_prefix("http://")
            .map(|r| (Scheme::Http, r))
            .or_else(|| url.strip_prefix("https://").map(|r| (Scheme::Https, r)))
    }
}

pub fn url(scheme: Scheme, host: &str, path_and_query: &str, query: QueryKey) -> String {
    let (path, q) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let mut out = String::with_capacity(8 + host.len() + path_and_query.len());
    out.push_str(scheme.as_str());
    out.push_str("://");
    out.push_str(host);
    out.push_str(path);
    match (q, query) {
        (None, _) | (_, QueryKey::Strip) => {}
        (Some(q), QueryKey::Keep) => {
            out.push('?');
            out.push_str(q);
        }
        (Some(q), QueryKey::Sort) => {
            let mut params: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
            params.sort_unstable();
            if !params.is_empty() {
                out.push('?');
                out.push_str(&params.join("&"));
            }
        }
    }
    out
}

/// The key of a request whose route keys on the URL alone (no header or cookie values); None
/// when the route's key needs more than the URL. Equal to `for_request` for such routes.
pub fn for_url_only(
    scheme: Scheme,
    host: &str,
    target: &str,
    settings: &CacheKeySettings,
) -> Option<CacheKey> {
    (settings.headers.is_empty() && settings.cookies.is_empty())
        .then(|| hashed(url(scheme, host, target, settings.query)))
}

/// Value of one cookie in the request's Cookie headers.
pub fn cookie<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The full key for a request.
pub fn for_request(
    req: &RequestHeader,
    scheme: Scheme,
    host: &str,
    settings: &CacheKeySettings,
) -> CacheKey {
    let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut primary = url(scheme, host, target, settings.query);
    for h in &settings.headers {
        primary.push('\n');
        primary.push_str(h);
        primary.push(':');
        for v in req.headers.get_all(h.as_str()) {
            primary.push_str(&String::from_utf8_lossy(v.as_bytes()));
        }
    }
    for c in &settings.cookies {
        primary.push_str("\ncookie:");
        primary.push_str(c);
        primary.push('=');
        primary.push_str(cookie(req, c).unwrap_or(""));
    }
    hashed(primary)
}

/// A key whose hash is computed once. pingora-cache's `CacheKey` hashes its primary (Blake2b)
/// again on every `primary_bin()`, and a miss asks for it about ten times (lookup, cache lock,
/// fill, eviction): ~1.3 µs of a miss (perf, bench/run.sh's miss scenario).
fn hashed(primary: String) -> CacheKey {
    let mut key = CacheKey::new(primary, "");
    let bin = key.primary_bin();
    key.set_primary_bin_override(bin);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_modes() {
        assert_eq!(
            url(Scheme::Http, "a.com", "/p?b=2&a=1", QueryKey::Keep),
            "http://a.com/p?b=2&a=1"
        );
        assert_eq!(
            url(Scheme::Http, "a.com", "/p?b=2&a=1", QueryKey::Sort),
            "http://a.com/p?a=1&b=2"
        );
        assert_eq!(
            url(Scheme::Http, "a.com", "/p?b=2&a=1", QueryKey::Strip),
            "http://a.com/p"
        );
        assert_eq!(
            url(Scheme::Http, "a.com", "/p", QueryKey::Sort),
            "http://a.com/p"
        );
    }

    #[test]
    fn headers_and_cookies_join_the_key() {
        let mut r = RequestHeader::build("GET", b"/x?q=1", None).unwrap();
        r.insert_header("X-Device", "mobile").unwrap();
        r.insert_header("Cookie", "a=1; lang=fr; z=9").unwrap();
        let settings = CacheKeySettings {
            query: QueryKey::Keep,
            headers: vec!["x-device".into()],
            cookies: vec!["lang".into()],
        };
        let k = for_request(&r, Scheme::Http, "a.com", &settings);
        assert_eq!(
            k.primary_key_str(),
            Some("http://a.com/x?q=1\nx-device:mobile\ncookie:lang=fr")
        );
        assert_eq!(cookie(&r, "z"), Some("9"));
        assert!(for_url_only(Scheme::Http, "a.com", "/x?q=1", &settings).is_none());
        let url_only = CacheKeySettings {
            query: QueryKey::Sort,
            headers: vec![],
            cookies: vec![],
        };
        let r = RequestHeader::build("GET", b"/x?q=1&a=2", None).unwrap();
        assert_eq!(
            for_url_only(Scheme::Http, "a.com", "/x?q=1&a=2", &url_only).map(|k| k.primary_bin()),
            Some(for_request(&r, Scheme::Http, "a.com", &url_only).primary_bin())
        );
        assert_eq!(cookie(&r, "b"), None);
    }

    #[test]
    fn a_key_hashes_as_pingora_cache_would() {
        let r = RequestHeader::build("GET", b"/x?q=1", None).unwrap();
        let settings = CacheKeySettings {
            query: QueryKey::Keep,
            headers: vec![],
            cookies: vec![],
        };
        let k = for_request(&r, Scheme::Http, "a.com", &settings);
        let plain = CacheKey::new("http://a.com/x?q=1", "");
        assert_eq!(k.primary_bin(), plain.primary_bin());
        assert_eq!(k.combined_bin(), plain.combined_bin());
        assert_eq!(k.to_compact().primary, plain.to_compact().primary);
    }
}
