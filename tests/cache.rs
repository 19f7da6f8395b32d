//! The HTTP cache against real origins on loopback: what is stored and for how long (RFC 9111,
//! CDN-Cache-Control), variants, revalidation, stale serving, and what an operator configures
//! per route. Hits are in `cache_hits.rs`, fills, coalescing, memory and purge in `cache_fill.rs`.

mod common;

use std::time::{Duration, Instant};

use common::cache::*;
use common::*;

#[test]
fn what_must_not_be_stored_is_not() {
    let o = Origin::start("o");
    o.set("/nostore", cc("no-store, max-age=60", "x"));
    o.set("/private", cc("private, max-age=60", "x"));
    o.set(
        "/cookie",
        Canned::new(
            200,
            &[("Cache-Control", "max-age=60"), ("Set-Cookie", "a=1")],
            "x",
        ),
    );
    o.set(
        "/vary-star",
        Canned::new(200, &[("Cache-Control", "max-age=60"), ("Vary", "*")], "x"),
    );
    o.set("/none", Canned::new(200, &[], "x"));
    o.set("/auth", cc("max-age=60", "x"));
    o.set("/auth-public", cc("public, max-age=60", "x"));
    let edge = edge_for(&o, "", "");
    for p in ["/nostore", "/private", "/cookie", "/vary-star", "/none"] {
        let r = edge.get("example.com", p);
        assert_eq!(status_of(&r), "edge; fwd=uri-miss; fwd-status=200", "{p}");
        // Remembered as uncacheable: the next one goes straight to the origin, without the
        // cache lock (hit-for-pass).
        let r = edge.get("example.com", p);
        assert_eq!(
            status_of(&r),
            "edge; fwd=uri-miss; fwd-status=200; detail=uncacheable",
            "{p}"
        );
        assert_eq!(o.count(p), 2, "{p} was served from cache");
    }
    for _ in 0..2 {
        edge.request("GET", "/auth", &["Authorization: Bearer x"]);
    }
    assert_eq!(
        o.count("/auth"),
        2,
        "a response to an authorized request was shared"
    );
    for _ in 0..2 {
        edge.request("GET", "/auth-public", &["Authorization: Bearer x"]);
    }
    assert_eq!(
        o.count("/auth-public"),
        1,
        "public allows sharing an authorized response"
    );
}

#[test]
fn cdn_cache_control_and_the_targeted_field_take_precedence() {
    let o = Origin::start("o");
    o.set(
        "/cdn",
        Canned::new(
            200,
            &[
                ("Cache-Control", "no-store"),
                ("CDN-Cache-Control", "max-age=60"),
            ],
            "x",
        ),
    );
    o.set(
        "/edge",
        Canned::new(
            200,
            &[
                ("CDN-Cache-Control", "no-store"),
                ("Edge-Cache-Control", "max-age=60"),
                ("Cache-Control", "max-age=5"),
            ],
            "x",
        ),
    );
    let edge = edge_for(&o, "", "");
    let first = edge.get("example.com", "/cdn");
    assert_eq!(
        first.header("cdn-cache-control"),
        Some("max-age=60"),
        "passed on for caches downstream"
    );
    edge.get("example.com", "/cdn");
    assert_eq!(
        o.count("/cdn"),
        1,
        "CDN-Cache-Control overrides Cache-Control: no-store"
    );
    let first = edge.get("example.com", "/edge");
    assert_eq!(
        first.header("edge-cache-control"),
        None,
        "our own field is not passed on"
    );
    assert_eq!(
        first.header("cache-control"),
        Some("max-age=5"),
        "Cache-Control is for the browser"
    );
    edge.get("example.com", "/edge");
    assert_eq!(o.count("/edge"), 1);
}

