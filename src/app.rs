//! Wires the stages together and supervises them: one root cancellation token, a child per
//! subsystem; if one dies the process says so and stops cleanly; shutdown drains within a bound.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use secrecy::SecretString;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::api::{self, ApiState};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::intake::Intake;
use crate::notify::Notifier;
use crate::schedule::{Rules, Timer, Wakeups};
use crate::store::{self, SharedStore, StoreSettings};
use crate::telemetry::{self, Health, SharedHealth};

/// A started worker.
pub struct Running {
    /// Where the HTTP API listens (useful with port 0).
    pub http_addr: SocketAddr,
    pub store: SharedStore,
    pub health: SharedHealth,
    /// The bearer tokens `/v1` accepts (generated when none were configured).
    pub api_tokens: Arc<Vec<SecretString>>,
    shutdown: CancellationToken,
    tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
    drain_timeout: Duration,
}

/// Opens the store, binds the HTTP port and starts intake, timer, notifier and API, and beside
/// them retention and the SLA digests.
/// Everything that can fail on bad setup fails here, before the worker reports started.
pub async fn start(config: Config, clock: SharedClock) -> anyhow::Result<Running> {
    let rules = Arc::new(Rules::from_config(&config));
    let (wakeups, receivers) = Wakeups::new();
    let settings = StoreSettings {
        rules: rules.clone(),
        public_url: config.http.public_url.clone(),
        opt_out_period: config.intake.opt_out_period,
        wakeups,
    };
    let store = store::open(&config.store.url, settings)
        .await
        .context("opening the store")?;
    let digests = crate::digest::SlaDigests::new(store.clone(), clock.clone(), &config)
        .context("reading the SLA digest schedules")?;
    let api_tokens = Arc::new(api_tokens(&config)?);
    let health: SharedHealth = Arc::new(Health::default());
    let metrics = telemetry::metrics_handle();
    telemetry::describe_metrics();
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding HTTP on {}", config.http.listen))?;
    let http_addr = listener.local_addr()?;

    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();

    let router = api::router(ApiState {
        store: store.clone(),
        clock: clock.clone(),
        rules: rules.clone(),
        api_tokens: api_tokens.clone(),
        health: health.clone(),
        metrics: metrics.clone(),
    });
    let token = shutdown.child_token();
    tasks.spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await
            .context("HTTP server failed");
        ("api", served)
    });

    let intake = Intake::new(
        config.amqp.clone(),
        store.clone(),
        rules.clone(),
        clock.clone(),
        health.clone(),
    );
    let token = shutdown.child_token();
    tasks.spawn(async move { ("intake", intake.run(token).await) });

    let timer = Timer::new(
        store.clone(),
        clock.clone(),
        config.schedule.horizon,
        receivers.fire,
    );
    let token = shutdown.child_token();
    tasks.spawn(async move { ("timer", timer.run(token).await) });

    let notifier = Notifier::new(
        store.clone(),
        rules.clone(),
        config.notify.clone(),
        clock.clone(),
        receivers.deliveries,
    );
    let token = shutdown.child_token();
    tasks.spawn(async move { ("notify", notifier.run(token).await) });

    let publisher =
        crate::events::Publisher::new(config.amqp.clone(), store.clone(), receivers.events.clone());
    let token = shutdown.child_token();
    tasks.spawn(async move { ("events", publisher.run(token).await) });

    let retention =
        crate::retention::Retention::new(store.clone(), clock.clone(), config.retention.clone());
    let token = shutdown.child_token();
    tasks.spawn(async move { ("retention", retention.run(token).await) });

    let token = shutdown.child_token();
    tasks.spawn(async move { ("sla_digest", digests.run(token).await) });

    let token = shutdown.child_token();
    let gauges =
        telemetry::refresh_store_gauges(store.clone(), rules.clone(), clock.clone(), token);
    tasks.spawn(async move { ("gauges", gauges.await) });

    // The Prometheus exporter needs its upkeep to keep histograms bounded.
    let token = shutdown.child_token();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = token.cancelled() => return ("metrics", Ok(())),
                _ = tick.tick() => metrics.run_upkeep(),
            }
        }
    });

    info!(%http_addr, queues = rules.queue_names().count(), "callkeeper started.");
    Ok(Running {
        http_addr,
        store,
        health,
        api_tokens,
        shutdown,
        tasks,
        drain_timeout: config.drain_timeout,
    })
}

impl Running {
    /// A token that stops the worker when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs until `stop` resolves or a subsystem dies, then drains within the configured bound.
    /// Returns an error when a subsystem failed or the drain timed out.
    pub async fn run_until(
        mut self,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let mut failure = None;
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => info!("Shutdown requested; draining."),
            _ = stop => info!("Shutdown requested; draining."),
            Some(joined) = self.tasks.join_next(), if !self.shutdown.is_cancelled() => {
                let (name, result) = joined.unwrap_or(("unknown", Err(anyhow::anyhow!("task panicked"))));
                let reason = match result { Ok(()) => anyhow::anyhow!("stopped unexpectedly"), Err(e) => e };
                error!(subsystem = name, error = %format!("{reason:#}"), "A subsystem stopped; shutting down.");
                failure = Some(reason.context(format!("subsystem {name} stopped")));
            }
        }
        self.shutdown.cancel();
        let drained = tokio::time::timeout(self.drain_timeout, async {
            while let Some(joined) = self.tasks.join_next().await {
                if let Ok((name, Err(e))) = joined {
                    warn!(subsystem = name, error = %format!("{e:#}"), "Subsystem ended with an error while draining.");
                }
            }
        })
        .await;
        if drained.is_err() {
            let left = self.tasks.len();
            self.tasks.abort_all();
            error!(left, "Drain timed out; abandoning unfinished subsystems (unacked messages will be redelivered).");
            return Err(failure.unwrap_or_else(|| {
                anyhow::anyhow!("drain timed out with {left} subsystems still running")
            }));
        }
        info!("callkeeper stopped.");
        failure.map_or(Ok(()), Err)
    }
}

/// The configured tokens, or a generated one written to `<data dir>/api-token` so a fresh
/// install is never open and never needs a hand-written secret.
fn api_tokens(config: &Config) -> anyhow::Result<Vec<SecretString>> {
    if !config.http.api_tokens.is_empty() {
        return Ok(config.http.api_tokens.clone());
    }
    let dir = config.data_dir();
    let path = dir.join("api-token");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        if !existing.trim().is_empty() {
            return Ok(vec![existing.trim().to_owned().into()]);
        }
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let token: String = {
        use rand::Rng;
        let bytes: [u8; 24] = rand::rng().random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    };
    write_private(&path, &token)?;
    info!(path = %path.display(), "No API token configured; generated one.");
    Ok(vec![token.into()])
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}
