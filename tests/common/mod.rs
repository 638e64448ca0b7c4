//! Black-box test harness: boots the real worker (in process, HTTP on port 0) against the real
//! RabbitMQ and a fresh SQLite file, with its own exchange and queue names, and a real local
//! webhook receiver that verifies every signature.
#![allow(dead_code)]

pub mod broker;
pub mod process;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use callkeeper::clock::{SharedClock, SystemClock};
use callkeeper::config::Config;
use callkeeper::ivr::IvrPublisher;
use callkeeper::notify::receiver::{ReceivedWebhook, Receiver};
use callkeeper::store::SharedStore;
use lapin::options::BasicGetOptions;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const TOKEN: &str = "test-token";

/// Queue settings a test can change before start; times are short so tests run fast.
pub struct Setup {
    pub queue_toml: String,
    pub clock: SharedClock,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            queue_toml: r#"
                initial_delay = "0s"
                at_risk_lead = "1s"
                retry_delays = ["300ms"]
                max_attempts = 3
                sla = { normal = "1h", high = "30m", urgent = "10m" }
            "#
            .into(),
            clock: Arc::new(SystemClock),
        }
    }
}

pub struct TestApp {
    pub api: String,
    pub names: String,
    pub store: SharedStore,
    pub ivr: IvrPublisher,
    pub http: reqwest::Client,
    pub receiver: Receiver,
    pub webhooks: mpsc::UnboundedReceiver<ReceivedWebhook>,
    pub config: Config,
    shutdown: CancellationToken,
    worker: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

pub fn new_secret() -> SecretString {
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
    )
    .into()
}

/// Unique names per test, so tests run in parallel on one broker.
pub fn unique_names() -> String {
    format!("ck.test.{}", uuid::Uuid::now_v7().simple())
}

/// A full configuration file for a test: HTTP on `port` (0: any), the given queue body under
/// `[queues.support]`, short retry times.
pub fn config_text(
    names: &str,
    db: &std::path::Path,
    receiver_url: &str,
    secret: &SecretString,
    port: u16,
    queue_toml: &str,
) -> String {
    format!(
        r#"
        drain_timeout = "5s"
        [calling_window.default]
        every_day = ["00:00-24:00"]
        [amqp]
        url = "{AMQP_URL}"
        exchange = "{names}"
        queue = "{names}.intake"
        dead_letter_exchange = "{names}.dlx"
        dead_letter_queue = "{names}.dead"
        events_exchange = "{names}.events"
        reconnect_max_delay = "1s"
        [store]
        url = "sqlite://{db}"
        [http]
        listen = "127.0.0.1:{port}"
        public_url = "http://127.0.0.1:{port}"
        api_tokens = ["{TOKEN}"]
        [schedule]
        horizon = "10s"
        [notify]
        retry_base = "50ms"
        retry_max = "1s"
        max_tries = 5
        [queues.support]
        webhook_url = "{receiver_url}/agents"
        escalation_url = "{receiver_url}/supervisors"
        signing_secrets = ["{secret}"]
        {queue_toml}
        "#,
        db = db.display(),
        secret = secret.expose_secret(),
    )
}

pub async fn spawn_app(setup: Setup) -> TestApp {
    callkeeper::telemetry::init_logging(Default::default(), "warn");
    let dir = tempfile::tempdir().unwrap();
    let secret = new_secret();
    let (receiver, webhooks) = Receiver::start(vec![secret.clone()]).await.unwrap();
    let names = unique_names();
    let text = config_text(
        &names,
        &dir.path().join("callkeeper.db"),
        &receiver.url(),
        &secret,
        0,
        &setup.queue_toml,
    );
    let config = Config::from_toml_with_env(&text, []).expect("test config is valid");
    let running = callkeeper::app::start(config.clone(), setup.clock)
        .await
        .expect("worker starts");
    let api = format!("http://{}", running.http_addr);
    let store = running.store.clone();
    let shutdown = running.shutdown_token();
    let worker = tokio::spawn(running.run_until(std::future::pending()));
    assert!(wait_ready(&api).await, "worker did not become ready");
    let ivr = IvrPublisher::connect(AMQP_URL, &names).await.unwrap();
    TestApp {
        api,
        names,
        store,
        ivr,
        http: reqwest::Client::new(),
        receiver,
        webhooks,
        config,
        shutdown,
        worker: Some(worker),
        _dir: dir,
    }
}

