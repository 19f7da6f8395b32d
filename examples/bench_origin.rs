//! The origin for bench/run.sh's miss scenario: answers every request after a fixed delay with
//! a cacheable 1 KiB body, keep-alive, and counts the TCP connections it accepted.
//!
//!     cargo run --release --example bench_origin -- 127.0.0.1:19090 10
//!
//! `GET /__stats` answers `accepted <n>` (that request's own connection included), `requests
//! <n>` (every other request) and `objects <n>` (distinct request targets among them).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:19090".into());
    let delay = Duration::from_millis(args.next().and_then(|a| a.parse().ok()).unwrap_or(10));
    let listener = TcpListener::bind(&addr).await.expect("bind");
    let accepted = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let targets: Arc<Mutex<HashSet<Vec<u8>>>> = Arc::default();
    let body = vec![b'm'; 1024];
    eprintln!("bench_origin on {addr}, delay {delay:?}");
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        accepted.fetch_add(1, Ordering::Relaxed);
        let (accepted, body) = (accepted.clone(), body.clone());
        let (requests, targets) = (requests.clone(), targets.clone());
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(4096);
            let mut chunk = [0u8; 4096];
            loop {
                // One request header (GETs only: no body).
                let end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                };
                let stats = buf.starts_with(b"GET /__stats");
                if !stats {
                    requests.fetch_add(1, Ordering::Relaxed);
                    let target = buf.split(|&b| b == b' ').nth(1).unwrap_or_default();
                    targets.lock().unwrap().insert(target.to_vec());
                }
                buf.drain(..end);
                let resp = if stats {
                    let text = format!(
                        "accepted {}\nrequests {}\nobjects {}\n",
                        accepted.load(Ordering::Relaxed),
                        requests.load(Ordering::Relaxed),
                        targets.lock().unwrap().len()
                    );
                    format!(
                        "HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: {}\r\n\r\n{text}",
                        text.len()
                    )
                    .into_bytes()
                } else {
                    tokio::time::sleep(delay).await;
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\nCache-Control: max-age=3600\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(&body);
                    r
                };
                if sock.write_all(&resp).await.is_err() {
                    return;
                }
            }
        });
    }
}
