//! Warm upstream connections (`keepalive.warm`): requests spaced wider than the origin's idle
//! timeout find a connection already open instead of waiting for a connect, and the edge stops
//! keeping connections open for a server that gets no requests or is down.
//!
//! The origin sits behind a delay relay (`common::relay`) that charges the TCP handshake's
//! round trip to a new connection's first bytes, as a real path would.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::tls::*;
use common::*;

/// One way of the relay: a round trip is twice this.
const DELAY: Duration = Duration::from_millis(25);

fn edge_for(target: std::net::SocketAddr, keepalive: &str, extra: &str) -> Edge {
    Edge::start(&format!(
        "origins:\n  app:\n    servers: [\"{target}\"]\n    keepalive: {{{keepalive}}}\n{extra}routes:\n  - {{origin: app, cache: {{enabled: false}}}}\n"
    ))
}

fn warm_ready(edge: &Edge, server: std::net::SocketAddr) -> f64 {
    edge.metric(&format!(
        "edge_upstream_warm_connections{{origin=\"app\",server=\"{server}\"}}"
    ))
}

fn opened(edge: &Edge, reason: &str) -> f64 {
    edge.metric(&format!(
        "edge_upstream_connections_opened_total{{origin=\"app\",reason=\"{reason}\"}}"
    ))
}

