//! SQLite implementation of the store.
//!
//! All writes go through one pool with exactly one connection and run in `BEGIN IMMEDIATE`
//! transactions, so our own writers never meet `SQLITE_BUSY`; reads use a separate small pool
//! (WAL lets them run beside the writer). Lifecycle decisions are made by
//! [`crate::domain::lifecycle`] inside the transaction; this module only loads and saves.
//! Wakeups go out after COMMIT, never before, so the timer and notifier never see uncommitted
//! work.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};

use chrono::TimeDelta;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection};
use tracing::{debug, info, warn};

use super::event_keys::{key_hash, EventKeys};
use super::*;
use crate::domain::events::{lifecycle_events, LifecycleEvent};
use crate::domain::inbound::{CallbackRequest, CancelTarget, Command, Rejection};
use crate::domain::lifecycle::{self, Notice};
use crate::domain::{CallInfo, Customer, Outcome, Phone, Priority, SlaStatus, Window};
use crate::notify::outbox::deliveries_for;
use crate::schedule::QueuePolicy;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const READERS: u32 = 4;
/// The writer's page cache, in SQLite's unit (negative: KiB). Public so the bench measures
/// SQLite alone with the worker's setting.
pub const WRITER_CACHE: &str = "-65536";
const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 500;
/// `IN` list of the open states; must match the migrations' partial indexes on open callbacks
/// so SQLite can use them. (The unique index `callbacks_phone_queue_open` tells open from
/// closed by `closed_at`, which only closed callbacks have.)
const OPEN: &str = "state IN ('scheduled', 'due', 'claimed')";

const CALLBACK_COLUMNS: &str = "id, queue, phone, priority, state, sla, customer, agent_id, \
     context, call_info, window_not_before, window_not_after, requested_at, due_at, deadline, \
     requests, attempts, max_attempts, claimed_by, claimed_at, first_attempt_at, last_outcome, \
     at_risk_notified, cancel_reason, closed_at, updated_at, next_fire_at, no_answer_attempts, \
     busy_attempts, voicemail_attempts, offered_to_queue_at";

const DELIVERY_COLUMNS: &str = "id, callback_id, queue, notice, url, body, state, tries, \
     next_try_at, last_status, last_error, created_at, delivered_at";

pub struct SqliteStore {
    /// Exactly one connection: every write serializes here.
    writer: SqlitePool,
    /// A few connections for reads, so API reads never wait behind a write batch.
    reader: SqlitePool,
    /// Where each idempotency key is stored: loaded once, in the background from
    /// [`Store::migrate`] or by the first batch of intake, then kept by intake and retention.
    event_keys: Arc<tokio::sync::OnceCell<Mutex<EventKeys>>>,
    settings: StoreSettings,
    /// Held by a write from its COMMIT until it has handed its deliveries to the notifier, and
    /// by the notifier's reads of ready deliveries: a read that sees a delivery then finds it in
    /// the inbox too, so it is never taken once from each and sent twice.
    handover: Arc<tokio::sync::Mutex<()>>,
}

/// Both pools skip sqlx's ping before handing out a connection: the database is a file in
/// this process, so the ping tests nothing, and it cost a round trip to the connection's
/// thread on every read and every write transaction (about 2 % of the worker's CPU while
/// firing, BENCHMARKS.md). A statement on a broken connection still fails with its error.
fn pool_options() -> SqlitePoolOptions {
    SqlitePoolOptions::new().test_before_acquire(false)
}

