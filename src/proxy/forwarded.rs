//! The request as the origin receives it: the origin's Host when it sets one, `Connection:
//! close` when the edge will not keep the connection, and the forwarding fields (RFC 7239's
//! predecessors that origins read: `X-Forwarded-For`, `X-Forwarded-Proto`, and RFC 9110's `Via`),
//! and this edge's mark in `CDN-Loop` (RFC 8586, see `cluster::loops`).

use std::net::IpAddr;

use pingora::http::RequestHeader;
use pingora::Result;

use crate::cache::key::Scheme;
use crate::origin::Origin;

/// Rewrites the upstream request header. `close`: the edge asks the origin to close after this
/// response (a keep-alive limit was reached); `client_ip`: the peer of the client connection;
/// `loop_mark`: this edge's `cluster.node`, when set.
pub fn prepare(
    upstream: &mut RequestHeader,
    origin: &Origin,
    close: bool,
    client_ip: Option<IpAddr>,
    scheme: Scheme,
    loop_mark: Option<&str>,
) -> Result<()> {
    if let Some(h) = &origin.host_header {
        upstream.insert_header(http::header::HOST, h.clone())?;
    }
    if close {
        upstream.insert_header(http::header::CONNECTION, "close")?;
    } else {
        // The client's Connection field is about the client's connection, not this one.
        upstream.remove_header(&http::header::CONNECTION);
    }
    if let Some(node) = loop_mark {
        crate::cluster::loops::append(upstream, node)?;
    }
    forwarding_fields(upstream, client_ip, scheme)
}

/// Appends the client to `X-Forwarded-For` and this hop to `Via`; the scheme the client used.
fn forwarding_fields(
    upstream: &mut RequestHeader,
    client_ip: Option<IpAddr>,
    scheme: Scheme,
) -> Result<()> {
    if let Some(ip) = client_ip {
        let xff = match append_to(upstream, "x-forwarded-for") {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip.to_string(),
        };
        upstream.insert_header("X-Forwarded-For", xff)?;
    }
    upstream.insert_header("X-Forwarded-Proto", scheme.as_str())?;
    let via = match append_to(upstream, "via") {
        Some(prev) => format!("{prev}, 1.1 edge"),
        None => "1.1 edge".to_string(),
    };
    upstream.insert_header(http::header::VIA, via)
}

fn append_to<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_to_what_came_before() {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        r.insert_header("X-Forwarded-For", "10.0.0.1").unwrap();
        r.insert_header("Via", "1.1 cdn").unwrap();
        forwarding_fields(&mut r, Some("127.0.0.1".parse().unwrap()), Scheme::Http).unwrap();
        assert_eq!(r.headers["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(r.headers["via"], "1.1 cdn, 1.1 edge");
        assert_eq!(r.headers["x-forwarded-proto"], "http");
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        forwarding_fields(&mut r, None, Scheme::Https).unwrap();
        assert!(r.headers.get("x-forwarded-for").is_none());
        assert_eq!(r.headers["x-forwarded-proto"], "https");
        assert_eq!(r.headers["via"], "1.1 edge");
    }
}
