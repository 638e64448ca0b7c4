//! The delivery worker: sends pending deliveries from the store as signed webhooks and records
//! each try there, so retries survive a restart.
//!
//! One loop owns the scheduling: it fetches ready deliveries, keeps a small in-memory backlog per
//! endpoint, and starts sends within a global and a per-endpoint limit, so a slow endpoint only
//! holds back its own deliveries. Each send runs in its own task that also records the result.
//! The single step "sign, send, classify" is [`try_delivery`], testable without the loop.

use std::collections::{HashMap, HashSet, VecDeque};
use std::error::Error as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use backon::{ExponentialBuilder, Retryable as _};
use chrono::{DateTime, Utc};
use rand::Rng as _;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use secrecy::SecretString;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing::{debug, error, info, warn};

use super::{signing, Delivery};
use crate::clock::{Clock, SharedClock};
use crate::config::NotifyConfig;
use crate::domain::lifecycle::Notice;
use crate::schedule::{DeliveryInbox, Rules};
use crate::store::{SharedStore, StoreError, TryResult};

/// Sent as `User-Agent`, so endpoint owners can tell our requests apart.
pub const USER_AGENT: &str = concat!("callkeeper/", env!("CARGO_PKG_VERSION"));

/// Look at the store at least this often, in case a wakeup was missed or the clock jumped.
const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Idle pooled connections are dropped after this: well under most servers' keep-alive, so we do
/// not send on a connection the server is closing (reqwest's default of 90 s outlives most).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT_MAX: Duration = Duration::from_secs(5);
/// A `Retry-After` further out than this is treated as this: a notice about a callback is useless
/// a day later, and a broken header should not park it for years.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(24 * 3600);
/// How much of a response body is read so the connection can go back to the pool.
const RESPONSE_DRAIN_MAX: usize = 64 * 1024;
/// Most deliveries fetched per store query beyond those already held in memory.
const FETCH_MAX: usize = 2000;
/// Most finished tries recorded in one store transaction.
const RECORD_BATCH: usize = 512;
/// How long shutdown waits for in-flight sends beyond the request timeout.
const DRAIN_MARGIN: Duration = Duration::from_secs(5);

/// The one HTTP client for webhooks: redirects are not followed (a webhook endpoint that
/// redirects is misconfigured, and following would re-send the signed body elsewhere).
pub fn http_client(config: &NotifyConfig) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(config.timeout)
        .connect_timeout(config.timeout.min(CONNECT_TIMEOUT_MAX))
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .user_agent(USER_AGENT)
        .build()
}

/// What an endpoint answered to one try, before the retry policy is applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// An HTTP answer; `retry_after` is the `Retry-After` header as a delay from now.
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// No HTTP answer (connect failure, timeout, TLS…). The text never holds the URL.
    Error(String),
}

/// Sends one signed try of `delivery`; `timestamp` is the `webhook-timestamp` (unix seconds).
pub async fn send(
    client: &reqwest::Client,
    delivery: &Delivery,
    secrets: &[SecretString],
    timestamp: i64,
) -> Reply {
    let signature = signing::signature_header(secrets, &delivery.id, timestamp, &delivery.body);
    let sent = client
        .post(&delivery.url)
        .header(CONTENT_TYPE, "application/json")
        .header("webhook-id", &delivery.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(delivery.body.clone())
        .send()
        .await;
    match sent {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(parse_retry_after);
            // Read a bounded part of the body so the connection can be reused; the answer is
            // the status, so a failure while reading does not matter.
            let mut read = 0;
            while read < RESPONSE_DRAIN_MAX {
                match response.chunk().await {
                    Ok(Some(chunk)) => read += chunk.len(),
                    _ => break,
                }
            }
            Reply::Status {
                status,
                retry_after,
            }
        }
        Err(err) => Reply::Error(describe(err)),
    }
}

/// `Retry-After` as seconds or as an HTTP date, as a delay from now, capped.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            // A date in the past means "now".
            at.duration_since(SystemTime::now()).unwrap_or_default()
        }
    };
    Some(delay.min(RETRY_AFTER_MAX))
}

