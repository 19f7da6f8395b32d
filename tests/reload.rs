//! Live reload under traffic, refused configs, what a reload keeps, and the binary upgrade.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;

const SIGHUP: i32 = 1;
const SIGQUIT: i32 = 3;

/// Client threads that keep requests flowing until stopped, each on its own keep-alive
/// connection, counting requests and failures.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<Vec<AtomicUsize>>,
    retried: Arc<AtomicUsize>,
    handles: Vec<thread::JoinHandle<Vec<String>>>,
}

impl Traffic {
    /// `retry_closed`: a request that finds its idle keep-alive connection closed (no response
    /// byte) is retried once on a new connection, as browsers and HTTP libraries do for
    /// idempotent requests (RFC 9112 section 9.3.1). A failure on a fresh connection is never
    /// retried.
    ///
    /// With `one_shot_worker`, worker 0 opens a new connection for every request (as many
    /// scripts and health checkers do); the others keep theirs alive.
    fn start(
        addr: std::net::SocketAddr,
        clients: usize,
        path: &'static str,
        retry_closed: bool,
        one_shot_worker: bool,
    ) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(
            (0..clients)
                .map(|_| AtomicUsize::new(0))
                .collect::<Vec<_>>(),
        );
        let retried = Arc::new(AtomicUsize::new(0));
        let handles = (0..clients)
            .map(|w| {
                let (stop, ok, failed, retried) =
                    (stop.clone(), ok.clone(), failed.clone(), retried.clone());
                thread::spawn(move || {
                    let mut errors = Vec::new();
                    let mut c = Client::connect(addr);
                    let mut fresh = true;
                    let mut i = 0u64;
                    // Bounded: at most 100k requests even if `stop` never comes.
                    while !stop.load(Ordering::SeqCst) && i < 100_000 {
                        i += 1;
                        let req = format!("GET {path} HTTP/1.1\r\nHost: example.com\r\n\r\n");
                        let mut r = c.send_raw(&req);
                        if r.is_none() && !fresh && retry_closed {
                            retried.fetch_add(1, Ordering::SeqCst);
                            c = Client::connect(addr);
                            r = c.send_raw(&req);
                        }
                        fresh = false;
                        if w == 0 && one_shot_worker {
                            c = Client::connect(addr);
                            fresh = true;
                        }
                        match r {
                            Some(r) if r.status == 200 => {
                                ok.fetch_add(1, Ordering::SeqCst);
                                if r.header("connection") == Some("close") {
                                    c = Client::connect(addr);
                                    fresh = true;
                                }
                            }
                            other => {
                                failed[w].fetch_add(1, Ordering::SeqCst);
                                errors.push(format!("{:?}", other.map(|r| (r.status, r.body))));
                                c = Client::connect(addr);
                                fresh = true;
                            }
                        }
                    }
                    errors
                })
            })
            .collect();
        Traffic {
            stop,
            ok,
            failed,
            retried,
            handles,
        }
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }

    /// Requests retried because their idle keep-alive connection was closed under them.
    fn retried(&self) -> usize {
        self.retried.load(Ordering::SeqCst)
    }

    /// Stops the clients; returns (requests that succeeded, failure descriptions).
    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let errors: Vec<String> = self
            .handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let failed: usize = self.failed.iter().map(|f| f.load(Ordering::SeqCst)).sum();
        assert_eq!(failed, errors.len());
        (self.ok.load(Ordering::SeqCst), errors)
    }
}

fn config(switch_to: &str, two_idle: &str, steady: &Origin, one: &Origin, two: &Origin) -> String {
    format!(
        r#"
origins:
  one: {{servers: ["{}"]}}
  two: {{servers: ["{}"], keepalive: {{idle_timeout: {two_idle}}}}}
  steady: {{servers: ["{}"], keepalive: {{max_requests: 1000000}}}}
routes:
  - {{path_prefix: /switch, origin: {switch_to}}}
  - {{origin: steady}}
"#,
        one.addr, two.addr, steady.addr
    )
}