impl SqliteStore {
    /// Opens (creating when missing, parent folder too) the SQLite file named by `url`
    /// (`sqlite://path/to/file.db`). Does not migrate; call [`Store::migrate`].
    pub async fn connect(url: &str, settings: StoreSettings) -> Result<Self> {
        let base = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            // Acks follow commits: a commit must survive power loss, not only a crash.
            .synchronous(SqliteSynchronous::Full);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        if !in_memory {
            if let Some(dir) = base.get_filename().parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
                }
            }
        }
        let writer = pool_options()
            .min_connections(1)
            .max_connections(1)
            // Keep the one connection for good: reopening costs, and an in-memory database
            // would vanish with it.
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(
                base.clone()
                    .journal_mode(SqliteJournalMode::Wal)
                    // Zero what is deleted or overwritten, so an erased phone number does not
                    // linger in free space of the file (old row versions, index entries).
                    .pragma("secure_delete", "ON")
                    // 64 MiB instead of SQLite's 2 MiB: intake touches index pages all over a
                    // store of hundreds of MB (random event ids), and every miss is a read
                    // call. Measured +15 % intake at 100,000 callbacks (BENCHMARKS.md).
                    .pragma("cache_size", WRITER_CACHE),
            )
            .await?;
        // An in-memory database exists once per connection set; share the writer for reads.
        let reader = if in_memory {
            writer.clone()
        } else {
            pool_options()
                .max_connections(READERS)
                .connect_with(base.pragma("query_only", "ON"))
                .await?
        };
        Ok(Self {
            writer,
            reader,
            event_keys: Arc::default(),
            settings,
            handover: Arc::default(),
        })
    }

    /// Closes both pools, waiting for connections to finish.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }

    /// Opens a write transaction for `operation` (a fixed word, used as a metric label) and
    /// records how long it waited for the one writer connection: a growing wait means writers
    /// queue behind each other, which is what makes a burst of due webhooks late.
    async fn begin_write(
        &self,
        operation: &'static str,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        let asked = std::time::Instant::now();
        // IMMEDIATE takes the write lock up front, so a transaction never fails half-way on a
        // lock upgrade (only matters if another process shares the file).
        let tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        metrics::histogram!("callkeeper_store_writer_wait_seconds", "operation" => operation)
            .record(asked.elapsed().as_secs_f64());
        Ok(tx)
    }

    /// Ends a write: the changes' lifecycle events go to the outbox in bulk, then COMMIT, then
    /// the timer and notifier are woken (never before, so they never see uncommitted work) and
    /// the notifier is handed the deliveries made.
    async fn commit(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Sqlite>,
        mut effects: Effects,
    ) -> Result {
        effects.write_deferred(&mut tx).await?;
        insert_events(&mut tx, &effects.events).await?;
        let _handover = match effects.handed.is_empty() {
            true => None,
            false => Some(self.handover.lock().await),
        };
        // Until the guard drops, after the hand-over, no read of ready deliveries can see them.
        tx.commit().await?;
        effects.wake(&self.settings.wakeups);
        Ok(())
    }

    fn policy(&self, queue: &QueueName) -> Option<&QueuePolicy> {
        self.settings.rules.queue(queue)
    }

    /// The keys in memory, loaded first if they are not yet. Intake waits here after a start
    /// (about 1.2 s at a million keys); firing and the API never need them.
    async fn event_keys(&self) -> Result<&Mutex<EventKeys>> {
        loaded_keys(&self.event_keys, &self.reader).await
    }

    /// Saves a changed (or new) callback, queues the deliveries for `notices` and writes the
    /// lifecycle events of the change to the outbox — all in the caller's transaction.
    async fn save(
        &self,
        conn: &mut SqliteConnection,
        callback: &mut Callback,
        prior: Prior<'_>,
        notices: &[Notice],
        now: DateTime<Utc>,
        effects: &mut Effects,
    ) -> Result<Option<DateTime<Utc>>> {
        truncate_callback(callback);
        let policy = self.policy(&callback.queue);
        let next = match (callback.state.is_open(), policy) {
            (false, _) => None,
            (true, Some(policy)) => lifecycle::next_fire_at(callback, policy).map(truncate),
            // Queue no longer configured: keep the time we had, the rules are unknown.
            (true, None) => prior.next_fire_at,
        };
        match effects.deferred.as_mut() {
            Some(rows) => rows.put_callback(callback, next),
            None => upsert_callbacks(conn, &[(&*callback, next)]).await?,
        }
        // Written to the outbox in bulk by `commit`, in this order.
        effects.events.extend(lifecycle_events(
            prior.callback,
            callback,
            prior.attempt,
            now,
        ));
        if let Some(at) = next {
            effects.fires.push((at, callback.id));
        }
        if !notices.is_empty() {
            let Some(policy) = policy else {
                return Err(StoreError::Corrupt(format!(
                    "queue '{}' is not configured",
                    callback.queue
                )));
            };
            let deliveries =
                deliveries_for(callback, notices, policy, &self.settings.public_url, now);
            effects.deliveries += deliveries.len();
            match effects.deferred.as_mut() {
                Some(rows) => rows.deliveries.extend(deliveries),
                None => effects.insert_deliveries(conn, deliveries).await?,
            }
        }
        Ok(next)
    }

    /// Claims inside a write transaction.
    async fn claim_in(
        &self,
        conn: &mut SqliteConnection,
        id: CallbackId,
        agent_id: &str,
        now: DateTime<Utc>,
        effects: &mut Effects,
    ) -> Result<Callback> {
        let (mut callback, stored_next) =
            load_callback(conn, id).await?.ok_or(StoreError::NotFound)?;
        let before = callback.clone();
        lifecycle::claim(&mut callback, agent_id, now)?;
        let prior = Prior::of(&before, stored_next);
        self.save(conn, &mut callback, prior, &[], now, effects)
            .await?;
        Ok(callback)
    }

    /// Records an attempt inside a write transaction. Refusals return before any write, so the
    /// caller may turn them into a rejection and carry on with the transaction.
    async fn attempt_in(
        &self,
        conn: &mut SqliteConnection,
        id: CallbackId,
        report: &AttemptReport,
        now: DateTime<Utc>,
        effects: &mut Effects,
    ) -> Result<Callback> {
        let (mut callback, stored_next) =
            load_callback(conn, id).await?.ok_or(StoreError::NotFound)?;
        let Some(policy) = self.policy(&callback.queue) else {
            return Err(StoreError::Corrupt(format!(
                "queue '{}' is not configured",
                callback.queue
            )));
        };
        let phone_attempts = match policy.phone_attempts_since(now) {
            Some(since) => phone_attempts(conn, &callback.phone, since).await?,
            None => Vec::new(),
        };
        let before = callback.clone();
        let notices = lifecycle::attempt(&mut callback, report, policy, &phone_attempts, now)?;
        let prior = Prior::of(&before, stored_next).with_attempt(report);
        self.save(conn, &mut callback, prior, &notices, now, effects)
            .await?;
        sqlx::query(
            "INSERT INTO attempts (callback_id, number, agent_id, outcome, note, at, phone) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(callback.id.to_string())
        .bind(callback.attempts)
        .bind(&report.agent_id)
        .bind(report.outcome.as_str())
        .bind(&report.note)
        .bind(ms(now))
        .bind(callback.phone.as_str())
        .execute(&mut *conn)
        .await?;
        Ok(callback)
    }

    /// Cancels one open callback inside a write transaction.
    async fn cancel_in(
        &self,
        conn: &mut SqliteConnection,
        id: CallbackId,
        reason: CancelReason,
        now: DateTime<Utc>,
        effects: &mut Effects,
    ) -> Result<Callback> {
        let (mut callback, stored_next) =
            load_callback(conn, id).await?.ok_or(StoreError::NotFound)?;
        let before = callback.clone();
        lifecycle::cancel(&mut callback, reason, now)?;
        self.save(
            conn,
            &mut callback,
            Prior::of(&before, stored_next),
            &[],
            now,
            effects,
        )
        .await?;
        Ok(callback)
    }

    /// Cancels every open callback of `phone` (in `queue` when given); returns how many.
    async fn cancel_phone_in(
        &self,
        conn: &mut SqliteConnection,
        phone: &Phone,
        queue: Option<&QueueName>,
        reason: CancelReason,
        now: DateTime<Utc>,
        effects: &mut Effects,
    ) -> Result<u32> {
        let sql = sql::open_for_phone(queue.is_some());
        let mut query = sqlx::query(&sql).bind(phone.as_str());
        if let Some(queue) = queue {
            query = query.bind(queue.as_str());
        }
        let rows = query.fetch_all(&mut *conn).await?;
        let mut cancelled = 0;
        for row in rows {
            let (mut callback, stored_next) = callback_from_row(&row)?;
            let before = callback.clone();
            if lifecycle::cancel(&mut callback, reason, now).is_ok() {
                let prior = Prior::of(&before, stored_next);
                self.save(conn, &mut callback, prior, &[], now, effects)
                    .await?;
                cancelled += 1;
            }
        }
        Ok(cancelled)
    }

    /// Steps one callback, as loaded (or just written) inside the caller's transaction.
    async fn advance_in(
        &self,
        conn: &mut SqliteConnection,
        callback: &mut Callback,
        stored_next: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        effects: &mut Effects,
    ) -> Result<Advanced> {
        match stored_next {
            Some(at) if at <= now => {}
            _ => {
                return Ok(Advanced {
                    deliveries: 0,
                    next_fire_at: stored_next,
                })
            }
        }
        let Some(policy) = self.policy(&callback.queue) else {
            warn!(queue = %callback.queue, "Callback's queue is no longer configured; left as it is.");
            // Nothing for the timer to do until the queue is configured again (a restart
            // reloads it from the stored fire time).
            return Ok(Advanced {
                deliveries: 0,
                next_fire_at: None,
            });
        };
        let before = callback.clone();
        let notices = lifecycle::advance(callback, policy, now);
        let queued_before = effects.deliveries;
        let next_fire_at = self
            .save(
                conn,
                callback,
                Prior::of(&before, stored_next),
                &notices,
                now,
                effects,
            )
            .await?;
        for notice in &notices {
            debug!(callback_id = %callback.id, notice = %notice, "Callback notice queued.");
        }
        Ok(Advanced {
            deliveries: (effects.deliveries - queued_before) as u32,
            next_fire_at,
        })
    }

    /// Applies a request against `open`, the batch's view of open callbacks: a request for a
    /// phone+queue with an open callback merges into it, else creates one. Writes are deferred
    /// to the end of the run (see [`SqliteStore::apply_inbound`]), so nothing here reads the
    /// database.
    async fn request_in(
        &self,
        conn: &mut SqliteConnection,
        request: &CallbackRequest,
        now: DateTime<Utc>,
        opted_out: &HashSet<String>,
        open: &mut OpenCallbacks,
        effects: &mut Effects,
    ) -> Result<InboundOutcome> {
        let Some(policy) = self.policy(&request.queue) else {
            return Ok(rejected(
                "unknown_queue",
                format!("queue '{}' is not configured", request.queue),
            ));
        };
        if opted_out.contains(request.phone.as_str()) {
            return Ok(rejected(
                "opted_out",
                format!("number {} opted out of contact", request.phone),
            ));
        }
        let plan = policy.plan(request, now);
        let key = (request.phone.clone(), request.queue.clone());
        let (outcome, mut callback, mut next) = match open.remove(&key) {
            Some((mut callback, stored_next)) => {
                let before = callback.clone();
                lifecycle::merge(&mut callback, request, plan, now);
                let prior = Prior::of(&before, stored_next);
                let next = self
                    .save(conn, &mut callback, prior, &[], now, effects)
                    .await?;
                debug!(callback_id = %callback.id, requests = callback.requests, "Request merged into the open callback.");
                (InboundOutcome::Merged(callback.id), callback, next)
            }
            None => {
                let mut callback = lifecycle::create(request, plan, policy, now);
                let next = self
                    .save(conn, &mut callback, Prior::NONE, &[], now, effects)
                    .await?;
                debug!(callback_id = %callback.id, queue = %callback.queue, "Callback created.");
                (InboundOutcome::Created(callback.id), callback, next)
            }
        };
        // Due at once (the usual "call me back now"): stepped here, in intake's transaction, as
        // the timer would step it a moment later. That saves the timer's read, rewrite and
        // commit of every such callback, and its webhook waits for no one.
        if next.is_some_and(|at| at <= now) {
            effects.forget_fire(callback.id);
            next = self
                .advance_in(conn, &mut callback, next, now, effects)
                .await?
                .next_fire_at;
        }
        open.insert(key, (callback, next));
        Ok(outcome)
    }

    /// Applies one event's command other than a request (those go through
    /// [`SqliteStore::request_in`]); a rejection writes nothing.
    async fn command_in(
        &self,
        conn: &mut SqliteConnection,
        command: &Command,
        now: DateTime<Utc>,
        opted_out: &mut HashSet<String>,
        effects: &mut Effects,
    ) -> Result<InboundOutcome> {
        match command {
            Command::Request(_) => unreachable!("apply_inbound applies requests itself"),
            Command::Cancel {
                target: CancelTarget::Id(id),
                reason,
            } => match self.cancel_in(conn, *id, *reason, now, effects).await {
                Ok(_) => Ok(InboundOutcome::Cancelled(1)),
                Err(StoreError::NotFound) => Ok(unknown_callback(*id)),
                Err(StoreError::Lifecycle(_)) => Ok(InboundOutcome::Cancelled(0)),
                Err(e) => Err(e),
            },
            Command::Cancel {
                target: CancelTarget::Phone { phone, queue },
                reason,
            } => {
                let n = self
                    .cancel_phone_in(conn, phone, queue.as_ref(), *reason, now, effects)
                    .await?;
                Ok(InboundOutcome::Cancelled(n))
            }
            Command::OptOut { phone } => {
                let n = self
                    .cancel_phone_in(conn, phone, None, CancelReason::OptedOut, now, effects)
                    .await?;
                let period =
                    TimeDelta::from_std(self.settings.opt_out_period).unwrap_or(TimeDelta::MAX);
                let until = now
                    .checked_add_signed(period)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC);
                sqlx::query(
                    "INSERT INTO opt_outs (phone, until) VALUES (?, ?) \
                     ON CONFLICT (phone) DO UPDATE SET until = excluded.until",
                )
                .bind(phone.as_str())
                .bind(ms(until))
                .execute(&mut *conn)
                .await?;
                if until > now {
                    opted_out.insert(phone.as_str().to_owned());
                }
                Ok(InboundOutcome::Cancelled(n))
            }
            Command::Attempt {
                callback_id,
                report,
            } => {
                let known_queue = match load_queue(conn, *callback_id).await? {
                    None => return Ok(unknown_callback(*callback_id)),
                    Some(queue) => self.policy(&queue).is_some(),
                };
                if !known_queue {
                    return Ok(rejected(
                        "unknown_queue",
                        format!("callback {callback_id} belongs to a queue that is not configured"),
                    ));
                }
                match self
                    .attempt_in(conn, *callback_id, report, now, effects)
                    .await
                {
                    Ok(callback) => Ok(InboundOutcome::Attempted(callback.id)),
                    Err(StoreError::NotFound) => Ok(unknown_callback(*callback_id)),
                    Err(StoreError::Lifecycle(lifecycle::LifecycleError::NotOpen(state))) => {
                        Ok(rejected(
                            "not_open",
                            format!("callback {callback_id} is {state} and no longer open"),
                        ))
                    }
                    Err(StoreError::Lifecycle(lifecycle::LifecycleError::ClaimedByOther)) => {
                        Ok(rejected(
                            "claimed_by_other",
                            format!("callback {callback_id} is claimed by another agent"),
                        ))
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }
}

/// A callback as it was before a write, for the next fire time and the lifecycle events.
#[derive(Debug, Clone, Copy)]
struct Prior<'a> {
    /// `None` when the write creates the callback.
    callback: Option<&'a Callback>,
    next_fire_at: Option<DateTime<Utc>>,
    /// The attempt the write records, if any.
    attempt: Option<&'a AttemptReport>,
}

impl<'a> Prior<'a> {
    /// A callback that did not exist before the write.
    const NONE: Prior<'static> = Prior {
        callback: None,
        next_fire_at: None,
        attempt: None,
    };

    fn of(callback: &'a Callback, next_fire_at: Option<DateTime<Utc>>) -> Self {
        Self {
            callback: Some(callback),
            next_fire_at,
            attempt: None,
        }
    }

    fn with_attempt(self, report: &'a AttemptReport) -> Self {
        Self {
            attempt: Some(report),
            ..self
        }
    }
}

/// What a committed write must tell the timer, the notifier and the events publisher.
#[derive(Debug, Default)]
struct Effects {
    fires: Vec<(DateTime<Utc>, CallbackId)>,
    /// Deliveries made, written or deferred.
    deliveries: usize,
    /// Deliveries written, for the notifier once committed.
    handed: Vec<Delivery>,
    /// Lifecycle events written to the outbox; counted in the metrics once committed.
    events: Vec<LifecycleEvent>,
    /// Set by a write that reads all it needs before changing anything (the timer's batch,
    /// intake's requests): its rows are then kept here and written by `commit`, many per
    /// statement. Other writes read back what they wrote, so they write at once.
    deferred: Option<Deferred>,
}

/// Rows a batch write hands to `commit`.
#[derive(Debug, Default)]
struct Deferred {
    callbacks: Vec<(Callback, Option<DateTime<Utc>>)>,
    deliveries: Vec<Delivery>,
}

impl Deferred {
    /// Keeps a callback's row for the write. A callback saved twice in a row (intake stepping
    /// the one it just created) is written once, in its last state.
    fn put_callback(&mut self, callback: &Callback, next: Option<DateTime<Utc>>) {
        match self.callbacks.last_mut() {
            Some(last) if last.0.id == callback.id => *last = (callback.clone(), next),
            _ => self.callbacks.push((callback.clone(), next)),
        }
    }
}

impl Effects {
    /// Writes the deferred rows, if any; their deliveries are then handed over like the rest.
    async fn write_deferred(&mut self, conn: &mut SqliteConnection) -> Result {
        let Some(rows) = self.deferred.take() else {
            return Ok(());
        };
        let callbacks: Vec<_> = rows.callbacks.iter().map(|(c, next)| (c, *next)).collect();
        upsert_callbacks(conn, &callbacks).await?;
        self.insert_deliveries(conn, rows.deliveries).await
    }

    /// Writes deliveries and keeps those stored pending for the hand-over (those to a disabled
    /// endpoint are stored held, and wait for a replay).
    async fn insert_deliveries(
        &mut self,
        conn: &mut SqliteConnection,
        mut deliveries: Vec<Delivery>,
    ) -> Result {
        insert_deliveries(conn, &mut deliveries).await?;
        self.handed.extend(
            deliveries
                .into_iter()
                .filter(|d| d.state == DeliveryState::Pending),
        );
        Ok(())
    }

    /// Drops the fire time the last save of `id` asked for, when its caller steps it at once:
    /// the timer must not get a time already passed, only the step's next one.
    fn forget_fire(&mut self, id: CallbackId) {
        if self.fires.last().is_some_and(|&(_, last)| last == id) {
            self.fires.pop();
        }
    }

    /// Call only after COMMIT.
    fn wake(self, wakeups: &Wakeups) {
        for (at, id) in self.fires {
            wakeups.fire_at(at, id);
        }
        if !self.handed.is_empty() {
            wakeups.deliveries_made(self.handed);
        }
        if !self.events.is_empty() {
            crate::events::observe(&self.events);
            wakeups.events_ready();
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result {
        MIGRATOR.run(&self.writer).await?;
        // Loaded beside the rest of start-up: the timer fires what fell due during a restart
        // while the keys load, and intake waits for them (`event_keys`).
        let (keys, reader) = (self.event_keys.clone(), self.reader.clone());
        tokio::spawn(async move {
            if let Err(error) = loaded_keys(&keys, &reader).await {
                warn!(%error, "Loading the idempotency keys failed; intake tries again.");
            }
        });
        Ok(())
    }

    async fn ping(&self) -> Result {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn apply_inbound(
        &self,
        batch: &[Inbound],
        now: DateTime<Utc>,
    ) -> Result<Vec<InboundOutcome>> {
        let now = truncate(now);
        let mut effects = Effects::default();
        let mut outcomes = Vec::with_capacity(batch.len());
        // Each key is hashed once, before the writer is taken: to look it up now, and to
        // record it if it applies.
        let hashes: Vec<i64> = batch
            .iter()
            .map(|event| key_hash(&event.key.source, &event.key.id))
            .collect();
        let keys = self.event_keys().await?;
        let mut tx = self.begin_write("intake").await?;
        // Keys and opt-outs are fetched for the whole batch up front (a few queries instead of
        // two per event) and kept current as events apply, so a later event sees an earlier one.
        let mut fingerprints = known_fingerprints(&mut tx, keys, &hashes).await?;
        let mut opted_out = opted_out_phones(&mut tx, batch, now).await?;
        // Requests are the bulk of intake. Their open callbacks are read for the rest of the
        // batch in a few queries and kept current here, and their rows are written at `commit`,
        // many per statement: a batch is a handful of statements instead of two per request.
        effects.deferred = Some(Deferred::default());
        let mut open: Option<OpenCallbacks> = None;
        let mut applied = Vec::new();
        for (i, event) in batch.iter().enumerate() {
            let key = (event.key.source.clone(), event.key.id.clone());
            let outcome = match fingerprints.get(&key) {
                Some(fingerprint) if *fingerprint == event.fingerprint => InboundOutcome::Duplicate,
                Some(_) => {
                    warn!(source = %event.key.source, event_id = %event.key.id, "Inbound event reuses a key with another payload; not applied.");
                    rejected(
                        "idempotency_conflict",
                        format!(
                            "event {} from {} was already applied with another payload",
                            event.key.id, event.key.source
                        ),
                    )
                }
                None => match &event.command {
                    Command::Request(request) => {
                        let open = match &mut open {
                            Some(open) => open,
                            None => open.insert(open_callbacks(&mut tx, &batch[i..]).await?),
                        };
                        self.request_in(&mut tx, request, now, &opted_out, open, &mut effects)
                            .await?
                    }
                    // Other commands read and write the database directly: the rows deferred
                    // so far are written first, and the read-ahead is dropped (the command may
                    // close what it holds).
                    command => {
                        effects.write_deferred(&mut tx).await?;
                        open = None;
                        let outcome = self
                            .command_in(&mut tx, command, now, &mut opted_out, &mut effects)
                            .await?;
                        effects.deferred = Some(Deferred::default());
                        outcome
                    }
                },
            };
            // Rejections are not recorded, so a corrected republish under the key can apply.
            if !matches!(
                outcome,
                InboundOutcome::Rejected(_) | InboundOutcome::Duplicate
            ) {
                fingerprints.insert(key, event.fingerprint.clone());
                applied.push((event, hashes[i]));
            }
            outcomes.push(outcome);
        }
        record_events(&mut tx, keys, &applied, now).await?;
        self.commit(tx, effects).await?;
        Ok(outcomes)
    }

    async fn get(&self, id: CallbackId) -> Result<Option<Callback>> {
        let mut conn = self.reader.acquire().await?;
        Ok(load_callback(&mut conn, id).await?.map(|(c, _)| c))
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<Callback>> {
        let sql = sql::list(
            filter.queue.is_some(),
            filter.state.is_some(),
            filter.cursor.is_some(),
        );
        let mut query = sqlx::query(&sql);
        if let Some(queue) = &filter.queue {
            query = query.bind(queue.as_str());
        }
        if let Some(state) = filter.state {
            query = query.bind(state.as_str());
        }
        if let Some(cursor) = filter.cursor {
            query = query.bind(cursor.to_string());
        }
        let rows = query
            .bind(clamp_limit(filter.limit))
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|row| callback_from_row(row).map(|(c, _)| c))
            .collect()
    }

    async fn attempts(&self, id: CallbackId) -> Result<Vec<Attempt>> {
        let rows = sqlx::query(
            "SELECT callback_id, number, agent_id, outcome, note, at FROM attempts \
             WHERE callback_id = ? ORDER BY number",
        )
        .bind(id.to_string())
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(attempt_from_row).collect()
    }

    async fn claim(&self, id: CallbackId, agent_id: &str, now: DateTime<Utc>) -> Result<Callback> {
        let now = truncate(now);
        let mut effects = Effects::default();
        let mut tx = self.begin_write("claim").await?;
        let callback = self
            .claim_in(&mut tx, id, agent_id, now, &mut effects)
            .await?;
        self.commit(tx, effects).await?;
        Ok(callback)
    }

    async fn record_attempt(
        &self,
        id: CallbackId,
        report: &AttemptReport,
        now: DateTime<Utc>,
    ) -> Result<Callback> {
        let now = truncate(now);
        let mut effects = Effects::default();
        let mut tx = self.begin_write("attempt").await?;
        let callback = self
            .attempt_in(&mut tx, id, report, now, &mut effects)
            .await?;
        self.commit(tx, effects).await?;
        Ok(callback)
    }

    async fn cancel(
        &self,
        id: CallbackId,
        reason: CancelReason,
        now: DateTime<Utc>,
    ) -> Result<Callback> {
        let now = truncate(now);
        let mut effects = Effects::default();
        let mut tx = self.begin_write("cancel").await?;
        let callback = self
            .cancel_in(&mut tx, id, reason, now, &mut effects)
            .await?;
        self.commit(tx, effects).await?;
        Ok(callback)
    }

    async fn fire_times_after(
        &self,
        after: FireKey,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(DateTime<Utc>, CallbackId)>> {
        let query = match after.id {
            None => sqlx::query_as(sql::FIRE_TIMES_AFTER_TIME).bind(ms(after.at)),
            Some(id) => sqlx::query_as(sql::FIRE_TIMES_AFTER_KEY)
                .bind(ms(after.at))
                .bind(id.to_string()),
        };
        let rows: Vec<(i64, String)> = query
            .bind(ms(until))
            .bind(limit)
            .fetch_all(&self.reader)
            .await?;
        rows.into_iter()
            .map(|(at, id)| Ok((from_ms(at)?, parse_id(&id)?)))
            .collect()
    }

    async fn advance(
        &self,
        ids: &[CallbackId],
        now: DateTime<Utc>,
    ) -> Result<Vec<Option<Advanced>>> {
        let now = truncate(now);
        // Rows are read up front and written at `commit`, many per statement: a batch is a
        // handful of statements instead of three per callback.
        let mut effects = Effects {
            deferred: Some(Deferred::default()),
            ..Effects::default()
        };
        let mut stepped = Vec::with_capacity(ids.len());
        // One transaction (one fsync) for the whole batch: per-callback commits capped firing
        // at the disk's flush rate.
        let mut tx = self.begin_write("timer").await?;
        let mut loaded = load_callbacks(&mut tx, ids).await?;
        for id in ids {
            // `None`: erased while its fire time was in the timer's hands, or listed twice (it
            // was stepped already, and the timer holds its next time from that step).
            stepped.push(match loaded.remove(id) {
                Some((mut callback, next)) => Some(
                    self.advance_in(&mut tx, &mut callback, next, now, &mut effects)
                        .await?,
                ),
                None => None,
            });
        }
        // The caller (the timer) is told the next times in the return value; the wakeups still
        // go out, so every path that changes a fire time reports it the same way.
        self.commit(tx, effects).await?;
        Ok(stepped)
    }

    async fn ready_deliveries(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        held: &HashSet<String>,
    ) -> Result<Vec<Delivery>> {
        let now = ms(now);
        // The connection first: in memory it is the writer's, which a committing write holds.
        let mut conn = self.reader.acquire().await?;
        let _handover = self.handover.lock().await;
        // Ids first, from the index alone; then the rows of only those not held.
        let scan = i64::from(limit).saturating_add(held.len() as i64);
        let ids: Vec<String> = sqlx::query_scalar(sql::READY_DELIVERY_IDS)
            .bind(now)
            .bind(scan)
            .fetch_all(&mut *conn)
            .await?;
        let wanted: Vec<String> = ids
            .into_iter()
            .filter(|id| !held.contains(id))
            .take(limit as usize)
            .collect();
        let mut found = HashMap::with_capacity(wanted.len());
        for chunk in wanted.chunks(sql::CHUNK) {
            // Pending and ready again: one may have been recorded between the two reads.
            let statement = sql::ready_deliveries_by_id(chunk.len());
            let mut query = sqlx::query(&statement).bind(now);
            for id in chunk {
                query = query.bind(id);
            }
            for row in query.fetch_all(&mut *conn).await? {
                let delivery = delivery_from_row(&row)?;
                found.insert(delivery.id.clone(), delivery);
            }
        }
        Ok(wanted.iter().filter_map(|id| found.remove(id)).collect())
    }

    async fn next_delivery_at(&self) -> Result<Option<DateTime<Utc>>> {
        let at: Option<i64> = sqlx::query_scalar(sql::NEXT_DELIVERY_AT)
            .fetch_one(&self.reader)
            .await?;
        at.map(from_ms).transpose()
    }

    async fn record_tries(
        &self,
        tries: &[(String, TryResult)],
        now: DateTime<Utc>,
    ) -> Result<usize> {
        let now = ms(now);
        let mut recorded = 0;
        // One transaction for every try the notifier finished meanwhile (group commit).
        let mut tx = self.begin_write("record_tries").await?;
        // Successes, nearly all of them, many per statement; the rest one by one. Each
        // delivery is in the batch once (the notifier holds it until it is recorded), so the
        // order between the two does not matter.
        let delivered: Vec<(&str, u16)> = tries
            .iter()
            .filter_map(|(id, result)| match result {
                TryResult::Delivered { status } => Some((id.as_str(), *status)),
                _ => None,
            })
            .collect();
        for chunk in delivered.chunks(sql::CHUNK) {
            let statement = sql::record_delivered(chunk.len());
            let mut query = sqlx::query(&statement).bind(now);
            for (id, status) in chunk {
                query = query.bind(*id).bind(*status);
            }
            recorded += query.execute(&mut *tx).await?.rows_affected() as usize;
        }
        for (id, result) in tries {
            let kept = match result {
                TryResult::Delivered { .. } => continue, // recorded above
                TryResult::Failed {
                    status,
                    error,
                    retry_at,
                } => record_failed_in(&mut tx, id, *status, error, *retry_at).await?,
                TryResult::Gone => record_gone_in(&mut tx, id, now).await?,
            };
            recorded += usize::from(kept);
        }
        tx.commit().await?;
        Ok(recorded)
    }

    async fn get_delivery(&self, id: &str) -> Result<Option<Delivery>> {
        let row = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(delivery_from_row).transpose()
    }

    async fn list_deliveries(
        &self,
        state: Option<DeliveryState>,
        limit: u32,
    ) -> Result<Vec<Delivery>> {
        let sql = sql::list_deliveries(state.is_some());
        let mut query = sqlx::query(&sql);
        if let Some(state) = state {
            query = query.bind(state.as_str());
        }
        let rows = query
            .bind(clamp_limit(limit))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(delivery_from_row).collect()
    }

    async fn replay_delivery(&self, id: &str, now: DateTime<Utc>) -> Result<Option<Delivery>> {
        let now = truncate(now);
        let mut tx = self.begin_write("replay").await?;
        let Some(url) = delivery_url(&mut tx, id).await? else {
            return Ok(None);
        };
        sqlx::query(
            "UPDATE deliveries SET state = 'pending', tries = 0, next_try_at = ?, \
             delivered_at = NULL WHERE id = ?",
        )
        .bind(ms(now))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE endpoints SET disabled_at = NULL WHERE url = ?")
            .bind(&url)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ?"
        ))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let delivery = delivery_from_row(&row)?;
        tx.commit().await?;
        self.settings.wakeups.deliveries_ready();
        Ok(Some(delivery))
    }

    async fn stats(&self) -> Result<Stats> {
        let mut stats = Stats::default();
        for row in sqlx::query(sql::COUNT_BY_STATE)
            .fetch_all(&self.reader)
            .await?
        {
            let queue = parse_queue(row.get("queue"))?;
            let state = parse_word("state", row.get("state"), State::parse)?;
            stats
                .by_state
                .push((queue, state, row.get::<i64, _>("n") as u64));
        }
        // One seek per queue; a GROUP BY over the open callbacks would read each of them.
        let oldest_untried = sql::oldest_untried();
        for queue in self.settings.rules.queue_names() {
            let oldest: Option<i64> = sqlx::query_scalar(&oldest_untried)
                .bind(queue.as_str())
                .fetch_one(&self.reader)
                .await?;
            if let Some(oldest) = oldest {
                stats.oldest_untried.push((queue.clone(), from_ms(oldest)?));
            }
        }
        for row in sqlx::query(&sql::at_risk()).fetch_all(&self.reader).await? {
            stats.at_risk.push((
                parse_queue(row.get("queue"))?,
                row.get::<i64, _>("n") as u64,
            ));
        }
        stats.event_backlog = sqlx::query_scalar::<_, i64>(sql::OUTBOX_BACKLOG)
            .fetch_one(&self.reader)
            .await? as u64;
        Ok(stats)
    }

    async fn sla_counts(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<(QueueName, SlaStatus, u64)>> {
        let statement = sql::sla_counts();
        let mut counts = Vec::new();
        for queue in self.settings.rules.queue_names() {
            let row = sqlx::query(&statement)
                .bind(queue.as_str())
                .bind(ms(from))
                .bind(ms(to))
                .fetch_one(&self.reader)
                .await?;
            for (column, status) in SlaStatus::ALL.iter().enumerate() {
                counts.push((queue.clone(), *status, row.get::<i64, _>(column) as u64));
            }
        }
        Ok(counts)
    }

    async fn sla_rows(
        &self,
        queue: Option<&QueueName>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<SlaRow>> {
        let rows = sqlx::query(sql::sla_rows(queue.is_some()))
            .bind(queue.map(QueueName::as_str))
            .bind(ms(from))
            .bind(ms(to))
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(SlaRow {
                    requests: row.get::<i64, _>("requests") as u32,
                    sla: parse_word("sla", row.get("sla"), SlaStatus::parse)?,
                    requested_at: from_ms(row.get("requested_at"))?,
                    deadline: from_ms(row.get("deadline"))?,
                    first_attempt_at: opt_time(row.get("first_attempt_at"))?,
                    attempts: row.get::<i64, _>("attempts") as u32,
                })
            })
            .collect()
    }

    async fn pending_events(&self, after_seq: i64, limit: u32) -> Result<Vec<OutboxEvent>> {
        let rows: Vec<(i64, String, String, String)> = sqlx::query_as(sql::PENDING_EVENTS)
            .bind(after_seq)
            .bind(limit)
            .fetch_all(&self.reader)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(seq, id, event_type, body)| OutboxEvent {
                seq,
                id,
                event_type,
                body,
            })
            .collect())
    }

    async fn remove_events(&self, up_to_seq: i64) -> Result<u64> {
        let mut tx = self.begin_write("events").await?;
        let done = sqlx::query("DELETE FROM event_outbox WHERE seq <= ?")
            .bind(up_to_seq)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    async fn purge(&self, before: DateTime<Utc>, limit: u32) -> Result<Purged> {
        let before = ms(before);
        let mut tx = self.begin_write("purge").await?;
        let ids: Vec<String> = sqlx::query_scalar(sql::CLOSED_BEFORE)
            .bind(before)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        let mut purged = Purged::default();
        for chunk in ids.chunks(sql::CHUNK) {
            // Children first: attempts and deliveries reference their callback.
            purged.attempts += delete_where_in(&mut tx, "attempts", "callback_id", chunk).await?;
            purged.deliveries +=
                delete_where_in(&mut tx, "deliveries", "callback_id", chunk).await?;
            purged.event_outbox +=
                delete_where_in(&mut tx, "event_outbox", "callback_id", chunk).await?;
            purged.callbacks += delete_where_in(&mut tx, "callbacks", "id", chunk).await?;
        }
        let purged_keys: Vec<(i64, Option<i64>, String, String)> =
            sqlx::query_as(sql::PURGE_INBOUND_EVENTS)
                .bind(before)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
        purged.inbound_events = purged_keys.len() as u64;
        purged.opt_outs = sqlx::query("DELETE FROM opt_outs WHERE until < ?")
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        purged.digests = purge_digests(&mut tx, before, limit).await?;
        tx.commit().await?;
        // While the keys still load, the load may yet read these rows: their stale entries
        // would cost a read each, nothing more.
        if let Some(keys) = self.event_keys.get() {
            let mut keys = lock(keys);
            for (seq, hash, source, id) in purged_keys {
                keys.remove(hash.unwrap_or_else(|| key_hash(&source, &id)), seq);
            }
            report_key_count(&keys);
        }
        Ok(purged)
    }

    async fn add_sla_digest(&self, delivery: &Delivery) -> Result<bool> {
        let mut tx = self.begin_write("digest").await?;
        let added = insert_digest(&mut tx, delivery).await?;
        tx.commit().await?;
        if added {
            self.settings.wakeups.deliveries_ready();
        }
        Ok(added)
    }

    async fn erase_phone(&self, phone: &Phone) -> Result<Erased> {
        // The writer runs with `secure_delete`, so deleted rows are zeroed in the file.
        let mut conn = self.writer.acquire().await?;
        let erased = erase_in(&mut conn, phone).await?;
        // Older copies of the pages live on in the WAL until a checkpoint: copy the erased
        // pages into the database and empty the WAL. Best effort (a long read may hold it).
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut *conn)
            .await
        {
            warn!(%error, "Could not checkpoint the WAL after an erasure.");
        }
        Ok(erased)
    }
}

/// What an erased number is replaced with in other callbacks' free text.
const ERASED: &str = "[erased]";

/// Records a failed try: due again at `retry_at`, or given up (`failed`) without one. `false`
/// when the delivery no longer exists (purged or erased while it was being sent).
async fn record_failed_in(
    conn: &mut SqliteConnection,
    id: &str,
    status: Option<u16>,
    error: &str,
    retry_at: Option<DateTime<Utc>>,
) -> Result<bool> {
    let query = match retry_at {
        // State untouched: a delivery held meanwhile (410 on a sibling) stays held.
        Some(at) => sqlx::query(
            "UPDATE deliveries SET tries = tries + 1, next_try_at = ?, \
             last_status = ?, last_error = ? WHERE id = ?",
        )
        .bind(ms(at)),
        None => sqlx::query(
            "UPDATE deliveries SET state = 'failed', tries = tries + 1, \
             last_status = ?, last_error = ? WHERE id = ?",
        ),
    };
    let updated = query
        .bind(status)
        .bind(error)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(updated.rows_affected() == 1)
}

/// The endpoint a delivery goes to; `None` when the delivery no longer exists.
async fn delivery_url(conn: &mut SqliteConnection, id: &str) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT url FROM deliveries WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?,
    )
}

