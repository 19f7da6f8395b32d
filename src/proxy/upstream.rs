//! The proxy's side of an upstream connection beyond the phases themselves: which server an
//! attempt goes to (and a shield tier's fallback), how the connection was got and what that
//! cost, when it is too idle for a request nobody may retry, when it goes idle,
//! what a connection found closed teaches, which requests may be sent again, and which
//! response fields belong to it.

use std::os::unix::io::RawFd;
use std::sync::Arc;

use pingora::cache::CachePhase;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::Digest;
use pingora::{ErrorSource, ErrorType};

use super::ctx::{Attempt, Connection};
use super::errors::STALE_POOLED_CONNECTION;
use super::{EdgeProxy, RequestCtx};
use crate::config::Balance;
use crate::origin::reuse::{self, UpstreamConn};
use crate::origin::{Origin, Server};

impl EdgeProxy {
    /// The attempt's connection is idle from now (its response ended), once.
    pub(super) fn connection_idle(&self, ctx: &mut RequestCtx) {
        if let Some(c) = ctx.attempt.as_mut().and_then(|a| a.upstream.take()) {
            self.edge.ledger.idle(c.fd, c.established);
        }
    }

    /// A request failed on a pooled connection before any response: the origin had closed it
    /// while it was idle. The origin learns from it; the next attempt takes a new connection.
    pub(super) fn note_lost_connection(
        &self,
        session: &Session,
        e: &Error,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) {
        // Only the origin's side: a client that goes away mid-request is not the origin's close.
        if !client_reused || !connection_lost(e) || ctx.fwd_status.is_some() {
            return;
        }
        let Some((origin, server)) = ctx.upstream() else {
            return;
        };
        let idle_age = ctx
            .attempt
            .as_ref()
            .and_then(|a| a.upstream.as_ref())
            .and_then(|c| c.usage.idle_age);
        origin.found_closed(
            server,
            idle_age,
            session.req_header().method.as_str(),
            e.retry(),
        );
        if e.retry() {
            ctx.fresh_connection = true;
        }
    }
}

impl EdgeProxy {
    /// A request nobody may retry never rides a pooled connection that has been idle past the
    /// current limit (it was pooled under an older, longer one): it is refused, before anything
    /// was sent, and the request takes another connection. The idle age is the ledger's, or
    /// the kernel's where that is clearly longer (`reuse::idle_age`).
    pub(super) fn refuse_if_idle_too_long(
        &self,
        origin: &Origin,
        server: &Server,
        conn: &UpstreamConn,
        fd: RawFd,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(edge_age) = conn.usage.idle_age else {
            return Ok(());
        };
        let limit = origin.idle_limit(server, self.edge.sched_delay.get());
        let age = reuse::idle_age(edge_age, reuse::kernel_idle(fd));
        if age <= limit {
            return Ok(());
        }
        ctx.fresh_connection = true;
        origin.metrics.closed_stale_for_unsafe.inc();
        let mut e = Error::explain(
            STALE_POOLED_CONNECTION,
            format!("pooled connection idle {age:?} > {limit:?}"),
        );
        e.set_retry(true);
        Err(e)
    }
}

/// The origin and server of the next attempt (`upstream_peer`). `fresh`: the last server
/// again, on a new connection. Otherwise the origin's balancer picks among the untried servers,
/// within the origin's `retries`; when a shield tier has none left (none up, or as many tried as
/// `retries` allows), the request moves to its fallback origin, once (a fallback is never a
/// shield itself: `edge -t` sees to it).
pub(super) fn choose_server(
    ctx: &mut RequestCtx,
    req: &RequestHeader,
    fresh: bool,
) -> Result<(Arc<Origin>, usize)> {
    let mut origin = ctx
        .origin()
        .cloned()
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "request has no origin"))?;
    if let (true, Some(&last)) = (fresh, ctx.tried.last()) {
        return Ok((origin, last));
    }
    loop {
        // Consistent hashing keys on what the cache keys on (its URL), so an object has one
        // home server, the same on every edge. Other modes need no key.
        let key = match origin.config.balance {
            Balance::ConsistentHash => ctx.key_url(req),
            _ => String::new(),
        };
        let picked = ctx
            .retry_budget_left(&origin)
            .then(|| origin.pick(key.as_bytes(), &ctx.tried))
            .flatten();
        if let Some(idx) = picked {
            ctx.tried.push(idx);
            return Ok((origin, idx));
        }
        let Some(fallback) = origin
            .fallback()
            .and_then(|f| ctx.live.origins.get(f))
            .cloned()
        else {
            return Error::e_explain(
                ErrorType::ConnectRefused,
                format!("origin {}: every server was tried", origin.name),
            );
        };
        origin.metrics.fallbacks.inc();
        ctx.switch_origin(fallback.clone());
        origin = fallback;
    }
}

