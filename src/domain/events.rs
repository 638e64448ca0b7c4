//! Lifecycle events: what changed about a callback, derived from its state before and after one
//! write. One pure function, so every store implementation emits the same events in the same
//! order, and the events out (CloudEvents on RabbitMQ) and the metrics counters agree.

use chrono::{DateTime, Utc};

use super::inbound::AttemptReport;
use super::string_enum::string_enum;
use super::{Callback, CallbackId, CancelReason, Outcome, Priority, QueueName, SlaStatus, State};

string_enum! {
    /// A change in a callback's life, in the order they are emitted within one write.
    pub enum EventKind {
        /// A new callback was created from a request.
        Requested => "requested",
        /// A duplicate request was folded into the open callback.
        Merged => "merged",
        /// The callback became due (first time, or again after a retry delay).
        Due => "due",
        Claimed => "claimed",
        /// An attempt was recorded (any outcome).
        Attempted => "attempted",
        /// The SLA was missed: the deadline passed with no attempt, or the first attempt came late.
        Missed => "missed",
        Completed => "completed",
        Failed => "failed",
        Cancelled => "cancelled",
        Expired => "expired",
    }
}

impl EventKind {
    /// The CloudEvents `type` and the routing key: `callkeeper.callback.<event>`.
    pub fn event_type(self) -> String {
        format!("callkeeper.callback.{}", self.as_str())
    }
}

/// One lifecycle event. Carries no phone number, name or context: events go to many consumers,
/// who can read the callback through the API by `callback_id` when they need more.
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleEvent {
    pub kind: EventKind,
    /// When the change was made.
    pub at: DateTime<Utc>,
    pub callback_id: CallbackId,
    pub queue: QueueName,
    pub priority: Priority,
    /// The state and SLA status after the change.
    pub state: State,
    pub sla: SlaStatus,
    pub requested_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    pub requests: u32,
    pub attempts: u32,
    pub max_attempts: u32,
    pub first_attempt_at: Option<DateTime<Utc>>,
    /// `claimed`: the claiming agent; `attempted`: the agent who reported the attempt.
    pub agent_id: Option<String>,
    /// `attempted`: its outcome and 1-based number.
    pub outcome: Option<Outcome>,
    pub attempt: Option<u32>,
    /// `cancelled`: why.
    pub cancel_reason: Option<CancelReason>,
}

impl LifecycleEvent {
    /// An attempted event for the callback's first attempt.
    pub fn is_first_attempt(&self) -> bool {
        self.kind == EventKind::Attempted && self.attempt == Some(1)
    }

    /// An attempted event after which the callback waits for another try.
    pub fn is_retry(&self) -> bool {
        self.kind == EventKind::Attempted && self.state == State::Scheduled
    }
}

