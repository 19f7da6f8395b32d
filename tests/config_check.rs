//! `edge -t`: valid configs pass, bad ones are refused with file, line and field path.

mod common;

use common::check_config;

const GOOD: &str = r#"server: {threads: 2}
listen: ["127.0.0.1:8080"]
admin:
  listen: 127.0.0.1:9090
client:
  keepalive_timeout: 65s
  keepalive_requests: 1000
origins:
  web:
    servers: ["127.0.0.1:8000", {address: "127.0.0.1:8001", weight: 3}]
    balance: round_robin
    host: www.example.com
    keepalive:
      idle_timeout: 55s
      pool_size: 64
    timeouts: {connect: 2s, read: 30s, write: 30s}
    health_check: {path: /healthz, interval: 5s}
routes:
  - {host: "*.example.com", path_prefix: /static/, origin: web}
  - {host: "*", origin: web}
"#;

#[test]
fn the_contract_config_is_valid() {
    let (code, err) = check_config(GOOD);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn the_shipped_configs_are_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    let (code, err) =
        check_config(&std::fs::read_to_string(format!("{root}/conf/edge.yaml")).unwrap());
    assert_eq!(code, 0, "conf/edge.yaml: {err}");
}

#[test]
fn a_bad_duration_is_refused_with_its_location() {
    let (code, err) = check_config(&GOOD.replace("idle_timeout: 55s", "idle_timeout: fast"));
    assert_eq!(code, 1);
    assert!(
        err.contains(r#"FILE:14: origins.web.keepalive.idle_timeout: expected a duration like "55s" (units ms, s, m, h), got "fast""#),
        "{err}"
    );
}

#[test]
fn every_error_is_listed() {
    let bad = GOOD
        .replace("keepalive_requests: 1000", "keepalive_request: 1000")
        .replace(
            "origin: web}\n  - {host: \"*\", origin: web}",
            "origin: web}\n  - {host: \"*\", origin: api}",
        )
        .replace("balance: round_robin", "balance: random");
    let (code, err) = check_config(&bad);
    assert_eq!(code, 1);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("FILE:")).collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        err.contains("FILE:11: origins.web.balance: unknown variant `random`"),
        "{err}"
    );
    assert!(
        err.contains("FILE:20: routes[1].origin: unknown origin \"api\" (defined: web)"),
        "{err}"
    );
    assert!(err.contains("3 error(s)"), "{err}");
}

#[test]
fn unknown_keys_are_refused() {
    let (code, err) =
        check_config(&GOOD.replace("  keepalive_requests: 1000", "  keepalive_request: 1000"));
    assert_eq!(code, 1);
    assert!(
        err.contains("FILE:7: client.keepalive_request: unknown field `keepalive_request`"),
        "{err}"
    );
}

#[test]
fn an_unreadable_file_is_an_error() {
    let out = std::process::Command::new(common::edge_bin())
        .args(["-t", "-c", "/nonexistent/edge.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config"));
}
