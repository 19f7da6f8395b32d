//! Slow clients cannot hold the edge: a request head must arrive whole within
//! `client.header_timeout` of its first byte, however slowly it drips (slowloris), while other
//! clients are served as usual.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn slowloris_connections_are_closed_at_the_header_deadline() {
    let o = Origin::start("o");
    let edge = Edge::start(&format!(
        "client: {{header_timeout: 1s}}\norigins:\n  web: {{servers: [\"{}\"]}}\nroutes:\n  - {{origin: web}}\n",
        o.addr
    ));
    const SLOW: usize = 300;
    let mut slow: Vec<TcpStream> = (0..SLOW)
        .map(|_| {
            let mut s = TcpStream::connect(edge.addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: a.com\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    let started = Instant::now();

    // A normal client while the slow ones drip.
    let stop = Arc::new(AtomicBool::new(false));
    let normal = {
        let (stop, addr) = (stop.clone(), edge.addr);
        thread::spawn(move || {
            let mut c = Client::connect(addr);
            let mut latencies = Vec::new();
            for i in 0..10_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let t = Instant::now();
                let r = c.get("a.com", &format!("/n{}", i % 20));
                latencies.push(t.elapsed());
                assert_eq!(r.status, 200);
                if r.header("connection") == Some("close") {
                    // keepalive_requests reached: a new connection, as any client would.
                    c = Client::connect(addr);
                }
            }
            latencies
        })
    };

    // One byte per connection every 500 ms (pacing the drip, not waiting for anything), for
    // up to 4 s: the edge must close them all after about 1 s.
    let mut open = SLOW;
    for _round in 0..8 {
        open = 0;
        for s in &mut slow {
            if s.write_all(b"a").is_ok() {
                open += 1;
            }
        }
        if open == 0 {
            break;
        }
        thread::sleep(Duration::from_millis(500));
    }
    let mut timed_out = 0;
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        if got.starts_with(b"HTTP/1.1 408") {
            timed_out += 1;
        }
    }
    let closed_after = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let mut latencies = normal.join().unwrap();
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    eprintln!(
        "{timed_out} of {SLOW} slow connections answered 408 and closed within {closed_after:?}; \
         normal client: {} requests, p99 {p99:?}",
        latencies.len()
    );
    assert_eq!(timed_out, SLOW, "still open after the drip: {open}");
    assert!(latencies.len() > 10, "the normal client was starved");
    assert_eq!(
        edge.metric("edge_refused_requests_total{reason=\"header_timeout\"}"),
        SLOW as f64
    );
    assert_eq!(o.requests().iter().filter(|r| r.path == "/").count(), 0);
}

/// A client that stops reading a response is dropped after `client.send_timeout` without
/// progress, on the proxy's path (a miss) and on the express lane (a hit): the connection ends
/// with the body cut short instead of being held open.
#[test]
fn a_client_that_stops_reading_is_dropped_at_the_send_timeout() {
    let o = Origin::start("o");
    // Larger than what loopback socket buffers absorb, so the edge's writes stall.
    let big = "x".repeat(48 << 20);
    o.set(
        "/miss",
        Canned::new(200, &[("Cache-Control", "no-store")], &big),
    );
    o.set(
        "/hit",
        Canned::new(200, &[("Cache-Control", "max-age=60")], &big),
    );
    let edge = Edge::start(&format!(
        "client: {{send_timeout: 1s}}\ncache: {{max_object_size: 64MiB}}\norigins:\n  web: {{servers: [\"{}\"]}}\nroutes:\n  - {{origin: web}}\n",
        o.addr
    ));
    assert_eq!(edge.get("a.com", "/hit").body.len(), big.len());
    assert_eq!(edge.get("a.com", "/hit").body.len(), big.len());
    for (path, logged) in [
        ("/miss", " /miss status=200"),
        ("/hit", "writing to the client failed"),
    ] {
        let mut s = TcpStream::connect(edge.addr).unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a.com\r\n\r\n").as_bytes())
            .unwrap();
        // Not reading: the edge must give up on its own and say so in the access log.
        assert!(
            wait_until(Duration::from_secs(20), || edge.log().contains(logged)),
            "{path}: the edge still waits on a client that does not read:\n{}",
            edge.log()
        );
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        assert!(
            got.len() < big.len(),
            "{path}: the whole body arrived ({} bytes)",
            got.len()
        );
    }
}
