//! The store: the source of truth. One [`Store`] trait, one module per database; SQL stays in
//! those modules, the lifecycle rules stay in [`crate::domain::lifecycle`].

mod event_keys;
mod sqlite;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::inbound::{AttemptReport, Inbound, InboundOutcome};
use crate::domain::lifecycle::LifecycleError;
use crate::domain::sla::SlaRow;
use crate::domain::SlaStatus;
use crate::domain::{Attempt, Callback, CallbackId, CancelReason, Phone, QueueName, State};
use crate::notify::{Delivery, DeliveryState};
use crate::schedule::{Rules, Wakeups};

pub use event_keys::key_hash;
pub use sqlite::{SqliteStore, WRITER_CACHE};

/// A place in the timer's order of fire times: by time, then callback id. With no id it stands
/// after every callback due at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FireKey {
    pub at: DateTime<Utc>,
    pub id: Option<CallbackId>,
}

impl FireKey {
    /// Before every fire time.
    pub const START: FireKey = FireKey {
        at: DateTime::<Utc>::MIN_UTC,
        id: None,
    };

    /// Whether the fire time `(at, id)` comes at or before this place.
    pub fn covers(&self, at: DateTime<Utc>, id: CallbackId) -> bool {
        at < self.at || (at == self.at && self.id.is_none_or(|last| id <= last))
    }
}

pub type Result<T = (), E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or failed: transient, retry later.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored row no longer decodes (a bug or a hand edit).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("callback not found")]
    NotFound,
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
}

impl StoreError {
    /// Whether retrying later may succeed (the database was unreachable or failed), as opposed
    /// to an answer that stays the same.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Database(_))
    }
}

/// What the store needs beside its connection.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub rules: Arc<Rules>,
    /// Base URL of this API, for the claim/attempt links in webhook bodies.
    pub public_url: String,
    /// How long an opt-out refuses new requests.
    pub opt_out_period: Duration,
    /// Woken after commits that change fire times or add deliveries.
    pub wakeups: Wakeups,
}

/// `GET /v1/callbacks` filters; `cursor` is the last id of the previous page.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub queue: Option<QueueName>,
    pub state: Option<State>,
    pub limit: u32,
    pub cursor: Option<CallbackId>,
}

/// The result of a timer step for one callback.
#[derive(Debug, Clone, PartialEq)]
pub struct Advanced {
    /// Webhook deliveries created by this step.
    pub deliveries: u32,
    /// When the timer should look at this callback again.
    pub next_fire_at: Option<DateTime<Utc>>,
}

/// How a delivery try ended, as the notifier reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum TryResult {
    Delivered {
        status: u16,
    },
    /// Retry at `retry_at`, or give up (kept, replayable) when `None`.
    Failed {
        status: Option<u16>,
        error: String,
        retry_at: Option<DateTime<Utc>>,
    },
    /// 410 Gone: the endpoint is disabled and its pending deliveries are held.
    Gone,
}

/// Figures for the gauges ops watch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Callbacks per queue and state.
    pub by_state: Vec<(QueueName, State, u64)>,
    /// When the oldest open callback without an attempt of each configured queue was
    /// requested.
    pub oldest_untried: Vec<(QueueName, DateTime<Utc>)>,
    /// Open callbacks per queue that were warned at-risk and have no attempt yet.
    pub at_risk: Vec<(QueueName, u64)>,
    /// Lifecycle events in the outbox, not yet confirmed by the broker.
    pub event_backlog: u64,
}

/// One lifecycle event waiting in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    /// Publish order.
    pub seq: i64,
    /// CloudEvents id.
    pub id: String,
    /// CloudEvents type, also the routing key.
    pub event_type: String,
    /// The exact JSON to publish.
    pub body: String,
}

/// What one retention pass removed, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Purged {
    pub callbacks: u64,
    pub attempts: u64,
    /// Deliveries of the purged callbacks.
    pub deliveries: u64,
    pub event_outbox: u64,
    pub inbound_events: u64,
    pub opt_outs: u64,
    /// SLA digests: rows of `deliveries` too, but of no callback.
    pub digests: u64,
}

impl Purged {
    pub fn add(&mut self, other: Purged) {
        self.callbacks += other.callbacks;
        self.attempts += other.attempts;
        self.deliveries += other.deliveries;
        self.event_outbox += other.event_outbox;
        self.inbound_events += other.inbound_events;
        self.opt_outs += other.opt_outs;
        self.digests += other.digests;
    }
}

