use super::*;

const GOOD: &str = include_str!("../../tests/data/contract.yaml");

fn errors(text: &str) -> Vec<String> {
    match parse(text, "edge.yaml") {
        Ok(_) => panic!("config was accepted"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn the_contract_example_parses() {
    let c = parse(GOOD, "edge.yaml").unwrap();
    assert_eq!(c.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
    let web = &c.origins["web"];
    assert_eq!(web.servers[1].weight, 3);
    assert_eq!(web.keepalive.idle_timeout, Dur::secs(55));
    assert_eq!(web.keepalive.max_requests, None);
    assert_eq!(web.health_check.as_ref().unwrap().path, "/healthz");
    assert_eq!(c.routes[0].path_prefix, "/static/");
    assert_eq!(c.routes[1].path_prefix, "/");
    assert_eq!(c.client.keepalive_requests, 1000);
}

#[test]
fn bad_duration_names_file_line_and_path() {
    let text = GOOD.replace("idle_timeout: 55s", "idle_timeout: fast");
    let errs = errors(&text);
    assert_eq!(
        errs,
        vec![
            r#"edge.yaml:14: origins.web.keepalive.idle_timeout: expected a duration like "55s" (units ms, s, m, h, d), got "fast""#
        ]
    );
}

#[test]
fn unknown_keys_are_errors_at_their_line() {
    let text = GOOD.replace("pool_size: 64", "pool_sise: 64");
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with(
            "edge.yaml:15: origins.web.keepalive.pool_sise: unknown field `pool_sise`"
        ),
        "{errs:?}"
    );
    let errs = errors(&format!("{GOOD}\nlisten_extra: 1\n"));
    assert!(errs[0].contains("listen_extra: unknown key"), "{errs:?}");
}

#[test]
fn every_error_is_reported_at_once() {
    let text = GOOD
        .replace("idle_timeout: 55s", "idle_timeout: fast")
        .replace(
            "origin: web}\n  - {host: \"*\"",
            "origin: nope}\n  - {host: \"*\"",
        )
        .replace("threads: 2", "threads: 0");
    let errs = errors(&text);
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert!(errs
        .iter()
        .any(|e| e.contains("server.threads: expected 1 to 1024")));
    assert!(errs
        .iter()
        .any(|e| e.contains("origins.web.keepalive.idle_timeout")));
    assert!(errs
        .iter()
        .any(|e| e.starts_with("edge.yaml:19: routes[0].origin: unknown origin \"nope\"")));
}

#[test]
fn bad_addresses_and_weights() {
    let text = GOOD.replace(
        r#"{address: "127.0.0.1:8001", weight: 3}"#,
        r#"{address: "127.0.0.1:8001", weight: 0}"#,
    );
    assert!(errors(&text)[0].contains("origins.web.servers[1]: weight must be at least 1"));
    let text = GOOD.replace(r#""127.0.0.1:8000", {"#, r#""nowhere", {"#);
    assert!(errors(&text)[0].contains(r#"origins.web.servers[0]: expected host:port"#));
    let text = GOOD.replace(r#"listen: ["127.0.0.1:8080"]"#, r#"listen: ["8080"]"#);
    assert!(errors(&text)[0].contains("listen[0]: expected ip:port"));
}

#[test]
fn bad_route_patterns() {
    let text = GOOD.replace(r#"host: "*.example.com""#, r#"host: "a.*.com""#);
    assert!(errors(&text)[0].contains("routes[0].host: expected"));
    let text = GOOD.replace("path_prefix: /static/", "path_prefix: static");
    assert!(errors(&text)[0].contains("routes[0].path_prefix"));
}

#[test]
fn bare_numbers_are_not_durations() {
    let text = GOOD.replace("keepalive_timeout: 65s", "keepalive_timeout: 65");
    assert!(errors(&text)[0]
        .contains(r#"client.keepalive_timeout: expected a duration with a unit like "65s""#));
}

#[test]
fn yaml_syntax_errors_have_a_line() {
    let errs = errors("listen: [\norigins: {");
    assert!(errs[0].starts_with("edge.yaml:"), "{errs:?}");
    assert!(errs[0].contains("not valid YAML"), "{errs:?}");
}

#[test]
fn hosts() {
    assert!(valid_host("www.example.com"));
    assert!(valid_host("example.com:8080"));
    assert!(valid_host("[::1]:80"));
    assert!(valid_host("127.0.0.1"));
    assert!(!valid_host("exa mple.com"));
    assert!(!valid_host("a/b"));
    assert!(!valid_host("host:port"));
    assert!(!valid_host(""));
}

#[test]
fn cache_object_size_is_bounded_by_the_eviction_weights() {
    let text = format!("{GOOD}cache: {{max_size: 1GiB, max_object_size: 100MiB}}\n");
    let errs = errors(&text);
    assert!(
        errs[0].contains("cache.max_object_size: at most 64MiB"),
        "{errs:?}"
    );
}

#[test]
fn a_disk_tier_lifts_the_object_size_bound_to_its_own_size() {
    let tmp = std::env::temp_dir().join("edge-config-disk");
    let with = |cache: &str| errors(&format!("{GOOD}cache: {cache}\n"));
    let ok = format!(
        "{GOOD}cache: {{max_object_size: 1GiB, disk: {{path: \"{}\", max_size: 2GiB}}}}\n",
        tmp.display()
    );
    assert!(parse(&ok, "edge.yaml").is_ok());
    let errs = with(&format!(
        "{{max_object_size: 4GiB, disk: {{path: \"{}\", max_size: 2GiB}}}}",
        tmp.display()
    ));
    assert!(
        errs[0]
            .contains("cache.max_object_size: must be more than 0 and at most cache.disk.max_size"),
        "{errs:?}"
    );
    let errs = with("{disk: {path: relative/dir, max_size: 1MiB}}");
    assert!(
        errs.iter()
            .any(|e| e.contains("cache.disk.max_size: expected at least 16MiB")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("cache.disk.path: must be an absolute path")),
        "{errs:?}"
    );
    let errs = with("{disk: {path: /etc/hostname/cache, max_size: 1GiB}}");
    assert!(
        errs.iter()
            .any(|e| e.contains("is not a directory the edge can write in")),
        "{errs:?}"
    );
    assert!(
        !with("{disk: {max_size: 1GiB}}").is_empty(),
        "path is required"
    );
}

#[test]
fn access_file_must_be_absolute_and_writable() {
    let with = |path: &str| format!("{GOOD}log: {{access_file: \"{path}\"}}\n");
    let dir = std::env::temp_dir();
    let ok = dir.join(format!("edge-config-{}-access.log", std::process::id()));
    let c = parse(&with(&ok.display().to_string()), "edge.yaml").unwrap();
    assert_eq!(c.log.access_file, Some(ok.clone()));
    assert!(!ok.exists(), "checking must not create the file");

    let errs = errors(&with("access.log"));
    assert!(
        errs[0].ends_with("log.access_file: expected an absolute path, got \"access.log\""),
        "{errs:?}"
    );
    let errs = errors(&with("/nonexistent-edge-dir/access.log"));
    assert!(
        errs[0].ends_with(
            "/nonexistent-edge-dir/access.log cannot be created: its directory does not exist"
        ),
        "{errs:?}"
    );
    let errs = errors(&with(&dir.display().to_string()));
    assert!(errs[0].ends_with("is a directory"), "{errs:?}");
}

#[test]
fn warm_connections_need_a_pool_to_go_back_to() {
    let c = parse(GOOD, "edge.yaml").unwrap();
    assert_eq!(c.origins["web"].keepalive.warm, 0, "off by default");
    assert_eq!(c.origins["web"].keepalive.warm_idle, Dur::secs(600));
    let errs = errors(&GOOD.replace("pool_size: 64", "pool_size: 64\n      warm: 65"));
    assert!(
        errs[0].contains("origins.web.keepalive.warm: 65 is more than pool_size (64)"),
        "{errs:?}"
    );
    let errs = errors(&GOOD.replace("pool_size: 64", "pool_size: 0\n      warm: 1"));
    assert!(
        errs[0].contains("keepalive.warm: needs pooling"),
        "{errs:?}"
    );
    let errs = errors(&GOOD.replace("pool_size: 64", "pool_size: 64\n      warm_idle: 0s"));
    assert!(
        errs[0].contains("keepalive.warm_idle: must be longer than 0s"),
        "{errs:?}"
    );
    let ok = parse(
        &GOOD.replace(
            "pool_size: 64",
            "pool_size: 64\n      warm: 2\n      warm_idle: 1m",
        ),
        "edge.yaml",
    )
    .unwrap();
    assert_eq!(ok.origins["web"].keepalive.warm, 2);
}

#[test]
fn cluster_settings_are_checked() {
    let c = parse(
        &format!("{GOOD}cluster: {{node: edge-fra-1, nats: {{url: \"nats://10.0.0.1:4222, tls://n2:4222\"}}}}\n"),
        "edge.yaml",
    )
    .unwrap();
    assert_eq!(c.cluster.node_name(), "edge-fra-1");
    let nats = c.cluster.nats.unwrap();
    assert_eq!(
        (nats.stream.as_str(), nats.max_age),
        ("EDGE_PURGE", Dur::secs(7 * 86_400))
    );
    assert!(
        !parse(GOOD, "edge.yaml")
            .unwrap()
            .cluster
            .node_name()
            .is_empty(),
        "the host name"
    );

    let errs = errors(&format!(
        "{GOOD}cluster:\n  node: \"fra 1\"\n  nats:\n    url: \"http://x:4222, nats://y\"\n    \
         stream: a.b\n    max_messages: 0\n    credentials_file: /nonexistent/creds\n    \
         max_age: 10s\n    replicas: 7\n    purge_again_after: 5m\n"
    ));
    let want = [
        "cluster.node: \"fra 1\": 1 to 64 letters",
        "cluster.nats.url: \"http://x:4222\": expected nats://host:port",
        "cluster.nats.url: \"nats://y\": expected nats://host:port",
        "cluster.nats.stream: \"a.b\"",
        "cluster.nats.credentials_file: cannot read /nonexistent/creds",
        "cluster.nats.max_messages: at least 1",
        "cluster.nats.max_age: at least 1m",
        "cluster.nats.replicas: 1 to 5",
        "cluster.nats.purge_again_after: at most 1m",
    ];
    assert_eq!(errs.len(), want.len(), "{errs:#?}");
    for (e, w) in errs.iter().zip(want) {
        assert!(e.contains(w), "{e} does not say {w}");
    }
    assert!(
        errors(&format!("{GOOD}cluster: {{nats: {{stream: X}}}}\n"))[0]
            .contains("cluster.nats.url: required")
    );
}

#[test]
fn a_shield_tier_hashes_and_falls_back_to_a_plain_origin() {
    let base = "listen: [\"127.0.0.1:8080\"]\ncluster: {node: f1}\nroutes: [{origin: shield}]\norigins:\n  web: {servers: [\"127.0.0.1:9001\"]}\n";
    let ok = format!(
        "{base}  shield: {{servers: [\"127.0.0.1:9002\"], balance: consistent_hash, shield: {{fallback: web}}}}\n"
    );
    let c = parse(&ok, "edge.yaml").unwrap();
    assert_eq!(c.origins["shield"].shield.as_ref().unwrap().fallback, "web");

    let errs = errors(&format!(
        "{base}  shield: {{servers: [\"127.0.0.1:9002\"], shield: {{fallback: shield}}}}\n  \
         s2: {{servers: [\"127.0.0.1:9003\"], balance: consistent_hash, shield: {{fallback: shield}}}}\n  \
         s3: {{servers: [\"127.0.0.1:9004\"], balance: consistent_hash, shield: {{fallback: nope}}}}\n"
    ));
    let want = [
        "origins.shield.balance: a shield tier needs balance: consistent_hash",
        "origins.shield.shield.fallback: an origin cannot be its own fallback",
        "origins.s2.shield.fallback: \"shield\" is a shield tier itself",
        "origins.s3.shield.fallback: unknown origin \"nope\"",
    ];
    assert_eq!(errs.len(), want.len(), "{errs:#?}");
    for w in want {
        assert!(errs.iter().any(|e| e.contains(w)), "no {w} in {errs:#?}");
    }
    let unnamed = errors(&ok.replace("cluster: {node: f1}\n", ""));
    assert!(
        unnamed[0].contains("origins.shield.shield: a shield tier needs cluster.node"),
        "{unnamed:?}"
    );
}

#[test]
fn range_misses_are_whole_unless_a_route_forwards_them() {
    let base =
        "listen: [\"127.0.0.1:8080\"]\norigins:\n  web: {servers: [\"127.0.0.1:1\"]}\nroutes:\n";
    let c = parse(&format!("{base}  - {{origin: web}}\n"), "edge.yaml").unwrap();
    assert_eq!(c.routes[0].cache.ranges, RangeMisses::Whole);
    let text = format!("{base}  - {{origin: web, cache: {{ranges: forward}}}}\n");
    let c = parse(&text, "edge.yaml").unwrap();
    assert_eq!(c.routes[0].cache.ranges, RangeMisses::Forward);
    let errs = errors(&format!(
        "{base}  - {{origin: web, cache: {{ranges: slices}}}}\n"
    ));
    assert!(
        errs[0].contains("routes[0].cache.ranges: unknown variant `slices`"),
        "{errs:?}"
    );
}