/// How the attempt got its connection, and what that cost, counted: reused (pooled), warm
/// (established before the attempt began, `origin::warm`) or new; the TCP connect and TLS
/// handshake times of work done for this request; whether it waited for a handshake.
pub(super) fn count_connection(
    origin: &Origin,
    attempt: &mut Attempt,
    reused: bool,
    digest: Option<&Digest>,
) {
    let layers = digest.map_or(&[][..], |d| d.timing_digest.as_slice());
    let tcp = layers.first().and_then(|t| t.as_ref());
    let ready_before = tcp.is_some_and(|t| t.established_ts < attempt.began);
    let connection = match (reused, ready_before) {
        (true, _) => Connection::Reused,
        (false, true) => Connection::Warm,
        (false, false) => Connection::New,
    };
    attempt.connection = Some(connection);
    let m = &origin.metrics;
    if reused {
        m.reused.inc();
        return;
    }
    m.new.inc();
    // Over TLS the last layer is the TLS handshake, after the TCP connect; a warm connection
    // may have had it done ahead (HTTP/1.1 origins), or not (h2 origins: see origin::warm).
    let tls_now = match layers {
        [_, .., Some(tls)] if tls.established_ts >= attempt.began => tls.establishment_duration,
        _ => None,
    };
    if let Some(t) = tls_now {
        let resumed = digest.and_then(|d| d.ssl_digest.as_ref()?.resumed);
        m.tls_handshake_done(t, resumed);
    }
    if connection == Connection::New {
        m.opened_demand.inc();
        attempt.connect_time = tcp.and_then(|t| t.establishment_duration);
        if let Some(t) = attempt.connect_time {
            m.connect.observe(t.as_secs_f64());
        }
    }
    if connection == Connection::New || tls_now.is_some() {
        m.handshake_waits.inc();
    }
}

/// Gives a response the origin sent without `Date` the time it was received (RFC 9110 section
/// 6.6.1: a recipient with a clock must, before caching or forwarding it). The writers keep a
/// response's `Date` (vendor/README.md), so a hit shows when the origin sent the object, not
/// when it was served: with `Age`, the client sees how old it is.
pub(super) fn date_on_receipt(resp: &mut ResponseHeader) {
    // One Date, the usual case, is left as it is, without a copy.
    match resp.headers.get_all(http::header::DATE).iter().count() {
        1 => {}
        0 => {
            let now = pingora::protocols::http::date::get_cached_date();
            // An HTTP date is always a valid header value.
            let _ = resp.insert_header(http::header::DATE, now);
        }
        // Several: the first one stands (one Date, as the writers used to make).
        _ => {
            if let Some(first) = resp.headers.get(http::header::DATE).cloned() {
                let _ = resp.insert_header(http::header::DATE, first);
            }
        }
    }
}

/// Removes the fields of a response that belong to the upstream connection, not to the
/// message (RFC 9110 §7.6.1): `Keep-Alive`, `Proxy-Connection`, and every field the origin
/// named in `Connection` (`Connection: x-trace` makes `X-Trace` hop-by-hop). So they are
/// neither stored with a cached object nor forwarded to the client. `Connection` itself is
/// Pingora's to manage toward the client.
pub(super) fn strip_hop_by_hop(resp: &mut ResponseHeader) {
    let named: Vec<String> = resp
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && t != "close" && t != "keep-alive" && t != "connection")
        .collect();
    for name in named {
        resp.remove_header(&name);
    }
    resp.remove_header("keep-alive");
    resp.remove_header("proxy-connection");
}

/// Why the origin was asked, as an index into `metrics::TTFB_CACHE_LABELS`.
pub(super) fn ttfb_cache_kind(phase: CachePhase, status: u16) -> usize {
    match phase {
        CachePhase::Miss => 0,
        CachePhase::Stale | CachePhase::StaleUpdating | CachePhase::Expired => {
            if status == 304 {
                2
            } else {
                1
            }
        }
        _ => 3,
    }
}

/// The origin's side of a connection failed under a request: closed, reset, a read or write
/// error (not a timeout, and not the client going away).
fn connection_lost(e: &Error) -> bool {
    e.esource() == &ErrorSource::Upstream
        && matches!(
            e.etype(),
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
        )
}

/// Whether an attempt that failed may go to another server (`error_while_proxy`): an
/// idempotent request that Pingora can replay, whose connection failed (closed, reset, a read
/// or write error; not a timeout, which would double a slow origin's wait) before the origin's
/// response header and before anything reached the client, with another server left to ask.
pub(super) fn next_server_may_answer(session: &Session, e: &Error, ctx: &RequestCtx) -> bool {
    connection_lost(e)
        && ctx.fwd_status.is_none()
        && session.response_written().is_none()
        && replayable(session)
        && ctx.may_try_another_server()
}

/// Whether the request may be sent again if its connection fails: an idempotent method and a
/// body Pingora can still replay.
pub(super) fn replayable(session: &Session) -> bool {
    session.req_header().method.is_idempotent() && !session.as_ref().retry_buffer_truncated()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_named_in_connection_are_not_passed_on() {
        let mut r = ResponseHeader::build(200, None).unwrap();
        for (k, v) in [
            ("connection", "X-Trace, keep-alive"),
            ("connection", "x-debug"),
            ("x-trace", "abc"),
            ("x-debug", "1"),
            ("keep-alive", "timeout=5"),
            ("cache-control", "max-age=60"),
        ] {
            r.append_header(k, v).unwrap();
        }
        strip_hop_by_hop(&mut r);
        for gone in ["x-trace", "x-debug", "keep-alive"] {
            assert!(r.headers.get(gone).is_none(), "{gone} passed on");
        }
        assert_eq!(r.headers.get("cache-control").unwrap(), "max-age=60");
    }
}
