//! tls-backends: the same HTTPS server on Pingora, built with one TLS backend per binary
//! (`--features rustls|openssl|boringssl`), so `bench/tls_backends.sh` can compare the
//! backends and nothing else: every request is answered with 1 KiB from memory in
//! `request_filter` (no upstream, no cache), over TLS 1.2/1.3 with h2 offered by ALPN, with
//! the listener settings Pingora gives each backend (`TlsSettings::intermediate`).
//!
//! Usage: tls-backends <listen addr> <cert.pem> <key.pem>   Env: THREADS (default 2)
//!
//! `MODE=app`: the same answer from a bare `HttpServerApp` instead (no proxy session: what a
//! server that answers before Pingora's proxy, as the edge's express lane does, could reach).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::{HttpServerApp, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::http::ResponseHeader;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

struct OneKiB(Bytes);

#[async_trait]
impl ProxyHttp for OneKiB {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let mut resp = ResponseHeader::build(200, Some(2))?;
        resp.insert_header("Content-Length", self.0.len().to_string())?;
        resp.insert_header("Cache-Control", "max-age=3600")?;
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(self.0.clone()), true)
            .await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        Err(Error::explain(
            InternalError,
            "every request is answered in request_filter",
        ))
    }
}

/// The same answer without a proxy session.
struct BareApp(Bytes);

#[async_trait]
impl HttpServerApp for BareApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !matches!(session.read_request().await, Ok(true)) {
            return None;
        }
        let mut resp = ResponseHeader::build(200, Some(2)).ok()?;
        resp.insert_header("Content-Length", self.0.len().to_string())
            .ok()?;
        resp.insert_header("Cache-Control", "max-age=3600").ok()?;
        session.write_response_header(Box::new(resp)).await.ok()?;
        session.write_response_body(self.0.clone(), true).await.ok()?;
        // h2 streams are never reused; HTTP/1 connections simply close (h2 is what this
        // mode measures).
        session.finish().await.ok()?;
        None
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, cert, key] = &args[..] else {
        eprintln!("usage: tls-backends <listen addr> <cert.pem> <key.pem>");
        std::process::exit(2);
    };
    let threads = std::env::var("THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let conf = ServerConf {
        threads,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let body = Bytes::from(vec![b'a'; 1024]);
    let mut tls = TlsSettings::intermediate(cert, key).expect("certificate and key");
    tls.enable_h2();
    if std::env::var("MODE").as_deref() == Ok("app") {
        let mut svc = pingora::services::listening::Service::new("bare".into(), BareApp(body));
        svc.add_tls_with_settings(listen, None, tls);
        server.add_service(svc);
    } else {
        let mut svc = http_proxy_service(&server.configuration, OneKiB(body));
        svc.add_tls_with_settings(listen, None, tls);
        server.add_service(svc);
    }
    server.run_forever();
}
