//! Cache hits against real origins on loopback: the three paths that answer them (the express
//! lane, the proxy's fresh-hit path, pingora-cache's hit path) alike, and the requests that need
//! more than a stored object (conditions, ranges, client revalidation, HEAD).

mod common;

use std::thread;
use std::time::Duration;

use common::cache::*;
use common::*;

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
    assert_eq!(edge.metric("edge_cache_objects{tier=\"memory\"}"), 1.0);
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

/// Several ranges in one request are answered from the stored object as
/// `multipart/byteranges` (RFC 9110 section 14.6), the origin asked once; the egregious shapes
/// RFC 9110 section 17.15 warns of (overlapping or descending ranges, hundreds of them) get the
/// whole object instead of a response that costs more than it should.
#[test]
fn several_ranges_come_from_the_cache_as_multipart_byteranges() {
    let o = Origin::start("o");
    o.set(
        "/m",
        Canned::new(
            200,
            &[
                ("Cache-Control", "max-age=60"),
                ("Content-Type", "text/plain"),
            ],
            "0123456789abcdefghij",
        ),
    );
    let edge = edge_for(&o, "", "");
    assert_eq!(edge.get("example.com", "/m").status, 200);
    let mut c = edge.client();
    let r = c.request("GET", "example.com", "/m", &["Range: bytes=0-3, 10-12,-2"]);
    assert_eq!(r.status, 206);
    let ct = r.header("content-type").unwrap().to_string();
    let boundary = ct
        .strip_prefix("multipart/byteranges; boundary=")
        .unwrap_or_else(|| panic!("{ct}"));
    assert_eq!(
        r.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap(),
        r.body.len()
    );
    let parts: Vec<(String, String)> = r
        .body
        .split(&format!("--{boundary}"))
        .filter(|p| p.contains("Content-Range"))
        .map(|p| {
            let (head, body) = p.split_once("\r\n\r\n").unwrap();
            let range = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Range: "))
                .unwrap()
                .to_string();
            (range, body.trim_end_matches("\r\n").to_string())
        })
        .collect();
    assert_eq!(
        parts,
        [
            ("bytes 0-3/20".to_string(), "0123".to_string()),
            ("bytes 10-12/20".to_string(), "abc".to_string()),
            ("bytes 18-19/20".to_string(), "ij".to_string()),
        ]
    );
    assert!(
        r.body.ends_with(&format!("--{boundary}--\r\n")),
        "{:?}",
        r.body
    );
    assert!(status_of(&r).contains("hit"));
    // The connection carries the next request.
    assert_eq!(c.get("example.com", "/m").body, "0123456789abcdefghij");

    let many: Vec<String> = (0..201).map(|i| format!("{i}-{i}")).collect();
    for egregious in [
        "bytes=0-5,3-8".to_string(),
        "bytes=10-12,0-3".to_string(),
        format!("bytes={}", many.join(",")),
    ] {
        let r = edge.request("GET", "/m", &[&format!("Range: {egregious}")]);
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "0123456789abcdefghij"),
            "{egregious}"
        );
    }
    assert_eq!(o.count("/m"), 1, "every answer came from the cache");
}

