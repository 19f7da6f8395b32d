//! TLS for the tests, on rustls's synchronous API over std sockets (ring only, as the edge's
//! Pingora build): certificates made at test time by a throwaway CA (`TestCa`, no key is ever
//! committed), an HTTPS origin (`TlsOrigin`: the test origin's HTTP/1.1 over TLS, counting
//! handshakes and resumptions) and an HTTPS client (`TlsClient`: the raw client over TLS,
//! telling what was negotiated and what certificate the server presented). Loopback only.
//!
//! A certificate no test trusts comes from a second `TestCa`: clients trust the CA they are
//! given, nothing else (no system roots).

use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::ServerSessionMemoryCache;
use rustls::{
    ClientConfig, ClientConnection, HandshakeKind, ProtocolVersion, RootCertStore, ServerConfig,
    ServerConnection, StreamOwned, SupportedProtocolVersion,
};
use x509_parser::extensions::GeneralName;

use super::client::read_response_from;
use super::origin::Conn;
use super::{temp_path, Origin, Response};

const DAY: Duration = Duration::from_secs(24 * 3600);

/// ring, named rather than left to rustls's process default (which fails when the build
/// enables more than one provider).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// A certificate and its private key, as PEM files (the certificate file holds the leaf, then
/// the CA: the chain a server sends). The files live as long as the `TestCa` that issued them.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    /// This certificate with `other`'s key: a pair whose key does not match the certificate.
    pub fn with_key_of(&self, other: &CertFiles) -> CertFiles {
        CertFiles {
            cert: self.cert.clone(),
            key: other.key.clone(),
        }
    }
}

/// A self-signed CA made at test time (ECDSA P-256). Removes every file it wrote on drop.
pub struct TestCa {
    pub name: String,
    cert: rcgen::Certificate,
    key: KeyPair,
    pem_path: PathBuf,
    files: Mutex<Vec<PathBuf>>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem_path = temp_path(&format!("{}-ca.pem", file_part(name)));
        std::fs::write(&pem_path, cert.pem()).unwrap();
        TestCa {
            name: name.to_string(),
            cert,
            key,
            files: Mutex::new(vec![pem_path.clone()]),
            pem_path,
        }
    }

    /// The CA certificate, as a PEM file (what a client or the edge is told to trust).
    pub fn pem_path(&self) -> &Path {
        &self.pem_path
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `names` (DNS names, wildcards such as `*.example.com`, or IP
    /// addresses), valid from a day ago for a year.
    pub fn issue(&self, names: &[&str]) -> CertFiles {
        let now = SystemTime::now();
        self.issue_valid(names, now - DAY, now + 365 * DAY)
    }

    /// A server certificate for `names` that expired yesterday (valid for the 30 days before).
    pub fn issue_expired(&self, names: &[&str]) -> CertFiles {
        let now = SystemTime::now();
        self.issue_valid(names, now - 31 * DAY, now - DAY)
    }

    /// A server certificate for `names` valid from `not_before` to `not_after` (whole seconds).
    pub fn issue_valid(
        &self,
        names: &[&str],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> CertFiles {
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(sans).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        // rcgen's own time type (from its `time`), counted from the epoch.
        params.not_before = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(not_before);
        params.not_after = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(not_after);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();

        let stem = format!(
            "{}-{}",
            file_part(&self.name),
            file_part(names.first().copied().unwrap_or("leaf"))
        );
        let files = CertFiles {
            cert: temp_path(&format!("{stem}.crt")),
            key: temp_path(&format!("{stem}.key")),
        };
        std::fs::write(&files.cert, format!("{}{}", cert.pem(), self.cert.pem())).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        let mut written = self.files.lock().unwrap();
        written.push(files.cert.clone());
        written.push(files.key.clone());
        files
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        for f in self.files.lock().unwrap().iter() {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Whole seconds since 1970 (certificate times have no fractions).
fn since_epoch(t: SystemTime) -> Duration {
    Duration::from_secs(t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs())
}

/// `s` with anything but letters, digits, `-` and `.` replaced, for a file name.
fn file_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The certificates in a PEM file, in order.
pub fn load_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    let pem = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The (first) private key in a PEM file.
pub fn load_key(path: &Path) -> PrivateKeyDer<'static> {
    let pem = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    rustls_pemfile::private_key(&mut pem.as_slice())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .unwrap_or_else(|| panic!("{}: no private key", path.display()))
}

/// The DNS names (subjectAltName) of a DER certificate.
pub fn dns_names(der: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("a certificate");
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(name) => Some(name.to_string()),
            _ => None,
        })
        .collect()
}

/// The TLS error under an I/O error of a handshake or a read, if TLS is what failed (e.g.
/// `InvalidCertificate(UnknownIssuer)`, `AlertReceived(..)`).
pub fn tls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref()
}

/// The application protocols a `TlsOrigin` offers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Alpn {
    /// No ALPN: nothing is negotiated, whatever the client offers.
    Off,
    /// `http/1.1` only (a client offering only `h2` fails the handshake).
    #[default]
    Http1,
    /// `h2`, then `http/1.1`. The origin speaks HTTP/1.1 only: a connection that negotiates
    /// `h2` is logged (`handshake_log`) and closed.
    H2Http1,
}