/// Records a 410 Gone: the endpoint is disabled and its pending deliveries held. `false` when
/// the delivery no longer exists.
async fn record_gone_in(conn: &mut SqliteConnection, id: &str, now: i64) -> Result<bool> {
    let Some(url) = delivery_url(conn, id).await? else {
        return Ok(false);
    };
    sqlx::query(
        "INSERT INTO endpoints (url, disabled_at) VALUES (?, ?) \
         ON CONFLICT (url) DO UPDATE SET disabled_at = excluded.disabled_at",
    )
    .bind(&url)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE deliveries SET state = 'disabled', tries = tries + 1, \
         last_status = 410, last_error = 'endpoint answered 410 Gone' WHERE id = ?",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?;
    let held = sqlx::query(sql::HOLD_URL)
        .bind(&url)
        .execute(&mut *conn)
        .await?;
    warn!(
        held = held.rows_affected(),
        "Webhook endpoint answered 410 Gone; disabled it and held its pending deliveries."
    );
    Ok(true)
}

/// Deletes every trace of `phone` but its opt-out, in one transaction on `conn`.
async fn erase_in(conn: &mut SqliteConnection, phone: &Phone) -> Result<Erased> {
    use sqlx::Connection as _;
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM callbacks WHERE phone = ?")
        .bind(phone.as_str())
        .fetch_all(&mut *tx)
        .await?;
    let mut erased = Erased::default();
    for chunk in ids.chunks(sql::CHUNK) {
        erased.attempts += delete_where_in(&mut tx, "attempts", "callback_id", chunk).await?;
        erased.deliveries += delete_where_in(&mut tx, "deliveries", "callback_id", chunk).await?;
        erased.event_outbox +=
            delete_where_in(&mut tx, "event_outbox", "callback_id", chunk).await?;
    }
    // Attempts carry the number too; none should be left, but the number must not be.
    erased.attempts += sqlx::query("DELETE FROM attempts WHERE phone = ?")
        .bind(phone.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
    // Another callback's webhook body may name the number (in its context): a full scan,
    // acceptable for a rare request that must leave no trace.
    erased.deliveries += sqlx::query("DELETE FROM deliveries WHERE instr(body, ?) > 0")
        .bind(phone.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
    for chunk in ids.chunks(sql::CHUNK) {
        erased.callbacks += delete_where_in(&mut tx, "callbacks", "id", chunk).await?;
    }
    // Other numbers' callbacks are not ours to delete, but free text they carry (context,
    // customer, call, attempt notes) may name this number: blank it out there.
    for (table, columns) in [
        ("callbacks", &["context", "customer", "call_info"][..]),
        ("attempts", &["note"][..]),
    ] {
        for column in columns {
            erased.redacted += sqlx::query(&format!(
                "UPDATE {table} SET {column} = replace({column}, ?1, ?2) \
                 WHERE instr({column}, ?1) > 0"
            ))
            .bind(phone.as_str())
            .bind(ERASED)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
    }
    // The opt-out stays: erasing it would let the number be called again.
    erased.opt_out_kept =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM opt_outs WHERE phone = ?)")
            .bind(phone.as_str())
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(erased)
}

/// Deletes the rows of `table` whose `column` is one of `values` (at most [`sql::CHUNK`]).
async fn delete_where_in(
    conn: &mut SqliteConnection,
    table: &str,
    column: &str,
    values: &[String],
) -> Result<u64> {
    let sql = format!(
        "DELETE FROM {table} WHERE {column} IN ({})",
        sql::in_list(values.len())
    );
    let mut query = sqlx::query(&sql);
    for value in values {
        query = query.bind(value);
    }
    Ok(query.execute(&mut *conn).await?.rows_affected())
}

/// The queries on hot paths, named so the query-plan test checks the very text that runs.
mod sql {
    use super::{SlaStatus, CALLBACK_COLUMNS, DELIVERY_COLUMNS, OPEN};

    /// At most this many rows per multi-row statement, far below SQLite's bound-variable limit.
    pub const CHUNK: usize = 200;

    /// The keys and fingerprints stored in `n` rows, by `seq`.
    pub fn event_keys_by_seq(n: usize) -> String {
        format!(
            "SELECT source, id, fingerprint FROM inbound_events WHERE seq IN ({})",
            in_list(n)
        )
    }

    /// Up to `EVENT_KEYS_PER_READ` rows from a `seq` on, as one string of "seq hash" pairs
    /// (binds: from, count). Through sqlx a row costs about 1.5 µs, most of a start at a
    /// million keys (2.1 s); one string per 65,536 rows takes about half of that. A row
    /// without a hash (`UNHASHED_EVENT_KEYS`) is left out.
    pub const EVENT_KEYS_FROM: &str = "SELECT group_concat(seq || ' ' || key_hash, ' ') \
         FROM inbound_events WHERE seq >= ?1 AND seq < ?1 + ?2 AND key_hash IS NOT NULL";
    pub const EVENT_KEYS_PER_READ: i64 = 65_536;
    /// The first and last `seq`: one aggregate per subquery, so each is a seek to an end.
    pub const EVENT_SEQ_RANGE: &str = "SELECT (SELECT min(seq) FROM inbound_events), \
         (SELECT max(seq) FROM inbound_events)";
    /// Keys copied by migration 0007, found through the partial index that holds only them.
    pub const UNHASHED_EVENT_KEYS: &str =
        "SELECT seq, source, id FROM inbound_events WHERE key_hash IS NULL";

    /// Which of `n` phones are opted out (binds: now, then the phones).
    pub fn opted_out(n: usize) -> String {
        format!(
            "SELECT phone FROM opt_outs WHERE until > ? AND phone IN ({})",
            in_list(n)
        )
    }

    pub fn record_events(n: usize) -> String {
        format!(
            "INSERT INTO inbound_events (seq, key_hash, source, id, fingerprint, applied_at) \
             VALUES {}",
            placeholders(n, 6)
        )
    }

    /// Lifecycle events into the outbox; rows are numbered in the order given.
    pub fn insert_events(rows: usize) -> String {
        format!(
            "INSERT INTO event_outbox (id, callback_id, type, body, created_at) VALUES {}",
            placeholders(rows, 5)
        )
    }

    /// Callbacks by id: a new id inserts, a known one updates every column but the
    /// identity (id, queue, phone, requested_at), and `closed_at` unless `closing`. SQLite
    /// rewrites the entries of every index whose columns an UPDATE sets, changed or not; left
    /// out, `closed_at` keeps `callbacks_phone_queue_open` (keyed by callers' numbers, so a
    /// random page each time) untouched by all the updates of open callbacks. Only closing
    /// sets it: a closed callback never opens again.
    pub fn upsert_callbacks(rows: usize, closing: bool) -> String {
        let closed_at = if closing {
            "closed_at = excluded.closed_at, "
        } else {
            ""
        };
        format!(
            "INSERT INTO callbacks ({}) VALUES {} \
             ON CONFLICT (id) DO UPDATE SET \
               priority = excluded.priority, state = excluded.state, sla = excluded.sla, \
               customer = excluded.customer, agent_id = excluded.agent_id, \
               context = excluded.context, call_info = excluded.call_info, \
               window_not_before = excluded.window_not_before, \
               window_not_after = excluded.window_not_after, due_at = excluded.due_at, \
               deadline = excluded.deadline, requests = excluded.requests, \
               attempts = excluded.attempts, max_attempts = excluded.max_attempts, \
               claimed_by = excluded.claimed_by, claimed_at = excluded.claimed_at, \
               first_attempt_at = excluded.first_attempt_at, \
               last_outcome = excluded.last_outcome, \
               at_risk_notified = excluded.at_risk_notified, \
               cancel_reason = excluded.cancel_reason, {closed_at}\
               updated_at = excluded.updated_at, next_fire_at = excluded.next_fire_at, \
               no_answer_attempts = excluded.no_answer_attempts, \
               busy_attempts = excluded.busy_attempts, \
               voicemail_attempts = excluded.voicemail_attempts, \
               offered_to_queue_at = excluded.offered_to_queue_at",
            super::CALLBACK_COLUMNS,
            placeholders(rows, 31)
        )
    }

    /// Deliveries (binds per row: id, callback_id, queue, notice, url, body, state, tries,
    /// next_try_at, last_status, last_error, created_at, delivered_at).
    pub fn insert_deliveries(rows: usize) -> String {
        format!(
            "INSERT INTO deliveries ({}) VALUES {}",
            super::DELIVERY_COLUMNS,
            placeholders(rows, 13)
        )
    }

    /// Marks deliveries delivered (binds: delivered_at, then id and status per row); a row
    /// whose delivery is gone (erased meanwhile) matches nothing.
    pub fn record_delivered(rows: usize) -> String {
        format!(
            "UPDATE deliveries SET state = 'delivered', tries = tries + 1, \
               last_status = v.column2, last_error = NULL, delivered_at = ? \
             FROM (VALUES {}) AS v WHERE deliveries.id = v.column1",
            placeholders(rows, 2)
        )
    }

    /// `(?, ?), (?, ?)` for `rows` rows of `columns` values.
    fn placeholders(rows: usize, columns: usize) -> String {
        let row = format!("({})", in_list(columns));
        vec![row; rows].join(", ")
    }

    /// `n` comma-separated placeholders, for an `IN (…)` list.
    pub fn in_list(n: usize) -> String {
        vec!["?"; n].join(", ")
    }
    /// Fire times after a time (binds: after, until, limit), from the timer's index.
    pub const FIRE_TIMES_AFTER_TIME: &str = "SELECT next_fire_at, id FROM callbacks \
         WHERE next_fire_at IS NOT NULL AND next_fire_at > ? AND next_fire_at <= ? \
         ORDER BY next_fire_at, id LIMIT ?";
    /// Fire times after a time and id (binds: after, id, until, limit).
    pub const FIRE_TIMES_AFTER_KEY: &str = "SELECT next_fire_at, id FROM callbacks \
         WHERE next_fire_at IS NOT NULL AND (next_fire_at, id) > (?, ?) AND next_fire_at <= ? \
         ORDER BY next_fire_at, id LIMIT ?";
    /// Binds: phone, since (exclusive).
    pub const PHONE_ATTEMPTS: &str = "SELECT at FROM attempts WHERE phone = ? AND at > ?";
    pub const NEXT_DELIVERY_AT: &str =
        "SELECT MIN(next_try_at) FROM deliveries WHERE state = 'pending'";
    /// Binds: after seq, limit. (A rowid range: only the first `limit` rows after it are read.)
    pub const PENDING_EVENTS: &str =
        "SELECT seq, id, type, body FROM event_outbox WHERE seq > ? ORDER BY seq LIMIT ?";
    /// Closed callbacks that closed before a moment, oldest first (binds: before, limit).
    /// Only closed callbacks have `closed_at`; the state test is a safety net, written `+state`
    /// so the planner walks `callbacks_closed_at` instead of the state index.
    pub const CLOSED_BEFORE: &str = "SELECT id FROM callbacks \
         WHERE closed_at < ? AND +state IN ('completed', 'failed', 'cancelled', 'expired') \
         ORDER BY closed_at, id LIMIT ?";
    /// Binds: before, limit.
    /// Returns what was removed, so the keys in memory follow.
    pub const PURGE_INBOUND_EVENTS: &str = "DELETE FROM inbound_events WHERE seq IN \
         (SELECT seq FROM inbound_events WHERE applied_at < ? LIMIT ?) \
         RETURNING seq, key_hash, source, id";
    /// Endpoints disabled by a 410, until a replay (a handful at most).
    pub const DISABLED_URLS: &str = "SELECT url FROM endpoints WHERE disabled_at IS NOT NULL";
    pub const HOLD_URL: &str =
        "UPDATE deliveries SET state = 'disabled' WHERE url = ? AND state = 'pending'";
    /// An SLA digest (no callback), held when its endpoint is disabled; a stored id wins.
    /// Binds: id, queue, notice, url, body, url, state, tries, next_try_at, created_at.
    pub const INSERT_DIGEST: &str = "INSERT INTO deliveries (id, callback_id, queue, notice, \
           url, body, state, tries, next_try_at, created_at) \
         VALUES (?, NULL, ?, ?, ?, ?, \
           CASE WHEN EXISTS (SELECT 1 FROM endpoints WHERE url = ? AND disabled_at IS NOT NULL) \
                THEN 'disabled' ELSE ? END, \
           ?, ?, ?) \
         ON CONFLICT (id) DO NOTHING";
    /// Digests made before a moment that are not waiting to be sent (binds: before, limit).
    /// Found through `deliveries_callback_id`: one per queue and day, few enough to filter.
    pub const PURGE_DIGESTS: &str = "DELETE FROM deliveries WHERE id IN \
         (SELECT id FROM deliveries \
          WHERE callback_id IS NULL AND created_at < ? AND state <> 'pending' LIMIT ?)";

    /// Open callbacks of `n` phones, in every queue. Written `+state` so the planner looks
    /// the phones up in `callbacks_phone_queue_open`: with a long list it would otherwise walk
    /// every open callback through `callbacks_state_id`, a cost that grows with the store.
    pub fn open_for_phones(n: usize) -> String {
        format!(
            "SELECT {CALLBACK_COLUMNS} FROM callbacks WHERE phone IN ({}) AND +{OPEN}",
            in_list(n)
        )
    }

    /// Open callbacks of a phone, in one queue when `by_queue` (binds: phone[, queue]).
    pub fn open_for_phone(by_queue: bool) -> String {
        let queue = if by_queue { " AND queue = ?" } else { "" };
        format!("SELECT {CALLBACK_COLUMNS} FROM callbacks WHERE phone = ?{queue} AND {OPEN}")
    }

    /// Binds, in order: queue, state, cursor (each when present), limit.
    pub fn list(by_queue: bool, by_state: bool, after_cursor: bool) -> String {
        let mut sql = format!("SELECT {CALLBACK_COLUMNS} FROM callbacks WHERE 1 = 1");
        if by_queue {
            sql.push_str(" AND queue = ?");
        }
        if by_state {
            sql.push_str(" AND state = ?");
        }
        if after_cursor {
            sql.push_str(" AND id > ?");
        }
        sql.push_str(" ORDER BY id LIMIT ?");
        sql
    }

    /// Ready deliveries' ids, earliest first (binds: now, limit); read from the index alone.
    pub const READY_DELIVERY_IDS: &str = "SELECT id FROM deliveries \
         WHERE state = 'pending' AND next_try_at <= ? ORDER BY next_try_at, id LIMIT ?";

    /// The rows of `n` callbacks by id.
    pub fn callbacks_by_id(n: usize) -> String {
        format!(
            "SELECT {CALLBACK_COLUMNS} FROM callbacks WHERE id IN ({})",
            in_list(n)
        )
    }

    /// The rows of `n` deliveries that are still pending and ready (binds: now, the ids).
    /// Written `+state` so the ids are looked up by key: with a long list the planner would
    /// otherwise walk every ready delivery (a whole burst) through the state index, per chunk.
    pub fn ready_deliveries_by_id(n: usize) -> String {
        format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries \
             WHERE +state = 'pending' AND next_try_at <= ? AND id IN ({})",
            in_list(n)
        )
    }

    /// Callbacks per queue and state: a walk of the covering index (queue, state, id), the one
    /// gauge query that grows with the store.
    pub const COUNT_BY_STATE: &str =
        "SELECT queue, state, count(*) AS n FROM callbacks GROUP BY queue, state";

    /// Lifecycle events not yet confirmed by the broker.
    pub const OUTBOX_BACKLOG: &str = "SELECT count(*) FROM event_outbox";

    /// When the oldest open callback of queue `?` without an attempt was requested: one seek
    /// in the partial index of those.
    pub fn oldest_untried() -> String {
        format!(
            "SELECT min(requested_at) FROM callbacks \
             WHERE queue = ? AND {OPEN} AND first_attempt_at IS NULL"
        )
    }

    /// Open callbacks per queue warned at risk and not tried yet, from the partial index that
    /// holds only those (named, because the planner would rather walk every open callback).
    pub fn at_risk() -> String {
        format!(
            "SELECT queue, count(*) AS n FROM callbacks INDEXED BY callbacks_at_risk \
             WHERE {OPEN} AND at_risk_notified = 1 AND sla = 'pending' \
             AND first_attempt_at IS NULL GROUP BY queue"
        )
    }

    /// Queue `?1`'s callbacks requested in `[?2, ?3)`, one count per status of
    /// `SlaStatus::ALL`, in that order: a range of the index (queue, requested_at, sla), with
    /// no sort (a GROUP BY would sort the day's rows).
    pub fn sla_counts() -> String {
        let counts: Vec<String> = SlaStatus::ALL
            .iter()
            .map(|status| format!("count(*) FILTER (WHERE sla = '{}')", status.as_str()))
            .collect();
        format!(
            "SELECT {} FROM callbacks WHERE queue = ?1 AND requested_at >= ?2 AND requested_at < ?3",
            counts.join(", ")
        )
    }

    /// `?1` is the queue (ignored when `by_queue` is false), `?2`/`?3` the period.
    pub fn sla_rows(by_queue: bool) -> &'static str {
        if by_queue {
            "SELECT requests, sla, requested_at, deadline, first_attempt_at, attempts FROM callbacks \
             WHERE queue = ?1 AND requested_at >= ?2 AND requested_at < ?3"
        } else {
            "SELECT requests, sla, requested_at, deadline, first_attempt_at, attempts FROM callbacks \
             WHERE ?1 IS NULL AND requested_at >= ?2 AND requested_at < ?3"
        }
    }

    /// Newest first: ids start with their creation time (`msg_<uuidv7>`; a digest's UUIDv8
    /// starts with the end of its day), so descending id is descending creation time.
    pub fn list_deliveries(by_state: bool) -> String {
        let filter = if by_state { "WHERE state = ?" } else { "" };
        format!("SELECT {DELIVERY_COLUMNS} FROM deliveries {filter} ORDER BY id DESC LIMIT ?")
    }
}

