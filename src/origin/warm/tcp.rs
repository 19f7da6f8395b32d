//! Warm TCP connections handed to Pingora as a peer's layer-4 connector (`custom_l4`): for
//! cleartext origins, and for HTTPS origins over h2 (Pingora then does TLS on top, at first
//! use).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::connectors::L4Connect;
use pingora::prelude::*;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::ErrorType;

use super::ReadyConn;
use crate::origin::ServerState;

/// A ready connection from the server's warm pool if there is one, else a connect now (with the
/// origin's connect timeout, which Pingora does not apply to a custom connector).
pub struct WarmTcp {
    pub server: Arc<ServerState>,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for WarmTcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WarmTcp({} ready)", self.server.warm.ready())
    }
}

#[async_trait]
impl L4Connect for WarmTcp {
    async fn connect(&self, addr: &PeerAddr) -> Result<L4Stream> {
        if let Some(r) = self.server.warm.take(None) {
            if let ReadyConn::Tcp(socket) = r.conn {
                let socket = tokio::net::TcpStream::from_std(socket)
                    .or_err(ErrorType::ConnectError, "registering a warm connection")?;
                let mut stream = L4Stream::from(socket);
                stream.established_ts = r.opened_at;
                return Ok(stream);
            }
        }
        let Some(inet) = addr.as_inet() else {
            return Error::e_explain(ErrorType::ConnectError, "warm connections are TCP only");
        };
        let socket = super::connect(inet, self.connect_timeout).await?;
        Ok(L4Stream::from(socket))
    }
}
