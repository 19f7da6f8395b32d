//! Malformed and hostile requests are refused with a 4xx before any byte reaches an origin.

mod common;

use std::time::Duration;

use common::*;

fn setup() -> (Origin, Edge) {
    let o = Origin::start("o");
    let edge = Edge::start(&format!(
        "origins:\n  web: {{servers: [\"{}\"]}}\nroutes:\n  - {{origin: web}}\n",
        o.addr
    ));
    (o, edge)
}

/// Each hostile shape in SECURITY.md, with the answer it documents: the status, and the
/// guard's reason when the edge refuses it itself (`refused: <reason>` in the body, counted in
/// `edge_refused_requests_total`), or None when Pingora refuses it first (an empty body, not
/// counted). Every refusal is a status that says so, never a silent close, and closes the
/// connection: each case is a request line and header block an HTTP/1.1 parser reads to its
/// end, so the edge can answer it; even "garbage request line", which is not HTTP at all,
/// gets the parser's 400 (RFC 9112 section 3: a server SHOULD answer an invalid request-line
/// with 400).
fn corpus() -> Vec<(&'static str, String, u16, Option<&'static str>)> {
    let big = "x".repeat(70 * 1024);
    let huge = "x".repeat((1 << 20) + 4096);
    let fields = |n: usize| (0..n).map(|i| format!("X-{i}: 1\r\n")).collect::<String>();
    let get = |target: &str, fields: &str| format!("GET {target} HTTP/1.1\r\n{fields}\r\n");
    let post =
        |fields: &str, body: &str| format!("POST / HTTP/1.1\r\nHost: a.com\r\n{fields}\r\n{body}");
    let host = "Host: a.com\r\n";
    vec![
        // Paths (CWE-22 and what an origin's file server might read differently).
        (
            "traversal",
            get("/a/../../etc/passwd", host),
            400,
            Some("path_traversal"),
        ),
        (
            "encoded traversal",
            get("/a/%2e%2e/%2E%2E/etc/passwd", host),
            400,
            Some("path_traversal"),
        ),
        (
            "double-encoded traversal",
            get("/a/%252e%252e/x", host),
            400,
            Some("path_traversal"),
        ),
        (
            "backslash path",
            get("/a\\..\\b", host),
            400,
            Some("bad_path"),
        ),
        (
            "encoded backslash",
            get("/a%5c..%5cb", host),
            400,
            Some("bad_path"),
        ),
        ("encoded NUL", get("/a%00b", host), 400, Some("bad_path")),
        (
            "bad percent-encoding",
            get("/a%zz", host),
            400,
            Some("bad_path"),
        ),
        (
            "target not starting with /",
            get("a/b", host),
            400,
            Some("bad_path"),
        ),
        // Host (RFC 9110 section 7.2, RFC 9112 section 3.2).
        ("no host", get("/", ""), 400, Some("missing_host")),
        (
            "empty host",
            get("/", "Host: \r\n"),
            400,
            Some("missing_host"),
        ),
        (
            "no host on HTTP/1.0",
            "GET / HTTP/1.0\r\n\r\n".into(),
            400,
            Some("missing_host"),
        ),
        ("bad host", get("/", "Host: a b\r\n"), 400, Some("bad_host")),
        (
            "non-numeric port",
            get("/", "Host: a.com:xx\r\n"),
            400,
            Some("bad_host"),
        ),
        (
            "slash in host",
            get("/", "Host: a/b\r\n"),
            400,
            Some("bad_host"),
        ),
        (
            "two hosts",
            get("/", "Host: a.com\r\nHost: b.com\r\n"),
            400,
            None,
        ),
        (
            "two equal hosts",
            get("/", "Host: a.com\r\nHost: a.com\r\n"),
            400,
            None,
        ),
        (
            "absolute-form naming another host",
            get("http://a.com/x", "Host: b.com\r\n"),
            400,
            None,
        ),
        // Sizes.
        (
            "huge header",
            get("/", &format!("{host}X-Big: {big}\r\n")),
            431,
            Some("header_too_large"),
        ),
        (
            "too many headers",
            get("/", &format!("{host}{}", fields(101))),
            431,
            Some("too_many_headers"),
        ),
        (
            "head over 1 MiB",
            get("/", &format!("{host}X-Big: {huge}\r\n")),
            400,
            None,
        ),
        (
            "over 256 fields",
            get("/", &format!("{host}{}", fields(300))),
            400,
            None,
        ),
        (
            "target over 64 KiB",
            get(&format!("/{big}"), host),
            400,
            None,
        ),
        // Framing (RFC 9112 sections 6.1 and 6.3; request smuggling, CWE-444).
        (
            "content-length with transfer-encoding",
            post(
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            400,
            Some("length_and_chunked"),
        ),
        (
            "conflicting content-length",
            post("Content-Length: 3\r\nContent-Length: 5\r\n", "abcde"),
            400,
            None,
        ),
        (
            "content-length not a number",
            post("Content-Length: abc\r\n", ""),
            400,
            None,
        ),
        (
            "signed content-length",
            post("Content-Length: +3\r\n", "abc"),
            400,
            None,
        ),
        (
            "negative content-length",
            post("Content-Length: -1\r\n", ""),
            400,
            None,
        ),
        (
            "non-chunked final transfer-encoding",
            post("Transfer-Encoding: chunked, gzip\r\n", "0\r\n\r\n"),
            400,
            None,
        ),
        (
            "transfer-encoding without chunked",
            post("Transfer-Encoding: gzip\r\n", "0\r\n\r\n"),
            400,
            None,
        ),
        (
            "transfer-encoding on HTTP/1.0",
            "POST / HTTP/1.0\r\nHost: a.com\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
            400,
            None,
        ),
        // Field syntax (RFC 9112 section 5).
        (
            "obs-fold",
            get("/", &format!("{host}X-A: 1\r\n  folded\r\n")),
            400,
            None,
        ),
        (
            "space before the colon",
            get("/", "Host : a.com\r\n"),
            400,
            None,
        ),
        (
            "NUL in a field value",
            get("/", &format!("{host}X-A: a\0b\r\n")),
            400,
            None,
        ),
        // Request line (RFC 9112 section 3).
        ("garbage request line", "HELLO\r\n\r\n".into(), 400, None),
        (
            "HTTP/2.0 in an HTTP/1 request line",
            "GET / HTTP/2.0\r\nHost: a.com\r\n\r\n".into(),
            400,
            None,
        ),
        (
            "HTTP/1.2",
            "GET / HTTP/1.2\r\nHost: a.com\r\n\r\n".into(),
            400,
            None,
        ),
        (
            "CONNECT",
            "CONNECT a.com:443 HTTP/1.1\r\nHost: a.com:443\r\n\r\n".into(),
            405,
            None,
        ),
        (
            "space in the target",
            get("/a b", host),
            400,
            Some("bad_request_line"),
        ),
        (
            "control byte in the target",
            get("/a\x01b", host),
            400,
            Some("bad_request_line"),
        ),
        (
            "tab in the target",
            get("/a\tb", host),
            400,
            Some("bad_request_line"),
        ),
        (
            "TRACE",
            "TRACE / HTTP/1.1\r\nHost: a.com\r\n\r\n".into(),
            405,
            Some("method_not_allowed"),
        ),
    ]
}

#[test]
fn hostile_requests_never_reach_the_origin() {
    let (o, edge) = setup();
    let cases = corpus();
    // Collected, so one run names every case that differs from SECURITY.md.
    let mut wrong = Vec::new();
    for (name, raw, status, reason) in &cases {
        let mut c = edge.client();
        let Some(r) = c.send_raw(raw) else {
            wrong.push(format!("{name}: no answer"));
            continue;
        };
        let refused = r.body.strip_prefix("refused: ").map(str::trim_end);
        if (r.status, refused) != (*status, *reason) {
            wrong.push(format!(
                "{name}: {} {:?}, not {status} {reason:?}",
                r.status, r.body
            ));
        }
        if c.wait_for_close(Duration::from_secs(5)).is_none() {
            wrong.push(format!("{name}: the connection stayed open"));
        }
    }
    assert!(wrong.is_empty(), "not answered as documented: {wrong:#?}");
    assert_eq!(
        o.request_count(),
        0,
        "something reached the origin: {:?}",
        o.requests()
    );
    assert_eq!(o.accepted(), 0);
    // The guard's refusals are counted by reason; Pingora's are not.
    let m = edge.metrics();
    for reason in cases.iter().filter_map(|c| c.3) {
        let expected = cases.iter().filter(|c| c.3 == Some(reason)).count();
        let sample = format!("edge_refused_requests_total{{reason=\"{reason}\"}}");
        assert_eq!(metric_value(&m, &sample), expected as f64, "{sample}");
    }
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

/// What the edge accepts on purpose although a stricter parser might refuse it (SECURITY.md,
/// "Accepted"): bare LF line ends (RFC 9112 section 2.2 allows a recipient to), a duplicated
/// Content-Length with equal values (RFC 9110 section 8.6 allows it), and `chunked` listed
/// twice, which is decoded once and forwarded with one `Transfer-Encoding: chunked`. Each
/// reaches the origin framed as the edge read it, and the connection stays usable.
#[test]
fn lenient_shapes_are_forwarded_as_the_edge_read_them() {
    let (o, edge) = setup();
    let mut c = edge.client();
    for (path, raw, body) in [
        ("/lf", "GET /lf HTTP/1.1\nHost: a.com\n\n", 0),
        (
            "/cl",
            "POST /cl HTTP/1.1\r\nHost: a.com\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            3,
        ),
        (
            "/te",
            "POST /te HTTP/1.1\r\nHost: a.com\r\nTransfer-Encoding: chunked, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            3,
        ),
    ] {
        let r = c.send_raw(raw).expect("an answer");
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert!(r.body.ends_with(&format!("{path} body={body}\n")), "{path}: {r:?}");
    }
    let te = o.requests().into_iter().find(|s| s.path == "/te").unwrap();
    assert_eq!(te.header("transfer-encoding"), Some("chunked"));
    assert_eq!(c.get("a.com", "/after").status, 200);
}
