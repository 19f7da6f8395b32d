//! Listener certificates: loaded from PEM files, checked (readable, key matching the
//! certificate, not expired), and chosen per handshake by the name the client asked for (SNI):
//! an exact name, else a wildcard one level up, else the listener's first certificate. The table
//! sits behind an `ArcSwap`, so a reload changes certificates for new handshakes at once while
//! established connections keep theirs.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{
    CertificateDer, ClientHello, CryptoProvider, PrivateKeyDer, ResolvesServerCert,
};

/// A certificate expiring sooner than this is worth a warning (`edge -t`, the log, the alert).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);

/// One certificate and its key, ready for handshakes.
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    /// DNS names it is valid for (subject alternative names, else the common name).
    pub names: Vec<String>,
    pub not_after: SystemTime,
    /// The first name, for logs and the expiry metric's `name` label.
    pub label: String,
}

impl fmt::Debug for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "certificate {} ({})", self.label, self.names.join(", "))
    }
}

/// Loads a certificate chain and its private key; refuses unreadable files, a key that does
/// not match the certificate, and an expired certificate.
pub fn load(cert: &Path, key: &Path) -> Result<Loaded, String> {
    pingora::tls::install_default_crypto_provider();
    let chain = read_pem(cert)?
        .into_iter()
        .filter_map(|item| match item {
            rustls_pemfile::Item::X509Certificate(c) => Some(c),
            _ => None,
        })
        .collect::<Vec<CertificateDer<'static>>>();
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let private = read_pem(key)?
        .into_iter()
        .find_map(|item| match item {
            rustls_pemfile::Item::Pkcs1Key(k) => Some(PrivateKeyDer::from(k)),
            rustls_pemfile::Item::Pkcs8Key(k) => Some(PrivateKeyDer::from(k)),
            rustls_pemfile::Item::Sec1Key(k) => Some(PrivateKeyDer::from(k)),
            _ => None,
        })
        .ok_or_else(|| format!("{}: no private key in it", key.display()))?;
    let (names, not_after) = describe(&chain[0]).map_err(|e| format!("{}: {e}", cert.display()))?;
    let provider = CryptoProvider::get_default().ok_or("no TLS crypto provider")?;
    let certified = CertifiedKey::from_der(chain, private, provider)
        .map_err(|e| format!("{} does not go with {}: {e}", key.display(), cert.display()))?;
    if not_after <= SystemTime::now() {
        return Err(format!(
            "{}: expired on {}",
            cert.display(),
            httpdate::fmt_http_date(not_after)
        ));
    }
    Ok(Loaded {
        key: Arc::new(certified),
        label: names.first().cloned().unwrap_or_else(|| "-".into()),
        names,
        not_after,
    })
}

fn read_pem(path: &Path) -> Result<Vec<rustls_pemfile::Item>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    rustls_pemfile::read_all(&mut bytes.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM: {e}", path.display()))
}

/// The certificate's DNS names and the end of its validity.
fn describe(der: &CertificateDer) -> Result<(Vec<String>, SystemTime), String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| format!("{e}"))?;
    let mut names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    let secs = cert.validity().not_after.timestamp();
    let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    Ok((names, not_after))
}

/// A listener's certificates by name.
#[derive(Debug)]
pub struct SniTable {
    certs: Vec<Loaded>,
    /// Exact names and `*.suffix` wildcards (stored as `suffix`) to indexes in `certs`; the
    /// first certificate that names one wins.
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
}

impl SniTable {
    /// `certs` in config order; the first is the default for names none of them has.
    pub fn new(certs: Vec<Loaded>) -> Self {
        let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
        for (i, c) in certs.iter().enumerate() {
            for n in &c.names {
                match n.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.to_string()).or_insert(i),
                    None => exact.entry(n.clone()).or_insert(i),
                };
            }
        }
        SniTable {
            certs,
            exact,
            wildcard,
        }
    }

    /// The certificate for the name the client sent (None: no SNI).
    pub fn pick(&self, sni: Option<&str>) -> Option<&Loaded> {
        let i = sni
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
            .and_then(|n| {
                self.exact.get(&n).copied().or_else(|| {
                    // A wildcard covers exactly one label (RFC 6125 section 6.4.3).
                    let (_, parent) = n.split_once('.')?;
                    self.wildcard.get(parent).copied()
                })
            })
            .unwrap_or(0);
        self.certs.get(i)
    }

    pub fn certs(&self) -> &[Loaded] {
        &self.certs
    }
}

/// What rustls asks on every handshake; holds the listener's table, swapped by reloads.
#[derive(Debug)]
pub struct CertResolver {
    table: ArcSwap<SniTable>,
}

impl CertResolver {
    pub fn new(table: SniTable) -> Self {
        CertResolver {
            table: ArcSwap::from_pointee(table),
        }
    }

    /// New handshakes use `table` from now on; established connections are not touched.
    pub fn replace(&self, table: SniTable) {
        self.table.store(Arc::new(table));
    }

    pub fn table(&self) -> Arc<SniTable> {
        self.table.load_full()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.table
            .load()
            .pick(hello.server_name())
            .map(|c| c.key.clone())
    }
}
