//! `callkeeper-bench`: measures the worker the way users run it — the real `callkeeper` binary
//! as a child process with a generated config file, the real RabbitMQ, a scratch SQLite file and
//! a verifying webhook receiver inside this process — and compares it with the broker's own
//! ceiling on the same machine, in the same run.
//!
//! Scenarios (issue 5): `backlog` (drain a full intake queue, next to a bare consumer that only
//! acks), `storm` (publishers flat out while the worker consumes), `ontime` (firing lateness of a
//! spread load and a one-second burst) and `ahead` (a million callbacks booked for next week:
//! memory and start-up). `--quick` runs small sizes so CI keeps the bench from rotting.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use base64::Engine as _;
use callkeeper::config::Config;
use callkeeper::domain::Phone;
use callkeeper::notify::signing;
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Parser, ValueEnum};
use futures::{FutureExt as _, StreamExt as _};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
    QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::PublisherConfirm;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::json;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _, Row as _, SqliteConnection};
use tokio_util::sync::CancellationToken;

const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const API_TOKEN: &str = "bench-token";
/// The queue name every request goes to (as the IVR sends it in `data.queue`).
const QUEUE: &str = "support";
/// Publisher confirms outstanding at once per publishing channel: enough to keep the broker
/// busy without waiting one round trip per message.
const CONFIRM_WINDOW: usize = 1000;
/// Publishing channels in the live storm; each on its own connection.
const STORM_PUBLISHERS: usize = 2;
/// How often the storm samples the intake queue's depth.
const DEPTH_SAMPLE: Duration = Duration::from_millis(100);
/// On-time: callbacks are due no earlier than this after publishing starts, plus the time the
/// worker needs to take them in at the assumed rate below, so firing is measured on its own.
const ONTIME_BASE_LEAD: Duration = Duration::from_secs(3);
/// Target for the burst: all delivered within this of their common due time.
const BURST_TARGET: Duration = Duration::from_secs(2);
/// Booked ahead: the "meanwhile" callbacks come due this long after the restart, spread over
/// `MEANWHILE_SPREAD`.
const MEANWHILE_AFTER: Duration = Duration::from_secs(2);
const MEANWHILE_SPREAD: Duration = Duration::from_secs(3);

#[derive(Debug, Parser)]
#[command(
    name = "callkeeper-bench",
    about = "Benchmarks the callkeeper worker against the real RabbitMQ and the broker's own ceiling."
)]
struct Args {
    /// Small sizes (2,000 backlog, 5 s storm, 1,000 + 500 on time, 20,000 booked); for CI.
    #[arg(long)]
    quick: bool,
    #[arg(long, value_enum, default_value_t = Which::All)]
    scenario: Which,
    /// Overrides the main size: backlog messages, on-time spread callbacks (the burst is a
    /// tenth of it), booked-ahead callbacks. The storm runs for a time instead (`--storm-secs`).
    #[arg(long)]
    n: Option<u64>,
    /// How long the storm's publishers run.
    #[arg(long)]
    storm_secs: Option<u64>,
    /// The worker binary (default: `callkeeper` next to this executable).
    #[arg(long)]
    worker: Option<PathBuf>,
    #[arg(long, default_value = DEFAULT_AMQP_URL)]
    amqp_url: String,
    /// Also write the markdown report to this file.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Keep each scenario's scratch folder (config, database, worker log).
    #[arg(long)]
    keep: bool,
    /// Leave the worker's default calling window (08:00-21:00 callee time) instead of one open
    /// all day. For comparing the cost of the time rules; due times then depend on the hour,
    /// so only the backlog (due in an hour) and booked-ahead figures stay comparable.
    #[arg(long)]
    default_calling_window: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Backlog,
    Storm,
    Ontime,
    Ahead,
    All,
}

impl Which {
    fn includes(self, other: Which) -> bool {
        self == Which::All || self == other
    }
}

/// The sizes of one run.
#[derive(Debug, Clone)]
struct Sizes {
    backlog: u64,
    storm: Duration,
    /// How long the storm waits for the worker to store what is left once publishing stops.
    storm_drain: Duration,
    spread: u64,
    spread_over: Duration,
    burst: u64,
    /// The burst comes due this long after the last of the spread load.
    burst_gap: Duration,
    booked: u64,
    /// Booked ahead: requests taken in through the worker, then cloned in SQL up to `booked`.
    seeds: u64,
    meanwhile: u64,
    /// On time: requests per second the worker is assumed to take in when the backlog scenario
    /// did not measure it, to set the first due time late enough that firing is measured on
    /// its own (the output says if it was not).
    assumed_intake_per_sec: f64,
    /// How long the restarted worker runs on the big store before its peak RSS is read, so
    /// periodic work (gauge refresh, timer refills) is included.
    hold: Duration,
}