/// The events of one write to one callback: `before` is the stored callback (`None` when the
/// write created it), `after` what is saved, `attempt` the report when the write recorded one.
/// A write that changed nothing an event names (a repeated claim, an at-risk mark) yields none.
pub fn lifecycle_events(
    before: Option<&Callback>,
    after: &Callback,
    attempt: Option<&AttemptReport>,
    now: DateTime<Utc>,
) -> Vec<LifecycleEvent> {
    let mut kinds = Vec::new();
    match before {
        None => kinds.push(EventKind::Requested),
        Some(b) if after.requests > b.requests => kinds.push(EventKind::Merged),
        Some(_) => {}
    }
    let was = |state: State| before.is_some_and(|b| b.state == state);
    if after.state == State::Due && !was(State::Due) {
        kinds.push(EventKind::Due);
    }
    if after.state == State::Claimed && !was(State::Claimed) {
        kinds.push(EventKind::Claimed);
    }
    let attempted = after.attempts > before.map_or(0, |b| b.attempts);
    if attempted {
        kinds.push(EventKind::Attempted);
    }
    if after.sla == SlaStatus::Missed && before.is_none_or(|b| b.sla != SlaStatus::Missed) {
        kinds.push(EventKind::Missed);
    }
    let was_open = before.is_none_or(|b| b.state.is_open());
    if was_open {
        match after.state {
            State::Completed => kinds.push(EventKind::Completed),
            State::Failed => kinds.push(EventKind::Failed),
            State::Cancelled => kinds.push(EventKind::Cancelled),
            State::Expired => kinds.push(EventKind::Expired),
            State::Scheduled | State::Due | State::Claimed => {}
        }
    }
    kinds
        .into_iter()
        .map(|kind| LifecycleEvent {
            kind,
            at: now,
            callback_id: after.id,
            queue: after.queue.clone(),
            priority: after.priority,
            state: after.state,
            sla: after.sla,
            requested_at: after.requested_at,
            due_at: after.due_at,
            deadline: after.deadline,
            requests: after.requests,
            attempts: after.attempts,
            max_attempts: after.max_attempts,
            first_attempt_at: after.first_attempt_at,
            agent_id: match kind {
                EventKind::Claimed => after.claimed_by.clone(),
                EventKind::Attempted => attempt.map(|a| a.agent_id.clone()),
                _ => None,
            },
            outcome: match kind {
                EventKind::Attempted => attempt.map(|a| a.outcome).or(after.last_outcome),
                _ => None,
            },
            attempt: (kind == EventKind::Attempted).then_some(after.attempts),
            cancel_reason: match kind {
                EventKind::Cancelled => after.cancel_reason,
                _ => None,
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::inbound::CallbackRequest;
    use crate::domain::lifecycle;
    use crate::domain::Phone;
    use crate::schedule::{Plan, QueuePolicy, Rules};
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2030, 3, 4, 9, 0, 0).unwrap()
    }

    fn rules() -> Rules {
        let config = crate::config::Config::from_toml_with_env(
            r#"
            [calling_window.default]
            every_day = ["00:00-24:00"]
            [queues.support]
            webhook_url = "http://127.0.0.1:9/agents"
            signing_secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
            sla = { normal = "1h", high = "1h", urgent = "1h" }
            retry_delays = ["10m"]
            max_attempts = 3
            "#,
            [],
        )
        .unwrap();
        Rules::from_config(&config)
    }

    fn request() -> CallbackRequest {
        CallbackRequest {
            queue: QueueName::parse("support").unwrap(),
            phone: Phone::parse("+31612345678").unwrap(),
            priority: Priority::High,
            window: None,
            customer: None,
            agent_id: None,
            context: None,
            call: None,
        }
    }

    fn kinds(events: &[LifecycleEvent]) -> Vec<&'static str> {
        events.iter().map(|e| e.kind.as_str()).collect()
    }

    fn policy(rules: &Rules) -> &QueuePolicy {
        rules.queue(&QueueName::parse("support").unwrap()).unwrap()
    }

    fn plan(minutes: i64) -> Plan {
        Plan {
            due_at: t0(),
            deadline: t0() + chrono::Duration::minutes(minutes),
        }
    }

    fn report(outcome: Outcome) -> AttemptReport {
        AttemptReport {
            agent_id: "a-1".into(),
            outcome,
            note: None,
        }
    }

    #[test]
    fn a_callback_kept_on_time() {
        let rules = rules();
        let policy = policy(&rules);
        let mut cb = lifecycle::create(&request(), plan(60), policy, t0());
        assert_eq!(
            kinds(&lifecycle_events(None, &cb, None, t0())),
            ["requested"]
        );

        let before = cb.clone();
        lifecycle::merge(&mut cb, &request(), plan(60), t0());
        assert_eq!(
            kinds(&lifecycle_events(Some(&before), &cb, None, t0())),
            ["merged"]
        );

        let before = cb.clone();
        lifecycle::advance(&mut cb, policy, t0());
        let due = lifecycle_events(Some(&before), &cb, None, t0());
        assert_eq!(kinds(&due), ["due"]);
        assert_eq!(due[0].state, State::Due);

        let before = cb.clone();
        lifecycle::claim(&mut cb, "a-1", t0()).unwrap();
        let claimed = lifecycle_events(Some(&before), &cb, None, t0());
        assert_eq!(kinds(&claimed), ["claimed"]);
        assert_eq!(claimed[0].agent_id.as_deref(), Some("a-1"));
        // Claiming again changes nothing.
        let before = cb.clone();
        lifecycle::claim(&mut cb, "a-1", t0()).unwrap();
        assert!(lifecycle_events(Some(&before), &cb, None, t0()).is_empty());

        let before = cb.clone();
        let connected = report(Outcome::Connected);
        lifecycle::attempt(&mut cb, &connected, policy, &[], t0()).unwrap();
        let done = lifecycle_events(Some(&before), &cb, Some(&connected), t0());
        assert_eq!(kinds(&done), ["attempted", "completed"]);
        assert!(done[0].is_first_attempt());
        assert_eq!(done[0].outcome, Some(Outcome::Connected));
        assert_eq!(done[0].agent_id.as_deref(), Some("a-1"));
        assert_eq!(done[0].sla, SlaStatus::Met);
    }

    #[test]
    fn missed_retried_failed_and_cancelled() {
        let rules = rules();
        let policy = policy(&rules);
        let mut cb = lifecycle::create(&request(), plan(5), policy, t0());
        let late = t0() + chrono::Duration::minutes(6);
        let before = cb.clone();
        lifecycle::advance(&mut cb, policy, late);
        assert_eq!(
            kinds(&lifecycle_events(Some(&before), &cb, None, late)),
            ["due", "missed"]
        );

        let before = cb.clone();
        let busy = report(Outcome::Busy);
        lifecycle::attempt(&mut cb, &busy, policy, &[], late).unwrap();
        let retry = lifecycle_events(Some(&before), &cb, Some(&busy), late);
        assert_eq!(kinds(&retry), ["attempted"], "missed is said once");
        assert!(retry[0].is_retry());

        let before = cb.clone();
        let declined = report(Outcome::Declined);
        lifecycle::attempt(&mut cb, &declined, policy, &[], late).unwrap();
        assert_eq!(
            kinds(&lifecycle_events(Some(&before), &cb, Some(&declined), late)),
            ["attempted", "failed"]
        );

        let mut other = lifecycle::create(&request(), plan(60), policy, t0());
        let before = other.clone();
        lifecycle::cancel(&mut other, CancelReason::CustomerReached, t0()).unwrap();
        let cancelled = lifecycle_events(Some(&before), &other, None, t0());
        assert_eq!(kinds(&cancelled), ["cancelled"]);
        assert_eq!(
            cancelled[0].cancel_reason,
            Some(CancelReason::CustomerReached)
        );
    }

    #[test]
    fn an_expired_window_is_missed_then_expired() {
        let rules = rules();
        let policy = policy(&rules);
        let mut req = request();
        req.window = Some(crate::domain::Window {
            not_before: t0(),
            not_after: t0() + chrono::Duration::minutes(30),
        });
        let mut cb = lifecycle::create(&req, plan(30), policy, t0());
        let before = cb.clone();
        let after = t0() + chrono::Duration::minutes(31);
        lifecycle::advance(&mut cb, policy, after);
        assert_eq!(
            kinds(&lifecycle_events(Some(&before), &cb, None, after)),
            ["missed", "expired"]
        );
    }
}
