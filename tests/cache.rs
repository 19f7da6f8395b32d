//! The HTTP cache against real origins on loopback: RFC 9111 semantics, coalescing, eviction,
//! purge, and what an operator configures per route.

mod common;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

fn edge_config(o: &Origin, route_extra: &str, top: &str) -> String {
    format!(
        "{top}origins:\n  web: {{servers: [\"{}\"]}}\nroutes:\n  - {{origin: web{route_extra}}}\n",
        o.addr
    )
}

fn edge_for(o: &Origin, route_extra: &str, top: &str) -> Edge {
    Edge::start(&edge_config(o, route_extra, top))
}

fn cc(value: &str, body: &str) -> Canned {
    Canned::new(200, &[("Cache-Control", value)], body)
}

fn status_of(r: &Response) -> &str {
    r.header("cache-status").unwrap_or("-")
}

#[test]
fn a_fresh_object_is_served_from_cache_with_age_and_cache_status() {
    let o = Origin::start("o");
    o.set("/a", cc("max-age=60", "hello"));
    let edge = edge_for(&o, "", "");
    let r = edge.get("example.com", "/a");
    assert_eq!(r.body, "hello");
    assert!(
        status_of(&r).starts_with("edge; fwd=uri-miss; fwd-status=200; stored; ttl="),
        "{}",
        status_of(&r)
    );
    let r = edge.get("example.com", "/a");
    assert_eq!(r.body, "hello");
    assert!(
        status_of(&r).starts_with("edge; hit; ttl="),
        "{}",
        status_of(&r)
    );
    assert!(r.header("age").is_some(), "a hit carries Age");
    assert_eq!(o.count("/a"), 1);
    assert_eq!(edge.metric("edge_cache_objects"), 1.0);
    // Counted when the request is logged, just after the client has its response.
    let hits =
        "edge_requests_total{cache=\"hit\",origin=\"web\",route=\"routes[0]\",status=\"2xx\"}";
    assert!(wait_until(Duration::from_secs(5), || edge.metric(hits) == 1.0));
}

/// Plain GETs and HEADs of fresh objects are answered straight from the store; conditional
/// and range requests take pingora-cache's hit path. Clients must not be able to tell them apart.
#[test]
fn both_hit_paths_answer_alike() {
    let o = Origin::start("o");
    let with_length = Canned::new(
        200,
        &[
            ("Cache-Control", "max-age=60"),
            ("ETag", "\"v1\""),
            ("Surrogate-Key", "t1"),
        ],
        &"x".repeat(3000),
    );
    o.set("/length", with_length);
    // No Content-Length: stored from a chunked response, several chunks.
    let mut chunked = cc("max-age=60", &"y".repeat(50_000));
    chunked.chunks = 5;
    o.set("/chunked", chunked);
    let edge = edge_for(&o, "", "");
    let mut c = Client::connect(edge.addr);
    let comparable = |r: &Response| {
        let mut h = r.headers.clone();
        h.remove("age");
        h.remove("cache-status");
        h
    };
    for p in ["/length", "/chunked"] {
        let miss = c.get("example.com", p);
        assert!(status_of(&miss).contains("stored"), "{}", status_of(&miss));
        // Three paths: the express lane (plain, head: /length only, it has a Content-Length),
        // the proxy's fresh-hit path (a field the lane leaves to the proxy), pingora-cache's hit
        // path (a condition that does not match).
        let plain = c.get("example.com", p);
        let in_proxy = c.request("GET", "example.com", p, &["Pragma: x-trace"]);
        let conditional = c.request("GET", "example.com", p, &["If-None-Match: \"other\""]);
        let head = c.request("HEAD", "example.com", p, &[]);
        for r in [&plain, &in_proxy, &conditional, &head] {
            assert_eq!(r.status, 200, "{p}");
            assert!(
                status_of(r).starts_with("edge; hit; ttl="),
                "{p}: {}",
                status_of(r)
            );
            assert!(r.header("age").is_some(), "{p}: a hit carries Age");
            assert_eq!(
                r.header("surrogate-key"),
                None,
                "{p}: meant for the cache alone"
            );
        }
        assert_eq!(plain.body, miss.body, "{p}");
        assert_eq!(in_proxy.body, miss.body, "{p}");
        assert_eq!(conditional.body, miss.body, "{p}");
        assert_eq!(head.body, "", "{p}");
        assert_eq!(comparable(&plain), comparable(&in_proxy), "{p}");
        assert_eq!(comparable(&plain), comparable(&conditional), "{p}");
        assert_eq!(comparable(&plain), comparable(&head), "{p}");
        assert_eq!(o.count(p), 1, "{p}: one origin request");
    }
    // Every path counts hits the same way, and keeps the connection.
    let hits =
        "edge_requests_total{cache=\"hit\",origin=\"web\",route=\"routes[0]\",status=\"2xx\"}";
    assert!(wait_until(Duration::from_secs(5), || edge.metric(hits) == 8.0));
    assert_eq!(edge.metric("edge_express_hits_total"), 2.0);
    assert_eq!(o.accepted(), 1);
}

