//! The one timer task. It keeps only the near-term window (`horizon`) of fire times in memory,
//! as an ordered set, and asks the store for more as time moves on — so a million callbacks
//! booked for next week cost nothing here, and a restart catches up on everything overdue (their
//! fire times are in the past, so the first load returns them first).

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::clock::SharedClock;
use crate::domain::CallbackId;
use crate::store::SharedStore;

/// At most this many fire times are loaded per refill.
const LOAD_LIMIT: u32 = 20_000;
/// Longest sleep, so a manual clock moved by a test (or a wall-clock jump) is noticed soon.
const MAX_SLEEP: Duration = Duration::from_millis(500);
/// Most callbacks stepped in one store transaction: large enough that a burst costs few
/// commits, small enough that the first of a batch is not held back long by the last.
const STEP_BATCH: usize = 512;
/// Least time from the start of one step to the next after a partial batch: the timer's
/// resolution under load. Alternated on-time runs measured 5 ms no later than stepping at once,
/// and with a shorter tail (BENCHMARKS.md).
const TICK: Duration = Duration::from_millis(5);
/// Pause before retrying callbacks whose step failed (store down).
const RETRY_AFTER: chrono::Duration = chrono::Duration::seconds(1);

pub struct Timer {
    store: SharedStore,
    clock: SharedClock,
    horizon: chrono::Duration,
    hints: mpsc::UnboundedReceiver<(DateTime<Utc>, CallbackId)>,
    /// Fire times within the loaded window, earliest first.
    pending: BTreeSet<(DateTime<Utc>, CallbackId)>,
    /// Every fire time up to here is in `pending` (or already fired); later ones live only in
    /// the store until a refill.
    loaded_until: DateTime<Utc>,
}

impl Timer {
    pub fn new(
        store: SharedStore,
        clock: SharedClock,
        horizon: Duration,
        hints: mpsc::UnboundedReceiver<(DateTime<Utc>, CallbackId)>,
    ) -> Self {
        let horizon = chrono::Duration::from_std(horizon).unwrap_or(chrono::Duration::minutes(2));
        Self {
            store,
            clock,
            horizon,
            hints,
            pending: BTreeSet::new(),
            loaded_until: DateTime::UNIX_EPOCH,
        }
    }

    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // When the next step may start: at once, except after a partial batch, when the timer
        // has caught up and waits for the tick, so under load batches grow instead of steps
        // multiplying, each with its commit and the notifier's reads.
        let mut next_step = tokio::time::Instant::now();
        loop {
            let wake = (tokio::time::Instant::now() + self.sleep_for()).max(next_step);
            // Shutdown first: after a full batch the sleep is zero, and a long backlog must not
            // hold up the drain.
            let due = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                Some(hint) = self.hints.recv() => {
                    self.take_hint(hint);
                    false
                }
                _ = tokio::time::sleep_until(wake) => true,
            };
            // Take every hint already queued before stepping again, so a burst costs one pass.
            while let Ok(hint) = self.hints.try_recv() {
                self.take_hint(hint);
            }
            if !due {
                continue;
            }
            let started = tokio::time::Instant::now();
            let stepped = self.step().await;
            next_step = if (1..STEP_BATCH).contains(&stepped) {
                started + TICK
            } else {
                started
            };
        }
    }

    /// Refills the window when it runs short and steps the callbacks due, at most `STEP_BATCH`
    /// of them in one store transaction; returns how many were stepped. The run loop calls
    /// this again at once while more are due, checking for shutdown in between.
    pub async fn step(&mut self) -> usize {
        let now = self.clock.now();
        if let Err(error) = self.refill(now).await {
            warn!(%error, "Could not load fire times; will retry.");
        }
        let mut due = Vec::new();
        while due.len() < STEP_BATCH {
            match self.pending.first() {
                Some(&(at, _)) if at <= now => due.extend(self.pending.pop_first()),
                _ => break,
            }
        }
        if due.is_empty() {
            metrics::gauge!("callkeeper_timer_pending").set(self.pending.len() as f64);
            return 0;
        }
        let ids: Vec<CallbackId> = due.iter().map(|&(_, id)| id).collect();
        match self.store.advance(&ids, now).await {
            Ok(stepped) => {
                for (&(at, id), advanced) in due.iter().zip(stepped) {
                    let lateness = (now - at).to_std().unwrap_or_default();
                    metrics::histogram!("callkeeper_timer_lateness_seconds")
                        .record(lateness.as_secs_f64());
                    match advanced {
                        Some(advanced) => {
                            if let Some(next) = advanced.next_fire_at {
                                self.take_hint((next, id));
                            }
                        }
                        // Erased (right to erasure) while its fire time was in hand.
                        None => {
                            debug!(callback_id = %id, "Callback is gone; dropped from the timer.")
                        }
                    }
                }
            }
            Err(error) => {
                warn!(%error, callbacks = due.len(), "Could not step callbacks; will retry.");
                self.pending
                    .extend(due.iter().map(|&(_, id)| (now + RETRY_AFTER, id)));
            }
        }
        metrics::gauge!("callkeeper_timer_pending").set(self.pending.len() as f64);
        due.len()
    }

    async fn refill(&mut self, now: DateTime<Utc>) -> crate::store::Result {
        let short = now + self.horizon / 2 >= self.loaded_until;
        // With a full window of work in hand, firing comes first: reloading would return the
        // same earliest rows again.
        if !short || self.pending.len() >= LOAD_LIMIT as usize / 2 {
            return Ok(());
        }
        let until = now + self.horizon;
        let times = self.store.fire_times(until, LOAD_LIMIT).await?;
        self.loaded_until = match times.last() {
            // A full page: only what is strictly before its last time is known complete.
            Some(&(last, _)) if times.len() == LOAD_LIMIT as usize => {
                last - chrono::Duration::milliseconds(1)
            }
            _ => until,
        };
        self.pending.extend(times);
        Ok(())
    }

    fn take_hint(&mut self, (at, id): (DateTime<Utc>, CallbackId)) {
        // Later fire times stay in the store; a refill brings them when they come near.
        if at <= self.loaded_until {
            self.pending.insert((at, id));
        }
    }

    fn sleep_for(&self) -> Duration {
        let now = self.clock.now();
        let refill_at = self.loaded_until - self.horizon / 2;
        let wake = self
            .pending
            .first()
            .map_or(refill_at, |&(at, _)| at.min(refill_at));
        (wake - now).to_std().unwrap_or_default().min(MAX_SLEEP)
    }
}