impl TestApp {
    /// Waits for the next webhook matching `pred`, skipping others; panics after `within`.
    pub async fn next_webhook(
        &mut self,
        within: Duration,
        pred: impl Fn(&ReceivedWebhook) -> bool,
    ) -> ReceivedWebhook {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.webhooks.recv()).await {
                Ok(Some(webhook)) if pred(&webhook) => return webhook,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("receiver closed"),
                Err(_) => panic!("no matching webhook within {within:?}"),
            }
        }
    }

    /// Every webhook that arrives within `within`.
    pub async fn webhooks_for(&mut self, within: Duration) -> Vec<ReceivedWebhook> {
        let deadline = tokio::time::Instant::now() + within;
        let mut all = Vec::new();
        while let Ok(Some(webhook)) = tokio::time::timeout_at(deadline, self.webhooks.recv()).await
        {
            all.push(webhook);
        }
        all
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.api))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.api))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Takes one message from the dead-letter queue: (reason header, detail header, body).
    pub async fn dead_letter(&self, within: Duration) -> Option<(String, String, Vec<u8>)> {
        let connection = lapin::Connection::connect(AMQP_URL, Default::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        let queue = format!("{}.dead", self.names);
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if let Some(message) = channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                let headers = message
                    .delivery
                    .properties
                    .headers()
                    .clone()
                    .unwrap_or_default();
                let text = |key: &str| {
                    headers
                        .inner()
                        .get(key)
                        .and_then(|v| v.as_long_string().map(|s| s.to_string()))
                        .unwrap_or_default()
                };
                return Some((
                    text("x-callkeeper-reason"),
                    text("x-callkeeper-detail"),
                    message.delivery.data.clone(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Waits until the store holds `n` callbacks; false after `within`.
    pub async fn wait_stored(&self, n: usize, within: Duration) -> bool {
        let store = self.store.clone();
        wait_for(within, || {
            let store = store.clone();
            async move {
                store
                    .list(&Default::default())
                    .await
                    .is_ok_and(|l| l.len() == n)
            }
        })
        .await
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(worker) = self.worker.take() {
            let _ = worker.await;
        }
        delete_topology(&self.names).await;
    }
}

/// Deletes the exchanges and queues a test's worker declared under `names`.
pub async fn delete_topology(names: &str) {
    let config = callkeeper::config::AmqpConfig {
        exchange: names.to_string(),
        queue: format!("{names}.intake"),
        dead_letter_exchange: format!("{names}.dlx"),
        dead_letter_queue: format!("{names}.dead"),
        events_exchange: format!("{names}.events"),
        ..Default::default()
    };
    let Ok(connection) = lapin::Connection::connect(AMQP_URL, Default::default()).await else {
        return;
    };
    if let Ok(channel) = connection.create_channel().await {
        let _ = callkeeper::intake::topology::delete(&channel, &config).await;
    }
}

/// Polls `check` every 20 ms until it holds or `within` passes.
pub async fn wait_for<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Waits up to 30 s for `/readyz` to answer 200.
pub async fn wait_ready(api: &str) -> bool {
    wait_for(Duration::from_secs(30), || {
        let url = format!("{api}/readyz");
        async move {
            reqwest::get(url)
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await
}

/// Every callback, through the API's cursor paging.
pub async fn list_all(http: &reqwest::Client, api: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{api}/v1/callbacks?limit=500");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let Ok(response) = http.get(&url).bearer_auth(TOKEN).send().await else {
            return all;
        };
        let Ok(page) = response.json::<Value>().await else {
            return all;
        };
        all.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return all,
        }
    }
}

/// The rules of one `support` queue with its defaults, for tests that need a policy but no
/// worker.
pub fn support_rules() -> callkeeper::schedule::Rules {
    let config = Config::from_toml_with_env(
        r#"
        [queues.support]
        webhook_url = "http://127.0.0.1:9000/hooks"
        signing_secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
        sla = { normal = "4h", high = "1h", urgent = "15m" }
        "#,
        [],
    )
    .expect("test config is valid");
    callkeeper::schedule::Rules::from_config(&config)
}

/// A plain callback request for `phone` in the `support` queue.
pub fn support_request(phone: &str) -> callkeeper::domain::inbound::CallbackRequest {
    callkeeper::domain::inbound::CallbackRequest {
        queue: callkeeper::domain::QueueName::parse("support").unwrap(),
        phone: callkeeper::domain::Phone::parse(phone).unwrap(),
        priority: callkeeper::domain::Priority::Normal,
        window: None,
        customer: None,
        agent_id: None,
        context: None,
        call: None,
    }
}
