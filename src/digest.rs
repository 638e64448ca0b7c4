//! The daily SLA digest: on each queue's `sla_digest` cron schedule, evaluated in the queue's
//! time zone, a signed `sla.digest` webhook to the queue's escalation endpoint with yesterday's
//! figures — the same report `GET /v1/sla` gives for that day.
//!
//! Durable, and once per queue and day: the digest is stored as a delivery whose id is made from
//! the queue and the day ([`outbox::digest_id`]), so a second run or a restart stores nothing
//! new; the notifier then sends it like any webhook (signing, retries, 410, replay). A worker
//! that was down at a fire time makes that digest when it starts, if the fire time is at most
//! [`CATCH_UP`] ago.

use std::time::Duration;

use anyhow::Context as _;
use backon::{ExponentialBuilder, Retryable as _};
use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::clock::SharedClock;
use crate::config::Config;
use crate::domain::sla::{LocalDay, SlaReport};
use crate::domain::QueueName;
use crate::notify::outbox;
use crate::store::{self, SharedStore, StoreError};

/// How far back a fire time is still made up for (at start, or after the clock jumped). The
/// store keeps every digest at least this long, so one made already is always recognised.
pub const CATCH_UP: TimeDelta = TimeDelta::hours(24);

/// One queue's digest: when, in which zone, and where to.
#[derive(Debug, Clone)]
struct QueueDigest {
    queue: QueueName,
    zone: Tz,
    url: String,
    schedule: cron::Schedule,
}

/// The digest task.
pub struct SlaDigests {
    store: SharedStore,
    clock: SharedClock,
    queues: Vec<QueueDigest>,
}

impl SlaDigests {
    /// The digests of every queue with `sla_digest` set (`Config::validate` has checked them).
    pub fn new(store: SharedStore, clock: SharedClock, config: &Config) -> anyhow::Result<Self> {
        let mut queues = Vec::new();
        for (name, queue) in &config.queues {
            let Some(schedule) = queue.sla_digest_schedule() else {
                continue;
            };
            let at = format!("queues.{name}");
            queues.push(QueueDigest {
                queue: QueueName::parse(name).with_context(|| at.clone())?,
                zone: queue
                    .timezone
                    .parse()
                    .map_err(|e| anyhow::anyhow!("{at}.timezone: {e}"))?,
                url: queue
                    .escalation_url
                    .clone()
                    .with_context(|| format!("{at}.sla_digest needs escalation_url"))?,
                schedule: schedule.map_err(|e| anyhow::anyhow!("{at}.sla_digest: {e}"))?,
            });
        }
        Ok(Self {
            store,
            clock,
            queues,
        })
    }

