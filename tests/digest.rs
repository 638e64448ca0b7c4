//! The daily `sla.digest` webhook: made at its cron time in the queue's zone with yesterday's
//! exact figures, once per queue and day across restarts, made up for after a missed fire time,
//! and sent by the real worker to the escalation endpoint the way `GET /v1/sla` reports the day.
//!
//! Real SQLite, the real notifier and a real receiver that verifies every signature; time is a
//! `ManualClock` set just before a fire time, so the task's own wait is a second or two.

mod common;

use std::sync::Arc;
use std::time::Duration;

use callkeeper::clock::{ManualClock, SharedClock};
use callkeeper::config::Config;
use callkeeper::digest::SlaDigests;
use callkeeper::domain::inbound::{
    AttemptReport, CancelTarget, Command, EventKey, Inbound, InboundOutcome,
};
use callkeeper::domain::lifecycle::Notice;
use callkeeper::domain::{CallbackId, CancelReason, Outcome, Phone, QueueName};
use callkeeper::notify::outbox::digest_id;
use callkeeper::notify::{Delivery, DeliveryState, Notifier, ReceivedWebhook, Receiver};
use callkeeper::schedule::{Rules, WakeupReceivers, Wakeups};
use callkeeper::store::{self, SharedStore, StoreSettings, TryResult};
use chrono::{DateTime, NaiveDate, TimeDelta, TimeZone, Utc};
use common::support_request;
use secrecy::ExposeSecret as _;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Generous bound for anything the tests wait for; conditions are polled, never slept on.
const PATIENCE: Duration = Duration::from_secs(15);

/// A moment in March 2030 (Amsterdam is on CET, UTC+1, until the 31st).
fn march(day: u32, hour: u32, minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 3, day, hour, minute, 0).unwrap()
}

/// Tuesday 2030-03-05 07:00 in Amsterdam.
fn tuesday_seven() -> DateTime<Utc> {
    march(5, 6, 0)
}

fn seconds(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

fn date(day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2030, 3, day).unwrap()
}

fn support() -> QueueName {
    QueueName::parse("support").unwrap()
}

/// A store file, a receiver, and the configuration of one queue in Amsterdam whose digest
/// goes to the receiver's `/supervisors`.
struct World {
    config: Config,
    url: String,
    clock: ManualClock,
    received: UnboundedReceiver<ReceivedWebhook>,
    _receiver: Receiver,
    _dir: TempDir,
}

