//! delay_relay: a TCP relay that delivers every byte, and the close, `DELAY_MS` after it
//! arrived, in each direction: a network round trip of twice the delay on loopback, for the
//! benchmarks that need one (`bench/keepalive.sh`).
//!
//! The TCP handshake's round trip is charged too. The client's connect completes at once (the
//! kernel answers it on loopback), so nothing it sends is delivered upstream before three
//! delays after the accept: as a SYN, its SYN-ACK and the first data segment would take on a
//! real path. A connection opened ahead of need (the edge's `keepalive.warm`) has paid that by
//! the time a request uses it; one opened for the request has not.
//!
//! Prints `accept` for every connection accepted.
//!
//! Usage: delay_relay LISTEN UPSTREAM DELAY_MS   (e.g. 127.0.0.1:19300 127.0.0.1:19301 5)

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, delay] = &args[..] else {
        eprintln!("usage: delay_relay LISTEN UPSTREAM DELAY_MS");
        std::process::exit(2);
    };
    let delay = Duration::from_millis(delay.parse().expect("DELAY_MS: a number"));
    let listener = TcpListener::bind(listen).await.expect("listen");
    loop {
        let Ok((down, _)) = listener.accept().await else {
            continue;
        };
        // One line per connection: the benchmark counts connections opened, used or not.
        println!("accept");
        let upstream = upstream.clone();
        tokio::spawn(async move {
            // The upstream connection is opened at once, as the client's SYN would reach it.
            let Ok(up) = TcpStream::connect(&upstream).await else {
                return;
            };
            let _ = (down.set_nodelay(true), up.set_nodelay(true));
            let (down_read, down_write) = down.into_split();
            let (up_read, up_write) = up.into_split();
            let handshake_done = Instant::now() + 2 * delay;
            tokio::spawn(delayed(down_read, up_write, delay, handshake_done));
            delayed(up_read, down_write, delay, Instant::now()).await;
        });
    }
}

/// Copies `from` to `to`, each chunk (and the end of stream) leaving `delay` after it came, or
/// after `not_before` if it came earlier.
async fn delayed(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    delay: Duration,
    not_before: Instant,
) {
    let (line, mut due) = mpsc::unbounded_channel::<(Instant, Option<Vec<u8>>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            let Some(bytes) = chunk else {
                let _ = to.shutdown().await;
                return;
            };
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let chunk = match from.read(&mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(buf[..n].to_vec()),
        };
        let end = chunk.is_none();
        if line
            .send((Instant::now().max(not_before) + delay, chunk))
            .is_err()
            || end
        {
            break;
        }
    }
    drop(line);
    let _ = writer.await;
}
