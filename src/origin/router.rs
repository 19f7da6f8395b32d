//! Route matching: host (exact, `*.suffix`, `*`) and path prefix, most specific first.
//!
//! Specificity: an exact host beats any wildcard, a longer `*.suffix` beats a shorter one, and
//! `*` comes last; among equal hosts the longest path prefix wins; among equals, config order.
//! That is what nginx's `server_name` + `location` prefix matching gives operators, flattened.

use std::sync::Arc;

use crate::config::{RouteCache, RouteConfig};

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Exact(String),
    /// `*.example.com` stored as `.example.com`: matches any subdomain, not the bare domain.
    Suffix(String),
    Any,
}

#[derive(Debug, Clone)]
pub struct Route {
    /// `routes[i]` in the config, for logs and metrics labels (shared: requests keep a copy).
    pub name: Arc<str>,
    host: HostMatch,
    path_prefix: String,
    pub origin: String,
    pub cache: Arc<RouteCache>,
}

pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    pub fn new(routes: &[RouteConfig]) -> Self {
        let mut routes: Vec<(usize, Route)> = routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let host = if r.host == "*" {
                    HostMatch::Any
                } else if let Some(s) = r.host.strip_prefix('*') {
                    HostMatch::Suffix(s.to_ascii_lowercase())
                } else {
                    HostMatch::Exact(r.host.to_ascii_lowercase())
                };
                let route = Route {
                    name: format!("routes[{i}]").into(),
                    host,
                    path_prefix: r.path_prefix.clone(),
                    origin: r.origin.clone(),
                    cache: Arc::new(r.cache.clone()),
                };
                (i, route)
            })
            .collect();
        routes.sort_by_key(|(i, r)| {
            let host_rank = match &r.host {
                HostMatch::Exact(_) => (2, 0),
                HostMatch::Suffix(s) => (1, s.len()),
                HostMatch::Any => (0, 0),
            };
            (
                std::cmp::Reverse(host_rank),
                std::cmp::Reverse(r.path_prefix.len()),
                *i,
            )
        });
        Router {
            routes: routes.into_iter().map(|(_, r)| r).collect(),
        }
    }

    /// `host` is the request's Host without port, lowercased; `path` the request path.
    pub fn route(&self, host: &str, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| {
            let host_ok = match &r.host {
                HostMatch::Exact(h) => h == host,
                HostMatch::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
                HostMatch::Any => true,
            };
            host_ok && path.starts_with(r.path_prefix.as_str())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(host: &str, prefix: &str, origin: &str) -> RouteConfig {
        RouteConfig {
            host: host.into(),
            path_prefix: prefix.into(),
            origin: origin.into(),
            cache: Default::default(),
        }
    }

    #[test]
    fn most_specific_wins() {
        let router = Router::new(&[
            r("*", "/", "default"),
            r("*.example.com", "/", "wild"),
            r("*.img.example.com", "/", "img"),
            r("www.example.com", "/", "www"),
            r("www.example.com", "/static/", "static"),
            r("*", "/api/", "api"),
        ]);
        let o = |h: &str, p: &str| router.route(h, p).map(|r| r.origin.as_str());
        assert_eq!(o("www.example.com", "/static/a.css"), Some("static"));
        assert_eq!(o("www.example.com", "/index.html"), Some("www"));
        assert_eq!(o("a.example.com", "/"), Some("wild"));
        assert_eq!(o("x.img.example.com", "/"), Some("img"));
        assert_eq!(
            o("example.com", "/"),
            Some("default"),
            "*.x does not match x itself"
        );
        assert_eq!(o("other.org", "/api/v1"), Some("api"));
        assert_eq!(o("other.org", "/"), Some("default"));
    }

    #[test]
    fn no_match() {
        let router = Router::new(&[r("www.example.com", "/", "www")]);
        assert!(router.route("evil.com", "/").is_none());
    }
}
