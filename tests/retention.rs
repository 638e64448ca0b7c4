//! Retention and erasure: the purge removes exactly the closed callbacks older than the cut-off
//! (with their attempts, deliveries and outbox events) and nothing else; erasing a number leaves
//! no trace of it in the database file, checked with direct SQL and on the raw bytes.

mod common;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use callkeeper::config::Config;
use callkeeper::domain::inbound::{
    AttemptReport, CallbackRequest, CancelTarget, Command, EventKey, Inbound, InboundOutcome,
};
use callkeeper::domain::{CallbackId, CancelReason, Outcome, Phone, QueueName, Window};
use callkeeper::retention::purge_before;
use callkeeper::schedule::{Rules, Wakeups};
use callkeeper::store::{SqliteStore, Store, StoreSettings};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use common::{spawn_app, support_request, Setup};
use serde_json::json;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Row, SqliteConnection};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

const TOML: &str = r#"
[http]
public_url = "http://callkeeper.test"
[calling_window.default]
every_day = ["00:00-24:00"]
[queues.support]
webhook_url = "http://127.0.0.1:9/agents"
escalation_url = "http://127.0.0.1:9/escalation"
signing_secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
sla = { normal = "4h", high = "1h", urgent = "15m" }
retry_delays = ["10m"]
max_attempts = 3
"#;

struct Harness {
    store: SqliteStore,
    path: std::path::PathBuf,
    _dir: TempDir,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callkeeper.db");
    let config = Config::from_toml_with_env(TOML, []).unwrap();
    let (wakeups, _receivers) = Wakeups::new();
    let settings = StoreSettings {
        rules: Arc::new(Rules::from_config(&config)),
        public_url: config.http.public_url.clone(),
        opt_out_period: Duration::from_secs(3600 * 24 * 365),
        wakeups,
    };
    let store = SqliteStore::connect(&format!("sqlite://{}", path.display()), settings)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    Harness {
        store,
        path,
        _dir: dir,
    }
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 3, 4, 9, 0, 0).unwrap()
}

fn days(n: i64) -> TimeDelta {
    TimeDelta::days(n)
}

fn report(outcome: Outcome) -> AttemptReport {
    AttemptReport {
        agent_id: "a-1".into(),
        outcome,
        note: None,
    }
}

impl Harness {
    async fn apply(&self, command: Command, at: DateTime<Utc>) -> InboundOutcome {
        let event = Inbound {
            key: EventKey {
                source: "test".into(),
                id: uuid::Uuid::now_v7().to_string(),
            },
            fingerprint: uuid::Uuid::now_v7().to_string(),
            command,
        };
        self.store
            .apply_inbound(&[event], at)
            .await
            .unwrap()
            .remove(0)
    }

    /// A callback requested at `at` and, due at once, made due by intake (one due delivery).
    async fn due(&self, request: CallbackRequest, at: DateTime<Utc>) -> CallbackId {
        let id = match self.apply(Command::Request(request), at).await {
            InboundOutcome::Created(id) => id,
            other => panic!("expected a new callback, got {other:?}"),
        };
        let deliveries = self.store.list_deliveries(None, 1000).await.unwrap();
        let of_id = deliveries.iter().filter(|d| d.callback_id == Some(id));
        assert_eq!(of_id.count(), 1);
        id
    }

    async fn sql(&self) -> SqliteConnection {
        SqliteConnectOptions::from_str(&format!("sqlite://{}", self.path.display()))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Rows in `table` that belong to callback `id`.
    async fn rows_of(&self, table: &str, id: CallbackId) -> i64 {
        let column = if table == "callbacks" {
            "id"
        } else {
            "callback_id"
        };
        let mut conn = self.sql().await;
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE {column} = ?"))
            .bind(id.to_string())
            .fetch_one(&mut conn)
            .await
            .unwrap()
    }

    async fn count(&self, table: &str) -> i64 {
        let mut conn = self.sql().await;
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&mut conn)
            .await
            .unwrap()
    }
}

const TABLES: [&str; 4] = ["callbacks", "attempts", "deliveries", "event_outbox"];

