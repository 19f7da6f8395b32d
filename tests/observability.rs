//! Metrics, logs, dashboards and alerts: client connection accounting, the access log formats,
//! and a real Prometheus server scraping the edge that evaluates every dashboard query and every
//! alert expression.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::tls::TestCa;
use common::*;

fn web(o: &Origin) -> String {
    format!(
        "origins:\n  web: {{servers: [\"{}\"]}}\nroutes:\n  - {{origin: web}}\n",
        o.addr
    )
}

#[test]
fn client_connections_are_counted_while_open_and_summed_when_closed() {
    let o = Origin::start("o");
    let edge = Edge::start(&web(&o));
    let mut clients: Vec<Client> = (0..3).map(|_| edge.client()).collect();
    for c in clients.iter_mut() {
        assert_eq!(c.get("a.com", "/1").status, 200);
        assert_eq!(c.get("a.com", "/2").status, 200);
    }
    assert_eq!(edge.metric("edge_client_connections_open"), 3.0);
    assert_eq!(edge.metric("edge_client_connections_total"), 3.0);
    clients.truncate(1); // closes two
    assert!(
        wait_until(Duration::from_secs(5), || edge
            .metric("edge_client_connections_open")
            == 1.0),
        "open connections never went down to 1"
    );
    assert_eq!(
        edge.metric("edge_client_requests_per_connection_count"),
        2.0
    );
    assert_eq!(edge.metric("edge_client_requests_per_connection_sum"), 4.0);
}

#[test]
fn access_log_text_and_json() {
    let o = Origin::start("o");
    let edge = Edge::start(&web(&o));
    assert_eq!(edge.get("a.com", "/text?q=1").status, 200);
    assert!(
        wait_until(Duration::from_secs(5), || edge
            .log()
            .contains("GET a.com /text?q=1 status=200")),
        "{}",
        edge.log()
    );
    let line = edge
        .log()
        .lines()
        .find(|l| l.contains("/text?q=1"))
        .unwrap()
        .to_string();
    for field in [
        "route=routes[0]",
        "origin=web",
        "conn=new",
        "cache=miss",
        "tries=1",
        "ttfb_ms=",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }

    let json = Edge::start(&format!("log: {{access_format: json}}\n{}", web(&o)));
    assert_eq!(json.get("a.com", "/json").status, 200);
    assert!(wait_until(Duration::from_secs(5), || json
        .log()
        .contains("\"path\":\"/json\"")));
    let line = json
        .log()
        .lines()
        .find(|l| l.contains("\"path\":\"/json\""))
        .unwrap()
        .to_string();
    let obj: serde_json::Value = serde_json::from_str(&line[line.find('{').unwrap()..]).unwrap();
    assert_eq!(obj["status"], 200);
    assert_eq!(obj["origin"], "web");
    assert_eq!(obj["conn"], "new");

    let mut quiet = Edge::start(&format!("log: {{access: false}}\n{}", web(&o)));
    assert_eq!(quiet.get("a.com", "/quiet").status, 200);
    // The metric proves the request was recorded, and a stop writes every buffered line: the
    // (absent) line had its chance.
    assert!(wait_until(Duration::from_secs(5), || requests_recorded(
        &quiet
    ) == 1.0));
    quiet.signal(SIGINT);
    assert!(quiet.wait_exit(Duration::from_secs(10)));
    assert!(!quiet.log().contains("/quiet"), "{}", quiet.log());
}

const SIGINT: i32 = 2;
const SIGUSR1: i32 = 10;
const SIGTERM: i32 = 15;

