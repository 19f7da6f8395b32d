//! Helpers of the cache tests: an edge in front of one origin, canned cacheable answers.

use super::{Canned, Edge, Origin, Response};

/// A config with one origin and one catch-all route; `route_extra` goes inside the route's
/// braces, `top` before everything.
pub fn edge_config(o: &Origin, route_extra: &str, top: &str) -> String {
    format!(
        "{top}origins:\n  web: {{servers: [\"{}\"]}}\nroutes:\n  - {{origin: web{route_extra}}}\n",
        o.addr
    )
}

pub fn edge_for(o: &Origin, route_extra: &str, top: &str) -> Edge {
    Edge::start(&edge_config(o, route_extra, top))
}

/// A 200 with this Cache-Control.
pub fn cc(value: &str, body: &str) -> Canned {
    Canned::new(200, &[("Cache-Control", value)], body)
}

pub fn status_of(r: &Response) -> &str {
    r.header("cache-status").unwrap_or("-")
}
