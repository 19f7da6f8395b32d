//! The TLS part of the schema: listeners (cleartext or HTTPS, with HTTP/2) and HTTPS origins.
//! Certificates are checked by `validate` through `crate::tls::certs`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// One proxy listener, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub addr: SocketAddr,
    /// HTTPS: the certificates, chosen by SNI. None: cleartext.
    pub tls: Option<ListenerTls>,
    /// Offer HTTP/2: by ALPN on TLS listeners (default on), as cleartext h2 with prior knowledge
    /// (h2c) on cleartext ones (default off).
    pub http2: bool,
    /// Requests on this listener come from other edges of the fleet (a shield tier's listener):
    /// their `X-Forwarded-Proto` is the scheme the client used, and the cache key takes it.
    /// Default: false (the scheme is this connection's).
    pub from_edges: bool,
}

/// A cleartext HTTP/1.1 listener on `ip:port` (the short form of `listen:`).
impl std::str::FromStr for Listener {
    type Err = std::net::AddrParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Listener {
            addr: s.parse()?,
            tls: None,
            http2: false,
            from_edges: false,
        })
    }
}

/// A `listen:` entry as written: `"ip:port"`, or `{address, tls, http2}`.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(untagged)]
pub enum ListenSpec {
    Address(String),
    Full(ListenFields),
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenFields {
    /// `ip:port`. Required.
    pub address: String,
    /// Default: none (cleartext).
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// Default: on with `tls`, off without.
    #[serde(default)]
    pub http2: Option<bool>,
    /// Default: false. See [`Listener::from_edges`].
    #[serde(default)]
    pub from_edges: bool,
}

/// `listen[].tls`: the listener's certificates.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// At least one; chosen by SNI against each certificate's names (SAN, wildcards included);
    /// the first is the default for names none has. Certificate files hold the chain (leaf
    /// first).
    pub certificates: Vec<CertificateFiles>,
}

/// A certificate chain and its private key, PEM files.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `origins.NAME.tls`: HTTPS to the origin's servers.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields, default)]
pub struct OriginTls {
    /// Name sent in SNI and checked against the certificate. Default: the origin's `host`, else
    /// the server's name as written.
    pub sni: Option<String>,
    /// Verify the certificate chain and that it names `sni`. Default: true.
    pub verify: bool,
    /// PEM file of the CAs to trust for this origin. Default: none (the system's roots).
    pub ca_file: Option<PathBuf>,
}

impl Default for OriginTls {
    fn default() -> Self {
        OriginTls {
            sni: None,
            verify: true,
            ca_file: None,
        }
    }
}
