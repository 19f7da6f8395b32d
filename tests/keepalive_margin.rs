//! The keep-alive margin costs no more connections than physics requires.
//!
//! A real nginx origin (its idle timer is precise, as a production origin's is; the harness's
//! thread-per-connection origin wakes late under load) closes idle connections after 500 ms
//! without announcing it, behind a relay adding 5 ms each way. One client sends 100 POSTs after
//! idle gaps spread evenly across 250–750 ms. A gap longer than the timeout less the round trip
//! cannot be served on the pooled connection (the origin's idle clock runs a round trip longer
//! than ours): those requests need a new connection, the floor. The edge must lose no POST and
//! open at most 10% more connections than the floor. The margin before the origin's timeout is
//! all that separates the two: the old fixed rule (two round trips plus a tenth of the timeout)
//! opened about 30% more here.
//!
//! In its own test binary so that no other test's edges share the two cores while it measures.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// A real nginx answering every request `200 ok` with `Cache-Control: no-store`; stopped by PID
/// when dropped.
struct Nginx {
    addr: std::net::SocketAddr,
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    fn start(keepalive: &str) -> Nginx {
        let dir = temp_path("nginx");
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let conf = format!(
            "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off; keepalive_timeout {keepalive}; keepalive_requests 100000;\n\
             \x20 client_body_temp_path {d}/body;\n\
             \x20 server {{ listen 127.0.0.1:{port};\n\
             \x20   location / {{ add_header Cache-Control no-store always; return 200 \"ok\\n\"; }} }}\n}}\n",
            d = dir.display()
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        // Debian puts it in /usr/sbin, which a non-root PATH may lack.
        let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("nginx");
        let child = Command::new(bin)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (tests/setup.sh installs it)");
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(
                addr
            )
            .is_ok()),
            "nginx did not listen on {addr}: {}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        Nginx { addr, child, dir }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Gaps spread evenly across `lo..=hi`, in an order that alternates short and long ones.
fn spread_gaps(lo: Duration, hi: Duration, n: usize) -> Vec<Duration> {
    (0..n)
        .map(|i| {
            let k = ((i * 37) % n) as f64 / (n - 1) as f64;
            lo + (hi - lo).mul_f64(k)
        })
        .collect()
}

#[test]
fn no_post_lost_and_connections_within_ten_percent_of_the_floor() {
    const TIMEOUT: Duration = Duration::from_millis(500);
    const DELAY: Duration = Duration::from_millis(5);
    const N: usize = 100;
    let origin = Nginx::start("500ms");
    let relay = Relay::start(origin.addr, DELAY);
    let edge = Edge::start(&format!(
        "origins:\n  shop:\n    servers: [\"{}\"]\n    keepalive: {{idle_timeout: 30s}}\nroutes:\n  - {{origin: shop, cache: {{enabled: false}}}}\n",
        relay.addr
    ));
    let server = relay.addr;
    let gauge = |name: &str| edge.metric(&format!("{name}{{origin=\"shop\",server=\"{server}\"}}"));
    // Learning first: probe rounds follow each other quickly until they agree and the caution
    // of the first round is earned back (the margin then is a round trip and a few ms).
    let mut c = edge.client();
    let mut last_request: Option<Instant> = None;
    let settled = wait_until(Duration::from_secs(60), || {
        // A request now and then, so the round-trip estimate exists.
        if last_request.is_none_or(|t| t.elapsed() > Duration::from_millis(200)) {
            assert_eq!(c.request("POST", "shop.example", "/learn", &[]).status, 200);
            last_request = Some(Instant::now());
        }
        let learned = gauge("edge_upstream_idle_timeout_learned_seconds");
        let effective = gauge("edge_upstream_idle_timeout_effective_seconds");
        learned > 0.0 && learned - effective < 0.020
    });
    let (learned, effective) = (
        gauge("edge_upstream_idle_timeout_learned_seconds"),
        gauge("edge_upstream_idle_timeout_effective_seconds"),
    );
    assert!(
        settled,
        "the margin did not settle: learned {learned}s, effective {effective}s, timers late by \
         {}s; probe rounds:\n{}",
        edge.metric("edge_timer_lateness_seconds"),
        edge.log()
            .lines()
            .filter(|l| l.contains("closes idle connections"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let new_before =
        edge.metric("edge_upstream_requests_total{connection=\"new\",origin=\"shop\"}");

    // The POSTs, each after its gap on an idle pooled connection.
    let rtt = 2 * DELAY;
    let gaps = spread_gaps(
        TIMEOUT - Duration::from_millis(250),
        TIMEOUT + Duration::from_millis(250),
        N,
    );
    let mut failed = 0;
    let mut floor = 0;
    let mut last_end = Instant::now();
    for (i, gap) in gaps.iter().enumerate() {
        // The idle gap under test (pacing, not waiting for anything).
        thread::sleep(gap.saturating_sub(last_end.elapsed()));
        let idle = last_end.elapsed();
        if idle + rtt > TIMEOUT {
            floor += 1;
        }
        let r = c.send_raw(&format!(
            "POST /order/{i} HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 5\r\n\r\nbuy=1"
        ));
        if r.as_ref().map(|r| r.status) != Some(200) {
            failed += 1;
            c = edge.client();
        }
        last_end = Instant::now();
    }
    let opened = edge.metric("edge_upstream_requests_total{connection=\"new\",origin=\"shop\"}")
        - new_before;
    let lost =
        edge.metric("edge_upstream_connection_lost_total{origin=\"shop\",outcome=\"failed\"}");
    eprintln!(
        "{N} POSTs: {failed} failed, {opened} new upstream connections, floor {floor} (gaps over \
         {TIMEOUT:?} - {rtt:?}); learned {learned}s, effective {effective}s"
    );
    assert_eq!(failed, 0, "POSTs failed");
    assert_eq!(lost, 0.0);
    let allowed = (floor as f64 * 1.1).ceil();
    assert!(
        opened <= allowed,
        "{opened} new connections where the floor is {floor} (at most {allowed})"
    );
}
