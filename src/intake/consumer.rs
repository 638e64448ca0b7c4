//! The intake worker: takes deliveries from the intake queue in batches, stores what decodes in
//! one store call, dead-letters what never can be applied, and acks only after both are done.
//!
//! It runs its own reconnect supervision instead of lapin's auto-recovery on purpose: a
//! recovered channel restarts delivery tags at 1, so a multiple-ack for a batch taken before the
//! break could ack messages that were never stored. A fresh connection per session makes every
//! ack belong to the channel its deliveries came from; the broker redelivers what was in hand,
//! and the store's idempotency makes that safe.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::decode::decode;
use super::topology;
use crate::clock::SharedClock;
use crate::config::AmqpConfig;
use crate::domain::inbound::{Inbound, InboundOutcome, Rejection};
use crate::reconnect::{pause, supervise, Backoff};
use crate::schedule::Rules;
use crate::store::SharedStore;
use crate::telemetry::SharedHealth;

/// Header naming why a message was dead-lettered (a short machine code).
pub const REASON_HEADER: &str = "x-callkeeper-reason";
/// Header with the human explanation; never holds a full phone number.
pub const DETAIL_HEADER: &str = "x-callkeeper-detail";

/// First reconnect delay; doubles up to `AmqpConfig::reconnect_max_delay`.
const RECONNECT_BASE: Duration = Duration::from_millis(500);
/// Store and dead-letter retries start quick (most hiccups are short) and stay frequent enough
/// that intake resumes soon after the store comes back.
const RETRY_BASE: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// A broker that accepts TCP but never answers must not hang start-up forever.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the polite goodbye at shutdown; the broker requeues anything unacked anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
enum IntakeError {
    #[error("AMQP: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("timed out connecting to the broker")]
    ConnectTimeout,
    #[error("the broker ended the consumer")]
    ConsumerEnded,
    /// lapin reports an ack on a dead channel as `Ok(false)`, not as an error.
    #[error("the channel closed before the ack went out")]
    AckLost,
    #[error("the channel closed while {0}")]
    ChannelClosed(&'static str),
    #[error("the store returned {got} outcomes for {sent} events")]
    OutcomeCount { sent: usize, got: usize },
}

/// Consumes inbound events from RabbitMQ into the store until shut down.
pub struct Intake {
    config: AmqpConfig,
    store: SharedStore,
    rules: Arc<Rules>,
    clock: SharedClock,
    health: SharedHealth,
}

/// One connection's worth of broker handles.
struct Session {
    connection: Connection,
    channel: Channel,
    /// In confirm mode, so a dead letter counts as kept only once the broker says so.
    dead_letters: Channel,
    consumer: Consumer,
}

/// How handling a batch ended, when it did not fail.
enum BatchEnd {
    Acked,
    /// Shutdown came while retrying; the messages stay unacked and the broker redelivers them.
    LeftUnacked,
}

/// What happened to one message of a batch.
enum Disposition {
    Applied {
        key: (String, String),
        outcome: InboundOutcome,
    },
    Refused {
        key: Option<(String, String)>,
        rejection: Rejection,
    },
}

impl Intake {
    pub fn new(
        config: AmqpConfig,
        store: SharedStore,
        rules: Arc<Rules>,
        clock: SharedClock,
        health: SharedHealth,
    ) -> Self {
        Self {
            config,
            store,
            rules,
            clock,
            health,
        }
    }

    /// Runs until `shutdown` is cancelled, reconnecting with backoff whenever the broker
    /// connection, a channel or the consumer is lost. Fails only on a URL that can never work.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let uri = self.config.uri()?;
        let broker = describe(&uri);
        let backoff = Backoff::new(RECONNECT_BASE, self.config.reconnect_max_delay);
        let session = || {
            let (this, uri, broker, shutdown, backoff) =
                (&self, uri.clone(), &broker, &shutdown, &backoff);
            async move {
                let result = this.session(uri, broker, shutdown, backoff).await;
                this.health.set_amqp_connected(false);
                metrics::gauge!("callkeeper_intake_unacked").set(0.0);
                result
            }
        };
        let lost = |error: IntakeError, delay: Duration| {
            warn!(
                %broker,
                %error,
                retry_in_ms = delay.as_millis() as u64,
                "Lost the AMQP connection; reconnecting."
            )
        };
        supervise(
            &shutdown,
            &backoff,
            "callkeeper_amqp_reconnects_total",
            session,
            lost,
        )
        .await;
        info!(%broker, "Intake stopped.");
        Ok(())
    }