/// A hit is served with the Date of the origin's response (RFC 9111 section 4), on every hit
/// path and over h2; a response the origin sent without Date is
/// given the time it was received (RFC 9110 section 6.6.1), and its hits keep that time.
#[test]
fn hits_are_served_with_the_date_the_origin_sent() {
    let o = Origin::start("o");
    let sent = httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(30));
    let dated = Canned::new(
        200,
        &[("Cache-Control", "max-age=3600"), ("Date", &sent)],
        "d",
    );
    o.set("/dated", dated);
    o.set("/undated", cc("max-age=3600", "u"));
    let edge = Edge::start_listening(
        "{address: \"127.0.0.1:{PORT}\", http2: true}",
        &common::cache::edge_config(&o, "", ""),
    );
    let mut c = Client::connect(edge.addr);
    let h2_date = |path: &str| {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-D",
                "-",
                "--http2-prior-knowledge",
            ])
            .args(["-H", "Host: example.com"])
            .arg(format!("http://{}{path}", edge.addr))
            .output()
            .expect("curl");
        let head = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(head.starts_with("HTTP/2 200"), "{head}");
        let dates: Vec<String> = head
            .lines()
            .filter_map(|l| l.strip_prefix("date: "))
            .map(|v| v.trim().to_string())
            .collect();
        assert_eq!(dates.len(), 1, "{head}");
        dates[0].clone()
    };
    // Every path that answers: the miss (the origin's own Date), the express lane, the
    // proxy's fresh-hit path, pingora-cache's hit path, h2.
    let every_path = |c: &mut Client, path: &str| {
        let miss = c.get("example.com", path);
        assert!(status_of(&miss).contains("stored"), "{}", status_of(&miss));
        let hits = [
            c.get("example.com", path),
            c.request("GET", "example.com", path, &["Pragma: x-trace"]),
            c.request("GET", "example.com", path, &["If-None-Match: \"other\""]),
        ];
        for r in &hits {
            assert!(status_of(r).starts_with("edge; hit"), "{}", status_of(r));
        }
        (miss, hits)
    };
    let (miss, hits) = every_path(&mut c, "/dated");
    assert_eq!(miss.header("date"), Some(sent.as_str()));
    for r in &hits {
        assert_eq!(r.header("date"), Some(sent.as_str()), "{:?}", r.headers);
        // Age is the time in this cache (plus any upstream Age), not now − Date: the origin's
        // clock is not trusted for freshness, and a client that wants the apparent age still
        // has the origin's Date to compute it (RFC 9111 section 4.2.3 takes the larger).
        let age: u64 = r.header("age").unwrap().parse().unwrap();
        assert!(age < 10, "{age}");
    }
    assert_eq!(h2_date("/dated"), sent);

    let (miss, _) = every_path(&mut c, "/undated");
    let received = miss.header("date").expect("a Date on receipt").to_string();
    // Once the clock's second has moved on, a hit still says when it was received.
    let later = || httpdate::fmt_http_date(std::time::SystemTime::now()) != received;
    assert!(wait_until(Duration::from_secs(3), later));
    let hit = c.get("example.com", "/undated");
    assert_eq!(hit.header("date"), Some(received.as_str()));
    let hit = c.request("GET", "example.com", "/undated", &["Pragma: x-trace"]);
    assert_eq!(hit.header("date"), Some(received.as_str()));
    assert_eq!(h2_date("/undated"), received);
    assert_eq!(o.count("/dated") + o.count("/undated"), 2);
}

