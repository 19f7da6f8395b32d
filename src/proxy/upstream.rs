//! The proxy's side of an upstream connection beyond the phases themselves: when it goes idle,
//! what a connection found closed teaches, and which requests may be sent again.

use pingora::cache::CachePhase;
use pingora::prelude::*;
use pingora::{ErrorSource, ErrorType};

use super::{EdgeProxy, RequestCtx};

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
        let lost_connection = e.esource() == &ErrorSource::Upstream
            && matches!(
                e.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            );
        if !client_reused || !lost_connection || ctx.fwd_status.is_some() {
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

/// Whether the request may be sent again if its connection fails: an idempotent method and a
/// body Pingora can still replay.
pub(super) fn replayable(session: &Session) -> bool {
    session.req_header().method.is_idempotent() && !session.as_ref().retry_buffer_truncated()
}