/// Every request the edge has recorded (its line is in the access log's buffer by then).
fn requests_recorded(edge: &Edge) -> f64 {
    edge.metrics()
        .lines()
        .filter(|l| l.starts_with("edge_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `log.access_file`: lines reach the file within about a second (the flush interval), not
/// stderr; logrotate's move then SIGUSR1 sends new lines to a new file while the moved one
/// keeps the old; a stop right after the last request loses no line, from the proxy or the
/// express lane.
#[test]
fn access_file_flushed_reopened_on_sigusr1_and_complete_at_stop() {
    let o = Origin::start("o");
    o.set("/cached", common::cache::cc("max-age=60", "hello"));
    let file = temp_path("access.log");
    let rotated = file.with_extension("log.1");
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    // No grace period: the stop then takes milliseconds, less than the flush interval, so the
    // lines below are written by the stop and not by the timer.
    let mut edge = Edge::start(&format!(
        "server: {{grace_period: 0s}}\nlog: {{access_file: \"{}\"}}\n{}",
        file.display(),
        web(&o)
    ));
    assert_eq!(edge.get("a.com", "/first").status, 200);
    assert!(
        wait_until(Duration::from_secs(3), || read(&file).contains(" /first ")),
        "not in the file within about a second: {:?}",
        read(&file)
    );
    assert!(!edge.log().contains("/first"), "also on stderr");

    std::fs::rename(&file, &rotated).unwrap();
    edge.signal(SIGUSR1);
    assert!(
        wait_until(Duration::from_secs(5), || file.exists()),
        "no new file after SIGUSR1; log:\n{}",
        edge.log()
    );
    assert_eq!(edge.get("a.com", "/second").status, 200);
    assert!(wait_until(Duration::from_secs(3), || read(&file).contains(" /second ")));
    assert!(read(&rotated).contains(" /first "));
    assert!(!read(&rotated).contains("/second"));

    let mut paths: Vec<String> = (0..40).map(|i| format!("/last/{i}")).collect();
    paths.extend(["/cached".to_string(), "/cached".to_string()]);
    for p in &paths {
        assert_eq!(edge.get("a.com", p).status, 200);
    }
    let all = (paths.len() + 2) as f64;
    assert!(wait_until(Duration::from_secs(5), || requests_recorded(
        &edge
    ) == all));
    edge.signal(SIGTERM);
    assert!(edge.wait_exit(Duration::from_secs(20)), "did not stop");
    let text = read(&file);
    for p in &paths[..40] {
        assert!(text.contains(&format!(" {p} ")), "{p} missing:\n{text}");
    }
    let cached: Vec<&str> = text.lines().filter(|l| l.contains(" /cached ")).collect();
    assert_eq!(cached.len(), 2, "{text}");
    // Lines are written when a request ends, and a miss ends after its client has the whole
    // response (it still finishes the cache fill and releases the origin connection): under
    // load the hit that followed can be logged first. One of each, in either order.
    let hits = cached.iter().filter(|l| l.contains("cache=hit")).count();
    let misses = cached.iter().filter(|l| l.contains("cache=miss")).count();
    assert_eq!((hits, misses), (1, 1), "{text}");
    assert_eq!(text.lines().count(), paths.len() + 1, "{text}");
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&rotated);
}

/// A fast stop (SIGINT) also writes what the access log holds.
#[test]
fn access_file_complete_at_a_fast_stop() {
    let o = Origin::start("o");
    let file = temp_path("access.log");
    let mut edge = Edge::start(&format!(
        "log: {{access_file: \"{}\"}}\n{}",
        file.display(),
        web(&o)
    ));
    for i in 0..20 {
        assert_eq!(edge.get("a.com", &format!("/fast/{i}")).status, 200);
    }
    assert!(wait_until(Duration::from_secs(5), || requests_recorded(
        &edge
    ) == 20.0));
    edge.signal(SIGINT);
    assert!(edge.wait_exit(Duration::from_secs(10)), "did not stop");
    let text = std::fs::read_to_string(&file).unwrap();
    for i in 0..20 {
        assert!(
            text.contains(&format!(" /fast/{i} ")),
            "/fast/{i} missing:\n{text}"
        );
    }
    let _ = std::fs::remove_file(&file);
}

// ---------------------------------------------------------------------------------------------
// A real Prometheus.

fn prometheus_bin() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("prometheus"))
            .find(|p| p.is_file())
    });
    if found.is_none() && std::env::var_os("EDGE_SKIP_PROMETHEUS").is_none() {
        panic!(
            "this test needs Debian's prometheus package (apt-get install prometheus; bash .ci/run \
             installs it). Set EDGE_SKIP_PROMETHEUS=1 to skip it knowingly."
        );
    }
    found
}