type EventKeyText = (String, String);

/// Stored fingerprints by key, for the batch's key `hashes`. Only rows the map points to are
/// read; the caller matches each event by its own key, so a row under a shared hash is harmless.
async fn known_fingerprints(
    conn: &mut SqliteConnection,
    keys: &Mutex<EventKeys>,
    hashes: &[i64],
) -> Result<HashMap<EventKeyText, String>> {
    let seqs: Vec<i64> = {
        let keys = lock(keys);
        hashes
            .iter()
            .flat_map(|&hash| keys.candidates(hash))
            .collect::<HashSet<i64>>()
            .into_iter()
            .collect()
    };
    let mut known = HashMap::new();
    for chunk in seqs.chunks(sql::CHUNK) {
        let sql = sql::event_keys_by_seq(chunk.len());
        let mut query = sqlx::query_as::<_, (String, String, String)>(&sql);
        for seq in chunk {
            query = query.bind(seq);
        }
        for (source, id, fingerprint) in query.fetch_all(&mut *conn).await? {
            known.insert((source, id), fingerprint);
        }
    }
    Ok(known)
}

/// Stores the keys of applied events, in arrival order, and adds them to the map before
/// the transaction commits: the map may then hold keys the table does not, never the
/// reverse (a key missing from the map would let its event apply twice).
async fn record_events(
    conn: &mut SqliteConnection,
    keys: &Mutex<EventKeys>,
    events: &[(&Inbound, i64)],
    now: DateTime<Utc>,
) -> Result {
    let first = lock(keys).reserve(events.len());
    for (chunk_index, chunk) in events.chunks(sql::CHUNK).enumerate() {
        let offset = chunk_index * sql::CHUNK;
        let sql = sql::record_events(chunk.len());
        let mut query = sqlx::query(&sql);
        for (i, (event, hash)) in chunk.iter().enumerate() {
            query = query
                .bind(first + (offset + i) as i64)
                .bind(hash)
                .bind(&event.key.source)
                .bind(&event.key.id)
                .bind(&event.fingerprint)
                .bind(ms(now));
        }
        query.execute(&mut *conn).await?;
    }
    let mut keys = lock(keys);
    for (i, (_, hash)) in events.iter().enumerate() {
        keys.insert(*hash, first + i as i64);
    }
    report_key_count(&keys);
    Ok(())
}