impl Sizes {
    fn new(args: &Args) -> Self {
        let mut sizes = if args.quick {
            Sizes {
                backlog: 2_000,
                storm: Duration::from_secs(5),
                storm_drain: Duration::from_secs(3),
                spread: 1_000,
                spread_over: Duration::from_secs(5),
                burst: 500,
                burst_gap: Duration::from_secs(2),
                booked: 20_000,
                seeds: 500,
                meanwhile: 10,
                // A debug build is slow.
                assumed_intake_per_sec: 400.0,
                hold: Duration::from_secs(2),
            }
        } else {
            Sizes {
                backlog: 200_000,
                storm: Duration::from_secs(60),
                storm_drain: Duration::from_secs(120),
                spread: 100_000,
                spread_over: Duration::from_secs(60),
                burst: 10_000,
                burst_gap: Duration::from_secs(5),
                booked: 1_000_000,
                seeds: 1_000,
                meanwhile: 50,
                assumed_intake_per_sec: 2_000.0,
                hold: Duration::from_secs(12),
            }
        };
        if let Some(n) = args.n {
            let n = n.max(1);
            sizes.backlog = n;
            sizes.spread = n;
            sizes.burst = (n / 10).max(1);
            sizes.booked = n;
            sizes.seeds = sizes.seeds.min(n);
        }
        if let Some(secs) = args.storm_secs {
            sizes.storm = Duration::from_secs(secs.max(1));
        }
        sizes
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("callkeeper-bench failed: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let sizes = Sizes::new(&args);
    let env = Env::new(&args)?;
    check_phone_ranges(
        sizes
            .backlog
            .max(sizes.spread + sizes.burst)
            .max(sizes.booked + sizes.meanwhile),
    )?;
    eprintln!(
        "callkeeper-bench: worker {}, run {}, {} mode",
        env.worker.display(),
        env.run,
        if args.quick { "quick" } else { "full" }
    );
    let mut report = Report::default();
    let mut intake_rate = None;
    for which in [Which::Backlog, Which::Storm, Which::Ontime, Which::Ahead] {
        if !args.scenario.includes(which) {
            continue;
        }
        // The broker is shared: another project's test may restart it under us. A scenario that
        // fails is run once more, and the report says so.
        let mut attempt = 1;
        loop {
            wait_for_broker(&env.amqp_url).await?;
            let mut part = Report::default();
            match scenario(which, &env, &sizes, intake_rate, &mut part).await {
                Ok(rate) => {
                    intake_rate = rate.or(intake_rate);
                    report.absorb(part);
                    break;
                }
                Err(error) if attempt == 1 => {
                    eprintln!("{which:?} failed: {error:#}\nRunning it once more.");
                    let text = format!("{error:#}");
                    let first_line = text.lines().next().unwrap_or_default();
                    report.notes.push(format!(
                        "{which:?} ran twice; the first attempt failed: {first_line}"
                    ));
                    attempt += 1;
                }
                Err(error) => return Err(error.context(format!("{which:?} scenario"))),
            }
        }
    }
    let text = report.markdown(&env, &sizes, args.quick).await;
    println!("{text}");
    if let Some(path) = &args.output {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Runs one scenario; the backlog returns the intake rate it measured.
async fn scenario(
    which: Which,
    env: &Env,
    sizes: &Sizes,
    intake_rate: Option<f64>,
    report: &mut Report,
) -> anyhow::Result<Option<f64>> {
    match which {
        Which::Backlog => backlog(env, sizes, report).await.map(Some),
        Which::Storm => {
            storm_ceiling(env, sizes, report).await?;
            storm(env, sizes, StormLoad::DueNow, report).await?;
            storm(env, sizes, StormLoad::DueLater, report)
                .await
                .map(|()| None)
        }
        Which::Ontime => ontime(env, sizes, intake_rate, report).await.map(|()| None),
        Which::Ahead => ahead(env, sizes, report).await.map(|()| None),
        Which::All => Ok(None),
    }
}

/// Waits up to two minutes for the broker to accept a connection.
async fn wait_for_broker(url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match Broker::connect(url).await {
            Ok(_) => return Ok(()),
            Err(error) if Instant::now() >= deadline => {
                return Err(error.context("RabbitMQ did not answer within two minutes"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scenario 1: backlog drain against the broker's ceiling.

/// Returns the worker's intake rate (requests stored per second).
async fn backlog(env: &Env, sizes: &Sizes, report: &mut Report) -> anyhow::Result<f64> {
    let n = sizes.backlog;
    let rig = Rig::new(env, "backlog").await?;
    let result = async {
        let broker = Broker::connect(&env.amqp_url).await?;
        callkeeper::intake::topology::declare(&broker.channel, &rig.config.amqp).await?;
        let prefetch = rig.config.amqp.prefetch;

        // Due in an hour: this scenario measures taking requests in (decode, store, ack), the
        // part the broker ceiling compares with; firing under load is the storm's and on-time's.
        let later = ms_floor(Utc::now() + chrono::Duration::hours(1));
        eprintln!("backlog: publishing {n} requests into the intake queue (worker stopped)…");
        let bodies = |i: u64| request_body(i, Some(later));
        let publisher = Publisher::connect(&env.amqp_url).await?;
        let started = Instant::now();
        publisher
            .publish_range(&rig.names, "callback.requested", 0..n, bodies)
            .await?;
        let publish_time = started.elapsed();
        report.figure("backlog", "published with confirms", rate(n, publish_time));

        // The ceiling: the same bodies in a fresh quorum queue, taken by a consumer that only
        // acks, with the worker's prefetch and the worker's batching (one multiple-ack per
        // batch of what has arrived). Once before the worker and once after: the broker's
        // speed drifts on a shared machine, and the faster of the two is its ceiling.
        let ceiling = CeilingQueue {
            env,
            broker: &broker,
            publisher: &publisher,
            name: format!("{}.ceiling", rig.names),
            prefetch,
        };
        eprintln!("backlog: bare consumer on the same {n} messages…");
        let before = ceiling.consume(n, bodies, async |_| Ok(())).await?;

        eprintln!("backlog: starting the worker on the full queue…");
        let intake = rig.config.amqp.queue.clone();
        let mut worker = rig.spawn_worker()?;
        let broker_pid = local_broker_pid(&env.amqp_url);
        let (worker_cpu, broker_cpu) =
            (CpuSpan::start(Some(worker.pid)), CpuSpan::start(broker_pid));
        let mut probe = StoreProbe::new(&rig.db);
        let mut ready_after = None;
        let drained = loop {
            worker.check_alive()?;
            if ready_after.is_none() && worker.is_ready().await {
                ready_after = Some(worker.started.elapsed());
            }
            // Counting rows competes with the worker, so only once the queue has handed out
            // everything (at most one prefetch window is then in hand).
            if broker.depth(&intake).await? == 0 && probe.count().await == Some(n) {
                break worker.started.elapsed();
            }
            ensure!(
                worker.started.elapsed() < Duration::from_secs(3600),
                "the worker did not store the backlog within an hour"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let worker_waited = CpuSpan::describe_runnable_wait(worker_cpu.as_ref());
        let worker_cpu = CpuSpan::describe(worker_cpu.as_ref(), n, "message");
        let unpublished = probe.unpublished().await;
        let broker_cpu = CpuSpan::describe(broker_cpu.as_ref(), n, "message");
        // Acks follow commits; after the stop anything unacked would be back in the queue.
        let stopped = worker.terminate().await?;
        let left = broker.depth(&intake).await?;
        eprintln!("backlog: bare consumer again…");
        let after = ceiling.consume(n, bodies, async |_| Ok(())).await?;
        let (ceiling_time, broker_at_ceiling) = if before.0 <= after.0 { &before } else { &after };
        let ceiling_rate = n as f64 / ceiling_time.as_secs_f64();
        let worker_rate = n as f64 / drained.as_secs_f64();
        let ratio = worker_rate / ceiling_rate;

        report.target(
            "Backlog drain / broker ceiling",
            format!("{ratio:.2}"),
            "≥ 0.60",
            ratio >= 0.6,
        );
        report.figure("backlog", "messages", thousands(n));
        report.figure(
            "backlog",
            "worker: start to all stored",
            format!(
                "{} ({}/s; ready after {})",
                secs(drained),
                thousands(worker_rate as u64),
                ready_after.map_or("?".into(), millis)
            ),
        );
        report.figure(
            "backlog",
            "bare consumer (ack only)",
            format!(
                "{} before the worker, {} after; the faster is the ceiling; prefetch {prefetch}",
                rate(n, before.0),
                rate(n, after.0),
            ),
        );
        report.figure("backlog", "ratio worker / ceiling", format!("{ratio:.2}"));
        // What each side costs on these cores: the budget that decides the ratio.
        report.figure(
            "backlog",
            "CPU (user + system): worker while draining",
            worker_cpu,
        );
        report.figure(
            "backlog",
            "worker runnable but without a core, while draining",
            worker_waited,
        );
        report.figure(
            "backlog",
            "CPU: RabbitMQ while feeding the worker / the bare consumer",
            format!("{broker_cpu} / {broker_at_ceiling}"),
        );
        report.figure(
            "backlog",
            "lifecycle events still in the outbox when all were stored",
            events_waiting(unpublished, n),
        );
        report.figure(
            "backlog",
            "left in queue after stop",
            format!("{left} (all acked: {})", yes_no(left == 0)),
        );
        report.figure(
            "backlog",
            "peak RSS of the worker",
            kib(worker.peak_rss_kib),
        );
        report.figure("backlog", "SIGTERM to exit", stopped.to_string());

        // What SQLite alone can do on the store the worker just filled: the bound any intake
        // on this schema and disk meets, whatever the client does.
        let floor_n = n.min(STORE_FLOOR_MAX);
        let floor = store_floor(&rig.db, floor_n, usize::from(prefetch)).await?;
        let floor_rate = floor_n as f64 / floor.as_secs_f64();
        report.figure(
            "backlog",
            "SQLite alone (same writes, no client)",
            format!(
                "{} more in {} ({}/s, {:.2} of the ceiling; {prefetch} per transaction)",
                thousands(floor_n),
                secs(floor),
                thousands(floor_rate as u64),
                floor_rate / ceiling_rate
            ),
        );
        report.figure(
            "backlog",
            "worker / SQLite alone",
            format!("{:.2}", worker_rate / floor_rate),
        );

        // The broker and the store together with no client between them: the same writes, one
        // transaction per batch of what has arrived, acked after its commit. The bound any
        // intake meets on this broker, schema and disk, sharing these cores as the worker does.
        eprintln!("backlog: bare consumer writing SQLite alone's rows per batch…");
        let mut floor = StoreFloor::open(&rig.db).await?;
        let (bound, _) = ceiling
            .consume(floor_n, bodies, async |rows| floor.write(rows).await)
            .await?;
        floor.close().await?;
        let bound_rate = floor_n as f64 / bound.as_secs_f64();
        report.figure(
            "backlog",
            "bare consumer + SQLite alone (broker and store, no client)",
            format!(
                "{} more in {} ({}/s, {:.2} of the ceiling)",
                thousands(floor_n),
                secs(bound),
                thousands(bound_rate as u64),
                bound_rate / ceiling_rate
            ),
        );
        report.figure(
            "backlog",
            "worker / bare consumer + SQLite alone",
            format!("{:.2}", worker_rate / bound_rate),
        );
        Ok(worker_rate)
    }
    .await;
    rig.finish(env).await;
    result
}

/// A fresh quorum queue for the backlog's bare consumer, filled with the backlog's bodies.
struct CeilingQueue<'a> {
    env: &'a Env,
    broker: &'a Broker,
    publisher: &'a Publisher,
    name: String,
    prefetch: u16,
}

impl CeilingQueue<'_> {
    /// Publishes `body(0..n)` into the queue, takes them with [`bare_consumer`] (running
    /// `before_ack` for each batch) and deletes the queue. Returns the time from
    /// `basic.consume` to the last ack, and RabbitMQ's CPU meanwhile.
    async fn consume(
        &self,
        n: u64,
        body: impl Fn(u64) -> Vec<u8>,
        before_ack: impl AsyncFnMut(u64) -> anyhow::Result<()>,
    ) -> anyhow::Result<(Duration, String)> {
        self.broker.declare_quorum(&self.name).await?;
        self.publisher
            .publish_range("", &self.name, 0..n, body)
            .await?;
        let cpu = CpuSpan::start(local_broker_pid(&self.env.amqp_url));
        let took = bare_consumer(
            &self.env.amqp_url,
            &self.name,
            self.prefetch,
            n,
            &CancellationToken::new(),
            &AtomicU64::new(0),
            before_ack,
        )
        .await?;
        let cpu = CpuSpan::describe(cpu.as_ref(), n, "message");
        self.broker.delete_queue(&self.name).await;
        Ok((took, cpu))
    }
}

/// Consumes from `queue` as the worker takes its batches (one multiple-ack for each batch of
/// what has arrived), until `n` are acked or `stop` is cancelled. Before each ack it runs
/// `before_ack` with the batch's size, and nothing else. Counts what it acked in `acked`, so a
/// caller can read the rate while it runs, and returns the time from `basic.consume` to the
/// last ack.
async fn bare_consumer(
    url: &str,
    queue: &str,
    prefetch: u16,
    n: u64,
    stop: &CancellationToken,
    acked: &AtomicU64,
    mut before_ack: impl AsyncFnMut(u64) -> anyhow::Result<()>,
) -> anyhow::Result<Duration> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let started = Instant::now();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let limit = u64::from(prefetch.max(1));
    let mut got = 0;
    while got < n {
        let first = tokio::select! {
            _ = stop.cancelled() => break,
            next = consumer.next() => next,
        };
        let mut last = first.context("the consumer ended")??;
        let mut batch = 1;
        while batch < limit && got + batch < n {
            match consumer.next().now_or_never() {
                Some(Some(delivery)) => {
                    last = delivery?;
                    batch += 1;
                }
                Some(None) => bail!("the consumer ended"),
                None => break,
            }
        }
        before_ack(batch).await?;
        ensure!(
            last.acker.ack(BasicAckOptions { multiple: true }).await?,
            "the ack was lost"
        );
        got += batch;
        acked.fetch_add(batch, Ordering::Relaxed);
    }
    let elapsed = started.elapsed();
    let _ = connection.close(200, "done".into()).await;
    Ok(elapsed)
}

// ---------------------------------------------------------------------------------------------
// Scenario 2: live storm.

/// What the storm's requests ask for. The target is measured with `DueNow`; `DueLater` runs
/// the same storm again with intake alone, to show how much of a request's cost is intake.
#[derive(Debug, Clone, Copy)]
enum StormLoad {
    /// As soon as possible: each request is also fired and webhooked while the storm runs.
    DueNow,
    /// In an hour: the worker only stores and acks.
    DueLater,
}

impl StormLoad {
    /// The report's scenario column.
    fn label(self) -> &'static str {
        match self {
            StormLoad::DueNow => "storm",
            StormLoad::DueLater => "storm, intake only",
        }
    }

    /// The rig's name, part of queue and folder names.
    fn rig_name(self) -> &'static str {
        match self {
            StormLoad::DueNow => "storm",
            StormLoad::DueLater => "storm-intake-only",
        }
    }

    /// The requests' `not_before`, fixed when the storm starts.
    fn due(self) -> Option<DateTime<Utc>> {
        match self {
            StormLoad::DueNow => None,
            StormLoad::DueLater => Some(Utc::now() + chrono::Duration::hours(1)),
        }
    }
}

/// Publishers flat out into the intake exchange for the storm's duration, while the intake
/// queue's depth is sampled: the load of every storm, whoever consumes.
struct FlatOut {
    /// Confirmed publishes.
    published: u64,
    /// From the start of publishing to the last confirm.
    took: Duration,
    /// (seconds since the start, ready messages), every [`DEPTH_SAMPLE`].
    samples: Vec<(f64, u64)>,
}

impl FlatOut {
    async fn run(
        env: &Env,
        exchange: &str,
        queue: &str,
        duration: Duration,
        due: Option<DateTime<Utc>>,
    ) -> anyhow::Result<Self> {
        let samples = Arc::new(Mutex::new(Vec::<(f64, u64)>::new()));
        let stop_sampling = CancellationToken::new();
        let started = Instant::now();
        let sampler = {
            let samples = samples.clone();
            let stop = stop_sampling.clone();
            let broker = Broker::connect(&env.amqp_url).await?;
            let queue = queue.to_owned();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(DEPTH_SAMPLE);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    if let Ok(depth) = broker.depth(&queue).await {
                        let at = started.elapsed().as_secs_f64();
                        samples.lock().expect("samples lock").push((at, depth));
                    }
                }
            })
        };
        let stop_publishing = CancellationToken::new();
        let next = Arc::new(AtomicU64::new(0));
        let mut publishers = Vec::new();
        for _ in 0..STORM_PUBLISHERS {
            let publisher = Publisher::connect(&env.amqp_url).await?;
            let exchange = exchange.to_owned();
            let stop = stop_publishing.clone();
            let next = next.clone();
            publishers.push(tokio::spawn(async move {
                publisher
                    .publish_until(&exchange, "callback.requested", &stop, &next, |i| {
                        request_body(i, due)
                    })
                    .await
            }));
        }
        tokio::time::sleep(duration).await;
        stop_publishing.cancel();
        let mut published = 0;
        for publisher in publishers {
            published += publisher.await??;
        }
        let took = started.elapsed();
        stop_sampling.cancel();
        let _ = sampler.await;
        let samples = samples.lock().expect("samples lock").clone();
        Ok(Self {
            published,
            took,
            samples,
        })
    }

    /// Rate of `n` over the storm, per second.
    fn rate(&self, n: u64) -> f64 {
        n as f64 / self.took.as_secs_f64()
    }

    /// Least-squares slope of the depth, in messages per second.
    fn slope(&self) -> f64 {
        slope(&self.samples)
    }

    /// Bounded: over the whole storm the depth grew by less than two prefetch windows.
    fn bounded(&self, prefetch: u16) -> bool {
        self.slope() * self.took.as_secs_f64() < 2.0 * f64::from(prefetch)
    }

    fn peak(&self) -> u64 {
        self.samples.iter().map(|s| s.1).max().unwrap_or(0)
    }

    /// The rows every storm reports: the publishers, what `consumer` took in while they ran
    /// (`taken` of them, `done` being what it does with each), and the queue's depth.
    fn report(
        &self,
        label: &str,
        (consumer, done, taken): (&str, &str, u64),
        prefetch: u16,
        report: &mut Report,
    ) {
        let publish_rate = self.rate(self.published);
        let consume_rate = self.rate(taken);
        report.figure(
            label,
            "publishers",
            format!("{STORM_PUBLISHERS} × {CONFIRM_WINDOW} confirms in flight"),
        );
        report.figure(
            label,
            "published (confirmed)",
            format!(
                "{} in {} ({}/s)",
                thousands(self.published),
                secs(self.took),
                thousands(publish_rate as u64)
            ),
        );
        report.figure(
            label,
            &format!("{consumer} sustained rate"),
            format!(
                "{}/s ({} {done} while publishing)",
                thousands(consume_rate as u64),
                thousands(taken)
            ),
        );
        report.figure(
            label,
            &format!("ratio {consumer} / publishers"),
            format!("{:.2}", consume_rate / publish_rate.max(1.0)),
        );
        let last = self.samples.last().map_or(0, |s| s.1);
        report.figure(
            label,
            "queue depth: peak / at stop",
            format!("{} / {}", thousands(self.peak()), thousands(last)),
        );
        report.figure(
            label,
            "queue depth slope",
            format!(
                "{:+.1} msg/s (grew: {})",
                self.slope(),
                yes_no(!self.bounded(prefetch))
            ),
        );
    }
}

/// The storm's ceiling: the same publishers against a consumer that only acks, batching as the
/// worker does. Whether its depth stays bounded says whether any consumer can, on this broker
/// and these cores; the worker's storm is read against it.
async fn storm_ceiling(env: &Env, sizes: &Sizes, report: &mut Report) -> anyhow::Result<()> {
    let rig = Rig::new(env, "storm-ceiling").await?;
    let result = async {
        let broker = Broker::connect(&env.amqp_url).await?;
        callkeeper::intake::topology::declare(&broker.channel, &rig.config.amqp).await?;
        bare_storm(env, sizes, &rig, None, report).await
    }
    .await;
    rig.finish(env).await;
    result
}

/// The same publishers against [`bare_consumer`] on the rig's intake queue, on a thread and
/// runtime of its own, as the worker has its own (on the bench's runtime the consumer would take
/// turns with the publishers' tasks). With `store`, each batch first commits SQLite alone's
/// writes for it on that store ([`StoreFloor`]): the broker and the store together with no
/// client between them, the storm's counterpart of the backlog's bound.
async fn bare_storm(
    env: &Env,
    sizes: &Sizes,
    rig: &Rig,
    store: Option<&Path>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let (label, consumer_name, done, bench_does) = match store {
        None => (
            "storm, bare consumer",
            "bare consumer",
            "acked",
            "publishers and consumer",
        ),
        Some(_) => (
            "storm, bare consumer + SQLite alone",
            "bare consumer + SQLite alone",
            "stored",
            "publishers, consumer and SQLite's writes",
        ),
    };
    let intake = rig.config.amqp.queue.clone();
    let prefetch = rig.config.amqp.prefetch;
    eprintln!(
        "{label}: {STORM_PUBLISHERS} publishers flat out for {} against a consumer without the worker…",
        secs(sizes.storm)
    );
    let stop = CancellationToken::new();
    let acked = Arc::new(AtomicU64::new(0));
    let consumer = {
        let (url, queue, stop, acked) = (
            env.amqp_url.clone(),
            intake.clone(),
            stop.clone(),
            acked.clone(),
        );
        let store = store.map(Path::to_path_buf);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut floor = match &store {
                    Some(db) => Some(StoreFloor::open(db).await?),
                    None => None,
                };
                let write = async |rows| match floor.as_mut() {
                    Some(floor) => floor.write(rows).await,
                    None => Ok(()),
                };
                bare_consumer(&url, &queue, prefetch, u64::MAX, &stop, &acked, write).await?;
                if let Some(floor) = floor {
                    floor.close().await?;
                }
                anyhow::Ok(())
            })
        })
    };
    let (broker_cpu, bench_cpu) = (
        CpuSpan::start(local_broker_pid(&env.amqp_url)),
        CpuSpan::start(Some(std::process::id())),
    );
    let storm = FlatOut::run(env, &rig.names, &intake, sizes.storm, None).await;
    let taken = acked.load(Ordering::Relaxed);
    stop.cancel();
    tokio::task::spawn_blocking(move || consumer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the consumer's thread panicked"))??;
    let storm = storm?;
    let cpu = format!(
        "{} / {}",
        CpuSpan::describe(broker_cpu.as_ref(), storm.published, "request published"),
        CpuSpan::describe(bench_cpu.as_ref(), storm.published, "request published"),
    );
    storm.report(label, (consumer_name, done, taken), prefetch, report);
    report.figure(
        label,
        &format!("CPU while publishing: RabbitMQ / the bench ({bench_does})"),
        cpu,
    );
    Ok(())
}

