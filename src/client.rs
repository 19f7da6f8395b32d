//! The client side of a connection: how long and for how many requests it is kept alive
//! (nginx's `keepalive_timeout` / `keepalive_requests`), and its count in the metrics. Shared by
//! the proxy and the express lane, so both keep a connection by the same rule.

use std::sync::atomic::{AtomicU32, Ordering};

use prometheus::{Histogram, IntGauge};

use crate::config::ClientSettings;
use crate::metrics::Metrics;

/// Client keep-alive in Pingora's terms: the idle timeout in whole seconds (None: no
/// keep-alive), and the requests the connection may still carry after this one. Pingora carries
/// `remaining` from request to request (one less each time) and closes at zero; None means this
/// is the connection's first request.
pub fn keepalive(client: &ClientSettings, remaining: Option<u32>) -> (Option<u64>, u32) {
    let idle = client.keepalive_timeout.get();
    // Whole seconds: Pingora's unit. Some(0) would mean "forever", so round up.
    let idle = (!idle.is_zero()).then(|| idle.as_secs().max(1));
    let remaining = remaining.unwrap_or(client.keepalive_requests.saturating_sub(1));
    (idle, remaining)
}

/// One client connection, counted while it lives. Created with its first request and carried
/// from request to request (Pingora hands per-connection state over between keep-alive
/// requests); dropped with the connection, whenever and however it closes.
pub struct ClientConnection {
    requests: AtomicU32,
    open: IntGauge,
    requests_per_connection: Histogram,
}

impl ClientConnection {
    pub fn open(m: &Metrics) -> Self {
        m.client.connections.inc();
        m.client.connections_open.inc();
        ClientConnection {
            requests: AtomicU32::new(0),
            open: m.client.connections_open.clone(),
            requests_per_connection: m.client.requests_per_connection.clone(),
        }
    }

    /// Counts a request; returns its position on the connection (1 = first).
    pub fn request(&self) -> u32 {
        self.requests.fetch_add(1, Ordering::Relaxed) + 1
    }
}

impl Drop for ClientConnection {
    fn drop(&mut self) {
        self.open.dec();
        self.requests_per_connection
            .observe(self.requests.load(Ordering::Relaxed) as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_style_limits() {
        let mut c = ClientSettings::default();
        assert_eq!(keepalive(&c, None), (Some(65), 999));
        assert_eq!(keepalive(&c, Some(3)), (Some(65), 3));
        c.keepalive_timeout = crate::config::units::Dur(std::time::Duration::from_millis(300));
        assert_eq!(
            keepalive(&c, None).0,
            Some(1),
            "rounded up, never 0 (= forever)"
        );
        c.keepalive_timeout = crate::config::units::Dur(std::time::Duration::ZERO);
        assert_eq!(keepalive(&c, None).0, None);
    }

    #[test]
    fn counted_while_open() {
        let m = Metrics::new();
        let c = ClientConnection::open(&m);
        assert_eq!(c.request(), 1);
        assert_eq!(c.request(), 2);
        assert_eq!(m.client.connections_open.get(), 1);
        drop(c);
        assert_eq!(m.client.connections_open.get(), 0);
        assert_eq!(m.client.requests_per_connection.get_sample_sum(), 2.0);
    }
}