#[test]
fn vary_keeps_variants_side_by_side() {
    let o = Origin::start("o");
    o.set(
        "/v",
        Canned::new(
            200,
            &[("Cache-Control", "max-age=60"), ("Vary", "Accept-Language")],
            "v",
        ),
    );
    let edge = edge_for(&o, "", "");
    let fr = || edge.request("GET", "/v", &["Accept-Language: fr"]);
    let de = || edge.request("GET", "/v", &["Accept-Language: de"]);
    let first = fr();
    assert!(
        status_of(&first).contains("fwd=uri-miss"),
        "{}",
        status_of(&first)
    );
    assert!(
        status_of(&de()).contains("fwd=vary-miss"),
        "another variant: {}",
        status_of(&de())
    );
    assert!(status_of(&fr()).contains("hit"));
    assert!(status_of(&de()).contains("hit"));
    assert_eq!(o.count("/v"), 2);
    // Values that mean the same share a variant: case, order and spaces of Accept-Language.
    let fr_de = edge.request("GET", "/v", &["Accept-Language: fr-CH, de;q=0.5"]);
    assert!(status_of(&fr_de).contains("fwd=vary-miss"));
    let same = edge.request("GET", "/v", &["Accept-Language: de; q=0.5,fr-ch"]);
    assert!(
        status_of(&same).contains("hit"),
        "an equivalent Accept-Language missed: {}",
        status_of(&same)
    );
    assert_eq!(o.count("/v"), 3);
}

#[test]
fn stale_objects_revalidate_and_a_304_refreshes_stored_headers() {
    let o = Origin::start("o");
    // no-cache: stored, but every use is validated with the origin first.
    o.set(
        "/r",
        Canned::new(
            200,
            &[
                ("Cache-Control", "no-cache"),
                ("ETag", "\"v1\""),
                ("X-Rev", "1"),
            ],
            "body",
        ),
    );
    let edge = edge_for(&o, "", "");
    assert_eq!(edge.get("example.com", "/r").body, "body");
    o.set(
        "/r",
        Canned::new(
            200,
            &[
                ("Cache-Control", "no-cache"),
                ("ETag", "\"v1\""),
                ("X-Rev", "2"),
            ],
            "body",
        ),
    );
    let r = edge.get("example.com", "/r");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "body", "served from cache after the 304");
    assert!(
        status_of(&r).contains("fwd=stale; fwd-status=304"),
        "{}",
        status_of(&r)
    );
    assert_eq!(
        r.header("x-rev"),
        Some("2"),
        "the 304's headers update the stored ones"
    );
    let seen = o.requests();
    let last = seen.iter().rev().find(|s| s.path == "/r").unwrap();
    assert_eq!(
        last.header("if-none-match"),
        Some("\"v1\""),
        "a conditional request"
    );
}

#[test]
fn stale_while_revalidate_serves_at_once_and_refreshes_once_in_the_background() {
    let o = Origin::start("o");
    o.set("/s", cc("max-age=0, stale-while-revalidate=60", "v1"));
    let edge = edge_for(&o, "", "");
    assert_eq!(edge.get("example.com", "/s").body, "v1");
    // The refresh is slow; meanwhile every request gets the stale copy at once.
    let mut slow = cc("max-age=0, stale-while-revalidate=60", "v2");
    slow.delay = Duration::from_millis(800);
    o.set("/s", slow);
    let t = Instant::now();
    for _ in 0..5 {
        let r = edge.get("example.com", "/s");
        assert_eq!(r.body, "v1");
        assert!(status_of(&r).contains("hit; ttl=-"), "{}", status_of(&r));
    }
    assert!(
        t.elapsed() < Duration::from_millis(800),
        "stale answers waited for the refresh"
    );
    assert!(
        wait_until(Duration::from_secs(5), || o.count("/s") == 2),
        "no background refresh"
    );
    // Once: the five stale answers triggered one refresh.
    assert!(wait_until(Duration::from_secs(5), || edge
        .get("example.com", "/s")
        .body
        == "v2"));
    assert!(o.count("/s") <= 3, "{} refreshes", o.count("/s") - 1);
}

