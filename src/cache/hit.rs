//! Fresh hits: which requests may be answered with a stored object as it is, and the response
//! head sent for one. Two paths serve them, and both take their rule and their head from here:
//! the express lane (`crate::express`, raw HTTP/1 bytes on the client connection) and the
//! proxy's `request_filter` (Pingora's `ResponseHeader`). What neither may answer (conditional
//! and range requests, client revalidation, stale, varying or still-filling objects) goes to
//! pingora-cache's hit path, which keeps every other RFC 9111 behaviour in one place.
//!
//! Why they exist: pingora-cache's hit path (cache lock setup, key hashing twice, meta rebuild,
//! hit handler, range and conditional filters) cost about twice the CPU of the response itself
//! (BENCHMARKS.md has the figures).

use std::fmt::Write as _;
use std::time::SystemTime;

use bytes::{BufMut, BytesMut};
use http::header;
use pingora::cache::key::CacheHashKey;
use pingora::cache::CacheKey;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::date;

use super::status::{self, Outcome};
use super::store::{FreshHit, Store};
use super::{key, CACHE_TAG, SURROGATE_KEY};
use crate::config::RouteCache;

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

/// A request as the hit rule reads it: Pingora's parsed header, or the lane's raw fields.
pub trait RequestFields {
    fn method(&self) -> &[u8];
    /// Whether a field `name` (lowercase) has a value for which `f` is true.
    fn any_value(&self, name: &str, f: &mut dyn FnMut(&[u8]) -> bool) -> bool;
    fn has(&self, name: &str) -> bool {
        self.any_value(name, &mut |_| true)
    }
    /// The client asked to revalidate (`no-cache`, `max-age=0`, `Pragma: no-cache`); None when
    /// this view does not read cache directives (then the request is not answered from here).
    fn wants_revalidation(&self) -> Option<bool>;
}

impl RequestFields for RequestHeader {
    fn method(&self) -> &[u8] {
        self.method.as_str().as_bytes()
    }
    fn any_value(&self, name: &str, f: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.headers.get_all(name).iter().any(|v| f(v.as_bytes()))
    }
    fn wants_revalidation(&self) -> Option<bool> {
        // Also min-fresh and max-stale: the cache phases weigh them against the freshness.
        Some(super::request::ClientDirectives::of(self).bear_on_freshness())
    }
}

/// The express lane's view: the method and the fields as httparse found them.
pub struct RawRequest<'a> {
    pub method: &'a str,
    pub fields: &'a [httparse::Header<'a>],
}

impl RequestFields for RawRequest<'_> {
    fn method(&self) -> &[u8] {
        self.method.as_bytes()
    }
    fn any_value(&self, name: &str, f: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.fields
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case(name) && f(h.value))
    }
    fn wants_revalidation(&self) -> Option<bool> {
        // The lane does not parse directives: any of them sends the request to the proxy.
        let directives = self.has("cache-control") || self.has("pragma");
        (!directives).then_some(false)
    }
}

/// The route's bypass rule (`cache.bypass`): any of its cookies or request fields present.
pub fn bypassed_by_rule(req: &impl RequestFields, route: &RouteCache) -> bool {
    route
        .bypass
        .cookies
        .iter()
        .any(|c| req.any_value("cookie", &mut |v| has_cookie(v, c)))
        || route.bypass.headers.iter().any(|h| req.has(h))
}

fn has_cookie(value: &[u8], name: &str) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    value
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .any(|(k, _)| k == name)
}

/// The one rule: this request may be answered with a fresh stored object as it is.
pub fn may_serve_fresh(req: &impl RequestFields, route: &RouteCache) -> bool {
    route.enabled
        && matches!(req.method(), b"GET" | b"HEAD")
        && !bypassed_by_rule(req, route)
        && !NEEDS_FULL_PATH.iter().any(|h| req.has(h.as_str()))
        && req.wants_revalidation() == Some(false)
}

/// What the proxy's lookup found: the hit, if any, and the cache key it built on the way, which
/// pingora-cache's path reuses instead of building and hashing it again.
pub struct Lookup {
    pub hit: Option<FreshHit>,
    pub key: Option<CacheKey>,
}