/// The keys in `cell`, loaded once by whoever asks first (the start-up task or intake).
async fn loaded_keys<'a>(
    cell: &'a tokio::sync::OnceCell<Mutex<EventKeys>>,
    reader: &SqlitePool,
) -> Result<&'a Mutex<EventKeys>> {
    cell.get_or_try_init(|| load_event_keys(reader)).await
}

/// Reads every stored key's hash and `seq` into memory, a range of rows at a time, on a reader
/// connection: no write waits behind it.
async fn load_event_keys(reader: &SqlitePool) -> Result<Mutex<EventKeys>> {
    use futures::TryStreamExt as _;
    let started = std::time::Instant::now();
    let mut conn = reader.acquire().await?;
    let (first, last): (Option<i64>, Option<i64>) = sqlx::query_as(sql::EVENT_SEQ_RANGE)
        .fetch_one(&mut *conn)
        .await?;
    let (first, last) = (first.unwrap_or(1), last.unwrap_or(0));
    let mut keys = EventKeys::new((last - first + 1).max(0) as usize, last + 1);
    let corrupt = || StoreError::Corrupt("inbound_events: a key hash is not a number".into());
    for from in (first..=last).step_by(sql::EVENT_KEYS_PER_READ as usize) {
        let pairs: Option<String> = sqlx::query_scalar(sql::EVENT_KEYS_FROM)
            .bind(from)
            .bind(sql::EVENT_KEYS_PER_READ)
            .fetch_one(&mut *conn)
            .await?;
        let mut numbers = pairs
            .as_deref()
            .unwrap_or("")
            .split(' ')
            .filter(|n| !n.is_empty());
        while let Some(seq) = numbers.next() {
            let hash = numbers.next().ok_or_else(corrupt)?;
            match (seq.parse(), hash.parse()) {
                (Ok(seq), Ok(hash)) => keys.insert(hash, seq),
                _ => return Err(corrupt()),
            }
        }
    }
    // Keys copied by migration 0007 have no stored hash until retention removes them: hashed
    // here at each start instead of rewritten at the upgrade.
    let mut copied =
        sqlx::query_as::<_, (i64, String, String)>(sql::UNHASHED_EVENT_KEYS).fetch(&mut *conn);
    while let Some((seq, source, id)) = copied.try_next().await? {
        keys.insert(key_hash(&source, &id), seq);
    }
    info!(
        keys = keys.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "Idempotency keys loaded."
    );
    report_key_count(&keys);
    Ok(Mutex::new(keys))
}

