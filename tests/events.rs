//! Lifecycle events out, through the real worker, broker and store: each state change arrives as
//! a CloudEvent on the events exchange, in order per callback, and none is lost while the
//! worker's events connection is down.

mod common;

use common::broker::{connections_named, rabbitmqctl};
use std::collections::HashMap;
use std::time::Duration;

use common::{spawn_app, wait_for, Setup, TestApp, AMQP_URL};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, Consumer, ExchangeKind};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(15);

fn is(kind: &'static str) -> impl Fn(&callkeeper::notify::receiver::ReceivedWebhook) -> bool {
    move |w| w.notice_type == kind
}

/// A private queue bound to every callback event on the app's events exchange.
struct EventSink {
    _connection: Connection,
    consumer: Consumer,
    /// Every event received so far, in arrival order.
    seen: Vec<Value>,
}

impl EventSink {
    async fn bind(app: &TestApp) -> Self {
        let connection = Connection::connect(AMQP_URL, Default::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        let exchange = format!("{}.events", app.names);
        // The worker declares it too; declaring here first means no event can go unrouted
        // before the binding exists.
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.name().as_str().into(),
                exchange.as_str().into(),
                "callkeeper.callback.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let consumer = channel
            .basic_consume(
                queue.name().as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Self {
            _connection: connection,
            consumer,
            seen: Vec::new(),
        }
    }

    /// Receives until `done` holds for what was seen, or panics after `within`.
    async fn until(&mut self, within: Duration, done: impl Fn(&[Value]) -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        while !done(&self.seen) {
            let delivery = match tokio::time::timeout_at(deadline, self.consumer.next()).await {
                Ok(Some(delivery)) => delivery.unwrap(),
                Ok(None) => panic!("events consumer ended"),
                Err(_) => panic!(
                    "events did not arrive within {within:?}; seen: {:?}",
                    types(&self.seen)
                ),
            };
            let body: Value = serde_json::from_slice(&delivery.data).unwrap();
            assert_eq!(
                delivery.routing_key.as_str(),
                body["type"].as_str().unwrap(),
                "routing key is the event type"
            );
            assert_eq!(
                delivery.properties.delivery_mode(),
                &Some(2),
                "events are persistent"
            );
            delivery.ack(BasicAckOptions::default()).await.unwrap();
            self.seen.push(body);
        }
    }

    /// The short event names (`requested`, `due`, ...) seen for one callback, in order.
    fn for_callback(&self, id: &str) -> Vec<String> {
        short(
            &self
                .seen
                .iter()
                .filter(|e| e["subject"] == id)
                .cloned()
                .collect::<Vec<_>>(),
        )
    }
}

fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn short(events: &[Value]) -> Vec<String> {
    types(events)
        .into_iter()
        .map(|t| t.trim_start_matches("callkeeper.callback.").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callbacks_events_arrive_in_order() {
    let mut app = spawn_app(Setup::default()).await;
    let mut sink = EventSink::bind(&app).await;
    app.ivr
        .publish(
            "callback.requested",
            json!({ "phone": "+31612345678", "queue": "support", "priority": "high",
                    "context": { "reason": "debit failed" } }),
        )
        .await
        .unwrap();
    let due = app.next_webhook(WAIT, is("callback.due")).await;
    let id = due.body["data"]["callback_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = app
        .post(
            &format!("/v1/callbacks/{id}/claim"),
            json!({ "agent_id": "a-1" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .post(
            &format!("/v1/callbacks/{id}/attempts"),
            json!({ "agent_id": "a-1", "outcome": "connected" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let done = |seen: &[Value]| {
        seen.iter()
            .any(|e| e["type"] == "callkeeper.callback.completed")
    };
    sink.until(WAIT, done).await;
    assert_eq!(
        sink.for_callback(&id),
        ["requested", "due", "claimed", "attempted", "completed"]
    );

    let events: Vec<&Value> = sink.seen.iter().filter(|e| e["subject"] == id).collect();
    let mut ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "every event has its own id");
    for event in &events {
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["source"], "callkeeper");
        assert!(event["time"].as_str().unwrap().ends_with('Z'));
        let data = &event["data"];
        assert_eq!(data["callback_id"], id.as_str());
        assert_eq!(data["queue"], "support");
        assert_eq!(data["priority"], "high");
        assert!(data.get("phone").is_none(), "no phone number in events");
        assert!(
            !event.to_string().contains("12345678"),
            "the number appears nowhere in an event: {event}"
        );
        assert!(data.get("context").is_none(), "no context in events");
    }
    let attempted = events[3];
    assert_eq!(attempted["data"]["outcome"], "connected");
    assert_eq!(attempted["data"]["agent_id"], "a-1");
    assert_eq!(attempted["data"]["attempt"], 1);
    assert_eq!(attempted["data"]["sla"], "met");
    assert_eq!(events[2]["data"]["agent_id"], "a-1");
    assert_eq!(events[4]["data"]["state"], "completed");

    // Published events leave the outbox.
    let store = app.store.clone();
    assert!(
        wait_for(WAIT, || {
            let store = store.clone();
            async move { store.pending_events(0, 10).await.unwrap().is_empty() }
        })
        .await,
        "the outbox empties once the broker confirmed"
    );
    app.stop().await;
}

/// The broker's pids of the worker's events connections, found by connection name.
fn events_connections(exchange: &str) -> Vec<String> {
    connections_named(&format!("callkeeper events {exchange}"))
}

async fn events_connections_now(exchange: &str) -> Vec<String> {
    let exchange = exchange.to_owned();
    tokio::task::spawn_blocking(move || events_connections(&exchange))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_written_while_the_connection_is_down_arrive_after_it_is_back() {
    const CALLBACKS: usize = 5;
    let mut app = spawn_app(Setup::default()).await;
    let mut sink = EventSink::bind(&app).await;
    let exchange = format!("{}.events", app.names);
    for i in 0..CALLBACKS {
        app.ivr
            .publish(
                "callback.requested",
                json!({ "phone": format!("+3161234560{i}"), "queue": "support" }),
            )
            .await
            .unwrap();
    }
    let mut ids = Vec::new();
    for _ in 0..CALLBACKS {
        let due = app.next_webhook(WAIT, is("callback.due")).await;
        ids.push(
            due.body["data"]["callback_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let due_count = |seen: &[Value]| {
        seen.iter()
            .filter(|e| e["type"] == "callkeeper.callback.due")
            .count()
    };
    sink.until(WAIT, |seen| due_count(seen) == CALLBACKS).await;

    let mut before = Vec::new();
    assert!(
        wait_for(WAIT, || {
            let exchange = exchange.clone();
            async move { events_connections_now(&exchange).await.len() == 1 }
        })
        .await,
        "one events connection"
    );
    before.extend(events_connections_now(&exchange).await);
    let old = before[0].clone();
    {
        let old = old.clone();
        tokio::task::spawn_blocking(move || rabbitmqctl(&["close_connection", &old, "test"]))
            .await
            .unwrap();
    }
    // Changes made right after the broker dropped the connection: their events are written
    // while the publisher has no connection (it waits before reconnecting).
    for id in &ids {
        let (status, body) = app
            .post(
                &format!("/v1/callbacks/{id}/claim"),
                json!({ "agent_id": "a-1" }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = app
            .post(
                &format!("/v1/callbacks/{id}/attempts"),
                json!({ "agent_id": "a-1", "outcome": "connected" }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    let completed = |seen: &[Value]| {
        seen.iter()
            .filter(|e| e["type"] == "callkeeper.callback.completed")
            .count()
    };
    sink.until(Duration::from_secs(30), |seen| completed(seen) == CALLBACKS)
        .await;
    let now = events_connections_now(&exchange).await;
    assert!(
        now.len() == 1 && now[0] != old,
        "the publisher reconnected: before {old}, now {now:?}"
    );
    // Per callback: all five events, once each, in order (at-least-once delivery allows a
    // repeat only of events whose confirm was lost; dedupe by id before comparing).
    let mut by_id: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut seen_ids = std::collections::HashSet::new();
    for event in &sink.seen {
        if !seen_ids.insert(event["id"].as_str().unwrap().to_string()) {
            continue;
        }
        by_id
            .entry(event["subject"].as_str().unwrap())
            .or_default()
            .push(event["type"].as_str().unwrap());
    }
    for id in &ids {
        assert_eq!(
            by_id[id.as_str()],
            [
                "callkeeper.callback.requested",
                "callkeeper.callback.due",
                "callkeeper.callback.claimed",
                "callkeeper.callback.attempted",
                "callkeeper.callback.completed"
            ],
            "events of {id}"
        );
    }
    app.stop().await;
}