/// A transport error as text without the URL (its query string may hold a token).
fn describe(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut text = if err.is_timeout() {
        "timed out".to_owned()
    } else if err.is_connect() {
        "could not connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Turns a reply into what the store records. `tries` is how many tries came before this one.
///
/// 2xx delivered; 410 gone; 429 retried after `Retry-After` (or backoff); anything else —
/// redirects (not followed), other 4xx, 5xx, no answer — retried with backoff, until
/// `max_tries` tries have been made and the delivery is given up (kept, replayable).
pub fn classify(reply: &Reply, tries: u32, config: &NotifyConfig, now: DateTime<Utc>) -> TryResult {
    let (status, error, retry_after) = match reply {
        Reply::Status { status, .. } if (200..300).contains(status) => {
            return TryResult::Delivered { status: *status }
        }
        Reply::Status { status: 410, .. } => return TryResult::Gone,
        Reply::Status {
            status: 429,
            retry_after,
        } => (Some(429), status_text(429), *retry_after),
        Reply::Status { status, .. } if (300..400).contains(status) => (
            Some(*status),
            format!("{} (redirects are not followed)", status_text(*status)),
            None,
        ),
        Reply::Status { status, .. } => (Some(*status), status_text(*status), None),
        Reply::Error(error) => (None, error.clone(), None),
    };
    let retry_at = (tries + 1 < config.max_tries)
        .then(|| later(now, retry_after.unwrap_or_else(|| backoff(config, tries))));
    TryResult::Failed {
        status,
        error,
        retry_at,
    }
}

fn status_text(status: u16) -> String {
    let reason = reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason());
    match reason {
        Some(reason) => format!("HTTP {status} {reason}"),
        None => format!("HTTP {status}"),
    }
}

/// The delay before the retry after `tries` earlier tries: `retry_base * 2^tries`, capped at
/// `retry_max`, with full jitter so endpoints coming back are not hit by one wave.
pub fn backoff(config: &NotifyConfig, tries: u32) -> Duration {
    let ceiling = config
        .retry_base
        .saturating_mul(2u32.saturating_pow(tries))
        .min(config.retry_max);
    ceiling.mul_f64(rand::rng().random_range(0.0..=1.0))
}

fn later(now: DateTime<Utc>, delay: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(delay)
        .ok()
        .and_then(|delay| now.checked_add_signed(delay))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// One try of `delivery`: sign with its queue's secrets, send, classify. Emits the try's log
/// line and metrics. The `webhook-timestamp` is wall-clock time, because receivers check it
/// against their own clocks; schedule times come from `clock`.
pub async fn try_delivery(
    client: &reqwest::Client,
    rules: &Rules,
    config: &NotifyConfig,
    clock: &dyn Clock,
    delivery: &Delivery,
) -> TryResult {
    let Some(policy) = rules.queue(&delivery.queue) else {
        let result = TryResult::Failed {
            status: None,
            error: format!(
                "queue '{}' is not configured, so there is no signing secret",
                delivery.queue
            ),
            retry_at: None,
        };
        report(delivery, &result);
        return result;
    };
    let started = Instant::now();
    if delivery.notice == Notice::Due && delivery.tries == 0 {
        record_firing_lateness(delivery, clock.now());
    }
    let reply = send(
        client,
        delivery,
        &policy.signing_secrets,
        Utc::now().timestamp(),
    )
    .await;
    metrics::histogram!("callkeeper_webhook_duration_seconds", "notice" => delivery.notice.as_str())
        .record(started.elapsed().as_secs_f64());
    let result = classify(&reply, delivery.tries, config, clock.now());
    report(delivery, &result);
    result
}

/// Firing lateness: from the callback's due time (in the body) to its due webhook's first send.
/// Reads only `data.due_at`; serde skips the rest of the body without building it.
fn record_firing_lateness(delivery: &Delivery, now: DateTime<Utc>) {
    #[derive(serde::Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        data: Data<'a>,
    }
    #[derive(serde::Deserialize)]
    struct Data<'a> {
        due_at: &'a str,
    }
    let due_at = serde_json::from_str::<Body>(&delivery.body)
        .ok()
        .and_then(|body| DateTime::parse_from_rfc3339(body.data.due_at).ok());
    if let Some(due_at) = due_at {
        let late = (now - due_at.with_timezone(&Utc)).num_milliseconds().max(0) as f64 / 1000.0;
        metrics::histogram!("callkeeper_firing_lateness_seconds").record(late);
    }
}