/// The express lane answers plain requests for fresh objects and hands everything else to the
/// proxy, which answers it as before (refusals included); it keeps the client keep-alive
/// limits.
#[test]
fn the_express_lane_takes_only_plain_requests() {
    let o = Origin::start("o");
    o.set(
        "/e",
        Canned::new(
            200,
            &[("Cache-Control", "max-age=60"), ("ETag", "\"e1\"")],
            "express",
        ),
    );
    let edge = edge_for(&o, "", "client: {keepalive_requests: 4}\n");
    assert_eq!(edge.get("example.com", "/e").body, "express");
    let express = || edge.metric("edge_express_hits_total");
    let mut c = edge.client();
    let cases: [(&str, u16, bool); 14] = [
        ("GET /e HTTP/1.1\r\nHost: example.com\r\n\r\n", 200, true),
        ("GET /e HTTP/1.1\r\nHost: EXAMPLE.com:80\r\nConnection: keep-alive\r\nCookie: a=1\r\n\r\n", 200, true),
        ("GET /e HTTP/1.1\r\nHost: example.com\r\nRange: bytes=0-1\r\n\r\n", 206, false),
        ("GET /e HTTP/1.1\r\nHost: example.com\r\nIf-None-Match: \"e1\"\r\n\r\n", 304, false),
        ("GET /e HTTP/1.1\r\nHost: example.com\r\nAuthorization: Basic eDp5\r\n\r\n", 200, false),
        ("GET /e HTTP/1.1\r\nHost: example.com\r\nCache-Control: max-age=3600\r\n\r\n", 200, false),
        ("GET /e HTTP/1.0\r\nHost: example.com\r\nConnection: keep-alive\r\n\r\n", 200, false),
        ("GET /e?x=%7Cy HTTP/1.1\r\nHost: example.com\r\n\r\n", 200, false),
        ("GET /x/../e HTTP/1.1\r\nHost: example.com\r\n\r\n", 400, false),
        ("GET /x/%2e%2e/e HTTP/1.1\r\nHost: example.com\r\n\r\n", 400, false),
        ("GET /e HTTP/1.1\r\nHost: example.com\r\nHost: example.com\r\n\r\n", 400, false),
        ("GET /e HTTP/1.1\r\nHost: bad_host!\r\n\r\n", 400, false),
        ("GET /e HTTP/1.1\r\n\r\n", 400, false),
        ("POST /e HTTP/1.1\r\nHost: example.com\r\nContent-Length: 0\r\n\r\n", 200, false),
    ];
    for (raw, status, on_lane) in cases {
        let before = express();
        let r = c.send_raw(raw).unwrap_or_else(|| {
            // Refusals close the connection: the next case gets a new one.
            panic!("no response to {raw:?}")
        });
        assert_eq!(r.status, status, "{raw:?}");
        assert_eq!(
            express() - before,
            if on_lane { 1.0 } else { 0.0 },
            "{raw:?}"
        );
        if r.header("connection") == Some("close") {
            c = edge.client();
        }
    }
    // Large bodies leave from a memory file with sendfile; 2 MiB overflows the socket buffers,
    // so the rest is written from the mapping once the socket drains.
    let big: String = (0..(2 << 20))
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    o.set(
        "/big",
        Canned::new(200, &[("Cache-Control", "max-age=60")], &big),
    );
    let mut c = edge.client();
    for round in 0..3 {
        let before = express();
        let r = c.get("example.com", "/big");
        assert_eq!(r.status, 200);
        assert!(r.body == big, "round {round}: body differs");
        assert_eq!(express() - before, if round == 0 { 0.0 } else { 1.0 });
    }
    let r = c.request("HEAD", "example.com", "/big", &[]);
    assert_eq!(r.header("content-length"), Some("2097152"));
    assert_eq!(r.body, "");
    // The fourth request of the connection (keepalive_requests: 4): the last.
    assert_eq!(r.header("connection"), Some("close"));
    // The operator's switch, on reload: off, the same hit goes through the proxy.
    edge.rewrite(&edge_config(
        &o,
        "",
        "client: {keepalive_requests: 4}\ncache: {express_lane: false}\n",
    ));
    assert_eq!(edge.reload().status, 200);
    // (The POST above invalidated /e: stored again first.)
    edge.get("example.com", "/e");
    let before = express();
    let r = edge.get("example.com", "/e");
    assert!(status_of(&r).starts_with("edge; hit"), "{}", status_of(&r));
    assert_eq!(express(), before, "the lane is off");
    edge.rewrite(&edge_config(&o, "", "client: {keepalive_requests: 4}\n"));
    assert_eq!(edge.reload().status, 200);
    // keepalive_requests: 4 holds on the lane: the fourth response closes the connection.
    let mut c = edge.client();
    for i in 1..=4 {
        let r = c.get("example.com", "/e");
        assert_eq!(r.body, "express");
        let expected = if i < 4 { "keep-alive" } else { "close" };
        assert_eq!(r.header("connection"), Some(expected), "request {i}");
    }
    assert!(c.wait_for_close(Duration::from_secs(5)).is_some());
}

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
fn conditional_head_and_range_requests_are_answered_from_cache() {
    let o = Origin::start("o");
    o.set(
        "/c",
        Canned::new(
            200,
            &[("Cache-Control", "max-age=60"), ("ETag", "\"abc\"")],
            "0123456789",
        ),
    );
    let edge = edge_for(&o, "", "");
    assert_eq!(edge.get("example.com", "/c").status, 200);
    let r = edge.request("GET", "/c", &["If-None-Match: \"abc\""]);
    assert_eq!(r.status, 304);
    let r = edge.request("HEAD", "/c", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("10"));
    assert!(status_of(&r).contains("hit"));
    let mut c = edge.client();
    let r = c.request("GET", "example.com", "/c", &["Range: bytes=2-5"]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, "2345");
    assert_eq!(r.header("content-range"), Some("bytes 2-5/10"));
    // The range response ends: the connection carries the next request (a range hit used to
    // spin on empty reads after its last byte and never finish).
    assert_eq!(c.get("example.com", "/c").body, "0123456789");
    assert_eq!(
        o.count("/c"),
        1,
        "only the first request reached the origin"
    );
    // HEAD on a cold object is fetched as GET and stored for both.
    o.set(
        "/h",
        Canned::new(200, &[("Cache-Control", "max-age=60")], "head body"),
    );
    assert_eq!(edge.request("HEAD", "/h", &[]).status, 200);
    assert_eq!(edge.get("example.com", "/h").body, "head body");
    assert_eq!(o.count("/h"), 1);
}

