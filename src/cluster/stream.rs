//! The JetStream calls the purge task makes: open (creating it if missing) the purge stream and
//! an ordered consumer on it, and publish purges, one or a window at a time. Kept apart from
//! the task's logic (`service`), which decides what to publish, apply and when.

use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer, stream};

use super::message::Envelope;
use crate::config::NatsSettings;

/// How long a publish waits for JetStream's acknowledgement before the purge is queued.
pub const PUBLISH_WITHIN: Duration = Duration::from_secs(2);

/// At most this many queued purges are sent before their acknowledgements are awaited.
const WINDOW: usize = 256;

/// The stream as found when it was opened.
pub struct StreamState {
    pub first_sequence: u64,
    pub last_sequence: u64,
    /// When the stream was created: a different time than last seen means it was deleted and
    /// made anew, with new sequence numbers.
    pub created: SystemTime,
}

pub type Messages = consumer::pull::Ordered;

/// Opens (creating it if missing) the purge stream and an ordered consumer on it from `start`.
pub async fn open(
    js: &jetstream::Context,
    s: &NatsSettings,
    start: consumer::DeliverPolicy,
) -> Result<(StreamState, Messages), String> {
    let stream = js
        .get_or_create_stream(stream::Config {
            name: s.stream.clone(),
            subjects: vec![subject(s)],
            storage: stream::StorageType::File,
            max_age: s.max_age.get(),
            max_messages: s.max_messages,
            discard: stream::DiscardPolicy::Old,
            num_replicas: s.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let info = stream.cached_info();
    // A stream of that name made for something else (another subject) would take no purge:
    // every publish would fail and queue. Said plainly, once per outage, by the caller.
    if !info.config.subjects.iter().any(|p| covers(p, &subject(s))) {
        return Err(format!(
            "stream {} exists without the subject {} (subjects {:?}); name another \
             cluster.nats.stream or add the subject",
            s.stream,
            subject(s),
            info.config.subjects
        ));
    }
    let state = StreamState {
        first_sequence: info.state.first_sequence,
        last_sequence: info.state.last_sequence,
        created: info.created.into(),
    };
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: start,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let messages = consumer.messages().await.map_err(|e| e.to_string())?;
    Ok((state, messages))
}

/// The subject purges are published on: `<stream>.purge`.
pub fn subject(s: &NatsSettings) -> String {
    format!("{}.purge", s.stream)
}

/// Whether a stream subject pattern takes `subject` (NATS wildcards: `*` one token, `>` the
/// rest).
fn covers(pattern: &str, subject: &str) -> bool {
    let mut want = subject.split('.');
    for p in pattern.split('.') {
        match (p, want.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(t)) if p == t => {}
            _ => return false,
        }
    }
    want.next().is_none()
}

/// Publishes one purge and waits for JetStream to store it; its stream sequence.
pub async fn publish(js: &jetstream::Context, subject: &str, e: &Envelope) -> Result<u64, String> {
    let acks = publish_window(js, subject, std::slice::from_ref(e)).await;
    acks.into_iter()
        .next()
        .unwrap_or_else(|| Err("not sent".into()))
}

/// Publishes purges in order, up to `WINDOW` before awaiting their acknowledgements, which are
/// then read in order: the results, one per purge sent, stop at the first failure (the purges
/// after it are not counted as sent; if JetStream stored some of them anyway, their message
/// ids make the next attempt a duplicate it drops).
pub async fn publish_window(
    js: &jetstream::Context,
    subject: &str,
    envelopes: &[Envelope],
) -> Vec<Result<u64, String>> {
    let mut pending = Vec::new();
    for e in envelopes.iter().take(WINDOW) {
        let (headers, payload) = e.encode();
        let sent = tokio::time::timeout(
            PUBLISH_WITHIN,
            js.publish_with_headers(subject.to_string(), headers, payload),
        )
        .await;
        match sent {
            Ok(Ok(ack)) => pending.push(ack),
            Ok(Err(err)) => {
                return finish(pending, Some(err.to_string())).await;
            }
            Err(_) => {
                return finish(pending, Some(format!("not sent within {PUBLISH_WITHIN:?}"))).await
            }
        }
    }
    finish(pending, None).await
}

/// Awaits the acknowledgements in order; `then`: the error of a purge that could not be sent.
async fn finish(
    pending: Vec<jetstream::context::PublishAckFuture>,
    then: Option<String>,
) -> Vec<Result<u64, String>> {
    let mut out = Vec::with_capacity(pending.len() + 1);
    for ack in pending {
        let acked = tokio::time::timeout(PUBLISH_WITHIN + Duration::from_millis(500), ack).await;
        match acked {
            Ok(Ok(a)) => out.push(Ok(a.sequence)),
            Ok(Err(e)) => {
                out.push(Err(e.to_string()));
                return out;
            }
            Err(_) => {
                out.push(Err(format!("no acknowledgement within {PUBLISH_WITHIN:?}")));
                return out;
            }
        }
    }
    if let Some(e) = then {
        out.push(Err(e));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::covers;

    #[test]
    fn subject_patterns_cover_as_nats_matches_them() {
        for p in [
            "EDGE_PURGE.purge",
            "EDGE_PURGE.*",
            "EDGE_PURGE.>",
            ">",
            "*.purge",
        ] {
            assert!(covers(p, "EDGE_PURGE.purge"), "{p}");
        }
        for p in [
            "EDGE_PURGE",
            "EDGE_PURGE.other",
            "OTHER.>",
            "EDGE_PURGE.purge.x",
            "*",
        ] {
            assert!(!covers(p, "EDGE_PURGE.purge"), "{p}");
        }
    }
}
