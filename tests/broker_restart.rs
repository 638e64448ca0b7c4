//! RabbitMQ restarts during a run: the worker notices, reports not ready, reconnects by itself
//! and resumes; nothing is lost and nothing applied twice.
//!
//! This restarts the shared broker, so it is the only test in its binary: `cargo test` runs test
//! binaries one after another, so no other test sees the broker go away.

mod common;

use std::process::Command;
use std::time::Duration;

use callkeeper::ivr::IvrPublisher;
use common::{spawn_app, Setup};
use serde_json::json;

fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl")
        .args(args)
        .status()
        .expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl {args:?} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_recovers_from_a_broker_restart_without_losing_anything() {
    let mut app = spawn_app(Setup::default()).await;
    for i in 0..50 {
        app.ivr
            .publish(
                "callback.requested",
                json!({ "phone": format!("+3161{i:07}"), "queue": "support" }),
            )
            .await
            .unwrap();
    }

    rabbitmqctl(&["stop_app"]);
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
    app.stop().await;
}
