//! `/metrics` end to end: the lifecycle series move as callbacks flow, and the number of series
//! does not grow with the number of callbacks (labels are bounded: never a phone, id or URL).
//!
//! Metrics are process-wide and every test app's queue is `support`, so these tests live in
//! their own binary, take turns (one lock), and assert on deltas.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{spawn_app, wait_for, Setup, TestApp};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

/// One test at a time: a parallel test would add series between two scrapes.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Parsed exposition: series (name + sorted labels) to value.
struct Scrape(BTreeMap<String, (String, BTreeMap<String, String>, f64)>);

impl Scrape {
    async fn take(app: &TestApp) -> Self {
        let text = reqwest::get(format!("{}/metrics", app.api))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mut series = BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (key, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match key.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (key, ""),
            };
            let labels: BTreeMap<String, String> = labels
                .split(',')
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let (k, v) = l.split_once('=').unwrap();
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            series.insert(
                key.to_string(),
                (name.to_string(), labels, value.parse().unwrap_or(f64::NAN)),
            );
        }
        Self(series)
    }

    /// The sum over every series named `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .values()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
            .sum()
    }

    fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.0.values().any(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The callkeeper series, by their full text.
    fn callkeeper_series(&self) -> Vec<&String> {
        self.0
            .keys()
            .filter(|k| k.starts_with("callkeeper_"))
            .collect()
    }
}