/// The stored response for this request if it can be served as it is, now.
pub fn lookup(
    req: &RequestHeader,
    scheme: key::Scheme,
    host: &str,
    route: &RouteCache,
    store: &Store,
) -> Lookup {
    if !may_serve_fresh(req, route) {
        return Lookup {
            hit: None,
            key: None,
        };
    }
    let key = key::for_request(req, scheme, host, &route.key);
    let hit = store.fresh_hit(&key.primary_bin(), SystemTime::now());
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

/// Fields of a stored response meant for this cache alone (purge tags, the route's targeted
/// cache-control field): never sent to clients, whatever path answers.
pub fn for_this_cache_only(name: &[u8], targeted: &str) -> bool {
    name.eq_ignore_ascii_case(SURROGATE_KEY.as_bytes())
        || name.eq_ignore_ascii_case(CACHE_TAG.as_bytes())
        || name.eq_ignore_ascii_case(targeted.as_bytes())
}

/// Removes the fields meant for this cache alone from a response on its way to the client.
pub fn strip_cache_only_fields(resp: &mut ResponseHeader, targeted: &str) {
    resp.remove_header(targeted);
    resp.remove_header(SURROGATE_KEY);
    resp.remove_header(CACHE_TAG);
}

/// Fields of the stored header that a hit writes anew instead of repeating. `Date` is not one:
/// a hit is served with the Date the origin's response had (RFC 9111 section 4, with `Age`).
const WRITTEN_ANEW: [&str; 3] = ["age", "connection", "cache-status"];

/// The head of a fresh hit: the stored header, its Age (RFC 9111 section 4), Accept-Ranges for a
/// complete 200, Cache-Status, without the fields meant for this cache alone. Rendered for
/// Pingora's writer or as raw HTTP/1 bytes.
pub struct HitHead<'a> {
    pub hit: &'a FreshHit,
    /// The route's targeted cache-control field (`cache.targeted_field`).
    pub targeted: &'a str,
    /// This cache's name in `Cache-Status` (`cluster::Cluster::cache_name`).
    pub name: &'a str,
}

impl HitHead<'_> {
    /// The stored response's `Cache-Status` list (caches nearer the origin), then this hit.
    fn cache_status(&self) -> String {
        let upstream = self.hit.header.headers.get("cache-status");
        status::listed_after(
            upstream.and_then(|v| v.to_str().ok()),
            Outcome::Hit.header(self.name, Some(self.hit.fresh_until), None),
        )
    }

    /// For Pingora's writer, which adds Connection (and Date where there is none) and frames
    /// the body.
    pub fn response_header(&self) -> ResponseHeader {
        let mut h = ResponseHeader::clone(&self.hit.header);
        // An integer and a Cache-Status value always make valid header values.
        let _ = h.insert_header(header::AGE, self.hit.age.as_secs());
        h.set_version(http::Version::HTTP_11);
        if framing(&h) == Framing::Chunked {
            let _ = h.insert_header(header::TRANSFER_ENCODING, "chunked");
        }
        if accepts_ranges(&h) {
            let _ = h.insert_header(header::ACCEPT_RANGES, "bytes");
        }
        let _ = h.insert_header("cache-status", self.cache_status());
        strip_cache_only_fields(&mut h, self.targeted);
        h
    }

    /// Whether the raw renderer can send it (see [`framed_by_length`]).
    pub fn framed_by_length(&self) -> bool {
        framed_by_length(&self.hit.header, self.hit.body_len())
    }

    /// As HTTP/1.1 bytes: the stored fields (original case, Date included), then Age,
    /// Accept-Ranges, Cache-Status, Date if the stored header has none, and Connection
    /// (`keep`: keep-alive, else close).
    pub fn write_h1(&self, out: &mut BytesMut, keep: bool) {
        let h = &self.hit.header;
        let accept_ranges = accepts_ranges(h);
        out.put_slice(b"HTTP/1.1 ");
        out.put_slice(h.status.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(h.get_reason_phrase().unwrap_or("").as_bytes());
        out.put_slice(b"\r\n");
        let skip = |name: &[u8]| {
            WRITTEN_ANEW
                .iter()
                .any(|r| name.eq_ignore_ascii_case(r.as_bytes()))
                || for_this_cache_only(name, self.targeted)
                || (accept_ranges && name.eq_ignore_ascii_case(b"accept-ranges"))
        };
        let mut field = |name: &[u8], value: &[u8]| {
            if !skip(name) {
                out.put_slice(name);
                out.put_slice(b": ");
                out.put_slice(value);
                out.put_slice(b"\r\n");
            }
        };
        if h.has_case() {
            for (name, value) in h.case_header_iter() {
                field(name.as_slice(), value.as_bytes());
            }
        } else {
            for (name, value) in h.headers.iter() {
                field(name.as_str().as_bytes(), value.as_bytes());
            }
        }
        // Writing into a BytesMut cannot fail.
        let _ = write!(out, "age: {}\r\n", self.hit.age.as_secs());
        if accept_ranges {
            out.put_slice(b"accept-ranges: bytes\r\n");
        }
        out.put_slice(b"cache-status: ");
        out.put_slice(self.cache_status().as_bytes());
        if !h.headers.contains_key(header::DATE) {
            out.put_slice(b"\r\nDate: ");
            out.put_slice(date::get_cached_date().as_bytes());
        }
        out.put_slice(if keep {
            b"\r\nConnection: keep-alive\r\n\r\n".as_slice()
        } else {
            b"\r\nConnection: close\r\n\r\n".as_slice()
        });
    }
}