async fn storm(
    env: &Env,
    sizes: &Sizes,
    load: StormLoad,
    report: &mut Report,
) -> anyhow::Result<()> {
    let label = load.label();
    let rig = Rig::new(env, load.rig_name()).await?;
    let result = async {
        let mut worker = rig.spawn_worker()?;
        worker.wait_ready(Duration::from_secs(60)).await?;
        let broker = Broker::connect(&env.amqp_url).await?;
        let intake = rig.config.amqp.queue.clone();
        let prefetch = rig.config.amqp.prefetch;

        eprintln!(
            "{label}: {STORM_PUBLISHERS} publishers flat out for {} while the worker consumes…",
            secs(sizes.storm)
        );
        let (worker_cpu, broker_cpu) = (
            CpuSpan::start(Some(worker.pid)),
            CpuSpan::start(local_broker_pid(&env.amqp_url)),
        );
        let storm = FlatOut::run(env, &rig.names, &intake, sizes.storm, load.due()).await?;
        let publishers_stopped = Instant::now();
        let mut probe = StoreProbe::new(&rig.db);
        let stored_at_stop = probe.count().await.unwrap_or(0);
        let unpublished = probe.unpublished().await;
        let storm_cpu = format!(
            "{} / {}",
            CpuSpan::describe(worker_cpu.as_ref(), stored_at_stop, "request stored"),
            CpuSpan::describe(broker_cpu.as_ref(), storm.published, "request published"),
        );
        let worker_waited = CpuSpan::describe_runnable_wait(worker_cpu.as_ref());

        // Then let the worker finish what is left, within a bound: a worker much slower than
        // the publishers could take very long, and that is already the finding.
        let drain_until = publishers_stopped + sizes.storm_drain;
        let mut stored = stored_at_stop;
        let drained = loop {
            worker.check_alive()?;
            if broker.depth(&intake).await? == 0 {
                stored = probe.count().await.unwrap_or(stored);
                if stored == storm.published {
                    break Some(publishers_stopped.elapsed());
                }
            }
            if Instant::now() >= drain_until {
                stored = probe.count().await.unwrap_or(stored);
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let left = storm.published.saturating_sub(stored);
        let stopped = worker.terminate().await?;

        match load {
            StormLoad::DueNow => report.target(
                "Storm: intake depth growth while publishers run flat out",
                format!(
                    "{:+.0} msg/s (peak {})",
                    storm.slope(),
                    thousands(storm.peak())
                ),
                "bounded (no growth)",
                storm.bounded(prefetch),
            ),
            StormLoad::DueLater => report.figure(
                label,
                "requests",
                "due in an hour, so nothing fires during the storm".into(),
            ),
        }
        storm.report(label, ("worker", "stored", stored_at_stop), prefetch, report);
        report.figure(
            label,
            "CPU while publishing: worker / RabbitMQ",
            storm_cpu,
        );
        report.figure(
            label,
            "worker runnable but without a core, while publishing",
            worker_waited,
        );
        report.figure(
            label,
            "lifecycle events still in the outbox when the publishers stopped",
            events_waiting(unpublished, stored_at_stop),
        );
        let drain = match drained {
            Some(took) => format!("all stored {} after the publishers stopped", secs(took)),
            None => format!(
                "{} not yet stored {} after the publishers stopped (about {} more at the sustained rate)",
                thousands(left),
                secs(sizes.storm_drain),
                secs(Duration::from_secs_f64(
                    left as f64 / storm.rate(stored_at_stop).max(1.0)
                ))
            ),
        };
        report.figure(label, "drain", drain);
        report.figure(label, "peak RSS of the worker", kib(worker.peak_rss_kib));
        report.figure(label, "SIGTERM to exit", stopped.to_string());
        if let StormLoad::DueLater = load {
            // The same storm once more with the worker stopped, against the broker and this
            // store alone: whether any intake could keep up here, whatever its client costs.
            broker.purge(&intake).await?;
            bare_storm(env, sizes, &rig, Some(&rig.db), report).await?;
        }
        Ok(())
    }
    .await;
    rig.finish(env).await;
    result
}

/// Least-squares slope of `(seconds, depth)` samples, in messages per second.
fn slope(samples: &[(f64, u64)]) -> f64 {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return 0.0;
    }
    let mean_t = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let mean_d = samples.iter().map(|s| s.1 as f64).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for &(t, d) in samples {
        num += (t - mean_t) * (d as f64 - mean_d);
        den += (t - mean_t) * (t - mean_t);
    }
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

// ---------------------------------------------------------------------------------------------
// Scenario 3: on time.

/// `intake_rate`: what the backlog scenario measured, if it ran, to leave the worker time to
/// take every request in before the first one comes due.
async fn ontime(
    env: &Env,
    sizes: &Sizes,
    intake_rate: Option<f64>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let rig = Rig::new(env, "ontime").await?;
    let result = async {
        let mut worker = rig.spawn_worker()?;
        worker.wait_ready(Duration::from_secs(60)).await?;
        let total = sizes.spread + sizes.burst;
        // Half the measured rate: taking requests in while the timer loads them is slower.
        let rate = intake_rate.map_or(sizes.assumed_intake_per_sec, |r| (r / 2.0).max(50.0));
        let lead = ONTIME_BASE_LEAD + Duration::from_secs_f64(total as f64 / rate);
        // Whole milliseconds, as the store keeps them.
        let first_due = ms_floor(Utc::now() + lead);
        let spacing = sizes.spread_over.as_secs_f64() / sizes.spread as f64;
        let burst_due = first_due + sizes.spread_over + sizes.burst_gap;
        let due = |i: u64| {
            if i < sizes.spread {
                ms_floor(first_due + Duration::from_secs_f64(i as f64 * spacing))
            } else {
                burst_due
            }
        };

        eprintln!(
            "ontime: {} callbacks due over {} from {}, plus {} due at {}…",
            thousands(sizes.spread),
            secs(sizes.spread_over),
            first_due.format("%H:%M:%S%.3f"),
            thousands(sizes.burst),
            burst_due.format("%H:%M:%S%.3f")
        );
        let publisher = Publisher::connect(&env.amqp_url).await?;
        publisher
            .publish_range(&rig.names, "callback.requested", 0..total, |i| {
                request_body(i, Some(due(i)))
            })
            .await?;
        let mut probe = StoreProbe::new(&rig.db);
        let stored_at = loop {
            worker.check_alive()?;
            if probe.count().await == Some(total) {
                break Some(Utc::now());
            }
            if Utc::now() > burst_due {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        probe.close().await;
        // Negative: intake was still busy when firing began, so lateness includes intake.
        let spare = stored_at.map(|at| (first_due - at).num_milliseconds());

        // Every due webhook, or give up well after the burst.
        // Long enough that a worker behind by a minute still finishes, so the percentiles cover
        // every callback rather than only the punctual ones.
        let wait_after_burst = Duration::from_secs(60).max(sizes.spread_over * 2);
        let give_up = burst_due + wait_after_burst;
        // From the first due time: intake and publishing its events are over by then.
        if let Ok(wait) = (first_due - Utc::now()).to_std() {
            tokio::time::sleep(wait).await;
        }
        let firing = CpuSpan::start(Some(worker.pid));
        while rig.receiver.count("callback.due") < total as usize && Utc::now() < give_up {
            worker.check_alive()?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let firing_cpu = firing.as_ref().and_then(CpuSpan::used).map(|(cpu, _)| cpu);
        let stopped = worker.terminate().await?;

        let arrivals = rig.receiver.arrivals();
        let mut first_arrival: HashMap<String, &Arrival> = HashMap::new();
        let mut webhook_ids: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
        for arrival in arrivals.iter().filter(|a| a.notice == "callback.due") {
            first_arrival
                .entry(arrival.callback_id.clone())
                .and_modify(|seen| {
                    if arrival.at < seen.at {
                        *seen = arrival;
                    }
                })
                .or_insert(arrival);
            webhook_ids
                .entry(arrival.callback_id.clone())
                .or_default()
                .insert(arrival.webhook_id.clone());
        }
        let under_two_ids = webhook_ids.values().filter(|ids| ids.len() > 1).count();
        let (mut spread_late, mut burst_late) = (Vec::new(), Vec::new());
        // Spread callbacks over the p99 target, by second of the load (from the first due time).
        let mut late_by_second: BTreeMap<i64, (usize, f64)> = BTreeMap::new();
        let mut spread_last = first_due;
        let mut burst_last = burst_due;
        for arrival in first_arrival.values() {
            let late = (arrival.at - arrival.due_at)
                .num_microseconds()
                .unwrap_or(i64::MAX) as f64
                / 1000.0;
            if arrival.due_at == burst_due {
                burst_late.push(late);
                burst_last = burst_last.max(arrival.at);
            } else {
                spread_late.push(late);
                spread_last = spread_last.max(arrival.at);
                if late > 25.0 {
                    let second = (arrival.due_at - first_due).num_seconds();
                    let (count, worst) = late_by_second.entry(second).or_default();
                    *count += 1;
                    *worst = worst.max(late);
                }
            }
        }
        let spread = Percentiles::of(&mut spread_late);
        let burst = Percentiles::of(&mut burst_late);
        let spread_window = (spread_last - first_due).num_milliseconds().max(1) as f64 / 1000.0;
        let burst_took = (burst_last - burst_due).num_milliseconds().max(0) as u64;
        let burst_all = burst_late.len() as u64 == sizes.burst;
        let burst_in_time = burst_all && burst_took <= BURST_TARGET.as_millis() as u64;

        let spread_all = spread_late.len() as u64 == sizes.spread;
        let waited = secs(wait_after_burst + sizes.burst_gap);
        let spread_note = if spread_all {
            String::new()
        } else {
            format!(
                " (over the {} delivered; {} not within {waited} of the last due time)",
                thousands(spread_late.len() as u64),
                thousands(sizes.spread - spread_late.len() as u64)
            )
        };
        report.target(
            "On time (spread): lateness p99",
            format!("{}{spread_note}", spread.show(spread.p99, 1)),
            "≤ 25 ms",
            spread_all && spread.p99 <= 25.0,
        );
        report.target(
            "On time (spread): lateness max",
            format!("{}{spread_note}", spread.show(spread.max, 1)),
            "≤ 250 ms",
            spread_all && spread.max <= 250.0,
        );
        report.target(
            "On time (burst): all delivered within",
            if burst_all {
                format!(
                    "{} (all {})",
                    millis(Duration::from_millis(burst_took)),
                    thousands(sizes.burst)
                )
            } else {
                format!(
                    "not all: {} of {} within {}",
                    thousands(burst_late.len() as u64),
                    thousands(sizes.burst),
                    secs(wait_after_burst)
                )
            },
            "≤ 2 s",
            burst_in_time,
        );
        report.figure(
            "ontime",
            "spread load",
            format!(
                "{} due over {} ({}/s offered)",
                thousands(sizes.spread),
                secs(sizes.spread_over),
                thousands((sizes.spread as f64 / sizes.spread_over.as_secs_f64()) as u64)
            ),
        );
        report.figure(
            "ontime",
            "all stored before the first due time",
            match spare {
                Some(ms) if ms >= 0 => format!("yes, {ms} ms ahead"),
                Some(ms) => format!("no, {} ms after (lateness includes intake)", -ms),
                None => "no, not by the burst's due time".into(),
            },
        );
        report.figure(
            "ontime",
            "spread lateness p50 / p99 / max",
            format!("{}{spread_note}", spread.summary(1)),
        );
        report.figure(
            "ontime",
            "spread: where callbacks over 25 ms late were due",
            if late_by_second.is_empty() {
                "none".into()
            } else {
                // The seconds with most, in order of the load: a stall that recurs shows its period.
                let mut worst: Vec<_> = late_by_second.iter().collect();
                worst.sort_by_key(|(_, (count, _))| std::cmp::Reverse(*count));
                worst.truncate(6);
                worst.sort_by_key(|(second, _)| **second);
                let seconds: Vec<String> = worst
                    .iter()
                    .map(|(second, (count, max))| {
                        format!("{second} ({}, up to {max:.0} ms)", thousands(*count as u64))
                    })
                    .collect();
                format!(
                    "{} in {} of {} seconds; most in seconds {}",
                    thousands(late_by_second.values().map(|(n, _)| *n as u64).sum()),
                    late_by_second.len(),
                    sizes.spread_over.as_secs(),
                    seconds.join(", ")
                )
            },
        );
        report.figure(
            "ontime",
            "spread deliveries/s",
            format!(
                "{} ({} delivered, from the first due time to the last arrival)",
                thousands((spread_late.len() as f64 / spread_window) as u64),
                thousands(spread_late.len() as u64)
            ),
        );
        report.figure("ontime", "burst lateness p50 / p99 / max", burst.summary(0));
        report.figure(
            "ontime",
            "worker CPU from the first due time (user + system)",
            match firing_cpu {
                Some(cpu) => format!(
                    "{cpu:.1} s, {:.0} µs per callback delivered",
                    cpu * 1e6 / first_arrival.len().max(1) as f64
                ),
                None => "unknown (no /proc)".into(),
            },
        );
        report.figure(
            "ontime",
            "burst deliveries/s",
            format!(
                "{} ({} of {} delivered, all within 2 s: {})",
                thousands((burst_late.len() as f64 * 1000.0 / burst_took.max(1) as f64) as u64),
                thousands(burst_late.len() as u64),
                thousands(sizes.burst),
                yes_no(burst_in_time)
            ),
        );
        report.figure(
            "ontime",
            "missing / notified under two webhook-ids",
            format!(
                "{} / {under_two_ids}",
                total.saturating_sub(first_arrival.len() as u64)
            ),
        );
        report.figure(
            "ontime",
            "receiver refused (bad signature)",
            rig.receiver.rejected().to_string(),
        );
        report.figure("ontime", "peak RSS of the worker", kib(worker.peak_rss_kib));
        report.figure("ontime", "SIGTERM to exit", stopped.to_string());
        Ok(())
    }
    .await;
    rig.finish(env).await;
    result
}

#[derive(Debug, Default)]
struct Percentiles {
    p50: f64,
    p99: f64,
    max: f64,
}

impl Percentiles {
    /// One value in ms, or a word when nothing was measured.
    fn show(&self, value: f64, decimals: usize) -> String {
        if value.is_nan() {
            "none delivered".into()
        } else {
            format!("{value:.decimals$} ms")
        }
    }

    /// `p50 / p99 / max ms`.
    fn summary(&self, decimals: usize) -> String {
        if self.max.is_nan() {
            return "none delivered".into();
        }
        format!(
            "{:.decimals$} / {:.decimals$} / {:.decimals$} ms",
            self.p50, self.p99, self.max
        )
    }

    /// Nearest-rank percentiles; sorts `values`.
    fn of(values: &mut [f64]) -> Self {
        if values.is_empty() {
            return Self {
                p50: f64::NAN,
                p99: f64::NAN,
                max: f64::NAN,
            };
        }
        values.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let index = ((p / 100.0) * values.len() as f64).ceil() as usize;
            values[index.clamp(1, values.len()) - 1]
        };
        Self {
            p50: rank(50.0),
            p99: rank(99.0),
            max: values[values.len() - 1],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scenario 4: booked far ahead.

async fn ahead(env: &Env, sizes: &Sizes, report: &mut Report) -> anyhow::Result<()> {
    let rig = Rig::new(env, "ahead").await?;
    let result = async {
        let next_week = ms_floor(Utc::now() + chrono::Duration::days(7));
        let seeds = sizes.seeds.clamp(1, sizes.booked);
        eprintln!(
            "ahead: {} requests due next week through the worker's intake…",
            thousands(seeds)
        );
        let mut worker = rig.spawn_worker()?;
        worker.wait_ready(Duration::from_secs(60)).await?;
        let publisher = Publisher::connect(&env.amqp_url).await?;
        publisher
            .publish_range(&rig.names, "callback.requested", 0..seeds, |i| {
                request_body(i, Some(next_week + chrono::Duration::seconds(i as i64)))
            })
            .await?;
        let mut probe = StoreProbe::new(&rig.db);
        while probe.count().await != Some(seeds) {
            worker.check_alive()?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        probe.close().await;
        worker.terminate().await?;
        let small_rss = worker.peak_rss_kib;

        eprintln!(
            "ahead: cloning them in SQL up to {} callbacks…",
            thousands(sizes.booked)
        );
        let cloned = clone_callbacks(&rig.db, seeds, sizes.booked - seeds).await?;

        // Requests that come due while the worker holds the big store: published while it is
        // down, due shortly after it starts again.
        let base = sizes.booked;
        let restart_at = Utc::now();
        let due = |i: u64| {
            let offset =
                MEANWHILE_SPREAD.as_secs_f64() * (i - base) as f64 / sizes.meanwhile.max(1) as f64;
            ms_floor(restart_at + MEANWHILE_AFTER + Duration::from_secs_f64(offset))
        };
        publisher
            .publish_range(
                &rig.names,
                "callback.requested",
                base..base + sizes.meanwhile,
                |i| request_body(i, Some(due(i))),
            )
            .await?;

        eprintln!("ahead: restarting the worker on the big store…");
        let mut worker = rig.spawn_worker()?;
        let ready = worker.wait_ready(Duration::from_secs(300)).await?;
        let give_up = Instant::now() + Duration::from_secs(120);
        while rig.receiver.count("callback.due") < sizes.meanwhile as usize
            && Instant::now() < give_up
        {
            worker.check_alive()?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let until = worker.started + ready + sizes.hold;
        tokio::time::sleep_until(until.into()).await;
        worker.check_alive()?;
        let held = worker.started.elapsed();
        let rss_now = worker.current_rss_kib();
        let stopped = worker.terminate().await?;
        let stored = probe.count().await.unwrap_or(0);
        let keys_load = last_logged(&worker.log, "Idempotency keys loaded.")
            .and_then(|line| Some((line["keys"].as_u64()?, line["took_ms"].as_u64()?)));

        let mut late: Vec<f64> = rig
            .receiver
            .arrivals()
            .iter()
            .filter(|a| a.notice == "callback.due")
            .map(|a| (a.at - a.due_at).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0)
            .collect();
        let delivered = late.len();
        let late = Percentiles::of(&mut late);
        let peak = worker.peak_rss_kib;

        report.target(
            format!(
                "Booked ahead: peak RSS with {} pending",
                thousands(sizes.booked)
            ),
            kib(peak),
            "≤ 200 MB",
            peak.is_some_and(|k| k * 1024 <= 200_000_000),
        );
        report.target(
            "Booked ahead: start to ready",
            millis(ready),
            "≤ 3 s",
            ready <= Duration::from_secs(3),
        );
        report.figure(
            "ahead",
            "pending callbacks",
            format!(
                "{} ({} through intake, {} cloned in SQL with their idempotency keys in one transaction in {})",
                thousands(stored.saturating_sub(sizes.meanwhile)),
                thousands(seeds),
                thousands(sizes.booked - seeds),
                secs(cloned)
            ),
        );
        report.figure("ahead", "start to /readyz 200", millis(ready));
        report.figure(
            "ahead",
            "idempotency keys loaded after start (intake waits; the worker's log)",
            match keys_load {
                Some((keys, took_ms)) => format!(
                    "{} in {}",
                    thousands(keys),
                    millis(Duration::from_millis(took_ms))
                ),
                None => "not logged (a worker from before migration 0007)".into(),
            },
        );
        report.figure(
            "ahead",
            "peak RSS (VmHWM) / RSS at the end",
            format!("{} / {} (ran {})", kib(peak), kib(rss_now), secs(held)),
        );
        report.figure("ahead", "SIGTERM to exit", stopped.to_string());
        report.figure(
            "ahead",
            "peak RSS with the small store",
            format!("{} ({} callbacks)", kib(small_rss), thousands(seeds)),
        );
        report.figure(
            "ahead",
            "lateness of callbacks due meanwhile p50 / max",
            format!(
                "{} / {} ({delivered} of {} delivered)",
                late.show(late.p50, 1),
                late.show(late.max, 1),
                sizes.meanwhile
            ),
        );
        Ok(())
    }
    .await;
    rig.finish(env).await;
    result
}

/// Adds `extra` callbacks to the store by copying the `seeds` rows already there with a fresh
/// id and phone number, in one transaction, each with the idempotency key intake would have
/// kept for it (a random event id), so start-up loads a million keys too. Columns are read
/// from the table itself, so this follows the schema as it changes; only `id` and `phone` are
/// assumed.
async fn clone_callbacks(db: &Path, seeds: u64, extra: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut conn = SqliteConnectOptions::new()
        .filename(db)
        .busy_timeout(Duration::from_secs(30))
        .connect()
        .await
        .context("opening the store for cloning")?;
    let columns = table_columns(&mut conn, "callbacks").await?;
    ensure!(
        columns.iter().any(|c| c == "id") && columns.iter().any(|c| c == "phone"),
        "the callbacks table has no id or phone column"
    );
    // UUIDv7-shaped ids under one timestamp, unique by their tail; phone numbers after every
    // number the seeds and the later requests use.
    let now_ms = Utc::now().timestamp_millis();
    let id_expr = format!(
        "printf('%08x-%04x-7000-8000-%012x', {}, {}, seq.n)",
        now_ms >> 16,
        now_ms & 0xffff
    );
    let phone_expr = phone_sql(&format!("{PHONE_CLONE_BASE} + seq.n"));
    let select: Vec<String> = columns
        .iter()
        .map(|c| match c.as_str() {
            "id" => id_expr.clone(),
            "phone" => phone_expr.clone(),
            other => format!("t.\"{other}\""),
        })
        .collect();
    let insert_columns: Vec<String> = columns.iter().map(|c| format!("\"{c}\"")).collect();

    let mut tx = conn.begin().await?;
    sqlx::query(
        "CREATE TEMP TABLE bench_seed AS \
         SELECT row_number() OVER (ORDER BY id) - 1 AS bench_k, * FROM callbacks",
    )
    .execute(&mut *tx)
    .await?;
    let sql = format!(
        "WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n + 1 < {extra}) \
         INSERT INTO callbacks ({}) SELECT {} FROM seq JOIN bench_seed t ON t.bench_k = seq.n % {seeds}",
        insert_columns.join(", "),
        select.join(", ")
    );
    if extra > 0 {
        sqlx::query(&sql).execute(&mut *tx).await?;
        add_event_keys(&mut tx, extra, now_ms).await?;
    }
    sqlx::query("DROP TABLE bench_seed")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    // A long-running worker's WAL is checkpointed as it goes; start from the same state.
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(started.elapsed())
}

/// Stores `n` idempotency keys as intake does: a random event id, and the key's hash where the
/// schema has one (a worker from before migration 0007 has none).
async fn add_event_keys(
    conn: &mut SqliteConnection,
    n: u64,
    applied_at: i64,
) -> anyhow::Result<()> {
    const SOURCE: &str = "bench-clone";
    const PER_STATEMENT: u64 = 200;
    let hashed = stores_key_hashes(conn).await?;
    let (columns, row) = if hashed {
        (
            "source, id, fingerprint, applied_at, key_hash",
            "(?, ?, ?, ?, ?)",
        )
    } else {
        ("source, id, fingerprint, applied_at", "(?, ?, ?, ?)")
    };
    let mut left = n;
    while left > 0 {
        let rows = left.min(PER_STATEMENT);
        let sql = format!(
            "INSERT INTO inbound_events ({columns}) VALUES {}",
            vec![row; rows as usize].join(", ")
        );
        let mut query = sqlx::query(&sql);
        for _ in 0..rows {
            let id = format!("{:032x}", rand::random::<u128>());
            let fingerprint = format!("{:064x}", rand::random::<u128>());
            let hash = hashed.then(|| callkeeper::store::key_hash(SOURCE, &id));
            query = query
                .bind(SOURCE)
                .bind(id)
                .bind(fingerprint)
                .bind(applied_at);
            if let Some(hash) = hash {
                query = query.bind(hash);
            }
        }
        query.execute(&mut *conn).await?;
        left -= rows;
    }
    Ok(())
}

/// Whether the store keeps a hash with each idempotency key (migration 0007 and later).
async fn stores_key_hashes(conn: &mut SqliteConnection) -> anyhow::Result<bool> {
    Ok(table_columns(conn, "inbound_events")
        .await?
        .iter()
        .any(|c| c == "key_hash"))
}

/// A table's columns, read from the store so copies follow schema changes.
async fn table_columns(conn: &mut SqliteConnection, table: &str) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query("SELECT name FROM pragma_table_info(?)")
        .bind(table)
        .fetch_all(conn)
        .await?
        .iter()
        .map(|row| row.get::<String, _>("name"))
        .collect())
}

/// Rows the store-floor measurement adds at most.
const STORE_FLOOR_MAX: u64 = 100_000;

/// Times SQLite itself writing what intake writes for `n` new callbacks, `batch` per
/// transaction, on the worker's store and with its settings (WAL, `synchronous=FULL`, its page
/// cache): per callback one `callbacks` row (all its indexes), one `inbound_events` key with a
/// random event id, as IVR event ids are, and one outbox event of the usual size. One
/// `INSERT … SELECT` per table and transaction, so no client cost is in the figure.
async fn store_floor(db: &Path, n: u64, batch: usize) -> anyhow::Result<Duration> {
    let mut floor = StoreFloor::open(db).await?;
    let started = Instant::now();
    let mut done = 0;
    while done < n {
        let rows = (n - done).min(batch as u64);
        floor.write(rows).await?;
        done += rows;
    }
    let took = started.elapsed();
    floor.close().await?;
    Ok(took)
}

/// Writes what intake writes per callback, copied in SQL from the callbacks already stored, so
/// no client cost is in what it measures.
struct StoreFloor {
    conn: SqliteConnection,
    /// Callbacks there were to copy from.
    seeds: i64,
    statements: [String; 3],
    /// Callbacks written so far.
    written: u64,
}

impl StoreFloor {
    async fn open(db: &Path) -> anyhow::Result<Self> {
        let mut conn = SqliteConnectOptions::new()
            .filename(db)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
            .pragma("cache_size", callkeeper::store::WRITER_CACHE)
            .busy_timeout(Duration::from_secs(30))
            .connect()
            .await
            .context("opening the store for the SQLite-alone measurement")?;
        let columns = table_columns(&mut conn, "callbacks").await?;
        let seeds: i64 = sqlx::query_scalar("SELECT count(*) FROM callbacks")
            .fetch_one(&mut conn)
            .await?;
        ensure!(seeds > 0, "the store holds no callbacks to copy");
        let select: Vec<String> = columns
            .iter()
            .map(|c| match c.as_str() {
                "id" => "printf('%s-f%d', id, ?1)".into(),
                // Apart from every published number by the prefix, and scattered as `phone`
                // scatters those, over 9 digits.
                "phone" => {
                    format!("printf('+317%09d', (rowid + ?4) * {FLOOR_PHONE_SCATTER} % 1000000000)")
                }
                other => format!("\"{other}\""),
            })
            .collect();
        let insert_columns: Vec<String> = columns.iter().map(|c| format!("\"{c}\"")).collect();
        let callbacks = format!(
            "INSERT INTO callbacks ({}) SELECT {} FROM callbacks WHERE rowid BETWEEN ?2 AND ?3",
            insert_columns.join(", "),
            select.join(", ")
        );
        // A random integer stands in for the key's hash where the schema stores one: it is as
        // large, and lands in the index as the real one does (after the last key).
        let hashed = stores_key_hashes(&mut conn).await?;
        let (hash_column, hash_value) = if hashed {
            (", key_hash", ", random()")
        } else {
            ("", "")
        };
        let inbound = format!(
            "INSERT INTO inbound_events (source, id, fingerprint, applied_at{hash_column}) \
             SELECT 'bench', lower(hex(randomblob(16))), lower(hex(randomblob(32))), requested_at\
               {hash_value} \
             FROM callbacks WHERE rowid BETWEEN ?2 AND ?3"
        );
        let outbox = "INSERT INTO event_outbox (id, callback_id, type, body, created_at) \
             SELECT lower(hex(randomblob(16))), id, 'callkeeper.callback.requested', \
               printf('%.540c', 'x'), requested_at \
             FROM callbacks WHERE rowid BETWEEN ?2 AND ?3"
            .to_owned();
        Ok(Self {
            conn,
            seeds,
            statements: [callbacks, inbound, outbox],
            written: 0,
        })
    }

    /// Writes `rows` more callbacks in one transaction, copying the seeds as often as it takes.
    async fn write(&mut self, rows: u64) -> anyhow::Result<()> {
        let mut tx = self.conn.begin_with("BEGIN IMMEDIATE").await?;
        let mut left = rows as i64;
        while left > 0 {
            let a = (self.written as i64 % self.seeds) + 1;
            let b = (a + left - 1).min(self.seeds);
            // The store's row number of this statement's first copy. It tags the copies' ids
            // and makes their phone numbers, so neither repeats, even across `StoreFloor`s on
            // the same store (each starts past the rows there were).
            let first = self.seeds + self.written as i64 + 1;
            for statement in &self.statements {
                sqlx::query(statement)
                    .bind(first)
                    .bind(a)
                    .bind(b)
                    .bind(first - a)
                    .execute(&mut *tx)
                    .await?;
            }
            self.written += (b - a + 1) as u64;
            left -= b - a + 1;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn close(self) -> anyhow::Result<()> {
        Ok(self.conn.close().await?)
    }
}

// ---------------------------------------------------------------------------------------------
// The rig: names, scratch folder, config file, receiver and worker process of one scenario.

/// Everything shared by the scenarios of one run.
struct Env {
    run: String,
    worker: PathBuf,
    amqp_url: String,
    keep: bool,
    default_calling_window: bool,
    command: String,
}

impl Env {
    fn new(args: &Args) -> anyhow::Result<Self> {
        let worker = match &args.worker {
            Some(path) => path.clone(),
            None => {
                let me = std::env::current_exe().context("finding this executable")?;
                me.with_file_name(format!("callkeeper{}", std::env::consts::EXE_SUFFIX))
            }
        };
        ensure!(
            worker.is_file(),
            "no worker binary at {} (build it with `cargo build --bins`, or pass --worker)",
            worker.display()
        );
        Ok(Self {
            run: uuid::Uuid::now_v7().simple().to_string(),
            worker,
            amqp_url: args.amqp_url.clone(),
            keep: args.keep,
            default_calling_window: args.default_calling_window,
            command: std::env::args().collect::<Vec<_>>().join(" "),
        })
    }
}

struct Rig {
    worker: PathBuf,
    names: String,
    dir: PathBuf,
    db: PathBuf,
    config_path: PathBuf,
    config: Config,
    api: String,
    receiver: BenchReceiver,
}

impl Rig {
    async fn new(env: &Env, scenario: &str) -> anyhow::Result<Self> {
        // Fresh per rig, so a scenario run again never meets what its first attempt left.
        let id = uuid::Uuid::now_v7().simple().to_string();
        let suffix = &id[id.len() - 12..];
        let names = format!("ck.bench.{suffix}.{scenario}");
        let dir = std::env::temp_dir().join(format!("callkeeper-bench-{suffix}-{scenario}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let secret: SecretString = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
        )
        .into();
        let receiver = BenchReceiver::start(secret.clone()).await?;
        let port = free_port()?;
        let db = dir.join("callkeeper.db");
        let window = if env.default_calling_window {
            "# The worker's default calling window (08:00-21:00 callee time)."
        } else {
            "[calling_window.default]\nevery_day = [\"00:00-24:00\"]"
        };
        let text = config_text(
            &names,
            &env.amqp_url,
            &db,
            port,
            &receiver.url(),
            &secret,
            window,
        );
        // The worker inherits our environment and its `CALLKEEPER__*` overrides; read them too,
        // so the ceiling runs with the prefetch the worker really has.
        let config = Config::from_toml_with_env(&text, std::env::vars())
            .map_err(|e| anyhow::anyhow!("the generated config is invalid: {e}"))?;
        let config_path = dir.join("callkeeper.toml");
        std::fs::write(&config_path, text)?;
        Ok(Self {
            worker: env.worker.clone(),
            names,
            dir,
            db,
            config_path,
            config,
            api: format!("http://127.0.0.1:{port}"),
            receiver,
        })
    }

    fn spawn_worker(&self) -> anyhow::Result<WorkerProcess> {
        WorkerProcess::spawn(self, &self.dir.join("worker.log"))
    }

    /// Deletes the run's exchanges and queues and the scratch folder.
    async fn finish(self, env: &Env) {
        // The broker may be restarting (that may be why the scenario failed): wait for it, so
        // no queue full of messages is left behind.
        if wait_for_broker(&env.amqp_url).await.is_err() {
            eprintln!(
                "  note: could not reach RabbitMQ to delete {}.*",
                self.names
            );
        }
        if let Ok(broker) = Broker::connect(&env.amqp_url).await {
            for queue in [
                self.config.amqp.queue.as_str(),
                self.config.amqp.dead_letter_queue.as_str(),
                &format!("{}.ceiling", self.names),
            ] {
                broker.delete_queue(queue).await;
            }
            for exchange in [
                self.config.amqp.exchange.as_str(),
                self.config.amqp.dead_letter_exchange.as_str(),
                self.config.amqp.events_exchange.as_str(),
            ] {
                let _ = broker
                    .channel
                    .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                    .await;
            }
        }
        if env.keep {
            eprintln!("kept {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The worker's config: the defaults users get, except unique names, a scratch database, our
/// receiver as the queue's endpoint and (normally) a calling window open all day, so results
/// do not depend on the hour.
fn config_text(
    names: &str,
    amqp_url: &str,
    db: &Path,
    port: u16,
    receiver_url: &str,
    secret: &SecretString,
    calling_window: &str,
) -> String {
    format!(
        r#"# Generated by callkeeper-bench.
# Shorter than the default 20 s so a slow shutdown does not stall the bench; it is reported.
drain_timeout = "5s"

{calling_window}

[amqp]
url = "{amqp_url}"
exchange = "{names}"
queue = "{names}.intake"
dead_letter_exchange = "{names}.dlx"
dead_letter_queue = "{names}.dead"
events_exchange = "{names}.events"

[store]
url = "sqlite://{db}"

[http]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
api_tokens = ["{API_TOKEN}"]

[queues.{QUEUE}]
webhook_url = "{receiver_url}/agents"
signing_secrets = ["{secret}"]
sla = {{ normal = "4h", high = "1h", urgent = "15m" }}
"#,
        db = db.display(),
        secret = secret.expose_secret(),
    )
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`), the unit of `/proc/<pid>/stat`.
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU time a process used so far (user + system, all threads), from `/proc/<pid>/stat`.
fn cpu_seconds_of(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks_per_second())
}

/// Time a process's threads spent runnable but waiting for a core, so far (summed over the
/// threads alive now), from `/proc/<pid>/task/*/schedstat`: it shows when the cores are the
/// limit rather than anything the process waits for.
fn runnable_wait_seconds_of(pid: u32) -> Option<f64> {
    let mut waited_ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        // Fields: time on a core, time waiting on a run queue (both ns), timeslices run.
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue; // the thread ended meanwhile
        };
        waited_ns += stat.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    }
    Some(waited_ns as f64 / 1e9)
}

/// The local RabbitMQ's Erlang VM (`beam.smp`), so the report can say what the broker's side
/// costs on the same cores. `None` when the AMQP URL names another host.
fn local_broker_pid(amqp_url: &str) -> Option<u32> {
    let host = amqp_url.parse::<lapin::uri::AMQPUri>().ok()?.authority.host;
    if !matches!(host.as_str(), "127.0.0.1" | "localhost" | "::1" | "[::1]") {
        return None;
    }
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            (comm.trim() == "beam.smp").then_some(pid)
        })
}

/// One process's CPU time over a stretch of wall time. Steadier than latency from run to run,
/// so it shows what a change costs or saves.
struct CpuSpan {
    pid: u32,
    cpu: f64,
    runnable_wait: Option<f64>,
    wall: Instant,
}

impl CpuSpan {
    fn start(pid: Option<u32>) -> Option<Self> {
        let pid = pid?;
        Some(Self {
            pid,
            cpu: cpu_seconds_of(pid)?,
            runnable_wait: runnable_wait_seconds_of(pid),
            wall: Instant::now(),
        })
    }

    /// CPU seconds used since the start, and wall seconds passed.
    fn used(&self) -> Option<(f64, f64)> {
        let cpu = cpu_seconds_of(self.pid)? - self.cpu;
        Some((cpu, self.wall.elapsed().as_secs_f64()))
    }

    /// "1.1 cores, 48 µs per message": cores used over the span and CPU per item handled.
    fn describe(span: Option<&Self>, items: u64, item: &str) -> String {
        match span.and_then(Self::used) {
            Some((cpu, wall)) => format!(
                "{:.2} cores, {:.0} µs per {item}",
                cpu / wall.max(1e-9),
                cpu * 1e6 / items.max(1) as f64
            ),
            None => "not measured (no local process)".into(),
        }
    }

    /// "1.4 s per second": how long the process's threads, together, were ready to run but
    /// had no core, per second of the span.
    fn describe_runnable_wait(span: Option<&Self>) -> String {
        let waited = span.and_then(|span| {
            let waited = runnable_wait_seconds_of(span.pid)? - span.runnable_wait?;
            Some(waited / span.wall.elapsed().as_secs_f64().max(1e-9))
        });
        match waited {
            Some(waited) => format!("{waited:.2} s per second, summed over its threads"),
            None => "not measured (no schedstat)".into(),
        }
    }
}

/// The `callkeeper run` child process.
struct WorkerProcess {
    child: tokio::process::Child,
    pid: u32,
    started: Instant,
    api: String,
    log: PathBuf,
    http: reqwest::Client,
    /// VmHWM read just before the process was stopped.
    peak_rss_kib: Option<u64>,
}

impl WorkerProcess {
    fn spawn(rig: &Rig, log: &Path) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let started = Instant::now();
        let child = tokio::process::Command::new(&rig.worker)
            .args(["run", "--config"])
            .arg(&rig.config_path)
            .env("RUST_LOG", "info")
            // One JSON object per line, so the bench can read figures the worker logs.
            .env("CALLKEEPER_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .context("starting the worker")?;
        let pid = child.id().context("the worker exited at once")?;
        Ok(Self {
            child,
            pid,
            started,
            api: rig.api.clone(),
            log: log.to_path_buf(),
            http: reqwest::Client::new(),
            peak_rss_kib: None,
        })
    }

    /// Fails (with the end of the worker's log) when the process has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the worker exited ({status}); its log ends:\n{}",
                log_tail(&self.log)
            );
        }
        Ok(())
    }

    async fn is_ready(&self) -> bool {
        self.http
            .get(format!("{}/readyz", self.api))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// Polls `/readyz` every 10 ms; returns the time from process start to the first 200.
    async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<Duration> {
        loop {
            self.check_alive()?;
            if self.is_ready().await {
                return Ok(self.started.elapsed());
            }
            ensure!(
                self.started.elapsed() < within,
                "the worker was not ready within {}; its log ends:\n{}",
                secs(within),
                log_tail(&self.log)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn status_field(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    }

    fn current_rss_kib(&self) -> Option<u64> {
        self.status_field("VmRSS:")
    }

    /// SIGTERM, then waits up to a minute for the exit; records the peak RSS first. A worker
    /// that stops with an error or too slowly is reported, not fatal: that is a finding.
    async fn terminate(&mut self) -> anyhow::Result<Stopped> {
        self.peak_rss_kib = self.status_field("VmHWM:");
        let asked = Instant::now();
        if self.child.try_wait()?.is_none() {
            // `kill` rather than a signal crate: the bench needs no unsafe and no extra dependency.
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &self.pid.to_string()])
                .status();
        }
        let stopped = match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(status) => Stopped {
                took: asked.elapsed(),
                clean: status?.success(),
            },
            Err(_) => {
                let _ = self.child.kill().await;
                Stopped {
                    took: asked.elapsed(),
                    clean: false,
                }
            }
        };
        if !stopped.clean {
            eprintln!(
                "  note: the worker did not stop cleanly after SIGTERM ({}); its log ends:\n{}",
                millis(stopped.took),
                log_tail(&self.log)
            );
        }
        Ok(stopped)
    }
}

/// How a worker ended after SIGTERM.
#[derive(Debug, Clone, Copy)]
struct Stopped {
    took: Duration,
    /// Exit status 0 within the bench's minute.
    clean: bool,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = if self.clean { "clean" } else { "NOT clean" };
        write!(f, "{how}, {}", millis(self.took))
    }
}

/// The worker's last log line saying `message`, with its fields.
fn last_logged(log: &Path, message: &str) -> Option<serde_json::Value> {
    std::fs::read_to_string(log)
        .ok()?
        .lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["message"] == message)
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Counts stored callbacks by reading the worker's SQLite file read-only (the API's paging
/// would be far too slow at these sizes). Connects lazily: the worker creates the file.
struct StoreProbe {
    path: PathBuf,
    conn: Option<SqliteConnection>,
}

impl StoreProbe {
    fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            conn: None,
        }
    }

    /// Callbacks stored.
    async fn count(&mut self) -> Option<u64> {
        self.rows("callbacks").await
    }

    /// Lifecycle events in the outbox: written, not yet confirmed by the broker and removed.
    async fn unpublished(&mut self) -> Option<u64> {
        self.rows("event_outbox").await
    }

    async fn rows(&mut self, table: &str) -> Option<u64> {
        if self.conn.is_none() {
            if !self.path.exists() {
                return None;
            }
            let options = SqliteConnectOptions::new()
                .filename(&self.path)
                .read_only(true)
                .busy_timeout(Duration::from_secs(5));
            self.conn = Some(options.connect().await.ok()?);
        }
        let conn = self.conn.as_mut()?;
        match sqlx::query(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&mut *conn)
            .await
        {
            Ok(row) => Some(row.get::<i64, _>(0) as u64),
            // No table yet (migrations still running): try again later.
            Err(_) => None,
        }
    }

    async fn close(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
        }
    }
}

/// The outbox's backlog against the requests stored (each wrote at least one event), so a
/// worker that stores fast by leaving its events behind shows it.
fn events_waiting(unpublished: Option<u64>, stored: u64) -> String {
    match unpublished {
        Some(events) => format!(
            "{} (requests stored: {})",
            thousands(events),
            thousands(stored)
        ),
        None => "? (the store could not be read)".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Broker helpers.

/// A connection for declaring, measuring and deleting.
struct Broker {
    _connection: Connection,
    channel: Channel,
}

impl Broker {
    async fn connect(url: &str) -> anyhow::Result<Self> {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .context("connecting to RabbitMQ")?;
        let channel = connection.create_channel().await?;
        Ok(Self {
            _connection: connection,
            channel,
        })
    }

    /// Messages ready in `queue` (not counting those handed out and unacked).
    async fn depth(&self, queue: &str) -> anyhow::Result<u64> {
        let declared = self
            .channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(u64::from(declared.message_count()))
    }

    /// A durable quorum queue, like the worker's intake queue.
    async fn declare_quorum(&self, queue: &str) -> anyhow::Result<()> {
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                arguments,
            )
            .await?;
        Ok(())
    }

    /// Drops every ready message of `queue`.
    async fn purge(&self, queue: &str) -> anyhow::Result<()> {
        self.channel
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await?;
        Ok(())
    }

    async fn delete_queue(&self, queue: &str) {
        if let Err(error) = self
            .channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await
        {
            eprintln!("  note: could not delete queue {queue}: {error}");
        }
    }
}

/// A confirm-mode channel on its own connection that keeps many publishes in flight.
struct Publisher {
    _connection: Connection,
    channel: Channel,
}

impl Publisher {
    async fn connect(url: &str) -> anyhow::Result<Self> {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .context("connecting to RabbitMQ")?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            _connection: connection,
            channel,
        })
    }

    async fn send(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
    ) -> anyhow::Result<PublisherConfirm> {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/cloudevents+json".into());
        Ok(self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await?)
    }

    /// Publishes `body(i)` for every `i` in `range`, with up to [`CONFIRM_WINDOW`] confirms
    /// outstanding; returns once every one is confirmed.
    async fn publish_range(
        &self,
        exchange: &str,
        routing_key: &str,
        range: std::ops::Range<u64>,
        body: impl Fn(u64) -> Vec<u8>,
    ) -> anyhow::Result<()> {
        let mut in_flight = VecDeque::with_capacity(CONFIRM_WINDOW);
        for i in range {
            if in_flight.len() >= CONFIRM_WINDOW {
                confirmed(in_flight.pop_front().expect("window is full")).await?;
            }
            in_flight.push_back(self.send(exchange, routing_key, &body(i)).await?);
        }
        for confirm in in_flight {
            confirmed(confirm).await?;
        }
        Ok(())
    }

    /// Publishes `body(next++)` until `stop`, then waits for the outstanding confirms; returns
    /// how many were confirmed.
    async fn publish_until(
        &self,
        exchange: &str,
        routing_key: &str,
        stop: &CancellationToken,
        next: &AtomicU64,
        body: impl Fn(u64) -> Vec<u8>,
    ) -> anyhow::Result<u64> {
        let mut in_flight = VecDeque::with_capacity(CONFIRM_WINDOW);
        let mut count = 0;
        while !stop.is_cancelled() {
            if in_flight.len() >= CONFIRM_WINDOW {
                confirmed(in_flight.pop_front().expect("window is full")).await?;
                count += 1;
            }
            let i = next.fetch_add(1, Ordering::Relaxed);
            in_flight.push_back(self.send(exchange, routing_key, &body(i)).await?);
        }
        for confirm in in_flight {
            confirmed(confirm).await?;
            count += 1;
        }
        Ok(count)
    }
}

async fn confirmed(confirm: PublisherConfirm) -> anyhow::Result<()> {
    ensure!(
        confirm.await?.is_ack(),
        "the broker did not confirm a publish"
    );
    Ok(())
}

/// Numbers from here on are for the cloned rows, far above anything published.
const PHONE_CLONE_BASE: u64 = 20_000_000;
/// Numbers a run may use: `+3161…` to `+3165…`, ten million each.
const PHONE_LIMIT: u64 = 50_000_000;

/// Multiplying by this modulo 10^7 is a bijection on 7-digit numbers (3^14 shares no factor with
/// 10^7), so consecutive requests get distinct numbers far apart.
const PHONE_SCATTER: u64 = 4_782_969;
/// The same over 9 digits (3^18 and 10^9), for SQLite alone's copies.
const FLOOR_PHONE_SCATTER: u64 = 387_420_489;

/// The `i`-th distinct valid Dutch mobile number: `+3161` + 7 digits for the first ten million,
/// then `+3162…` and so on. The 7 digits are `i` scattered: callers' numbers come in no order,
/// and the store's index on them costs what it costs only if the bench's do not either (in
/// order, they made SQLite's writes look 44 % cheaper, BENCHMARKS.md).
fn phone(i: u64) -> String {
    format!(
        "+316{}{:07}",
        1 + i / 10_000_000,
        (i % 10_000_000) * PHONE_SCATTER % 10_000_000
    )
}

/// [`phone`] as an SQLite expression, for rows the bench writes in SQL; `i` is an expression.
fn phone_sql(i: &str) -> String {
    format!(
        "printf('+316%d%07d', 1 + ({i}) / 10000000, ({i}) % 10000000 * {PHONE_SCATTER} % 10000000)"
    )
}

/// Fails early when a size would need numbers outside the valid ranges.
fn check_phone_ranges(largest: u64) -> anyhow::Result<()> {
    ensure!(
        largest < PHONE_CLONE_BASE && PHONE_CLONE_BASE + largest < PHONE_LIMIT,
        "sizes above {} need more phone number ranges",
        thousands(PHONE_CLONE_BASE)
    );
    for i in [0, 9_999_999, 10_000_000, PHONE_CLONE_BASE, PHONE_LIMIT - 1] {
        Phone::parse(&phone(i)).map_err(|e| anyhow::anyhow!("{}: {e}", phone(i)))?;
    }
    Ok(())
}

/// A `callback.requested` CloudEvent for the `i`-th number, due at `due` (a one-hour window
/// from then) or as soon as possible. Its id is a random UUID, as IVRs make them: idempotency
/// keys then land all over their index, as in production and in the SQLite-alone figure.
fn request_body(i: u64, due: Option<DateTime<Utc>>) -> Vec<u8> {
    let mut data = json!({ "phone": phone(i), "queue": QUEUE });
    if let Some(due) = due {
        data["window"] = json!({
            "not_before": due.to_rfc3339_opts(SecondsFormat::Millis, true),
            "not_after": (due + chrono::Duration::hours(1)).to_rfc3339_opts(SecondsFormat::Millis, true),
        });
    }
    let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    callkeeper::ivr::cloud_event("callback.requested", &id.to_string(), data)
        .to_string()
        .into_bytes()
}

// ---------------------------------------------------------------------------------------------
// The webhook receiver: verifies every signature and records when each request arrived.

#[derive(Debug, Clone)]
struct Arrival {
    at: DateTime<Utc>,
    notice: String,
    webhook_id: String,
    callback_id: String,
    due_at: DateTime<Utc>,
}

struct ReceiverState {
    secrets: Vec<SecretString>,
    arrivals: Mutex<Vec<Arrival>>,
    by_notice: Mutex<HashMap<String, usize>>,
    rejected: AtomicUsize,
}

struct BenchReceiver {
    addr: SocketAddr,
    state: Arc<ReceiverState>,
    stop: CancellationToken,
}

impl BenchReceiver {
    async fn start(secret: SecretString) -> anyhow::Result<Self> {
        let state = Arc::new(ReceiverState {
            secrets: vec![secret],
            arrivals: Mutex::new(Vec::new()),
            by_notice: Mutex::new(HashMap::new()),
            rejected: AtomicUsize::new(0),
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/{*path}", post(receive))
            .with_state(state.clone());
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stopped.cancelled_owned())
                .await;
        });
        Ok(Self { addr, state, stop })
    }

    fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    fn count(&self, notice: &str) -> usize {
        self.state
            .by_notice
            .lock()
            .expect("counts lock")
            .get(notice)
            .copied()
            .unwrap_or(0)
    }

    fn arrivals(&self) -> Vec<Arrival> {
        self.state.arrivals.lock().expect("arrivals lock").clone()
    }

    fn rejected(&self) -> usize {
        self.state.rejected.load(Ordering::Relaxed)
    }
}

impl Drop for BenchReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    // Taken first, so the time spent verifying is not counted against the worker.
    let at = Utc::now();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let Ok(body) = std::str::from_utf8(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let webhook_id = header("webhook-id");
    if signing::verify(
        &state.secrets,
        webhook_id,
        header("webhook-timestamp"),
        header("webhook-signature"),
        body,
        at,
        signing::DEFAULT_TOLERANCE,
    )
    .is_err()
    {
        state.rejected.fetch_add(1, Ordering::Relaxed);
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(json) = serde_json::from_str::<serde_json::Value>(body) else {
        return StatusCode::BAD_REQUEST;
    };
    let notice = json["type"].as_str().unwrap_or_default().to_owned();
    let data = &json["data"];
    let Some(due_at) = data["due_at"]
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
    else {
        return StatusCode::BAD_REQUEST;
    };
    let arrival = Arrival {
        at,
        notice: notice.clone(),
        webhook_id: webhook_id.to_owned(),
        callback_id: data["callback_id"].as_str().unwrap_or_default().to_owned(),
        due_at: due_at.with_timezone(&Utc),
    };
    state.arrivals.lock().expect("arrivals lock").push(arrival);
    *state
        .by_notice
        .lock()
        .expect("counts lock")
        .entry(notice)
        .or_default() += 1;
    StatusCode::NO_CONTENT
}

// ---------------------------------------------------------------------------------------------
// The report.

#[derive(Default)]
struct Report {
    /// (what, value, target, met), ratios and targets first.
    targets: Vec<(String, String, String, bool)>,
    /// (scenario, figure, value).
    figures: Vec<(String, String, String)>,
    /// Anything that happened to the run itself (a scenario retried).
    notes: Vec<String>,
}

impl Report {
    fn target(&mut self, what: impl Into<String>, value: String, target: &str, met: bool) {
        let what = what.into();
        eprintln!(
            "  {what}: {value} (target {target}: {})",
            if met { "met" } else { "MISSED" }
        );
        self.targets.push((what, value, target.into(), met));
    }

    fn absorb(&mut self, other: Report) {
        self.targets.extend(other.targets);
        self.figures.extend(other.figures);
        self.notes.extend(other.notes);
    }

    fn figure(&mut self, scenario: &str, figure: &str, value: String) {
        eprintln!("  {scenario}: {figure}: {value}");
        self.figures.push((scenario.into(), figure.into(), value));
    }

    async fn markdown(&self, env: &Env, sizes: &Sizes, quick: bool) -> String {
        let mut out = String::new();
        let now = Utc::now().format("%Y-%m-%d %H:%M UTC");
        let _ = writeln!(
            out,
            "## Run of {now} ({} mode)\n",
            if quick { "quick" } else { "full" }
        );
        let _ = writeln!(out, "- command: `{}`", env.command);
        if let Some(commit) = git_commit().await {
            let _ = writeln!(out, "- callkeeper commit: `{commit}`");
        }
        let _ = writeln!(out, "- machine: {}", machine().await);
        let _ = writeln!(
            out,
            "- worker: `{}` ({} build), as a child process with a generated config",
            env.worker.display(),
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
        );
        let overrides: Vec<String> = std::env::vars()
            .filter(|(key, _)| key.starts_with("CALLKEEPER__") && !key.contains("URL"))
            .map(|(key, value)| format!("`{key}={value}`"))
            .collect();
        if !overrides.is_empty() {
            let _ = writeln!(out, "- worker environment: {}", overrides.join(", "));
        }
        let _ = writeln!(
            out,
            "- calling window: {}",
            if env.default_calling_window {
                "the worker's default (08:00-21:00 callee time)"
            } else {
                "open all day (`every_day = [\"00:00-24:00\"]`), so results do not depend on the hour"
            }
        );
        let _ = writeln!(
            out,
            "- sizes: backlog {}, storm {}, on time {} over {} + burst {}, booked ahead {}\n",
            thousands(sizes.backlog),
            secs(sizes.storm),
            thousands(sizes.spread),
            secs(sizes.spread_over),
            thousands(sizes.burst),
            thousands(sizes.booked)
        );
        let _ = writeln!(out, "### Targets\n");
        let _ = writeln!(out, "| figure | value | target | met |");
        let _ = writeln!(out, "|---|---|---|---|");
        for (what, value, target, met) in &self.targets {
            let _ = writeln!(out, "| {what} | {value} | {target} | {} |", yes_no(*met));
        }
        for note in &self.notes {
            let _ = writeln!(out, "\nNote: {note}");
        }
        let _ = writeln!(out, "\n### All figures\n");
        let _ = writeln!(out, "| scenario | figure | value |");
        let _ = writeln!(out, "|---|---|---|");
        for (scenario, figure, value) in &self.figures {
            let _ = writeln!(out, "| {scenario} | {figure} | {value} |");
        }
        out
    }
}

/// The checked-out commit, when the bench runs inside the repository.
async fn git_commit() -> Option<String> {
    let output = tokio::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .stderr(Stdio::null())
        .output()
        .await
        .ok()
        .filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Cores, memory and RabbitMQ version, for the record.
async fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or("? GB".into(), |kib| {
            format!("{:.1} GiB", kib as f64 / 1_048_576.0)
        });
    let rabbit = tokio::process::Command::new("rabbitmqctl")
        .arg("version")
        .stderr(Stdio::null())
        .output()
        .await
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores ({cpu}), {memory} memory, RabbitMQ {rabbit}")
}

fn ms_floor(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at.timestamp_millis()).expect("in range")
}

fn rate(n: u64, took: Duration) -> String {
    format!(
        "{} in {} ({}/s)",
        thousands(n),
        secs(took),
        thousands((n as f64 / took.as_secs_f64()) as u64)
    )
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn millis(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

fn kib(value: Option<u64>) -> String {
    value.map_or("?".into(), |k| format!("{:.0} MB", k as f64 * 1024.0 / 1e6))
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_steady_rise_is_its_rate() {
        let samples: Vec<(f64, u64)> = (0..50).map(|i| (i as f64 * 0.1, 100 + 30 * i)).collect();
        assert!((slope(&samples) - 300.0).abs() < 1e-6);
        assert_eq!(slope(&[(0.0, 5)]), 0.0);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut values: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let p = Percentiles::of(&mut values);
        assert_eq!((p.p50, p.p99, p.max), (50.0, 99.0, 100.0));
        assert_eq!(Percentiles::of(&mut []).summary(0), "none delivered");
    }

    #[test]
    fn phone_numbers_are_distinct_and_valid_across_ranges() {
        check_phone_ranges(1_000_050).unwrap();
        assert_ne!(phone(9_999_999), phone(19_999_999));
        // Scattered: a run's numbers are distinct, and neighbours are not neighbours.
        let numbers: std::collections::HashSet<String> = (0..200_000).map(phone).collect();
        assert_eq!(numbers.len(), 200_000);
        assert_ne!(phone(1)[5..].parse::<u64>().unwrap(), 1);
        assert!(check_phone_ranges(PHONE_CLONE_BASE).is_err());
    }

    #[tokio::test]
    async fn phone_sql_makes_the_numbers_phone_makes() {
        let mut conn = SqliteConnectOptions::new()
            .filename(":memory:")
            .connect()
            .await
            .unwrap();
        for i in [0, 1, 9_999_999, 10_000_000, PHONE_CLONE_BASE + 12_345] {
            let made: String = sqlx::query_scalar(&format!("SELECT {}", phone_sql(&i.to_string())))
                .fetch_one(&mut conn)
                .await
                .unwrap();
            assert_eq!(made, phone(i));
        }
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000_050), "1,000,050");
    }
}
