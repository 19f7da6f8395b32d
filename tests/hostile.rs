//! Malformed and hostile requests are refused with a 4xx before any byte reaches an origin.

mod common;

use common::*;

fn setup() -> (Origin, Edge) {
    let o = Origin::start("o");
    let edge = Edge::start(&format!(
        "origins:\n  web: {{servers: [\"{}\"]}}\nroutes:\n  - {{origin: web}}\n",
        o.addr
    ));
    (o, edge)
}

fn status_of(edge: &Edge, raw: &str) -> Option<u16> {
    edge.client().send_raw(raw).map(|r| r.status)
}

#[test]
fn hostile_requests_never_reach_the_origin() {
    let (o, edge) = setup();
    let big = "x".repeat(70 * 1024);
    let cases: Vec<(&str, String)> = vec![
        (
            "traversal",
            "GET /a/../../etc/passwd HTTP/1.1\r\nHost: a.com\r\n\r\n".into(),
        ),
        (
            "encoded traversal",
            "GET /a/%2e%2e/%2E%2E/etc/passwd HTTP/1.1\r\nHost: a.com\r\n\r\n".into(),
        ),
        (
            "double-encoded traversal",
            "GET /a/%252e%252e/x HTTP/1.1\r\nHost: a.com\r\n\r\n".into(),
        ),
        ("no host", "GET / HTTP/1.1\r\n\r\n".into()),
        ("bad host", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n".into()),
        (
            "two hosts",
            "GET / HTTP/1.1\r\nHost: a.com\r\nHost: b.com\r\n\r\n".into(),
        ),
        (
            "huge header",
            format!("GET / HTTP/1.1\r\nHost: a.com\r\nX-Big: {big}\r\n\r\n"),
        ),
        (
            "conflicting content-length",
            "POST / HTTP/1.1\r\nHost: a.com\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde"
                .into(),
        ),
        (
            "non-chunked final transfer-encoding",
            "POST / HTTP/1.1\r\nHost: a.com\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"
                .into(),
        ),
        (
            "transfer-encoding on HTTP/1.0",
            "POST / HTTP/1.0\r\nHost: a.com\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
        ),
        (
            "content-length with transfer-encoding",
            "POST / HTTP/1.1\r\nHost: a.com\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .into(),
        ),
        ("garbage request line", "HELLO\r\n\r\n".into()),
        (
            "backslash path",
            "GET /a\\..\\b HTTP/1.1\r\nHost: a.com\r\n\r\n".into(),
        ),
    ];
    // A refusal is a 4xx status that says so, never a silent close: every case is a request
    // line and header block an HTTP/1.1 parser reads to its end, so the edge can answer it. Even
    // "garbage request line", which is not HTTP at all, gets the parser's 400 (RFC 9112 section
    // 3: a server SHOULD answer an invalid request-line with 400). Collected, so one run names
    // every case that fails.
    let mut wrong = Vec::new();
    for (name, raw) in &cases {
        let status = status_of(&edge, raw);
        if !status.is_some_and(|s| (400..500).contains(&s)) {
            wrong.push(format!("{name}: got {status:?}"));
        }
    }
    assert!(wrong.is_empty(), "not refused with a 4xx: {wrong:#?}");
    assert_eq!(
        o.request_count(),
        0,
        "something reached the origin: {:?}",
        o.requests()
    );
    assert_eq!(o.accepted(), 0);
    // A normal request still works afterwards.
    assert_eq!(edge.get("a.com", "/ok").status, 200);
}

#[test]
fn refusals_are_4xx_with_a_reason_and_counted() {
    let (_o, edge) = setup();
    let r = edge
        .client()
        .send_raw("GET /../x HTTP/1.1\r\nHost: a.com\r\n\r\n")
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.body.contains("path_traversal"));
    assert_eq!(r.header("connection"), Some("close"));
    let r = edge
        .client()
        .send_raw(&format!(
            "GET / HTTP/1.1\r\nHost: a.com\r\nX-Big: {}\r\n\r\n",
            "y".repeat(70_000)
        ))
        .unwrap();
    assert_eq!(r.status, 431);
    assert_eq!(
        edge.metric("edge_refused_requests_total{reason=\"path_traversal\"}"),
        1.0
    );
    assert_eq!(
        edge.metric("edge_refused_requests_total{reason=\"header_too_large\"}"),
        1.0
    );
}

#[test]
fn a_broken_chunked_body_is_not_forwarded_as_a_request() {
    let (o, edge) = setup();
    let mut c = edge.client();
    let r = c.send_raw(
        "POST /upload HTTP/1.1\r\nHost: a.com\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    );
    // Read ahead (it is small), refused, and the origin sees nothing of it (the byte count is
    // checked in tests/request_bodies.rs).
    assert_eq!(r.as_ref().map(|r| r.status), Some(400), "{r:?}");
    assert_eq!(o.request_count(), 0, "{:?}", o.requests());
}

/// Two requests sent in one write are answered in order, each once (RFC 9112 section 9.3),
/// whether they are fresh hits (the express lane) or misses (the proxy).
#[test]
fn pipelined_requests_are_answered_in_order() {
    let (o, edge) = setup();
    o.set(
        "/h",
        Canned::new(200, &[("Cache-Control", "max-age=60")], "hit"),
    );
    assert_eq!(edge.get("a.com", "/h").body, "hit");
    for (first, second) in [("/h", "/m1"), ("/m2", "/h"), ("/m3", "/m4"), ("/h", "/h")] {
        let mut c = edge.client();
        c.send_raw_no_wait(&format!(
            "GET {first} HTTP/1.1\r\nHost: a.com\r\n\r\nGET {second} HTTP/1.1\r\nHost: a.com\r\n\r\n"
        ));
        let a = c.read_response().expect("the first answer");
        let b = c
            .read_response()
            .unwrap_or_else(|| panic!("no second answer: {first} then {second}"));
        // The test origin answers "o GET <path> body=0" for paths it has no canned answer for.
        let body = |p: &str| {
            if p == "/h" {
                "hit".to_string()
            } else {
                format!("o GET {p} body=0\n")
            }
        };
        assert_eq!(
            (a.status, a.body.clone()),
            (200, body(first)),
            "{first} then {second}"
        );
        assert_eq!(
            (b.status, b.body.clone()),
            (200, body(second)),
            "{first} then {second}"
        );
    }
}

/// Content-Length with Transfer-Encoding (the request-smuggling shape) is refused with 400 and
/// the connection closed, before any byte reaches the origin.
#[test]
fn length_with_chunked_is_refused_and_closed() {
    let (o, edge) = setup();
    let mut c = edge.client();
    let r = c
        .send_raw("POST /x HTTP/1.1\r\nHost: a.com\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a.com\r\n\r\n")
        .expect("an answer");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("length_and_chunked"), "{r:?}");
    assert!(c
        .wait_for_close(std::time::Duration::from_secs(5))
        .is_some());
    assert_eq!(o.request_count(), 0, "{:?}", o.requests());
    assert_eq!(
        edge.metric("edge_refused_requests_total{reason=\"length_and_chunked\"}"),
        1.0
    );
}
