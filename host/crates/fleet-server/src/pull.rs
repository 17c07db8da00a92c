//! The loop every durable pull consumer of the server runs (the index,
//! notifications, the central record): pull, hand each message to its
//! handler, acknowledge what was done or dropped, leave unacknowledged (so
//! JetStream redelivers it after the ack wait) what must be retried, and
//! pull again after an error.

use crate::error::FleetError;
use async_nats::jetstream::{self, consumer::pull};
use futures_util::StreamExt;
use std::future::Future;
use std::time::Duration;

/// What a handler made of one message.
pub(crate) enum Handled {
    /// Applied: acknowledged.
    Done,
    /// Can never be applied (malformed, wrong host): acknowledged, with the reason logged.
    Dropped(String),
    /// Failed for now (a database or an output): not acknowledged, redelivered later.
    Retry(String),
}

/// Finds or makes the durable consumer `name` on `stream` (explicit acks;
/// `only_new`: starting at messages published from now on).
///
/// # Errors
/// When the consumer cannot be made.
pub(crate) async fn durable(stream: &jetstream::stream::Stream, name: &str, only_new: bool) -> Result<jetstream::consumer::Consumer<pull::Config>, FleetError> {
    let deliver_policy = if only_new { jetstream::consumer::DeliverPolicy::New } else { jetstream::consumer::DeliverPolicy::All };
    let cfg = pull::Config { durable_name: Some(name.to_string()), ack_policy: jetstream::consumer::AckPolicy::Explicit, deliver_policy, ..Default::default() };
    stream.get_or_create_consumer(name, cfg).await.map_err(|e| FleetError::nats(format!("consumer {name}"), e))
}

/// Runs `consumer` until the task is aborted; `what` names it in the log.
pub(crate) async fn run<F, Fut>(consumer: jetstream::consumer::Consumer<pull::Config>, what: &'static str, mut handle: F)
where
    F: FnMut(&jetstream::Message) -> Fut,
    Fut: Future<Output = Handled>,
{
    loop {
        let mut messages = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(consumer = what, "cannot pull: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(m) = messages.next().await {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(consumer = what, "pull: {e}");
                    continue;
                }
            };
            match handle(&m).await {
                Handled::Done => {}
                Handled::Dropped(why) => tracing::warn!(consumer = what, subject = %m.subject, "message dropped: {why}"),
                Handled::Retry(e) => {
                    tracing::error!(consumer = what, "not applied, it will be redelivered: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
            if let Err(e) = m.ack().await {
                tracing::warn!(consumer = what, "ack failed (the message will be redelivered; applying it again changes nothing): {e}");
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