/// The log line and counter for one try, together.
fn report(delivery: &Delivery, result: &TryResult) {
    let outcome = match result {
        TryResult::Delivered { .. } => "delivered",
        TryResult::Gone => "gone",
        TryResult::Failed {
            retry_at: Some(_), ..
        } => "retry",
        TryResult::Failed { retry_at: None, .. } => "gave_up",
    };
    metrics::counter!(
        "callkeeper_webhook_deliveries_total",
        "notice" => delivery.notice.as_str(),
        "result" => outcome,
    )
    .increment(1);
    let delivery_id = delivery.id.as_str();
    let notice = delivery.notice.as_str();
    let queue = delivery.queue.as_str();
    let endpoint = endpoint_for_logs(&delivery.url);
    let try_number = delivery.tries + 1;
    match result {
        TryResult::Delivered { status } => {
            debug!(
                delivery_id,
                notice, queue, endpoint, status, try_number, "Webhook delivered."
            )
        }
        TryResult::Gone => warn!(
            delivery_id,
            notice,
            queue,
            endpoint,
            status = 410,
            "Webhook endpoint answered 410 Gone; it is disabled until a delivery is replayed."
        ),
        TryResult::Failed {
            status,
            error,
            retry_at: Some(retry_at),
        } => info!(
            delivery_id, notice, queue, endpoint, status, error, try_number, %retry_at,
            "Webhook try failed; will retry."
        ),
        TryResult::Failed {
            status,
            error,
            retry_at: None,
        } => warn!(
            delivery_id,
            notice,
            queue,
            endpoint,
            status,
            error,
            try_number,
            "Webhook delivery gave up; it is kept and can be replayed."
        ),
    }
}

/// A URL fit for logs: no user info, query string or fragment (they may hold tokens).
pub fn endpoint_for_logs(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut url) => {
            url.set_query(None);
            url.set_fragment(None);
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        }
        Err(_) => "<invalid url>".to_owned(),
    }
}

/// The delivery worker. Build with [`Notifier::new`], then [`Notifier::run`] until shutdown.
pub struct Notifier {
    store: SharedStore,
    rules: Arc<Rules>,
    config: NotifyConfig,
    clock: SharedClock,
    /// Where the store puts the deliveries it made, or asks for a look at the store.
    inbox: DeliveryInbox,
}

/// What every send task needs.
struct Worker {
    client: reqwest::Client,
    rules: Arc<Rules>,
    config: NotifyConfig,
    clock: SharedClock,
    /// Finished tries go to the [`Recorder`].
    finished: mpsc::UnboundedSender<Finished>,
}

impl Worker {
    /// Sends one try and hands its result to the recorder; returns when the delivery should be
    /// looked at again. The slots are freed on return, before the try is recorded: they bound
    /// requests to endpoints, not writes. The loop holds the delivery until it is recorded, so
    /// it is not sent twice meanwhile.
    async fn send(
        &self,
        delivery: Delivery,
        _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    ) -> Option<DateTime<Utc>> {
        let result = try_delivery(
            &self.client,
            &self.rules,
            &self.config,
            self.clock.as_ref(),
            &delivery,
        )
        .await;
        let retry_at = match &result {
            TryResult::Failed { retry_at, .. } => *retry_at,
            _ => None,
        };
        // The recorder outlives every send task; if it is gone, shutdown is cutting us off and
        // the delivery stays pending, to be sent again under the same `webhook-id`.
        let _ = self.finished.send((delivery.id, result));
        retry_at
    }
}

/// A try, sent and classified, on its way to the store: the delivery id and the result.
type Finished = (String, TryResult);