#[test]
fn stale_if_error_and_the_operator_setting() {
    let o = Origin::start("o");
    o.set("/e", cc("max-age=0, stale-if-error=60", "good"));
    o.set("/op", cc("max-age=0", "good"));
    let edge = edge_for(&o, ", cache: {stale_if_error: 60s}", "");
    edge.get("example.com", "/e");
    edge.get("example.com", "/op");
    o.set("/e", Canned::new(503, &[], "down"));
    o.set("/op", Canned::new(500, &[], "down"));
    let r = edge.get("example.com", "/e");
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "good"),
        "stale-if-error from the origin"
    );
    let r = edge.get("example.com", "/op");
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "good"),
        "the route's stale_if_error"
    );
    // Without either, the error goes through.
    o.set("/plain", cc("max-age=0, must-revalidate", "good"));
    edge.get("example.com", "/plain");
    o.set("/plain", Canned::new(500, &[], "down"));
    assert_eq!(
        edge.get("example.com", "/plain").status,
        500,
        "must-revalidate forbids stale"
    );
}

#[test]
fn route_settings_key_bypass_default_and_max_ttl() {
    let o = Origin::start("o");
    for p in [
        "/q?b=2&a=1",
        "/q?a=1&b=2",
        "/s?x=1",
        "/s?y=2",
        "/plain",
        "/capped",
        "/b",
    ] {
        let c = match p {
            "/plain" => Canned::new(200, &[], "plain"),
            "/capped" => cc("max-age=86400", "capped"),
            _ => cc("max-age=600", p),
        };
        o.set(p, c);
    }
    let edge = Edge::start(&format!(
        r#"
origins:
  web: {{servers: ["{}"]}}
routes:
  - {{path_prefix: /q, origin: web, cache: {{key: {{query: sort}}}}}}
  - {{path_prefix: /s, origin: web, cache: {{key: {{query: strip}}}}}}
  - {{path_prefix: /plain, origin: web, cache: {{default_ttl: 60s}}}}
  - {{path_prefix: /capped, origin: web, cache: {{max_ttl: 10s}}}}
  - {{path_prefix: /b, origin: web, cache: {{bypass: {{cookies: [session]}}}}}}
  - {{path_prefix: /off, origin: web, cache: {{enabled: false}}}}
"#,
        o.addr
    ));
    edge.get("example.com", "/q?b=2&a=1");
    assert!(
        status_of(&edge.get("example.com", "/q?a=1&b=2")).contains("hit"),
        "sorted query"
    );
    edge.get("example.com", "/s?x=1");
    let r = edge.get("example.com", "/s?y=2");
    assert!(status_of(&r).contains("hit"), "stripped query");
    assert_eq!(r.body, "/s?x=1");
    edge.get("example.com", "/plain");
    assert!(
        status_of(&edge.get("example.com", "/plain")).contains("hit"),
        "default_ttl"
    );
    let r = edge.get("example.com", "/capped");
    let ttl: i64 = status_of(&r)
        .rsplit("ttl=")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (8..=10).contains(&ttl),
        "max_ttl caps a day to 10s: {}",
        status_of(&r)
    );
    let r = edge.request("GET", "/b", &["Cookie: session=abc"]);
    assert_eq!(status_of(&r), "edge; fwd=bypass; fwd-status=200");
    edge.request("GET", "/b", &["Cookie: session=abc"]);
    assert_eq!(o.count("/b"), 2, "a session cookie bypasses the cache");
    edge.get("example.com", "/b");
    assert!(status_of(&edge.get("example.com", "/b")).contains("hit"));
    let r = edge.get("example.com", "/off");
    assert!(status_of(&r).contains("fwd=bypass"), "{}", status_of(&r));
}

