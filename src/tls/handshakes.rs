//! Client TLS handshakes as the metrics see them: each completed one counted by version and by
//! whether it resumed a session, each failed one by why it failed.
//!
//! Both come from Pingora's `TlsAccept` callbacks, which run on the connection's task right
//! after the handshake ends; `resumed` and the failure hook are the two additions of the
//! vendored pingora-core (vendor/README.md).

use std::any::Any;
use std::io;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use prometheus::IntCounter;
use rustls::AlertDescription;

use crate::metrics::client::ClientMetrics;

/// Why a client's TLS handshake failed: the `reason` label of
/// `edge_client_tls_handshake_failures_total`, in [`failure_reason`]'s terms.
pub const FAILURE_REASONS: [&str; 6] = [
    "closed",
    "not_tls",
    "certificate_rejected",
    "incompatible",
    "protocol",
    "other",
];

/// The counters one listener's handshakes move, resolved once.
pub struct Handshakes {
    /// By `[TLSv1.2, TLSv1.3, other][full, resumed]`.
    completed: [[IntCounter; 2]; 3],
    /// By [`FAILURE_REASONS`].
    failed: [IntCounter; 6],
}

impl Handshakes {
    pub fn new(m: &ClientMetrics) -> Self {
        let done = &m.tls_handshakes;
        Handshakes {
            completed: ["TLSv1.2", "TLSv1.3", "other"]
                .map(|v| ["false", "true"].map(|r| done.with_label_values(&[v, r]))),
            failed: FAILURE_REASONS.map(|r| m.tls_handshake_failures.with_label_values(&[r])),
        }
    }
}

#[async_trait]
impl TlsAccept for Handshakes {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        // rustls names them TLSv1_3, openssl TLSv1.3.
        let version = match tls.version() {
            Some(v) if v.contains("1_2") || v.contains("1.2") => 0,
            Some(v) if v.contains("1_3") || v.contains("1.3") => 1,
            _ => 2,
        };
        let resumed = tls.resumed().unwrap_or(false) as usize;
        self.completed[version][resumed].inc();
        None
    }

    fn handshake_failed_callback(&self, error: &pingora::Error) {
        let reason = failure_reason(error);
        let i = FAILURE_REASONS.iter().position(|r| *r == reason);
        // Counted, not logged: Pingora logs it at debug level (with the client's address).
        self.failed[i.unwrap_or(FAILURE_REASONS.len() - 1)].inc();
    }
}

/// Sorts a failed accept into one of [`FAILURE_REASONS`] by its root cause: the socket's error,
/// or the rustls error the handshake stopped on.
pub fn failure_reason(error: &pingora::Error) -> &'static str {
    let Some(io) = error.root_cause().downcast_ref::<io::Error>() else {
        return "other";
    };
    let tls = io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
    match tls {
        Some(e) => tls_reason(e),
        None => match io.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => "closed",
            _ => "other",
        },
    }
}

fn tls_reason(e: &rustls::Error) -> &'static str {
    use rustls::Error as E;
    match e {
        // The first record's type byte is not TLS's: "GET /" or "PRI *" on the TLS port.
        E::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => "not_tls",
        E::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied,
        ) => "certificate_rejected",
        E::PeerIncompatible(_) | E::NoApplicationProtocol => "incompatible",
        E::AlertReceived(
            AlertDescription::ProtocolVersion
            | AlertDescription::HandshakeFailure
            | AlertDescription::InsufficientSecurity
            | AlertDescription::NoApplicationProtocol,
        ) => "incompatible",
        E::InvalidMessage(_)
        | E::PeerMisbehaved(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. }
        | E::DecryptError => "protocol",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::ErrorType;

    fn accept_error(cause: io::Error) -> pingora::BError {
        pingora::Error::because(ErrorType::TLSHandshakeFailure, "tls connect error", cause)
    }

    fn tls(e: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn failures_are_sorted_by_their_root_cause() {
        let cases = [
            (io::ErrorKind::UnexpectedEof.into(), "closed"),
            (io::ErrorKind::ConnectionReset.into(), "closed"),
            (
                tls(rustls::InvalidMessage::InvalidContentType.into()),
                "not_tls",
            ),
            (
                tls(rustls::Error::AlertReceived(AlertDescription::UnknownCA)),
                "certificate_rejected",
            ),
            (
                tls(rustls::PeerIncompatible::NoCipherSuitesInCommon.into()),
                "incompatible",
            ),
            (tls(rustls::Error::NoApplicationProtocol), "incompatible"),
            (tls(rustls::Error::DecryptError), "protocol"),
            (io::ErrorKind::PermissionDenied.into(), "other"),
        ];
        for (cause, expected) in cases {
            let shown = cause.to_string();
            assert_eq!(failure_reason(&accept_error(cause)), expected, "{shown}");
        }
        // A Pingora error wrapped in another still reaches the socket's.
        let inner = accept_error(io::ErrorKind::UnexpectedEof.into());
        let outer = pingora::Error::because(ErrorType::TLSHandshakeFailure, "accept", inner);
        assert_eq!(failure_reason(&outer), "closed");
    }
}
