//! Unit tests of the lane: which requests it takes, how it reads a head.

use std::time::{Duration, SystemTime};

use pingora::cache::CacheMeta;
use pingora::http::ResponseHeader;

use super::head::{framing, head_complete, parse, BodyFraming, Framing};
use super::*;
use crate::cache::key::for_url_only;
use crate::cache::key::Scheme;

const CONFIG: &str = "listen: [\"127.0.0.1:1\"]\norigins:\n  web: {servers: [\"127.0.0.1:1\"]}\nroutes:\n  - {origin: web}\n";

/// An edge with `/e` fresh in its cache (5 bytes, with a Content-Length).
async fn edge_with_object(extra: &str) -> Arc<Edge> {
    let text = format!("{extra}{CONFIG}");
    let config = crate::config::parse(&text, "test").unwrap();
    let edge = Edge::new(config, text, None).unwrap();
    let live = edge.snapshot();
    let route = live.router.route("example.com", "/e").unwrap();
    let key = for_url_only(Scheme::Http, "example.com", "/e", &route.cache.key).unwrap();
    let mut header = ResponseHeader::build(200, None).unwrap();
    header.append_header("Content-Length", "5").unwrap();
    let now = SystemTime::now();
    let meta = CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header);
    crate::cache::store::tests::fill(edge.cache.store, &key, &meta, &["hello"]).await;
    edge
}

/// What the lane decides for these bytes: answer (`Ok`), hand over with the key it looked
/// up (`Err(true)`), or hand over without one (`Err(false)`).
fn decide(edge: &Edge, bytes: &str) -> Result<usize, bool> {
    let live = edge.snapshot();
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let Some(parsed) = parse(bytes.as_bytes(), &mut fields) else {
        return Err(false);
    };
    match plan(&parsed, bytes.len(), &live, edge, Scheme::Http) {
        Ok(e) => Ok(e.hit.body_len()),
        Err(key) => Err(key.is_some()),
    }
}

#[tokio::test]
async fn plain_fresh_hits_take_the_lane_and_nothing_else_does() {
    let edge = edge_with_object("").await;
    let cases: [(&str, Result<usize, bool>); 12] = [
        ("GET /e HTTP/1.1\r\nHost: example.com\r\n\r\n", Ok(5)),
        ("HEAD /e HTTP/1.1\r\nHost: EXAMPLE.com:80\r\n\r\n", Ok(5)),
        ("GET /e HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive\r\n\r\n", Ok(5)),
        // Not stored: the proxy gets the key it need not build again.
        ("GET /other HTTP/1.1\r\nHost: example.com\r\n\r\n", Err(true)),
        ("GET /e HTTP/1.1\r\nHost: example.com\r\nRange: bytes=0-1\r\n\r\n", Err(false)),
        ("GET /e HTTP/1.1\r\nHost: example.com\r\nCache-Control: max-age=9\r\n\r\n", Err(false)),
        ("GET /e HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n", Err(false)),
        ("GET /e HTTP/1.0\r\nHost: example.com\r\n\r\n", Err(false)),
        ("GET /x/../e HTTP/1.1\r\nHost: example.com\r\n\r\n", Err(false)),
        ("GET /e HTTP/1.1\r\n\r\n", Err(false)),
        // Partial, or pipelined behind another: Pingora's parser decides.
        ("GET /e HTTP/1.1\r\nHost: exa", Err(false)),
        (
            "GET /e HTTP/1.1\r\nHost: example.com\r\n\r\nGET /e HTTP/1.1\r\nHost: example.com\r\n\r\n",
            Err(false),
        ),
    ];
    for (bytes, expected) in cases {
        assert_eq!(decide(&edge, bytes), expected, "{bytes:?}");
    }
}

#[test]
fn a_second_request_is_told_from_a_body() {
    let of = |bytes: &[u8]| {
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let parsed = parse(bytes, &mut fields);
        framing(bytes, parsed.as_ref())
    };
    let two = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n";
    assert!(of(two).pipelined);
    assert!(!of(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n").pipelined);
    let body = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
    assert_eq!(
        of(body),
        Framing {
            content_length: true,
            transfer_encoding: false,
            pipelined: false,
            head_len: body.len() - 3,
            body: Some(BodyFraming::Length(3)),
            expect_continue: None,
        }
    );
    assert_eq!(of(b"GET /a HTTP/1.1\r\nHo"), Framing::default());
    // More fields than the lane parses: the framing is still known.
    let mut many = String::from("POST /a HTTP/1.1\r\nHost: a\r\n");
    for i in 0..100 {
        many.push_str(&format!("X-{i}: 1\r\n"));
    }
    many.push_str("Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
    let f = of(many.as_bytes());
    assert!(f.content_length && f.transfer_encoding);
}

#[test]
fn the_body_framing_the_lane_reads_ahead() {
    let of = |bytes: &str| {
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let parsed = parse(bytes.as_bytes(), &mut fields);
        framing(bytes.as_bytes(), parsed.as_ref())
    };
    let body = |fields: &str| of(&format!("POST / HTTP/1.1\r\nHost: a\r\n{fields}\r\n")).body;
    assert_eq!(body("Content-Length: 5\r\n"), Some(BodyFraming::Length(5)));
    assert_eq!(body("Content-Length: 0\r\n"), None);
    assert_eq!(
        body("Content-Length: +5\r\n"),
        None,
        "Pingora's parser decides"
    );
    assert_eq!(
        body("Content-Length: 5\r\nContent-Length: 5\r\n"),
        None,
        "two lengths: Pingora's parser decides"
    );
    assert_eq!(
        body("Transfer-Encoding: gzip, chunked\r\n"),
        Some(BodyFraming::Chunked)
    );
    assert_eq!(
        body("Transfer-Encoding: gzip\r\nTransfer-Encoding: Chunked\r\n"),
        Some(BodyFraming::Chunked)
    );
    assert_eq!(body("Transfer-Encoding: chunked, gzip\r\n"), None);
    let head = "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\n";
    let line = of(head).expect_continue.expect("the field's line");
    assert_eq!(&head[line], "Expect: 100-Continue\r\n");
    let old = head.replace("HTTP/1.1", "HTTP/1.0");
    assert_eq!(of(&old).expect_continue, None, "HTTP/1.0 has no 100");
}

#[test]
fn a_head_is_complete_at_its_blank_line() {
    assert!(head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert!(head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"));
    assert!(head_complete(b"GET / HTTP/1.1\nHost: a\n\n"));
    assert!(!head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n"));
    assert!(!head_complete(b"GET / HTT"));
    // The 408 is well framed: its Content-Length is its body's.
    let answer = super::head::refusal_response(crate::guard::HEADER_TIMEOUT);
    let mut fields = [httparse::EMPTY_HEADER; 8];
    let mut resp = httparse::Response::new(&mut fields);
    let head = resp.parse(&answer).unwrap().unwrap();
    let length = resp
        .headers
        .iter()
        .find(|h| h.name == "Content-Length")
        .unwrap();
    let length: usize = std::str::from_utf8(length.value).unwrap().parse().unwrap();
    assert_eq!((resp.code, answer.len() - head), (Some(408), length));
}

#[tokio::test]
async fn the_operators_switch_closes_the_lane() {
    let edge = edge_with_object("cache: {express_lane: false}\n").await;
    assert_eq!(
        decide(&edge, "GET /e HTTP/1.1\r\nHost: example.com\r\n\r\n"),
        Err(false)
    );
}