/// Writes finished tries to the store, all that queued up meanwhile in one transaction, so a
/// burst of deliveries costs a few commits instead of one each (group commit). Tells the loop
/// which deliveries are recorded, so it can let go of them.
struct Recorder {
    store: SharedStore,
    clock: SharedClock,
    finished: mpsc::UnboundedReceiver<Finished>,
    recorded: mpsc::UnboundedSender<Vec<String>>,
}

impl Recorder {
    /// Runs until every sender is gone and the last tries are recorded.
    async fn run(mut self) {
        let mut batch = Vec::new();
        while self.finished.recv_many(&mut batch, RECORD_BATCH).await > 0 {
            self.record(&batch).await;
            let ids = batch.drain(..).map(|(id, _)| id).collect();
            // The loop is gone only at the end of shutdown, when nothing needs letting go.
            let _ = self.recorded.send(ids);
        }
    }

    /// The results are kept and recording retried while the store is down: losing them would
    /// resend (harmless, same `webhook-id`) but also lose a give-up or a 410.
    async fn record(&self, tries: &[Finished]) {
        let recorded = (|| self.store.record_tries(tries, self.clock.now()))
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(30))
                    .with_jitter()
                    .without_max_times(),
            )
            .when(StoreError::is_transient)
            .notify(|err, retry_in| {
                warn!(tries = tries.len(), error = %err, ?retry_in, "Could not record webhook tries; retrying.")
            })
            .await;
        if let Err(err) = recorded {
            error!(tries = tries.len(), error = %err, "Could not record webhook tries.");
        }
    }
}

/// The loop's in-memory view: deliveries fetched and not yet finished, by endpoint.
struct Lanes {
    /// Every delivery fetched and not yet finished (waiting or sending), so a fetch that sees it
    /// again (it stays pending in the store until recorded) does not send it twice.
    held: HashSet<String>,
    /// Deliveries waiting for a send slot, per endpoint URL.
    waiting: HashMap<String, VecDeque<Delivery>>,
    global: Arc<Semaphore>,
    per_endpoint: HashMap<String, Arc<Semaphore>>,
    max_in_flight: usize,
    max_per_endpoint: usize,
    /// Most deliveries held waiting per endpoint; beyond it they stay in the store, so memory
    /// stays bounded when one endpoint is slow.
    backlog_per_endpoint: usize,
    /// Ready deliveries the last fetch left in the store because their endpoint's backlog was full.
    skipped: usize,
    /// Whether the store may have more ready deliveries than the last fetch took.
    more_ready: bool,
}

impl Lanes {
    fn new(config: &NotifyConfig) -> Self {
        Self {
            held: HashSet::new(),
            waiting: HashMap::new(),
            global: Arc::new(Semaphore::new(config.max_in_flight)),
            per_endpoint: HashMap::new(),
            max_in_flight: config.max_in_flight,
            max_per_endpoint: config.max_in_flight_per_endpoint,
            // Deep enough that a burst to one endpoint needs few store reads, small enough to
            // bound memory: 32 bodies per slot.
            backlog_per_endpoint: config.max_in_flight_per_endpoint.max(1) * 32,
            skipped: 0,
            more_ready: false,
        }
    }

    /// How many to ask the store for, besides the ones we hold: past the ones we skipped, so
    /// deliveries to other endpoints come into view.
    fn fetch_limit(&self) -> u32 {
        let limit = (self.skipped + self.max_in_flight).min(FETCH_MAX);
        u32::try_from(limit.max(1)).unwrap_or(u32::MAX)
    }

    /// Takes what a fetch read from the store.
    fn take(&mut self, ready: Vec<Delivery>, limit: u32) {
        let full = ready.len() >= limit as usize;
        self.skipped = self.admit(ready);
        self.more_ready = full || self.skipped > 0;
    }

    /// Takes what the store handed over; those whose lane is full are left to a later fetch.
    fn take_handed(&mut self, handed: Vec<Delivery>) {
        if self.admit(handed) > 0 {
            self.more_ready = true;
        }
    }

