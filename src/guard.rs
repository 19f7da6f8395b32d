//! Requests the edge refuses before any byte of them reaches an origin.
//!
//! Pingora already rejects broken framing (conflicting Content-Length, non-chunked final
//! Transfer-Encoding, bad chunk sizes, Transfer-Encoding on HTTP/1.0) and ambiguous authority.
//! This adds what a CDN edge refuses on top: oversized header blocks, a missing or malformed
//! Host, and paths that climb out of the root (`..`, also percent-encoded), which an origin's
//! file server might resolve differently than our router did.

use std::borrow::Cow;

use pingora::http::RequestHeader;

use crate::host::{request_host, valid_host};

/// The client request limits the checks enforce (`client.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_headers: usize,
    pub max_header_size: usize,
    /// Bodies up to this size are read whole before the origin is chosen (`express::body`).
    pub body_buffer_size: usize,
    /// Largest body accepted; 0 = unlimited.
    pub max_body_size: u64,
    /// Longest gap between two reads of a body.
    pub body_timeout: std::time::Duration,
}

/// The most `client.body_buffer_size` may be: Pingora keeps a request body it has read for
/// sending upstream in a buffer of this size (its retry buffer), and a body read whole must fit.
pub const BODY_BUFFER_LIMIT: usize = 64 << 10;

/// Every reason a refusal can carry, so that metrics can show each one at 0 before it happens.
pub const REASONS: [&str; 15] = [
    "too_many_headers",
    "header_too_large",
    "missing_host",
    "bad_host",
    "duplicate_host",
    "bad_path",
    "path_traversal",
    // The request head did not arrive within client.header_timeout (the express lane's read).
    "header_timeout",
    "length_and_chunked",
    // The body is larger than client.max_body_size (Content-Length, or counted as it came).
    "body_too_large",
    // The body's framing is broken (a bad chunk size, a bare LF, a body cut short).
    "bad_body",
    // No body bytes arrived for client.body_timeout.
    "body_timeout",
    // A space or control byte in the request line (the express lane, before Pingora's parser
    // would percent-encode it and go on).
    "bad_request_line",
    // TRACE or TRACK: a request echoed back with its credentials (cross-site tracing).
    "method_not_allowed",
    // The request's CDN-Loop names this edge: tiers configured in a cycle (508).
    "loop",
];

/// The framing rule on the head as sent (the express lane reads it before Pingora's parser): a
/// request with both `Content-Length` and `Transfer-Encoding` is refused (RFC 9112 section 6.1
/// allows a server to; nginx does). Pingora would drop the `Content-Length` and go on, and a
/// peer that framed the other way would see another request in the body: the request-smuggling
/// shape.
pub fn check_framing(content_length: bool, transfer_encoding: bool) -> Result<(), Refusal> {
    if content_length && transfer_encoding {
        return Err(refuse(400, "length_and_chunked"));
    }
    Ok(())
}

/// A body larger than `client.max_body_size`: by its `Content-Length`, before any of it is
/// read (nginx's `client_max_body_size`), or counted as it arrives.
pub const BODY_TOO_LARGE: Refusal = refuse(413, "body_too_large");
/// A body whose chunked framing is broken (RFC 9112 section 7.1).
pub const BAD_BODY: Refusal = refuse(400, "bad_body");
/// A body whose next bytes did not arrive within `client.body_timeout`.
pub const BODY_TIMEOUT: Refusal = refuse(408, "body_timeout");

/// The body-size rule, on a request's `Content-Length` or on the bytes of a body counted as
/// they arrive (chunked and h2 bodies).
pub fn check_body_size(bytes: u64, limits: &Limits) -> Result<(), Refusal> {
    match limits.max_body_size {
        max if max > 0 && bytes > max => Err(BODY_TOO_LARGE),
        _ => Ok(()),
    }
}

/// The request-line rule on the head as sent (the express lane reads it before Pingora's
/// parser, which percent-encodes spaces and control bytes in the target and goes on): a request
/// line with more than the two spaces that separate method, target and version, or with a
/// control byte, is refused (RFC 9112 section 3.2: a recipient SHOULD NOT autocorrect an
/// invalid request line, which may be crafted to pass filters; nginx refuses it too). A line
/// that is no request line at all is left to Pingora's parser, which refuses it.
pub fn check_request_line(head: &[u8]) -> Result<(), Refusal> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
    if !version.starts_with(b"HTTP/") {
        return Ok(());
    }
    let spaces = line.iter().filter(|&&b| b == b' ').count();
    if spaces != 2 || line.iter().any(|&b| b.is_ascii_control()) {
        return Err(refuse(400, "bad_request_line"));
    }
    Ok(())
}

