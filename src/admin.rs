//! The admin listener: `GET /metrics` for Prometheus, `GET /healthz` for load balancers,
//! `POST /reload`, `POST /purge` (shared with the fleet when `cluster.nats` is set) and
//! `GET /config` for operators. With `admin.token_file` every endpoint but `/healthz` requires
//! `Authorization: Bearer <token>` (401 otherwise); without one, `edge -t` allows only a
//! loopback address. No endpoint takes a body: one is read and dropped, up to `MAX_BODY` within
//! `BODY_TIMEOUT`; a larger one is refused with 413 before the endpoint runs.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::cache::purge::Purge;
use crate::cache::store::PurgeMode;
use crate::cluster::Handled;
use crate::reload::reload;
use crate::state::Edge;

pub struct Admin {
    pub edge: Arc<Edge>,
}

/// Largest request body the admin listener reads. Its endpoints take none (a purge names what
/// it removes in the query string); this bounds what a client may send along anyway.
const MAX_BODY: usize = 1 << 20;

/// Longest wait for a request body, whole (a client dripping one cannot hold the listener).
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

fn text(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .header("Content-Length", body.len())
        .header("Cache-Control", "no-store")
        .body(body)
        .expect("static response parts")
}

/// Compares a presented token with the expected one in time that depends on their lengths only,
/// not on where they first differ. An empty expected token (unreadable file) matches nothing.
fn token_matches(given: &str, expected: &str) -> bool {
    let (g, e) = (given.as_bytes(), expected.as_bytes());
    let mut diff = (g.len() != e.len()) as u8 | e.is_empty() as u8;
    for (i, b) in e.iter().enumerate() {
        diff |= b ^ g.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// Reads the request body and drops it. A declared `Content-Length` over `MAX_BODY` is refused
/// (413) before any of it is read, a chunked body as soon as it passes the limit; a body that is
/// broken or slower than `BODY_TIMEOUT` gets 400 or 408. Err is the answer to send instead of
/// the endpoint's, after which the connection is closed: the rest of the body is never read.
async fn take_body(session: &mut ServerSession) -> Result<(), Response<Vec<u8>>> {
    let declared = crate::guard::content_length(session.req_header());
    let too_large = || {
        text(
            413,
            "text/plain",
            format!("request body larger than {MAX_BODY} bytes\n").into_bytes(),
        )
    };
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let read = async {
        let mut total = 0;
        while let Some(chunk) = session.read_request_body().await? {
            total += chunk.len();
            if total > MAX_BODY {
                return Ok(false);
            }
        }
        Ok::<_, Box<pingora::Error>>(true)
    };
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(too_large()),
        Ok(Err(e)) => Err(text(
            400,
            "text/plain",
            format!("bad request body: {e}\n").into_bytes(),
        )),
        Err(_) => Err(text(
            408,
            "text/plain",
            format!("request body not received within {BODY_TIMEOUT:?}\n").into_bytes(),
        )),
    }
}

impl Admin {
    /// `POST /purge?url=|prefix=|tag=...[&soft=1]` (see `cache::purge`): applied here and,
    /// with `cluster.nats`, published to the fleet. 200 with the objects removed here (and the
    /// stream sequence); 202 when applied here but queued for the fleet (NATS unreachable), or
    /// taken by the cluster task and not yet answered; 400 for a malformed purge and 503 when
    /// too many wait, before anything is applied. The first line is always `purged N` when
    /// anything was applied.
    async fn purge(&self, query: &str) -> Response<Vec<u8>> {
        let purge = match Purge::from_query(query) {
            Ok(p) => p,
            Err(e) => return text(400, "text/plain", format!("{e}\n").into_bytes()),
        };
        let mode = match purge.mode {
            PurgeMode::Hard => "",
            PurgeMode::Soft => "mode soft (marked stale, not removed)\n",
        };
        let (status, body) = match self.edge.cluster.purge(&self.edge, purge).await {
            Handled::Local { removed, why } => (
                200,
                format!(
                    "purged {removed}\n{mode}{}",
                    why.map(|w| format!("{w}\n")).unwrap_or_default()
                ),
            ),
            Handled::Published { removed, sequence } => (
                200,
                format!("purged {removed}\n{mode}sequence {sequence}\n"),
            ),
            Handled::Queued { removed, why } => (
                202,
                format!(
                    "purged {removed}\n{mode}queued for the fleet: {why}; published when NATS \
                     is reachable\n"
                ),
            ),
            Handled::Pending => (
                202,
                "accepted: the cluster task has it and will apply and publish it\n".into(),
            ),
            Handled::Busy => (
                503,
                "not purged: too many purges wait for the cluster task; retry\n".into(),
            ),
        };
        text(status, "text/plain", body.into_bytes())
    }

    /// `POST /reload`: reloads the config file off the reactor (reading and parsing block).
    async fn reload(&self) -> Response<Vec<u8>> {
        let edge = self.edge.clone();
        let outcome = tokio::task::spawn_blocking(move || reload(&edge, "POST /reload")).await;
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
                format!("refused, the previous config keeps serving:\n{refused}\n").into_bytes(),
            ),
            Err(e) => text(
                500,
                "text/plain",
                format!("reload failed: {e}\n").into_bytes(),
            ),
        }
    }

    /// Figures read at scrape time rather than counted as they happen: server health (passive
    /// marks expire by the clock, not by an event), learned idle timeouts, the cache's size,
    /// memory.
    fn refresh_gauges(&self) {
        let m = &self.edge.metrics;
        m.upstream.refresh(
            self.edge.snapshot().origins.values(),
            self.edge.sched_delay.get(),
        );
        m.cache.refresh(&self.edge.cache);
        m.process.refresh_memory();
        m.process
            .refresh_certificates(self.edge.tls.values().map(|r| r.table()));
    }
}

