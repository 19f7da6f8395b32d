//! Warm TLS connections to HTTPS origins over HTTP/1.1, through Pingora's custom upstream
//! connector.
//!
//! Pingora asks the proxy's custom connector for a new connection whenever a peer's ALPN is
//! `Custom` and its HTTP/1 pool has none to reuse (`pingora_core::connectors::http`). Peers of
//! servers with warm TLS connections carry [`WARM_ALPN`] for that reason only: [`WarmTls`]
//! answers with a plain TLS stream, negotiated as HTTP/1.1, which Pingora then uses and pools
//! as any HTTP/1.1 connection (the pool key leaves ALPN out). The stream comes from the
//! server's warm pool when one is ready, else from a connect now, by one Pingora
//! `TransportConnector` shared with the warm loop, with the trust bundle and session cache of
//! Pingora's own connector settings: a new connection resumes the TLS session where the
//! origin allows.
//!
//! (`HttpProxy::new_custom`, which installs such a connector, is public only in the vendored
//! copy of pingora-proxy: see vendor/README.md.)

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::connectors::http::custom::{Connection, Connector};
use pingora::connectors::TransportConnector;
use pingora::prelude::*;
use pingora::protocols::tls::CustomALPN;
use pingora::protocols::ALPN;
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::ErrorType;

use super::ReadyConn;
use crate::origin::Server;

/// The ALPN marker of peers whose new connections [`WarmTls`] makes. Never sent: the TLS
/// handshake offers `http/1.1`.
pub fn warm_alpn() -> ALPN {
    ALPN::Custom(CustomALPN::new(WARM_ALPN.to_vec()))
}

pub const WARM_ALPN: &[u8] = b"edge-warm-http/1.1";

/// How a server with warm TLS connections opens them: as `peer` (its own peer with ALPN
/// `http/1.1`), for requests whose peer has the reuse hash `key`.
pub struct WarmTlsPeer {
    pub peer: HttpPeer,
    /// `peer`'s reuse hash, computed once (ALPN is not part of it).
    pub key: u64,
}

impl WarmTlsPeer {
    pub fn new(mut peer: HttpPeer) -> Self {
        peer.options.alpn = ALPN::H1;
        let key = peer.reuse_hash();
        WarmTlsPeer { peer, key }
    }
}

/// Finds the server whose warm connections a peer may take: the one whose connect-as peer
/// (`Server::warm_tls`) has the same reuse hash (address, SNI, verification, CA, connection
/// group), so a connection is only ever handed to requests that could have pooled it.
pub type FindServer = dyn Fn(u64) -> Option<Arc<Server>> + Send + Sync;

pub struct WarmTls {
    pub transport: Arc<TransportConnector>,
    pub find: Arc<FindServer>,
}

#[async_trait]
impl Connector for WarmTls {
    type Session = ();

    async fn get_http_session<P: Peer + Send + Sync + 'static>(
        &self,
        peer: &P,
    ) -> Result<(Connection<()>, bool)> {
        // Pingora's proxy asks for its own peer type; the edge's peers are HttpPeers.
        let Some(peer) = (peer as &dyn Any).downcast_ref::<HttpPeer>() else {
            return Error::e_explain(ErrorType::ConnectError, "warm TLS: not an HttpPeer");
        };
        let key = peer.reuse_hash();
        if let Some(server) = (self.find)(key) {
            if let Some(r) = server.state.warm.take(Some(key)) {
                if let ReadyConn::Tls(stream) = r.conn {
                    return Ok((Connection::Stream(stream), false));
                }
            }
        }
        // None ready, a retry on a fresh connection (another group), or a peer of a config a
        // reload replaced: a connection now, as this very peer, negotiated as HTTP/1.1.
        let mut connect_as = peer.clone();
        connect_as.options.alpn = ALPN::H1;
        let stream = self.transport.new_stream(&connect_as).await?;
        Ok((Connection::Stream(stream), false))
    }

    async fn reused_http_session<P: Peer + Send + Sync + 'static>(&self, _peer: &P) -> Option<()> {
        // Reuse is Pingora's HTTP/1 pool's, asked right after this.
        None
    }

    async fn release_http_session<P: Peer + Send + Sync + 'static>(
        &self,
        _session: (),
        _peer: &P,
        _idle_timeout: Option<Duration>,
    ) {
        // Never called: this connector hands out streams, which Pingora pools itself.
    }
}
