//! `edge -t`: valid configs pass, bad ones are refused with file, line and field path.

mod common;

use common::check_config;

/// The config contract from the issue, verbatim: operators and acceptance tests write these keys.
const GOOD: &str = include_str!("data/contract.yaml");

#[test]
fn the_contract_config_is_valid() {
    let (code, err) = check_config(GOOD);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn the_shipped_configs_are_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    for file in ["edge.yaml", "fleet/front.yaml", "fleet/shield.yaml"] {
        let (code, err) =
            check_config(&std::fs::read_to_string(format!("{root}/conf/{file}")).unwrap());
        assert_eq!(code, 0, "conf/{file}: {err}");
    }
}

#[test]
fn a_bad_duration_is_refused_with_its_location() {
    let (code, err) = check_config(&GOOD.replace("idle_timeout: 55s", "idle_timeout: fast"));
    assert_eq!(code, 1);
    assert!(
        err.contains(r#"FILE:14: origins.web.keepalive.idle_timeout: expected a duration like "55s" (units ms, s, m, h, d), got "fast""#),
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

#[test]
fn a_busy_listen_address_is_an_error_not_a_hang() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let path = common::temp_path("busy.yaml");
    std::fs::write(
        &path,
        format!("listen: [\"{addr}\"]\norigins:\n  o: {{servers: [\"127.0.0.1:1\"]}}\nroutes:\n  - {{origin: o}}\n"),
    )
    .unwrap();
    let mut child = std::process::Command::new(common::edge_bin())
        .arg("-c")
        .arg(&path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = common::wait_until(std::time::Duration::from_secs(10), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(exited, "edge kept running on a busy address");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("listen: cannot listen on {addr}")),
        "{err}"
    );
}

#[test]
fn a_disk_tier_larger_than_its_file_system_is_a_warning() {
    let dir = std::env::temp_dir().join("edge-config-check-disk");
    let text = format!(
        "{GOOD}cache: {{max_object_size: 8MiB, disk: {{path: \"{}\", max_size: 1000000GiB}}}}\n",
        dir.display()
    );
    let (code, err) = check_config(&text);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("cache.disk.max_size") && err.contains("more than the whole file system"),
        "{err}"
    );
}

#[test]
fn settings_that_do_nothing_or_starve_connections_are_warnings_with_their_line() {
    // ranges: forward on a route whose cache is off.
    let text = GOOD.replace(
        "routes:\n",
        "routes:\n  - {host: \"*.off.example\", origin: web, cache: {enabled: false, ranges: forward}}\n",
    );
    assert_ne!(text, GOOD, "the routes section moved");
    let (code, err) = check_config(&text);
    assert_eq!(code, 0, "{err}");
    let line = text
        .lines()
        .position(|l| l.contains("ranges: forward"))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!(
            ":{line}: routes[0].cache.ranges: has no effect with the cache off"
        )),
        "{err}"
    );
    // More files kept open than half the descriptor limit allows (2^62: above any kernel's).
    let dir = std::env::temp_dir().join("edge-config-check-open-files");
    let text = format!(
        "{GOOD}cache:\n  disk:\n    path: \"{}\"\n    max_size: 64MiB\n    open_files: 4611686018427387904\n",
        dir.display()
    );
    let (code, err) = check_config(&text);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(
            "cache.disk.open_files: 4611686018427387904 files kept open is more than half"
        ),
        "{err}"
    );
    assert!(!err.contains("routes[0].cache.ranges"), "{err}");
    // Files kept open for an express lane that is off.
    let text = format!(
        "{GOOD}cache:\n  express_lane: false\n  disk:\n    path: \"{}\"\n    max_size: 64MiB\n    open_files: 100\n",
        dir.display()
    );
    let (code, err) = check_config(&text);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("cache.disk.open_files: has no effect with cache.express_lane: false"),
        "{err}"
    );
}