#[test]
fn fifty_reloads_under_traffic_drop_nothing_and_keep_warm_connections() {
    let (one, two, steady) = (
        Origin::start("one"),
        Origin::start("two"),
        Origin::start("steady"),
    );
    let a = config("one", "30s", &steady, &one, &two);
    let b = config("two", "31s", &steady, &one, &two);
    let invalid = b.replace("idle_timeout: 31s", "idle_timeout: soon");
    let edge = Edge::start(&a);
    // Cached before the traffic starts, so its one fetch adds no concurrent connection.
    steady.set(
        "/cached",
        Canned::new(200, &[("Cache-Control", "max-age=3600")], "kept"),
    );
    assert_eq!(edge.get("example.com", "/cached").body, "kept");

    const CLIENTS: usize = 3;
    let traffic = Traffic::start(edge.addr, CLIENTS, "/steady", false, false);
    assert!(wait_until(Duration::from_secs(10), || traffic.ok() >= 50));
    let steady_conns = steady.accepted();
    assert!(
        steady_conns <= CLIENTS,
        "{steady_conns} connections for {CLIENTS} clients"
    );

    let mut checker = edge.client();
    let cached_hit = |c: &mut Client| {
        let r = c.get("example.com", "/cached");
        r.header("cache-status").is_some_and(|s| s.contains("hit")) && r.body == "kept"
    };
    assert!(cached_hit(&mut checker));
    let (mut applied, mut refused) = (0, 0);
    for i in 0..60 {
        if i % 6 == 5 {
            // Every sixth reload is refused and changes nothing.
            edge.rewrite(&invalid);
            let r = edge.reload();
            assert_eq!(r.status, 422, "{}", r.body);
            assert!(
                r.body
                    .contains("origins.two.keepalive.idle_timeout: expected a duration"),
                "{}",
                r.body
            );
            refused += 1;
            let expect = if applied % 2 == 1 { "two" } else { "one" };
            assert_eq!(checker.get("example.com", "/switch").server(), expect);
            assert!(
                cached_hit(&mut checker),
                "cache lost after refused reload {i}"
            );
            continue;
        }
        let (body, expect) = if applied % 2 == 0 {
            (&b, "two")
        } else {
            (&a, "one")
        };
        edge.rewrite(body);
        if i % 4 == 0 {
            // By signal: wait (bounded) until the new version is in force.
            let before = edge.config_version();
            edge.signal(SIGHUP);
            assert!(
                wait_until(Duration::from_secs(5), || edge.config_version() != before),
                "SIGHUP reload {i} never took effect"
            );
        } else {
            let r = edge.reload();
            assert_eq!(r.status, 200, "reload {i}: {}", r.body);
            assert!(r.body.starts_with("reloaded: version "), "{}", r.body);
        }
        applied += 1;
        // Visible at once, on an already-open client connection.
        let r = checker.get("example.com", "/switch");
        assert_eq!(r.status, 200);
        assert_eq!(r.server(), expect, "after reload {i}");
        assert!(cached_hit(&mut checker), "cache lost after reload {i}");
    }
    assert_eq!(
        steady.count("/cached"),
        1,
        "the cached object was fetched again"
    );
    assert_eq!(applied, 50);
    assert_eq!(refused, 10);
    assert!(
        wait_until(Duration::from_secs(10), || traffic.ok() >= 500),
        "traffic stalled"
    );
    let (ok, errors) = traffic.finish();
    assert!(
        errors.is_empty(),
        "{} of {} requests failed: {errors:?}",
        errors.len(),
        ok + errors.len()
    );
    // Three clients, one request in flight each: three connections at most, whatever the
    // reloads did around them (a regression that re-keys the pool per reload opens ~150), plus
    // one: Pingora drops a pooled connection when its idle watcher still holds it at the
    // moment it is taken ("failed to acquire reusable stream", seen once under load).
    assert!(
        steady.accepted() <= CLIENTS + 1,
        "reloads that did not touch `steady` opened new connections to it: {} (had {steady_conns} before)",
        steady.accepted()
    );
    let m = edge.metrics();
    assert_eq!(
        metric_value(&m, "edge_config_reloads_total{result=\"success\"}"),
        50.0
    );
    assert_eq!(
        metric_value(&m, "edge_config_reloads_total{result=\"failure\"}"),
        10.0
    );
    assert!(metric_value(&m, "edge_config_last_reload_success_timestamp_seconds") > 1.0e9);
    let version = edge.config_version();
    assert_eq!(
        metric_value(&m, &format!("edge_config_info{{version=\"{version}\"}}")),
        1.0
    );
    assert_eq!(
        m.matches("edge_config_info{").count(),
        1,
        "one version series at a time"
    );
}

