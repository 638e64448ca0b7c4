//! Lifecycle events out: every state change of a callback, as a CloudEvent on a RabbitMQ topic
//! exchange (default `callkeeper.events`, routing key = the event type).
//!
//! The store derives the events ([`crate::domain::events::lifecycle_events`]) and writes them to
//! its outbox in the same transaction as the change, rendered by [`cloudevent`]; after the commit
//! it calls [`observe`] for the metrics. The [`Publisher`] moves the outbox to the broker in order,
//! with publisher confirms, deleting rows only once confirmed — so an event is never lost while
//! the broker is away, only late. Delivery is at least once: consumers dedupe by the event `id`.

mod publisher;

use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::domain::events::{EventKind, LifecycleEvent};
use crate::notify::outbox::rfc3339;

pub use publisher::Publisher;

/// The CloudEvents `source` of every event callkeeper emits.
pub const SOURCE: &str = "callkeeper";

/// An event ready for the outbox: its CloudEvents id and type, and the JSON body to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub id: String,
    pub event_type: String,
    pub body: String,
}

/// Renders a lifecycle event as a structured-mode CloudEvent (specversion 1.0). The `data` holds
/// the callback's id, queue, priority, state and SLA status with its times and counts, plus what
/// the event itself is about (agent, outcome, attempt number, cancel reason) — never the phone
/// number, the customer or the context.
pub fn cloudevent(event: &LifecycleEvent) -> Rendered {
    let id = Uuid::now_v7().to_string();
    let event_type = event.kind.event_type();
    let mut data = Map::new();
    data.insert("callback_id".into(), json!(event.callback_id));
    data.insert("queue".into(), json!(event.queue));
    data.insert("priority".into(), json!(event.priority));
    data.insert("state".into(), json!(event.state));
    data.insert("sla".into(), json!(event.sla));
    data.insert("requested_at".into(), json!(rfc3339(event.requested_at)));
    data.insert("due_at".into(), json!(rfc3339(event.due_at)));
    data.insert("deadline".into(), json!(rfc3339(event.deadline)));
    data.insert("requests".into(), json!(event.requests));
    data.insert("attempts".into(), json!(event.attempts));
    data.insert("max_attempts".into(), json!(event.max_attempts));
    let optional = [
        (
            "first_attempt_at",
            event.first_attempt_at.map(|at| json!(rfc3339(at))),
        ),
        ("agent_id", event.agent_id.as_ref().map(|a| json!(a))),
        ("outcome", event.outcome.map(|o| json!(o))),
        ("attempt", event.attempt.map(|n| json!(n))),
        ("cancel_reason", event.cancel_reason.map(|r| json!(r))),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            data.insert(key.into(), value);
        }
    }
    let body = json!({
        "specversion": "1.0",
        "id": id,
        "source": SOURCE,
        "type": event_type,
        "time": rfc3339(event.at),
        "subject": event.callback_id.to_string(),
        "datacontenttype": "application/json",
        "data": Value::Object(data),
    })
    .to_string();
    Rendered {
        id,
        event_type,
        body,
    }
}

/// Counts committed lifecycle events. The one place the event-driven metrics are emitted, so the
/// counters agree with the events out. Labels are bounded: queue, priority, event, outcome.
pub fn observe(events: &[LifecycleEvent]) {
    for event in events {
        let queue = event.queue.as_str().to_owned();
        metrics::counter!(
            "callkeeper_callback_events_total",
            "queue" => queue.clone(),
            "event" => event.kind.as_str()
        )
        .increment(1);
        match event.kind {
            EventKind::Missed => {
                metrics::counter!(
                    "callkeeper_sla_missed_total",
                    "queue" => queue.clone(),
                    "priority" => event.priority.as_str()
                )
                .increment(1);
            }
            EventKind::Attempted => {
                if event.is_first_attempt() {
                    let waited = event.first_attempt_at.unwrap_or(event.at) - event.requested_at;
                    metrics::histogram!("callkeeper_time_to_first_attempt_seconds", "queue" => queue.clone())
                        .record(waited.num_milliseconds().max(0) as f64 / 1000.0);
                    // Met is decided at the first attempt; missed has its own event.
                    if event.sla == crate::domain::SlaStatus::Met {
                        metrics::counter!(
                            "callkeeper_sla_met_total",
                            "queue" => queue.clone(),
                            "priority" => event.priority.as_str()
                        )
                        .increment(1);
                    }
                }
                if event.is_retry() {
                    let outcome = event.outcome.map_or("unknown", |o| o.as_str());
                    metrics::counter!("callkeeper_retries_total", "queue" => queue, "outcome" => outcome)
                        .increment(1);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CallbackId, Outcome, Priority, QueueName, SlaStatus, State};
    use chrono::{TimeZone, Utc};

    #[test]
    fn renders_a_cloudevent_without_the_phone() {
        let at = Utc.with_ymd_and_hms(2030, 3, 4, 9, 0, 0).unwrap();
        let event = LifecycleEvent {
            kind: EventKind::Attempted,
            at,
            callback_id: CallbackId::new(),
            queue: QueueName::parse("support").unwrap(),
            priority: Priority::High,
            state: State::Completed,
            sla: SlaStatus::Met,
            requested_at: at,
            due_at: at,
            deadline: at,
            requests: 1,
            attempts: 1,
            max_attempts: 3,
            first_attempt_at: Some(at),
            agent_id: Some("a-1".into()),
            outcome: Some(Outcome::Connected),
            attempt: Some(1),
            cancel_reason: None,
        };
        let rendered = cloudevent(&event);
        let body: Value = serde_json::from_str(&rendered.body).unwrap();
        assert_eq!(body["specversion"], "1.0");
        assert_eq!(body["source"], "callkeeper");
        assert_eq!(body["type"], "callkeeper.callback.attempted");
        assert_eq!(rendered.event_type, "callkeeper.callback.attempted");
        assert_eq!(body["id"], rendered.id.as_str());
        assert_eq!(body["subject"], event.callback_id.to_string());
        assert_eq!(body["time"], "2030-03-04T09:00:00.000Z");
        let data = &body["data"];
        assert_eq!(data["callback_id"], event.callback_id.to_string());
        assert_eq!(data["outcome"], "connected");
        assert_eq!(data["agent_id"], "a-1");
        assert_eq!(data["attempt"], 1);
        assert_eq!(data["sla"], "met");
        assert!(data.get("cancel_reason").is_none());
        assert!(data.get("phone").is_none());
        assert_ne!(cloudevent(&event).id, rendered.id, "ids are unique");
    }
}
