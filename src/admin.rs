//! The admin listener: `/metrics` for Prometheus and `/healthz` for load balancers. It stays on
//! loopback unless the operator says otherwise, and shares nothing with the proxy's listeners.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::live::Edge;
use crate::metrics::metrics;

pub struct Admin {
    pub edge: Arc<Edge>,
}

fn text(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .header("Content-Length", body.len())
        .header("Cache-Control", "no-store")
        .body(body)
        .expect("static response parts")
}

impl Admin {
    /// Health gauges are derived at scrape time: passive marks expire by the clock, not by an
    /// event, so only a read at scrape time shows them exactly.
    fn refresh_gauges(&self) {
        let live = self.edge.snapshot();
        for origin in live.origins.values() {
            for s in &origin.servers {
                s.set_up(s.health.is_up());
            }
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let path = req.uri.path().to_string();
        let method = req.method.clone();
        match (method.as_str(), path.as_str()) {
            ("GET", "/metrics") => {
                self.refresh_gauges();
                text(200, "text/plain; version=0.0.4", metrics().render())
            }
            ("GET", "/healthz") => text(200, "text/plain", b"ok\n".to_vec()),
            (_, "/metrics" | "/healthz") => {
                text(405, "text/plain", b"method not allowed\n".to_vec())
            }
            _ => text(
                404,
                "text/plain",
                b"not found: try /metrics or /healthz\n".to_vec(),
            ),
        }
    }
}