/// Memory grows with the keys kept (about 50 bytes each): the gauge lets ops size for it.
fn report_key_count(keys: &EventKeys) {
    metrics::gauge!("callkeeper_idempotency_keys").set(keys.len() as f64);
}

fn lock(keys: &Mutex<EventKeys>) -> MutexGuard<'_, EventKeys> {
    // Each change to the map is made whole or not at all, so a panic elsewhere leaves it
    // usable.
    keys.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The distinct phones that `events` request a callback for.
fn requested_phones(events: &[Inbound]) -> Vec<&str> {
    let phones: HashSet<&str> = events
        .iter()
        .filter_map(|event| match &event.command {
            Command::Request(request) => Some(request.phone.as_str()),
            _ => None,
        })
        .collect();
    phones.into_iter().collect()
}

/// The batch's requesting phones that are opted out at `now`.
async fn opted_out_phones(
    conn: &mut SqliteConnection,
    batch: &[Inbound],
    now: DateTime<Utc>,
) -> Result<HashSet<String>> {
    let phones = requested_phones(batch);
    let mut opted_out = HashSet::new();
    for chunk in phones.chunks(sql::CHUNK) {
        let sql = sql::opted_out(chunk.len());
        let mut query = sqlx::query_scalar::<_, String>(&sql).bind(ms(now));
        for phone in chunk {
            query = query.bind(*phone);
        }
        opted_out.extend(query.fetch_all(&mut *conn).await?);
    }
    Ok(opted_out)
}

fn rejected(reason: &'static str, detail: String) -> InboundOutcome {
    InboundOutcome::Rejected(Rejection::new(reason, detail))
}

