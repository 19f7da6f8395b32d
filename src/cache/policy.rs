//! What the cache may store, and for how long (RFC 9111, RFC 9213, RFC 5861).
//!
//! Freshness comes from, in order: the configured targeted field (e.g. `Edge-Cache-Control`),
//! `CDN-Cache-Control`, `Cache-Control` (`s-maxage`, then `max-age`), `Expires`; then the
//! route's `default_ttl`; then heuristic freshness (10% of the time since `Last-Modified`, at
//! most a day) for statuses that allow it. The first of the three fields present is the only one
//! read for this cache. `max_ttl` caps the result; an upstream `Age` is subtracted.

use std::time::{Duration, SystemTime};

use pingora::cache::cache_control::{CacheControl, Cacheable, InterpretCacheControl};
use pingora::cache::filters::{calculate_expires_header_time, calculate_serve_stale_durations};
use pingora::cache::{CacheMeta, CacheMetaDefaults, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};

use crate::config::{CacheSettings, RouteCache};

/// Statuses that may be cached without explicit freshness (RFC 9110 section 15.1).
const HEURISTIC_STATUSES: &[u16] = &[200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];
const HEURISTIC_MAX: Duration = Duration::from_secs(86_400);

/// Why a request does not use the cache at all, or None if it does.
pub fn bypass_reason(req: &RequestHeader, route: &RouteCache) -> Option<&'static str> {
    if !route.enabled {
        return Some("disabled");
    }
    if !matches!(req.method, http::Method::GET | http::Method::HEAD) {
        return Some("method");
    }
    let rule = super::hit::bypassed_by_rule(req, route);
    if rule {
        return Some("rule");
    }
    None
}

/// Whether a stored response carries the cache directive `name` in any field this cache reads
/// (its targeted field, `CDN-Cache-Control`, `Cache-Control`).
pub(super) fn stored_says(stored: &http::HeaderMap, settings: &CacheSettings, name: &str) -> bool {
    [
        settings.targeted_field.as_str(),
        "cdn-cache-control",
        "cache-control",
    ]
    .iter()
    .any(|f| {
        stored
            .get_all(*f)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|d| {
                let d = d.split(['=', ';']).next().unwrap_or("").trim();
                d.eq_ignore_ascii_case(name)
            })
    })
}

/// The caching directives this cache obeys for a response: the first valid one of its
/// targeted field, `CDN-Cache-Control`, and `Cache-Control`. A targeted field that is not a
/// valid Structured Field Dictionary, or gives a directive a value of the wrong type, is
/// ignored as a whole (RFC 9213 §2.1), as if it were absent.
fn directives(resp: &ResponseHeader, settings: &CacheSettings) -> Option<CacheControl> {
    let targeted = |name: &str| {
        let values: Vec<&str> = resp
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("\u{0}"))
            .collect();
        if values.is_empty() || !super::sf::valid_cache_dictionary(&values.join(", ")) {
            return None;
        }
        super::directives::parse(&resp.headers, name)
    };
    targeted(&settings.targeted_field)
        .or_else(|| targeted("cdn-cache-control"))
        .or_else(|| super::directives::parse(&resp.headers, "cache-control"))
}

/// An upstream `Age` (RFC 9111 §5.1): `Ok(None)` when absent, `Ok(Some(secs))` for one valid
/// delta-seconds, `Err(())` when it is invalid: not digits, a list (`old, 0`), or several
/// fields. An invalid `Age` means the response is treated as stale (RFC 9111 §4.2.3): it is
/// stored, and revalidated before it is served.
fn upstream_age(resp: &ResponseHeader) -> Result<Option<u64>, ()> {
    let mut fields = resp.headers.get_all(http::header::AGE).iter();
    let Some(v) = fields.next() else {
        return Ok(None);
    };
    if fields.next().is_some() {
        return Err(());
    }
    let v = v.to_str().map_err(|_| ())?.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(());
    }
    // Too large to represent: the largest value it can be (RFC 9111 §1.2.2).
    Ok(Some(v.parse().unwrap_or(u64::from(u32::MAX))))
}

fn header_date(resp: &ResponseHeader, name: &str) -> Option<SystemTime> {
    let v = resp.headers.get(name)?.to_str().ok()?;
    httpdate::parse_http_date(v).ok()
}

