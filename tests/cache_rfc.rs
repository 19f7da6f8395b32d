//! RFC 9111 and 9213 corners end to end, each against a real origin that counts what it is
//! asked: lifetimes from `Expires` that are over before they start, an invalid
//! `CDN-Cache-Control` ignored as a whole, a stale `immutable` object revalidated, and
//! `Accept-Encoding` values that mean the same sharing a variant. Each also has a unit test next
//! to its code (`cache::policy`, `cache::sf`, `cache::request`, `cache::vary`); these show the
//! edge as a client sees it. The other corners are in `cache.rs`.

mod common;

use std::time::{Duration, SystemTime};

use common::cache::*;
use common::*;

fn http_date(offset_secs: i64) -> String {
    let now = SystemTime::now();
    let at = if offset_secs >= 0 {
        now + Duration::from_secs(offset_secs as u64)
    } else {
        now - Duration::from_secs(offset_secs.unsigned_abs())
    };
    httpdate::fmt_http_date(at)
}

/// Requests with `If-None-Match` for `path`: revalidations of a stored object.
fn revalidations(o: &Origin, path: &str) -> usize {
    let asked = o.requests();
    asked
        .iter()
        .filter(|s| s.path == path && s.header("if-none-match").is_some())
        .count()
}

#[test]
fn an_expires_at_or_before_date_or_an_age_beyond_it_is_stale() {
    let o = Origin::start("o");
    let dated = |expires: i64, age: Option<&str>| {
        let date = http_date(0);
        let expires = http_date(expires);
        let mut fields = vec![
            ("Date", date.as_str()),
            ("Expires", expires.as_str()),
            ("ETag", "\"e\""),
        ];
        fields.extend(age.map(|a| ("Age", a)));
        // Canned keeps its own copies of the fields.
        Canned::new(200, &fields, "x")
    };
    o.set("/at-date", dated(0, None));
    o.set("/before-date", dated(-60, None));
    o.set("/aged-past", dated(60, Some("120")));
    o.set("/fresh", dated(600, None));
    let edge = edge_for(&o, "", "");

    for path in ["/at-date", "/before-date", "/aged-past", "/fresh"] {
        for _ in 0..3 {
            assert_eq!(edge.get("example.com", path).status, 200, "{path}");
        }
    }
    for path in ["/at-date", "/before-date", "/aged-past"] {
        assert_eq!(o.count(path), 3, "{path} was served as fresh");
        assert_eq!(
            revalidations(&o, path),
            2,
            "{path}: stored, revalidated on use"
        );
    }
    assert_eq!(o.count("/fresh"), 1, "an Expires 600 s after Date is fresh");
}

#[test]
fn an_invalid_cdn_cache_control_is_ignored_as_a_whole() {
    let o = Origin::start("o");
    let with = |targeted: &str| {
        Canned::new(
            200,
            &[
                ("Cache-Control", "max-age=60"),
                ("CDN-Cache-Control", targeted),
            ],
            "x",
        )
    };
    // Each invalid field holds a valid `no-store`: honoured in part, it would keep the
    // response out of the cache.
    o.set("/string-age", with("no-store, max-age=\"60\""));
    o.set("/flag-with-value", with("no-store=1"));
    o.set("/trailing-comma", with("no-store,"));
    // The same directive in a valid field is obeyed.
    o.set("/valid", with("no-store"));
    let edge = edge_for(&o, "", "");

    for path in [
        "/string-age",
        "/flag-with-value",
        "/trailing-comma",
        "/valid",
    ] {
        for _ in 0..2 {
            assert_eq!(edge.get("example.com", path).status, 200, "{path}");
        }
    }
    for path in ["/string-age", "/flag-with-value", "/trailing-comma"] {
        assert_eq!(
            o.count(path),
            1,
            "{path}: Cache-Control's max-age=60 applies"
        );
    }
    assert_eq!(o.count("/valid"), 2, "a valid CDN-Cache-Control: no-store");
}

#[test]
fn a_stale_immutable_object_is_revalidated() {
    let o = Origin::start("o");
    // Stored 40 s stale at once (Age 100 against max-age 60).
    o.set(
        "/imm",
        Canned::new(
            200,
            &[
                ("Cache-Control", "max-age=60, immutable"),
                ("Age", "100"),
                ("ETag", "\"i\""),
            ],
            "i",
        ),
    );
    let edge = edge_for(&o, "", "");
    for _ in 0..3 {
        assert_eq!(edge.get("example.com", "/imm").body, "i");
    }
    assert_eq!(
        o.count("/imm"),
        3,
        "immutable does not make a stale object fresh"
    );
    assert_eq!(revalidations(&o, "/imm"), 2);
}

#[test]
fn accept_encoding_values_that_mean_the_same_share_a_variant() {
    let o = Origin::start("o");
    o.set(
        "/v",
        Canned::new(
            200,
            &[("Cache-Control", "max-age=60"), ("Vary", "Accept-Encoding")],
            "v",
        ),
    );
    let edge = edge_for(&o, "", "");
    let with = |ae: &str| edge.request("GET", "/v", &[&format!("Accept-Encoding: {ae}")]);
    let first = with("gzip, br");
    assert!(status_of(&first).contains("miss"), "{}", status_of(&first));
    for same in ["br, gzip", "BR,GZIP", " gzip ,br"] {
        let r = with(same);
        assert!(
            status_of(&r).contains("hit"),
            "Accept-Encoding: {same:?} missed: {}",
            status_of(&r)
        );
    }
    let other = with("identity");
    assert!(
        status_of(&other).contains("fwd=vary-miss"),
        "{}",
        status_of(&other)
    );
    assert_eq!(o.count("/v"), 2);
}