/// A started digest task and notifier over their own opening of the store, as a worker start.
struct Running {
    store: SharedStore,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl World {
    async fn new(sla_digest: &str, now: DateTime<Utc>) -> Self {
        let secret = common::new_secret();
        let (receiver, received) = Receiver::start(vec![secret.clone()]).await.unwrap();
        let text = format!(
            r#"
            [notify]
            retry_base = "50ms"
            retry_max = "200ms"
            max_tries = 4
            [calling_window.default]
            every_day = ["00:00-24:00"]
            [queues.support]
            webhook_url = "{url}/agents"
            escalation_url = "{url}/supervisors"
            signing_secrets = ["{secret}"]
            timezone = "Europe/Amsterdam"
            sla = {{ normal = "12h", high = "1h", urgent = "15m" }}
            retry_delays = ["10m"]
            sla_digest = "{sla_digest}"
            "#,
            url = receiver.url(),
            secret = secret.expose_secret(),
        );
        let dir = tempfile::tempdir().unwrap();
        Self {
            config: Config::from_toml_with_env(&text, []).expect("test config is valid"),
            url: format!("sqlite://{}/callkeeper.db", dir.path().display()),
            clock: ManualClock::new(now),
            received,
            _receiver: receiver,
            _dir: dir,
        }
    }

    /// Opens the store as a worker start does, migrations included.
    async fn open(&self) -> (SharedStore, WakeupReceivers) {
        let (wakeups, receivers) = Wakeups::new();
        let settings = StoreSettings {
            rules: Arc::new(Rules::from_config(&self.config)),
            public_url: self.config.http.public_url.clone(),
            opt_out_period: self.config.intake.opt_out_period,
            wakeups,
        };
        (store::open(&self.url, settings).await.unwrap(), receivers)
    }

    async fn start(&self) -> Running {
        let (store, wakeups) = self.open().await;
        let clock: SharedClock = Arc::new(self.clock.clone());
        let notifier = Notifier::new(
            store.clone(),
            Arc::new(Rules::from_config(&self.config)),
            self.config.notify.clone(),
            clock.clone(),
            wakeups.deliveries,
        );
        let digests = SlaDigests::new(store.clone(), clock, &self.config).unwrap();
        let stop = CancellationToken::new();
        let tasks = vec![
            tokio::spawn(notifier.run(stop.clone())),
            tokio::spawn(digests.run(stop.clone())),
        ];
        Running { store, stop, tasks }
    }

    async fn next_webhook(&mut self) -> ReceivedWebhook {
        tokio::time::timeout(PATIENCE, self.received.recv())
            .await
            .expect("a webhook arrives in time")
            .expect("the receiver is running")
    }

    /// The next webhook, which must be the digest of `day`; waits until it is recorded as
    /// delivered, so a restart after this finds it sent.
    async fn digest_arrives(&mut self, running: &Running, day: NaiveDate) -> ReceivedWebhook {
        let webhook = self.next_webhook().await;
        assert_eq!(webhook.notice_type, "sla.digest");
        assert_eq!(webhook.body["data"]["day"], day.to_string());
        assert_eq!(webhook.webhook_id, digest_id(&support(), day));
        assert_eq!(webhook.path, "/hooks/supervisors");
        running.wait_delivered(&webhook.webhook_id).await;
        webhook
    }
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            tokio::time::timeout(PATIENCE, task)
                .await
                .expect("tasks stop on shutdown")
                .unwrap()
                .unwrap();
        }
    }

    async fn wait_delivered(&self, id: &str) -> Delivery {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let delivery = self.store.get_delivery(id).await.unwrap();
            match delivery {
                Some(d) if d.state == DeliveryState::Delivered => return d,
                other => assert!(
                    tokio::time::Instant::now() < deadline,
                    "{id} was not delivered: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The stored digests, oldest day first.
    async fn digests(&self) -> Vec<Delivery> {
        let mut all = self.store.list_deliveries(None, 500).await.unwrap();
        all.retain(|d| d.notice == Notice::SlaDigest);
        all.reverse();
        all
    }
}

/// Every digest of `days` was made once and sent once, and nothing else came.
async fn each_sent_once(world: &mut World, running: &Running, days: &[NaiveDate]) {
    let digests = running.digests().await;
    let ids: Vec<&str> = digests.iter().map(|d| d.id.as_str()).collect();
    let expected: Vec<String> = days.iter().map(|day| digest_id(&support(), *day)).collect();
    assert_eq!(ids, expected);
    for digest in &digests {
        assert_eq!((digest.state, digest.tries), (DeliveryState::Delivered, 1));
        assert_eq!(digest.callback_id, None);
    }
    assert!(
        world.received.try_recv().is_err(),
        "no other webhook arrived"
    );
}

/// Applies one event at `at`.
async fn apply(store: &SharedStore, command: Command, at: DateTime<Utc>) -> InboundOutcome {
    let id = uuid::Uuid::now_v7().to_string();
    let event = Inbound {
        key: EventKey {
            source: "/tests/digest".into(),
            id: id.clone(),
        },
        fingerprint: id,
        command,
    };
    store.apply_inbound(&[event], at).await.unwrap().remove(0)
}

async fn requested(store: &SharedStore, phone: &str, at: DateTime<Utc>) -> CallbackId {
    match apply(store, Command::Request(support_request(phone)), at).await {
        InboundOutcome::Created(id) => id,
        other => panic!("expected a new callback, got {other:?}"),
    }
}

async fn attempted(store: &SharedStore, id: CallbackId, outcome: Outcome, at: DateTime<Utc>) {
    let report = AttemptReport {
        agent_id: "a-1".into(),
        outcome,
        note: None,
    };
    store.record_attempt(id, &report, at).await.unwrap();
}

#[tokio::test]
async fn the_digest_fires_at_the_cron_time_in_the_queue_zone_with_yesterdays_figures() {
    // Weekly on Tuesdays, so a start just before it has nothing to make up for.
    let mut world = World::new("0 0 7 * * Tue", tuesday_seven() - seconds(2)).await;
    // Monday 2030-03-04 in Amsterdam is [Sun 23:00, Mon 23:00) UTC. Targets are 12 h.
    let (store, _wakeups) = world.open().await;
    // A: answered after 30 minutes. B: no answer after an hour, answered after two.
    let a = requested(&store, "+31612340001", march(4, 9, 0)).await;
    attempted(&store, a, Outcome::Connected, march(4, 9, 30)).await;
    let b = requested(&store, "+31612340002", march(4, 9, 0)).await;
    attempted(&store, b, Outcome::NoAnswer, march(4, 10, 0)).await;
    attempted(&store, b, Outcome::Connected, march(4, 11, 0)).await;
    // C: never called, missed. D: 00:30 on Monday in Amsterdam, still Sunday in UTC; missed.
    let c = requested(&store, "+31612340003", march(4, 9, 0)).await;
    let d = requested(&store, "+31612340004", march(3, 23, 30)).await;
    for id in [c, d] {
        store.advance_one(id, march(5, 5, 0)).await.unwrap();
    }
    // E: 23:30 on Monday in Amsterdam; its deadline is not reached yet.
    requested(&store, "+31612340005", march(4, 22, 30)).await;
    // Not Monday in Amsterdam: 23:30 on Sunday, and 00:30 on Tuesday (Monday in UTC).
    requested(&store, "+31612340006", march(3, 22, 30)).await;
    requested(&store, "+31612340007", march(4, 23, 30)).await;
    // The callback webhooks of C and D went out on the day.
    let sent = TryResult::Delivered { status: 204 };
    for delivery in store.list_deliveries(None, 500).await.unwrap() {
        assert_ne!(delivery.notice, Notice::SlaDigest);
        store
            .record_try(&delivery.id, &sent, march(5, 5, 0))
            .await
            .unwrap();
    }
    drop(store);

    let started = tokio::time::Instant::now();
    let running = world.start().await;
    let digest = world.digest_arrives(&running, date(4)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "made at its fire time, not at start"
    );
    assert_eq!(digest.body["type"], "sla.digest");
    assert_eq!(
        digest.body["data"],
        json!({
            "queue": "support",
            "day": "2030-03-04",
            "time_zone": "Europe/Amsterdam",
            "from": "2030-03-03T23:00:00.000Z",
            "to": "2030-03-04T23:00:00.000Z",
            "requested": 5,
            "requests": 5,
            "attempted": 2,
            "met": 2,
            "missed": 2,
            "pending": 1,
            "attainment": 0.5,
            "time_to_first_attempt": { "p50": 1800.0, "p90": 3600.0 },
            // First attempts 11.5 and 11 hours before their 21:00 UTC deadlines.
            "punctuality": { "p50": -41400.0, "p90": -39600.0 },
            "attempts_per_callback": 1.5,
        })
    );
    assert!(
        !digest.body.to_string().contains("+3161234"),
        "a digest carries no phone number"
    );
    each_sent_once(&mut world, &running, &[date(4)]).await;
    running.stop().await;
}

#[tokio::test]
async fn a_restart_after_the_digest_fired_does_not_send_it_again() {
    let mut world = World::new("0 0 7 * * *", tuesday_seven() - seconds(2)).await;
    let first = world.start().await;
    // Starting, it makes up for Monday 07:00 (less than a day ago): Sunday's digest. Then
    // Monday's at 07:00 on Tuesday.
    world.digest_arrives(&first, date(3)).await;
    world.digest_arrives(&first, date(4)).await;
    first.stop().await;

    // Restarted just before 07:00 on Wednesday: Tuesday 07:00 lies within the look-back, but
    // Monday's digest was made then; the next to come is Tuesday's, at its time.
    world
        .clock
        .set(tuesday_seven() + TimeDelta::days(1) - seconds(2));
    let second = world.start().await;
    world.digest_arrives(&second, date(5)).await;
    // The look-back ran before the wait for Wednesday 07:00, so by now it would have shown.
    each_sent_once(&mut world, &second, &[date(3), date(4), date(5)]).await;
    second.stop().await;
}

#[tokio::test]
async fn a_restart_after_a_missed_fire_time_catches_up_once() {
    let mut world = World::new("0 0 7 * * *", tuesday_seven() - TimeDelta::hours(2)).await;
    let first = world.start().await;
    world.digest_arrives(&first, date(3)).await;
    first.stop().await;

    // Down over Tuesday 07:00 until 10:00: Monday's digest is made on start.
    world.clock.set(tuesday_seven() + TimeDelta::hours(3));
    let second = world.start().await;
    world.digest_arrives(&second, date(4)).await;
    second.stop().await;

    // Once: started again before Wednesday 07:00, it finds Monday's made and sends Tuesday's.
    world
        .clock
        .set(tuesday_seven() + TimeDelta::days(1) - seconds(2));
    let third = world.start().await;
    world.digest_arrives(&third, date(5)).await;
    each_sent_once(&mut world, &third, &[date(3), date(4), date(5)]).await;
    third.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_sends_the_digest_to_escalation_as_get_sla_reports_the_day() {
    let clock = ManualClock::new(tuesday_seven() - seconds(6));
    let mut app = common::spawn_app(common::Setup {
        queue_toml: r#"
            timezone = "Europe/Amsterdam"
            sla = { normal = "4h", high = "1h", urgent = "15m" }
            sla_digest = "0 0 7 * * Tue"
        "#
        .into(),
        clock: Arc::new(clock),
    })
    .await;
    // Two Monday requests in Amsterdam, each cancelled in the same batch so the running timer
    // never moves them; one late on Monday in UTC, which is Tuesday in Amsterdam.
    for (phone, at) in [
        ("+31612340011", march(4, 9, 0)),
        ("+31612340012", march(3, 23, 30)),
        ("+31612340013", march(4, 23, 30)),
    ] {
        let cancel = Command::Cancel {
            target: CancelTarget::Phone {
                phone: Phone::parse(phone).unwrap(),
                queue: None,
            },
            reason: CancelReason::CustomerReached,
        };
        let batch: Vec<Inbound> = [Command::Request(support_request(phone)), cancel]
            .into_iter()
            .map(|command| {
                let id = uuid::Uuid::now_v7().to_string();
                Inbound {
                    key: EventKey {
                        source: "/tests/digest".into(),
                        id: id.clone(),
                    },
                    fingerprint: id,
                    command,
                }
            })
            .collect();
        app.store.apply_inbound(&batch, at).await.unwrap();
    }

    let digest = app
        .next_webhook(PATIENCE, |w| w.notice_type == "sla.digest")
        .await;
    assert_eq!(digest.path, "/hooks/supervisors");
    assert_eq!(digest.webhook_id, digest_id(&support(), date(4)));
    let data = &digest.body["data"];
    assert_eq!(
        (&data["requested"], &data["pending"]),
        (&json!(2), &json!(2))
    );
    let (status, sla) = app
        .get(&format!(
            "/v1/sla?queue=support&from={}&to={}",
            data["from"].as_str().unwrap(),
            data["to"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200, "{sla}");
    for (key, value) in sla.as_object().unwrap() {
        assert_eq!(&data[key], value, "{key} differs from GET /v1/sla");
    }

    // Listed among the deliveries with no callback, and replayable under the same id.
    let (_, page) = app.get("/v1/deliveries").await;
    let listed: Vec<&Value> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["type"] == "sla.digest")
        .collect();
    assert_eq!(listed.len(), 1, "{page}");
    assert_eq!(listed[0]["id"], digest.webhook_id.as_str());
    assert_eq!(listed[0]["callback_id"], Value::Null);
    assert!(
        common::wait_for(PATIENCE, || {
            let store = app.store.clone();
            let id = digest.webhook_id.clone();
            async move {
                store
                    .get_delivery(&id)
                    .await
                    .unwrap()
                    .is_some_and(|d| d.state == DeliveryState::Delivered)
            }
        })
        .await
    );
    let (status, _) = app
        .post(
            &format!("/v1/deliveries/{}/replay", digest.webhook_id),
            json!({}),
        )
        .await;
    assert_eq!(status, 202);
    let again = app
        .next_webhook(PATIENCE, |w| w.notice_type == "sla.digest")
        .await;
    assert_eq!(again.webhook_id, digest.webhook_id);
    assert_eq!(again.body, digest.body, "a replay sends the same bytes");
    app.stop().await;
}