/// Updates a stored response header with the fields of a 304, except those that describe the
/// 304 message itself rather than the stored representation.
pub fn apply_not_modified(stored: &mut ResponseHeader, fields: &http::HeaderMap) {
    const KEEP: &[&str] = &[
        "content-length",
        "transfer-encoding",
        "content-encoding",
        "content-range",
        "connection",
        "keep-alive",
    ];
    for name in fields.keys() {
        if KEEP.contains(&name.as_str()) {
            continue;
        }
        let _ = stored.remove_header(name);
        for v in fields.get_all(name) {
            let _ = stored.append_header(name.clone(), v.clone());
        }
    }
}

/// Why a response may not be stored whatever its lifetime, if it may not.
fn refusal(
    resp: &ResponseHeader,
    authorization: bool,
    cc: Option<&CacheControl>,
    settings: &CacheSettings,
) -> Option<NoCacheReason> {
    let vary_star = resp
        .headers
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|f| f.trim() == "*"));
    if vary_star {
        return Some(NoCacheReason::Custom("vary: *"));
    }
    // Like Varnish: a response that sets a cookie is someone's, not everyone's. Unless the
    // operator says the origin's cookies are not personal (`cache.store_set_cookie`).
    if resp.headers.contains_key(http::header::SET_COOKIE) && !settings.store_set_cookie {
        return Some(NoCacheReason::Custom("set-cookie"));
    }
    if authorization && !cc.is_some_and(|c| c.allow_caching_authorized_req()) {
        return Some(NoCacheReason::Custom("authorization"));
    }
    if cc.is_some_and(|c| c.is_cacheable() == Cacheable::No) {
        return Some(NoCacheReason::OriginNotCache);
    }
    None
}

/// When the response stops being fresh: from the fields this cache reads, else `Expires`,
/// else the route's `default_ttl`, else heuristically (statuses that allow it). None: it has
/// no lifetime and is not stored.
fn lifetime_end(
    resp: &ResponseHeader,
    cc: Option<&CacheControl>,
    route: &RouteCache,
    now: SystemTime,
    created: SystemTime,
) -> Option<SystemTime> {
    let explicit = cc
        .and_then(|c| c.fresh_duration())
        .map(|ttl| created + ttl)
        .or_else(|| {
            // Expires is only relevant when no field this cache reads gave a lifetime
            // (RFC 9111 §5.3): the lifetime is Expires − Date (the origin's clock, not ours),
            // counted like max-age from the response's creation (an upstream Age counts
            // against it). An Expires at or before Date, or one that is not a valid date
            // ("0"), means already expired.
            resp.headers.get(http::header::EXPIRES)?;
            let Some(expires) = calculate_expires_header_time(resp) else {
                return Some(created);
            };
            Some(match header_date(resp, "date") {
                Some(date) => created + expires.duration_since(date).unwrap_or_default(),
                None => expires,
            })
        });
    let heuristic_ok =
        HEURISTIC_STATUSES.contains(&resp.status.as_u16()) && !cc.is_some_and(|c| c.no_cache());
    explicit.or_else(|| {
        if !heuristic_ok {
            return None;
        }
        if !route.default_ttl.get().is_zero() {
            return Some(now + route.default_ttl.get());
        }
        let last_modified = header_date(resp, "last-modified")?;
        let date = header_date(resp, "date").unwrap_or(now);
        let since = date.duration_since(last_modified).ok()?;
        Some(now + (since / 10).min(HEURISTIC_MAX))
    })
}