#[tokio::test]
async fn purge_removes_exactly_the_old_closed_callbacks() {
    let h = harness().await;
    let old = t0();
    // Closed long ago, one of each closed state, each with attempts/deliveries/events.
    let completed = h.due(support_request("+31612345601"), old).await;
    h.store
        .record_attempt(completed, &report(Outcome::NoAnswer), old)
        .await
        .unwrap();
    h.store
        .record_attempt(completed, &report(Outcome::Connected), old)
        .await
        .unwrap();
    let failed = h.due(support_request("+31612345602"), old).await;
    h.store
        .record_attempt(failed, &report(Outcome::InvalidNumber), old)
        .await
        .unwrap();
    let cancelled = h.due(support_request("+31612345603"), old).await;
    h.store
        .cancel(cancelled, CancelReason::CustomerReached, old)
        .await
        .unwrap();
    let mut windowed = support_request("+31612345604");
    windowed.window = Some(Window {
        not_before: old,
        not_after: old + TimeDelta::hours(1),
    });
    let expired = h.due(windowed, old).await;
    h.store
        .advance_one(expired, old + TimeDelta::hours(2))
        .await
        .unwrap();
    let expired_cb = h.store.get(expired).await.unwrap().unwrap();
    assert_eq!(expired_cb.state.as_str(), "expired");

    // Kept: open however old, and closed but recent.
    let open_old = h.due(support_request("+31612345605"), old).await;
    h.store
        .record_attempt(open_old, &report(Outcome::Busy), old)
        .await
        .unwrap();
    let recent = t0() + days(100);
    let closed_recently = h.due(support_request("+31612345606"), recent).await;
    h.store
        .record_attempt(closed_recently, &report(Outcome::Connected), recent)
        .await
        .unwrap();
    // An opt-out that ended long ago, and one still in force.
    h.apply(
        Command::OptOut {
            phone: Phone::parse("+31612345607").unwrap(),
        },
        old - days(400),
    )
    .await;
    h.apply(
        Command::OptOut {
            phone: Phone::parse("+31612345608").unwrap(),
        },
        recent,
    )
    .await;

    let purged_ids = [completed, failed, cancelled, expired];
    let kept_ids = [open_old, closed_recently];
    for id in purged_ids.iter().chain(&kept_ids) {
        assert_eq!(h.rows_of("callbacks", *id).await, 1);
        assert!(h.rows_of("deliveries", *id).await >= 1);
        assert!(h.rows_of("event_outbox", *id).await >= 1);
    }
    let mut kept_rows = Vec::new();
    for id in &kept_ids {
        for table in TABLES {
            kept_rows.push((table, *id, h.rows_of(table, *id).await));
        }
    }
    let mut expected = callkeeper::store::Purged::default();
    for id in &purged_ids {
        expected.callbacks += 1;
        expected.attempts += h.rows_of("attempts", *id).await as u64;
        expected.deliveries += h.rows_of("deliveries", *id).await as u64;
        expected.event_outbox += h.rows_of("event_outbox", *id).await as u64;
    }
    // Inbound events: 5 requests + 1 opt-out applied at `old` or before, 1 request and 1
    // opt-out at `recent`.
    assert_eq!(h.count("inbound_events").await, 8);
    expected.inbound_events = 6;
    expected.opt_outs = 1;

    // Batches of one: the loop must go on until nothing old is left.
    let cutoff = t0() + days(90);
    let first = h.store.purge(cutoff, 1).await.unwrap();
    assert_eq!(first.callbacks, 1, "one callback per batch");
    let mut total = first;
    total.add(
        purge_before(&h.store, cutoff, &CancellationToken::new())
            .await
            .unwrap(),
    );
    assert_eq!(total, expected);

    for id in &purged_ids {
        for table in TABLES {
            assert_eq!(h.rows_of(table, *id).await, 0, "{table} of purged {id}");
        }
    }
    for (table, id, n) in kept_rows {
        assert_eq!(h.rows_of(table, id).await, n, "{table} of kept {id}");
    }
    assert_eq!(h.count("inbound_events").await, 2);
    let mut conn = h.sql().await;
    let opted: Vec<String> = sqlx::query_scalar("SELECT phone FROM opt_outs")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(opted, ["+31612345608"], "the opt-out in force stays");

    // Nothing more to purge: a second pass removes nothing.
    let again = purge_before(&h.store, cutoff, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(again, callkeeper::store::Purged::default());
}

#[tokio::test]
async fn erasure_leaves_no_trace_but_keeps_the_opt_out() {
    const NUMBER: &str = "+31612345678";
    let h = harness().await;
    let completed = h.due(support_request(NUMBER), t0()).await;
    h.store
        .record_attempt(completed, &report(Outcome::Connected), t0())
        .await
        .unwrap();
    let open = h.due(support_request(NUMBER), t0() + days(1)).await;
    h.store
        .record_attempt(open, &report(Outcome::NoAnswer), t0() + days(1))
        .await
        .unwrap();
    // Another number's callback whose context names this number: its webhook body holds it.
    let mut other = support_request("+31612345699");
    other.context = Some(json!({ "alternative_number": NUMBER }));
    let other = h.due(other, t0()).await;
    // The number opted out (in another queue-less command) after the callbacks.
    h.apply(
        Command::OptOut {
            phone: Phone::parse(NUMBER).unwrap(),
        },
        t0() + days(2),
    )
    .await;
    // Cancelled by the opt-out, still stored.
    assert_eq!(
        h.store.get(open).await.unwrap().unwrap().state.as_str(),
        "cancelled"
    );
    // A cancel by phone for good measure (no open callback left: changes nothing).
    h.apply(
        Command::Cancel {
            target: CancelTarget::Phone {
                phone: Phone::parse(NUMBER).unwrap(),
                queue: None,
            },
            reason: CancelReason::Other,
        },
        t0() + days(2),
    )
    .await;

    let erased = h
        .store
        .erase_phone(&Phone::parse(NUMBER).unwrap())
        .await
        .unwrap();
    assert_eq!(erased.callbacks, 2);
    assert_eq!(erased.attempts, 2);
    // A due for each of its callbacks, and the other callback's due that names it.
    assert_eq!(erased.deliveries, 3);
    assert!(erased.event_outbox >= 8, "{erased:?}");
    assert_eq!(erased.redacted, 1, "the other callback's context");
    assert!(erased.opt_out_kept);

    let mut conn = h.sql().await;
    for (table, column) in [("callbacks", "phone"), ("attempts", "phone")] {
        let n: i64 =
            sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE {column} = ?"))
                .bind(NUMBER)
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert_eq!(n, 0, "{table}");
    }
    for id in [completed, open] {
        for table in TABLES {
            assert_eq!(h.rows_of(table, id).await, 0, "{table} of erased {id}");
        }
    }
    // The other number's callback stays, the number blanked out of its context.
    let other = h.store.get(other).await.unwrap().unwrap();
    assert_eq!(
        other.context,
        Some(json!({ "alternative_number": "[erased]" }))
    );
    // Every text value of every table: the number is only in the opt-out.
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    for table in tables {
        let rows = sqlx::query(&format!("SELECT * FROM \"{table}\""))
            .fetch_all(&mut conn)
            .await
            .unwrap();
        for row in rows {
            for i in 0..row.len() {
                let text: Option<String> = row.try_get(i).ok().flatten();
                if let Some(text) = text {
                    if text.contains(NUMBER) {
                        assert_eq!(table, "opt_outs", "{table} still holds the number");
                    }
                }
            }
        }
    }
    drop(conn);
    // And on disk: no free page or WAL frame still holds it, outside the opt-out row.
    h.store.close().await;
    let mut bytes = std::fs::read(&h.path).unwrap();
    if let Ok(wal) = std::fs::read(h.path.with_extension("db-wal")) {
        bytes.extend(wal);
    }
    let hits = bytes
        .windows(NUMBER.len())
        .filter(|w| *w == NUMBER.as_bytes())
        .count();
    // Only the opt-out row (a WITHOUT ROWID table: the row is its own index entry).
    assert_eq!(hits, 1, "the number appears {hits} times in the file");
}

/// Stores the `sla.digest` of 2030-03-`day` for queue support, made at `made_at`.
async fn digest(h: &Harness, day: u32, made_at: DateTime<Utc>) -> String {
    let day = chrono::NaiveDate::from_ymd_opt(2030, 3, day).unwrap();
    let delivery = callkeeper::notify::outbox::sla_digest(
        &QueueName::parse("support").unwrap(),
        "http://127.0.0.1:9/escalation",
        &callkeeper::domain::sla::LocalDay::new(chrono_tz::UTC, day),
        &callkeeper::domain::sla::SlaReport::from_rows(&[]),
        made_at,
    );
    assert!(h.store.add_sla_digest(&delivery).await.unwrap());
    delivery.id
}

#[tokio::test]
async fn digests_outlive_the_cutoff_by_a_day_and_erasure_leaves_them() {
    const NUMBER: &str = "+31612345678";
    let h = harness().await;
    let cutoff = t0() + days(90);
    let sent = callkeeper::store::TryResult::Delivered { status: 204 };
    // Sent long ago: purged. Sent half a day before the cutoff: kept one day more, so the digest
    // task's look-back still finds it. Never sent: kept, whatever its age.
    let old = digest(&h, 1, t0()).await;
    h.store.record_try(&old, &sent, t0()).await.unwrap();
    let recent = digest(&h, 2, cutoff - TimeDelta::hours(12)).await;
    h.store.record_try(&recent, &sent, cutoff).await.unwrap();
    let unsent = digest(&h, 3, t0()).await;

    // Erasing a number touches no digest: none is any callback's, none holds a number.
    let callback = h.due(support_request(NUMBER), t0()).await;
    h.store
        .record_attempt(callback, &report(Outcome::Connected), t0())
        .await
        .unwrap();
    let erased = h
        .store
        .erase_phone(&Phone::parse(NUMBER).unwrap())
        .await
        .unwrap();
    assert_eq!((erased.callbacks, erased.deliveries), (1, 1));
    assert_eq!(h.count("deliveries").await, 3, "the three digests are left");

    let purged = purge_before(&h.store, cutoff, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        purged,
        callkeeper::store::Purged {
            digests: 1,
            // The erased number's request key: it holds no number, so erasure left it.
            inbound_events: 1,
            ..Default::default()
        }
    );
    assert!(h.store.get_delivery(&old).await.unwrap().is_none());
    for kept in [&recent, &unsent] {
        assert!(
            h.store.get_delivery(kept).await.unwrap().is_some(),
            "{kept}"
        );
    }
    // A day later the recent one goes too.
    let later = purge_before(&h.store, cutoff + days(1), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(later.digests, 1);
    assert_eq!(
        h.count("deliveries").await,
        1,
        "only the unsent one is left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_contact_route_erases_and_reports() {
    const NUMBER: &str = "+31612345678";
    let mut app = spawn_app(Setup::default()).await;
    app.ivr
        .publish(
            "callback.requested",
            json!({ "phone": NUMBER, "queue": "support" }),
        )
        .await
        .unwrap();
    let due = app
        .next_webhook(Duration::from_secs(15), |w| w.notice_type == "callback.due")
        .await;
    let id = due.body["data"]["callback_id"]
        .as_str()
        .unwrap()
        .to_string();

    let delete = |path: String, token: &'static str| {
        let http = app.http.clone();
        let url = format!("{}{path}", app.api);
        async move {
            let response = http.delete(url).bearer_auth(token).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (status, _) = delete("/v1/contacts/%2B31612345678".into(), "wrong").await;
    assert_eq!(status, 401);
    let (status, body) = delete("/v1/contacts/0612345678".into(), common::TOKEN).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_phone");

    let (status, body) = delete("/v1/contacts/%2B31612345678".into(), common::TOKEN).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["callbacks"], 1);
    assert_eq!(body["attempts"], 0);
    assert_eq!(body["deliveries"], 1);
    assert_eq!(body["opt_out_kept"], false);
    assert!(body["event_outbox"].is_u64());
    let (status, _) = app.get(&format!("/v1/callbacks/{id}")).await;
    assert_eq!(status, 404, "the callback is gone");

    // Erasing again finds nothing.
    let (status, body) = delete("/v1/contacts/%2B31612345678".into(), common::TOKEN).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["callbacks"], 0);
    app.stop().await;
}