struct Prometheus {
    child: Child,
    addr: std::net::SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    fn start(bin: &Path, target: std::net::SocketAddr, rules: &Path) -> Prometheus {
        let dir = temp_path("prometheus");
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 rule_files: [\"{}\"]\n\
                 scrape_configs:\n  - job_name: edge\n    static_configs: [{{targets: [\"{target}\"]}}]\n",
                rules.display()
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let p = Prometheus {
            child,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            dir,
        };
        assert!(
            wait_until(Duration::from_secs(30), || std::net::TcpStream::connect(
                p.addr
            )
            .is_ok()
                && get(p.addr, "prom", "/-/ready").status == 200),
            "prometheus did not become ready"
        );
        p
    }

    /// Evaluates an instant query; returns the result series or the error.
    fn query(&self, q: &str) -> Result<Vec<serde_json::Value>, String> {
        let r = get(
            self.addr,
            "prom",
            &format!("/api/v1/query?query={}", encode(q)),
        );
        let v: serde_json::Value =
            serde_json::from_str(&r.body).map_err(|e| format!("{e}: {}", r.body))?;
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every panel query of a dashboard, with Grafana's variables set as "All".
fn dashboard_queries(path: &Path) -> Vec<(String, String)> {
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "30s")
                .replace("$origin", ".*")
                .replace("$route", ".*");
            out.push((panel["title"].as_str().unwrap().to_string(), expr));
        }
    }
    for var in dash["templating"]["list"].as_array().unwrap() {
        // label_values(metric, label) -> the metric's series must exist.
        let q = var["query"]["query"].as_str().unwrap();
        let metric = q
            .strip_prefix("label_values(")
            .and_then(|r| r.split(',').next())
            .unwrap();
        out.push((format!("variable {}", var["name"]), metric.to_string()));
    }
    out
}

