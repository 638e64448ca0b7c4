//! Logs, metrics and the health latches that `/readyz` reads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{fmt, EnvFilter};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the global tracing subscriber; `RUST_LOG` overrides `default_level`.
/// Safe to call more than once (later calls are ignored), which tests rely on.
pub fn init_logging(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = fmt().with_env_filter(filter).with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Installs the global Prometheus recorder once and returns its handle. Metrics are process-wide,
/// so every app in one process (as in tests) shares the recorder.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Buckets make histograms real Prometheus histograms (summaries cannot be
            // aggregated across instances): minutes to a day for time to first attempt,
            // milliseconds to minutes for everything else measured in seconds.
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("callkeeper_time_to_first_attempt_seconds".into()),
                    &[
                        60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14_400.0, 28_800.0, 86_400.0,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Suffix("_seconds".into()),
                        &[
                            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                            60.0, 300.0,
                        ],
                    )
                })
                .expect("bucket lists are non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (e.g. by an embedding program); then
            // ours just renders nothing, which is better than failing to start.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Readiness latches: each subsystem reports here, `/readyz` reads them.
#[derive(Debug, Default)]
pub struct Health {
    amqp_connected: AtomicBool,
}

pub type SharedHealth = Arc<Health>;

impl Health {
    pub fn set_amqp_connected(&self, connected: bool) {
        self.amqp_connected.store(connected, Ordering::Relaxed);
        metrics::gauge!("callkeeper_amqp_connected").set(if connected { 1.0 } else { 0.0 });
    }

    pub fn amqp_connected(&self) -> bool {
        self.amqp_connected.load(Ordering::Relaxed)
    }
}

/// How often the store-derived gauges are refreshed.
const GAUGE_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);
/// The window SLA attainment is measured over.
const ATTAINMENT_WINDOW: chrono::Duration = chrono::Duration::hours(24);

/// Keeps the gauges that only the store knows current: callbacks by state, the oldest open
/// callback without an attempt, callbacks at risk and SLA attainment over the last day, per
/// queue.
pub async fn refresh_store_gauges(
    store: crate::store::SharedStore,
    rules: Arc<crate::schedule::Rules>,
    clock: crate::clock::SharedClock,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use crate::domain::{SlaStatus, State};

    let mut tick = tokio::time::interval(GAUGE_PERIOD);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let stats = match store.stats().await {
            Ok(stats) => stats,
            Err(error) => {
                metrics::counter!("callkeeper_store_errors_total", "operation" => "stats")
                    .increment(1);
                tracing::warn!(%error, "Could not read figures for the gauges; will retry.");
                continue;
            }
        };
        metrics::gauge!("callkeeper_events_outbox_pending").set(stats.event_backlog as f64);
        let now = clock.now();
        let sla_counts = match store.sla_counts(now - ATTAINMENT_WINDOW, now).await {
            Ok(counts) => counts,
            Err(error) => {
                metrics::counter!("callkeeper_store_errors_total", "operation" => "sla_counts")
                    .increment(1);
                tracing::warn!(%error, "Could not count SLA outcomes for the gauges; will retry.");
                Vec::new()
            }
        };
        // Every label set is written each round, zeros included, so a drained state reads 0
        // rather than its last value.
        for queue in rules.queue_names() {
            let q = queue.as_str().to_owned();
            for state in State::ALL {
                let n = stats
                    .by_state
                    .iter()
                    .find(|(sq, ss, _)| sq == queue && ss == state)
                    .map_or(0, |r| r.2);
                metrics::gauge!("callkeeper_callbacks", "queue" => q.clone(), "state" => state.as_str()).set(n as f64);
            }
            let oldest = stats
                .oldest_untried
                .iter()
                .find(|(sq, _)| sq == queue)
                .map_or(0.0, |(_, at)| {
                    (now - *at).num_milliseconds().max(0) as f64 / 1000.0
                });
            metrics::gauge!("callkeeper_oldest_waiting_seconds", "queue" => q.clone()).set(oldest);
            let at_risk = stats
                .at_risk
                .iter()
                .find(|(sq, _)| sq == queue)
                .map_or(0, |r| r.1);
            metrics::gauge!("callkeeper_callbacks_at_risk", "queue" => q.clone())
                .set(at_risk as f64);
            let count = |status: SlaStatus| -> u64 {
                sla_counts
                    .iter()
                    .filter(|(sq, ss, _)| sq == queue && *ss == status)
                    .map(|r| r.2)
                    .sum()
            };
            let (met, missed) = (count(SlaStatus::Met), count(SlaStatus::Missed));
            if met + missed > 0 {
                metrics::gauge!("callkeeper_sla_attainment_ratio", "queue" => q)
                    .set(met as f64 / (met + missed) as f64);
            }
        }
    }
}