/// What erasing a phone number removed, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Erased {
    /// Every callback of the number, open ones included.
    pub callbacks: u64,
    pub attempts: u64,
    /// Deliveries of those callbacks, and any other whose body holds the number.
    pub deliveries: u64,
    pub event_outbox: u64,
    /// Fields of other numbers' callbacks and attempts (context, customer, call, note) in which
    /// the number was written out, now replaced by `[erased]`.
    pub redacted: u64,
    /// Whether an opt-out for the number exists and was kept: erasing it would let the number
    /// be called again, which is the opposite of what the person asked for.
    pub opt_out_kept: bool,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Runs migrations; idempotent.
    async fn migrate(&self) -> Result;

    /// Cheap reachability check for `/readyz`.
    async fn ping(&self) -> Result;

    /// Applies decoded events in one transaction, each idempotent on its key; one outcome per
    /// event, in order. An `Err` means nothing was applied and the batch may be retried.
    async fn apply_inbound(
        &self,
        batch: &[Inbound],
        now: DateTime<Utc>,
    ) -> Result<Vec<InboundOutcome>>;

    async fn get(&self, id: CallbackId) -> Result<Option<Callback>>;
    async fn list(&self, filter: &ListFilter) -> Result<Vec<Callback>>;
    async fn attempts(&self, id: CallbackId) -> Result<Vec<Attempt>>;

    async fn claim(&self, id: CallbackId, agent_id: &str, now: DateTime<Utc>) -> Result<Callback>;
    async fn record_attempt(
        &self,
        id: CallbackId,
        report: &AttemptReport,
        now: DateTime<Utc>,
    ) -> Result<Callback>;
    async fn cancel(
        &self,
        id: CallbackId,
        reason: CancelReason,
        now: DateTime<Utc>,
    ) -> Result<Callback>;

    /// Callbacks the timer must look at after `after` and by `until`, earliest first (by time,
    /// then id), at most `limit`.
    async fn fire_times_after(
        &self,
        after: FireKey,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(DateTime<Utc>, CallbackId)>>;
    /// [`Store::fire_times_after`] from the start.
    async fn fire_times(
        &self,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(DateTime<Utc>, CallbackId)>> {
        self.fire_times_after(FireKey::START, until, limit).await
    }
    /// Applies the time-driven transitions due at `now` to each callback and queues their
    /// webhooks, all in one transaction. One entry per id, in order; `None` for a callback
    /// that no longer exists, and for an id listed twice after its first place.
    async fn advance(
        &self,
        ids: &[CallbackId],
        now: DateTime<Utc>,
    ) -> Result<Vec<Option<Advanced>>>;
    /// [`Store::advance`] for a single callback; `NotFound` when it no longer exists.
    async fn advance_one(&self, id: CallbackId, now: DateTime<Utc>) -> Result<Advanced> {
        let mut stepped = self.advance(&[id], now).await?;
        stepped.pop().flatten().ok_or(StoreError::NotFound)
    }

    /// Pending deliveries whose time has come, earliest first, at most `limit`, leaving out
    /// the ids in `held` (the notifier has those in hand already; in a burst they are most of
    /// what is ready, and reading their bodies again was most of the cost of a read).
    async fn ready_deliveries(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        held: &HashSet<String>,
    ) -> Result<Vec<Delivery>>;
    /// When the earliest pending delivery is due, if any.
    async fn next_delivery_at(&self) -> Result<Option<DateTime<Utc>>>;
    /// Records finished tries in one transaction; returns how many deliveries still existed.
    async fn record_tries(
        &self,
        tries: &[(String, TryResult)],
        now: DateTime<Utc>,
    ) -> Result<usize>;
    /// [`Store::record_tries`] for a single try; `NotFound` when the delivery does not exist.
    async fn record_try(&self, id: &str, result: &TryResult, now: DateTime<Utc>) -> Result {
        match self
            .record_tries(&[(id.to_owned(), result.clone())], now)
            .await?
        {
            0 => Err(StoreError::NotFound),
            _ => Ok(()),
        }
    }
    async fn get_delivery(&self, id: &str) -> Result<Option<Delivery>>;
    async fn list_deliveries(
        &self,
        state: Option<DeliveryState>,
        limit: u32,
    ) -> Result<Vec<Delivery>>;
    /// Makes a given-up or held delivery pending again (and re-enables its endpoint).
    async fn replay_delivery(&self, id: &str, now: DateTime<Utc>) -> Result<Option<Delivery>>;
    /// Stores an SLA digest (a delivery of no callback) unless one with its id is stored
    /// already; the id is made from the queue and day, so a second run or a restart never makes
    /// a second digest. Held like any delivery when its endpoint is disabled. True when stored.
    async fn add_sla_digest(&self, delivery: &Delivery) -> Result<bool>;

    /// Counts for the metrics gauges.
    async fn stats(&self) -> Result<Stats>;
    /// Callbacks requested in `[from, to)` per queue and SLA status, counted in the database
    /// (the gauges need only counts, and a busy day holds millions of rows).
    async fn sla_counts(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<(QueueName, SlaStatus, u64)>>;
    /// The callbacks requested in `[from, to)`, in one queue or all, for the SLA report.
    async fn sla_rows(
        &self,
        queue: Option<&QueueName>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<SlaRow>>;

    /// The oldest lifecycle events in the outbox after `after_seq`, in publish order, at most
    /// `limit`.
    async fn pending_events(&self, after_seq: i64, limit: u32) -> Result<Vec<OutboxEvent>>;
    /// Deletes the outbox events up to and including `seq` (the broker confirmed them).
    async fn remove_events(&self, up_to_seq: i64) -> Result<u64>;

    /// One retention pass of at most `limit` callbacks (and `limit` idempotency keys, and `limit`
    /// digests): removes callbacks closed (completed, failed, cancelled, expired) before
    /// `before` with their attempts, deliveries and outbox events, idempotency keys applied
    /// before `before`, opt-outs that ended before `before`, and SLA digests no longer pending
    /// that were made more than a day before `before` (so the digest task's start-up look-back
    /// always finds the ones it made). Call again while it removes a full `limit`.
    async fn purge(&self, before: DateTime<Utc>, limit: u32) -> Result<Purged>;
    /// Erases every stored trace of `phone` except its opt-out (right to erasure).
    async fn erase_phone(&self, phone: &Phone) -> Result<Erased>;
}

pub type SharedStore = Arc<dyn Store>;

/// Opens the store named by `url`, applying migrations.
pub async fn open(url: &str, settings: StoreSettings) -> Result<SharedStore> {
    let store = SqliteStore::connect(url, settings).await?;
    store.migrate().await?;
    Ok(Arc::new(store))
}
