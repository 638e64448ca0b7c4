//! The one timer task. It keeps only the near-term window (`horizon`) of fire times in memory,
//! as an ordered set, and asks the store for more as time moves on — so a million callbacks
//! booked for next week cost nothing here, and a restart catches up on everything overdue (their
//! fire times are in the past, so the first load returns them first). Each load reads on from
//! where the window ends, a page at a time, so the timer never reads again what it holds.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::clock::SharedClock;
use crate::domain::CallbackId;
use crate::store::{FireKey, SharedStore};

/// At most this many fire times are loaded per refill: a page small enough that loading it
/// holds up firing for a few milliseconds (one of 20,000 held it up for tens).
const LOAD_LIMIT: u32 = 2_048;
/// The window is extended only while fewer fire times than this are in hand, so memory stays
/// bounded when the horizon holds millions.
const PENDING_LOW: usize = 10_000;
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
    /// the store until a refill reads on from here.
    loaded: FireKey,
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
            loaded: FireKey::START,
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
        if !self.wants_refill(now) {
            return Ok(());
        }
        let until = now + self.horizon;
        let times = self
            .store
            .fire_times_after(self.loaded, until, LOAD_LIMIT)
            .await?;
        self.loaded = match times.last() {
            // A full page: known up to its last row; the next refill reads on from there.
            Some(&(at, id)) if times.len() == LOAD_LIMIT as usize => FireKey { at, id: Some(id) },
            _ => FireKey {
                at: until,
                id: None,
            },
        };
        self.pending.extend(times);
        Ok(())
    }

    /// When the window ends within half a horizon, and there is room in hand.
    fn wants_refill(&self, now: DateTime<Utc>) -> bool {
        now >= self.refill_at() && self.has_room()
    }

    fn has_room(&self) -> bool {
        self.pending.len() < PENDING_LOW
    }

    fn refill_at(&self) -> DateTime<Utc> {
        // Before the first load the window ends at the start of time, where this would overflow.
        (self.loaded.at)
            .checked_sub_signed(self.horizon / 2)
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    fn take_hint(&mut self, (at, id): (DateTime<Utc>, CallbackId)) {
        // Later fire times stay in the store; a refill brings them when they come near.
        if self.loaded.covers(at, id) {
            self.pending.insert((at, id));
        }
    }

    fn sleep_for(&self) -> Duration {
        let now = self.clock.now();
        let first = self.pending.first().map(|&(at, _)| at);
        // A refill that is due but waits for room must not wake the timer: it would spin until
        // the window's callbacks fire.
        let refill_at = self.has_room().then(|| self.refill_at());
        let wake = [first, refill_at]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + MAX_SLEEP);
        (wake - now).to_std().unwrap_or_default().min(MAX_SLEEP)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::TimeZone as _;

    use super::*;
    use crate::clock::{Clock as _, ManualClock};
    use crate::config::Config;
    use crate::schedule::{Rules, Wakeups};
    use crate::store::StoreSettings;

    async fn timer(clock: ManualClock) -> Timer {
        let config = Config::default();
        let (wakeups, receivers) = Wakeups::new();
        let settings = StoreSettings {
            rules: Arc::new(Rules::from_config(&config)),
            public_url: config.http.public_url.clone(),
            opt_out_period: config.intake.opt_out_period,
            wakeups,
        };
        let store = crate::store::open("sqlite::memory:", settings)
            .await
            .unwrap();
        Timer::new(
            store,
            Arc::new(clock),
            Duration::from_secs(120),
            receivers.fire,
        )
    }

    /// A full window of callbacks due in a while, with its refill due: the refill waits for
    /// room, so the timer sleeps until the first is due instead of waking at once, forever.
    #[tokio::test]
    async fn a_refill_waiting_for_room_does_not_wake_the_timer() {
        let start = Utc.with_ymd_and_hms(2026, 12, 4, 8, 0, 0).unwrap();
        let clock = ManualClock::new(start);
        let mut timer = timer(clock.clone()).await;
        assert_eq!(timer.step().await, 0, "an empty store: nothing to fire");
        assert_eq!(timer.loaded.at, start + chrono::Duration::seconds(120));
        let due = start + chrono::Duration::seconds(110);
        for _ in 0..PENDING_LOW {
            timer.take_hint((due, CallbackId::new()));
        }
        // Past the refill time, 10 s before the first is due.
        clock.set(start + chrono::Duration::seconds(100));
        assert!(!timer.wants_refill(clock.now()), "no room for a refill");
        assert_eq!(timer.sleep_for(), MAX_SLEEP, "sleeps until due (capped)");
        // With room again, the refill is due at once.
        timer.pending.pop_first();
        assert!(timer.wants_refill(clock.now()));
        assert_eq!(timer.sleep_for(), Duration::ZERO);
    }
}
