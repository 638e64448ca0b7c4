//! Turns a callback's notices, and a queue's SLA digest, into deliveries: one per endpoint, with
//! the body fixed at creation so every retry sends the same bytes under the same `webhook-id`.

use chrono::{DateTime, NaiveDate, NaiveTime, SecondsFormat, Utc};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use super::Delivery;
use crate::domain::lifecycle::Notice;
use crate::domain::sla::{LocalDay, SlaReport};
use crate::domain::{
    CallInfo, Callback, CallbackId, Customer, OfferedTo, Outcome, Priority, QueueName, SlaStatus,
    State, Window,
};
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
            out.push(Delivery::pending(
                format!("msg_{}", Uuid::now_v7().simple()),
                Some(callback.id),
                callback.queue.clone(),
                notice,
                url,
                body.clone(),
                now,
            ));
        }
    }
    out
}

/// Every webhook body: `{ "type", "timestamp", "data" }`.
#[derive(Serialize)]
struct Envelope<T> {
    r#type: Notice,
    timestamp: String,
    data: T,
}

impl<T: Serialize> Envelope<T> {
    fn render(notice: Notice, now: DateTime<Utc>, data: T) -> String {
        let envelope = Self {
            r#type: notice,
            timestamp: rfc3339(now),
            data,
        };
        serde_json::to_string(&envelope).expect("a webhook body has only string keys")
    }
}

/// The `data` of a callback's notice. Serialized straight from the callback: a body is
/// rendered for every notice, and building a `serde_json::Value` tree first cost several
/// times as much.
#[derive(Serialize)]
struct NoticeData<'a> {
    callback_id: CallbackId,
    queue: &'a QueueName,
    priority: Priority,
    phone: &'a str,
    customer: &'a Option<Customer>,
    /// A personal callback names its agent until it is offered to the whole queue.
    agent_id: Option<&'a str>,
    offered_to: OfferedTo,
    context: &'a Option<serde_json::Value>,
    call: &'a Option<CallInfo>,
    window: Option<Window>,
    state: State,
    sla: SlaStatus,
    requested_at: String,
    due_at: String,
    deadline: String,
    /// The attempt the agent is about to make (1-based).
    attempt: u32,
    attempts_made: u32,
    max_attempts: u32,
    last_outcome: Option<Outcome>,
    requests: u32,
    callback_url: String,
    claim_url: String,
    attempt_url: String,
}

/// The webhook body of `notice` about `callback`.
pub fn body(notice: Notice, callback: &Callback, public_url: &str, now: DateTime<Utc>) -> String {
    let base = format!(
        "{}/v1/callbacks/{}",
        public_url.trim_end_matches('/'),
        callback.id
    );
    let data = NoticeData {
        callback_id: callback.id,
        queue: &callback.queue,
        priority: callback.priority,
        phone: callback.phone.as_str(),
        customer: &callback.customer,
        agent_id: callback.offered_agent(),
        offered_to: callback.offered_to(),
        context: &callback.context,
        call: &callback.call,
        window: callback.window,
        state: callback.state,
        sla: callback.sla,
        requested_at: rfc3339(callback.requested_at),
        due_at: rfc3339(callback.due_at),
        deadline: rfc3339(callback.deadline),
        attempt: callback.attempts + 1,
        attempts_made: callback.attempts,
        max_attempts: callback.max_attempts,
        last_outcome: callback.last_outcome,
        requests: callback.requests,
        claim_url: format!("{base}/claim"),
        attempt_url: format!("{base}/attempts"),
        callback_url: base,
    };
    Envelope::render(notice, now, data)
}

/// The `sla.digest` delivery of `queue`'s `day` to `url` (its escalation endpoint): the figures
/// of `report` — the very report `GET /v1/sla` gives for that period — and never a phone number.
pub fn sla_digest(
    queue: &QueueName,
    url: &str,
    day: &LocalDay,
    report: &SlaReport,
    now: DateTime<Utc>,
) -> Delivery {
    #[derive(Serialize)]
    struct DigestData<'a> {
        queue: &'a QueueName,
        day: String,
        time_zone: &'static str,
        from: String,
        to: String,
        #[serde(flatten)]
        report: &'a SlaReport,
    }
    let data = DigestData {
        queue,
        day: day.day.to_string(),
        time_zone: day.zone.name(),
        from: rfc3339(day.from),
        to: rfc3339(day.to),
        report,
    };
    let notice = Notice::SlaDigest;
    let body = Envelope::render(notice, now, data);
    Delivery::pending(
        digest_id(queue, day.day),
        None,
        queue.clone(),
        notice,
        url,
        body,
        now,
    )
}

/// The `webhook-id` of `queue`'s digest for `day`: the same whoever makes it and however often,
/// which is what makes storing it a second time change nothing. A UUIDv8 laid out like our v7
/// ids — 48 bits of unix milliseconds (midnight UTC after `day`), then a SHA-256 of queue and day
/// — so it sorts by time among them in `/v1/deliveries`. (A readable `msg_digest_<queue>_<day>`
/// would sort apart from every other id, and a long queue name would break the 64-character
/// limit on delivery ids.)
pub fn digest_id(queue: &QueueName, day: NaiveDate) -> String {
    let end_of_day = day
        .succ_opt()
        .unwrap_or(day)
        .and_time(NaiveTime::MIN)
        .and_utc()
        .timestamp_millis();
    let hash = Sha256::digest(format!("sla.digest\n{queue}\n{day}"));
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&end_of_day.to_be_bytes()[2..]);
    bytes[6..].copy_from_slice(&hash[..10]);
    let id = uuid::Builder::from_custom_bytes(bytes).into_uuid();
    format!("msg_{}", id.simple())
}

pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}