#[test]
fn a_url_that_becomes_cacheable_is_cached_again() {
    let o = Origin::start("o");
    o.set("/flip", cc("no-store", "a"));
    let edge = edge_for(&o, "", "");
    edge.get("example.com", "/flip");
    assert!(status_of(&edge.get("example.com", "/flip")).contains("detail=uncacheable"));
    o.set("/flip", cc("max-age=60", "b"));
    // The bypassed request sees a cacheable response: the URL is off the list.
    edge.get("example.com", "/flip");
    let mut stored = false;
    for _ in 0..3 {
        let r = edge.get("example.com", "/flip");
        stored |= status_of(&r).contains("hit");
    }
    assert!(
        stored,
        "the URL stayed uncacheable after its responses became cacheable"
    );
}

/// A stored object whose refetch cannot be stored was still found in the cache, stale: its
/// Cache-Status says `fwd=stale` (RFC 9211), not a miss, and nothing says it was stored.
#[test]
fn a_stale_object_refetched_uncacheable_says_fwd_stale() {
    let o = Origin::start("o");
    o.set(
        "/u",
        Canned::new(
            200,
            &[("Cache-Control", "no-cache"), ("ETag", "\"v1\"")],
            "one",
        ),
    );
    let edge = edge_for(&o, "", "");
    assert_eq!(edge.get("example.com", "/u").body, "one");
    o.set("/u", cc("no-store", "two"));
    let r = edge.get("example.com", "/u");
    assert_eq!(r.body, "two");
    let s = status_of(&r);
    assert!(s.contains("fwd=stale; fwd-status=200"), "{s}");
    assert!(!s.contains("stored"), "{s}");
}

#[test]
fn rfc_corners_hop_by_hop_fields_cookies_and_unreadable_age() {
    let o = Origin::start("o");
    // Fields the origin names in Connection belong to its connection: never stored, never
    // passed on.
    o.set(
        "/traced",
        Canned::new(
            200,
            &[
                ("Cache-Control", "max-age=60"),
                ("Connection", "X-Trace"),
                ("X-Trace", "abc"),
            ],
            "t",
        ),
    );
    // A cookie-setting response, stored only with cache.store_set_cookie, and never with it.
    o.set(
        "/cookie",
        Canned::new(
            200,
            &[("Cache-Control", "max-age=60"), ("Set-Cookie", "lang=en")],
            "c",
        ),
    );
    // An Age that cannot be read: stored, but stale, so every use revalidates.
    o.set(
        "/aged",
        Canned::new(
            200,
            &[
                ("Cache-Control", "max-age=600"),
                ("Age", "old, 0"),
                ("ETag", "\"v1\""),
            ],
            "a",
        ),
    );
    let edge = edge_for(&o, "", "cache: {store_set_cookie: true}\n");

    for _ in 0..2 {
        let r = edge.get("example.com", "/traced");
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("x-trace"),
            None,
            "a hop-by-hop field was passed on"
        );
    }
    assert_eq!(o.count("/traced"), 1, "not stored");

    let first = edge.get("example.com", "/cookie");
    assert_eq!(first.header("set-cookie"), Some("lang=en"));
    let hit = edge.get("example.com", "/cookie");
    assert!(status_of(&hit).contains("hit"), "{}", status_of(&hit));
    assert_eq!(
        hit.header("set-cookie"),
        None,
        "a stored cookie was handed out"
    );
    assert_eq!(o.count("/cookie"), 1);

    for _ in 0..3 {
        assert_eq!(edge.get("example.com", "/aged").status, 200);
    }
    assert_eq!(
        o.count("/aged"),
        3,
        "an unreadable Age must not read as fresh"
    );
    let revalidations = o
        .requests()
        .iter()
        .filter(|s| s.path == "/aged" && s.header("if-none-match") == Some("\"v1\""))
        .count();
    assert_eq!(revalidations, 2, "stored, and revalidated on each use");
}

