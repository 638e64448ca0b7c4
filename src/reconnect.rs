//! Waiting between tries of an outside service that went away (the broker, the store): capped
//! exponential backoff with jitter, a sleep that shutdown cuts short, and the loop that keeps a
//! broker session going with them.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

/// Sleeps, or returns `true` early when shutdown comes.
pub async fn pause(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(delay) => false,
    }
}

/// Keeps a broker session going until shutdown. Runs `session` (which returns `Ok` on shutdown
/// and may reset the backoff once connected); after each failure hands the error and the delay
/// to `lost` for its log line, waits, counts the reconnect in the `reconnects` counter, and runs
/// it again.
pub async fn supervise<E, Session: Future<Output = Result<(), E>>>(
    shutdown: &CancellationToken,
    backoff: &Backoff,
    reconnects: &'static str,
    mut session: impl FnMut() -> Session,
    mut lost: impl FnMut(E, Duration),
) {
    let mut first = true;
    while !shutdown.is_cancelled() {
        if !first {
            metrics::counter!(reconnects).increment(1);
        }
        first = false;
        match session().await {
            Ok(()) => break,
            Err(error) => {
                let delay = backoff.next_delay();
                lost(error, delay);
                if pause(delay, shutdown).await {
                    break;
                }
            }
        }
    }
}

/// Exponential backoff with jitter, so many workers do not retry in step. Shared by reference
/// between a supervisor (which waits) and its session (which resets it once connected).
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: AtomicU32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            attempt: AtomicU32::new(0),
        }
    }

    /// Somewhere in the upper half of `base * 2^attempt`, capped at `max`.
    pub fn next_delay(&self) -> Duration {
        let attempt = self.attempt.fetch_add(1, Ordering::Relaxed);
        let ceiling = self
            .base
            .saturating_mul(2u32.saturating_pow(attempt.min(20)))
            .min(self.max);
        ceiling.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    pub fn reset(&self) {
        self.attempt.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_and_resets() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let first = backoff.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..30 {
            assert!(backoff.next_delay() <= Duration::from_secs(2));
        }
        assert!(backoff.next_delay() >= Duration::from_secs(1));
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