#[async_trait]
impl ServeHttp for Admin {
    /// The admin API's router: the token check, then one arm per endpoint, each handing its
    /// work to a method of its own. Long as a route table is; kept whole so every endpoint and
    /// its method are read in one place.
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let path = req.uri.path().to_string();
        let method = req.method.clone();
        // Everything but the load balancers' health check needs the token, when one is set.
        let healthz = method == "GET" && path == "/healthz";
        if !healthz {
            let live = self.edge.snapshot();
            if let Some(token) = &live.admin_token {
                let given = req
                    .headers
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    // The scheme name is case-insensitive (RFC 9110 section 11.1).
                    .and_then(|v| v.split_once(' '))
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, token)| token);
                if !given.is_some_and(|g| token_matches(g.trim(), token)) {
                    let mut r = text(401, "text/plain", b"a bearer token is required\n".to_vec());
                    r.headers_mut()
                        .insert(http::header::WWW_AUTHENTICATE, "Bearer".parse().unwrap());
                    // A body is left unread: Pingora closes a connection answered before its
                    // request body was read, rather than drain it.
                    return r;
                }
            }
        }
        if healthz {
            // Open to anyone, so it reads no body: a connection that sent one is closed after
            // the answer (Pingora does not drain it), and cannot make the listener read 1 MiB.
            if !session.is_body_empty() {
                session.set_keepalive(None);
            }
        } else if let Err(refused) = take_body(session).await {
            session.set_keepalive(None);
            return refused;
        }
        match (method.as_str(), path.as_str()) {
            ("GET", "/metrics") => {
                self.refresh_gauges();
                text(200, "text/plain; version=0.0.4", self.edge.metrics.render())
            }
            ("GET", "/healthz") => {
                // Still 200 when the fleet's purge stream is out of reach: this edge serves on
                // (availability first), and says why an operator may want to look.
                let mut body = b"ok\n".to_vec();
                if let Some(detail) = self.edge.cluster.health_detail() {
                    body.extend_from_slice(format!("{detail}\n").as_bytes());
                }
                text(200, "text/plain", body)
            }
            ("POST", "/reload") => self.reload().await,
            ("POST", "/purge") => {
                let query = session.req_header().uri.query().unwrap_or("").to_string();
                self.purge(&query).await
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
            (_, "/purge") => text(405, "text/plain", b"use POST /purge\n".to_vec()),
            _ => text(
                404,
                "text/plain",
                b"not found: try /metrics, /healthz, /config, POST /reload or POST /purge\n"
                    .to_vec(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_exactly() {
        assert!(token_matches("s3cret", "s3cret"));
        assert!(!token_matches("s3cre", "s3cret"));
        assert!(!token_matches("s3cretx", "s3cret"));
        assert!(!token_matches("S3cret", "s3cret"));
        assert!(!token_matches("", ""), "an empty token locks the API");
    }
}
