//! The whole path through the real broker, store and HTTP: request → due webhook → claim →
//! attempt → completed, and every branch the contract names.

mod common;

use std::time::Duration;

use common::{spawn_app, Setup};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(15);

fn is(kind: &'static str) -> impl Fn(&callkeeper::notify::receiver::ReceivedWebhook) -> bool {
    move |w| w.notice_type == kind
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_due_claim_attempt_completed() {
    let mut app = spawn_app(Setup::default()).await;
    let context = json!({ "ivr_path": ["billing", "late"], "reason": "debit failed", "nested": { "a": [1, 2, 3] } });
    app.ivr
        .publish("callback.requested", json!({
            "phone": "+31612345678", "queue": "support", "priority": "high",
            "customer": { "id": "c-1", "name": "Ada", "timezone": "Europe/Amsterdam" },
            "context": context, "call": { "id": "call-9", "waited_seconds": 120 }, "unknown_extra": true
        }))
        .await
        .unwrap();

    let due = app.next_webhook(WAIT, is("callback.due")).await;
    let data = &due.body["data"];
    assert_eq!(data["phone"], "+31612345678");
    assert_eq!(data["queue"], "support");
    assert_eq!(data["priority"], "high");
    assert_eq!(
        data["context"], context,
        "context reaches the agent verbatim"
    );
    assert_eq!(data["customer"]["name"], "Ada");
    assert_eq!(data["attempt"], 1);
    assert_eq!(data["requests"], 1);
    assert!(due.webhook_id.starts_with("msg_"));
    let id = data["callback_id"].as_str().unwrap().to_string();

    let (status, body) = app
        .post(
            &format!("/v1/callbacks/{id}/claim"),
            json!({ "agent_id": "a-1" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "claimed");
    let (status, body) = app
        .post(
            &format!("/v1/callbacks/{id}/claim"),
            json!({ "agent_id": "a-2" }),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "claimed_by_other");

    let (status, body) = app
        .post(
            &format!("/v1/callbacks/{id}/attempts"),
            json!({ "agent_id": "a-1", "outcome": "connected" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = app.get(&format!("/v1/callbacks/{id}")).await;
    assert_eq!(body["state"], "completed");
    assert_eq!(body["sla"], "met");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_callback_goes_at_risk_then_missed_and_escalates() {
    let mut app = spawn_app(Setup {
        queue_toml: r#"
            at_risk_lead = "1s"
            sla = { normal = "2s", high = "2s", urgent = "2s" }
        "#
        .into(),
        ..Setup::default()
    })
    .await;
    app.ivr
        .publish(
            "callback.requested",
            json!({ "phone": "+31612345678", "queue": "support" }),
        )
        .await
        .unwrap();

    let due = app.next_webhook(WAIT, is("callback.due")).await;
    let id = due.body["data"]["callback_id"].clone();
    app.next_webhook(WAIT, is("callback.at_risk")).await;
    let first = app.next_webhook(WAIT, is("callback.missed")).await;
    let second = app.next_webhook(WAIT, is("callback.missed")).await;
    let mut endpoints: Vec<&str> = [&first, &second]
        .iter()
        .map(|w| w.path.rsplit('/').next().unwrap())
        .collect();
    endpoints.sort();
    assert_eq!(
        endpoints,
        ["agents", "supervisors"],
        "missed goes to agents and escalation"
    );
    assert_ne!(
        first.webhook_id, second.webhook_id,
        "each endpoint gets its own notification"
    );
    assert_eq!(first.body["data"]["callback_id"], id);

    let (_, body) = app
        .get(&format!("/v1/callbacks/{}", id.as_str().unwrap()))
        .await;
    assert_eq!(body["sla"], "missed");
    assert_eq!(
        body["state"], "due",
        "a missed callback stays open and is still to be made"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_is_retried_then_exhausted() {
    let mut app = spawn_app(Setup {
        queue_toml: r#"
            retry_delays = ["300ms"]
            max_attempts = 2
            sla = { normal = "1h", high = "1h", urgent = "1h" }
        "#
        .into(),
        ..Setup::default()
    })
    .await;
    app.ivr
        .publish(
            "callback.requested",
            json!({ "phone": "+31612345678", "queue": "support" }),
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
            &format!("/v1/callbacks/{id}/attempts"),
            json!({ "agent_id": "a-1", "outcome": "no_answer" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "scheduled");

    let again = app.next_webhook(WAIT, is("callback.due")).await;
    assert_eq!(again.body["data"]["callback_id"], id.as_str());
    assert_eq!(again.body["data"]["attempt"], 2);
    assert_ne!(
        again.webhook_id, due.webhook_id,
        "a retry is a new notification"
    );

    // The same outcome through the dialer's event path.
    app.ivr
        .publish(
            "callback.attempted",
            json!({ "callback_id": id, "outcome": "busy", "agent_id": "dialer-1" }),
        )
        .await
        .unwrap();
    let exhausted = app.next_webhook(WAIT, is("callback.exhausted")).await;
    assert_eq!(exhausted.body["data"]["callback_id"], id.as_str());
    let (_, body) = app.get(&format!("/v1/callbacks/{id}")).await;
    assert_eq!(body["state"], "failed");
    assert_eq!(body["attempts"].as_array().map(Vec::len), Some(2));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_merge_into_one_callback_and_one_due_webhook() {
    let mut app = spawn_app(Setup {
        queue_toml: r#"
            initial_delay = "1500ms"
            sla = { normal = "4h", high = "1h", urgent = "15m" }
        "#
        .into(),
        ..Setup::default()
    })
    .await;
    app.ivr
        .publish(
            "callback.requested",
            json!({ "phone": "+31612345678", "queue": "support", "context": { "v": 1 } }),
        )
        .await
        .unwrap();
    app.ivr
        .publish("callback.requested", json!({ "phone": "+31612345678", "queue": "support", "priority": "urgent", "context": { "v": 2 } }))
        .await
        .unwrap();

    let due = app.next_webhook(WAIT, is("callback.due")).await;
    assert_eq!(due.body["data"]["requests"], 2);
    assert_eq!(
        due.body["data"]["context"],
        json!({ "v": 2 }),
        "newest context wins"
    );
    let later = app.webhooks_for(Duration::from_secs(2)).await;
    assert!(
        later.iter().all(|w| w.notice_type != "callback.due"),
        "no second due webhook"
    );
    let (_, list) = app.get("/v1/callbacks?queue=support").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_opt_out() {
    let app = spawn_app(Setup {
        queue_toml: r#"
            initial_delay = "1h"
            sla = { normal = "4h", high = "4h", urgent = "4h" }
        "#
        .into(),
        ..Setup::default()
    })
    .await;
    app.ivr
        .publish(
            "callback.requested",
            json!({ "phone": "+31612345678", "queue": "support" }),
        )
        .await
        .unwrap();
    app.ivr
        .publish(
            "callback.requested",
            json!({ "phone": "+31687654321", "queue": "support" }),
        )
        .await
        .unwrap();
    let two_open = app.wait_stored(2, WAIT).await;
    assert!(two_open);

    app.ivr
        .publish(
            "callback.cancelled",
            json!({ "phone": "+31612345678", "queue": "support", "reason": "customer_reached" }),
        )
        .await
        .unwrap();
    app.ivr
        .publish("contact.opted_out", json!({ "phone": "+31687654321" }))
        .await
        .unwrap();
    let store = app.store.clone();
    let all_cancelled = common::wait_for(WAIT, || {
        let store = store.clone();
        async move {
            let list = store.list(&Default::default()).await.unwrap_or_default();
            list.len() == 2
                && list
                    .iter()
                    .all(|c| c.state == callkeeper::domain::State::Cancelled)
        }
    })
    .await;
    assert!(all_cancelled, "both callbacks cancelled");

    app.ivr
        .publish(
            "callback.requested",
            json!({ "phone": "+31687654321", "queue": "support" }),
        )
        .await
        .unwrap();
    let (reason, detail, _) = app
        .dead_letter(WAIT)
        .await
        .expect("opted-out request dead-lettered");
    assert_eq!(reason, "opted_out");
    assert!(
        !detail.contains("+31687654321"),
        "no full phone in the detail: {detail}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_dead_lettered_while_good_ones_flow() {
    let mut app = spawn_app(Setup::default()).await;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let bad: Vec<(Vec<u8>, Option<&str>, &str)> = vec![
        (b"{not json".to_vec(), Some("application/json"), "invalid_json"),
        (vec![0xff, 0xfe, 0x00], Some("application/json"), "not_utf8"),
        (Vec::new(), Some("application/json"), "empty_body"),
        (deep.into_bytes(), Some("application/json"), "invalid_json"),
        (vec![b' '; 70 * 1024], Some("application/json"), "too_large"),
        (
            br#"{"specversion":"1.0","id":"x1","source":"t","type":"callback.requested","data":{"phone":"+3161234","queue":"support"}}"#.to_vec(),
            Some("application/cloudevents+json"),
            "invalid_phone",
        ),
        (
            br#"{"specversion":"1.0","id":"x2","source":"t","type":"callback.requested","data":{"phone":"+31612345678","queue":"nope"}}"#.to_vec(),
            None,
            "unknown_queue",
        ),
        (
            br#"{"specversion":"0.3","id":"x3","source":"t","type":"callback.requested","data":{}}"#.to_vec(),
            None,
            "unsupported_specversion",
        ),
        (
            br#"{"specversion":"1.0","id":"x4","source":"t","type":"callback.exploded","data":{}}"#.to_vec(),
            None,
            "unsupported_type",
        ),
    ];
    for (body, content_type, _) in &bad {
        app.ivr
            .publish_raw("callback.requested", body, *content_type)
            .await
            .unwrap();
    }
    app.ivr
        .publish(
            "callback.requested",
            json!({ "phone": "+31612345678", "queue": "support" }),
        )
        .await
        .unwrap();
    app.next_webhook(WAIT, is("callback.due")).await;

    let mut reasons = Vec::new();
    for _ in &bad {
        let (reason, detail, _) = app
            .dead_letter(WAIT)
            .await
            .expect("each bad message is dead-lettered");
        assert!(!detail.contains("+31612345678"), "no full phone in detail");
        reasons.push(reason);
    }
    let mut expected: Vec<String> = bad.iter().map(|(_, _, r)| r.to_string()).collect();
    expected.sort();
    reasons.sort();
    assert_eq!(reasons, expected);
    assert!(
        app.dead_letter(Duration::from_millis(300)).await.is_none(),
        "each dead-lettered once"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_made_while_the_queue_is_closed_is_not_notified_until_it_opens() {
    use callkeeper::clock::ManualClock;
    use chrono::TimeZone;

    let amsterdam = chrono_tz::Europe::Amsterdam;
    // Saturday 2026-11-28 11:00 in Amsterdam; the queue opens Monday 09:00.
    let saturday = amsterdam
        .with_ymd_and_hms(2026, 11, 28, 11, 0, 0)
        .unwrap()
        .with_timezone(&chrono::Utc);
    let clock = ManualClock::new(saturday);
    let mut app = spawn_app(Setup {
        queue_toml: r#"
            timezone = "Europe/Amsterdam"
            sla = { normal = "2h", high = "1h", urgent = "15m" }
            [queues.support.open_hours]
            every_day = ["09:00-17:00"]
            sat = []
            sun = []
        "#
        .into(),
        clock: std::sync::Arc::new(clock.clone()),
    })
    .await;
    app.ivr
        .publish(
            "callback.requested",
            json!({ "phone": "+31612345678", "queue": "support" }),
        )
        .await
        .unwrap();
    let stored = app.wait_stored(1, WAIT).await;
    assert!(stored);
    let (_, list) = app.get("/v1/callbacks").await;
    let monday_nine = amsterdam
        .with_ymd_and_hms(2026, 11, 30, 9, 0, 0)
        .unwrap()
        .with_timezone(&chrono::Utc);
    assert_eq!(
        list["items"][0]["due_at"],
        callkeeper::notify::outbox::rfc3339(monday_nine)
    );
    assert_eq!(
        list["items"][0]["deadline"],
        callkeeper::notify::outbox::rfc3339(monday_nine + chrono::Duration::hours(2)),
        "the SLA clock does not run over the weekend"
    );

    // Sunday evening: still closed, nothing goes out.
    clock.set(monday_nine - chrono::Duration::hours(12));
    let early = app.webhooks_for(Duration::from_secs(2)).await;
    assert!(
        early.is_empty(),
        "no webhook while the queue is closed: {early:?}"
    );

    clock.set(monday_nine + chrono::Duration::seconds(1));
    let due = app.next_webhook(WAIT, is("callback.due")).await;
    assert_eq!(
        due.body["data"]["due_at"],
        callkeeper::notify::outbox::rfc3339(monday_nine)
    );
    app.stop().await;
}
