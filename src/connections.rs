//! The client connection limit (`client.max_connections`): a connection beyond it is closed as
//! soon as it is accepted, and counted.
//!
//! Two places hold the limit, because neither sees everything:
//! - [`Limited`] wraps the proxy's server app, so it sees each connection for its whole life
//!   (HTTP/1 keep-alive requests and h2 streams alike) and keeps the count of open ones exact.
//!   It is the rule: a connection that finds the count at the limit is closed at once.
//! - [`AtCapacity`] is Pingora's accept-time filter, run before any TLS handshake. It reads the
//!   same count, so at the limit a TLS connection is closed before the edge spends a handshake
//!   on it. Handshakes in progress are not in the count yet, which is why the app checks again.
//!
//! Descriptors: Pingora's accept loop survives `EMFILE` by logging it and pausing one second
//! (pingora-core `services/listening.rs`), never spinning; [`raise_descriptor_limit`] lifts
//! the soft limit to the hard one at start so the configured limit is reachable at all.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::ConnectionFilter;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

use crate::state::Edge;

/// Client connections open now, shared by the app wrapper and the accept filter.
#[derive(Debug, Default)]
pub struct OpenConnections(AtomicUsize);

impl OpenConnections {
    fn now(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// Takes a place for one connection, unless `max` (0: no limit) are open already.
    fn take(self: &Arc<Self>, max: usize) -> Option<Place> {
        let taken = self.0.fetch_add(1, Ordering::AcqRel);
        if max > 0 && taken >= max {
            self.0.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Place(self.clone()))
    }
}

/// One connection's place in the count, given back when the connection ends.
struct Place(Arc<OpenConnections>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The limit read from the config in force, so a reload changes it for new connections.
fn max_connections(edge: &Edge) -> usize {
    edge.live.load().config.client.max_connections
}

/// The proxy's server app behind the connection limit.
pub struct Limited<A> {
    app: Arc<A>,
    edge: Arc<Edge>,
    open: Arc<OpenConnections>,
}

impl<A> Limited<A> {
    pub fn new(app: A, edge: Arc<Edge>, open: Arc<OpenConnections>) -> Self {
        Limited {
            app: Arc::new(app),
            edge,
            open,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Limited<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(_place) = self.open.take(max_connections(&self.edge)) else {
            self.edge.metrics.client.connections_refused.inc();
            return None; // dropping the stream closes it
        };
        self.app.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}

/// Pingora's accept filter: closes a new connection before its TLS handshake when the limit is
/// reached already.
pub struct AtCapacity {
    pub open: Arc<OpenConnections>,
    pub edge: Arc<Edge>,
}

// Pingora's filter trait asks for Debug; the count is what there is to show.
impl std::fmt::Debug for AtCapacity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AtCapacity({} open)", self.open.now())
    }
}

#[async_trait]
impl ConnectionFilter for AtCapacity {
    async fn should_accept(&self, _addr: Option<&SocketAddr>) -> bool {
        let max = max_connections(&self.edge);
        if max > 0 && self.open.now() >= max {
            self.edge.metrics.client.connections_refused.inc();
            return false;
        }
        true
    }
}

/// The hard limit on open descriptors: the one the edge runs with once it has raised its soft
/// limit (`raise_descriptor_limit`).
pub fn descriptor_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    lim.rlim_max
}

/// Lifts the soft limit on open descriptors to the hard one (as nginx's
/// `worker_rlimit_nofile`): Debian's default soft limit, 1024, would run out long before
/// `client.max_connections`. Returns the limit now in force.
pub fn raise_descriptor_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return Some(raised.rlim_cur);
            }
        }
    }
    Some(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_taken_up_to_the_limit_and_given_back() {
        let open = Arc::new(OpenConnections::default());
        let a = open.take(2).expect("first");
        let b = open.take(2).expect("second");
        assert!(open.take(2).is_none(), "a third beyond the limit");
        assert_eq!(open.now(), 2);
        drop(a);
        let c = open.take(2).expect("a place was given back");
        drop((b, c));
        assert_eq!(open.now(), 0);
        // 0: no limit.
        let many: Vec<_> = (0..100).map(|_| open.take(0).unwrap()).collect();
        assert_eq!(open.now(), 100);
        drop(many);
    }
}
