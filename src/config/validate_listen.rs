//! Validation of what listens and what speaks TLS: the proxy's listeners and their
//! certificates, the admin listener and its token, origins' TLS settings. Part of `validate`,
//! which calls these with its `Checker`.

use std::net::SocketAddr;

use super::locate::Seg;
use super::schema::{AdminSettings, OriginConfig};
use super::tls::{ListenSpec, Listener, ListenerTls};
use super::validate::{key, origin_path, Checker};
use crate::host::valid_host;

/// `listen`: at least one listener, each an `ip:port`, no address twice; TLS listeners with
/// certificates that load (readable, key matching, not expired; a warning on stderr when one
/// expires within 14 days).
pub(super) fn check_listen(ck: &mut Checker, listen: &[ListenSpec]) -> Vec<Listener> {
    if listen.is_empty() && !ck.errors.iter().any(|e| e.path == "listen") {
        ck.error(&[key("listen")], "at least one address is needed");
    }
    let mut out: Vec<Listener> = Vec::new();
    for (i, spec) in listen.iter().enumerate() {
        let (address, tls, http2, from_edges) = match spec {
            ListenSpec::Address(a) => (a, None, None, false),
            ListenSpec::Full(f) => (&f.address, f.tls.clone(), f.http2, f.from_edges),
        };
        let mut path = vec![key("listen"), Seg::Index(i)];
        if matches!(spec, ListenSpec::Full(_)) {
            path.push(key("address"));
        }
        let addr = match address.parse::<SocketAddr>() {
            Ok(a) if out.iter().any(|l| l.addr == a) => {
                ck.error(&path, format!("{a} is listed twice"));
                continue;
            }
            Ok(a) => a,
            Err(_) => {
                let msg = format!(r#"expected ip:port like "127.0.0.1:8080", got "{address}""#);
                ck.error(&path, msg);
                continue;
            }
        };
        if let Some(t) = &tls {
            check_certificates(ck, i, t);
        }
        if from_edges && addr.ip().is_unspecified() {
            // Allowed (a shield may bind every address behind a firewall), but said: a client
            // that reaches it could fill the `https://` keys with what an `http://` request got.
            eprintln!(
                "edge: warning: {}: listen[{i}]: from_edges on {addr}, every address: \
                 X-Forwarded-Proto is trusted there; make sure only your front edges reach it",
                ck.file
            );
        }
        out.push(Listener {
            addr,
            http2: http2.unwrap_or(tls.is_some()),
            tls,
            from_edges,
        });
    }
    out
}

/// Every certificate of a TLS listener loads; the first error of each is reported.
pub(super) fn check_certificates(ck: &mut Checker, i: usize, tls: &ListenerTls) {
    let base = [
        key("listen"),
        Seg::Index(i),
        key("tls"),
        key("certificates"),
    ];
    if tls.certificates.is_empty() {
        ck.error(&base, "at least one certificate is needed");
    }
    for (j, c) in tls.certificates.iter().enumerate() {
        let mut path = base.to_vec();
        path.push(Seg::Index(j));
        match crate::tls::certs::load(&c.cert, &c.key) {
            Ok(loaded) => {
                let left = loaded
                    .not_after
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default();
                if left < crate::tls::certs::EXPIRY_WARNING {
                    eprintln!(
                        "edge: warning: {}: certificate {} expires in {} days",
                        ck.file,
                        c.cert.display(),
                        left.as_secs() / 86_400
                    );
                }
            }
            Err(e) => ck.error(&path, e),
        }
    }
}

/// `admin.listen`: an `ip:port` that is not also a proxy listen address, and on loopback unless
/// a token is required; `admin.token_file`: readable, not empty.
pub(super) fn check_admin(
    ck: &mut Checker,
    a: &AdminSettings,
    listen: &[Listener],
) -> Option<SocketAddr> {
    if let Some(f) = &a.token_file {
        match std::fs::read_to_string(f) {
            Ok(t) if !t.trim().is_empty() => {}
            Ok(_) => ck.error(
                &[key("admin"), key("token_file")],
                format!("{} is empty", f.display()),
            ),
            Err(e) => ck.error(
                &[key("admin"), key("token_file")],
                format!("{}: {e}", f.display()),
            ),
        }
    }
    match a.listen.parse::<SocketAddr>() {
        Ok(addr) => {
            if listen.iter().any(|l| l.addr == addr) {
                ck.error(
                    &[key("admin"), key("listen")],
                    format!("{addr} is also a proxy listen address"),
                );
            }
            if !addr.ip().is_loopback() && a.token_file.is_none() {
                ck.error(
                    &[key("admin"), key("listen")],
                    format!(
                        "{addr} is reachable beyond this machine: set admin.token_file (reload \
                         and purge must not answer anyone), or listen on 127.0.0.1"
                    ),
                );
            }
            Some(addr)
        }
        Err(_) => {
            ck.error(
                &[key("admin"), key("listen")],
                format!(
                    r#"expected ip:port like "127.0.0.1:9090", got "{}""#,
                    a.listen
                ),
            );
            None
        }
    }
}

/// `tls` and `http2` of an origin: a CA file that exists unless verification is off, a valid
/// SNI name, h2 only over TLS.
pub(super) fn check_origin_tls(ck: &mut Checker, name: &str, o: &OriginConfig) {
    let at = |rest: &[&str]| origin_path(name, rest);
    if o.http2 && o.tls.is_none() {
        ck.error(
            &at(&["http2"]),
            "HTTP/2 to an origin needs tls (h2 is negotiated by ALPN)",
        );
    }
    let Some(tls) = &o.tls else { return };
    if let Some(f) = &tls.ca_file {
        if tls.verify && std::fs::metadata(f).is_err() {
            ck.error(
                &at(&["tls", "ca_file"]),
                format!(
                    "cannot read {} (to skip verification instead, set verify: false)",
                    f.display()
                ),
            );
        }
    }
    if let Some(sni) = &tls.sni {
        if !valid_host(sni) || sni.contains(':') {
            ck.error(
                &at(&["tls", "sni"]),
                format!("\"{sni}\" is not a host name"),
            );
        }
    }
}
