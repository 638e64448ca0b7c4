//! The intake worker against the real RabbitMQ on 127.0.0.1:5672 and a real SQLite file.
//! Every test declares its own exchanges and queues (random suffix), so tests run in parallel.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use callkeeper::clock::SystemClock;
use callkeeper::config::{AmqpConfig, Config};
use callkeeper::domain::{Callback, QueueName};
use callkeeper::intake::{Intake, DETAIL_HEADER, REASON_HEADER};
use callkeeper::schedule::{Rules, Wakeups};
use callkeeper::store::{ListFilter, SharedStore, SqliteStore, Store, StoreSettings};
use callkeeper::telemetry::{Health, SharedHealth};
use common::broker::{connections_named, rabbitmqctl};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const CALLBACK_ID: &str = "01890a5d-ac96-774b-bcce-b302099a8057";
const WAIT: Duration = Duration::from_secs(15);

const TOML: &str = r#"
[http]
public_url = "http://callkeeper.test"

[queues.support]
webhook_url = "http://127.0.0.1:9/agents"
signing_secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
sla = { normal = "4h", high = "1h", urgent = "15m" }
"#;

struct Harness {
    amqp: AmqpConfig,
    store: SharedStore,
    store_url: String,
    health: SharedHealth,
    shutdown: CancellationToken,
    worker: JoinHandle<anyhow::Result<()>>,
    publisher: Connection,
    channel: Channel,
    _dir: TempDir,
}