    /// Puts deliveries not held yet in their lanes; returns how many found their lane full.
    fn admit(&mut self, deliveries: Vec<Delivery>) -> usize {
        let mut left = 0;
        for delivery in deliveries {
            if self.held.contains(&delivery.id) {
                continue;
            }
            let lane = self.waiting.entry(delivery.url.clone()).or_default();
            if lane.len() >= self.backlog_per_endpoint {
                left += 1;
                continue;
            }
            self.held.insert(delivery.id.clone());
            lane.push_back(delivery);
        }
        left
    }

    /// Starts every waiting delivery that has both a global and an endpoint slot, one endpoint
    /// at a time in turn so a long backlog does not starve the others.
    fn dispatch(
        &mut self,
        worker: &Arc<Worker>,
        tasks: &mut JoinSet<Option<DateTime<Utc>>>,
        running: &mut HashMap<tokio::task::Id, String>,
    ) {
        let max_per_endpoint = self.max_per_endpoint;
        loop {
            let mut started = false;
            for (url, lane) in self.waiting.iter_mut() {
                if lane.is_empty() {
                    continue;
                }
                let endpoint = self
                    .per_endpoint
                    .entry(url.clone())
                    .or_insert_with(|| Arc::new(Semaphore::new(max_per_endpoint)));
                let Ok(local) = endpoint.clone().try_acquire_owned() else {
                    continue;
                };
                let Ok(global) = self.global.clone().try_acquire_owned() else {
                    break;
                };
                let delivery = lane.pop_front().expect("lane is not empty");
                let delivery_id = delivery.id.clone();
                let worker = worker.clone();
                // Every log line of this try carries the callback and the delivery.
                let span = tracing::info_span!(
                    "delivery",
                    callback_id = delivery.callback_id.map(tracing::field::display),
                    delivery_id = %delivery.id,
                    notice = %delivery.notice,
                );
                let handle = tasks.spawn(
                    async move { worker.send(delivery, (global, local)).await }.instrument(span),
                );
                running.insert(handle.id(), delivery_id);
                started = true;
            }
            if !started || self.global.available_permits() == 0 {
                break;
            }
        }
        self.waiting.retain(|_, lane| !lane.is_empty());
        // Forget idle endpoints so the map does not grow with every URL ever seen.
        let waiting = &self.waiting;
        self.per_endpoint.retain(|url, endpoint| {
            endpoint.available_permits() < max_per_endpoint || waiting.contains_key(url)
        });
        self.report_in_flight();
    }

    /// Lets go of a delivery whose try is recorded (or was never made).
    fn finished(&mut self, delivery_id: &str) {
        self.held.remove(delivery_id);
        self.report_in_flight();
    }

    fn report_in_flight(&self) {
        let in_flight = self.max_in_flight - self.global.available_permits();
        metrics::gauge!("callkeeper_webhook_in_flight").set(in_flight as f64);
    }
}

impl Notifier {
    pub fn new(
        store: SharedStore,
        rules: Arc<Rules>,
        config: NotifyConfig,
        clock: SharedClock,
        inbox: DeliveryInbox,
    ) -> Self {
        Self {
            store,
            rules,
            config,
            clock,
            inbox,
        }
    }

    /// Delivers until `shutdown`, then waits a bounded time for sends in flight. A send cut off
    /// is safe: it stays pending in the store and is sent again with the same `webhook-id`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let client = http_client(&self.config).context("building the webhook HTTP client")?;
        let drain_timeout = self.config.timeout + DRAIN_MARGIN;
        let (finished, to_record) = mpsc::unbounded_channel();
        let (recorded_tx, mut recorded) = mpsc::unbounded_channel();
        let recorder = tokio::spawn(
            Recorder {
                store: self.store.clone(),
                clock: self.clock.clone(),
                finished: to_record,
                recorded: recorded_tx,
            }
            .run(),
        );
        let worker = Arc::new(Worker {
            client,
            rules: self.rules.clone(),
            config: self.config.clone(),
            clock: self.clock.clone(),
            finished,
        });
        let mut lanes = Lanes::new(&self.config);
        let mut tasks = JoinSet::new();
        let mut running = HashMap::new();
        let mut fetch_now = true;
        // When to look at the store next without being woken.
        let mut next_look: Option<DateTime<Utc>> = None;
        let mut store_failures = 0u32;
        info!("Webhook delivery started.");

