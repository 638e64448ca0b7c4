//! RabbitMQ restarts during a run: the worker notices, reports not ready, reconnects by itself
//! and resumes; nothing is lost and nothing applied twice — neither requests coming in nor
//! lifecycle events going out (changes made while the broker is down reach the events exchange,
//! in order, once it is back).
//!
//! This restarts the shared broker, so it is the only test in its binary: `cargo test` runs test
//! binaries one after another, so no other test sees the broker go away.

mod common;

use common::broker::rabbitmqctl;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use callkeeper::ivr::IvrPublisher;
use common::{spawn_app, Setup};
use serde_json::{json, Value};

/// A durable queue bound to every lifecycle event, so events survive the restart for reading.
async fn event_sink(names: &str) -> String {
    let connection = lapin::Connection::connect(common::AMQP_URL, Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let exchange = format!("{names}.events");
    let durable = lapin::options::ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            durable,
            Default::default(),
        )
        .await
        .unwrap();
    let queue = format!("{names}.events-sink");
    let options = lapin::options::QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.as_str().into(), options, Default::default())
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "#".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    queue
}

/// Event types per callback, in arrival order, duplicates (same event id) dropped.
async fn drain_events(queue: &str) -> HashMap<String, Vec<String>> {
    let connection = lapin::Connection::connect(common::AMQP_URL, Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut seen = HashSet::new();
    let mut by_callback: HashMap<String, Vec<String>> = HashMap::new();
    let get = lapin::options::BasicGetOptions { no_ack: true };
    while let Some(message) = channel.basic_get(queue.into(), get).await.unwrap() {
        let event: Value = serde_json::from_slice(&message.delivery.data).unwrap();
        if seen.insert(event["id"].as_str().unwrap().to_string()) {
            let kind = event["type"]
                .as_str()
                .unwrap()
                .trim_start_matches("callkeeper.callback.")
                .to_string();
            by_callback
                .entry(event["subject"].as_str().unwrap().to_string())
                .or_default()
                .push(kind);
        }
    }
    let _ = channel.queue_delete(queue.into(), Default::default()).await;
    by_callback
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_recovers_from_a_broker_restart_without_losing_anything() {
    let mut app = spawn_app(Setup::default()).await;
    let sink = event_sink(&app.names).await;
    for i in 0..50 {
        app.ivr
            .publish(
                "callback.requested",
                json!({ "phone": format!("+3161{i:07}"), "queue": "support" }),
            )
            .await
            .unwrap();
    }

    assert!(app.wait_stored(50, Duration::from_secs(15)).await);
    // Callbacks whose first events are out before the broker goes away.
    let first_five: Vec<String> = app.store.list(&Default::default()).await.unwrap()[..5]
        .iter()
        .map(|c| c.id.to_string())
        .collect();
    let http = reqwest::Client::new();
    let all_due = common::wait_for(Duration::from_secs(15), || {
        let (http, api) = (http.clone(), app.api.clone());
        async move {
            common::list_all(&http, &api)
                .await
                .iter()
                .filter(|c| c["state"] == "due")
                .count()
                == 50
        }
    })
    .await;
    assert!(all_due);

    rabbitmqctl(&["stop_app"]);
    // Agents keep working while the broker is down; the events wait in the outbox.
    for id in &first_five {
        let (status, _) = app
            .post(
                &format!("/v1/callbacks/{id}/claim"),
                json!({ "agent_id": "a-1" }),
            )
            .await;
        assert_eq!(status, 200);
        let (status, _) = app
            .post(
                &format!("/v1/callbacks/{id}/attempts"),
                json!({ "agent_id": "a-1", "outcome": "connected" }),
            )
            .await;
        assert_eq!(status, 200);
    }
    let api = app.api.clone();
    let not_ready = common::wait_for(Duration::from_secs(20), || {
        let url = format!("{api}/readyz");
        async move {
            reqwest::get(url)
                .await
                .is_ok_and(|r| r.status().as_u16() == 503)
        }
    })
    .await;
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);
    assert!(
        not_ready,
        "/readyz reports not ready while the broker is down"
    );

    assert!(
        common::wait_ready(&app.api).await,
        "worker reconnected by itself"
    );
    let ivr = IvrPublisher::connect(common::AMQP_URL, &app.names)
        .await
        .unwrap();
    for i in 50..100 {
        ivr.publish(
            "callback.requested",
            json!({ "phone": format!("+3161{i:07}"), "queue": "support" }),
        )
        .await
        .unwrap();
    }

    let http = reqwest::Client::new();
    let api = app.api.clone();
    let all = common::wait_for(Duration::from_secs(30), || {
        let (http, api) = (http.clone(), api.clone());
        async move { common::list_all(&http, &api).await.len() == 100 }
    })
    .await;
    assert!(all, "all 100 requests stored");
    let dues = app.webhooks_for(Duration::from_secs(3)).await;
    let mut callbacks: Vec<_> = dues
        .iter()
        .filter(|w| w.notice_type == "callback.due")
        .map(|w| w.body["data"]["callback_id"].as_str().unwrap().to_string())
        .collect();
    callbacks.sort();
    callbacks.dedup();
    assert_eq!(callbacks.len(), 100, "every callback got its due webhook");
    assert_eq!(
        common::list_all(&http, &app.api).await.len(),
        100,
        "nothing applied twice"
    );

    let store = app.store.clone();
    let outbox_empty = common::wait_for(Duration::from_secs(20), || {
        let store = store.clone();
        async move { store.stats().await.is_ok_and(|s| s.event_backlog == 0) }
    })
    .await;
    assert!(outbox_empty, "every event published after the restart");
    let events = drain_events(&sink).await;
    for id in &first_five {
        assert_eq!(
            events.get(id).cloned().unwrap_or_default(),
            ["requested", "due", "claimed", "attempted", "completed"],
            "events of {id} complete and in order"
        );
    }
    assert_eq!(events.len(), 100, "every callback's events went out");
    app.stop().await;
}
