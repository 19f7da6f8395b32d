//! The keep-alive race, reproduced: an origin that closes idle connections after a short
//! timeout, a relay that delays bytes a few milliseconds each way (a real network), and clients
//! sending POSTs after idle gaps that straddle the origin's timeout. Without learning the edge
//! loses POSTs (a POST sent on a connection the origin is closing cannot be retried); with
//! learning it must lose none.

mod common;

use std::net::SocketAddr;
use std::thread;
use std::time::Duration;

use common::*;

/// Deterministic gaps spread evenly across `center ± spread`.
fn gaps(center: Duration, spread: Duration, n: usize, seed: usize) -> Vec<Duration> {
    (0..n)
        .map(|i| {
            let k = ((i * 7 + seed * 3) % n) as f64 / (n - 1).max(1) as f64; // 0..=1
            center - spread + spread.mul_f64(2.0 * k)
        })
        .collect()
}

/// `clients` keep-alive clients each send `n` requests (built by `request(client, i)`)
/// separated by idle gaps; returns how many did not get a 200.
fn requests_with_gaps(
    edge: SocketAddr,
    clients: usize,
    n: usize,
    center: Duration,
    spread: Duration,
    request: fn(usize, usize) -> String,
) -> usize {
    let handles: Vec<_> = (0..clients)
        .map(|w| {
            thread::spawn(move || {
                let mut failed = 0;
                let mut c = Client::connect(edge);
                for (i, gap) in gaps(center, spread, n, w).into_iter().enumerate() {
                    match c.send_raw(&request(w, i)) {
                        Some(r) if r.status == 200 => {}
                        _ => {
                            failed += 1;
                            c = Client::connect(edge);
                        }
                    }
                    // The idle gap under test (pacing, not waiting for anything).
                    thread::sleep(gap);
                }
                failed
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).sum()
}

fn post(w: usize, i: usize) -> String {
    format!(
        "POST /order/{w}/{i} HTTP/1.1\r\nHost: shop.example\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nbuy=1"
    )
}

fn get(w: usize, i: usize) -> String {
    format!("GET /item/{w}/{i} HTTP/1.1\r\nHost: shop.example\r\n\r\n")
}

fn edge_before(relay: &Relay, learn: bool) -> Edge {
    Edge::start(&format!(
        "origins:\n  shop:\n    servers: [\"{}\"]\n    keepalive: {{idle_timeout: 30s, learn: {learn}}}\nroutes:\n  - {{origin: shop, cache: {{enabled: false}}}}\n",
        relay.addr
    ))
}

fn learned(edge: &Edge) -> f64 {
    edge.metrics()
        .lines()
        .find(|l| l.starts_with("edge_upstream_idle_timeout_learned_seconds{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn lost(edge: &Edge) -> f64 {
    edge.metric("edge_upstream_connection_lost_total{origin=\"shop\",outcome=\"failed\"}")
}

#[test]
fn learned_idle_timeouts_lose_no_post() {
    const DELAY: Duration = Duration::from_millis(8);
    const CLIENTS: usize = 4;

    // Origin 1: closes idle connections after 300 ms and does not say so.
    let silent = Origin::start_with_idle("silent", Duration::from_millis(300));
    silent.set_keep_alive_header(None);
    let silent_relay = Relay::start(silent.addr, DELAY);
    // Origin 2: closes after 1 s and says `Keep-Alive: timeout=1`.
    let honest = Origin::start_with_idle("honest", Duration::from_secs(1));
    honest.set_keep_alive_header(Some("timeout=1"));
    let honest_relay = Relay::start(honest.addr, DELAY);

    let off = edge_before(&silent_relay, false);
    let off_get = edge_before(&silent_relay, false);
    let on_header = edge_before(&honest_relay, true);
    // Started last, so its first probe (which times the origin's close) does not share the
    // two cores with three other edges starting: a probe can only over-measure, and once in
    // CI it read 736 ms for this 300 ms origin while they started.
    let on = edge_before(&silent_relay, true);

    // Learning needs one measurement (the probe takes the origin's timeout to finish).
    assert!(
        wait_until(Duration::from_secs(10), || learned(&on) > 0.0),
        "the silent origin's timeout was never learned"
    );
    let t = learned(&on);
    assert!(
        (0.28..0.40).contains(&t),
        "learned {t}s for a 300 ms origin"
    );
    // The header is read on the first response.
    assert_eq!(on_header.get("shop.example", "/warm").status, 200);
    assert!(wait_until(Duration::from_secs(5), || learned(&on_header) == 1.0));

    // The POST is lost when it leaves the edge before the origin's close reaches it but
    // arrives after the origin closed: idle gaps within a round trip of the moment the origin
    // closes, which is its 300 ms timer plus its scheduling slack. Gaps of 300-330 ms straddle
    // it; the 16 ms round trip is the window.
    let spread = Duration::from_millis(20);
    let center = Duration::from_millis(320);
    let (off_failed, on_failed, header_failed, get_failed) = thread::scope(|s| {
        let d = s.spawn(|| requests_with_gaps(off_get.addr, CLIENTS, 30, center, spread, get));
        let a = s.spawn(|| requests_with_gaps(off.addr, CLIENTS, 45, center, spread, post));
        let b = s.spawn(|| requests_with_gaps(on.addr, CLIENTS, 45, center, spread, post));
        let c = s.spawn(|| {
            requests_with_gaps(
                on_header.addr,
                CLIENTS,
                6,
                Duration::from_millis(1015),
                spread,
                post,
            )
        });
        (
            a.join().unwrap(),
            b.join().unwrap(),
            c.join().unwrap(),
            d.join().unwrap(),
        )
    });
    let total = CLIENTS * 45;
    eprintln!(
        "POSTs failed: learning off {off_failed}/{total} (origin lost {}), learning on {on_failed}/{total}, \
         learning on with Keep-Alive header {header_failed}/{}",
        lost(&off),
        CLIENTS * 6
    );
    // GETs hit the same race without learning, but are retried on a new connection.
    let retried =
        off_get.metric("edge_upstream_connection_lost_total{origin=\"shop\",outcome=\"retried\"}");
    eprintln!("GETs without learning: {get_failed} failed, {retried} retried after hitting a closed connection");
    assert_eq!(get_failed, 0, "an idempotent request failed");
    assert!(
        retried >= 1.0,
        "no GET met the race: the retry path was not exercised"
    );
    assert_eq!(lost(&off_get), 0.0);
    // Seen from 2 to 27 losses per run on this machine: at least one shows the race is real.
    assert!(
        off_failed >= 1,
        "the race did not show without learning ({off_failed} failures): the test proves nothing"
    );
    assert_eq!(
        lost(&off) as usize,
        off_failed,
        "failures without learning are exactly the lost connections"
    );
    if on_failed > 0 {
        let log = on.log();
        let interesting: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains("status=200") && !l.contains("pingora_core::server"))
            .collect();
        eprintln!(
            "learning-on edge log (all but 200s):\n{}",
            interesting.join("\n")
        );
    }
    assert_eq!(on_failed, 0, "learning on: POSTs failed");
    assert_eq!(header_failed, 0, "learning from Keep-Alive: POSTs failed");
    assert_eq!(lost(&on), 0.0);
    assert_eq!(lost(&on_header), 0.0);
    let effective = on.metric(&format!(
        "edge_upstream_idle_timeout_effective_seconds{{origin=\"shop\",server=\"{}\"}}",
        silent_relay.addr
    ));
    // Against what is learned now: a probe round during the run may have moved it.
    let learned_now = learned(&on);
    // Below what was learned, by a margin that stays sane (it grows with the RTT, which a
    // loaded machine stretches).
    assert!(
        effective > learned_now / 2.0 && effective < learned_now,
        "effective idle {effective}s vs learned {learned_now}s"
    );
}