#[test]
fn a_refused_config_leaves_the_old_one_serving() {
    let o = Origin::start("o");
    let body = format!(
        "origins:\n  web: {{servers: [\"{}\"]}}\nroutes:\n  - {{origin: web}}\n",
        o.addr
    );
    let edge = Edge::start(&body);
    let v0 = edge.config_version();
    edge.rewrite(&body.replace("origin: web}", "origin: nowhere}"));
    let r = edge.reload();
    assert_eq!(r.status, 422);
    assert!(
        r.body
            .contains("routes[0].origin: unknown origin \"nowhere\" (defined: web)"),
        "{}",
        r.body
    );
    assert!(
        r.body
            .contains(&format!("{}:6: ", edge.config_path.display())),
        "file and line: {}",
        r.body
    );
    assert_eq!(edge.config_version(), v0);
    assert_eq!(edge.get("example.com", "/").status, 200);
    assert!(edge.log().contains("config reload (POST /reload) refused"));
    // SIGHUP with a bad file: logged, refused, still serving.
    edge.signal(SIGHUP);
    assert!(wait_until(Duration::from_secs(5), || edge
        .metric("edge_config_reloads_total{result=\"failure\"}")
        == 2.0));
    assert_eq!(edge.get("example.com", "/").status, 200);
}

#[test]
fn listener_changes_are_reported_as_needing_an_upgrade() {
    let o = Origin::start("o");
    let body = format!(
        "origins:\n  web: {{servers: [\"{}\"]}}\nroutes:\n  - {{origin: web}}\n",
        o.addr
    );
    let edge = Edge::start(&body);
    std::fs::write(
        &edge.config_path,
        format!(
            "listen: [\"127.0.0.1:{}\"]\nadmin: {{listen: \"{}\"}}\nserver: {{threads: 3}}\n{body}",
            free_port(),
            edge.admin
        ),
    )
    .unwrap();
    let r = edge.reload();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body
            .contains("not applied until a restart or upgrade (-u): listen, server.threads"),
        "{}",
        r.body
    );
    let cfg = get(edge.admin, "admin", "/config").body;
    assert!(cfg.contains("# not applied until a restart or upgrade (-u): listen, server.threads"));
    assert_eq!(
        edge.get("example.com", "/").status,
        200,
        "still serving on the old listener"
    );
}

#[test]
fn health_state_of_unchanged_servers_survives_a_reload() {
    let live = Origin::start("live");
    let dead = free_port();
    let body = |extra: &str| {
        format!(
            "origins:\n  web:\n    servers: [\"127.0.0.1:{dead}\", \"{}\"]\n    passive_health: {{max_fails: 1, fail_timeout: 60s}}\n{extra}routes:\n  - {{origin: web}}\n",
            live.addr
        )
    };
    let edge = Edge::start(&body(""));
    let mut c = edge.client();
    for i in 0..4 {
        assert_eq!(c.get("example.com", &format!("/{i}")).status, 200);
    }
    let failures = format!(
        "edge_upstream_connect_failures_total{{origin=\"web\",server=\"127.0.0.1:{dead}\"}}"
    );
    assert_eq!(edge.metric(&failures), 1.0);
    // A reload that changes something else: the dead server stays marked down.
    edge.rewrite(&body("    retries: 3\n"));
    assert_eq!(edge.reload().status, 200);
    for i in 0..4 {
        assert_eq!(c.get("example.com", &format!("/after/{i}")).status, 200);
    }
    assert_eq!(
        edge.metric(&failures),
        1.0,
        "the reload forgot the server was down"
    );
}

#[test]
fn removed_servers_stop_getting_requests() {
    let (a, b) = (Origin::start("a"), Origin::start("b"));
    let two = format!(
        "origins:\n  web: {{servers: [\"{}\", \"{}\"]}}\nroutes:\n  - {{origin: web}}\n",
        a.addr, b.addr
    );
    let edge = Edge::start(&two);
    let mut c = edge.client();
    for i in 0..4 {
        assert_eq!(c.get("example.com", &format!("/{i}")).status, 200);
    }
    assert_eq!(b.request_count(), 2);
    edge.rewrite(&format!(
        "origins:\n  web: {{servers: [\"{}\"]}}\nroutes:\n  - {{origin: web}}\n",
        a.addr
    ));
    assert_eq!(edge.reload().status, 200);
    for i in 0..6 {
        assert_eq!(c.get("example.com", &format!("/after/{i}")).server(), "a");
    }
    assert_eq!(b.request_count(), 2);
    let m = edge.metrics();
    assert!(
        !m.contains(&format!("server=\"{}\"", b.addr)),
        "series of a removed server remain"
    );
}