    /// Makes each queue's digests on its schedule until shutdown.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let queues = self.queues.iter().map(|q| self.run_queue(q, &shutdown));
        futures::future::join_all(queues).await;
        // A queue's loop also ends when its schedule has no further times: that is no failure,
        // so wait for shutdown like every other task.
        shutdown.cancelled().await;
        Ok(())
    }

    async fn run_queue(&self, digest: &QueueDigest, shutdown: &CancellationToken) {
        let mut last_fired: Option<DateTime<Utc>> = None;
        loop {
            let now = self.clock.now();
            // A fire time passed since the last one handled, at most a day ago: on start, one
            // missed while the worker was down (or after the clock jumped). Usually none.
            let since = last_fired.map_or(now - CATCH_UP, |last| last.max(now - CATCH_UP));
            let fired_at = match latest_fire_time(&digest.schedule, digest.zone, since, now) {
                Some(missed) => missed,
                None => {
                    let Some(next) = next_fire_time(&digest.schedule, digest.zone, since.max(now))
                    else {
                        info!(queue = %digest.queue, "The SLA digest schedule has no further times; no more digests for this queue.");
                        return;
                    };
                    // The fire time decides the day, not the clock read on waking, so a wake a
                    // moment early or late makes the same digest.
                    let wait = (next - now).to_std().unwrap_or_default();
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => next,
                    }
                }
            };
            self.make(digest, fired_at, shutdown).await;
            last_fired = Some(fired_at);
        }
    }

    /// Stores the digest a fire at `fired_at` stands for. Retried while the store is
    /// unreachable, so a passing outage does not lose the day's digest.
    async fn make(
        &self,
        digest: &QueueDigest,
        fired_at: DateTime<Utc>,
        shutdown: &CancellationToken,
    ) {
        let day = LocalDay::before(digest.zone, fired_at);
        let queue = digest.queue.as_str();
        let stored = (|| self.store_digest(digest, &day))
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_secs(1))
                    .with_max_delay(Duration::from_secs(60))
                    .with_jitter()
                    .without_max_times(),
            )
            .when(StoreError::is_transient)
            .notify(|error, retry_in| {
                metrics::counter!("callkeeper_store_errors_total", "operation" => "sla_digest")
                    .increment(1);
                warn!(queue, day = %day.day, %error, ?retry_in, "Could not store the SLA digest; retrying.");
            });
        let stored = tokio::select! {
            _ = shutdown.cancelled() => return,
            stored = stored => stored,
        };
        let outcome = match stored {
            Ok(true) => {
                info!(queue, day = %day.day, "SLA digest stored; it goes out with the webhooks.");
                "created"
            }
            Ok(false) => {
                debug!(queue, day = %day.day, "SLA digest for that day was made already.");
                "already_made"
            }
            Err(error) => {
                error!(queue, day = %day.day, %error, "Could not make the SLA digest.");
                "failed"
            }
        };
        metrics::counter!("callkeeper_sla_digests_total", "queue" => queue.to_owned(), "outcome" => outcome)
            .increment(1);
    }

    /// The day's report, as `GET /v1/sla` computes it, stored as a delivery unless it exists.
    async fn store_digest(&self, digest: &QueueDigest, day: &LocalDay) -> store::Result<bool> {
        let rows = self
            .store
            .sla_rows(Some(&digest.queue), day.from, day.to)
            .await?;
        let report = SlaReport::from_rows(&rows);
        let delivery =
            outbox::sla_digest(&digest.queue, &digest.url, day, &report, self.clock.now());
        self.store.add_sla_digest(&delivery).await
    }
}

/// The latest fire time in `(since, until]`, in `zone`'s local time.
pub fn latest_fire_time(
    schedule: &cron::Schedule,
    zone: Tz,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    schedule
        .after(&since.with_timezone(&zone))
        .map(|at| at.with_timezone(&Utc))
        .take_while(|at| *at <= until)
        .last()
}

/// The first fire time after `after`, in `zone`'s local time.
pub fn next_fire_time(
    schedule: &cron::Schedule,
    zone: Tz,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    schedule
        .after(&after.with_timezone(&zone))
        .next()
        .map(|at| at.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use chrono::TimeZone;
    use chrono_tz::Europe::Amsterdam;

    use super::*;

    fn utc(d: u32, h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2030, 3, d, h, m, s).unwrap()
    }

    #[test]
    fn fire_times_are_read_in_the_queue_zone() {
        let daily = cron::Schedule::from_str("0 0 7 * * *").unwrap();
        // 07:00 in Amsterdam in March (CET) is 06:00 UTC.
        let next = next_fire_time(&daily, Amsterdam, utc(5, 5, 0, 0));
        assert_eq!(next, Some(utc(5, 6, 0, 0)));
        // After a spring-forward night it is 05:00 UTC.
        let next = next_fire_time(&daily, Amsterdam, utc(31, 6, 0, 0));
        assert_eq!(
            next,
            Some(Utc.with_ymd_and_hms(2030, 4, 1, 5, 0, 0).unwrap())
        );
    }

    #[test]
    fn the_look_back_finds_the_latest_fire_time_including_now() {
        let daily = cron::Schedule::from_str("0 0 7 * * *").unwrap();
        let now = utc(5, 9, 0, 0);
        let since = now - CATCH_UP;
        assert_eq!(
            latest_fire_time(&daily, Amsterdam, since, now),
            Some(utc(5, 6, 0, 0))
        );
        // Exactly at the fire time counts; the bound `since` itself does not.
        let at = utc(5, 6, 0, 0);
        assert_eq!(
            latest_fire_time(&daily, Amsterdam, at - CATCH_UP, at),
            Some(at)
        );
        assert_eq!(latest_fire_time(&daily, Amsterdam, at, now), None);
        // A weekly schedule whose last time is more than a day ago has nothing to make up.
        let weekly = cron::Schedule::from_str("0 0 7 * * Mon").unwrap();
        assert_eq!(latest_fire_time(&weekly, Amsterdam, since, now), None);
    }
}
