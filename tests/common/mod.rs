//! Test harness: real origins on loopback that count what they see, the real `edge` binary run
//! as a process on a config written by the test, and a raw HTTP/1.1 client that can also send
//! what no well-behaved client would. Everything waits on conditions with a bound, never blindly.
//!
//! One file per role: `origin` (the test origin), `client` (the raw client), `edge` (the edge
//! process), `relay` (a delay line: a network round trip on loopback). Everything is re-exported here, so a test needs only `use common::*;`. `cache`
//! holds the cache tests' shared set-up (`use common::cache::*;`), `tls` the HTTPS side:
//! certificates made at test time, a TLS origin and a TLS client (`use common::tls::*;`), `nats`
//! a real `nats-server` for the fleet's tests (`use common::nats::*;`).
//!
//! Each test crate compiles this module and uses only part of it.
#![allow(dead_code)]

pub mod cache;
mod client;
mod edge;
pub mod nats;
mod origin;
mod relay;
pub mod tls;

// As with dead code: a test crate that uses nothing of one part (config_check starts no
// origin) would otherwise warn about its re-export.
#[allow(unused_imports)]
pub use {client::*, edge::*, origin::*, relay::*};

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Polls `cond` every 10 ms until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A free loopback port (bound and released; the tiny race with other processes is acceptable
/// on a test machine). Never one this test process was given before: the kernel can hand the
/// same released port to two calls in a row (an edge once got it for both its listen and
/// admin addresses).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A unique temp file path for this test process.
pub fn temp_path(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    std::env::temp_dir().join(format!("edge-test-{}-{n}-{name}", std::process::id()))
}
