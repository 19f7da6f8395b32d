//! Broken origins cannot hurt clients or the cache: an origin that sends half a response and
//! stalls ends the client's response at the read timeout (the bytes it got, then a closed
//! connection) and leaves nothing stored.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn half_a_response_then_a_stall_is_cut_and_not_stored() {
    let o = Origin::start("o");
    let body = "y".repeat(100_000);
    let mut half = Canned::new(200, &[("Cache-Control", "max-age=60")], &body);
    half.stall_after = Some(1000);
    o.set("/half", half);
    let edge = Edge::start(&format!(
        "origins:\n  web: {{servers: [\"{}\"], timeouts: {{read: 1s}}}}\nroutes:\n  - {{origin: web}}\n",
        o.addr
    ));
    let mut s = TcpStream::connect(edge.addr).unwrap();
    s.write_all(b"GET /half HTTP/1.1\r\nHost: a.com\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let ended = s.read_to_end(&mut got).is_ok();
    assert!(
        ended,
        "the connection was left open: {:?}",
        started.elapsed()
    );
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(200)]
    );
    let head_end = text.find("\r\n\r\n").unwrap() + 4;
    assert!(
        got.len() - head_end < body.len(),
        "the client got a complete body from a half response"
    );
    assert!(
        got.len() - head_end >= 1000,
        "the bytes the origin sent were passed on"
    );

    // Nothing was stored: the next request goes to the origin, which now answers whole.
    o.set(
        "/half",
        Canned::new(200, &[("Cache-Control", "max-age=60")], &body),
    );
    let r = edge.get("a.com", "/half");
    assert_eq!(r.body.len(), body.len());
    assert_eq!(o.count("/half"), 2);
    assert!(
        r.header("cache-status")
            .unwrap_or("")
            .contains("fwd=uri-miss"),
        "{r:?}"
    );
}
