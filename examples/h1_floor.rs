//! The floor of Pingora's HTTP/1 server for a cached 1 KiB response: a bare `HttpServerApp`
//! that reads each request and writes a fixed response, with no proxy phases at all. Takes the
//! edge's `-c FILE` and listens on its first `listen` address, so bench/ab.sh can run it as an
//! "edge build": `cargo build --release --example h1_floor && bash bench/ab.sh nginx
//! target/release/examples/h1_floor`.
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::listening::Service;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Floor {
    header: ResponseHeader,
    body: Bytes,
}

#[async_trait]
impl HttpServerApp for Floor {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match session.read_request().await {
            Ok(true) => {}
            _ => return None,
        }
        session.set_keepalive(Some(60));
        let header = Box::new(self.header.clone());
        session.write_response_header(header).await.ok()?;
        session
            .write_response_body(self.body.clone(), true)
            .await
            .ok()?;
        let settings = HttpPersistentSettings::for_session(&session);
        let reusable = session.finish().await.ok().flatten()?;
        Some(ReusedHttpStream::from_reusable_stream(reusable, settings))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let conf = args
        .iter()
        .position(|a| a == "-c")
        .map(|i| std::fs::read_to_string(&args[i + 1]).expect("config"))
        .unwrap_or_default();
    let listen = conf
        .lines()
        .find_map(|l| {
            l.strip_prefix("listen: [\"")?
                .split('"')
                .next()
                .map(String::from)
        })
        .unwrap_or_else(|| "127.0.0.1:8099".into());
    let mut header = ResponseHeader::build(200, Some(8)).unwrap();
    header.insert_header("content-type", "text/plain").unwrap();
    header
        .insert_header("cache-control", "max-age=3600")
        .unwrap();
    header
        .insert_header("last-modified", "Tue, 24 Nov 2026 10:00:00 GMT")
        .unwrap();
    header.insert_header("etag", "\"6743-400\"").unwrap();
    header.insert_header("accept-ranges", "bytes").unwrap();
    header.insert_header("age", "3").unwrap();
    header.insert_header("content-length", "1024").unwrap();
    let app = Floor {
        header,
        body: Bytes::from(vec![b'x'; 1024]),
    };
    let mut server = Server::new_with_opt_and_conf(
        None,
        ServerConf {
            threads: 2,
            ..Default::default()
        },
    );
    let mut service = Service::new("floor".into(), app);
    service.add_tcp(&listen);
    server.add_service(service);
    server.run_forever();
}
