//! The webhook body of a callback's notice: every field of the contract, and what rendering it
//! costs (run by hand under callgrind).

mod common;

use callkeeper::domain::inbound::CallbackRequest;
use callkeeper::domain::lifecycle::{self, Notice};
use callkeeper::domain::{Callback, Customer, Priority, QueueName};
use callkeeper::notify::outbox::{self, rfc3339};
use chrono::{DateTime, TimeZone, Utc};
use common::{support_request, support_rules};
use serde_json::{json, Value};

const PUBLIC_URL: &str = "http://callkeeper.test/";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 3, 4, 9, 0, 0).unwrap()
}

/// A callback for `support` requested at `t0`, with a customer and an IVR context.
fn callback() -> Callback {
    let rules = support_rules();
    let policy = rules.queue(&QueueName::parse("support").unwrap()).unwrap();
    let request = CallbackRequest {
        priority: Priority::High,
        customer: Some(Customer {
            id: Some("c-1".into()),
            name: Some("Ada".into()),
            language: Some("nl".into()),
            timezone: None,
        }),
        context: Some(json!({ "ivr_path": ["billing", "invoice"], "reason": "double charge" })),
        ..support_request("+31612345678")
    };
    lifecycle::create(&request, policy.plan(&request, t0()), policy, t0())
}

#[test]
fn a_due_body_carries_every_field_of_the_callback() {
    let cb = callback();
    let now = t0() + chrono::Duration::seconds(1);
    let body: Value =
        serde_json::from_str(&outbox::body(Notice::Due, &cb, PUBLIC_URL, now)).unwrap();
    assert_eq!(body["type"], "callback.due");
    assert_eq!(body["timestamp"], rfc3339(now));
    let url = format!("http://callkeeper.test/v1/callbacks/{}", cb.id);
    let expected = json!({
        "callback_id": cb.id.to_string(),
        "queue": "support",
        "priority": "high",
        "phone": "+31612345678",
        "customer": { "id": "c-1", "name": "Ada", "language": "nl" },
        "agent_id": null,
        "offered_to": "queue",
        "context": { "ivr_path": ["billing", "invoice"], "reason": "double charge" },
        "call": null,
        "window": null,
        "state": "scheduled",
        "sla": "pending",
        "requested_at": rfc3339(t0()),
        "due_at": rfc3339(t0()),
        "deadline": rfc3339(t0() + chrono::Duration::hours(1)),
        "attempt": 1,
        "attempts_made": 0,
        "max_attempts": cb.max_attempts,
        "last_outcome": null,
        "requests": 1,
        "callback_url": url,
        "claim_url": format!("{url}/claim"),
        "attempt_url": format!("{url}/attempts"),
    });
    assert_eq!(body["data"], expected);
    assert_eq!(body.as_object().unwrap().len(), 3, "type, timestamp, data");
}

/// Rendering cost, for `valgrind --tool=callgrind`: run it with `N=1` and `N=10001` and divide
/// the difference of the totals by 10,000 (BENCHMARKS.md). By hand:
/// `cargo test --release --test webhook_body render -- --ignored`.
#[test]
#[ignore = "cost check, run by hand under callgrind"]
fn render_many_bodies() {
    let cb = callback();
    let n: usize = std::env::var("N").map_or(10_000, |v| v.parse().unwrap());
    let first = outbox::body(Notice::Due, &cb, PUBLIC_URL, t0());
    for _ in 1..n {
        assert_eq!(outbox::body(Notice::Due, &cb, PUBLIC_URL, t0()), first);
    }
}