/// A reload that sets `log.access_file` moves the access log from stderr to the file.
#[test]
fn a_reload_moves_the_access_log_to_its_new_file() {
    let o = Origin::start("o");
    let body = format!(
        "origins:\n  web: {{servers: [\"{}\"]}}\nroutes:\n  - {{origin: web}}\n",
        o.addr
    );
    let edge = Edge::start(&body);
    assert_eq!(edge.get("example.com", "/before").status, 200);
    assert!(wait_until(Duration::from_secs(5), || edge
        .log()
        .contains(" /before ")));
    let file = temp_path("access.log");
    edge.rewrite(&format!(
        "log: {{access_file: \"{}\"}}\n{body}",
        file.display()
    ));
    assert_eq!(edge.reload().status, 200);
    assert!(wait_until(Duration::from_secs(5), || file.exists()));
    assert_eq!(edge.get("example.com", "/after").status, 200);
    let read = || std::fs::read_to_string(&file).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(5), || read().contains(" /after ")));
    assert!(!read().contains("/before"));
    assert!(!edge.log().contains("/after"));
    let _ = std::fs::remove_file(&file);
}

#[test]
fn binary_upgrade_hands_over_the_listener_without_failing_a_request() {
    let o = Origin::start("o");
    let mut old = Edge::start(&format!(
        "server: {{grace_period: 2s, graceful_shutdown_timeout: 1s}}\norigins:\n  web: {{servers: [\"{}\"]}}\nroutes:\n  - {{origin: web}}\n",
        o.addr
    ));
    let traffic = Traffic::start(old.addr, 3, "/", true, true);
    assert!(wait_until(Duration::from_secs(10), || traffic.ok() >= 50));

    let new = old.start_upgrade();
    old.signal(SIGQUIT);
    assert!(
        old.wait_exit(Duration::from_secs(30)),
        "the old edge did not exit"
    );
    let served_before = traffic.ok();
    assert!(
        wait_until(Duration::from_secs(10), || traffic.ok()
            >= served_before + 200),
        "no traffic after the handover"
    );
    let retried = traffic.retried();
    let (ok, errors) = traffic.finish();
    eprintln!(
        "upgrade: {ok} requests, {retried} retried after the old edge closed an idle connection"
    );
    assert!(
        errors.is_empty(),
        "{} of {} requests failed: {errors:?}",
        errors.len(),
        ok + errors.len()
    );
    assert!(new.log().contains("Server starting"), "{}", new.log());
    // The new process answers on the admin listener too.
    assert_eq!(get(new.admin, "admin", "/healthz").status, 200);
}

/// A connection accepted just before an upgrade's handover whose request arrives just after it
/// gets its answer, with `Connection: close`, instead of being dropped unanswered (seen once in
/// `binary_upgrade_hands_over_the_listener_without_failing_a_request`: 1 of 12,730 requests).
/// An idle kept-alive connection is closed at the stop: its client retries on a new one.
#[test]
fn a_new_connection_whose_request_comes_after_the_handover_is_answered() {
    let o = Origin::start("o");
    let mut old = Edge::start(&format!(
        "server: {{grace_period: 3s, graceful_shutdown_timeout: 1s}}\norigins:\n  web: {{servers: [\"{}\"]}}\nroutes:\n  - {{origin: web}}\n",
        o.addr
    ));
    let mut idle = old.client();
    assert_eq!(idle.get("example.com", "/warm").status, 200);
    // Connected before the handover: accepted by the old edge (or, still in the listener's
    // queue, by the new one, which shares the socket); either must answer it.
    let mut fresh = old.client();
    let _new = old.start_upgrade();
    old.signal(SIGQUIT);
    assert!(
        wait_until(Duration::from_secs(10), || old
            .log()
            .contains("Graceful shutdown: grace period")),
        "the old edge did not begin to stop:\n{}",
        old.log()
    );
    let r = fresh
        .send_raw("GET /late HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .expect("an answer, not a dropped connection");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(
        idle.wait_for_close(Duration::from_secs(5)).is_some(),
        "an idle kept-alive connection is closed at the stop"
    );
    assert!(old.wait_exit(Duration::from_secs(10)));
}
