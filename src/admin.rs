//! The admin listener: `GET /metrics` for Prometheus, `GET /healthz` for load balancers,
//! `POST /reload` and `GET /config` for operators. Bind it to loopback or a private interface:
//! it has no authentication.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::live::Edge;
use crate::metrics::metrics;
use crate::reload::reload;

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
                s.set_up(s.health().is_up());
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
            ("POST", "/reload") => {
                let edge = self.edge.clone();
                let outcome =
                    tokio::task::spawn_blocking(move || reload(&edge, "POST /reload")).await;
                match outcome {
                    Ok(Ok(applied)) => {
                        let mut body = format!(
                            "reloaded: version {}{}\n",
                            applied.version,
                            if applied.unchanged {
                                " (unchanged)"
                            } else {
                                ""
                            }
                        );
                        if !applied.pending_restart.is_empty() {
                            body.push_str(&format!(
                                "not applied until a restart or upgrade (-u): {}\n",
                                applied.pending_restart.join(", ")
                            ));
                        }
                        text(200, "text/plain", body.into_bytes())
                    }
                    Ok(Err(refused)) => text(
                        422,
                        "text/plain",
                        format!("refused, the previous config keeps serving:\n{refused}\n")
                            .into_bytes(),
                    ),
                    Err(e) => text(
                        500,
                        "text/plain",
                        format!("reload failed: {e}\n").into_bytes(),
                    ),
                }
            }
            ("GET", "/config") => {
                let live = self.edge.snapshot();
                let loaded = live
                    .loaded_at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or_default();
                let mut body = format!("# version: {}\n# loaded_at: {loaded}\n", live.version);
                if !live.pending_restart.is_empty() {
                    body.push_str(&format!(
                        "# not applied until a restart or upgrade (-u): {}\n",
                        live.pending_restart.join(", ")
                    ));
                }
                body.push_str(&live.source);
                text(200, "text/yaml; charset=utf-8", body.into_bytes())
            }
            (_, "/metrics" | "/healthz" | "/config") => {
                text(405, "text/plain", b"method not allowed\n".to_vec())
            }
            (_, "/reload") => text(405, "text/plain", b"use POST /reload\n".to_vec()),
            _ => text(
                404,
                "text/plain",
                b"not found: try /metrics, /healthz, /config or POST /reload\n".to_vec(),
            ),
        }
    }
}