/// `cache.ranges: forward`: a range request that misses asks the origin for that range; the
/// origin's `206` is stored and answers ranges inside it without the origin, from the right
/// offset. A range outside it, or the whole object, goes to the origin again and what comes
/// back takes its place; a plain GET never gets the part. By default (`whole`) a range miss
/// fetches the whole object.
#[test]
fn a_206_from_the_origin_is_stored_and_reused_for_ranges_it_covers() {
    let o = Origin::start("o");
    let body: String = (0..1000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let mut object = Canned::new(
        200,
        &[("Cache-Control", "max-age=60"), ("ETag", "\"v1\"")],
        &body,
    );
    object.ranges = true;
    o.set("/v", object.clone());
    o.set("/w", object);
    o.set(
        "/gone",
        Canned::new(416, &[("Cache-Control", "max-age=60")], ""),
    );
    let edge = edge_for(&o, ", cache: {ranges: forward}", "");
    let mut c = Client::connect(edge.addr);
    let range = |c: &mut Client, path: &str, r: &str| {
        let resp = c.request("GET", "example.com", path, &[&format!("Range: bytes={r}")]);
        assert_eq!(resp.status, 206, "{path} {r}: {resp:?}");
        resp
    };
    let check = |resp: &Response, first: usize, last: usize| {
        let expected = format!("bytes {first}-{last}/1000");
        assert_eq!(resp.header("content-range"), Some(expected.as_str()));
        assert_eq!(resp.body, body[first..=last], "{expected}");
    };
    let last_range_asked = || {
        let seen = o.requests();
        seen.last()
            .and_then(|s| s.header("range").map(str::to_string))
    };

    let miss = range(&mut c, "/v", "100-199");
    check(&miss, 100, 199);
    assert!(status_of(&miss).contains("stored"), "{}", status_of(&miss));
    assert_eq!(last_range_asked().as_deref(), Some("bytes=100-199"));
    for (r, first, last) in [
        ("120-129", 120, 129),
        ("100-199", 100, 199),
        ("150-199", 150, 199),
    ] {
        let hit = range(&mut c, "/v", r);
        check(&hit, first, last);
        assert!(
            status_of(&hit).starts_with("edge; hit"),
            "{r}: {}",
            status_of(&hit)
        );
    }
    assert_eq!(o.count("/v"), 1, "ranges inside the part are hits");
    // If-Range naming the part: answered from it; naming another version: the whole object
    // (the origin decides, as the part cannot).
    let r = c.request(
        "GET",
        "example.com",
        "/v",
        &["Range: bytes=120-129", "If-Range: \"v1\""],
    );
    check(&r, 120, 129);
    assert_eq!(o.count("/v"), 1);
    let r = c.request(
        "GET",
        "example.com",
        "/v",
        &["Range: bytes=120-129", "If-Range: \"v0\""],
    );
    assert_eq!((r.status, r.body.as_str()), (200, body.as_str()));
    assert_eq!(o.count("/v"), 2);
    // The whole object is now stored in the part's place: start the part again.
    o.set("/v", {
        let mut fresh = Canned::new(200, &[("Cache-Control", "max-age=60")], &body);
        fresh.ranges = true;
        fresh
    });
    edge.admin_post("/purge?url=http://example.com/v");
    check(&range(&mut c, "/v", "100-199"), 100, 199);
    assert_eq!(o.count("/v"), 3);

    // Outside the part: asked for, and stored in its place.
    let other = range(&mut c, "/v", "500-509");
    check(&other, 500, 509);
    assert_eq!(o.count("/v"), 4);
    assert_eq!(last_range_asked().as_deref(), Some("bytes=500-509"));
    check(&range(&mut c, "/v", "500-509"), 500, 509);
    assert_eq!(o.count("/v"), 4);
    check(&range(&mut c, "/v", "120-129"), 120, 129);
    assert_eq!(o.count("/v"), 5, "the earlier part was replaced");

    // The whole object: a 200, stored; any range is then answered from it.
    let whole = c.get("example.com", "/v");
    assert_eq!((whole.status, whole.body.as_str()), (200, body.as_str()));
    assert_eq!(
        last_range_asked(),
        None,
        "a plain GET asks for the whole object"
    );
    check(&range(&mut c, "/v", "900-909"), 900, 909);
    check(&range(&mut c, "/v", "-5"), 995, 999);
    assert_eq!(o.count("/v"), 6);

    // Only a 200 or a part is stored for a forwarded range: not a 416 (it would answer every
    // later request for the URL).
    let r = c.request("GET", "example.com", "/gone", &["Range: bytes=0-9"]);
    assert_eq!(r.status, 416);
    assert_eq!(c.get("example.com", "/gone").status, 416);
    assert_eq!(o.count("/gone"), 2, "the 416 was not stored");

    // A plain GET of an object stored as a part gets the whole object, on every path.
    check(&range(&mut c, "/w", "0-9"), 0, 9);
    let plain = c.get("example.com", "/w");
    assert_eq!((plain.status, plain.body.as_str()), (200, body.as_str()));
    let again = c.get("example.com", "/w");
    assert_eq!((again.status, again.body.as_str()), (200, body.as_str()));
    assert!(
        status_of(&again).starts_with("edge; hit"),
        "{}",
        status_of(&again)
    );
    assert_eq!(o.count("/w"), 2);
    drop(edge);

    // The default: a range miss fetches and stores the whole object.
    let edge = edge_for(&o, "", "");
    let mut c = Client::connect(edge.addr);
    let r = c.request("GET", "example.com", "/w", &["Range: bytes=0-9"]);
    assert_eq!((r.status, r.body.as_str()), (206, &body[0..10]));
    assert_eq!(last_range_asked(), None);
    let r = c.request("GET", "example.com", "/w", &["Range: bytes=990-999"]);
    assert_eq!((r.status, r.body.as_str()), (206, &body[990..1000]));
    assert_eq!(o.count("/w"), 3);
}