fn unknown_callback(id: CallbackId) -> InboundOutcome {
    rejected("unknown_callback", format!("no callback with id {id}"))
}

fn clamp_limit(limit: u32) -> u32 {
    match limit {
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_LIMIT),
    }
}

// ---- time: INTEGER unix milliseconds ----

fn ms(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn from_ms(value: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(value)
        .ok_or_else(|| StoreError::Corrupt(format!("time {value} ms is out of range")))
}

/// Cuts to the stored precision, so what a write returns equals what a later read gives.
fn truncate(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms(at)).unwrap_or(at)
}

fn truncate_callback(c: &mut Callback) {
    for at in [
        &mut c.requested_at,
        &mut c.due_at,
        &mut c.deadline,
        &mut c.updated_at,
    ] {
        *at = truncate(*at);
    }
    for at in [
        &mut c.claimed_at,
        &mut c.first_attempt_at,
        &mut c.offered_to_queue_at,
        &mut c.closed_at,
    ]
    .into_iter()
    .flatten()
    {
        *at = truncate(*at);
    }
    if let Some(w) = &mut c.window {
        w.not_before = truncate(w.not_before);
        w.not_after = truncate(w.not_after);
    }
}

// ---- rows ----

async fn load_callback(
    conn: &mut SqliteConnection,
    id: CallbackId,
) -> Result<Option<(Callback, Option<DateTime<Utc>>)>> {
    let row = sqlx::query(&format!(
        "SELECT {CALLBACK_COLUMNS} FROM callbacks WHERE id = ?"
    ))
    .bind(id.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(callback_from_row).transpose()
}

/// The callbacks among `ids` that exist, each with its stored fire time.
async fn load_callbacks(
    conn: &mut SqliteConnection,
    ids: &[CallbackId],
) -> Result<HashMap<CallbackId, (Callback, Option<DateTime<Utc>>)>> {
    let mut loaded = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(sql::CHUNK) {
        let statement = sql::callbacks_by_id(chunk.len());
        let mut query = sqlx::query(&statement);
        for id in chunk {
            query = query.bind(id.to_string());
        }
        for row in query.fetch_all(&mut *conn).await? {
            let (callback, next) = callback_from_row(&row)?;
            loaded.insert(callback.id, (callback, next));
        }
    }
    Ok(loaded)
}

/// Open callbacks by phone and queue, as a batch of requests sees them.
type OpenCallbacks = HashMap<(Phone, QueueName), (Callback, Option<DateTime<Utc>>)>;

/// The open callbacks of the phones that `events` request a callback for.
async fn open_callbacks(conn: &mut SqliteConnection, events: &[Inbound]) -> Result<OpenCallbacks> {
    let phones = requested_phones(events);
    let mut open = HashMap::new();
    for chunk in phones.chunks(sql::CHUNK) {
        let statement = sql::open_for_phones(chunk.len());
        let mut query = sqlx::query(&statement);
        for phone in chunk {
            query = query.bind(*phone);
        }
        for row in query.fetch_all(&mut *conn).await? {
            let (callback, next) = callback_from_row(&row)?;
            open.insert(
                (callback.phone.clone(), callback.queue.clone()),
                (callback, next),
            );
        }
    }
    Ok(open)
}

/// When `phone` was called after `since`, over all its callbacks in every queue.
async fn phone_attempts(
    conn: &mut SqliteConnection,
    phone: &Phone,
    since: DateTime<Utc>,
) -> Result<Vec<DateTime<Utc>>> {
    let times: Vec<i64> = sqlx::query_scalar(sql::PHONE_ATTEMPTS)
        .bind(phone.as_str())
        .bind(ms(since))
        .fetch_all(&mut *conn)
        .await?;
    times.into_iter().map(from_ms).collect()
}

async fn load_queue(conn: &mut SqliteConnection, id: CallbackId) -> Result<Option<QueueName>> {
    let queue: Option<String> = sqlx::query_scalar("SELECT queue FROM callbacks WHERE id = ?")
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    queue.map(|q| parse_queue(&q)).transpose()
}

/// Inserts or updates callbacks with their fire times, many rows per statement, in order: a
/// callback that closes must be written before a new open one for its phone and queue, or the
/// unique index refuses the new one. So rows go in runs of closing or not, never regrouped.
async fn upsert_callbacks(
    conn: &mut SqliteConnection,
    rows: &[(&Callback, Option<DateTime<Utc>>)],
) -> Result {
    let closed = |row: &(&Callback, _)| row.0.closed_at.is_some();
    let runs = rows.chunk_by(|a, b| closed(a) == closed(b));
    for chunk in runs.flat_map(|run| run.chunks(sql::CHUNK)) {
        let statement = sql::upsert_callbacks(chunk.len(), closed(&chunk[0]));
        let mut query = sqlx::query(&statement);
        for (c, next_fire_at) in chunk {
            query = query
                .bind(c.id.to_string())
                .bind(c.queue.as_str())
                .bind(c.phone.as_str())
                .bind(c.priority.as_str())
                .bind(c.state.as_str())
                .bind(c.sla.as_str())
                .bind(c.customer.as_ref().map(to_json).transpose()?)
                .bind(&c.agent_id)
                .bind(c.context.as_ref().map(to_json).transpose()?)
                .bind(c.call.as_ref().map(to_json).transpose()?)
                .bind(c.window.map(|w| ms(w.not_before)))
                .bind(c.window.map(|w| ms(w.not_after)))
                .bind(ms(c.requested_at))
                .bind(ms(c.due_at))
                .bind(ms(c.deadline))
                .bind(c.requests)
                .bind(c.attempts)
                .bind(c.max_attempts)
                .bind(&c.claimed_by)
                .bind(c.claimed_at.map(ms))
                .bind(c.first_attempt_at.map(ms))
                .bind(c.last_outcome.map(Outcome::as_str))
                .bind(c.at_risk_notified)
                .bind(c.cancel_reason.map(CancelReason::as_str))
                .bind(c.closed_at.map(ms))
                .bind(ms(c.updated_at))
                .bind(next_fire_at.map(ms))
                .bind(c.no_answer_attempts)
                .bind(c.busy_attempts)
                .bind(c.voicemail_attempts)
                .bind(c.offered_to_queue_at.map(ms));
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Writes lifecycle events to the outbox, in order (`seq` grows with each row), many rows per
/// statement.
async fn insert_events(conn: &mut SqliteConnection, events: &[LifecycleEvent]) -> Result {
    for chunk in events.chunks(sql::CHUNK) {
        let statement = sql::insert_events(chunk.len());
        let mut query = sqlx::query(&statement);
        for event in chunk {
            let rendered = crate::events::cloudevent(event);
            query = query
                .bind(rendered.id)
                .bind(event.callback_id.to_string())
                .bind(rendered.event_type)
                .bind(rendered.body)
                .bind(ms(event.at));
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Inserts deliveries, many rows per statement; those to a disabled endpoint are held: marked
/// `disabled` here, so the rows in hand say what was stored.
async fn insert_deliveries(conn: &mut SqliteConnection, deliveries: &mut [Delivery]) -> Result {
    if deliveries.is_empty() {
        return Ok(());
    }
    let disabled: HashSet<String> = sqlx::query_scalar(sql::DISABLED_URLS)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect();
    for d in deliveries.iter_mut().filter(|d| disabled.contains(&d.url)) {
        d.state = DeliveryState::Disabled;
    }
    for chunk in deliveries.chunks(sql::CHUNK) {
        let statement = sql::insert_deliveries(chunk.len());
        let mut query = sqlx::query(&statement);
        for d in chunk {
            query = query
                .bind(&d.id)
                .bind(d.callback_id.map(|id| id.to_string()))
                .bind(d.queue.as_str())
                .bind(d.notice.as_str())
                .bind(&d.url)
                .bind(&d.body)
                .bind(d.state.as_str())
                .bind(d.tries)
                .bind(ms(d.next_try_at))
                .bind(d.last_status)
                .bind(&d.last_error)
                .bind(ms(d.created_at))
                .bind(d.delivered_at.map(ms));
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Inserts an SLA digest like [`insert_deliveries`] does, except that a digest whose id is
/// stored already is left alone: its id names the queue and day, so this makes it once.
/// Returns whether it was inserted.
async fn insert_digest(conn: &mut SqliteConnection, d: &Delivery) -> Result<bool> {
    let inserted = sqlx::query(sql::INSERT_DIGEST)
        .bind(&d.id)
        .bind(d.queue.as_str())
        .bind(d.notice.as_str())
        .bind(&d.url)
        .bind(&d.body)
        .bind(&d.url)
        .bind(d.state.as_str())
        .bind(d.tries)
        .bind(ms(d.next_try_at))
        .bind(ms(d.created_at))
        .execute(&mut *conn)
        .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Removes at most `limit` digests that are no longer pending and were made more than
/// [`crate::digest::CATCH_UP`] before `before`. Digests belong to no callback, so the callback
/// purge never reaches them. They are kept that day longer because the digest task, starting,
/// looks back that far for a digest it may have missed and finds it by its id: removed any
/// sooner (`closed_after` may be as short as an hour), it would be made and sent again.
async fn purge_digests(conn: &mut SqliteConnection, before: i64, limit: u32) -> Result<u64> {
    let before = before.saturating_sub(crate::digest::CATCH_UP.num_milliseconds());
    let purged = sqlx::query(sql::PURGE_DIGESTS)
        .bind(before)
        .bind(limit)
        .execute(&mut *conn)
        .await?;
    Ok(purged.rows_affected())
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(format!("JSON encode: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(
    column: &str,
    raw: Option<String>,
) -> Result<Option<T>> {
    raw.map(|raw| {
        serde_json::from_str(&raw)
            .map_err(|e| StoreError::Corrupt(format!("callbacks.{column}: {e}")))
    })
    .transpose()
}

fn parse_id(raw: &str) -> Result<CallbackId> {
    raw.parse()
        .map_err(|_| StoreError::Corrupt(format!("'{raw}' is not a callback id")))
}

fn parse_queue(raw: &str) -> Result<QueueName> {
    QueueName::parse(raw).map_err(|_| StoreError::Corrupt(format!("'{raw}' is not a queue name")))
}

fn parse_word<T>(column: &str, raw: &str, parse: fn(&str) -> Option<T>) -> Result<T> {
    parse(raw).ok_or_else(|| StoreError::Corrupt(format!("{column}: unknown value '{raw}'")))
}

fn opt_word<T>(
    column: &str,
    raw: Option<String>,
    parse: fn(&str) -> Option<T>,
) -> Result<Option<T>> {
    raw.map(|raw| parse_word(column, &raw, parse)).transpose()
}

fn opt_time(raw: Option<i64>) -> Result<Option<DateTime<Utc>>> {
    raw.map(from_ms).transpose()
}

fn callback_from_row(row: &SqliteRow) -> Result<(Callback, Option<DateTime<Utc>>)> {
    let phone: String = row.try_get("phone")?;
    // Never echo the number itself into an error text.
    let phone = Phone::from_stored(&phone)
        .map_err(|_| StoreError::Corrupt("callbacks.phone: not an E.164 number".into()))?;
    let window = match (
        row.try_get::<Option<i64>, _>("window_not_before")?,
        row.try_get::<Option<i64>, _>("window_not_after")?,
    ) {
        (Some(from), Some(to)) => Some(Window {
            not_before: from_ms(from)?,
            not_after: from_ms(to)?,
        }),
        _ => None,
    };
    let callback = Callback {
        id: parse_id(&row.try_get::<String, _>("id")?)?,
        queue: parse_queue(&row.try_get::<String, _>("queue")?)?,
        phone,
        priority: parse_word(
            "priority",
            &row.try_get::<String, _>("priority")?,
            Priority::parse,
        )?,
        state: parse_word("state", &row.try_get::<String, _>("state")?, State::parse)?,
        sla: parse_word("sla", &row.try_get::<String, _>("sla")?, SlaStatus::parse)?,
        customer: from_json::<Customer>("customer", row.try_get("customer")?)?,
        agent_id: row.try_get("agent_id")?,
        context: from_json::<serde_json::Value>("context", row.try_get("context")?)?,
        call: from_json::<CallInfo>("call_info", row.try_get("call_info")?)?,
        window,
        requested_at: from_ms(row.try_get("requested_at")?)?,
        due_at: from_ms(row.try_get("due_at")?)?,
        deadline: from_ms(row.try_get("deadline")?)?,
        requests: row.try_get("requests")?,
        attempts: row.try_get("attempts")?,
        max_attempts: row.try_get("max_attempts")?,
        no_answer_attempts: row.try_get("no_answer_attempts")?,
        busy_attempts: row.try_get("busy_attempts")?,
        voicemail_attempts: row.try_get("voicemail_attempts")?,
        claimed_by: row.try_get("claimed_by")?,
        claimed_at: opt_time(row.try_get("claimed_at")?)?,
        first_attempt_at: opt_time(row.try_get("first_attempt_at")?)?,
        last_outcome: opt_word("last_outcome", row.try_get("last_outcome")?, Outcome::parse)?,
        at_risk_notified: row.try_get("at_risk_notified")?,
        offered_to_queue_at: opt_time(row.try_get("offered_to_queue_at")?)?,
        cancel_reason: opt_word(
            "cancel_reason",
            row.try_get("cancel_reason")?,
            CancelReason::parse,
        )?,
        closed_at: opt_time(row.try_get("closed_at")?)?,
        updated_at: from_ms(row.try_get("updated_at")?)?,
    };
    let next_fire_at = opt_time(row.try_get("next_fire_at")?)?;
    Ok((callback, next_fire_at))
}

fn attempt_from_row(row: &SqliteRow) -> Result<Attempt> {
    Ok(Attempt {
        callback_id: parse_id(&row.try_get::<String, _>("callback_id")?)?,
        number: row.try_get("number")?,
        agent_id: row.try_get("agent_id")?,
        outcome: parse_word(
            "outcome",
            &row.try_get::<String, _>("outcome")?,
            Outcome::parse,
        )?,
        note: row.try_get("note")?,
        at: from_ms(row.try_get("at")?)?,
    })
}

fn delivery_from_row(row: &SqliteRow) -> Result<Delivery> {
    Ok(Delivery {
        id: row.try_get("id")?,
        callback_id: row
            .try_get::<Option<String>, _>("callback_id")?
            .as_deref()
            .map(parse_id)
            .transpose()?,
        queue: parse_queue(&row.try_get::<String, _>("queue")?)?,
        notice: parse_word(
            "notice",
            &row.try_get::<String, _>("notice")?,
            Notice::parse,
        )?,
        url: row.try_get("url")?,
        body: row.try_get("body")?,
        state: parse_word(
            "state",
            &row.try_get::<String, _>("state")?,
            DeliveryState::parse,
        )?,
        tries: row.try_get("tries")?,
        next_try_at: from_ms(row.try_get("next_try_at")?)?,
        last_status: row.try_get("last_status")?,
        last_error: row.try_get("last_error")?,
        created_at: from_ms(row.try_get("created_at")?)?,
        delivered_at: opt_time(row.try_get("delivered_at")?)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The steps of SQLite's plan for `query`.
    async fn plan_of(pool: &SqlitePool, query: &str) -> Vec<String> {
        let rows = sqlx::query(&format!("EXPLAIN QUERY PLAN {query}"))
            .fetch_all(pool)
            .await
            .unwrap();
        rows.iter().map(|r| r.get::<String, _>("detail")).collect()
    }

    /// The store itself refuses a second open callback for a phone and queue (intake merges
    /// duplicates before it gets there; this is the net under it), while closed ones repeat.
    #[tokio::test]
    async fn one_open_callback_per_phone_and_queue() {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        MIGRATOR.run(&pool).await.unwrap();
        // As the lifecycle writes them: `closed_at` is set when, and only when, it closes.
        let insert = |id: &'static str, queue: &'static str, state: &'static str| {
            let closed_at = (!State::parse(state).unwrap().is_open()).then_some(1);
            sqlx::query(
                "INSERT INTO callbacks (id, queue, phone, priority, state, sla, requested_at, \
                 due_at, deadline, requests, attempts, max_attempts, at_risk_notified, \
                 updated_at, closed_at) VALUES (?, ?, '+31612345678', 'normal', ?, 'pending', \
                 0, 0, 0, 1, 0, 3, 0, 0, ?)",
            )
            .bind(id)
            .bind(queue)
            .bind(state)
            .bind(closed_at)
            .execute(&pool)
        };
        for (id, state) in [
            ("c1", "completed"),
            ("c2", "cancelled"),
            ("o1", "scheduled"),
        ] {
            insert(id, "support", state).await.unwrap();
        }
        for state in ["scheduled", "due", "claimed"] {
            let refused = insert("o2", "support", state).await.unwrap_err();
            assert!(
                refused.to_string().contains("UNIQUE constraint failed"),
                "{refused}"
            );
        }
        insert("o3", "sales", "due").await.unwrap();
        insert("c3", "support", "expired").await.unwrap();
        // Closing the open one makes room for the next.
        sqlx::query("UPDATE callbacks SET state = 'completed', closed_at = 2 WHERE id = 'o1'")
            .execute(&pool)
            .await
            .unwrap();
        insert("o4", "support", "scheduled").await.unwrap();
    }

    /// Every hot-path query must be answered from an index: no full table scan, no sort of the
    /// whole result (tables grow to millions of rows).
    #[tokio::test]
    async fn hot_queries_use_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/plans.db", dir.path().display());
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                SqliteConnectOptions::from_str(&url)
                    .unwrap()
                    .create_if_missing(true),
            )
            .await
            .unwrap();
        MIGRATOR.run(&pool).await.unwrap();
        let mut queries: Vec<String> = vec![
            sql::opted_out(3),
            sql::EVENT_SEQ_RANGE.into(),
            sql::UNHASHED_EVENT_KEYS.into(),
            sql::record_events(2),
            sql::FIRE_TIMES_AFTER_TIME.into(),
            sql::FIRE_TIMES_AFTER_KEY.into(),
            sql::NEXT_DELIVERY_AT.into(),
            sql::PHONE_ATTEMPTS.into(),
            sql::HOLD_URL.into(),
            sql::PENDING_EVENTS.into(),
            sql::CLOSED_BEFORE.into(),
            sql::PURGE_INBOUND_EVENTS.into(),
            sql::PURGE_DIGESTS.into(),
            sql::INSERT_DIGEST.into(),
            "SELECT id FROM callbacks WHERE phone = ?".into(),
            "DELETE FROM event_outbox WHERE seq <= ?".into(),
            "DELETE FROM event_outbox WHERE callback_id IN (?, ?)".into(),
            "DELETE FROM attempts WHERE callback_id IN (?, ?)".into(),
            "DELETE FROM deliveries WHERE callback_id IN (?, ?)".into(),
            sql::open_for_phone(false),
            sql::open_for_phone(true),
            sql::open_for_phones(3),
            sql::READY_DELIVERY_IDS.into(),
            sql::ready_deliveries_by_id(3),
            sql::record_delivered(2),
            sql::insert_deliveries(2),
            sql::callbacks_by_id(2),
            sql::list_deliveries(true),
            sql::sla_rows(true).into(),
            sql::sla_rows(false).into(),
            sql::COUNT_BY_STATE.into(),
            sql::at_risk(),
            sql::OUTBOX_BACKLOG.into(),
            format!("SELECT {CALLBACK_COLUMNS} FROM callbacks WHERE id = ?"),
            format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ?"),
        ];
        for by_queue in [false, true] {
            for by_state in [false, true] {
                for cursor in [false, true] {
                    queries.push(sql::list(by_queue, by_state, cursor));
                }
            }
        }
        // A long `IN` list makes the planner weigh its lookups against walking an index on
        // another column; these must stay lookups by their own key at a full chunk.
        let long_lists = [
            (
                sql::open_for_phones(sql::CHUNK),
                "callbacks_phone_queue_open (phone=?)",
            ),
            (
                sql::ready_deliveries_by_id(sql::CHUNK),
                "sqlite_autoindex_deliveries_1 (id=?)",
            ),
            (
                sql::callbacks_by_id(sql::CHUNK),
                "sqlite_autoindex_callbacks_1 (id=?)",
            ),
            (sql::opted_out(sql::CHUNK), "PRIMARY KEY (phone=?)"),
            (
                sql::event_keys_by_seq(sql::CHUNK),
                "INTEGER PRIMARY KEY (rowid=?)",
            ),
            (
                sql::EVENT_KEYS_FROM.into(),
                "INTEGER PRIMARY KEY (rowid>? AND rowid<?)",
            ),
            // The gauges' queries, every 10 s: a seek, and a range read from the index alone.
            (
                sql::oldest_untried(),
                "callbacks_untried_queue_requested_at (queue=?)",
            ),
            // The timer's refills: a range of its index, not a walk from the earliest.
            (
                sql::FIRE_TIMES_AFTER_TIME.into(),
                "callbacks_next_fire_at (next_fire_at>? AND next_fire_at<?)",
            ),
            (
                sql::FIRE_TIMES_AFTER_KEY.into(),
                "callbacks_next_fire_at ((next_fire_at,id)>(?,?) AND next_fire_at<?)",
            ),
            (
                sql::sla_counts(),
                "COVERING INDEX callbacks_queue_requested_at_sla (queue=? AND requested_at>? AND requested_at<?)",
            ),
        ];
        for (query, index) in &long_lists {
            let plan = plan_of(&pool, query).await;
            assert!(
                plan.iter().any(|step| step.contains(index)),
                "expected a lookup through {index}\n  plan: {plan:?}"
            );
        }
        for query in &queries {
            let plan = plan_of(&pool, query).await;
            let tables = [
                "callbacks",
                "deliveries",
                "inbound_events",
                "attempts",
                "endpoints",
                "opt_outs",
                "event_outbox",
            ];
            // Scanning the batch's own VALUES rows is fine; scanning a table is not.
            let bad = plan.iter().any(|step| {
                let scans_table = tables.iter().any(|table| {
                    step.starts_with(&format!("SCAN {table}")) && !step.contains("INDEX")
                });
                scans_table || step.contains("TEMP B-TREE")
            });
            assert!(!bad, "{query}\n  plan: {plan:?}");
        }
    }
}