#[test]
fn only_if_cached_never_asks_the_origin_and_immutable_survives_a_reload() {
    let o = Origin::start("o");
    o.set("/page", cc("max-age=60", "p"));
    o.set("/asset", cc("max-age=60, immutable", "a"));
    o.set("/plain", cc("max-age=60", "b"));
    let edge = edge_for(&o, "", "");

    // only-if-cached: from the store or 504, the origin never asked.
    let r = edge.request("GET", "/page", &["Cache-Control: only-if-cached"]);
    assert_eq!(r.status, 504);
    assert_eq!(o.count("/page"), 0);
    assert_eq!(edge.get("example.com", "/page").status, 200);
    let r = edge.request("GET", "/page", &["Cache-Control: only-if-cached"]);
    assert_eq!(r.status, 200);
    assert!(status_of(&r).contains("hit"), "{}", status_of(&r));
    assert_eq!(o.count("/page"), 1);

    // A client's reload (no-cache) revalidates an ordinary fresh object, not an immutable one.
    for p in ["/asset", "/plain"] {
        edge.get("example.com", p);
        edge.request("GET", p, &["Cache-Control: no-cache"]);
    }
    assert_eq!(
        o.count("/asset"),
        1,
        "an immutable fresh object was revalidated"
    );
    assert_eq!(o.count("/plain"), 2, "no-cache did not revalidate");
}

#[test]
fn max_stale_and_min_fresh_bound_what_the_client_accepts() {
    let o = Origin::start("o");
    // Stored 40 s stale at once (Age 100 against max-age 60).
    o.set(
        "/old",
        Canned::new(
            200,
            &[
                ("Cache-Control", "max-age=60"),
                ("Age", "100"),
                ("ETag", "\"o\""),
            ],
            "o",
        ),
    );
    o.set("/fresh", cc("max-age=60", "f"));
    let edge = edge_for(&o, "", "");
    edge.get("example.com", "/old");
    assert_eq!(o.count("/old"), 1);
    let r = edge.request("GET", "/old", &["Cache-Control: max-stale=60"]);
    assert_eq!(r.status, 200);
    assert_eq!(o.count("/old"), 1, "40 s stale is within max-stale=60");
    edge.request("GET", "/old", &["Cache-Control: max-stale=10"]);
    assert_eq!(o.count("/old"), 2, "40 s stale is beyond max-stale=10");

    edge.get("example.com", "/fresh");
    edge.request("GET", "/fresh", &["Cache-Control: min-fresh=10"]);
    assert_eq!(
        o.count("/fresh"),
        1,
        "fresh for 60 s more is enough for min-fresh=10"
    );
    edge.request("GET", "/fresh", &["Cache-Control: min-fresh=120"]);
    assert_eq!(
        o.count("/fresh"),
        2,
        "min-fresh=120 asks for more than it has"
    );
}

/// A stored object that may not be served stale (`must-revalidate`), whose refresh finds the
/// origin hanging up without an answer: the client gets a `502`, a proper response, never a
/// dropped connection, and never the stale object.
#[test]
fn a_forbidden_stale_refresh_that_the_origin_hangs_up_is_a_502() {
    let o = Origin::start("o");
    // Stored already stale (Age beyond max-age), so every use must revalidate.
    o.set(
        "/strict",
        Canned::new(
            200,
            &[
                ("Cache-Control", "max-age=10, must-revalidate"),
                ("Age", "100"),
                ("ETag", "\"s1\""),
            ],
            "strict",
        ),
    );
    let edge = edge_for(&o, "", "");
    assert_eq!(edge.get("example.com", "/strict").body, "strict");
    let mut c = edge.client();
    let revalidated = c.get("example.com", "/strict");
    assert_eq!(revalidated.status, 200, "a 304 refresh");
    assert_eq!(o.count("/strict"), 2);
    o.set(
        "/strict",
        Canned {
            hang_up: true,
            ..Canned::default()
        },
    );
    let r = c.get("example.com", "/strict");
    assert_eq!(r.status, 502, "{r:?}");
    assert_ne!(r.body, "strict", "the stale object is not served");
    assert_eq!(
        edge.get("example.com", "/strict").status,
        502,
        "and again on a new connection"
    );
}
