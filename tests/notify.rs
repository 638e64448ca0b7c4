//! Webhooks out: signing per Standard Webhooks (checked against the spec's vector and the
//! `standardwebhooks` crate), how each answer of a real local endpoint is classified, and the
//! delivery worker end to end over a real SQLite store.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use std::sync::Arc;

use callkeeper::clock::SystemClock;
use callkeeper::config::{Config, NotifyConfig};
use callkeeper::domain::inbound::{CallbackRequest, Command, EventKey, Inbound, InboundOutcome};
use callkeeper::domain::lifecycle::Notice;
use callkeeper::domain::{CallbackId, Phone, Priority, QueueName};
use callkeeper::notify::deliver::{self, try_delivery, Reply};
use callkeeper::notify::signing::{self, VerifyError, DEFAULT_TOLERANCE};
use callkeeper::notify::{Answer, Delivery, DeliveryState, Notifier, ReceivedWebhook, Receiver};
use callkeeper::schedule::{DeliveryInbox, Rules, Wakeups};
use callkeeper::store::{SharedStore, StoreSettings, TryResult};
use chrono::{DateTime, Utc};
use proptest::prelude::*;
use rand::RngCore as _;
use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::json;
use tempfile::TempDir;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A fresh `whsec_` secret of 32 random bytes.
fn new_secret() -> SecretString {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    let b64 = base64::engine::general_purpose::STANDARD.encode(key);
    SecretString::from(format!("whsec_{b64}"))
}

/// A `[queues.<name>]` table sending to `url`, signed with `secret`.
fn queue_toml(name: &str, url: &str, secret: &SecretString) -> String {
    format!(
        r#"
        [queues.{name}]
        webhook_url = "{url}"
        signing_secrets = ["{secret}"]
        sla = {{ normal = "4h", high = "1h", urgent = "15m" }}
        "#,
        secret = secret.expose_secret(),
    )
}

/// A validated configuration with `queues`, quick retries and callees callable around the
/// clock (tests run at any hour); `overrides` are `notify` keys set through the environment
/// (`("timeout", "300ms")`).
fn config(queues: &str, overrides: &[(&str, &str)]) -> Config {
    let text = format!(
        r#"
        [notify]
        timeout = "2s"
        retry_base = "50ms"
        retry_max = "200ms"
        max_tries = 4

        [calling_window.default]
        every_day = ["00:00-24:00"]
        {queues}
        "#
    );
    let env = overrides.iter().map(|(key, value)| {
        (
            format!("CALLKEEPER__NOTIFY__{}", key.to_uppercase()),
            value.to_string(),
        )
    });
    Config::from_toml_with_env(&text, env).expect("test configuration is valid")
}

/// A pending delivery to `url` for queue `support`, as the store would hand it out.
fn delivery(url: &str) -> Delivery {
    let now = Utc::now();
    let callback_id = CallbackId::new();
    let body = json!({
        "type": "callback.due",
        "timestamp": now.to_rfc3339(),
        "data": { "callback_id": callback_id, "phone": "+31612345678" },
    });
    Delivery::pending(
        format!("msg_{}", uuid::Uuid::now_v7().simple()),
        Some(callback_id),
        QueueName::parse("support").unwrap(),
        Notice::Due,
        url,
        body.to_string(),
        now,
    )
}

/// Everything one classification test needs: a receiver, and rules pointing at it.
struct Endpoint {
    receiver: Receiver,
    received: UnboundedReceiver<ReceivedWebhook>,
    rules: Rules,
    notify: NotifyConfig,
    client: reqwest::Client,
}

impl Endpoint {
    async fn start(overrides: &[(&str, &str)]) -> Self {
        let secret = new_secret();
        let (receiver, received) = Receiver::start(vec![secret.clone()]).await.unwrap();
        let config = config(&queue_toml("support", &receiver.url(), &secret), overrides);
        let client = deliver::http_client(&config.notify).unwrap();
        Self {
            rules: Rules::from_config(&config),
            notify: config.notify,
            receiver,
            received,
            client,
        }
    }

    async fn try_once(&self, delivery: &Delivery) -> TryResult {
        try_delivery(
            &self.client,
            &self.rules,
            &self.notify,
            &SystemClock,
            delivery,
        )
        .await
    }

