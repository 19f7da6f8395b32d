//! Loop detection between edges (RFC 8586 `CDN-Loop`). Every edge appends its node name to the
//! requests it forwards; an edge that finds its own name in a request it receives answers
//! `508 Loop Detected` instead of forwarding it again. A misconfigured cycle of tiers (front ->
//! shield -> front) would otherwise bounce each miss until something timed out, with every hop
//! holding a connection.

use pingora::http::RequestHeader;

use crate::guard::Refusal;

/// A request that already passed through this edge.
pub const LOOP: Refusal = Refusal {
    status: 508,
    reason: "loop",
};

/// Whether `node` is among the CDN identifiers of the request's `CDN-Loop` fields (each
/// member is `cdn-id *( ";" parameter )`; names compare case-insensitively).
pub fn came_through(req: &RequestHeader, node: &str) -> bool {
    req.headers
        .get_all("cdn-loop")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|member| member.split(';').next().unwrap_or("").trim())
        .any(|id| id.eq_ignore_ascii_case(node))
}

/// Adds `node` to the end of the upstream request's `CDN-Loop` list (fields received from the
/// client are kept, joined into one).
pub fn append(upstream: &mut RequestHeader, node: &str) -> pingora::Result<()> {
    let mut list: Vec<&str> = upstream
        .headers
        .get_all("cdn-loop")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    list.push(node);
    let value = list.join(", ");
    upstream.insert_header("CDN-Loop", value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(fields: &[&str]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for f in fields {
            r.append_header("CDN-Loop", *f).unwrap();
        }
        r
    }

    #[test]
    fn finds_the_node_among_members_and_parameters() {
        let r = req(&["cdn-a; v=1, Edge-FRA-1", "other"]);
        assert!(came_through(&r, "edge-fra-1"));
        assert!(came_through(&r, "other"));
        assert!(!came_through(&r, "edge-fra"), "whole names only");
        assert!(!came_through(&req(&[]), "edge-fra-1"));
    }

    #[test]
    fn appends_to_what_came_in() {
        let mut r = req(&["cdn-a", "cdn-b"]);
        append(&mut r, "edge-1").unwrap();
        assert_eq!(r.headers.get("cdn-loop").unwrap(), "cdn-a, cdn-b, edge-1");
        assert_eq!(r.headers.get_all("cdn-loop").iter().count(), 1);
        let mut r = req(&[]);
        append(&mut r, "edge-1").unwrap();
        assert_eq!(r.headers.get("cdn-loop").unwrap(), "edge-1");
    }
}
