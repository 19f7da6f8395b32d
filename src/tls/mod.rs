//! TLS: HTTPS listeners with certificates chosen by SNI and swapped on reload (`certs`), and
//! HTTPS origins (`upstream`).
//!
//! The backend is rustls (Pingora's `rustls` feature), for three reasons read in Pingora 0.9.1's
//! sources: it is the only backend whose upstream connector resumes TLS sessions on new
//! connections without patching Pingora (its `ClientConfig` keeps rustls' default resumption
//! store; the openssl and boringssl connectors keep no client session cache and expose no hook
//! to add one); it selects certificates with a `ResolvesServerCert` that a reload can swap
//! (every handshake asks it); and it builds with a C compiler alone (ring), where boringssl also
//! wants libclang and cmake. Measured beside BoringSSL, OpenSSL and s2n under the same Pingora
//! server, it is level with BoringSSL and ahead of the other two (BENCHMARKS.md, "TLS
//! backends"). Pingora 0.9.1 does not surface whether a handshake was resumed nor
//! why one failed; the vendored pingora-core adds both (vendor/README.md), which
//! `handshakes` counts.

pub mod certs;
pub mod handshakes;
pub mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use pingora::listeners::tls::TlsSettings;

use crate::config::{Config, ListenerTls};
use crate::state::Edge;
use certs::{CertResolver, SniTable};
use handshakes::Handshakes;

/// Loads a listener's certificates, in config order.
pub fn load_table(tls: &ListenerTls) -> Result<SniTable, String> {
    let certs = tls
        .certificates
        .iter()
        .map(|c| certs::load(&c.cert, &c.key))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SniTable::new(certs))
}

/// One certificate resolver per HTTPS listener, by address.
pub fn resolvers(config: &Config) -> Result<HashMap<SocketAddr, Arc<CertResolver>>, String> {
    let mut out = HashMap::new();
    for l in &config.listen {
        if let Some(tls) = &l.tls {
            let table = load_table(tls).map_err(|e| format!("listen {}: {e}", l.addr))?;
            out.insert(l.addr, Arc::new(CertResolver::new(table)));
        }
    }
    Ok(out)
}

/// Applies a reloaded config's certificates to the listeners that exist: new handshakes use
/// them at once. All are loaded before any is swapped in, so a bad one changes nothing.
pub fn reload_certificates(
    resolvers: &HashMap<SocketAddr, Arc<CertResolver>>,
    config: &Config,
) -> Result<(), String> {
    let mut tables = Vec::new();
    for l in &config.listen {
        if let (Some(tls), Some(r)) = (&l.tls, resolvers.get(&l.addr)) {
            let table = load_table(tls).map_err(|e| format!("listen {}: {e}", l.addr))?;
            tables.push((r, table));
        }
    }
    for (r, table) in tables {
        r.replace(table);
    }
    Ok(())
}

/// Pingora's settings for an HTTPS listener: TLS 1.2 and 1.3 (rustls' defaults: AEAD suites
/// with forward secrecy only, as Mozilla's intermediate profile), certificates from `resolver`,
/// h2 offered by ALPN when `http2`.
pub fn listener_settings(resolver: Arc<CertResolver>, http2: bool, edge: &Edge) -> TlsSettings {
    let counted = Handshakes::new(&edge.metrics.client);
    let mut settings =
        TlsSettings::with_callbacks(Box::new(counted)).expect("rustls settings with callbacks");
    settings.set_cert_resolver(resolver);
    if http2 {
        settings.enable_h2();
    }
    settings
}