/// Scrapes until `check` holds for the difference from `base`; returns the last scrape.
async fn until(app: &TestApp, what: &str, check: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let scrape = Scrape::take(app).await;
        if check(&scrape) {
            return scrape;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics never showed: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn event(name: &'static str) -> [(&'static str, &'static str); 2] {
    [("queue", "support"), ("event", name)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_series_move_as_callbacks_flow() {
    let _turn = TURN.lock().await;
    let mut app = spawn_app(Setup {
        queue_toml: r#"
            initial_delay = "0s"
            at_risk_lead = "1s"
            retry_delays = ["300ms"]
            max_attempts = 3
            sla = { normal = "1h", high = "1h", urgent = "2s" }
        "#
        .into(),
        ..Setup::default()
    })
    .await;
    let base = Scrape::take(&app).await;
    let delta = |now: &Scrape, name: &str, labels: &[(&str, &str)]| {
        now.value(name, labels) - base.value(name, labels)
    };

    // Kept on time: requested → due → claimed → attempted (connected) → completed, SLA met.
    app.ivr
        .publish(
            "callback.requested",
            json!({ "phone": "+31612345678", "queue": "support" }),
        )
        .await
        .unwrap();
    let due = app
        .next_webhook(WAIT, |w| w.notice_type == "callback.due")
        .await;
    let id = due.body["data"]["callback_id"]
        .as_str()
        .unwrap()
        .to_string();
    until(&app, "requested and due", |s| {
        delta(s, "callkeeper_callback_events_total", &event("requested")) >= 1.0
            && delta(s, "callkeeper_callback_events_total", &event("due")) >= 1.0
            && delta(s, "callkeeper_firing_lateness_seconds_count", &[]) >= 1.0
            && delta(
                s,
                "callkeeper_store_writer_wait_seconds_count",
                &[("operation", "intake")],
            ) >= 1.0
    })
    .await;
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
    let met = [("queue", "support"), ("priority", "normal")];
    until(&app, "claimed, attempted, completed and met", |s| {
        delta(s, "callkeeper_callback_events_total", &event("claimed")) >= 1.0
            && delta(s, "callkeeper_callback_events_total", &event("attempted")) >= 1.0
            && delta(s, "callkeeper_callback_events_total", &event("completed")) >= 1.0
            && delta(s, "callkeeper_sla_met_total", &met) >= 1.0
            && delta(
                s,
                "callkeeper_time_to_first_attempt_seconds_count",
                &[("queue", "support")],
            ) >= 1.0
    })
    .await;

    // Not attempted in time: missed, by the timer (intake made it due on arrival).
    app.ivr
        .publish(
            "callback.requested",
            json!({ "phone": "+31612345679", "queue": "support", "priority": "urgent" }),
        )
        .await
        .unwrap();
    app.next_webhook(WAIT, |w| w.notice_type == "callback.missed")
        .await;
    let missed = [("queue", "support"), ("priority", "urgent")];
    let last = until(&app, "missed", |s| {
        delta(s, "callkeeper_callback_events_total", &event("missed")) >= 1.0
            && delta(s, "callkeeper_sla_missed_total", &missed) >= 1.0
            && delta(
                s,
                "callkeeper_store_writer_wait_seconds_count",
                &[("operation", "timer")],
            ) >= 1.0
    })
    .await;
    assert!(
        delta(
            &last,
            "callkeeper_callback_events_total",
            &event("requested")
        ) >= 2.0
    );

    // A retry is counted by outcome.
    app.ivr
        .publish(
            "callback.requested",
            json!({ "phone": "+31612345670", "queue": "support" }),
        )
        .await
        .unwrap();
    let due = app
        .next_webhook(WAIT, |w| {
            w.notice_type == "callback.due" && w.body["data"]["phone"] == "+31612345670"
        })
        .await;
    let id = due.body["data"]["callback_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = app
        .post(
            &format!("/v1/callbacks/{id}/attempts"),
            json!({ "agent_id": "a-1", "outcome": "busy" }),
        )
        .await;
    assert_eq!(status, 200);
    until(&app, "a retry", |s| {
        delta(
            s,
            "callkeeper_retries_total",
            &[("queue", "support"), ("outcome", "busy")],
        ) >= 1.0
    })
    .await;
    // The keys this test's events left, held in memory (this app's store set it last).
    let keys = Scrape::take(&app)
        .await
        .value("callkeeper_idempotency_keys", &[]);
    assert!(keys >= 2.0, "idempotency keys: {keys}");

    // Every callkeeper series has HELP text.
    let text = reqwest::get(format!("{}/metrics", app.api))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "callkeeper_callback_events_total",
        "callkeeper_sla_met_total",
        "callkeeper_sla_missed_total",
        "callkeeper_time_to_first_attempt_seconds",
        "callkeeper_retries_total",
        "callkeeper_firing_lateness_seconds",
        "callkeeper_store_writer_wait_seconds",
        "callkeeper_events_outbox_pending",
        "callkeeper_idempotency_keys",
    ] {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no HELP for {name}"
        );
    }
    app.stop().await;
}

/// Requests `n` callbacks (numbers from `first`), waits for their due webhooks, and claims and
/// completes each through the API.
async fn flow(app: &mut TestApp, first: usize, n: usize) {
    for i in first..first + n {
        app.ivr
            .publish(
                "callback.requested",
                json!({ "phone": format!("+3161234{i:04}"), "queue": "support" }),
            )
            .await
            .unwrap();
    }
    let mut ids = Vec::new();
    while ids.len() < n {
        let due = app
            .next_webhook(WAIT, |w| w.notice_type == "callback.due")
            .await;
        ids.push(
            due.body["data"]["callback_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    for id in ids {
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_count_does_not_grow_with_callbacks() {
    let _turn = TURN.lock().await;
    let mut app = spawn_app(Setup::default()).await;
    let base = Scrape::take(&app).await;
    let completed = |s: &Scrape| {
        s.value("callkeeper_callback_events_total", &event("completed"))
            - base.value("callkeeper_callback_events_total", &event("completed"))
    };

    flow(&mut app, 0, 10).await;
    // After the gauges' next refresh (every 10 s), which adds the attainment series once the
    // queue has callbacks; and after every webhook was recorded as delivered.
    until(&app, "10 callbacks and the gauges refreshed", |s| {
        completed(s) >= 10.0 && s.has("callkeeper_sla_attainment_ratio", &[("queue", "support")])
    })
    .await;
    let store = app.store.clone();
    assert!(
        wait_for(WAIT, || {
            let store = store.clone();
            async move { store.next_delivery_at().await.unwrap().is_none() }
        })
        .await,
        "every webhook delivered"
    );
    let small = Scrape::take(&app).await;

    flow(&mut app, 10, 200).await;
    until(&app, "210 callbacks", |s| completed(s) >= 210.0).await;
    assert!(
        wait_for(WAIT, || {
            let store = store.clone();
            async move { store.next_delivery_at().await.unwrap().is_none() }
        })
        .await,
        "every webhook delivered"
    );
    let large = Scrape::take(&app).await;

    let before: Vec<&String> = small.callkeeper_series();
    let after: Vec<&String> = large.callkeeper_series();
    let added: Vec<&&String> = after.iter().filter(|s| !before.contains(s)).collect();
    assert!(
        added.is_empty() && after.len() == before.len(),
        "series grew from {} to {}: {added:?}",
        before.len(),
        after.len()
    );
    // And no label value is a phone number, a callback id or a URL.
    for (_, labels, _) in large.0.values() {
        // `le` is a histogram bucket bound (`+Inf` included), fixed at start.
        for (_, value) in labels.iter().filter(|(key, _)| key.as_str() != "le") {
            assert!(
                !value.starts_with('+')
                    && !value.contains("://")
                    && uuid::Uuid::parse_str(value).is_err(),
                "unbounded label value {value}"
            );
        }
    }
    app.stop().await;
}
