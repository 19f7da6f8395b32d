//! What the edge did for one request, recorded once when it ends: counted in the request, byte
//! and duration metrics and appended to the access log (which its own thread writes), the same
//! way whichever path answered (the express lane or the proxy).

use std::time::SystemTime;

use crate::access_log::AccessLog;
use crate::cache::key::Scheme;
use crate::config::LogSettings;
use crate::logging::AccessEntry;
use crate::metrics::Metrics;
use crate::origin::Origin;

pub struct Served<'a> {
    pub entry: AccessEntry<'a>,
    /// The origin the request was routed to, for its latency histogram.
    pub origin: Option<&'a Origin>,
    pub protocol: Protocol,
    pub scheme: Scheme,
}

impl Served<'_> {
    /// With `log.access`, appends the request's line to `access_log` (buffered: no I/O here);
    /// counts it in `m`.
    pub fn record(&self, m: &Metrics, access_log: &AccessLog, log: &LogSettings) {
        let e = &self.entry;
        // The line first: once a request is counted, its line is in the buffer, so whoever
        // sees the count and then stops the edge (a test, a script) finds the line written.
        if log.access {
            access_log.append(&e.render(log.access_format, SystemTime::now()));
        }
        m.client
            .requests
            .with_label_values(&[e.route, e.origin, status_class(e.status), e.cache])
            .inc();
        m.client
            .response_bytes
            .with_label_values(&[e.origin, e.cache])
            .inc_by(e.bytes as u64);
        m.client.requests_by_protocol[self.protocol as usize][self.scheme as usize].inc();
        if let Some(o) = self.origin {
            o.metrics.duration.observe(e.total.as_secs_f64());
        }
    }
}

/// The HTTP version a request came in, as counted (`metrics::client::PROTOCOLS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http10 = 0,
    Http11 = 1,
    H2 = 2,
}

impl Protocol {
    pub fn of(v: http::Version) -> Protocol {
        match v {
            http::Version::HTTP_2 => Protocol::H2,
            http::Version::HTTP_10 => Protocol::Http10,
            _ => Protocol::Http11,
        }
    }
}

/// The `status` label: 1xx..5xx, or `none` when nothing was sent.
fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn counted_by_route_origin_class_and_cache() {
        let m = Metrics::new();
        let log = LogSettings {
            access: false,
            ..Default::default()
        };
        let access_log =
            AccessLog::open(&Default::default(), m.process.access_log_dropped.clone()).unwrap();
        let served = Served {
            entry: AccessEntry {
                client: None,
                method: "GET",
                host: "a.com",
                path: &"/x",
                status: 404,
                bytes: 10,
                route: "r",
                origin: "web",
                server: "-",
                conn: "-",
                cache: "miss",
                connect: None,
                ttfb: None,
                total: Duration::from_millis(1),
                tries: 1,
                refused: None,
                error: None,
            },
            origin: None,
            protocol: Protocol::Http11,
            scheme: Scheme::Https,
        };
        served.record(&m, &access_log, &log);
        served.record(&m, &access_log, &log);
        let c = m
            .client
            .requests
            .with_label_values(&["r", "web", "4xx", "miss"]);
        assert_eq!(c.get(), 2);
        assert_eq!(
            m.client
                .response_bytes
                .with_label_values(&["web", "miss"])
                .get(),
            20
        );
        assert_eq!(status_class(0), "none");
    }
}