impl Alpn {
    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::Off => Vec::new(),
            Alpn::Http1 => vec![b"http/1.1".to_vec()],
            Alpn::H2Http1 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        }
    }
}

/// How a `TlsOrigin` does TLS.
#[derive(Clone, Debug)]
pub struct TlsOptions {
    pub alpn: Alpn,
    /// TLS 1.2 only (else 1.2 and 1.3).
    pub tls12_only: bool,
    /// The origin's keep-alive timeout, as `Origin::start_with_idle`.
    pub idle: Duration,
}

impl Default for TlsOptions {
    fn default() -> TlsOptions {
        TlsOptions {
            alpn: Alpn::default(),
            tls12_only: false,
            idle: Duration::from_secs(60),
        }
    }
}

/// A server config for `certs` with `opts`. Resumption is on: a stateful session cache serves
/// both TLS 1.3 tickets (rustls sends 2 per handshake) and TLS 1.2 session IDs. Fails on a key
/// that does not match the certificate.
pub fn server_config(certs: &CertFiles, opts: &TlsOptions) -> Result<ServerConfig, rustls::Error> {
    let versions: &[&'static SupportedProtocolVersion] = if opts.tls12_only {
        &[&rustls::version::TLS12]
    } else {
        rustls::ALL_VERSIONS
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_single_cert(load_certs(&certs.cert), load_key(&certs.key))?;
    config.session_storage = ServerSessionMemoryCache::new(256);
    config.alpn_protocols = opts.alpn.protocols();
    Ok(config)
}

/// One completed handshake, as the origin saw it.
#[derive(Clone, Debug)]
pub struct Handshake {
    /// The SNI the client sent.
    pub sni: Option<String>,
    pub alpn: Option<String>,
    pub version: Option<ProtocolVersion>,
    pub resumed: bool,
}

#[derive(Default)]
struct TlsState {
    accepted: AtomicUsize,
    handshakes: Mutex<Vec<Handshake>>,
    failures: Mutex<Vec<String>>,
}

/// The test origin over TLS on 127.0.0.1: everything `Origin` does (`set`, `requests`,
/// `request_count`, `set_delay`, ... through `Deref`), one thread per connection, each
/// handshaking first. Handshake counts settle once the client has read a response (a TLS 1.3
/// client is done before the server): else wait on them with `wait_until`. Stops on drop.
pub struct TlsOrigin {
    origin: Origin,
    tls: Arc<TlsState>,
}

impl TlsOrigin {
    /// HTTP/1.1 over TLS 1.2 or 1.3, ALPN `http/1.1`, with `certs`.
    pub fn start(name: &str, certs: &CertFiles) -> TlsOrigin {
        Self::start_with(name, certs, TlsOptions::default())
    }

    pub fn start_with(name: &str, certs: &CertFiles, opts: TlsOptions) -> TlsOrigin {
        let config = Arc::new(
            server_config(certs, &opts)
                .unwrap_or_else(|e| panic!("TLS origin {name} with {certs:?}: {e}")),
        );
        let tls = Arc::new(TlsState::default());
        let st = tls.clone();
        let origin = Origin::start_over(name, opts.idle, move |tcp| handshake(tcp, &config, &st));
        TlsOrigin { origin, tls }
    }

    /// TCP connections accepted (handshakes failed or not; `Origin::accepted` through `Deref`
    /// would count connections that carried a request).
    pub fn accepted(&self) -> usize {
        self.tls.accepted.load(Ordering::SeqCst)
    }
    /// Handshakes completed.
    pub fn handshakes(&self) -> usize {
        self.tls.handshakes.lock().unwrap().len()
    }
    /// Handshakes completed that resumed an earlier session (TLS 1.3 ticket, TLS 1.2 session
    /// ID).
    pub fn resumed(&self) -> usize {
        let log = self.tls.handshakes.lock().unwrap();
        log.iter().filter(|h| h.resumed).count()
    }
    /// Every completed handshake, in order.
    pub fn handshake_log(&self) -> Vec<Handshake> {
        self.tls.handshakes.lock().unwrap().clone()
    }
    /// Handshakes that failed (the client gave up, sent an alert, or spoke no TLS).
    pub fn failed_handshakes(&self) -> usize {
        self.tls.failures.lock().unwrap().len()
    }
    /// Why each failed handshake failed, as rustls says it (e.g. `received fatal alert:
    /// UnknownCA`).
    pub fn handshake_errors(&self) -> Vec<String> {
        self.tls.failures.lock().unwrap().clone()
    }
}

impl Deref for TlsOrigin {
    type Target = Origin;
    fn deref(&self) -> &Origin {
        &self.origin
    }
}

type ServerStream = StreamOwned<ServerConnection, TcpStream>;

/// The server side of one connection's handshake (bounded: 10 s a read); None if it failed,
/// or if `h2` was negotiated (the origin speaks HTTP/1.1 only).
fn handshake(
    mut tcp: TcpStream,
    config: &Arc<ServerConfig>,
    st: &TlsState,
) -> Option<ServerStream> {
    st.accepted.fetch_add(1, Ordering::SeqCst);
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut conn = ServerConnection::new(config.clone()).ok()?;
    while conn.is_handshaking() {
        // Also writes what the handshake queued last (TLS 1.3 tickets).
        if let Err(e) = conn.complete_io(&mut tcp) {
            st.failures.lock().unwrap().push(e.to_string());
            return None;
        }
    }
    let alpn = conn
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let h2 = alpn.as_deref() == Some("h2");
    st.handshakes.lock().unwrap().push(Handshake {
        sni: conn.server_name().map(str::to_string),
        alpn,
        version: conn.protocol_version(),
        resumed: conn.handshake_kind() == Some(HandshakeKind::Resumed),
    });
    if h2 {
        return None;
    }
    Some(StreamOwned::new(conn, tcp))
}

impl Conn for ServerStream {
    fn set_read_timeout(&self, limit: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(limit)
    }
    fn close(&mut self) {
        self.conn.send_close_notify();
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut self.sock).is_err() {
                break;
            }
        }
        let _ = self.sock.shutdown(Shutdown::Both);
    }
}

