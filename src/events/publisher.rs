//! Moves lifecycle events from the store's outbox to the events exchange, strictly in outbox
//! order, on one confirm-mode channel; an event leaves the outbox only once the broker confirmed
//! it. Its own connection (not intake's), so a slow or blocked publish never holds up intake.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::AmqpConfig;
use crate::reconnect::{pause, supervise, Backoff};
use crate::store::{OutboxEvent, SharedStore};

/// Events published per round; their confirms are awaited together.
const BATCH: u32 = 200;
/// While events keep coming, confirmed ones leave the outbox at most this often; when it runs
/// dry, at once. The delete is a write, and the one writer is what intake and the timer wait
/// for: one delete per round starved this publisher in a storm (BENCHMARKS.md).
const REMOVE_EVERY: Duration = Duration::from_secs(1);
/// Looks at the outbox at least this often, beside the wakeups after each commit (a commit by
/// another process, or a wakeup lost to a restart, is picked up here), and notices a dead
/// channel while idle.
const POLL: Duration = Duration::from_secs(1);
const RECONNECT_BASE: Duration = Duration::from_millis(500);
/// Pause before reading the outbox again after a store error.
const STORE_RETRY: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
enum PublishError {
    #[error("AMQP: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("timed out connecting to the broker")]
    ConnectTimeout,
    #[error("the events channel closed")]
    ChannelClosed,
    #[error("the broker did not confirm event {seq}: {detail}")]
    NotConfirmed { seq: i64, detail: String },
}

/// Publishes the outbox until shut down, reconnecting with backoff when the broker goes away.
pub struct Publisher {
    config: AmqpConfig,
    store: SharedStore,
    /// Notified by the store after a commit that wrote events.
    wake: Arc<Notify>,
    /// The last event the broker confirmed, kept across reconnects: the outbox is read after
    /// it, so a confirmed event is not published again while it waits to be removed.
    confirmed: AtomicI64,
    /// Events up to here are gone from the outbox.
    removed: AtomicI64,
}

impl Publisher {
    pub fn new(config: AmqpConfig, store: SharedStore, wake: Arc<Notify>) -> Self {
        Self {
            config,
            store,
            wake,
            confirmed: AtomicI64::new(0),
            removed: AtomicI64::new(0),
        }
    }

