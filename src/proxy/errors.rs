//! Failures to responses: which status a failed request gives the client, decided by the
//! error's type and where it came from (upstream, downstream, the edge), in one table; and the
//! short plain-text responses the edge writes itself.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::{ErrorSource, ErrorType};

use crate::guard;

/// The error by which a request nobody may retry refuses a pooled connection idle too long
/// (see `connected_to_upstream`): nothing was sent, so the retry it asks for is always safe.
pub const STALE_POOLED_CONNECTION: ErrorType = ErrorType::Custom("stale pooled connection");

/// The status and a short reason for a request that failed with `e`; status 0 means nothing is
/// to be sent (the client itself went away).
/// A refusal of the client's own doing is told apart first ([`client_refusal`]).
pub fn status_for(e: &Error) -> (u16, &'static str) {
    match e.etype() {
        ErrorType::HTTPStatus(code) => (*code, "error"),
        ErrorType::ConnectTimedout => (504, "origin connect timed out"),
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => (504, "origin timed out"),
        ErrorType::ConnectRefused | ErrorType::ConnectNoRoute | ErrorType::ConnectError => {
            (502, "origin unreachable")
        }
        _ => match e.esource() {
            ErrorSource::Upstream => (502, "bad response from origin"),
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                    (0, "")
                }
                _ => (400, "bad request"),
            },
            ErrorSource::Internal | ErrorSource::Unset => (500, "internal error"),
        },
    }
}

/// The error by which `request_body_filter` stops a body that grew past
/// `client.max_body_size`.
pub const BODY_TOO_LARGE: ErrorType = ErrorType::Custom("request body larger than max_body_size");

/// A failure that is the client's doing while Pingora streamed its body upstream: the body grew
/// past `client.max_body_size` (`413`), stopped arriving for `client.body_timeout` (`408`), or
/// its chunked framing broke (`400`; Pingora's chunk errors are known only by name, their type
/// is private to pingora-core). Bodies up to `client.body_buffer_size` were checked whole
/// before the origin was chosen.
pub fn client_refusal(e: &Error) -> Option<guard::Refusal> {
    if e.etype() == &BODY_TOO_LARGE {
        return Some(guard::BODY_TOO_LARGE);
    }
    if e.esource() != &ErrorSource::Downstream {
        return None;
    }
    match e.etype() {
        ErrorType::ReadTimedout => Some(guard::BODY_TIMEOUT),
        ErrorType::InvalidHTTPHeader => Some(guard::BAD_BODY),
        ErrorType::Custom("InvalidChunk" | "InvalidTrailerEnd") => Some(guard::BAD_BODY),
        _ => None,
    }
}

/// The text of an error response: 5xx name the origin, so an operator reading a client's
/// report knows where to look.
pub fn error_text(code: u16, reason: &str, origin: &str) -> String {
    if code >= 500 {
        format!("{code} {reason} (origin {origin})")
    } else {
        format!("{code} {reason}")
    }
}

/// A short plain-text response written by the edge itself, never stored by anyone.
pub async fn respond_text(
    session: &mut Session,
    status: u16,
    text: &str,
    keepalive: bool,
) -> Result<()> {
    let body = Bytes::from(format!("{text}\n"));
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header("Content-Type", "text/plain; charset=utf-8")?;
    resp.insert_header("Content-Length", body.len().to_string())?;
    resp.insert_header("Cache-Control", "no-store")?;
    if !keepalive {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(etype: ErrorType, source: ErrorSource) -> u16 {
        let mut e = Error::new(etype);
        e.esource = source;
        status_for(&e).0
    }

    #[test]
    fn by_type_then_by_source() {
        use ErrorSource::*;
        assert_eq!(status(ErrorType::ConnectTimedout, Upstream), 504);
        assert_eq!(status(ErrorType::ReadTimedout, Upstream), 504);
        assert_eq!(status(ErrorType::WriteTimedout, Upstream), 504);
        assert_eq!(status(ErrorType::ConnectRefused, Upstream), 502);
        assert_eq!(status(ErrorType::ConnectNoRoute, Upstream), 502);
        assert_eq!(status(ErrorType::ConnectError, Upstream), 502);
        assert_eq!(status(ErrorType::HTTPStatus(413), Downstream), 413);
        assert_eq!(status(ErrorType::InvalidHTTPHeader, Upstream), 502);
        assert_eq!(status(ErrorType::ConnectionClosed, Upstream), 502);
        assert_eq!(status(ErrorType::InvalidHTTPHeader, Downstream), 400);
        assert_eq!(status(ErrorType::ConnectionClosed, Downstream), 0);
        assert_eq!(status(ErrorType::ReadError, Downstream), 0);
        assert_eq!(status(ErrorType::InternalError, Internal), 500);
        assert_eq!(status(STALE_POOLED_CONNECTION, Unset), 500);
    }

    #[test]
    fn server_errors_name_the_origin() {
        assert_eq!(
            error_text(502, "origin unreachable", "web"),
            "502 origin unreachable (origin web)"
        );
        assert_eq!(error_text(400, "bad request", "web"), "400 bad request");
    }
}