/// A parsed request's `Content-Length` (Pingora refused an invalid or conflicting one).
pub fn content_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Why a request was refused: the status sent and a label for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
}

/// A request head that did not arrive whole within `client.header_timeout` (the express lane's
/// read).
pub const HEADER_TIMEOUT: Refusal = refuse(408, "header_timeout");

const fn refuse(status: u16, reason: &'static str) -> Refusal {
    Refusal { status, reason }
}

/// Checks a parsed request header; `host` is the Host header or the authority of an
/// absolute-form target.
pub fn check(req: &RequestHeader, limits: &Limits) -> Result<(), Refusal> {
    // TRACE echoes the request, cookies and credentials included, back to a script that could
    // not read them (cross-site tracing); nginx answers it 405 as well.
    if matches!(req.method.as_str(), "TRACE" | "TRACK") {
        return Err(refuse(405, "method_not_allowed"));
    }
    let size: usize = req.raw_path().len()
        + req
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    check_shape(
        &Shape {
            path: req.raw_path(),
            host: request_host(req),
            host_fields: req.headers.get_all(http::header::HOST).iter().count(),
            fields: req.headers.len(),
            size,
        },
        limits,
    )
}

/// What the checks look at, gathered from a parsed header (`check`) or straight from the
/// request's bytes (the express lane, which must refuse nothing the proxy would refuse).
pub struct Shape<'a> {
    /// The request target as sent.
    pub path: &'a [u8],
    /// The authority of an absolute-form target, else the Host field (None if missing/empty).
    pub host: Option<&'a str>,
    /// How many Host fields.
    pub host_fields: usize,
    /// How many header fields.
    pub fields: usize,
    /// Target plus every field's name and value, plus 4 per field.
    pub size: usize,
}

pub fn check_shape(req: &Shape, limits: &Limits) -> Result<(), Refusal> {
    if req.fields > limits.max_headers {
        return Err(refuse(431, "too_many_headers"));
    }
    if req.size > limits.max_header_size {
        return Err(refuse(431, "header_too_large"));
    }
    let host = req.host.ok_or(refuse(400, "missing_host"))?;
    if !valid_host(host) {
        return Err(refuse(400, "bad_host"));
    }
    if req.host_fields > 1 {
        return Err(refuse(400, "duplicate_host"));
    }
    check_path(req.path)?;
    Ok(())
}

fn check_path(raw: &[u8]) -> Result<(), Refusal> {
    if raw == b"*" {
        return Ok(()); // OPTIONS *
    }
    // Absolute-form: judge the path part only.
    let path = match raw.windows(3).position(|w| w == b"://") {
        Some(i) => {
            let rest = &raw[i + 3..];
            &rest[rest.iter().position(|&b| b == b'/').unwrap_or(rest.len())..]
        }
        None => raw,
    };
    if !path.is_empty() && path[0] != b'/' {
        return Err(refuse(400, "bad_path"));
    }
    if path.iter().any(|&b| b < 0x21 || b == 0x7f || b == b'\\') {
        return Err(refuse(400, "bad_path"));
    }
    let path = &path[..path.iter().position(|&b| b == b'?').unwrap_or(path.len())];
    let decoded = percent_decode(path).ok_or(refuse(400, "bad_path"))?;
    let decoded: &[u8] = &decoded;
    if decoded.iter().any(|&b| b == 0 || b == b'\\') {
        return Err(refuse(400, "bad_path"));
    }
    if decoded.split(|&b| b == b'/').any(|seg| seg == b"..") {
        return Err(refuse(400, "path_traversal"));
    }
    Ok(())
}

