//! Hosts as the edge understands them: which Host values are well formed, which host a request
//! names, and the one normalized form that routing, cache keys and purges compare.

use pingora::http::RequestHeader;

/// A Host value (RFC 9110 section 7.2): a DNS name, IPv4 literal or bracketed IPv6 literal,
/// with an optional numeric port. Underscores are accepted, as nginx does, because real
/// internal names carry them.
pub fn valid_host(h: &str) -> bool {
    if h.is_empty() || h.len() > 255 {
        return false;
    }
    let (name, port) = match h.rsplit_once(':') {
        Some((n, _)) if !n.ends_with(']') && n.contains(':') => (h, None), // bare IPv6
        Some((n, p)) => (n, Some(p)),
        None => (h, None),
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    if let Some(v6) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// The request's host: the authority of an absolute-form target, else the Host header.
pub fn request_host(req: &RequestHeader) -> Option<&str> {
    if let Some(a) = req.uri.authority() {
        return Some(a.as_str());
    }
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty())
}

/// Lowercase, without port or trailing dot: `WWW.Example.com.:8080` is `www.example.com`.
pub fn normalize_host(host: &str) -> String {
    let h = if let Some(rest) = host.strip_prefix('[') {
        // IPv6 literal: keep the brackets, drop the port.
        match rest.find(']') {
            Some(end) => &host[..end + 2],
            None => host,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalized() {
        assert_eq!(normalize_host("WWW.Example.com:8080"), "www.example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("[::1]"), "[::1]");
    }
}
