//! Retention: on a cron schedule, purges closed callbacks (completed, failed, cancelled,
//! expired) with their attempts, deliveries and outbox events once they are older than
//! `retention.closed_after`, with idempotency keys and ended opt-outs of the same age, and SLA
//! digests a day older than that. Open callbacks are never purged, however old.
//!
//! Erasure of one number on request is the store's [`crate::store::Store::erase_phone`], behind
//! `DELETE /v1/contacts/{phone}`.

use chrono::{DateTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clock::SharedClock;
use crate::config::RetentionConfig;
use crate::store::{self, Purged, SharedStore, Store};

/// Callbacks removed per transaction, so one pass never holds the single writer for long.
pub const PURGE_BATCH: u32 = 500;

/// Removes everything closed before `before`, in batches, until nothing is left (or shutdown).
pub async fn purge_before(
    store: &dyn Store,
    before: DateTime<Utc>,
    shutdown: &CancellationToken,
) -> store::Result<Purged> {
    let mut total = Purged::default();
    loop {
        let purged = store.purge(before, PURGE_BATCH).await?;
        total.add(purged);
        let more = purged.callbacks >= u64::from(PURGE_BATCH)
            || purged.inbound_events >= u64::from(PURGE_BATCH)
            || purged.digests >= u64::from(PURGE_BATCH);
        if !more || shutdown.is_cancelled() {
            return Ok(total);
        }
        // Let waiting writers (intake, timer, API) have the connection between batches.
        tokio::task::yield_now().await;
    }
}

/// The retention task.
pub struct Retention {
    store: SharedStore,
    clock: SharedClock,
    config: RetentionConfig,
}

impl Retention {
    pub fn new(store: SharedStore, clock: SharedClock, config: RetentionConfig) -> Self {
        Self {
            store,
            clock,
            config,
        }
    }

    /// Sleeps until each scheduled time and purges; a failed pass is logged and retried at the
    /// next scheduled time.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let schedule = self
            .config
            .cron()
            .map_err(|e| anyhow::anyhow!("retention.schedule: {e}"))?;
        let keep = TimeDelta::from_std(self.config.closed_after).unwrap_or(TimeDelta::MAX);
        loop {
            let now = self.clock.now();
            let Some(next) = schedule.after(&now).next() else {
                info!("The retention schedule has no further times; retention stops.");
                return Ok(());
            };
            let wait = (next - now).to_std().unwrap_or_default();
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
            let before = self
                .clock
                .now()
                .checked_sub_signed(keep)
                .unwrap_or(DateTime::<Utc>::MIN_UTC);
            match purge_before(self.store.as_ref(), before, &shutdown).await {
                Ok(purged) => {
                    record(&purged);
                    info!(
                        callbacks = purged.callbacks,
                        attempts = purged.attempts,
                        deliveries = purged.deliveries,
                        event_outbox = purged.event_outbox,
                        inbound_events = purged.inbound_events,
                        opt_outs = purged.opt_outs,
                        digests = purged.digests,
                        %before,
                        "Retention purged closed callbacks."
                    );
                }
                Err(error) => {
                    metrics::counter!("callkeeper_store_errors_total", "operation" => "purge")
                        .increment(1);
                    warn!(%error, "Retention purge failed; will try again at the next scheduled time.");
                }
            }
        }
    }
}

/// Counts what a pass removed, per table.
fn record(purged: &Purged) {
    for (table, n) in [
        ("callbacks", purged.callbacks),
        ("attempts", purged.attempts),
        // Digests are rows of `deliveries` too.
        ("deliveries", purged.deliveries + purged.digests),
        ("event_outbox", purged.event_outbox),
        ("inbound_events", purged.inbound_events),
        ("opt_outs", purged.opt_outs),
    ] {
        metrics::counter!("callkeeper_retention_purged_total", "table" => table).increment(n);
    }
}
