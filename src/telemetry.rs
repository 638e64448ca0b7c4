//! Logs, metrics and the health latches that `/readyz` reads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
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
            let recorder = PrometheusBuilder::new().build_recorder();
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