/// Decides whether a response is stored, and builds its metadata if so.
pub fn response_cacheable(
    resp: &ResponseHeader,
    authorization: bool,
    route: &RouteCache,
    settings: &CacheSettings,
) -> RespCacheable {
    let cc = directives(resp, settings);
    if let Some(reason) = refusal(resp, authorization, cc.as_ref(), settings) {
        return RespCacheable::Uncacheable(reason);
    }
    let now = SystemTime::now();
    // An upstream Age is time the response already spent in caches before us: the object is
    // that much older than our copy (it counts in the Age we send and against its lifetime).
    let age = upstream_age(resp);
    let upstream_age = Duration::from_secs(age.unwrap_or_default().unwrap_or(0));
    let created = now.checked_sub(upstream_age).unwrap_or(now);
    let fresh_until = lifetime_end(resp, cc.as_ref(), route, now, created);
    let Some(mut fresh_until) = fresh_until else {
        return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
    };
    let cap = route.max_ttl.get();
    if !cap.is_zero() && fresh_until > now + cap {
        fresh_until = now + cap;
    }
    // A zero lifetime must read as already stale (revalidate on every use), not "fresh now";
    // so must a response whose Age cannot be read.
    // (An object stale already keeps its deadline: how stale it is counts for max-stale and the
    // stale-while-revalidate and stale-if-error windows.)
    if fresh_until <= now || age.is_err() {
        fresh_until = fresh_until.min(now - Duration::from_secs(1));
    }
    let defaults = CacheMetaDefaults::new(|_| None, 0, route.stale_if_error.get().as_secs() as u32);
    let (swr, sie) = calculate_serve_stale_durations(cc.as_ref(), &defaults);
    let mut stored = resp.clone();
    if let Some(c) = &cc {
        c.strip_private_headers(&mut stored);
    }
    // Stored, with store_set_cookie, but the cookie itself goes only to the client whose
    // request filled the cache, never to the ones served from it.
    stored.remove_header(&http::header::SET_COOKIE);
    RespCacheable::Cacheable(CacheMeta::new(fresh_until, created, swr, sie, stored))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn ttl(r: &ResponseHeader, route: &RouteCache) -> Option<i64> {
        match response_cacheable(r, false, route, &CacheSettings::default()) {
            RespCacheable::Cacheable(m) => {
                Some(match m.fresh_until().duration_since(SystemTime::now()) {
                    Ok(d) => d.as_secs_f64().round() as i64,
                    Err(_) => -1,
                })
            }
            RespCacheable::Uncacheable(_) => None,
        }
    }

    #[test]
    fn freshness_sources_in_order() {
        let route = RouteCache::default();
        assert_eq!(
            ttl(&resp(200, &[("cache-control", "max-age=60")]), &route),
            Some(60)
        );
        assert_eq!(
            ttl(
                &resp(200, &[("cache-control", "max-age=60, s-maxage=120")]),
                &route
            ),
            Some(120)
        );
        assert_eq!(
            ttl(
                &resp(
                    200,
                    &[
                        ("cache-control", "max-age=60"),
                        ("cdn-cache-control", "max-age=300")
                    ]
                ),
                &route
            ),
            Some(300),
            "CDN-Cache-Control wins for this cache"
        );
        assert_eq!(
            ttl(
                &resp(
                    200,
                    &[
                        ("cdn-cache-control", "max-age=300"),
                        ("edge-cache-control", "max-age=30")
                    ]
                ),
                &route
            ),
            Some(30),
            "the targeted field wins over CDN-Cache-Control"
        );
        assert_eq!(
            ttl(
                &resp(
                    200,
                    &[
                        ("cache-control", "private"),
                        ("cdn-cache-control", "max-age=300")
                    ]
                ),
                &route
            ),
            Some(300),
            "Cache-Control is not read when a targeted field is present"
        );
        assert_eq!(
            ttl(
                &resp(200, &[("cache-control", "max-age=60"), ("age", "50")]),
                &route
            ),
            Some(10)
        );
        assert_eq!(
            ttl(&resp(200, &[]), &route),
            None,
            "no freshness, no default: not stored"
        );
    }

    #[test]
    fn refusals() {
        let route = RouteCache::default();
        for h in [
            ("cache-control", "no-store"),
            ("cache-control", "private"),
            ("vary", "*"),
            ("set-cookie", "a=1"),
        ] {
            let mut headers = vec![("cache-control", "max-age=60")];
            if h.0 == "cache-control" {
                headers.clear();
            }
            headers.push(h);
            assert_eq!(ttl(&resp(200, &headers), &route), None, "{h:?}");
        }
        let r = resp(200, &[("cache-control", "max-age=60")]);
        let settings = CacheSettings::default();
        assert!(matches!(
            response_cacheable(&r, true, &route, &settings),
            RespCacheable::Uncacheable(_)
        ));
        let r = resp(200, &[("cache-control", "s-maxage=60")]);
        assert!(matches!(
            response_cacheable(&r, true, &route, &settings),
            RespCacheable::Cacheable(_)
        ));
    }

    #[test]
    fn an_invalid_targeted_field_is_ignored_as_a_whole() {
        let route = RouteCache::default();
        for bad in [
            "max-age=\"300\"",
            "max-age=300s",
            "max-age=300, no-store=1",
            "max-age=300,",
        ] {
            let r = resp(
                200,
                &[("cache-control", "max-age=60"), ("cdn-cache-control", bad)],
            );
            assert_eq!(ttl(&r, &route), Some(60), "CDN-Cache-Control: {bad}");
        }
        let r = resp(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("cdn-cache-control", "max-age=300"),
            ],
        );
        assert_eq!(ttl(&r, &route), Some(300));
    }

    #[test]
    fn set_cookie_responses_are_stored_only_when_allowed_and_never_with_the_cookie() {
        let route = RouteCache::default();
        let r = resp(
            200,
            &[("cache-control", "max-age=60"), ("set-cookie", "a=1")],
        );
        let allow = CacheSettings {
            store_set_cookie: true,
            ..CacheSettings::default()
        };
        match response_cacheable(&r, false, &route, &allow) {
            RespCacheable::Cacheable(m) => {
                assert!(m.response_header().headers.get("set-cookie").is_none())
            }
            RespCacheable::Uncacheable(why) => panic!("not stored: {why:?}"),
        }
    }

    #[test]
    fn age_and_expires_corners_read_as_stale() {
        let route = RouteCache::default();
        let date = httpdate::fmt_http_date(SystemTime::now());
        let in_100s = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(100));
        let ago_100s = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(100));
        // An Age that cannot be read: stored, and stale at once.
        for age in ["old, 0", "5, 7", "-3", "1.5", ""] {
            let r = resp(200, &[("cache-control", "max-age=600"), ("age", age)]);
            assert_eq!(ttl(&r, &route), Some(-1), "Age: {age:?}");
        }
        let two = resp(
            200,
            &[("cache-control", "max-age=600"), ("age", "1"), ("age", "2")],
        );
        assert_eq!(ttl(&two, &route), Some(-1), "two Age fields");
        // A valid Age counts against the lifetime, from Expires as from max-age.
        let r = resp(
            200,
            &[
                ("date", date.as_str()),
                ("expires", in_100s.as_str()),
                ("age", "30"),
            ],
        );
        assert_eq!(ttl(&r, &route), Some(70));
        let r = resp(
            200,
            &[
                ("date", date.as_str()),
                ("expires", in_100s.as_str()),
                ("age", "150"),
            ],
        );
        assert_eq!(ttl(&r, &route), Some(-1), "Age beyond Expires - Date");
        // Expires at or before Date, or not a date: already expired.
        let r = resp(
            200,
            &[("date", date.as_str()), ("expires", ago_100s.as_str())],
        );
        assert_eq!(ttl(&r, &route), Some(-1));
        let r = resp(200, &[("date", date.as_str()), ("expires", date.as_str())]);
        assert_eq!(ttl(&r, &route), Some(-1));
        let r = resp(200, &[("date", date.as_str()), ("expires", "0")]);
        assert_eq!(ttl(&r, &route), Some(-1), "Expires: 0");
    }

    #[test]
    fn no_cache_is_stored_but_always_stale() {
        let route = RouteCache::default();
        assert_eq!(
            ttl(&resp(200, &[("cache-control", "no-cache")]), &route),
            Some(-1)
        );
    }

    #[test]
    fn defaults_heuristics_and_caps() {
        let route = RouteCache {
            default_ttl: Dur::secs(30),
            max_ttl: Dur::secs(100),
            ..Default::default()
        };
        assert_eq!(ttl(&resp(200, &[]), &route), Some(30));
        assert_eq!(
            ttl(&resp(500, &[]), &route),
            None,
            "500 is not heuristically cacheable"
        );
        assert_eq!(
            ttl(&resp(200, &[("cache-control", "max-age=1000")]), &route),
            Some(100)
        );
        let plain = RouteCache::default();
        let now = SystemTime::now();
        let lm = httpdate::fmt_http_date(now - Duration::from_secs(1000));
        let date = httpdate::fmt_http_date(now);
        assert_eq!(
            ttl(
                &resp(200, &[("last-modified", &lm), ("date", date.as_str())]),
                &plain
            ),
            Some(100),
            "10% of the time since Last-Modified"
        );
    }
}