/// Describes every metric callkeeper emits, so `/metrics` carries HELP text for each.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "callkeeper_intake_messages_total",
        "Inbound events by result: created, merged, duplicate, cancelled, attempted, rejected."
    );
    describe_counter!(
        "callkeeper_intake_rejected_total",
        "Inbound events dead-lettered, by reason code."
    );
    describe_counter!(
        "callkeeper_intake_store_failures_total",
        "Times applying a batch of inbound events failed on the store (retried)."
    );
    describe_gauge!(
        "callkeeper_intake_unacked",
        "Inbound messages in hand, not yet acked."
    );
    describe_gauge!(
        "callkeeper_amqp_connected",
        "1 while connected to RabbitMQ and consuming, else 0."
    );
    describe_counter!(
        "callkeeper_amqp_reconnects_total",
        "Reconnections to RabbitMQ after a lost connection."
    );
    describe_counter!(
        "callkeeper_webhook_deliveries_total",
        "Webhook tries by notice type and result: delivered, retry, gave_up, gone."
    );
    describe_histogram!(
        "callkeeper_webhook_duration_seconds",
        Unit::Seconds,
        "Time a webhook endpoint took to answer."
    );
    describe_gauge!(
        "callkeeper_webhook_in_flight",
        "Webhook requests in flight."
    );
    describe_histogram!(
        "callkeeper_store_writer_wait_seconds",
        Unit::Seconds,
        "Time a store write waited for the one SQLite writer connection, by operation."
    );
    describe_histogram!(
        "callkeeper_timer_lateness_seconds",
        Unit::Seconds,
        "How late the timer stepped a callback after its fire time."
    );
    describe_gauge!(
        "callkeeper_timer_pending",
        "Fire times held in memory (the near-term window)."
    );
    describe_gauge!(
        "callkeeper_idempotency_keys",
        "Idempotency keys held in memory (about 50 bytes each), once loaded at start."
    );
    describe_counter!(
        "callkeeper_api_requests_total",
        "HTTP API requests by route template and status."
    );
    describe_gauge!(
        "callkeeper_callbacks",
        "Stored callbacks by queue and state."
    );
    describe_gauge!(
        "callkeeper_oldest_waiting_seconds",
        "Age of the oldest open callback per queue."
    );
    describe_gauge!(
        "callkeeper_callbacks_at_risk",
        "Open callbacks past their at-risk time with no attempt yet, per queue."
    );
    describe_gauge!(
        "callkeeper_sla_attainment_ratio",
        "Met / (met + missed) over callbacks requested in the last 24 h, per queue."
    );
    describe_counter!(
        "callkeeper_store_errors_total",
        "Store operations that failed, by operation."
    );
    describe_counter!(
        "callkeeper_callback_events_total",
        "Lifecycle events committed, by queue and event: requested, merged, due, claimed, \
         attempted, missed, completed, failed, cancelled, expired."
    );
    describe_counter!(
        "callkeeper_sla_met_total",
        "Callbacks whose first attempt came by the deadline, by queue and priority."
    );
    describe_counter!(
        "callkeeper_sla_missed_total",
        "Callbacks whose deadline passed before the first attempt, by queue and priority."
    );
    describe_histogram!(
        "callkeeper_time_to_first_attempt_seconds",
        Unit::Seconds,
        "Time from the request to the first attempt, per queue."
    );
    describe_counter!(
        "callkeeper_retries_total",
        "Attempts after which the callback was scheduled again, by queue and outcome."
    );
    describe_histogram!(
        "callkeeper_firing_lateness_seconds",
        Unit::Seconds,
        "How long after its due time a callback became due (was fired)."
    );
    describe_counter!(
        "callkeeper_events_published_total",
        "Lifecycle events published to the events exchange and confirmed by the broker."
    );
    describe_gauge!(
        "callkeeper_events_outbox_pending",
        "Lifecycle events in the outbox: not yet confirmed by the broker, or confirmed in the \
         last second and not yet removed."
    );
    describe_gauge!(
        "callkeeper_events_connected",
        "1 while the events publisher is connected to RabbitMQ, else 0."
    );
    describe_counter!(
        "callkeeper_events_reconnects_total",
        "Reconnections of the events publisher after a lost connection."
    );
    describe_counter!(
        "callkeeper_retention_purged_total",
        "Rows removed by the retention purge, by table."
    );
    describe_counter!(
        "callkeeper_sla_digests_total",
        "SLA digests per queue by outcome: created (stored, sent with the webhooks), \
         already_made (that day's digest existed: a restart or a second fire the same day), \
         failed (could not be stored)."
    );
    describe_counter!(
        "callkeeper_erasures_total",
        "Phone numbers erased on request (DELETE /v1/contacts/{phone})."
    );
}
