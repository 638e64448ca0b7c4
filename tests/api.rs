//! Black-box tests of the HTTP API: the real router on a real port over a fresh SQLite file per
//! test, called with reqwest.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use callkeeper::api::{router, ApiState};
use callkeeper::clock::{ManualClock, SharedClock, SystemClock};
use callkeeper::config::Config;
use callkeeper::domain::inbound::{CallbackRequest, Command, EventKey, Inbound, InboundOutcome};
use callkeeper::domain::{CallbackId, Phone, Priority, QueueName};
use callkeeper::schedule::{Rules, WakeupReceivers, Wakeups};
use callkeeper::store::{self, SharedStore, StoreSettings, TryResult};
use callkeeper::telemetry::{metrics_handle, Health, SharedHealth};
use chrono::{TimeZone, Utc};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{json, Value};
use tempfile::TempDir;

const TOKEN: &str = "test-token-0123456789";

/// Callees may be called at any hour, so a callback is due at once whatever time the tests run
/// (the default window, 08:00-21:00 callee time, made them fail in the evening).
const QUEUES: &str = r#"
    [calling_window.default]
    every_day = ["00:00-24:00"]

    [queues.support]
    webhook_url = "http://127.0.0.1:9/hooks"
    signing_secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
    sla = { normal = "4h", high = "1h", urgent = "15m" }
    max_attempts = 3

    [queues.sales]
    webhook_url = "http://127.0.0.1:9/hooks"
    signing_secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
    sla = { normal = "4h", high = "1h", urgent = "15m" }
"#;

struct TestApp {
    base: String,
    client: reqwest::Client,
    store: SharedStore,
    health: SharedHealth,
    // Held so the database and the wakeup channels live as long as the test.
    _dir: TempDir,
    _wakeups: WakeupReceivers,
}

async fn spawn_app() -> TestApp {
    spawn_app_with(QUEUES, Arc::new(SystemClock)).await
}

async fn spawn_app_with(queues: &str, clock: SharedClock) -> TestApp {
    let config = Config::from_toml_with_env(queues, []).expect("test config");
    let rules = Arc::new(Rules::from_config(&config));
    let dir = tempfile::tempdir().expect("temp dir");
    let (wakeups, receivers) = Wakeups::new();
    let settings = StoreSettings {
        rules: rules.clone(),
        public_url: "http://127.0.0.1:8080".into(),
        opt_out_period: Duration::from_secs(3600),
        wakeups,
    };
    let url = format!("sqlite://{}/db.sqlite", dir.path().display());
    let store = store::open(&url, settings).await.expect("open store");
    let health: SharedHealth = Arc::new(Health::default());
    let state = ApiState {
        store: store.clone(),
        clock,
        rules,
        api_tokens: Arc::new(vec![
            SecretString::from("an-older-token"),
            SecretString::from(TOKEN),
        ]),
        health: health.clone(),
        metrics: metrics_handle(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        axum::serve(listener, router(state)).await.expect("serve");
    });
    TestApp {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        store,
        health,
        _dir: dir,
        _wakeups: receivers,
    }
}

impl TestApp {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("GET")
    }

    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .expect("POST")
    }

    /// Stores one new callback per phone number in `queue`, as the intake would.
    async fn seed(&self, queue: &str, count: u32) -> Vec<CallbackId> {
        let batch: Vec<Inbound> = (0..count).map(|_| request(queue)).collect();
        let outcomes = self
            .store
            .apply_inbound(&batch, Utc::now())
            .await
            .expect("apply inbound");
        outcomes
            .into_iter()
            .map(|outcome| match outcome {
                InboundOutcome::Created(id) => id,
                other => panic!("expected a new callback, got {other:?}"),
            })
            .collect()
    }

    async fn seed_one(&self, queue: &str) -> CallbackId {
        self.seed(queue, 1).await[0]
    }
}

