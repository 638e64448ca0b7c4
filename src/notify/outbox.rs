//! Turns a callback's notices into deliveries: one per endpoint, with the body fixed at creation
//! so every retry sends the same bytes under the same `webhook-id`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;
use uuid::Uuid;

use super::{Delivery, DeliveryState};
use crate::domain::lifecycle::Notice;
use crate::domain::Callback;
use crate::schedule::QueuePolicy;

/// The deliveries for `notices` about `callback`: each to the agent endpoint, escalating ones to
/// the escalation endpoint too.
pub fn deliveries_for(
    callback: &Callback,
    notices: &[Notice],
    policy: &QueuePolicy,
    public_url: &str,
    now: DateTime<Utc>,
) -> Vec<Delivery> {
    let mut out = Vec::new();
    for &notice in notices {
        let body = body(notice, callback, public_url, now);
        let mut urls = vec![policy.webhook_url.as_str()];
        if notice.escalates() {
            urls.extend(policy.escalation_url.as_deref());
        }
        for url in urls {
            out.push(Delivery {
                id: format!("msg_{}", Uuid::now_v7().simple()),
                callback_id: Some(callback.id),
                queue: callback.queue.clone(),
                notice,
                url: url.to_owned(),
                body: body.clone(),
                state: DeliveryState::Pending,
                tries: 0,
                next_try_at: now,
                last_status: None,
                last_error: None,
                created_at: now,
                delivered_at: None,
            });
        }
    }
    out
}

/// The webhook body: `{ "type", "timestamp", "data" }`.
pub fn body(notice: Notice, callback: &Callback, public_url: &str, now: DateTime<Utc>) -> String {
    let base = format!(
        "{}/v1/callbacks/{}",
        public_url.trim_end_matches('/'),
        callback.id
    );
    let data = json!({
        "callback_id": callback.id,
        "queue": callback.queue,
        "priority": callback.priority,
        "phone": callback.phone.as_str(),
        "customer": callback.customer,
        // A personal callback names its agent until it is offered to the whole queue.
        "agent_id": callback.offered_agent(),
        "offered_to": callback.offered_to(),
        "context": callback.context,
        "call": callback.call,
        "window": callback.window,
        "state": callback.state,
        "sla": callback.sla,
        "requested_at": rfc3339(callback.requested_at),
        "due_at": rfc3339(callback.due_at),
        "deadline": rfc3339(callback.deadline),
        // The attempt the agent is about to make (1-based).
        "attempt": callback.attempts + 1,
        "attempts_made": callback.attempts,
        "max_attempts": callback.max_attempts,
        "last_outcome": callback.last_outcome,
        "requests": callback.requests,
        "callback_url": base,
        "claim_url": format!("{base}/claim"),
        "attempt_url": format!("{base}/attempts"),
    });
    json!({ "type": notice, "timestamp": rfc3339(now), "data": data }).to_string()
}

pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}