    /// One connection from connect to loss or shutdown. `Ok` means shutdown.
    async fn session(
        &self,
        uri: AMQPUri,
        broker: &str,
        shutdown: &CancellationToken,
        backoff: &Backoff,
    ) -> Result<(), IntakeError> {
        let mut session = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            connected = tokio::time::timeout(CONNECT_TIMEOUT, self.connect(uri)) => {
                connected.map_err(|_| IntakeError::ConnectTimeout)??
            }
        };
        self.health.set_amqp_connected(true);
        backoff.reset();
        info!(
            %broker,
            queue = %self.config.queue,
            prefetch = self.config.prefetch,
            "Consuming inbound events."
        );
        let result = self.consume(&mut session, shutdown).await;
        if result.is_ok() {
            self.health.set_amqp_connected(false);
            let goodbye = async {
                // Stop deliveries first; anything the client already buffered is requeued by
                // the broker when the channel closes.
                let tag = session.consumer.tag();
                if let Err(error) = session
                    .channel
                    .basic_cancel(tag, BasicCancelOptions::default())
                    .await
                {
                    debug!(%error, "Could not cancel the consumer at shutdown.");
                }
                let _ = session.channel.close(200, "shutdown".into()).await;
                let _ = session.dead_letters.close(200, "shutdown".into()).await;
                let _ = session.connection.close(200, "shutdown".into()).await;
            };
            if tokio::time::timeout(CLOSE_TIMEOUT, goodbye).await.is_err() {
                debug!("Closing the AMQP connection timed out.");
            }
        } else {
            // Best effort: a half-dead connection is dropped either way.
            let _ = tokio::time::timeout(
                CLOSE_TIMEOUT,
                session.connection.close(200, "reconnecting".into()),
            )
            .await;
        }
        result
    }

    async fn connect(&self, uri: AMQPUri) -> Result<Session, IntakeError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("callkeeper intake {}", self.config.queue).into());
        let connection = Connection::connect_uri(uri, properties).await?;
        let channel = connection.create_channel().await?;
        if self.config.declare_topology {
            topology::declare(&channel, &self.config).await?;
        }
        let dead_letters = connection.create_channel().await?;
        dead_letters
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        // Before consuming, so the broker never hands us more than we agreed to hold.
        channel
            .basic_qos(self.config.prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                self.config.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Session {
            connection,
            channel,
            dead_letters,
            consumer,
        })
    }

    /// Takes and handles batches until shutdown (`Ok`) or a broker failure (`Err`).
    async fn consume(
        &self,
        session: &mut Session,
        shutdown: &CancellationToken,
    ) -> Result<(), IntakeError> {
        let limit = usize::from(self.config.prefetch.max(1));
        loop {
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                next = session.consumer.next() => next,
            };
            let mut batch = vec![first.ok_or(IntakeError::ConsumerEnded)??];
            // Then whatever already arrived, so one store transaction covers a burst.
            while batch.len() < limit {
                match session.consumer.next().now_or_never() {
                    Some(Some(delivery)) => batch.push(delivery?),
                    Some(None) => return Err(IntakeError::ConsumerEnded),
                    None => break,
                }
            }
            metrics::gauge!("callkeeper_intake_unacked").set(batch.len() as f64);
            let end = self.handle_batch(session, &batch, shutdown).await?;
            metrics::gauge!("callkeeper_intake_unacked").set(0.0);
            if let BatchEnd::LeftUnacked = end {
                return Ok(());
            }
        }
    }

    /// Decodes, stores, dead-letters and acks one batch. Every message of the batch is settled
    /// before the single multiple-ack, so nothing is acked before its effect is kept.
    async fn handle_batch(
        &self,
        session: &Session,
        batch: &[Delivery],
        shutdown: &CancellationToken,
    ) -> Result<BatchEnd, IntakeError> {
        let mut events: Vec<Inbound> = Vec::new();
        // Per message: the index into `events`, or the decoder's refusal.
        let mut slots: Vec<Result<usize, Rejection>> = Vec::with_capacity(batch.len());
        for delivery in batch {
            let content_type = delivery
                .properties
                .content_type()
                .as_ref()
                .map(|c| c.as_str());
            match decode(&delivery.data, content_type, &self.rules) {
                Ok(event) => {
                    slots.push(Ok(events.len()));
                    events.push(event);
                }
                Err(rejection) => slots.push(Err(rejection)),
            }
        }

        let mut outcomes = if events.is_empty() {
            Vec::new()
        } else {
            match self.apply(&events, &session.channel, shutdown).await? {
                Some(outcomes) => outcomes,
                None => return Ok(BatchEnd::LeftUnacked),
            }
        };
        if outcomes.len() != events.len() {
            return Err(IntakeError::OutcomeCount {
                sent: events.len(),
                got: outcomes.len(),
            });
        }

        let mut dispositions = Vec::with_capacity(batch.len());
        for slot in slots {
            dispositions.push(match slot {
                Err(rejection) => Disposition::Refused {
                    key: None,
                    rejection,
                },
                Ok(index) => {
                    let key = (
                        events[index].key.source.clone(),
                        events[index].key.id.clone(),
                    );
                    match std::mem::replace(&mut outcomes[index], InboundOutcome::Duplicate) {
                        InboundOutcome::Rejected(rejection) => Disposition::Refused {
                            key: Some(key),
                            rejection,
                        },
                        outcome => Disposition::Applied { key, outcome },
                    }
                }
            });
        }

        let refused: Vec<(&Delivery, &Rejection)> = batch
            .iter()
            .zip(&dispositions)
            .filter_map(|(delivery, disposition)| match disposition {
                Disposition::Refused { rejection, .. } => Some((delivery, rejection)),
                Disposition::Applied { .. } => None,
            })
            .collect();
        if !refused.is_empty() && !self.dead_letter(session, &refused, shutdown).await? {
            return Ok(BatchEnd::LeftUnacked);
        }

        // Tags rise within a channel and nothing older is unacked, so this acks the batch.
        let last = batch.last().expect("a batch holds at least one delivery");
        if !last.acker.ack(BasicAckOptions { multiple: true }).await? {
            return Err(IntakeError::AckLost);
        }
        for (delivery, disposition) in batch.iter().zip(&dispositions) {
            record(delivery, disposition);
        }
        Ok(BatchEnd::Acked)
    }

    /// Applies the batch, retrying a failing store with backoff while the messages stay unacked.
    /// `None` when shutdown came first.
    async fn apply(
        &self,
        events: &[Inbound],
        channel: &Channel,
        shutdown: &CancellationToken,
    ) -> Result<Option<Vec<InboundOutcome>>, IntakeError> {
        let backoff = Backoff::new(RETRY_BASE, RETRY_MAX);
        loop {
            match self.store.apply_inbound(events, self.clock.now()).await {
                Ok(outcomes) => return Ok(Some(outcomes)),
                Err(error) => {
                    let delay = backoff.next_delay();
                    metrics::counter!("callkeeper_intake_store_failures_total").increment(1);
                    warn!(
                        %error,
                        events = events.len(),
                        retry_in_ms = delay.as_millis() as u64,
                        "Store could not apply inbound events; holding them unacked and retrying."
                    );
                    // The broker has already requeued them if the channel is gone; retrying
                    // here would only store what is coming back anyway.
                    if !channel.status().connected() {
                        return Err(IntakeError::ChannelClosed("waiting for the store"));
                    }
                    if pause(delay, shutdown).await {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Publishes each refused message to the dead-letter exchange and waits for the broker's
    /// confirm. A failed publish is retried (it is not the message's fault); `false` when
    /// shutdown came first.
    async fn dead_letter(
        &self,
        session: &Session,
        refused: &[(&Delivery, &Rejection)],
        shutdown: &CancellationToken,
    ) -> Result<bool, IntakeError> {
        let channel = &session.dead_letters;
        let exchange = self.config.dead_letter_exchange.as_str();
        let mut pending: Vec<usize> = (0..refused.len()).collect();
        let backoff = Backoff::new(RETRY_BASE, RETRY_MAX);
        loop {
            let mut confirms = Vec::with_capacity(pending.len());
            let mut failed = Vec::new();
            for &i in &pending {
                let (delivery, rejection) = refused[i];
                let published = channel
                    .basic_publish(
                        exchange.into(),
                        delivery.routing_key.clone(),
                        // Mandatory: an unroutable dead letter comes back instead of vanishing.
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        &delivery.data,
                        dead_letter_properties(&delivery.properties, rejection),
                    )
                    .await;
                match published {
                    Ok(confirm) => confirms.push((i, confirm)),
                    Err(error) => {
                        warn!(%error, "Could not publish a dead letter; will retry.");
                        failed.push(i);
                    }
                }
            }
            for (i, confirm) in confirms {
                match confirm.await {
                    Ok(Confirmation::Ack(None)) => {}
                    Ok(Confirmation::Ack(Some(_))) => {
                        warn!(
                            %exchange,
                            "The dead-letter exchange routed a dead letter nowhere; will retry."
                        );
                        failed.push(i);
                    }
                    Ok(other) => {
                        warn!(confirmation = ?other, "The broker refused a dead letter; will retry.");
                        failed.push(i);
                    }
                    Err(error) => {
                        warn!(%error, "No confirm for a dead letter; will retry.");
                        failed.push(i);
                    }
                }
            }
            if failed.is_empty() {
                return Ok(true);
            }
            if !channel.status().connected() || !session.channel.status().connected() {
                return Err(IntakeError::ChannelClosed("dead-lettering"));
            }
            failed.sort_unstable();
            pending = failed;
            if pause(backoff.next_delay(), shutdown).await {
                return Ok(false);
            }
        }
    }
}

/// The original properties and headers, plus why callkeeper refused the message.
fn dead_letter_properties(original: &BasicProperties, rejection: &Rejection) -> BasicProperties {
    let mut headers = original.headers().clone().unwrap_or_default();
    headers.insert(
        REASON_HEADER.into(),
        AMQPValue::LongString(rejection.reason.into()),
    );
    headers.insert(
        DETAIL_HEADER.into(),
        AMQPValue::LongString(rejection.detail.as_str().into()),
    );
    original.clone().with_headers(headers)
}

/// Logs and counts one settled message; one function so the log line and its counters agree.
fn record(delivery: &Delivery, disposition: &Disposition) {
    match disposition {
        Disposition::Applied { key, outcome } => {
            let (result, callback_id) = match outcome {
                InboundOutcome::Created(id) => ("created", Some(*id)),
                InboundOutcome::Merged(id) => ("merged", Some(*id)),
                InboundOutcome::Attempted(id) => ("attempted", Some(*id)),
                InboundOutcome::Cancelled(_) => ("cancelled", None),
                InboundOutcome::Duplicate => ("duplicate", None),
                // Turned into `Refused` before this point.
                InboundOutcome::Rejected(_) => ("rejected", None),
            };
            metrics::counter!("callkeeper_intake_messages_total", "result" => result).increment(1);
            let callback_id = callback_id.map(|id| id.to_string());
            debug!(
                source = %key.0,
                event_id = %key.1,
                result,
                callback_id = callback_id.as_deref().unwrap_or("-"),
                redelivered = delivery.redelivered,
                "Inbound event stored."
            );
        }
        Disposition::Refused { key, rejection } => {
            metrics::counter!("callkeeper_intake_messages_total", "result" => "rejected")
                .increment(1);
            metrics::counter!("callkeeper_intake_rejected_total", "reason" => rejection.reason)
                .increment(1);
            let (source, event_id) = key
                .as_ref()
                .map_or(("-", "-"), |(s, i)| (s.as_str(), i.as_str()));
            warn!(
                reason = rejection.reason,
                detail = %rejection.detail,
                source,
                event_id,
                routing_key = %delivery.routing_key,
                "Inbound message refused and dead-lettered."
            );
        }
    }
}

/// The broker for logs: scheme, host, port and vhost — never the credentials.
fn describe(uri: &AMQPUri) -> String {
    let scheme = match uri.scheme {
        lapin::uri::AMQPScheme::AMQP => "amqp",
        lapin::uri::AMQPScheme::AMQPS => "amqps",
    };
    format!(
        "{scheme}://{}@{}:{}/{}",
        uri.authority.userinfo.username, uri.authority.host, uri.authority.port, uri.vhost
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_hides_the_password() {
        let uri: AMQPUri = "amqp://user:s3cret@rabbit.example:5673/prod"
            .parse()
            .unwrap();
        let shown = describe(&uri);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert_eq!(shown, "amqp://user@rabbit.example:5673/prod");
    }

    #[test]
    fn dead_letter_keeps_headers_and_adds_reason() {
        let mut headers = FieldTable::default();
        headers.insert("trace".into(), AMQPValue::LongString("abc".into()));
        let original = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_headers(headers);
        let rejection = Rejection::new("invalid_phone", "data.phone '+3161*****78': invalid");
        let props = dead_letter_properties(&original, &rejection);
        let headers = props.headers().clone().unwrap();
        let inner = headers.inner();
        assert!(inner.contains_key("trace"));
        assert_eq!(
            inner.get(REASON_HEADER),
            Some(&AMQPValue::LongString("invalid_phone".into()))
        );
        assert!(inner.contains_key(DETAIL_HEADER));
        assert_eq!(
            props.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
    }
}