        loop {
            if fetch_now {
                match self.fetch(&mut lanes).await {
                    Ok(next) => {
                        store_failures = 0;
                        next_look = next;
                    }
                    Err(err) => {
                        store_failures += 1;
                        let retry_in = Duration::from_millis(250)
                            .saturating_mul(2u32.saturating_pow(store_failures.min(8)))
                            .min(POLL_INTERVAL);
                        warn!(error = %err, ?retry_in, "Could not read pending webhook deliveries.");
                        next_look = Some(later(self.clock.now(), retry_in));
                    }
                }
            }
            lanes.dispatch(&worker, &mut tasks, &mut running);

            let sleep_for = next_look
                .and_then(|at| (at - self.clock.now()).to_std().ok())
                .unwrap_or(Duration::ZERO);
            let sleep_for = if next_look.is_some() {
                sleep_for.min(POLL_INTERVAL)
            } else {
                POLL_INTERVAL
            };
            fetch_now = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(joined) = tasks.join_next_with_id() => {
                    // A send finished: its slots are free for the waiting ones. Its delivery
                    // stays held until the recorder reports it, unless the task died.
                    let retry_at = match joined {
                        Ok((id, retry_at)) => {
                            running.remove(&id);
                            retry_at
                        }
                        Err(err) => {
                            error!(error = %err, "A webhook send task failed.");
                            if let Some(delivery_id) = running.remove(&err.id()) {
                                lanes.finished(&delivery_id);
                            }
                            None
                        }
                    };
                    if let Some(retry_at) = retry_at {
                        next_look = Some(next_look.map_or(retry_at, |at| at.min(retry_at)));
                    }
                    false
                }
                Some(ids) = recorded.recv() => {
                    for delivery_id in ids {
                        lanes.finished(&delivery_id);
                    }
                    // Room in the lanes: refill them if the store holds more than we took.
                    lanes.more_ready
                }
                _ = self.inbox.rung() => self.empty_inbox(&mut lanes),
                _ = tokio::time::sleep(sleep_for) => true,
            };
        }

        let in_flight = tasks.len();
        if in_flight > 0 {
            info!(in_flight, "Waiting for webhook sends in flight.");
        }
        let drained = tokio::time::timeout(drain_timeout, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            let left = tasks.len();
            tasks.abort_all();
            warn!(
                left,
                "Stopped waiting for webhook sends; they stay pending and will be sent again."
            );
        }
        // The last sender goes with the worker; the recorder then writes what is left and ends.
        drop(worker);
        let recorder_abort = recorder.abort_handle();
        if tokio::time::timeout(DRAIN_MARGIN, recorder).await.is_err() {
            recorder_abort.abort();
            warn!("Stopped waiting to record webhook tries; those deliveries will be sent again.");
        }
        info!("Webhook delivery stopped.");
        Ok(())
    }

    /// Takes what the store handed over into the lanes; returns whether it asked for a look.
    fn empty_inbox(&self, lanes: &mut Lanes) -> bool {
        let inbox = self.inbox.take();
        lanes.take_handed(inbox.handed);
        inbox.look
    }

    /// Takes ready deliveries into the lanes; returns when the next one not yet ready is due.
    async fn fetch(&self, lanes: &mut Lanes) -> crate::store::Result<Option<DateTime<Utc>>> {
        let now = self.clock.now();
        let limit = lanes.fetch_limit();
        let ready = self.store.ready_deliveries(now, limit, &lanes.held).await?;
        lanes.take(ready, limit);
        // Handed over meanwhile: the read may have seen some of these too. Taken now, before
        // any is sent, each is taken once (the store hands over before a read can see them).
        if self.empty_inbox(lanes) {
            // Asked during the read, which may have missed it: look again.
            self.inbox.look();
        }
        // Ready ones we hold or skipped are handled by completions and the poll.
        let next = self.store.next_delivery_at().await?;
        Ok(next.filter(|at| *at > now))
    }
}