#[test]
fn client_no_cache_revalidates() {
    let o = Origin::start("o");
    o.set(
        "/n",
        Canned::new(
            200,
            &[("Cache-Control", "max-age=60"), ("ETag", "\"n\"")],
            "n",
        ),
    );
    let edge = edge_for(&o, "", "");
    edge.get("example.com", "/n");
    let r = edge.request("GET", "/n", &["Cache-Control: no-cache"]);
    assert_eq!(r.body, "n");
    assert!(status_of(&r).contains("fwd=request"), "{}", status_of(&r));
    assert_eq!(o.count("/n"), 2);
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
fn a_hundred_concurrent_misses_make_one_origin_request() {
    let o = Origin::start("o");
    let mut c = cc("max-age=60", "shared");
    c.delay = Duration::from_millis(300);
    o.set("/cold", c);
    let edge = edge_for(&o, "", "");
    let barrier = Arc::new(Barrier::new(100));
    let handles: Vec<_> = (0..100)
        .map(|_| {
            let (addr, b) = (edge.addr, barrier.clone());
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                b.wait();
                c.get("example.com", "/cold")
            })
        })
        .collect();
    for h in handles {
        let r = h.join().unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "shared"));
    }
    assert_eq!(o.count("/cold"), 1);
}

#[test]
fn waiters_are_released_at_once_when_the_response_is_uncacheable() {
    let o = Origin::start("o");
    let delay = Duration::from_millis(300);
    let mut c = cc("no-store", "mine");
    c.delay = delay;
    o.set("/u", c);
    let edge = edge_for(&o, "", "");
    const N: usize = 20;
    let barrier = Arc::new(Barrier::new(N));
    let t = Instant::now();
    let handles: Vec<_> = (0..N)
        .map(|_| {
            let (addr, b) = (edge.addr, barrier.clone());
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                b.wait();
                c.get("example.com", "/u").status
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }
    let took = t.elapsed();
    eprintln!("{N} concurrent requests for an uncacheable object, origin delay {delay:?}: all done in {took:?}");
    assert_eq!(o.count("/u"), N, "each waiter fetched its own response");
    // Released together: one delay for the first, one for the rest in parallel. Serial
    // release (or nginx's 500 ms lock polls) would take N times as long.
    assert!(
        took < delay * 4,
        "waiters were released one by one: {took:?}"
    );
}

#[test]
fn a_large_miss_streams_to_other_clients_while_it_is_written() {
    let o = Origin::start("o");
    let mut c = Canned::new(
        200,
        &[("Cache-Control", "max-age=60")],
        &"x".repeat(200_000),
    );
    c.chunks = 10;
    c.chunk_pause = Duration::from_millis(100);
    o.set("/big", c);
    let edge = edge_for(&o, "", "");
    let addr = edge.addr;
    let first = thread::spawn(move || {
        let t = Instant::now();
        let r = Client::connect(addr).get("example.com", "/big");
        (r.body.len(), t.elapsed())
    });
    assert!(wait_until(Duration::from_secs(5), || o.count("/big") == 1));
    let t = Instant::now();
    let mut second = Client::connect(addr);
    let r = second.get("example.com", "/big");
    let second_took = t.elapsed();
    let (first_len, first_took) = first.join().unwrap();
    assert_eq!((first_len, r.body.len()), (200_000, 200_000));
    assert_eq!(
        o.count("/big"),
        1,
        "the second client did not wait for a stored copy; it fetched again"
    );
    assert!(status_of(&r).contains("hit"), "{}", status_of(&r));
    assert!(
        second_took < first_took,
        "second {second_took:?} vs first {first_took:?}"
    );
}

#[test]
fn memory_stays_bounded_with_a_working_set_ten_times_max_size() {
    let o = Origin::start("o");
    let body = "y".repeat(64 * 1024);
    for i in 0..320 {
        o.set(&format!("/obj/{i}"), cc("max-age=600", &body));
    }
    let edge = edge_for(&o, "", "cache: {max_size: 2MiB, max_object_size: 1MiB}\n");
    let rss_before = edge.peak_rss();
    let mut c = edge.client();
    for round in 0..2 {
        for i in 0..320 {
            assert_eq!(
                c.get("example.com", &format!("/obj/{i}")).body.len(),
                body.len()
            );
            if i % 40 == 0 {
                // Evictions complete just after the fill that caused them: at most one object
                // per concurrent fill above max_size (here one client, so one object).
                let size = edge.metric("edge_cache_size_bytes");
                let bound = 2.0 * 1024.0 * 1024.0 + 70.0 * 1024.0;
                assert!(size <= bound, "cache holds {size} bytes in round {round}");
            }
        }
    }
    let m = edge.metrics();
    let size = metric_value(&m, "edge_cache_size_bytes");
    assert!(
        size <= 2.0 * 1024.0 * 1024.0 + 70.0 * 1024.0 && size > 1024.0 * 1024.0,
        "{size}"
    );
    assert!(
        metric_value(&m, "edge_cache_evictions_total") >= 280.0,
        "{m}"
    );
    let objects = metric_value(&m, "edge_cache_objects");
    assert!(
        (20.0..=32.0).contains(&objects),
        "{objects} objects of 64 KiB in 2 MiB"
    );
    // 64 KiB bodies live in memory files (sent with sendfile), outside the RSS: those files
    // are counted, and released with the objects evicted.
    let in_files = metric_value(&m, "edge_cache_file_bytes");
    assert!(
        in_files > 0.0 && in_files <= size,
        "{in_files} bytes in files, cache {size}"
    );
    assert!(metric_value(&m, "edge_cache_files") <= 32.0, "{m}");
    let growth = edge.peak_rss().saturating_sub(rss_before) + in_files as u64;
    eprintln!(
        "peak RSS plus body files grew by {} KiB while 40 MiB went through a 2 MiB cache",
        growth / 1024
    );
    assert!(
        growth < 2 * 1024 * 1024 + 24 * 1024 * 1024,
        "RSS and files grew by {growth} bytes"
    );
}

#[test]
fn purge_by_url_prefix_and_tag() {
    let o = Origin::start("o");
    for p in ["/img/a.png", "/img/b.png", "/css/site.css", "/js/app.js"] {
        o.set(p, cc("max-age=600", p));
    }
    o.set(
        "/tagged/1",
        Canned::new(
            200,
            &[
                ("Cache-Control", "max-age=600"),
                ("Surrogate-Key", "red blue"),
            ],
            "1",
        ),
    );
    o.set(
        "/tagged/2",
        Canned::new(
            200,
            &[
                ("Cache-Control", "max-age=600"),
                ("Cache-Tag", "blue,green"),
            ],
            "2",
        ),
    );
    o.set(
        "/v",
        Canned::new(
            200,
            &[
                ("Cache-Control", "max-age=600"),
                ("Vary", "Accept-Language"),
            ],
            "v",
        ),
    );
    let edge = edge_for(&o, "", "");
    for p in [
        "/img/a.png",
        "/img/b.png",
        "/css/site.css",
        "/js/app.js",
        "/tagged/1",
        "/tagged/2",
    ] {
        let r = edge.get("example.com", p);
        assert_eq!(
            r.header("surrogate-key"),
            None,
            "tags are not shown to clients"
        );
        assert_eq!(r.header("cache-tag"), None);
    }
    edge.request("GET", "/v", &["Accept-Language: fr"]);
    edge.request("GET", "/v", &["Accept-Language: de"]);
    assert_eq!(edge.metric("edge_cache_objects"), 8.0);

    let purge = |q: &str| edge.admin_post(&format!("/purge?{q}"));
    assert_eq!(
        purge("url=http%3A%2F%2Fexample.com%2Fv").body,
        "purged 2\n",
        "every variant"
    );
    assert_eq!(
        purge("url=http://EXAMPLE.com:8080/css/site.css").body,
        "purged 1\n"
    );
    assert_eq!(purge("prefix=http://example.com/img/").body, "purged 2\n");
    assert_eq!(purge("tag=blue").body, "purged 2\n");
    assert_eq!(purge("tag=blue").body, "purged 0\n");
    assert_eq!(purge("bogus=1").status, 400);
    assert_eq!(purge("url=/relative").status, 400);
    assert_eq!(
        edge.metric("edge_cache_objects"),
        1.0,
        "only /js/app.js is left"
    );
    assert!(status_of(&edge.get("example.com", "/js/app.js")).contains("hit"));
    assert!(status_of(&edge.get("example.com", "/img/a.png")).contains("fwd=uri-miss"));
    assert_eq!(edge.metric("edge_cache_purged_total{kind=\"tag\"}"), 2.0);
}

#[test]
fn unsafe_requests_invalidate_their_uri_and_location() {
    let o = Origin::start("o");
    o.set("/item", cc("max-age=600", "item"));
    o.set("/list", cc("max-age=600", "list"));
    let edge = edge_for(&o, "", "");
    edge.get("example.com", "/item");
    edge.get("example.com", "/list");
    // The origin answers the POST (uncached) with a Location on the same host.
    o.set(
        "/item",
        Canned::new(201, &[("Location", "http://example.com/list")], "created"),
    );
    assert_eq!(edge.request("POST", "/item", &[]).status, 201);
    o.set("/item", cc("max-age=600", "item"));
    assert!(status_of(&edge.get("example.com", "/item")).contains("fwd=uri-miss"));
    assert!(status_of(&edge.get("example.com", "/list")).contains("fwd=uri-miss"));
    assert_eq!(
        edge.metric("edge_cache_purged_total{kind=\"invalidation\"}"),
        2.0
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
fn head_requests_on_cold_objects_all_get_answers() {
    let o = Origin::start("o");
    for i in 0..50 {
        o.set(
            &format!("/h{i}"),
            Canned::new(200, &[("Cache-Control", "max-age=60")], "head body"),
        );
    }
    let edge = edge_for(&o, "", "");
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let addr = edge.addr;
            thread::spawn(move || {
                Client::connect(addr)
                    .request("HEAD", "example.com", &format!("/h{i}"), &[])
                    .status
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }
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
