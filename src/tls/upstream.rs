//! HTTPS origins: the peer settings Pingora connects with (TLS on, SNI, verification, ALPN for
//! h2), the CA bundle the connector trusts, and TLS for the edge's own probes (health checks and
//! idle-timeout probes reach a TLS server the way requests do).
//!
//! Trust: Pingora's rustls connector resumes sessions only while every connection shares one
//! `ClientConfig`; a per-peer CA builds a fresh one per connection, and resumption is lost. So
//! the origins' `ca_file`s are gathered at start, with the system's roots, into one bundle that
//! Pingora's connector loads once (`ServerConf.ca_file`). A `ca_file` that changes needs a
//! restart or an upgrade (reload says so); an origin whose `ca_file` is not in the bundle
//! (added by a reload) still verifies against it alone, per peer, without resumption.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pingora::protocols::ALPN;
use pingora::tls::{
    CertificateDer, ClientConfig, DigitallySignedStruct, HandshakeSignatureValid, RootCertStore,
    ServerCertVerified, ServerCertVerifier, ServerName, SignatureScheme, TlsConnector, UnixTime,
};
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::WrappedX509;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::{Config, OriginConfig, OriginTls};

/// Where Debian's (and most distributions') system roots are.
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The CA files of every HTTPS origin of `config` that names one.
pub fn ca_files(config: &Config) -> BTreeSet<PathBuf> {
    config
        .origins
        .values()
        .filter_map(|o| o.tls.as_ref()?.ca_file.clone())
        .collect()
}

/// Writes the bundle Pingora's connector trusts: the system roots plus every origin's CA file.
/// None when no origin names a CA file (Pingora then loads the system roots itself).
pub fn write_bundle(config: &Config, path: &Path) -> std::io::Result<Option<PathBuf>> {
    let files = ca_files(config);
    if files.is_empty() {
        return Ok(None);
    }
    let mut pem = std::fs::read(SYSTEM_ROOTS).unwrap_or_default();
    for f in &files {
        pem.push(b'\n');
        pem.extend(std::fs::read(f)?);
    }
    // A new file every start, never through a link someone left at a predictable path (the
    // default is under /tmp): the old one goes, and create_new refuses anything that is there
    // again by the time it is opened.
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    std::io::Write::write_all(&mut file, &pem)?;
    Ok(Some(path.to_path_buf()))
}

/// The name sent in SNI and verified: `tls.sni`, else the origin's `host`, else the server's
/// name as written (without the port).
pub fn sni(origin: &OriginConfig, tls: &OriginTls, server: &str) -> String {
    tls.sni
        .clone()
        .or_else(|| origin.host.clone())
        .unwrap_or_else(|| {
            let name = server.rsplit_once(':').map_or(server, |(h, _)| h);
            name.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        })
}

/// TLS settings of a peer of `origin` (which has `tls`). `in_bundle`: the CA files the
/// connector was started with.
pub fn configure_peer(
    peer: &mut HttpPeer,
    origin: &OriginConfig,
    tls: &OriginTls,
    in_bundle: &BTreeSet<PathBuf>,
) {
    let o = &mut peer.options;
    o.verify_cert = tls.verify;
    o.verify_hostname = tls.verify;
    if origin.http2 {
        // Many concurrent misses share one connection; h1 if the origin does not offer h2.
        o.alpn = ALPN::H2H1;
        o.max_h2_streams = 100;
    }
    if let Some(f) = tls.ca_file.as_ref().filter(|f| !in_bundle.contains(*f)) {
        match load_ca(f) {
            Ok(ca) => o.ca = Some(Arc::from(ca)),
            Err(e) => log::error!(
                "{}: {e}; verifying against the start-up bundle",
                f.display()
            ),
        }
    }
}

fn load_ca(path: &Path) -> Result<Vec<WrappedX509>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let certs: Vec<WrappedX509> = rustls_pemfile::certs(&mut bytes.as_slice())
        .filter_map(Result::ok)
        // parse_x509 panics on bad DER: only certificates that parse are wrapped.
        .filter(|der| x509_parser::parse_x509_certificate(der.as_ref()).is_ok())
        .map(|der| WrappedX509::new(der.to_vec(), pingora::utils::tls::parse_x509))
        .collect();
    if certs.is_empty() {
        return Err("no certificate in it".into());
    }
    Ok(certs)
}

/// The client side of the edge's own probes to an HTTPS origin: the same trust as requests
/// (its CA file or the system roots; nothing when `verify: false`).
pub fn probe_config(tls: &OriginTls) -> Arc<ClientConfig> {
    pingora::tls::install_default_crypto_provider();
    let builder = ClientConfig::builder();
    let mut config = if tls.verify {
        let mut roots = RootCertStore::empty();
        let file = tls
            .ca_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(SYSTEM_ROOTS));
        if let Ok(bytes) = std::fs::read(&file) {
            for der in rustls_pemfile::certs(&mut bytes.as_slice()).filter_map(Result::ok) {
                let _ = roots.add(der);
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny))
            .with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A byte stream to an origin server: TCP, or TLS over it.
pub trait ProbeStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ProbeStream for T {}

/// Connects a probe: plain TCP, or TLS with `tls` = (client config, SNI).
pub async fn connect(
    addr: SocketAddr,
    tls: Option<(&Arc<ClientConfig>, &str)>,
) -> Result<Box<dyn ProbeStream>, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let Some((config, sni)) = tls else {
        return Ok(Box::new(tcp));
    };
    let name = ServerName::try_from(sni.to_string()).map_err(|e| format!("sni {sni}: {e}"))?;
    let tls = TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    Ok(Box::new(tls))
}

/// For `verify: false`: the operator chose to trust whatever the origin presents.
#[derive(Debug)]
struct AcceptAny;

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, pingora::tls::RusTlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, pingora::tls::RusTlsError> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, pingora::tls::RusTlsError> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        pingora::tls::CryptoProvider::get_default()
            .map(|p| p.signature_verification_algorithms.supported_schemes())
            .unwrap_or_default()
    }
}