    /// Runs until `shutdown`; fails only on a URL that can never work. Events stay in the
    /// outbox while the broker is away and go out in order once it is back.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let uri = self.config.uri()?;
        let exchange = self.config.events_exchange.as_str();
        let backoff = Backoff::new(RECONNECT_BASE, self.config.reconnect_max_delay);
        let session = || {
            let (this, uri, shutdown, backoff) = (&self, uri.clone(), &shutdown, &backoff);
            async move {
                let result = this.session(uri, shutdown, backoff).await;
                metrics::gauge!("callkeeper_events_connected").set(0.0);
                result
            }
        };
        let lost = |error: PublishError, wait: Duration| {
            warn!(
                %exchange,
                %error,
                retry_in_ms = wait.as_millis() as u64,
                "Lost the events connection; events wait in the outbox. Reconnecting."
            )
        };
        supervise(
            &shutdown,
            &backoff,
            "callkeeper_events_reconnects_total",
            session,
            lost,
        )
        .await;
        // What the broker confirmed leaves the outbox now, so a restart does not publish it
        // again (one try: the worker is stopping).
        self.remove_confirmed(&shutdown).await;
        info!(%exchange, "Events publisher stopped.");
        Ok(())
    }

    /// One connection from connect to loss (`Err`) or shutdown (`Ok`).
    async fn session(
        &self,
        uri: AMQPUri,
        shutdown: &CancellationToken,
        backoff: &Backoff,
    ) -> Result<(), PublishError> {
        let (connection, channel) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            connected = tokio::time::timeout(CONNECT_TIMEOUT, self.connect(uri)) => {
                connected.map_err(|_| PublishError::ConnectTimeout)??
            }
        };
        backoff.reset();
        metrics::gauge!("callkeeper_events_connected").set(1.0);
        info!(exchange = %self.config.events_exchange, "Publishing lifecycle events.");
        let result = self.publish_loop(&channel, shutdown).await;
        let reason = if result.is_ok() {
            "shutdown"
        } else {
            "reconnecting"
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, reason.into())).await;
        result
    }

    async fn connect(&self, uri: AMQPUri) -> Result<(Connection, Channel), PublishError> {
        let properties = ConnectionProperties::default().with_connection_name(
            format!("callkeeper events {}", self.config.events_exchange).into(),
        );
        let connection = Connection::connect_uri(uri, properties).await?;
        let channel = connection.create_channel().await?;
        if self.config.declare_topology {
            channel
                .exchange_declare(
                    self.config.events_exchange.as_str().into(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
        }
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok((connection, channel))
    }

    /// Publishes rounds of outbox events until shutdown (`Ok`) or a broker failure (`Err`).
    async fn publish_loop(
        &self,
        channel: &Channel,
        shutdown: &CancellationToken,
    ) -> Result<(), PublishError> {
        let mut last_removal = tokio::time::Instant::now();
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let after = self.confirmed.load(Ordering::Relaxed);
            let batch = match self.store.pending_events(after, BATCH).await {
                Ok(batch) => batch,
                Err(error) => {
                    metrics::counter!("callkeeper_store_errors_total", "operation" => "pending_events")
                        .increment(1);
                    warn!(%error, "Could not read the events outbox; will retry.");
                    if pause(STORE_RETRY, shutdown).await {
                        return Ok(());
                    }
                    continue;
                }
            };
            // Caught up, a quiet outbox holds nothing already published; while events keep
            // coming, the delete waits for its turn once a second.
            if batch.is_empty() || last_removal.elapsed() >= REMOVE_EVERY {
                self.remove_confirmed(shutdown).await;
                last_removal = tokio::time::Instant::now();
            }
            if batch.is_empty() {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
                if !channel.status().connected() {
                    return Err(PublishError::ChannelClosed);
                }
                continue;
            }
            let (confirmed, failure) = match self.publish(channel, &batch).await {
                Ok(last) => (Some(last), None),
                Err((last, error)) => (last, Some(error)),
            };
            // What was confirmed counts even when the rest failed, so the retry after the
            // reconnect starts at the first unconfirmed event.
            if let Some(last) = confirmed {
                self.confirmed.store(last, Ordering::Relaxed);
            }
            if let Some(error) = failure {
                return Err(error);
            }
        }
    }

    /// Publishes `batch` in order and waits for every confirm. Returns the last confirmed
    /// `seq`; on failure, the last `seq` of the unbroken confirmed prefix (if any) and why.
    async fn publish(
        &self,
        channel: &Channel,
        batch: &[OutboxEvent],
    ) -> Result<i64, (Option<i64>, PublishError)> {
        let exchange = self.config.events_exchange.as_str();
        let mut confirms = Vec::with_capacity(batch.len());
        let mut failure = None;
        for event in batch {
            let properties = BasicProperties::default()
                .with_content_type("application/cloudevents+json".into())
                // Persistent: kept by the broker across its restarts once routed to a durable queue.
                .with_delivery_mode(2)
                .with_message_id(event.id.as_str().into())
                .with_type(event.event_type.as_str().into())
                .with_app_id("callkeeper".into());
            match channel
                .basic_publish(
                    exchange.into(),
                    event.event_type.as_str().into(),
                    BasicPublishOptions::default(),
                    event.body.as_bytes(),
                    properties,
                )
                .await
            {
                Ok(confirm) => confirms.push((event.seq, confirm)),
                Err(error) => {
                    // Later events must not overtake this one: stop here.
                    failure = Some(PublishError::from(error));
                    break;
                }
            }
        }
        let mut last_confirmed = None;
        for (seq, confirm) in confirms {
            let problem = match confirm.await {
                Ok(Confirmation::Ack(_)) => None,
                Ok(other) => Some(format!("{other:?}")),
                Err(error) => Some(error.to_string()),
            };
            match problem {
                None => {
                    last_confirmed = Some(seq);
                    metrics::counter!("callkeeper_events_published_total").increment(1);
                }
                Some(detail) => {
                    return Err((last_confirmed, PublishError::NotConfirmed { seq, detail }));
                }
            }
        }
        match (failure, last_confirmed) {
            (None, Some(last)) => {
                debug!(events = batch.len(), "Lifecycle events published.");
                Ok(last)
            }
            (Some(error), last) => Err((last, error)),
            (None, None) => Err((None, PublishError::ChannelClosed)),
        }
    }

    /// Deletes the confirmed events not yet removed, retrying while the store is down: if this
    /// gave up, they would be published again after a restart (harmless for consumers that
    /// dedupe by id, but noisy). Gives up only at shutdown.
    async fn remove_confirmed(&self, shutdown: &CancellationToken) {
        let confirmed = self.confirmed.load(Ordering::Relaxed);
        if confirmed <= self.removed.load(Ordering::Relaxed) {
            return;
        }
        loop {
            match self.store.remove_events(confirmed).await {
                Ok(_) => {
                    self.removed.store(confirmed, Ordering::Relaxed);
                    return;
                }
                Err(error) => {
                    metrics::counter!("callkeeper_store_errors_total", "operation" => "remove_events")
                        .increment(1);
                    warn!(%error, "Could not remove published events from the outbox; will retry.");
                    if pause(STORE_RETRY, shutdown).await {
                        return;
                    }
                }
            }
        }
    }
}
