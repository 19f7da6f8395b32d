//! Filling the cache against real origins on loopback: concurrent misses coalesced into one
//! origin request, large objects streamed while written, memory bounded under a large working
//! set, purge and invalidation.

mod common;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::cache::*;
use common::*;

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
                let size = edge.metric("edge_cache_size_bytes{tier=\"memory\"}");
                let bound = 2.0 * 1024.0 * 1024.0 + 70.0 * 1024.0;
                assert!(size <= bound, "cache holds {size} bytes in round {round}");
            }
        }
    }
    let m = edge.metrics();
    let size = metric_value(&m, "edge_cache_size_bytes{tier=\"memory\"}");
    assert!(
        size <= 2.0 * 1024.0 * 1024.0 + 70.0 * 1024.0 && size > 1024.0 * 1024.0,
        "{size}"
    );
    assert!(
        metric_value(&m, "edge_cache_evictions_total{tier=\"memory\"}") >= 280.0,
        "{m}"
    );
    let objects = metric_value(&m, "edge_cache_objects{tier=\"memory\"}");
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
    assert_eq!(edge.metric("edge_cache_objects{tier=\"memory\"}"), 8.0);

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
        edge.metric("edge_cache_objects{tier=\"memory\"}"),
        1.0,
        "only /js/app.js is left"
    );
    assert!(status_of(&edge.get("example.com", "/js/app.js")).contains("hit"));
    assert!(status_of(&edge.get("example.com", "/img/a.png")).contains("fwd=uri-miss"));
    assert_eq!(edge.metric("edge_cache_purged_total{kind=\"tag\"}"), 2.0);
}

/// A purge that arrives while an object's first fill is in flight (its request waiting for
/// the origin's answer, or its body still arriving) keeps that fill out of the cache: the
/// client it was for gets the whole response, the next request goes to the origin again.
#[test]
fn a_purge_during_a_first_fill_keeps_it_out_of_the_cache() {
    let o = Origin::start("o");
    let edge = edge_for(&o, "", "");
    let tagged = [("Cache-Control", "max-age=600"), ("Surrogate-Key", "slow")];
    let body = "z".repeat(30_000);
    let cases = [
        ("/streaming/url", "url=http://example.com/streaming/url"),
        (
            "/streaming/prefix",
            "prefix=http://example.com/streaming/pre",
        ),
        ("/streaming/tag", "tag=slow"),
        ("/waiting/url", "url=http://example.com/waiting/url"),
        ("/waiting/tag", "tag=slow"),
    ];
    let mut stored = Vec::new();
    for (path, query) in cases {
        let mut c = Canned::new(200, &tagged, &body);
        if path.starts_with("/streaming/") {
            // The header and a first piece at once, the rest over 800 ms.
            c.chunks = 3;
            c.chunk_pause = Duration::from_millis(400);
        } else {
            // Nothing for 600 ms: the origin has the request, the edge waits for the header.
            c.delay = Duration::from_millis(600);
        }
        o.set(path, c);
        let addr = edge.addr;
        let first = thread::spawn(move || Client::connect(addr).get("example.com", path));
        assert!(wait_until(Duration::from_secs(5), || o.count(path) == 1));
        thread::sleep(Duration::from_millis(150));
        let purged = edge.admin_post(&format!("/purge?{query}"));
        assert_eq!(purged.status, 200, "{path}: {}", purged.body);
        let r = first.join().unwrap();
        assert_eq!(
            (r.status, r.body.len()),
            (200, body.len()),
            "{path}: the client of the purged fill gets it whole"
        );
        o.set(path, Canned::new(200, &tagged, "new"));
        let again = edge.get("example.com", path);
        let status = status_of(&again);
        if o.count(path) != 2 || again.body != "new" || !status.contains("fwd=uri-miss") {
            stored.push(format!(
                "{path} (purge {query}): {} origin requests, {} bytes, {status}",
                o.count(path),
                again.body.len()
            ));
            continue;
        }
        // What was fetched after the purge is stored as usual.
        assert!(status_of(&edge.get("example.com", path)).contains("hit"));
        assert_eq!(o.count(path), 2, "{path}");
    }
    assert!(
        stored.is_empty(),
        "fills begun before a purge were stored:\n{}",
        stored.join("\n")
    );
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