#[test]
fn prometheus_evaluates_every_dashboard_query_and_alert() {
    let Some(bin) = prometheus_bin() else {
        eprintln!("skipped: EDGE_SKIP_PROMETHEUS is set and prometheus is not installed");
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = root.join("dashboards/alerts.yml");
    let promtool = bin.with_file_name("promtool");
    let check = Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "promtool: {}",
        String::from_utf8_lossy(&check.stdout)
    );

    // A scenario in which every alert fires: low reuse (max_requests: 3), a slow origin, a dead
    // server, an origin with no live server (5xx), a refused reload, bursts of connections past
    // client.max_connections, an access log that cannot be written (/dev/full: every batch is
    // dropped and counted); a fleet's NATS that cannot be reached, and a purge waiting for it;
    // and steady traffic.
    let fast = Origin::start("fast");
    fast.set(
        "/hot",
        Canned::new(200, &[("Cache-Control", "max-age=1")], "hot"),
    );
    let slow = Origin::start("slow");
    slow.set_delay(Duration::from_millis(700));
    let (dead, dead2, no_nats) = (free_port(), free_port(), free_port());
    let hc = "health_check: {path: /healthz, interval: 200ms, timeout: 1s, rise: 1, fall: 1}";
    let disk = temp_path("disk");
    let body = format!(
        r#"
client: {{max_connections: 8}}
cache: {{disk: {{path: "{}", max_size: 64MiB}}}}
log: {{access_file: /dev/full}}
cluster: {{node: obs, nats: {{url: "nats://127.0.0.1:{no_nats}"}}}}
origins:
  web: {{servers: ["{}", "127.0.0.1:{dead}"], keepalive: {{max_requests: 3}}, {hc}}}
  slow: {{servers: ["{}"]}}
  gone: {{servers: ["127.0.0.1:{dead2}"], {hc}}}
routes:
  - {{path_prefix: /slow/, origin: slow}}
  - {{path_prefix: /gone/, origin: gone}}
  - {{origin: web}}
"#,
        disk.display(),
        fast.addr,
        slow.addr
    );
    // And an HTTPS listener whose certificate expires in a week.
    let ca = TestCa::new("observability CA");
    let day = Duration::from_secs(86_400);
    let now = std::time::SystemTime::now();
    let soon = ca.issue_valid(&["www.example.com"], now - day, now + 7 * day);
    let listen = format!(
        "\"127.0.0.1:{{PORT}}\", {{address: \"127.0.0.1:{{PORT2}}\", tls: {{certificates: [{{cert: \"{}\", key: \"{}\"}}]}}}}",
        soon.cert.display(),
        soon.key.display()
    );
    let mut edge = Edge::start_listening(&listen, &body);

    let stop = Arc::new(AtomicBool::new(false));
    let traffic: Vec<_> = [("/x", 20u64), ("/slow/x", 0), ("/gone/x", 50), ("/hot", 20)]
        .into_iter()
        .map(|(path, pause_ms)| {
            let (stop, addr) = (stop.clone(), edge.addr);
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                // Bounded by `stop` and by a request cap.
                for i in 0..100_000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    // /hot is one object (hits, with a refresh every second); the others are
                    // a new object per request.
                    let target = if path == "/hot" {
                        path.to_string()
                    } else {
                        format!("{path}{i}")
                    };
                    match c.send_raw(&format!("GET {target} HTTP/1.1\r\nHost: a.com\r\n\r\n")) {
                        Some(r) if r.header("connection") != Some("close") => {}
                        _ => c = Client::connect(addr),
                    }
                    if i % 10 == 0 {
                        let _ = Client::connect(addr)
                            .send_raw("GET /../x HTTP/1.1\r\nHost: a.com\r\n\r\n");
                    }
                    // Pacing a load generator (not waiting for anything): keeps the 2-core
                    // machine free for the edge and Prometheus, and sets each path's share.
                    thread::sleep(Duration::from_millis(pause_ms));
                }
            })
        })
        .collect();

    // Bursts of idle connections past max_connections (8; the four above hold about four).
    let bursts = {
        let (stop, addr) = (stop.clone(), edge.addr);
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let held: Vec<_> = (0..8)
                    .filter_map(|_| TcpStream::connect(addr).ok())
                    .collect();
                thread::sleep(Duration::from_millis(100)); // pacing, as above
                drop(held);
                thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let prom = Prometheus::start(&bin, edge.admin, &rules);
    // The refused reload must happen while Prometheus watches, or increase() sees no change.
    let scrapes = |n: u32| {
        let q = format!("count_over_time(up{{job=\"edge\"}}[1m]) >= {n}");
        wait_until(Duration::from_secs(60), || {
            prom.query(&q).map(|r| !r.is_empty()).unwrap_or(false)
        })
    };
    assert!(scrapes(3), "prometheus never scraped the edge");
    let purge = edge.admin_post("/purge?url=http://a.com/x1");
    assert_eq!(purge.status, 202, "queued for NATS: {}", purge.body);
    edge.rewrite(&body.replace("max_requests: 3", "max_requests: soon"));
    assert_eq!(edge.reload().status, 422);
    edge.rewrite(&body);
    assert_eq!(edge.reload().status, 200);
    // A disk tier that cannot write: its directory for files being written made immutable (as
    // a disk gone read-only). /hot is stored again every second, and each try fails.
    let tmp = disk.join("tmp");
    let immutable = |on: bool| {
        Command::new("chattr")
            .arg(if on { "+i" } else { "-i" })
            .arg(&tmp)
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(
        immutable(true),
        "chattr +i {} failed (needs e2fsprogs and CAP_LINUX_IMMUTABLE)",
        tmp.display()
    );
    let scraped = wait_until(Duration::from_secs(60), || {
        prom.query("count_over_time(up{job=\"edge\"}[1m]) >= 12")
            .map(|r| !r.is_empty())
            .unwrap_or(false)
    });
    assert!(scraped, "prometheus never scraped the edge 12 times");

    let mut problems = Vec::new();
    for (title, q) in dashboard_queries(&root.join("dashboards/edge.json")) {
        match prom.query(&q) {
            Ok(r) if r.is_empty() => problems.push(format!("panel \"{title}\": no series: {q}")),
            Ok(_) => {}
            Err(e) => problems.push(format!("panel \"{title}\": {e}: {q}")),
        }
    }

    let groups: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&rules).unwrap()).unwrap();
    let mut edge_down = None;
    for rule in groups["groups"][0]["rules"].as_sequence().unwrap() {
        let (name, expr) = (
            rule["alert"].as_str().unwrap(),
            rule["expr"].as_str().unwrap(),
        );
        if name == "EdgeDown" {
            edge_down = Some(expr.to_string());
            continue;
        }
        // Each alert must fire within a bounded wait: a rate over a few seconds of scrapes can
        // miss on one evaluation when the machine is loaded (seen once in CI for the reuse
        // ratio, whose scenario the edge's log showed running).
        let mut last = Ok(Vec::new());
        let fired = wait_until(Duration::from_secs(15), || {
            last = prom.query(expr);
            last.as_ref().is_ok_and(|r| !r.is_empty())
        });
        match last {
            _ if fired => {}
            Ok(_) => problems.push(format!(
                "alert {name} does not fire in its scenario: {expr}"
            )),
            Err(e) => problems.push(format!("alert {name}: {e}: {expr}")),
        }
    }
    immutable(false);
    stop.store(true, Ordering::SeqCst);
    for t in traffic {
        t.join().unwrap();
    }
    bursts.join().unwrap();

    // EdgeDown fires once the edge is gone.
    let edge_down = edge_down.expect("an EdgeDown alert");
    edge.signal(2);
    assert!(edge.wait_exit(Duration::from_secs(10)));
    let fired = wait_until(Duration::from_secs(20), || {
        prom.query(&edge_down)
            .map(|r| !r.is_empty())
            .unwrap_or(false)
    });
    if !fired {
        problems.push(format!(
            "alert EdgeDown does not fire with the edge stopped: {edge_down}"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