impl Harness {
    async fn start() -> Self {
        callkeeper::telemetry::init_logging(callkeeper::telemetry::LogFormat::Text, "info");
        callkeeper::telemetry::metrics_handle();
        let suffix = uuid::Uuid::now_v7().simple().to_string();
        let amqp = AmqpConfig {
            url: BROKER.into(),
            declare_topology: true,
            exchange: format!("ck-test-{suffix}"),
            queue: format!("ck-test-{suffix}.intake"),
            dead_letter_exchange: format!("ck-test-{suffix}.dlx"),
            dead_letter_queue: format!("ck-test-{suffix}.dead"),
            events_exchange: format!("ck-test-{suffix}.events"),
            prefetch: 32,
            reconnect_max_delay: Duration::from_secs(2),
        };
        let dir = tempfile::tempdir().unwrap();
        let store_url = format!("sqlite://{}/callkeeper.db", dir.path().display());
        let config = Config::from_toml_with_env(TOML, []).unwrap();
        let rules = Arc::new(Rules::from_config(&config));
        let (wakeups, _receivers) = Wakeups::new();
        let settings = StoreSettings {
            rules: rules.clone(),
            public_url: config.http.public_url.clone(),
            opt_out_period: Duration::from_secs(3600),
            wakeups,
        };
        let store = SqliteStore::connect(&store_url, settings).await.unwrap();
        store.migrate().await.unwrap();
        let store: SharedStore = Arc::new(store);
        let health: SharedHealth = Arc::new(Health::default());
        let shutdown = CancellationToken::new();
        let intake = Intake::new(
            amqp.clone(),
            store.clone(),
            rules,
            Arc::new(SystemClock),
            health.clone(),
        );
        let worker = tokio::spawn(intake.run(shutdown.clone()));

        // Publish only once the worker has declared the topology.
        let probe = health.clone();
        eventually("the worker connects", || {
            let probe = probe.clone();
            async move { probe.amqp_connected() }
        })
        .await;
        let publisher = Connection::connect(BROKER, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = publisher.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Self {
            amqp,
            store,
            store_url,
            health,
            shutdown,
            worker,
            publisher,
            channel,
            _dir: dir,
        }
    }

    async fn publish(&self, routing_key: &str, body: &[u8], properties: BasicProperties) {
        let confirm = self
            .channel
            .basic_publish(
                self.amqp.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
        assert!(confirm.take_message().is_none(), "published unroutably");
    }

    async fn publish_event(&self, event: &Value) {
        let kind = event["type"].as_str().unwrap();
        self.publish(
            kind,
            event.to_string().as_bytes(),
            BasicProperties::default().with_content_type("application/cloudevents+json".into()),
        )
        .await;
    }

    async fn callbacks(&self) -> Vec<Callback> {
        self.store
            .list(&ListFilter {
                queue: Some(QueueName::parse("support").unwrap()),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap()
    }

    async fn wait_for_phone(&self, phone: &str) -> Callback {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(found) = self
                .callbacks()
                .await
                .into_iter()
                .find(|c| c.phone.as_str() == phone)
            {
                return found;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "callback for {phone} never stored"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Takes up to `count` dead letters, waiting for them to arrive.
    async fn dead_letters(&self, count: usize) -> Vec<lapin::message::Delivery> {
        let mut letters = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while letters.len() < count {
            let got = self
                .channel
                .basic_get(
                    self.amqp.dead_letter_queue.as_str().into(),
                    BasicGetOptions { no_ack: true },
                )
                .await
                .unwrap();
            match got {
                Some(message) => letters.push(message.delivery),
                None => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "only {} of {count} dead letters arrived",
                        letters.len()
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        letters
    }

    /// Messages ready (not delivered) in a queue.
    async fn ready(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count()
    }

    /// Stops the worker, checks it ends cleanly, and removes this test's topology.
    async fn finish(self) {
        self.shutdown.cancel();
        let ended = tokio::time::timeout(WAIT, self.worker)
            .await
            .expect("worker stops after shutdown");
        ended.unwrap().expect("run returns Ok at shutdown");
        assert!(!self.health.amqp_connected());
        for queue in [&self.amqp.queue, &self.amqp.dead_letter_queue] {
            let _ = self
                .channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for exchange in [&self.amqp.exchange, &self.amqp.dead_letter_exchange] {
            let _ = self
                .channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = self.publisher.close(200, "done".into()).await;
    }
}

/// Polls `check` every 20 ms for up to 15 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn event(id: &str, kind: &str, data: Value) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "test/ivr", "type": kind, "data": data})
}

fn request(id: &str, phone: &str) -> Value {
    event(
        id,
        "callback.requested",
        json!({"phone": phone, "queue": "support"}),
    )
}

fn header(delivery: &lapin::message::Delivery, name: &str) -> Option<String> {
    match delivery.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        other => panic!("unexpected header type {other:?}"),
    }
}

/// The broker's pids of the worker's intake connections, found by connection name.
fn worker_connections(queue: &str) -> Vec<String> {
    connections_named(&format!("callkeeper intake {queue}"))
}

/// Messages delivered to the worker and not yet acked, as the broker counts them.
async fn unacked(queue: &str) -> u64 {
    let queue = queue.to_owned();
    tokio::task::spawn_blocking(move || unacked_now(&queue))
        .await
        .unwrap()
}

fn unacked_now(queue: &str) -> u64 {
    rabbitmqctl(&[
        "-q",
        "list_queues",
        "--no-table-headers",
        "name",
        "messages_unacknowledged",
    ])
    .lines()
    .find_map(|line| {
        let (name, count) = line.split_once('\t')?;
        (name == queue).then(|| count.trim().parse().ok())?
    })
    .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_dead_lettered_once_with_their_reason() {
    let h = Harness::start().await;
    let json = "application/cloudevents+json";
    let req = request("ok-shape", "+31612345601");
    let with_data = |data: Value| event("bad", "callback.requested", data);

    // (case, routing key, body, content type, expected reason)
    let mut cases: Vec<(&str, &str, Vec<u8>, &str, &str)> = vec![
        (
            "too_large",
            "callback.requested",
            vec![b' '; 70 * 1024],
            json,
            "too_large",
        ),
        (
            "empty",
            "callback.requested",
            Vec::new(),
            json,
            "empty_body",
        ),
        (
            "not_utf8",
            "callback.requested",
            vec![0xff, 0xfe],
            json,
            "not_utf8",
        ),
        (
            "content_type",
            "callback.requested",
            req.to_string().into_bytes(),
            "text/plain",
            "unsupported_content_type",
        ),
        (
            "json",
            "callback.requested",
            b"{\"a\":".to_vec(),
            json,
            "invalid_json",
        ),
        (
            "deep",
            "callback.requested",
            "[".repeat(10_000).into_bytes(),
            json,
            "invalid_json",
        ),
        (
            "not_object",
            "callback.requested",
            b"[]".to_vec(),
            json,
            "missing_field",
        ),
    ];
    let json_cases: Vec<(&str, &str, Value, &str)> = vec![
        (
            "no_id",
            "callback.requested",
            json!({"specversion": "1.0", "source": "s", "type": "callback.requested", "data": {}}),
            "missing_field",
        ),
        (
            "specversion",
            "callback.requested",
            json!({"specversion": "0.3", "id": "1", "source": "s", "type": "callback.requested", "data": {}}),
            "unsupported_specversion",
        ),
        (
            "type",
            "callback.exploded",
            event("bad", "callback.exploded", json!({})),
            "unsupported_type",
        ),
        (
            "time",
            "callback.requested",
            json!({"specversion": "1.0", "id": "1", "source": "s", "type": "callback.requested", "time": "noon", "data": {}}),
            "invalid_time",
        ),
        (
            "data",
            "callback.requested",
            event("bad", "callback.requested", json!("x")),
            "invalid_data",
        ),
        (
            "phone",
            "callback.requested",
            with_data(json!({"phone": "+3161234", "queue": "support"})),
            "invalid_phone",
        ),
        (
            "queue",
            "callback.requested",
            with_data(json!({"phone": "+31612345601", "queue": "nope"})),
            "unknown_queue",
        ),
        (
            "priority",
            "callback.requested",
            with_data(json!({"phone": "+31612345601", "queue": "support", "priority": "asap"})),
            "invalid_priority",
        ),
        (
            "window",
            "callback.requested",
            with_data(
                json!({"phone": "+31612345601", "queue": "support", "window": {"not_before": "2030-01-01T12:00:00Z", "not_after": "2030-01-01T11:00:00Z"}}),
            ),
            "invalid_window",
        ),
        (
            "timezone",
            "callback.requested",
            with_data(
                json!({"phone": "+31612345601", "queue": "support", "customer": {"timezone": "Mars/Olympus"}}),
            ),
            "invalid_timezone",
        ),
        (
            "context",
            "callback.requested",
            with_data(json!({"phone": "+31612345601", "queue": "support", "context": "x"})),
            "invalid_context",
        ),
        (
            "callback_id",
            "callback.cancelled",
            event("bad", "callback.cancelled", json!({"callback_id": "nope"})),
            "invalid_callback_id",
        ),
        (
            "reason",
            "callback.cancelled",
            event(
                "bad",
                "callback.cancelled",
                json!({"callback_id": CALLBACK_ID, "reason": "bored"}),
            ),
            "invalid_reason",
        ),
        (
            "outcome",
            "callback.attempted",
            event(
                "bad",
                "callback.attempted",
                json!({"callback_id": CALLBACK_ID, "outcome": "hung_up", "agent_id": "a"}),
            ),
            "invalid_outcome",
        ),
        (
            "agent",
            "callback.attempted",
            event(
                "bad",
                "callback.attempted",
                json!({"callback_id": CALLBACK_ID, "outcome": "busy"}),
            ),
            "missing_field",
        ),
        (
            "cancel_target",
            "callback.cancelled",
            event("bad", "callback.cancelled", json!({"reason": "other"})),
            "missing_field",
        ),
    ];
    for (case, key, value, reason) in json_cases {
        cases.push((case, key, value.to_string().into_bytes(), json, reason));
    }

    // Refused by the store rather than the decoder: a number that opted out, and a key reused
    // with another payload.
    h.publish_event(&event(
        "opt",
        "contact.opted_out",
        json!({"phone": "+31612345602"}),
    ))
    .await;
    h.publish_event(&request("taken", "+31612345603")).await;
    let store_cases = [
        (
            "opted_out",
            request("after-opt-out", "+31612345602"),
            "opted_out",
        ),
        (
            "conflict",
            request("taken", "+31612345604"),
            "idempotency_conflict",
        ),
    ];

    for (case, key, body, content_type, _) in &cases {
        let mut headers = FieldTable::default();
        headers.insert("x-test-case".into(), AMQPValue::LongString((*case).into()));
        let properties = BasicProperties::default()
            .with_content_type((*content_type).into())
            .with_headers(headers);
        h.publish(key, body, properties).await;
    }
    for (case, value, _) in &store_cases {
        let mut headers = FieldTable::default();
        headers.insert("x-test-case".into(), AMQPValue::LongString((*case).into()));
        let properties = BasicProperties::default()
            .with_content_type(json.into())
            .with_headers(headers);
        h.publish(
            "callback.requested",
            value.to_string().as_bytes(),
            properties,
        )
        .await;
    }
    // A good message after all the bad ones still goes through.
    h.publish_event(&request("good-after-bad", "+31612345605"))
        .await;
    h.wait_for_phone("+31612345605").await;
    h.wait_for_phone("+31612345603").await;

    let expected = cases.len() + store_cases.len();
    let letters = h.dead_letters(expected).await;
    for (case, key, body, _, reason) in &cases {
        let letter = letters
            .iter()
            .find(|l| header(l, "x-test-case").as_deref() == Some(*case))
            .unwrap_or_else(|| panic!("no dead letter for case {case}"));
        assert_eq!(
            header(letter, REASON_HEADER).as_deref(),
            Some(*reason),
            "case {case}"
        );
        let detail = header(letter, DETAIL_HEADER).expect("detail header");
        assert!(!detail.is_empty());
        assert!(
            !detail.contains("612345"),
            "case {case} leaks a phone: {detail}"
        );
        assert_eq!(
            letter.routing_key.as_str(),
            *key,
            "case {case} keeps its routing key"
        );
        assert_eq!(&letter.data, body, "case {case} keeps its body");
    }
    for (case, _, reason) in &store_cases {
        let letter = letters
            .iter()
            .find(|l| header(l, "x-test-case").as_deref() == Some(*case))
            .unwrap_or_else(|| panic!("no dead letter for case {case}"));
        assert_eq!(
            header(letter, REASON_HEADER).as_deref(),
            Some(*reason),
            "case {case}"
        );
    }
    // Dead-lettered once, not requeued in a loop: nothing more arrives and nothing waits.
    assert_eq!(h.ready(&h.amqp.dead_letter_queue).await, 0);
    assert_eq!(h.ready(&h.amqp.queue).await, 0);
    let phones: Vec<String> = h
        .callbacks()
        .await
        .iter()
        .map(|c| c.phone.as_str().to_owned())
        .collect();
    assert!(!phones
        .iter()
        .any(|p| p == "+31612345602" || p == "+31612345604"));
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_messages_are_stored_once_even_when_republished() {
    let h = Harness::start().await;
    let first = request("evt-1", "+31612345611");
    h.publish_event(&first).await;
    let stored = h.wait_for_phone("+31612345611").await;
    assert_eq!(stored.requests, 1);

    // The same event again (a producer retry) changes nothing and is acked.
    h.publish_event(&first).await;
    h.publish_event(&first).await;
    // A marker behind them: once it is stored, the republished copies were handled.
    h.publish_event(&request("evt-2", "+31612345612")).await;
    h.wait_for_phone("+31612345612").await;

    let callbacks = h.callbacks().await;
    assert_eq!(callbacks.len(), 2);
    let again = callbacks
        .iter()
        .find(|c| c.phone.as_str() == "+31612345611")
        .unwrap();
    assert_eq!(again.id, stored.id);
    assert_eq!(
        again.requests, 1,
        "a republished event is not a new request"
    );
    assert_eq!(h.ready(&h.amqp.queue).await, 0);
    assert_eq!(h.ready(&h.amqp.dead_letter_queue).await, 0);
    let queue = h.amqp.queue.clone();
    eventually("everything is acked", || {
        let queue = queue.clone();
        async move { unacked(&queue).await == 0 }
    })
    .await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_by_itself_after_the_broker_drops_the_connection() {
    let h = Harness::start().await;
    h.publish_event(&request("before", "+31612345621")).await;
    h.wait_for_phone("+31612345621").await;

    let queue = h.amqp.queue.clone();
    let before = worker_connections(&queue);
    assert_eq!(before.len(), 1, "one worker connection: {before:?}");
    rabbitmqctl(&["close_connection", &before[0], "test"]);

    // A new connection under the same name means the worker reconnected on its own.
    eventually("the worker reconnects", || {
        let queue = queue.clone();
        let old = before[0].clone();
        async move {
            let now = tokio::task::spawn_blocking(move || worker_connections(&queue))
                .await
                .unwrap();
            now.len() == 1 && now[0] != old
        }
    })
    .await;
    h.publish_event(&request("after", "+31612345622")).await;
    h.wait_for_phone("+31612345622").await;
    assert!(h.health.amqp_connected());
    h.finish().await;
}

/// A store that cannot write (another process holds SQLite's write lock) is a transient
/// failure: the message stays unacked and is applied once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_holds_the_message_unacked_until_the_store_is_back() {
    use sqlx::Connection as _;

    let h = Harness::start().await;
    let mut locker = sqlx::SqliteConnection::connect(&h.store_url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut locker)
        .await
        .unwrap();
    let failures_before = store_failures();

    h.publish_event(&request("during-outage", "+31612345631"))
        .await;
    // The worker holds the message and its write fails (after SQLite's busy timeout).
    eventually("the store write fails", || async {
        store_failures() > failures_before
    })
    .await;
    assert_eq!(
        unacked(&h.amqp.queue).await,
        1,
        "the message is held, not acked"
    );
    assert!(h.callbacks().await.is_empty());
    assert_eq!(
        h.ready(&h.amqp.dead_letter_queue).await,
        0,
        "not dead-lettered"
    );

    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    let stored = h.wait_for_phone("+31612345631").await;
    assert_eq!(stored.requests, 1);
    let queue = h.amqp.queue.clone();
    eventually("the message is acked", || {
        let queue = queue.clone();
        async move { unacked(&queue).await == 0 }
    })
    .await;
    h.finish().await;
}

/// `callkeeper_intake_store_failures_total` from the process-wide recorder.
fn store_failures() -> u64 {
    callkeeper::telemetry::metrics_handle()
        .render()
        .lines()
        .find(|l| l.starts_with("callkeeper_intake_store_failures_total"))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0)
}
