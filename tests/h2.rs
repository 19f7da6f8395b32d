//! HTTP/2 toward clients: the limits the edge announces and holds to, and idle connections
//! closed after the keep-alive timeout. Over cleartext h2 (prior knowledge) with the `h2`
//! crate as the client, which shows the server's SETTINGS; the same settings apply on TLS
//! listeners (one proxy serves both).

mod common;

use std::time::{Duration, Instant};

use common::*;

fn h2c_edge(origin: &Origin, client: &str) -> Edge {
    Edge::start_listening(
        "{address: \"127.0.0.1:{PORT}\", http2: true}",
        &format!(
            "client: {{{client}}}\norigins:\n  web: {{servers: [\"{}\"]}}\nroutes:\n  - {{origin: web, cache: {{enabled: false}}}}\n",
            origin.addr
        ),
    )
}

/// A cleartext h2 connection (prior knowledge) to the edge, its connection task running.
async fn connect(
    addr: std::net::SocketAddr,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    (client, tokio::spawn(conn))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn get(
    client: &mut h2::client::SendRequest<bytes::Bytes>,
    path: &str,
    header: Option<(&str, String)>,
) -> Result<u16, h2::Error> {
    let mut req = http::Request::get(format!("http://web.test{path}"));
    if let Some((name, value)) = header {
        req = req.header(name, value);
    }
    let (resp, _) = client.send_request(req.body(()).unwrap(), true)?;
    let resp = resp.await?;
    let status = resp.status().as_u16();
    // Read the body to its end, so the stream is closed on both sides.
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    Ok(status)
}

#[test]
fn h2_limits_are_announced_and_held_and_idle_connections_closed() {
    let origin = Origin::start("web");
    let edge = h2c_edge(
        &origin,
        "h2_max_concurrent_streams: 7, h2_max_header_list_size: 16KiB, keepalive_timeout: 1s",
    );
    runtime().block_on(async {
        let (mut client, connection) = connect(edge.addr).await;

        assert_eq!(get(&mut client, "/a", None).await.unwrap(), 200);
        // The server's SETTINGS arrived before its first answer.
        assert_eq!(client.current_max_send_streams(), 7);

        // A header list over the limit is refused, and never reaches the origin.
        let big = Some(("x-big", "a".repeat(20 << 10)));
        let refused = get(&mut client, "/big", big).await;
        assert!(
            !matches!(refused, Ok(200)),
            "a 20 KiB header list was served: {refused:?}"
        );
        assert_eq!(origin.count("/big"), 0);

        // A fresh connection after the refusal: the one above may have been reset by it.
        drop(connection);
        let (mut client, connection) = connect(edge.addr).await;
        assert_eq!(get(&mut client, "/b", None).await.unwrap(), 200);
        // With no stream open, the connection is closed after keepalive_timeout (1 s).
        let idle_from = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(10), connection).await;
        let idle = idle_from.elapsed();
        assert!(ended.is_ok(), "an idle h2 connection was kept past 10 s");
        assert!(
            idle >= Duration::from_millis(900) && idle < Duration::from_secs(5),
            "closed after {idle:?} idle, keepalive_timeout is 1 s"
        );
    });
}

/// One request on an h2 connection: status, fields and body.
async fn fetch(
    client: &mut h2::client::SendRequest<bytes::Bytes>,
    method: &str,
    path: &str,
    fields: &[(&str, &str)],
) -> (u16, http::HeaderMap, Vec<u8>) {
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://web.test{path}"));
    for (name, value) in fields {
        req = req.header(*name, *value);
    }
    let (resp, _) = client.send_request(req.body(()).unwrap(), true).unwrap();
    let (parts, mut body) = resp.await.unwrap().into_parts();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    (parts.status.as_u16(), parts.headers, bytes)
}

#[test]
fn fresh_hits_on_h2_streams_take_the_express_lane_and_everything_else_the_proxy() {
    let origin = Origin::start("web");
    let body = "h".repeat(3000);
    origin.set(
        "/x",
        Canned::new(
            200,
            &[
                ("Cache-Control", "max-age=600"),
                ("ETag", "\"v1\""),
                ("Surrogate-Key", "tag-for-this-cache-only"),
            ],
            &body,
        ),
    );
    let edge = Edge::start_listening(
        "{address: \"127.0.0.1:{PORT}\", http2: true}",
        &format!(
            "origins:\n  web: {{servers: [\"{}\"]}}\nroutes:\n  - {{origin: web}}\n",
            origin.addr
        ),
    );
    let lane = || edge.metric("edge_express_hits_total");
    runtime().block_on(async {
        let (mut client, _connection) = connect(edge.addr).await;

        // A miss goes through the proxy and stores the object.
        let (status, _, got) = fetch(&mut client, "GET", "/x", &[]).await;
        assert_eq!((status, got.len()), (200, 3000));
        assert_eq!(lane(), 0.0);

        // The hit is answered by the lane, with the head the proxy's fresh-hit path sends.
        let (status, fields, got) = fetch(&mut client, "GET", "/x", &[]).await;
        assert_eq!(status, 200);
        assert!(got == body.as_bytes(), "wrong body");
        assert_eq!(lane(), 1.0);
        let field = |name: &str| fields.get(name).and_then(|v| v.to_str().ok());
        assert_eq!(field("content-length"), Some("3000"));
        assert_eq!(field("etag"), Some("\"v1\""));
        assert!(field("age").is_some(), "{fields:?}");
        assert!(field("date").is_some(), "{fields:?}");
        assert_eq!(field("accept-ranges"), Some("bytes"));
        assert!(
            field("cache-status").is_some_and(|s| s.contains("hit")),
            "{fields:?}"
        );
        assert!(
            field("surrogate-key").is_none(),
            "a field for this cache only was sent"
        );

        let (status, fields, got) = fetch(&mut client, "HEAD", "/x", &[]).await;
        assert_eq!((status, got.len()), (200, 0));
        assert_eq!(fields.get("content-length").unwrap(), "3000");
        assert_eq!(lane(), 2.0);

        // What the hit rule leaves to the proxy: conditions, ranges, client revalidation.
        let (status, _, _) = fetch(&mut client, "GET", "/x", &[("if-none-match", "\"v1\"")]).await;
        assert_eq!(status, 304);
        let (status, _, got) = fetch(&mut client, "GET", "/x", &[("range", "bytes=0-9")]).await;
        assert_eq!((status, got.len()), (206, 10));
        let (status, _, _) =
            fetch(&mut client, "GET", "/x", &[("cache-control", "no-cache")]).await;
        assert_eq!(status, 200);
        assert_eq!(lane(), 2.0, "the proxy's requests went the lane's way");
        assert_eq!(
            origin.count("/x"),
            2,
            "only the miss and the client's revalidation"
        );
    });
    // Six requests, each counted once, whichever path answered it (the proxy logs after its
    // client has the answer: waited for).
    let h2 = "edge_requests_by_protocol_total{protocol=\"h2\",scheme=\"http\"}";
    assert!(
        wait_until(Duration::from_secs(5), || edge.metric(h2) == 6.0),
        "{}",
        edge.metric(h2)
    );
}