/// Decodes `%XX` escapes, twice, so `%252e%252e` cannot sneak `..` past a decoding origin.
/// Most paths have no escapes: they are borrowed, not copied.
fn percent_decode(p: &[u8]) -> Option<Cow<'_, [u8]>> {
    fn once(p: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(p.len());
        let mut i = 0;
        while i < p.len() {
            if p[i] == b'%' {
                let hex = p.get(i + 1..i + 3)?;
                let s = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(s, 16).ok()?);
                i += 3;
            } else {
                out.push(p[i]);
                i += 1;
            }
        }
        Some(out)
    }
    if !p.contains(&b'%') {
        return Some(Cow::Borrowed(p));
    }
    let first = once(p)?;
    if first.contains(&b'%') {
        // A second layer that is not valid escaping is left as is: it is data, not a trick.
        return Some(Cow::Owned(once(&first).unwrap_or(first)));
    }
    Some(Cow::Owned(first))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_with_spaces_or_control_bytes_are_refused() {
        let bad = refuse(400, "bad_request_line");
        assert_eq!(
            check_request_line(b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"),
            Err(bad)
        );
        assert_eq!(
            check_request_line(b"GET /a\x01b HTTP/1.1\r\n\r\n"),
            Err(bad)
        );
        assert_eq!(check_request_line(b"GET  /a HTTP/1.1\r\n\r\n"), Err(bad));
        assert_eq!(check_request_line(b"GET /a\tb HTTP/1.1\r\n\r\n"), Err(bad));
        assert_eq!(
            check_request_line(b"GET /a HTTP/1.1\r\nHost: a b\r\n\r\n"),
            Ok(())
        );
        assert_eq!(check_request_line(b"GET /a HTTP/1.1\nHost: a\n\n"), Ok(()));
        assert_eq!(check_request_line(b"GET /a<\">{} HTTP/1.1\r\n\r\n"), Ok(()));
        assert_eq!(
            check_request_line(b"HELLO\r\n\r\n"),
            Ok(()),
            "Pingora's to refuse"
        );
    }

    /// The limits of a config that sets none.
    fn defaults() -> Limits {
        Limits::from(&crate::config::ClientSettings::default())
    }

    fn req(path: &str, host: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
        if let Some(h) = host {
            r.insert_header("Host", h).unwrap();
        }
        r
    }

    fn verdict(path: &str, host: Option<&str>) -> Result<(), &'static str> {
        check(&req(path, host), &defaults()).map_err(|r| r.reason)
    }

    #[test]
    fn ordinary_requests_pass() {
        assert_eq!(verdict("/", Some("example.com")), Ok(()));
        assert_eq!(
            verdict("/a/b.css?x=1&y=..", Some("example.com:8080")),
            Ok(())
        );
        assert_eq!(verdict("/a..b/c", Some("example.com")), Ok(()));
        assert_eq!(verdict("/%7Euser/", Some("example.com")), Ok(()));
    }

    #[test]
    fn traversal_is_refused_in_every_spelling() {
        for p in [
            "/../etc/passwd",
            "/a/../../b",
            "/a/%2e%2e/b",
            "/a/%2E%2e/",
            "/a/%252e%252e/b",
            "/..",
        ] {
            assert_eq!(
                verdict(p, Some("example.com")),
                Err("path_traversal"),
                "{p}"
            );
        }
        assert_eq!(verdict("/a%5c..%5cb", Some("example.com")), Err("bad_path"));
        assert_eq!(verdict("/a%00b", Some("example.com")), Err("bad_path"));
        assert_eq!(verdict("/a%zz", Some("example.com")), Err("bad_path"));
    }

    #[test]
    fn host_is_required_and_sane() {
        assert_eq!(verdict("/", None), Err("missing_host"));
        assert_eq!(verdict("/", Some("bad host")), Err("bad_host"));
        assert_eq!(verdict("/", Some("a/b")), Err("bad_host"));
        let mut r = req("/", Some("a.com"));
        r.append_header("Host", "b.com").unwrap();
        assert_eq!(check(&r, &defaults()).unwrap_err().reason, "duplicate_host");
    }

    #[test]
    fn length_with_chunked_is_refused() {
        assert_eq!(check_framing(true, true).unwrap_err().status, 400);
        assert_eq!(check_framing(false, true), Ok(()));
        assert_eq!(check_framing(true, false), Ok(()));
    }

    #[test]
    fn header_limits() {
        let mut r = req("/", Some("a.com"));
        r.insert_header("X-Big", "x".repeat(70_000)).unwrap();
        assert_eq!(check(&r, &defaults()).unwrap_err().status, 431);
        let mut r = req("/", Some("a.com"));
        for i in 0..120 {
            r.append_header(format!("X-{i}"), "1").unwrap();
        }
        assert_eq!(
            check(&r, &defaults()).unwrap_err().reason,
            "too_many_headers"
        );
    }
}