/// A client config trusting only the CA in `ca_pem` (TLS 1.2 and 1.3), offering `alpn`. It
/// keeps sessions (256, in memory): connections made with the same config resume.
pub fn client_config(ca_pem: &Path, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    client_config_versions(ca_pem, alpn, rustls::ALL_VERSIONS)
}

/// As `client_config`, with only these versions (`&[&rustls::version::TLS12]`).
pub fn client_config_versions(
    ca_pem: &Path,
    alpn: &[&[u8]],
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca_pem) {
        roots.add(cert).unwrap();
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A raw HTTP/1.1 client on one keep-alive TLS connection, handshaken on connect.
pub struct TlsClient {
    reader: BufReader<StreamOwned<ClientConnection, TcpStream>>,
}

impl TlsClient {
    /// Connects to `addr` with SNI `sni` (an IP address sends none, and is checked against the
    /// certificate's IP names), trusting only `ca_pem`, offering `alpn`. Panics if the
    /// handshake fails.
    pub fn connect(addr: SocketAddr, sni: &str, ca_pem: &Path, alpn: &[&[u8]]) -> TlsClient {
        Self::connect_with(addr, sni, client_config(ca_pem, alpn))
    }

    /// As `connect`, with a config that can be shared (to resume a session).
    pub fn connect_with(addr: SocketAddr, sni: &str, config: Arc<ClientConfig>) -> TlsClient {
        Self::try_connect_with(addr, sni, config)
            .unwrap_or_else(|e| panic!("TLS handshake with {addr} as {sni}: {e}"))
    }

    /// As `connect`, returning the handshake's error (see `tls_error`).
    pub fn try_connect(
        addr: SocketAddr,
        sni: &str,
        ca_pem: &Path,
        alpn: &[&[u8]],
    ) -> io::Result<TlsClient> {
        Self::try_connect_with(addr, sni, client_config(ca_pem, alpn))
    }

    /// As `connect_with`, returning the handshake's error (see `tls_error`).
    pub fn try_connect_with(
        addr: SocketAddr,
        sni: &str,
        config: Arc<ClientConfig>,
    ) -> io::Result<TlsClient> {
        let name = ServerName::try_from(sni.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
        let mut sock = TcpStream::connect(addr)?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock)?;
        }
        Ok(TlsClient {
            reader: BufReader::new(StreamOwned::new(conn, sock)),
        })
    }

    fn conn(&self) -> &ClientConnection {
        &self.reader.get_ref().conn
    }

    /// The DNS names of the certificate the server presented.
    pub fn peer_names(&self) -> Vec<String> {
        self.conn()
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map_or_else(Vec::new, |leaf| dns_names(leaf))
    }
    /// How many certificates the server sent (leaf and chain).
    pub fn peer_chain_len(&self) -> usize {
        self.conn().peer_certificates().map_or(0, |c| c.len())
    }
    /// The negotiated application protocol (`h2`, `http/1.1`), if any.
    pub fn alpn(&self) -> Option<String> {
        let p = self.conn().alpn_protocol()?;
        Some(String::from_utf8_lossy(p).into_owned())
    }
    /// The negotiated TLS version (`ProtocolVersion::TLSv1_3`, ...).
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.conn().protocol_version()
    }
    /// Whether the handshake resumed a session of the client config.
    pub fn resumed(&self) -> bool {
        self.conn().handshake_kind() == Some(HandshakeKind::Resumed)
    }

    pub fn get(&mut self, host: &str, path: &str) -> Response {
        self.send_raw(&format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"))
            .expect("a response")
    }

    /// A request with extra header lines (each `Name: value`), as `Client::request`.
    pub fn request(&mut self, method: &str, host: &str, path: &str, headers: &[&str]) -> Response {
        let raw = super::client::request_text(method, host, path, headers);
        self.send_raw_no_wait(&raw);
        self.read_response_to(method).expect("a response")
    }

    /// Sends bytes as they are, without reading anything back.
    pub fn send_raw_no_wait(&mut self, raw: &str) {
        self.write(raw).expect("request sent");
    }

    /// Sends bytes as they are and reads one response; None if the connection closed first.
    pub fn send_raw(&mut self, raw: &str) -> Option<Response> {
        self.write(raw).ok()?;
        self.read_response()
    }

    fn write(&mut self, raw: &str) -> io::Result<()> {
        let stream = self.reader.get_mut();
        stream.write_all(raw.as_bytes())?;
        stream.flush()
    }

    pub fn read_response(&mut self) -> Option<Response> {
        self.read_response_to("GET")
    }

    /// Reads a response to a request with `method` (a HEAD response has no body).
    pub fn read_response_to(&mut self, method: &str) -> Option<Response> {
        read_response_from(&mut self.reader, method)
    }

    /// Waits (bounded by `limit` a socket read) for the server to close this connection, with a
    /// close_notify or without; returns how long it took, or None if it stayed open.
    pub fn wait_for_close(&mut self, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        self.reader
            .get_ref()
            .sock
            .set_read_timeout(Some(limit))
            .unwrap();
        let mut b = [0u8; 1];
        match self.reader.read(&mut b) {
            Ok(0) => Some(start.elapsed()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof
                ) =>
            {
                Some(start.elapsed())
            }
            _ => None,
        }
    }
}
