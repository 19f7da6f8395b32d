//! TLS: HTTPS listeners with certificates chosen by SNI and swapped on reload (`certs`), and
//! HTTPS origins (`upstream`).
//!
//! The backend is rustls (Pingora's `rustls` feature), for three reasons read in Pingora 0.9.1's
//! sources: it is the only backend whose upstream connector resumes TLS sessions on new
//! connections without patching Pingora (its `ClientConfig` keeps rustls' default resumption
//! store; the openssl and boringssl connectors keep no client session cache and expose no hook
//! to add one); it selects certificates with a `ResolvesServerCert` that a reload can swap
//! (every handshake asks it); and it builds with a C compiler alone (ring), where boringssl also
//! wants libclang and cmake. What it costs: Pingora does not surface whether a handshake was
//! resumed, so the handshake metrics carry the TLS version but no `resumed` label.

pub mod certs;
pub mod upstream;

use std::any::Any;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use prometheus::IntCounter;

use crate::config::{Config, ListenerTls};
use crate::state::Edge;
use certs::{CertResolver, SniTable};

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
    let v = &edge.metrics.client.tls_handshakes;
    let counted = Handshakes {
        tls13: v.with_label_values(&["TLSv1.3"]),
        tls12: v.with_label_values(&["TLSv1.2"]),
        other: v.with_label_values(&["other"]),
    };
    let mut settings =
        TlsSettings::with_callbacks(Box::new(counted)).expect("rustls settings with callbacks");
    settings.set_cert_resolver(resolver);
    if http2 {
        settings.enable_h2();
    }
    settings
}

/// Counts completed client handshakes by TLS version (handles resolved once).
struct Handshakes {
    tls13: IntCounter,
    tls12: IntCounter,
    other: IntCounter,
}

#[async_trait]
impl TlsAccept for Handshakes {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        // rustls names them TLSv1_3, openssl TLSv1.3.
        match tls.version() {
            Some(v) if v.contains("1_3") || v.contains("1.3") => self.tls13.inc(),
            Some(v) if v.contains("1_2") || v.contains("1.2") => self.tls12.inc(),
            _ => self.other.inc(),
        }
        None
    }
}
