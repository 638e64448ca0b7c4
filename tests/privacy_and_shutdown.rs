//! Runs the real binary with every log level on and checks no full phone number appears in its
//! output; then SIGTERM must stop it cleanly within the drain bound.

mod common;

use std::time::{Duration, Instant};

use callkeeper::ivr::IvrPublisher;
use common::process::WorkerProcess;
use serde_json::json;

const PHONES: [&str; 3] = ["+31612345678", "+31687654321", "+14155550123"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_hold_no_phone_number_and_sigterm_stops_cleanly() {
    let prepared = common::process::prepare(
        r#"
        at_risk_lead = "1s"
        sla = { normal = "2s", high = "2s", urgent = "2s" }
    "#,
    )
    .await;
    let common::process::Prepared {
        dir,
        names,
        api,
        config_path,
        receiver,
        mut webhooks,
    } = prepared;
    let log = dir.path().join("worker.log");
    let mut worker = WorkerProcess::start(&config_path, Some(&log), "trace");
    assert!(common::wait_ready(&api).await);

    let ivr = IvrPublisher::connect(common::AMQP_URL, &names)
        .await
        .unwrap();
    ivr.publish(
        "callback.requested",
        json!({ "phone": PHONES[0], "queue": "support", "context": { "note": "call me" } }),
    )
    .await
    .unwrap();
    ivr.publish(
        "callback.requested",
        json!({ "phone": PHONES[0], "queue": "support" }),
    )
    .await
    .unwrap();
    ivr.publish(
        "callback.requested",
        json!({ "phone": PHONES[1], "queue": "unknown-queue" }),
    )
    .await
    .unwrap();
    ivr.publish(
        "callback.requested",
        json!({ "phone": format!("{}99", PHONES[2]), "queue": "support" }),
    )
    .await
    .unwrap();
    ivr.publish("contact.opted_out", json!({ "phone": PHONES[2] }))
        .await
        .unwrap();
    ivr.publish(
        "callback.requested",
        json!({ "phone": PHONES[2], "queue": "support" }),
    )
    .await
    .unwrap();

    // Let it run through due, at-risk and missed so every path logs.
    let mut seen_missed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Ok(Some(webhook)) = tokio::time::timeout_at(deadline, webhooks.recv()).await {
        if webhook.notice_type == "callback.missed" {
            seen_missed = true;
            break;
        }
    }
    assert!(seen_missed, "the flow ran through to a missed webhook");
    let http = reqwest::Client::new();
    let listed = common::list_all(&http, &api).await;
    let id = listed[0]["id"].as_str().unwrap();
    let response = http
        .post(format!("{api}/v1/callbacks/{id}/attempts"))
        .bearer_auth(common::TOKEN)
        .json(&json!({ "agent_id": "a-1", "outcome": "connected" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let stopping = Instant::now();
    let code = worker.terminate();
    assert_eq!(code, Some(0), "SIGTERM exits cleanly");
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "stopped within the drain bound"
    );

    let output = std::fs::read_to_string(&log).unwrap();
    assert!(output.lines().count() > 50, "trace logging produced output");
    for phone in PHONES {
        let digits = &phone[1..];
        assert!(
            !output.contains(digits),
            "log contains the full number {}",
            callkeeper::domain::mask_phone(phone)
        );
    }
    drop(receiver);
    common::delete_topology(&names).await;
}