/// A `callback.requested` for a phone number no other request in this process uses, so
/// requests never merge.
fn request(queue: &str) -> Inbound {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let key = format!("evt-{n}-{}", uuid::Uuid::now_v7());
    Inbound {
        key: EventKey {
            source: "/tests/api".into(),
            id: key.clone(),
        },
        fingerprint: key,
        command: Command::Request(CallbackRequest {
            queue: QueueName::parse(queue).expect("queue name"),
            phone: Phone::parse(&format!("+31612{n:06}")).expect("phone"),
            priority: Priority::Normal,
            window: None,
            customer: None,
            agent_id: None,
            context: Some(json!({ "reason": "billing" })),
            call: None,
        }),
    }
}

/// Reads a JSON error body and checks its shape; returns (code, message).
async fn error_of(response: reqwest::Response) -> (String, String) {
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "error content-type was {content_type:?}"
    );
    let body: Value = response.json().await.expect("JSON error body");
    let code = body["error"]["code"]
        .as_str()
        .expect("error.code")
        .to_owned();
    let message = body["error"]["message"]
        .as_str()
        .expect("error.message")
        .to_owned();
    (code, message)
}

#[tokio::test]
async fn v1_requires_a_configured_bearer_token() {
    let app = spawn_app().await;

    let response = app
        .client
        .get(app.url("/v1/callbacks"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_eq!(error_of(response).await.0, "unauthorized");

    let response = app
        .client
        .get(app.url("/v1/callbacks"))
        .bearer_auth("wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_of(response).await.0, "unauthorized");

    assert_eq!(app.get("/v1/callbacks").await.status(), StatusCode::OK);
    // Every configured token works, so tokens can be rotated.
    let response = app
        .client
        .get(app.url("/v1/callbacks"))
        .bearer_auth("an-older-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_claim_holds_against_other_agents() {
    let app = spawn_app().await;
    let id = app.seed_one("support").await;
    let claim = format!("/v1/callbacks/{id}/claim");

    let response = app.post(&claim, json!({ "agent_id": "agent-a" })).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], id.to_string());
    assert_eq!(body["state"], "claimed");
    assert_eq!(body["claimed_by"], "agent-a");
    assert!(body["phone"].as_str().unwrap().starts_with("+31612"));

    let response = app.post(&claim, json!({ "agent_id": "agent-b" })).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(error_of(response).await.0, "claimed_by_other");

    let response = app.post(&claim, json!({ "agent_id": "agent-a" })).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["claimed_by"], "agent-a");

    // The other agent may not report an attempt on a callback it does not hold either.
    let response = app
        .post(
            &format!("/v1/callbacks/{id}/attempts"),
            json!({ "agent_id": "agent-b", "outcome": "connected" }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(error_of(response).await.0, "claimed_by_other");
}

#[tokio::test]
async fn attempts_move_the_callback_on_and_are_listed() {
    let app = spawn_app().await;
    let ids = app.seed("support", 2).await;
    let (retried, reached) = (ids[0], ids[1]);

    let response = app
        .post(
            &format!("/v1/callbacks/{retried}/attempts"),
            json!({ "agent_id": "agent-a", "outcome": "no_answer", "note": "rang out\ntwice" }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["state"], "scheduled");
    assert_eq!(body["attempts_made"], 1);
    assert_eq!(body["last_outcome"], "no_answer");
    assert_eq!(body["sla"], "met");

    app.post(
        &format!("/v1/callbacks/{reached}/claim"),
        json!({ "agent_id": "agent-b" }),
    )
    .await;
    let response = app
        .post(
            &format!("/v1/callbacks/{reached}/attempts"),
            json!({ "agent_id": "agent-b", "outcome": "connected" }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["state"], "completed");
    assert!(body["closed_at"].is_string());

    let response = app.get(&format!("/v1/callbacks/{retried}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], retried.to_string());
    assert_eq!(body["context"], json!({ "reason": "billing" }));
    let attempts = body["attempts"].as_array().expect("attempts array");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["number"], 1);
    assert_eq!(attempts[0]["agent_id"], "agent-a");
    assert_eq!(attempts[0]["outcome"], "no_answer");
    assert_eq!(attempts[0]["note"], "rang out\ntwice");

    // A closed callback takes no more attempts.
    let response = app
        .post(
            &format!("/v1/callbacks/{reached}/attempts"),
            json!({ "agent_id": "agent-b", "outcome": "connected" }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(error_of(response).await.0, "not_open");
}

#[tokio::test]
async fn cancel_closes_once() {
    let app = spawn_app().await;
    let id = app.seed_one("support").await;
    let cancel = format!("/v1/callbacks/{id}/cancel");

    let response = app
        .post(&cancel, json!({ "reason": "customer_reached" }))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["state"], "cancelled");
    assert_eq!(body["cancel_reason"], "customer_reached");

    let response = app
        .post(&cancel, json!({ "reason": "customer_reached" }))
        .await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(error_of(response).await.0, "not_open");

    let response = app
        .post(
            &format!("/v1/callbacks/{id}/claim"),
            json!({ "agent_id": "agent-a" }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(error_of(response).await.0, "not_open");
}

#[tokio::test]
async fn list_pages_through_every_item_once_and_filters() {
    let app = spawn_app().await;
    let support: HashSet<CallbackId> = app.seed("support", 7).await.into_iter().collect();
    let sales: HashSet<CallbackId> = app.seed("sales", 3).await.into_iter().collect();

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = "/v1/callbacks?queue=support&limit=3".to_owned();
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let response = app.get(&path).await;
        assert_eq!(response.status(), StatusCode::OK);
        let page: Value = response.json().await.unwrap();
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        for item in items {
            assert_eq!(item["queue"], "support");
            assert!(
                item.get("attempts").is_none(),
                "lists carry no attempt list"
            );
            seen.push(item["id"].as_str().unwrap().parse::<CallbackId>().unwrap());
        }
        pages += 1;
        assert!(pages <= 5, "paging does not end");
        match page["next_cursor"].as_str() {
            Some(next) => {
                assert_eq!(items.len(), 3, "only a full page has a next cursor");
                cursor = Some(next.to_owned());
            }
            None => break,
        }
    }
    assert_eq!(seen.len(), support.len(), "every item exactly once");
    assert_eq!(seen.iter().copied().collect::<HashSet<_>>(), support);

    let page: Value = app
        .get("/v1/callbacks?queue=sales")
        .await
        .json()
        .await
        .unwrap();
    let ids: HashSet<CallbackId> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids, sales);
    assert!(page["next_cursor"].is_null());

    let cancelled = *support.iter().next().unwrap();
    app.post(
        &format!("/v1/callbacks/{cancelled}/cancel"),
        json!({ "reason": "other" }),
    )
    .await;
    let page: Value = app
        .get("/v1/callbacks?state=cancelled")
        .await
        .json()
        .await
        .unwrap();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], cancelled.to_string());

    let page: Value = app
        .get("/v1/callbacks?queue=support&state=due")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 6);

    let response = app.get("/v1/callbacks?state=open").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let (code, message) = error_of(response).await;
    assert_eq!(code, "invalid_query");
    assert!(message.starts_with("state:"), "{message}");

    let response = app.get("/v1/callbacks?limit=501").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(error_of(response).await.1.starts_with("limit:"));
}

#[tokio::test]
async fn bad_requests_get_json_errors_that_name_the_problem() {
    let app = spawn_app().await;
    let id = app.seed_one("support").await;

    // Malformed JSON.
    let response = app
        .client
        .post(app.url(&format!("/v1/callbacks/{id}/claim")))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{\"agent_id\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_of(response).await.0, "invalid_body");

    // Missing and mistyped fields are named.
    let response = app
        .post(&format!("/v1/callbacks/{id}/claim"), json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let (code, message) = error_of(response).await;
    assert_eq!(code, "invalid_body");
    assert!(message.contains("agent_id"), "{message}");

    let response = app
        .post(
            &format!("/v1/callbacks/{id}/claim"),
            json!({ "agent_id": 7 }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(error_of(response).await.1.contains("agent_id"));

    let response = app
        .post(
            &format!("/v1/callbacks/{id}/claim"),
            json!({ "agent_id": "x".repeat(129) }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(error_of(response).await.1.contains("agent_id"));

    // Unknown outcome and cancel reason.
    let response = app
        .post(
            &format!("/v1/callbacks/{id}/attempts"),
            json!({ "agent_id": "agent-a", "outcome": "maybe" }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let (code, message) = error_of(response).await;
    assert_eq!(code, "invalid_body");
    assert!(message.starts_with("outcome:"), "{message}");
    assert!(message.contains("no_answer"), "{message}");

    let response = app
        .post(
            &format!("/v1/callbacks/{id}/cancel"),
            json!({ "reason": "opted_out" }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(error_of(response).await.1.starts_with("reason:"));

    // Not JSON at all.
    let response = app
        .client
        .post(app.url(&format!("/v1/callbacks/{id}/claim")))
        .bearer_auth(TOKEN)
        .body("agent_id=agent-a")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(error_of(response).await.0, "unsupported_media_type");

    // Too large.
    let response = app
        .post(
            &format!("/v1/callbacks/{id}/attempts"),
            json!({ "agent_id": "a", "outcome": "busy", "note": "x".repeat(70 * 1024) }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_of(response).await.0, "body_too_large");

    // Ids.
    let response = app.get("/v1/callbacks/not-a-uuid").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_of(response).await.0, "invalid_id");

    let unknown = CallbackId::new();
    let response = app.get(&format!("/v1/callbacks/{unknown}")).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_of(response).await.0, "not_found");

    let response = app
        .post(
            &format!("/v1/callbacks/{unknown}/claim"),
            json!({ "agent_id": "agent-a" }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_of(response).await.0, "not_found");

    // Routes and methods.
    let response = app.get("/v1/nothing-here").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_of(response).await.0, "not_found");

    let response = app.get(&format!("/v1/callbacks/{id}/claim")).await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(response.headers()["allow"]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert_eq!(error_of(response).await.0, "method_not_allowed");

    // Nothing above changed the callback (due since it arrived).
    let body: Value = app
        .get(&format!("/v1/callbacks/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["state"], "due");
    assert_eq!(body["attempts"], json!([]));
}

#[tokio::test]
async fn deliveries_can_be_listed_read_and_replayed() {
    let app = spawn_app().await;
    // The callback is due at once: intake queues its `callback.due` delivery.
    let id = app.seed_one("support").await;

    let page: Value = app.get("/v1/deliveries").await.json().await.unwrap();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    let delivery_id = items[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(items[0]["callback_id"], id.to_string());
    assert_eq!(items[0]["type"], "callback.due");
    assert_eq!(items[0]["state"], "pending");
    assert!(items[0].get("body").is_none(), "lists stay light");

    let response = app.get(&format!("/v1/deliveries/{delivery_id}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let delivery: Value = response.json().await.unwrap();
    let body: Value = serde_json::from_str(delivery["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["type"], "callback.due");

    // Give it up, then replay it.
    app.store
        .record_try(
            &delivery_id,
            &TryResult::Failed {
                status: Some(500),
                error: "server error".into(),
                retry_at: None,
            },
            Utc::now(),
        )
        .await
        .expect("record try");
    let page: Value = app
        .get("/v1/deliveries?state=failed")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);

    let response = app
        .post(&format!("/v1/deliveries/{delivery_id}/replay"), json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let delivery: Value = response.json().await.unwrap();
    assert_eq!(delivery["state"], "pending");

    let response = app.post("/v1/deliveries/msg_0000/replay", json!({})).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_of(response).await.0, "not_found");
    let response = app.get("/v1/deliveries/msg_0000").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = app.get("/v1/deliveries/bad%20id").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_of(response).await.0, "invalid_id");
}

#[tokio::test]
async fn health_is_open_and_readiness_follows_the_broker() {
    let app = spawn_app().await;

    let response = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({ "status": "ok" })
    );

    app.health.set_amqp_connected(false);
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["checks"]["amqp"], "unavailable");
    assert_eq!(body["checks"]["store"], "ok");
    assert_eq!(body["error"]["code"], "not_ready");

    app.health.set_amqp_connected(true);
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap()["status"], "ok");
}

#[tokio::test]
async fn metrics_count_requests_by_route_template() {
    let app = spawn_app().await;
    let id = app.seed_one("support").await;
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        app.get(&format!("/v1/callbacks/{id}")).await.status(),
        StatusCode::OK
    );

    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4"
    );
    let text = response.text().await.unwrap();
    assert!(text.contains("callkeeper_api_requests_total"), "{text}");
    assert!(text.contains(r#"route="/healthz""#), "{text}");
    assert!(text.contains(r#"route="/v1/callbacks/{id}""#), "{text}");
    assert!(
        !text.contains(&id.to_string()),
        "raw ids never become labels"
    );
}

/// A queue open Monday to Friday 09:00-17:00 in Amsterdam, for estimates at a fixed time.
const ESTIMATE_QUEUES: &str = r#"
    [queues.support]
    webhook_url = "http://127.0.0.1:9/hooks"
    signing_secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
    timezone = "Europe/Amsterdam"
    sla = { normal = "4h", high = "1h", urgent = "15m" }

    [queues.support.open_hours]
    every_day = ["09:00-17:00"]
    sat = []
    sun = []
"#;

#[tokio::test]
async fn estimate_promises_the_due_time_and_deadline_of_a_request_made_now() {
    // Friday 2030-03-08 16:00 in Amsterdam: an hour before the queue closes for the weekend.
    let now = Utc.with_ymd_and_hms(2030, 3, 8, 15, 0, 0).unwrap();
    let app = spawn_app_with(ESTIMATE_QUEUES, Arc::new(ManualClock::new(now))).await;

    let response = app.get("/v1/queues/support/estimate").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    // 4 h of open time: 1 h on Friday, 3 h from Monday 09:00 (CET, UTC+1).
    assert_eq!(
        body,
        json!({
            "queue": "support",
            "priority": "normal",
            "due_at": "2030-03-08T15:00:00.000Z",
            "deadline": "2030-03-11T11:00:00.000Z",
            "callee_timezone": "Europe/Amsterdam",
        })
    );

    let body: Value = app
        .get("/v1/queues/support/estimate?priority=urgent")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["priority"], "urgent");
    assert_eq!(body["deadline"], "2030-03-08T15:15:00.000Z");

    // A Tokyo number: midnight there now, and the queue is closed by Tokyo's morning, so the
    // first moment inside both is Monday 09:00 in Amsterdam (17:00 in Tokyo).
    for phone in ["%2B81312345678", "+81312345678"] {
        let response = app
            .get(&format!(
                "/v1/queues/support/estimate?phone={phone}&priority="
            ))
            .await;
        assert_eq!(response.status(), StatusCode::OK, "phone={phone}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["callee_timezone"], "Asia/Tokyo");
        assert_eq!(body["priority"], "normal");
        assert_eq!(body["due_at"], "2030-03-11T08:00:00.000Z");
        assert_eq!(body["deadline"], "2030-03-11T11:00:00.000Z");
    }
}

#[tokio::test]
async fn estimate_refuses_bad_input_with_json_errors() {
    let app = spawn_app().await;

    let response = app
        .get("/v1/queues/support/estimate?phone=%2B3161234")
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let (code, message) = error_of(response).await;
    assert_eq!(code, "invalid_phone");
    assert!(message.starts_with("phone:"), "{message}");
    assert!(
        !message.contains("3161234"),
        "no number in errors: {message}"
    );

    for path in [
        "/v1/queues/nope/estimate",
        "/v1/queues/Not%20A%20Queue/estimate",
    ] {
        let response = app.get(path).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(error_of(response).await.0, "unknown_queue");
    }

    let response = app.get("/v1/queues/support/estimate?priority=asap").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let (code, message) = error_of(response).await;
    assert_eq!(code, "invalid_query");
    assert!(
        message.starts_with("priority: must be one of normal"),
        "{message}"
    );

    let response = app
        .client
        .get(app.url("/v1/queues/support/estimate"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn sla_report_matches_a_known_scenario_exactly() {
    use callkeeper::domain::inbound::AttemptReport;
    use callkeeper::domain::Outcome;

    let app = spawn_app().await;
    // Monday 10:00 in Amsterdam, inside the callees' calling window.
    let t0 = Utc.with_ymd_and_hms(2030, 3, 4, 9, 0, 0).unwrap();
    let minutes = chrono::Duration::minutes;
    let batch: Vec<Inbound> = (0..4)
        .map(|_| request("support"))
        .chain([request("sales")])
        .collect();
    let ids: Vec<CallbackId> = app
        .store
        .apply_inbound(&batch, t0)
        .await
        .unwrap()
        .into_iter()
        .map(|o| match o {
            InboundOutcome::Created(id) => id,
            other => panic!("{other:?}"),
        })
        .collect();
    let report = |outcome| AttemptReport {
        agent_id: "a-1".into(),
        outcome,
        note: None,
    };
    // A: answered after 30 minutes. B: no answer after an hour, answered at two hours.
    app.store
        .record_attempt(ids[0], &report(Outcome::Connected), t0 + minutes(30))
        .await
        .unwrap();
    app.store
        .record_attempt(ids[1], &report(Outcome::NoAnswer), t0 + minutes(60))
        .await
        .unwrap();
    app.store
        .record_attempt(ids[1], &report(Outcome::Connected), t0 + minutes(120))
        .await
        .unwrap();
    // C: nobody called within the 4-hour target. D: still within it.
    app.store
        .advance_one(ids[2], t0 + minutes(5 * 60))
        .await
        .unwrap();

    let from = (t0 - minutes(60)).to_rfc3339();
    let to = (t0 + minutes(60)).to_rfc3339();
    let response = app
        .client
        .get(app.url("/v1/sla"))
        .query(&[
            ("queue", "support"),
            ("from", from.as_str()),
            ("to", to.as_str()),
        ])
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["queue"], "support");
    assert_eq!(
        (
            &body["requested"],
            &body["attempted"],
            &body["met"],
            &body["missed"],
            &body["pending"]
        ),
        (&json!(4), &json!(2), &json!(2), &json!(1), &json!(1))
    );
    assert_eq!(body["attainment"].as_f64(), Some(2.0 / 3.0));
    assert_eq!(
        body["time_to_first_attempt"],
        json!({ "p50": 1800.0, "p90": 3600.0 })
    );
    assert_eq!(
        body["punctuality"],
        json!({ "p50": -12600.0, "p90": -10800.0 })
    );
    assert_eq!(body["attempts_per_callback"], json!(1.5));

    // All queues count the sales request too; a bad period is a 400, an unknown queue a 404.
    let all: Value = app
        .client
        .get(app.url("/v1/sla"))
        .query(&[("from", from.as_str()), ("to", to.as_str())])
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["requested"], 5);
    assert_eq!(
        app.get(&format!(
            "/v1/sla?from={}&to={}",
            "2030-03-05T00:00:00Z", "2030-03-04T00:00:00Z"
        ))
        .await
        .status(),
        400
    );
    assert_eq!(app.get("/v1/sla?queue=nope").await.status(), 404);
}