    /// Every request the receiver has verified so far.
    fn drain(&mut self) -> Vec<ReceivedWebhook> {
        std::iter::from_fn(|| self.received.try_recv().ok()).collect()
    }
}

fn retry_at(result: &TryResult) -> Option<DateTime<Utc>> {
    match result {
        TryResult::Failed { retry_at, .. } => *retry_at,
        other => panic!("expected a failed try, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Signing

#[test]
fn signing_matches_the_published_test_vector() {
    let secret = SecretString::from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    let key = callkeeper::config::decode_secret(&secret).unwrap();
    let (id, ts, body) = (
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        r#"{"test": 2432232314}"#,
    );
    let expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    assert_eq!(signing::sign(&key, id, ts, body), expected);
    assert_eq!(
        signing::signature_header(std::slice::from_ref(&secret), id, ts, body),
        expected
    );
    let now = DateTime::from_timestamp(ts, 0).unwrap();
    let verified = signing::verify(
        &[secret],
        id,
        "1614265330",
        expected,
        body,
        now,
        DEFAULT_TOLERANCE,
    );
    assert_eq!(verified, Ok(()));
}

fn headers(id: &str, ts: i64, signature: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("webhook-id", id.parse().unwrap());
    headers.insert("webhook-timestamp", ts.to_string().parse().unwrap());
    headers.insert("webhook-signature", signature.parse().unwrap());
    headers
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Our signatures verify with the reference crate, and its signatures verify with ours.
    #[test]
    fn signing_agrees_with_the_standardwebhooks_crate(
        body in any::<String>(),
        id in "msg_[A-Za-z0-9]{1,32}",
    ) {
        let secret = new_secret();
        let theirs = standardwebhooks::Webhook::new(secret.expose_secret()).unwrap();
        let now = Utc::now();
        let ts = now.timestamp();

        let ours = signing::signature_header(std::slice::from_ref(&secret), &id, ts, &body);
        prop_assert!(theirs.verify(body.as_bytes(), &headers(&id, ts, &ours)).is_ok());

        let their_signature = theirs.sign(&id, ts, body.as_bytes()).unwrap();
        prop_assert_eq!(&their_signature, &ours);
        let verified = signing::verify(
            &[secret], &id, &ts.to_string(), &their_signature, &body, now, DEFAULT_TOLERANCE,
        );
        prop_assert_eq!(verified, Ok(()));
    }
}

#[test]
fn a_rotation_header_verifies_with_either_secret() {
    let (old, new, other) = (new_secret(), new_secret(), new_secret());
    let (id, body, now) = ("msg_rotation", r#"{"type":"callback.due"}"#, Utc::now());
    let ts = now.timestamp();
    let header = signing::signature_header(&[old.clone(), new.clone()], id, ts, body);
    assert_eq!(header.split(' ').count(), 2, "{header}");

    for secret in [&old, &new] {
        let verified = signing::verify(
            std::slice::from_ref(secret),
            id,
            &ts.to_string(),
            &header,
            body,
            now,
            DEFAULT_TOLERANCE,
        );
        assert_eq!(verified, Ok(()));
        let theirs = standardwebhooks::Webhook::new(secret.expose_secret()).unwrap();
        theirs
            .verify(body.as_bytes(), &headers(id, ts, &header))
            .unwrap();
    }
    let verified = signing::verify(
        &[other],
        id,
        &ts.to_string(),
        &header,
        body,
        now,
        DEFAULT_TOLERANCE,
    );
    assert_eq!(verified, Err(VerifyError::NoMatch));
}

#[tokio::test]
async fn the_receiver_refuses_a_bad_signature() {
    let (receiver, mut received) = Receiver::start(vec![new_secret()]).await.unwrap();
    let wrong = new_secret();
    let body = r#"{"type":"callback.due"}"#;
    let ts = Utc::now().timestamp();
    let response = reqwest::Client::new()
        .post(receiver.url())
        .header("webhook-id", "msg_forged")
        .header("webhook-timestamp", ts.to_string())
        .header(
            "webhook-signature",
            signing::signature_header(&[wrong], "msg_forged", ts, body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(receiver.rejected(), 1);
    assert!(
        received.try_recv().is_err(),
        "a refused request is not forwarded"
    );
}

// ---------------------------------------------------------------------------------------------
// Classifying one try against a real local endpoint

#[tokio::test]
async fn a_server_error_is_retried_then_delivered_under_the_same_id() {
    let mut endpoint = Endpoint::start(&[]).await;
    endpoint.receiver.respond_next([500]);
    let mut delivery = delivery(&endpoint.receiver.url());

    let before = Utc::now();
    let first = endpoint.try_once(&delivery).await;
    let TryResult::Failed { status, .. } = &first else {
        panic!("expected a retry, got {first:?}")
    };
    assert_eq!(*status, Some(500));
    let at = retry_at(&first).expect("a 500 is retried");
    // Full jitter: somewhere between now and the first backoff step (50 ms).
    assert!(
        at >= before && at <= Utc::now() + chrono::Duration::milliseconds(50),
        "{at}"
    );

    delivery.tries = 1;
    let second = endpoint.try_once(&delivery).await;
    assert_eq!(second, TryResult::Delivered { status: 204 });

    let got = endpoint.drain();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|w| w.webhook_id == delivery.id));
    assert_eq!(got[0].answered, 500);
    assert_eq!(got[1].notice_type, "callback.due");
    assert_eq!(got[1].body["data"]["phone"], "+31612345678");
    assert_eq!(
        endpoint.receiver.rejected(),
        0,
        "every try is validly signed"
    );
}

#[tokio::test]
async fn too_many_requests_honours_retry_after() {
    let endpoint = Endpoint::start(&[]).await;
    let delivery = delivery(&endpoint.receiver.url());

    endpoint.receiver.respond_next([Answer::too_many("7")]);
    let result = endpoint.try_once(&delivery).await;
    let wait = retry_at(&result).unwrap() - Utc::now();
    assert!(
        wait > chrono::Duration::seconds(6) && wait <= chrono::Duration::seconds(7),
        "{wait}"
    );

    let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
    endpoint.receiver.respond_next([Answer::too_many(date)]);
    let result = endpoint.try_once(&delivery).await;
    let wait = retry_at(&result).unwrap() - Utc::now();
    assert!(
        wait > chrono::Duration::seconds(117) && wait <= chrono::Duration::seconds(120),
        "{wait}"
    );

    // Without Retry-After, a 429 falls back to the backoff.
    endpoint.receiver.respond_next([429]);
    let result = endpoint.try_once(&delivery).await;
    assert!(retry_at(&result).unwrap() <= Utc::now() + chrono::Duration::milliseconds(50));
}

#[tokio::test]
async fn gone_disables_the_endpoint() {
    let endpoint = Endpoint::start(&[]).await;
    endpoint.receiver.respond_next([410]);
    let result = endpoint.try_once(&delivery(&endpoint.receiver.url())).await;
    assert_eq!(result, TryResult::Gone);
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let mut endpoint = Endpoint::start(&[]).await;
    let elsewhere = format!("{}/moved", endpoint.receiver.url());
    endpoint
        .receiver
        .respond_next([Answer::redirect(elsewhere)]);
    let result = endpoint.try_once(&delivery(&endpoint.receiver.url())).await;
    let TryResult::Failed { status, error, .. } = &result else {
        panic!("expected a retry, got {result:?}")
    };
    assert_eq!(*status, Some(301));
    assert!(error.contains("not followed"), "{error}");
    assert!(retry_at(&result).is_some());
    // reqwest follows redirects before returning, so one request means none was followed.
    assert_eq!(endpoint.drain().len(), 1);
}

#[tokio::test]
async fn a_timeout_is_retried() {
    let mut endpoint = Endpoint::start(&[("timeout", "300ms")]).await;
    endpoint
        .receiver
        .respond_next([Answer::status(200).delayed(Duration::from_secs(5))]);
    let result = endpoint.try_once(&delivery(&endpoint.receiver.url())).await;
    let TryResult::Failed { status, error, .. } = &result else {
        panic!("expected a retry, got {result:?}")
    };
    assert_eq!(*status, None);
    assert!(error.contains("timed out"), "{error}");
    assert!(retry_at(&result).is_some());
    assert_eq!(endpoint.drain().len(), 1, "the request did arrive");
}

#[tokio::test]
async fn a_refused_connection_is_retried_without_leaking_the_url() {
    let endpoint = Endpoint::start(&[]).await;
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hooks?token=sekrit");
    let result = endpoint.try_once(&delivery(&url)).await;
    let TryResult::Failed { status, error, .. } = &result else {
        panic!("expected a retry, got {result:?}")
    };
    assert_eq!(*status, None);
    assert!(error.contains("could not connect"), "{error}");
    assert!(!error.contains("sekrit"), "{error}");
    assert!(retry_at(&result).is_some());
    assert_eq!(
        deliver::endpoint_for_logs(&url),
        format!("http://127.0.0.1:{port}/hooks")
    );
}

#[tokio::test]
async fn the_last_try_gives_up() {
    let endpoint = Endpoint::start(&[]).await;
    endpoint.receiver.respond_next([503]);
    let mut delivery = delivery(&endpoint.receiver.url());
    delivery.tries = endpoint.notify.max_tries - 1;
    let result = endpoint.try_once(&delivery).await;
    let TryResult::Failed {
        status,
        error,
        retry_at,
    } = result
    else {
        panic!("expected a failed try")
    };
    assert_eq!((status, retry_at), (Some(503), None));
    assert_eq!(error, "HTTP 503 Service Unavailable");
}

#[tokio::test]
async fn a_delivery_for_an_unknown_queue_gives_up() {
    let mut endpoint = Endpoint::start(&[]).await;
    let mut delivery = delivery(&endpoint.receiver.url());
    delivery.queue = QueueName::parse("removed-queue").unwrap();
    let result = endpoint.try_once(&delivery).await;
    let TryResult::Failed {
        error, retry_at, ..
    } = result
    else {
        panic!("expected a failed try")
    };
    assert_eq!(retry_at, None);
    assert!(error.contains("removed-queue"), "{error}");
    assert!(endpoint.drain().is_empty(), "nothing unsigned is sent");
}

#[test]
fn backoff_doubles_up_to_the_cap_with_full_jitter() {
    let notify = NotifyConfig {
        retry_base: Duration::from_secs(1),
        retry_max: Duration::from_secs(60),
        ..NotifyConfig::default()
    };
    for tries in 0..40 {
        let ceiling = Duration::from_secs(1 << tries.min(6)).min(notify.retry_max);
        for _ in 0..20 {
            assert!(deliver::backoff(&notify, tries) <= ceiling);
        }
    }
    // Jittered: not always the ceiling.
    let samples: Vec<_> = (0..50).map(|_| deliver::backoff(&notify, 10)).collect();
    assert!(samples.iter().any(|d| *d < Duration::from_secs(59)));
}

#[test]
fn classification_follows_the_contract() {
    let notify = NotifyConfig::default();
    let now = Utc::now();
    let reply = |status| Reply::Status {
        status,
        retry_after: None,
    };
    assert_eq!(
        deliver::classify(&reply(200), 0, &notify, now),
        TryResult::Delivered { status: 200 }
    );
    assert_eq!(
        deliver::classify(&reply(410), 0, &notify, now),
        TryResult::Gone
    );
    for status in [301, 302, 400, 401, 404, 429, 500, 502] {
        let result = deliver::classify(&reply(status), 0, &notify, now);
        assert!(retry_at(&result).is_some(), "{status} is retried");
    }
    let result = deliver::classify(&Reply::Error("timed out".into()), 0, &notify, now);
    assert!(retry_at(&result).is_some());
    assert_eq!(
        deliver::parse_retry_after(" 30 "),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        deliver::parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
        Some(Duration::ZERO)
    );
    assert_eq!(deliver::parse_retry_after("soon"), None);
}

// ---------------------------------------------------------------------------------------------
// The worker end to end, over a real SQLite store

/// Generous bound for anything the tests wait for; conditions are polled, never slept on.
const PATIENCE: Duration = Duration::from_secs(10);

/// A store in its own temp folder, with the notifier's wakeup wired as in the app.
struct World {
    store: SharedStore,
    rules: Arc<Rules>,
    notify: NotifyConfig,
    inbox: DeliveryInbox,
    _dir: TempDir,
}

struct Running {
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        let ended = tokio::time::timeout(PATIENCE, self.task).await;
        ended
            .expect("the notifier stops within its drain bound")
            .unwrap()
            .unwrap();
    }
}

impl World {
    async fn new(queues: &str, overrides: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = config(queues, overrides);
        let rules = Arc::new(Rules::from_config(&config));
        let (wakeups, receivers) = Wakeups::new();
        let settings = StoreSettings {
            rules: rules.clone(),
            public_url: config.http.public_url.clone(),
            opt_out_period: config.intake.opt_out_period,
            wakeups,
        };
        let url = format!("sqlite://{}/callkeeper.db", dir.path().display());
        let store = callkeeper::store::open(&url, settings).await.unwrap();
        Self {
            store,
            rules,
            notify: config.notify,
            inbox: receivers.deliveries,
            _dir: dir,
        }
    }

    fn start_notifier(&self) -> Running {
        let notifier = Notifier::new(
            self.store.clone(),
            self.rules.clone(),
            self.notify.clone(),
            Arc::new(SystemClock),
            self.inbox.clone(),
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn(notifier.run(stop.clone()));
        Running { stop, task }
    }

    /// Requests a callback for `phone` in `queue` the way intake does, and lets the timer step
    /// make it due: one `callback.due` delivery. Returns that delivery's id.
    async fn due_callback(&self, queue: &str, phone: &str) -> String {
        let request = CallbackRequest {
            queue: QueueName::parse(queue).unwrap(),
            phone: Phone::parse(phone).unwrap(),
            priority: Priority::Normal,
            window: None,
            customer: None,
            agent_id: None,
            context: Some(json!({ "reason": "invoice" })),
            call: None,
        };
        let event = Inbound {
            key: EventKey {
                source: "/ivr/test".into(),
                id: uuid::Uuid::now_v7().to_string(),
            },
            fingerprint: uuid::Uuid::now_v7().to_string(),
            command: Command::Request(request),
        };
        let outcomes = self
            .store
            .apply_inbound(&[event], Utc::now())
            .await
            .unwrap();
        // The callback is due at once, so intake queues its due delivery.
        let [InboundOutcome::Created(callback_id)] = outcomes[..] else {
            panic!("expected a new callback, got {outcomes:?}")
        };
        let deliveries = self.store.list_deliveries(None, 1000).await.unwrap();
        deliveries
            .into_iter()
            .find(|d| d.callback_id == Some(callback_id))
            .expect("the due delivery is stored")
            .id
    }

    /// Waits until the stored delivery satisfies `done`, and returns it.
    async fn wait_for(&self, id: &str, what: &str, done: impl Fn(&Delivery) -> bool) -> Delivery {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let delivery = self.store.get_delivery(id).await.unwrap().unwrap();
            if done(&delivery) {
                return delivery;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gave up waiting until {what}: {delivery:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The next webhook the receiver verified, waiting up to [`PATIENCE`].
async fn next_webhook(received: &mut UnboundedReceiver<ReceivedWebhook>) -> ReceivedWebhook {
    tokio::time::timeout(PATIENCE, received.recv())
        .await
        .expect("a webhook arrives in time")
        .expect("the receiver is running")
}

#[tokio::test]
async fn the_worker_delivers_stored_notices_and_records_each_try() {
    let secret = new_secret();
    let (receiver, mut received) = Receiver::start(vec![secret.clone()]).await.unwrap();
    receiver.respond_next([500]);
    let world = World::new(&queue_toml("support", &receiver.url(), &secret), &[]).await;
    let id = world.due_callback("support", "+31612345601").await;
    let notifier = world.start_notifier();

    let first = next_webhook(&mut received).await;
    let second = next_webhook(&mut received).await;
    assert_eq!((first.answered, second.answered), (500, 204));
    assert_eq!(first.webhook_id, id);
    assert_eq!(second.webhook_id, id, "a retry carries the same webhook-id");
    assert_eq!(second.notice_type, "callback.due");
    assert_eq!(second.body["data"]["phone"], "+31612345601");
    assert_eq!(second.body, first.body, "every try sends the same bytes");

    let delivery = world
        .wait_for(&id, "delivered", |d| d.state == DeliveryState::Delivered)
        .await;
    assert_eq!(delivery.tries, 2);
    assert_eq!(delivery.last_status, Some(204));
    assert!(delivery.delivered_at.is_some());
    assert_eq!(receiver.rejected(), 0);
    notifier.stop().await;
}

#[tokio::test]
async fn a_restart_mid_retry_still_delivers_under_the_same_id() {
    let secret = new_secret();
    let (receiver, mut received) = Receiver::start(vec![secret.clone()]).await.unwrap();
    // Retry-After makes the retry time certain: long enough to restart in between.
    receiver.respond_next([Answer::too_many("2")]);
    let world = World::new(&queue_toml("support", &receiver.url(), &secret), &[]).await;
    let id = world.due_callback("support", "+31612345602").await;

    let first_run = world.start_notifier();
    let first = next_webhook(&mut received).await;
    world
        .wait_for(&id, "the first try is recorded", |d| d.tries == 1)
        .await;
    first_run.stop().await;
    let pending = world.store.get_delivery(&id).await.unwrap().unwrap();
    assert_eq!(
        (pending.state, pending.tries),
        (DeliveryState::Pending, 1),
        "stopped before the retry"
    );
    assert!(pending.next_try_at > Utc::now() - chrono::Duration::seconds(1));

    let second_run = world.start_notifier();
    let second = next_webhook(&mut received).await;
    assert_eq!(first.webhook_id, id);
    assert_eq!(second.webhook_id, id);
    assert!(
        second.timestamp >= first.timestamp,
        "each try is signed when sent"
    );
    let delivery = world
        .wait_for(&id, "delivered", |d| d.state == DeliveryState::Delivered)
        .await;
    assert_eq!(delivery.tries, 2);
    second_run.stop().await;
}

#[tokio::test]
async fn a_delivery_that_gives_up_is_kept_and_can_be_replayed() {
    let secret = new_secret();
    let (receiver, mut received) = Receiver::start(vec![secret.clone()]).await.unwrap();
    receiver.respond_next([503, 503]);
    let world = World::new(
        &queue_toml("support", &receiver.url(), &secret),
        &[("max_tries", "2")],
    )
    .await;
    let id = world.due_callback("support", "+31612345603").await;
    let notifier = world.start_notifier();

    let failed = world
        .wait_for(&id, "given up", |d| d.state == DeliveryState::Failed)
        .await;
    assert_eq!(failed.tries, 2);
    assert_eq!(failed.last_status, Some(503));
    assert_eq!(
        failed.last_error.as_deref(),
        Some("HTTP 503 Service Unavailable")
    );
    for _ in 0..2 {
        assert_eq!(next_webhook(&mut received).await.answered, 503);
    }

    // Replay wakes the running notifier through the store; the endpoint now answers 204.
    world
        .store
        .replay_delivery(&id, Utc::now())
        .await
        .unwrap()
        .unwrap();
    let replayed = next_webhook(&mut received).await;
    assert_eq!(replayed.webhook_id, id);
    assert_eq!(replayed.answered, 204);
    world
        .wait_for(&id, "delivered", |d| d.state == DeliveryState::Delivered)
        .await;
    notifier.stop().await;
}

#[tokio::test]
async fn gone_holds_the_endpoint_until_a_replay() {
    let secret = new_secret();
    let (receiver, mut received) = Receiver::start(vec![secret.clone()]).await.unwrap();
    receiver.respond_next([410]);
    let world = World::new(&queue_toml("support", &receiver.url(), &secret), &[]).await;
    let id = world.due_callback("support", "+31612345604").await;
    let notifier = world.start_notifier();

    world
        .wait_for(&id, "disabled", |d| d.state == DeliveryState::Disabled)
        .await;
    assert_eq!(next_webhook(&mut received).await.answered, 410);

    // A notice made meanwhile is held too: stored held, and not handed to the running notifier.
    let later = world.due_callback("support", "+31612345605").await;
    let stored = world.store.get_delivery(&later).await.unwrap().unwrap();
    assert_eq!(stored.state, DeliveryState::Disabled);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        received.try_recv().is_err(),
        "nothing is sent to a disabled endpoint"
    );

    world
        .store
        .replay_delivery(&id, Utc::now())
        .await
        .unwrap()
        .unwrap();
    let replayed = next_webhook(&mut received).await;
    assert_eq!(
        (replayed.webhook_id.as_str(), replayed.answered),
        (id.as_str(), 204)
    );
    world
        .wait_for(&id, "delivered", |d| d.state == DeliveryState::Delivered)
        .await;
    notifier.stop().await;
}

#[tokio::test]
async fn a_slow_endpoint_does_not_hold_back_a_fast_one() {
    let secret = new_secret();
    let (slow, mut slow_received) = Receiver::start(vec![secret.clone()]).await.unwrap();
    let (fast, mut fast_received) = Receiver::start(vec![secret.clone()]).await.unwrap();
    // Each slow answer takes 3 s, so the slow endpoint alone would need 9 s for its three.
    slow.set_delay(Duration::from_secs(3));
    let queues =
        queue_toml("slow", &slow.url(), &secret) + &queue_toml("fast", &fast.url(), &secret);
    let world = World::new(
        &queues,
        &[
            ("timeout", "5s"),
            ("max_in_flight", "2"),
            ("max_in_flight_per_endpoint", "1"),
        ],
    )
    .await;
    // The slow endpoint's deliveries are older, so they come first in the store's order.
    let mut slow_ids = Vec::new();
    for n in 0..3 {
        slow_ids.push(world.due_callback("slow", &format!("+3161234561{n}")).await);
    }
    let mut fast_ids = Vec::new();
    for n in 0..3 {
        fast_ids.push(world.due_callback("fast", &format!("+3161234562{n}")).await);
    }
    let notifier = world.start_notifier();

    // All fast deliveries arrive while the slow endpoint is still on its first request.
    let mut fast_seen = Vec::new();
    for _ in 0..3 {
        fast_seen.push(next_webhook(&mut fast_received).await.webhook_id);
    }
    let slow_so_far = std::iter::from_fn(|| slow_received.try_recv().ok()).count();
    assert_eq!(
        slow_so_far, 1,
        "one slow request at a time, the first still running"
    );
    fast_seen.sort();
    fast_ids.sort();
    assert_eq!(fast_seen, fast_ids);

    for id in &fast_ids {
        world
            .wait_for(id, "delivered", |d| d.state == DeliveryState::Delivered)
            .await;
    }
    let first_slow = world
        .wait_for(&slow_ids[0], "delivered", |d| {
            d.state == DeliveryState::Delivered
        })
        .await;
    assert_eq!(first_slow.tries, 1);
    notifier.stop().await;
}

#[tokio::test]
async fn deliveries_made_while_the_store_is_read_are_each_sent_once() {
    let secret = new_secret();
    let (receiver, mut received) = Receiver::start(vec![secret.clone()]).await.unwrap();
    let world = World::new(&queue_toml("support", &receiver.url(), &secret), &[]).await;
    let notifier = world.start_notifier();
    // Asked to look at the store all the time, the notifier reads ready deliveries while the
    // writes below commit and hand theirs over: each must still be sent once.
    let inbox = world.inbox.clone();
    let looking = tokio::spawn(async move {
        loop {
            inbox.look();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let mut made = Vec::new();
    for n in 0..200 {
        made.push(world.due_callback("support", &format!("+3161{n:07}")).await);
    }
    let mut seen = HashMap::new();
    while seen.len() < made.len() {
        let webhook = next_webhook(&mut received).await;
        *seen.entry(webhook.webhook_id).or_insert(0) += 1;
    }
    for id in &made {
        world
            .wait_for(id, "delivered", |d| d.state == DeliveryState::Delivered)
            .await;
    }
    looking.abort();
    // Anything sent twice would have arrived by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(webhook) = received.try_recv() {
        *seen.entry(webhook.webhook_id).or_insert(0) += 1;
    }
    made.sort();
    let mut sent: Vec<_> = seen.keys().cloned().collect();
    sent.sort();
    assert_eq!(sent, made, "every delivery made was sent");
    let twice: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    notifier.stop().await;
}