/// Sends `n` GETs on one client connection, each `gap` after the previous answer; returns
/// each one's latency.
fn spaced_gets(edge: &Edge, n: usize, gap: Duration) -> Vec<Duration> {
    let mut c = edge.client();
    (0..n)
        .map(|i| {
            let t = Instant::now();
            let r = c.get("app.example", &format!("/item/{i}"));
            let took = t.elapsed();
            assert_eq!(r.status, 200);
            // The idle gap under test (pacing, not waiting for anything).
            thread::sleep(gap);
            took
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// What one edge with `warm: 1` and one without saw, sending the same spaced requests.
struct WarmAgainstCold {
    warm: Edge,
    cold: Edge,
    /// Requests that waited for a handshake, with warm and without.
    waits: (f64, f64),
    /// Client-side latency medians, with warm and without.
    medians: (Duration, Duration),
}

/// Two edges before `relay` (keep-alive settings `ka`, `extra` origin keys), one with `warm: 1`;
/// once the warm one has a connection ready, both send `n` GETs, each `gap` after the previous
/// answer, side by side.
fn warm_against_cold(
    relay: &Relay,
    ka: &str,
    extra: &str,
    n: usize,
    gap: Duration,
) -> WarmAgainstCold {
    let warm = edge_for(relay.addr, &format!("{ka}, warm: 1"), extra);
    let cold = edge_for(relay.addr, ka, extra);
    assert!(
        wait_until(Duration::from_secs(5), || warm_ready(&warm, relay.addr)
            >= 1.0),
        "no warm connection was opened"
    );
    let (warm_lat, cold_lat) = thread::scope(|s| {
        let w = s.spawn(|| spaced_gets(&warm, n, gap));
        let c = s.spawn(|| spaced_gets(&cold, n, gap));
        (w.join().unwrap(), c.join().unwrap())
    });
    let waits = |e: &Edge| e.metric("edge_upstream_handshake_waits_total{origin=\"app\"}");
    WarmAgainstCold {
        waits: (waits(&warm), waits(&cold)),
        medians: (median(warm_lat), median(cold_lat)),
        warm,
        cold,
    }
}

#[test]
fn requests_after_long_gaps_take_a_warm_connection_instead_of_waiting_for_a_connect() {
    // The origin closes idle connections after 300 ms without saying so; the edge keeps pooled
    // ones 200 ms. Requests 350 ms apart never find a pooled connection.
    let origin = Origin::start_with_idle("app", Duration::from_millis(300));
    origin.set_keep_alive_header(None);
    let relay = Relay::start(origin.addr, DELAY);
    const N: usize = 20;
    let run = warm_against_cold(
        &relay,
        "idle_timeout: 200ms, learn: false",
        "",
        N,
        Duration::from_millis(350),
    );
    let (warm, cold) = (&run.warm, &run.cold);
    let requests = |e: &Edge| {
        e.metric("edge_upstream_requests_total{connection=\"new\",origin=\"app\"}")
            + e.metric("edge_upstream_requests_total{connection=\"reused\",origin=\"app\"}")
    };
    let (w_req, c_req) = (requests(warm), requests(cold));
    let ((w_waits, c_waits), (w_med, c_med)) = (run.waits, run.medians);
    eprintln!(
        "warm: {w_waits}/{w_req} requests waited for a connect, median {w_med:?}, {} warm \
         connections opened; cold: {c_waits}/{c_req} waited, median {c_med:?}",
        opened(warm, "warm")
    );
    assert_eq!(w_req, N as f64);
    assert_eq!(c_req, N as f64);
    assert_eq!(
        c_waits, N as f64,
        "without warm every request pays a connect"
    );
    assert!(
        w_waits <= (N as f64) * 0.05,
        "with warm: 95% of requests go out on a connection open before they arrived"
    );
    assert_eq!(opened(warm, "demand"), w_waits);
    assert!(opened(warm, "warm") >= N as f64);
    // The client sees one round trip through the relay with warm, two without (the connect).
    let rtt = 2 * DELAY;
    assert!(
        w_med < rtt + rtt / 2,
        "warm: median {w_med:?} is more than one round trip ({rtt:?}) and a half"
    );
    assert!(
        c_med >= 2 * rtt - DELAY / 5,
        "cold: median {c_med:?} should include the connect round trip"
    );
    assert_eq!(
        warm.metric("edge_upstream_connection_lost_total{origin=\"app\",outcome=\"failed\"}"),
        0.0
    );
}

#[test]
fn https_origins_get_warm_connections_with_tls_done_ahead() {
    // As above, over TLS: a new connection costs the TCP round trip and a TLS one (resumed or
    // not, TLS 1.3 takes one), a warm one neither. Opening one takes two round trips here, so
    // the origin keeps idle connections longer than above (600 ms, pooled ones 450 ms).
    let ca = TestCa::new("warm CA");
    let origin = TlsOrigin::start_with(
        "app",
        &ca.issue(&["origin.test"]),
        TlsOptions {
            idle: Duration::from_millis(600),
            ..TlsOptions::default()
        },
    );
    origin.set_keep_alive_header(None);
    let relay = Relay::start(origin.addr, DELAY);
    let https = format!(
        "    tls: {{sni: origin.test, ca_file: \"{}\"}}\n",
        ca.pem_path().display()
    );
    const N: usize = 20;
    let run = warm_against_cold(
        &relay,
        "idle_timeout: 450ms, learn: false",
        &https,
        N,
        Duration::from_millis(700),
    );
    let ((w_waits, c_waits), (w_med, c_med)) = (run.waits, run.medians);
    eprintln!(
        "HTTPS, warm: {w_waits}/{N} requests waited for a handshake, median {w_med:?}; cold: \
         {c_waits}/{N} waited, median {c_med:?}; origin: {} handshakes, {} resumed",
        origin.handshakes(),
        origin.resumed()
    );
    assert_eq!(c_waits, N as f64);
    assert!(w_waits <= (N as f64) * 0.05, "{w_waits} of {N} waited");
    let rtt = 2 * DELAY;
    assert!(
        w_med < rtt + rtt / 2,
        "warm: median {w_med:?} is more than one round trip ({rtt:?}) and a half"
    );
    assert!(
        c_med >= 3 * rtt - DELAY / 5,
        "cold: median {c_med:?} should include the TCP and TLS round trips"
    );
    // Warm connections resume the TLS session like any new one.
    assert!(origin.resumed() >= 1, "no warm handshake resumed");
    let failures = format!(
        "edge_upstream_connect_failures_total{{origin=\"app\",server=\"{}\"}}",
        relay.addr
    );
    assert_eq!(
        run.warm.metric(&failures),
        0.0,
        "a warm TLS connection failed"
    );
}

#[test]
fn warm_refreshing_stops_without_requests_and_while_the_server_is_down() {
    let origin = Origin::start("app");
    let hc = "    health_check: {path: /healthz, interval: 100ms, timeout: 1s, rise: 1, fall: 1}\n";
    // Replaced every few hundred ms while wanted (limit 500 ms, replaced a tick and a connect
    // before it), closed after 1 s without a request.
    let edge = edge_for(
        origin.addr,
        "idle_timeout: 500ms, learn: false, warm: 2, warm_idle: 1s",
        hc,
    );
    let addr = origin.addr;
    let refreshed_within =
        |from: f64, limit: Duration| wait_until(limit, || opened(&edge, "warm") > from);

    // Warm from the start, and refreshed.
    assert!(wait_until(Duration::from_secs(5), || warm_ready(
        &edge, addr
    ) == 2.0));
    let v = opened(&edge, "warm");
    assert!(refreshed_within(v, Duration::from_secs(2)), "not refreshed");

    // No request for warm_idle: closed, and not replaced.
    assert!(
        wait_until(Duration::from_secs(5), || warm_ready(&edge, addr) == 0.0),
        "warm connections kept without requests"
    );
    let v = opened(&edge, "warm");
    assert!(
        !refreshed_within(v, Duration::from_millis(1500)),
        "refreshed with no request for warm_idle"
    );

    // A request brings them back.
    assert_eq!(edge.get("app.example", "/again").status, 200);
    assert!(wait_until(Duration::from_secs(5), || warm_ready(
        &edge, addr
    ) == 2.0));

    // The server goes down: health checks take it out, warm connections stop.
    origin.kill();
    let up = format!("edge_origin_server_up{{origin=\"app\",server=\"{addr}\"}}");
    assert!(wait_until(Duration::from_secs(5), || edge.metric(&up) == 0.0));
    assert!(wait_until(Duration::from_secs(2), || warm_ready(
        &edge, addr
    ) == 0.0));
    let v = opened(&edge, "warm");
    // Requests keep coming (they fail), so only the server's health stops the refreshing.
    let mut c = edge.client();
    let keep_asking = Instant::now();
    let mut refreshed = false;
    while keep_asking.elapsed() < Duration::from_millis(1500) && !refreshed {
        let _ = c.send_raw(&request_text("GET", "app.example", "/down", &[]));
        c = edge.client();
        refreshed = refreshed_within(v, Duration::from_millis(100));
    }
    assert!(
        !refreshed,
        "warm connections opened to a server that is down"
    );

    origin.restart();
    assert!(wait_until(Duration::from_secs(5), || edge.metric(&up) == 1.0));
    assert_eq!(edge.get("app.example", "/back").status, 200);
    assert!(wait_until(Duration::from_secs(5), || warm_ready(
        &edge, addr
    ) == 2.0));
}