/// Whether the raw renderer can send a stored header with a body of `len` bytes: a status
/// without a body, or exactly one Content-Length that matches the body, and no
/// Transfer-Encoding (anything else is framed by Pingora's writer).
pub fn framed_by_length(h: &ResponseHeader, len: usize) -> bool {
    if h.headers.contains_key(header::TRANSFER_ENCODING) {
        return false;
    }
    match framing(h) {
        Framing::NoBody => true,
        Framing::Length(n) => {
            n == len as u64 && h.headers.get_all(header::CONTENT_LENGTH).iter().count() == 1
        }
        Framing::Chunked | Framing::BadLength => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;

    fn stored(status: u16, fields: &[(&str, &str)], body: &str) -> FreshHit {
        let mut h = ResponseHeader::build(status, None).unwrap();
        for (k, v) in fields {
            h.append_header(k.to_string(), *v).unwrap();
        }
        FreshHit {
            header: Arc::new(h),
            body: Arc::new(vec![Bytes::copy_from_slice(body.as_bytes())]),
            file: None,
            on_disk: None,
            age: Duration::from_secs(7),
            fresh_until: SystemTime::now() + Duration::from_secs(60),
        }
    }

    fn raw(bytes: &str) -> (String, Vec<(String, String)>) {
        let mut fields = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut fields);
        req.parse(bytes.as_bytes()).unwrap();
        let f = req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8(h.value.to_vec()).unwrap(),
                )
            })
            .collect();
        (req.method.unwrap().to_string(), f)
    }

    /// The rule gives the same answer for the lane's raw view and Pingora's parsed header,
    /// except that the lane never judges cache directives.
    #[test]
    fn one_rule_for_both_views() {
        let mut route = RouteCache::default();
        route.bypass.cookies = vec!["session".into()];
        route.bypass.headers = vec!["x-preview".into()];
        let cases = [
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", true, true),
            ("HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", true, true),
            ("POST / HTTP/1.1\r\nHost: a\r\n\r\n", false, false),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nRange: bytes=0-1\r\n\r\n",
                false,
                false,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nIf-None-Match: \"x\"\r\n\r\n",
                false,
                false,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: x\r\n\r\n",
                false,
                false,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nCookie: a=1; session=2\r\n\r\n",
                false,
                false,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nCookie: a=1; sessions=2\r\n\r\n",
                true,
                true,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nX-Preview: 1\r\n\r\n",
                false,
                false,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nCache-Control: no-cache\r\n\r\n",
                false,
                false,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nPragma: no-cache\r\n\r\n",
                false,
                false,
            ),
            // Directives that allow a fresh hit: the proxy answers, the lane hands over.
            (
                "GET / HTTP/1.1\r\nHost: a\r\nCache-Control: max-age=60\r\n\r\n",
                true,
                false,
            ),
        ];
        for (bytes, proxy, lane) in cases {
            let (method, fields) = raw(bytes);
            let mut parsed = RequestHeader::build(method.as_str(), b"/", None).unwrap();
            for (k, v) in &fields {
                parsed.append_header(k.clone(), v.as_str()).unwrap();
            }
            let headers: Vec<httparse::Header> = fields
                .iter()
                .map(|(k, v)| httparse::Header {
                    name: k,
                    value: v.as_bytes(),
                })
                .collect();
            let raw = RawRequest {
                method: &method,
                fields: &headers,
            };
            assert_eq!(may_serve_fresh(&parsed, &route), proxy, "proxy: {bytes:?}");
            assert_eq!(may_serve_fresh(&raw, &route), lane, "lane: {bytes:?}");
        }
        route.enabled = false;
        let parsed = RequestHeader::build("GET", b"/", None).unwrap();
        assert!(!may_serve_fresh(&parsed, &route));
    }

    /// Both renderers send the same fields: the stored ones less those for this cache alone,
    /// plus Age, Accept-Ranges and Cache-Status.
    #[test]
    fn two_renderers_one_head() {
        let hit = stored(
            200,
            &[
                ("Content-Type", "text/plain"),
                ("Content-Length", "5"),
                ("Surrogate-Key", "a b"),
                ("Cache-Tag", "a"),
                ("Edge-Cache-Control", "max-age=60"),
                ("Age", "100"),
                ("ETag", "\"e\""),
                ("Cache-Status", "shield-2; fwd=uri-miss; stored"),
            ],
            "hello",
        );
        let head = HitHead {
            hit: &hit,
            targeted: "edge-cache-control",
            name: "front-1",
        };
        let parsed = head.response_header();
        let mut out = BytesMut::new();
        head.write_h1(&mut out, true);
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut fields);
        let done = resp.parse(&out).unwrap();
        assert!(done.is_complete() && done.unwrap() == out.len());
        assert_eq!(resp.code, Some(200));
        let mut from_bytes: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8(h.value.to_vec()).unwrap(),
                )
            })
            .filter(|(n, _)| n != "date" && n != "connection")
            .collect();
        let mut from_pingora: Vec<(String, String)> = parsed
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        from_bytes.sort();
        from_pingora.sort();
        assert_eq!(from_bytes, from_pingora);
        let names: Vec<&str> = from_bytes.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "accept-ranges",
                "age",
                "cache-status",
                "content-length",
                "content-type",
                "etag"
            ]
        );
        assert!(
            from_bytes.contains(&("age".into(), "7".into())),
            "{from_bytes:?}"
        );
        let status = &from_bytes
            .iter()
            .find(|(n, _)| n == "cache-status")
            .unwrap()
            .1;
        assert!(
            status.starts_with("shield-2; fwd=uri-miss; stored, front-1; hit; ttl="),
            "the stored list, then this cache's entry: {status}"
        );
        assert!(head.framed_by_length());
    }

    /// A hit is served with the Date the origin's response had; one without gets the time of
    /// sending, once.
    #[test]
    fn a_hit_keeps_the_stored_date() {
        let sent = "Tue, 01 Dec 2026 10:00:00 GMT";
        let dates = |hit: &FreshHit| {
            let head = HitHead {
                hit,
                targeted: "x",
                name: "edge",
            };
            let mut out = BytesMut::new();
            head.write_h1(&mut out, true);
            let text = String::from_utf8(out.to_vec()).unwrap();
            let raw: Vec<String> = text
                .lines()
                .filter_map(|l| l.strip_prefix("Date: ").or(l.strip_prefix("date: ")))
                .map(str::to_string)
                .collect();
            let parsed = head.response_header();
            let parsed = parsed
                .headers
                .get("date")
                .map(|v| v.to_str().unwrap().to_string());
            (raw, parsed)
        };
        let with = stored(200, &[("Content-Length", "1"), ("Date", sent)], "a");
        assert_eq!(
            dates(&with),
            (vec![sent.to_string()], Some(sent.to_string()))
        );
        let without = stored(200, &[("Content-Length", "1")], "a");
        let (raw, parsed) = dates(&without);
        assert_eq!(raw.len(), 1, "{raw:?}");
        assert_ne!(raw[0], sent);
        assert_eq!(parsed, None, "Pingora's writer adds it");
    }

    #[test]
    fn framing_rules() {
        let h = |status, fields: &[(&str, &str)], body| stored(status, fields, body);
        let sendable = |hit: &FreshHit| {
            HitHead {
                hit,
                targeted: "x",
                name: "edge",
            }
            .framed_by_length()
        };
        assert!(sendable(&h(204, &[], "")));
        assert!(!sendable(&h(200, &[], "abc")), "no length: chunked");
        assert!(!sendable(&h(200, &[("Content-Length", "4")], "abc")));
        assert!(!sendable(&h(200, &[("Content-Length", "x")], "abc")));
        assert!(!sendable(&h(
            200,
            &[("Content-Length", "3"), ("Transfer-Encoding", "chunked")],
            "abc"
        )));
        assert!(!sendable(&h(
            200,
            &[("Content-Length", "3"), ("Content-Length", "3")],
            "abc"
        )));
        let chunked = h(200, &[], "abc");
        let head = HitHead {
            hit: &chunked,
            targeted: "x",
            name: "edge",
        }
        .response_header();
        assert_eq!(head.headers.get("transfer-encoding").unwrap(), "chunked");
        assert!(head.headers.get("accept-ranges").is_none());
    }
}
