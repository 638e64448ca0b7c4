//! The lifecycle rules as pure functions over a [`Callback`]: every store implementation runs
//! these inside its transaction, so the rules live in one place whatever the database.

use chrono::{DateTime, Utc};

use super::inbound::{AttemptReport, CallbackRequest};
use super::string_enum::string_enum;
use super::{Callback, CallbackId, CancelReason, OfferedTo, Outcome, SlaStatus, State};
use crate::schedule::{Plan, QueuePolicy};

string_enum! {
    /// The webhooks callkeeper sends: the body's `type`, the deliveries' `notice` column and
    /// the `notice` metric label.
    ///
    /// The daily digest is one of them too, so a digest is stored, signed, retried, listed,
    /// replayed and counted exactly like a callback notice. The rules in this module never
    /// produce it: [`crate::digest`] does, for a queue's day rather than a callback.
    pub enum Notice {
        /// Time to call; to the queue's agent endpoint.
        Due => "callback.due",
        /// Deadline near, no attempt yet.
        AtRisk => "callback.at_risk",
        /// Deadline passed with no attempt; also escalated.
        Missed => "callback.missed",
        /// Attempts used up; also escalated.
        Exhausted => "callback.exhausted",
        /// Yesterday's SLA figures of one queue; to the queue's escalation endpoint only.
        SlaDigest => "sla.digest",
    }
}

impl Notice {
    /// Whether this callback notice also goes to the queue's escalation endpoint.
    pub fn escalates(self) -> bool {
        matches!(self, Notice::Missed | Notice::Exhausted)
    }
}

/// Why an agent's action was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    #[error("callback is claimed by another agent")]
    ClaimedByOther,
    #[error("callback is {0} and no longer open")]
    NotOpen(State),
}

/// A new callback for a request.
pub fn create(
    request: &CallbackRequest,
    plan: Plan,
    policy: &QueuePolicy,
    now: DateTime<Utc>,
) -> Callback {
    Callback {
        id: CallbackId::new(),
        queue: request.queue.clone(),
        phone: request.phone.clone(),
        priority: request.priority,
        state: State::Scheduled,
        sla: SlaStatus::Pending,
        customer: request.customer.clone(),
        agent_id: request.agent_id.clone(),
        context: request.context.clone(),
        call: request.call.clone(),
        window: request.window,
        requested_at: now,
        due_at: plan.due_at,
        deadline: plan.deadline,
        requests: 1,
        attempts: 0,
        max_attempts: policy.max_attempts,
        no_answer_attempts: 0,
        busy_attempts: 0,
        voicemail_attempts: 0,
        claimed_by: None,
        claimed_at: None,
        first_attempt_at: None,
        last_outcome: None,
        at_risk_notified: false,
        offered_to_queue_at: None,
        cancel_reason: None,
        closed_at: None,
        updated_at: now,
    }
}

/// Folds a duplicate request into the open callback for the same phone and queue: one more
/// request, the newest context, the earliest deadline — and no second callback. A request whose
/// window had already closed when it arrived still counts, but moves no time: its deadline lies
/// in the past and would mark the open promise missed.
pub fn merge(callback: &mut Callback, request: &CallbackRequest, plan: Plan, now: DateTime<Utc>) {
    callback.requests += 1;
    callback.updated_at = now;
    callback.priority = callback.priority.max(request.priority);
    if request.context.is_some() {
        callback.context = request.context.clone();
    }
    if request.customer.is_some() {
        callback.customer = request.customer.clone();
    }
    if request.call.is_some() {
        callback.call = request.call.clone();
    }
    if callback.agent_id.is_none() && request.agent_id.is_some() {
        callback.agent_id = request.agent_id.clone();
        // Already offered to the whole queue: naming an agent now must not send a second due.
        if callback.state != State::Scheduled {
            callback.offered_to_queue_at = Some(now);
        }
    }
    if request.window.is_some_and(|w| w.not_after <= now) {
        return;
    }
    if callback.sla == SlaStatus::Pending && plan.deadline < callback.deadline {
        callback.deadline = plan.deadline;
    }
    if callback.state == State::Scheduled && callback.attempts == 0 {
        callback.due_at = callback.due_at.min(plan.due_at);
    }
}

/// Applies every time-driven transition that is due at `now` and returns the notices to send.
pub fn advance(callback: &mut Callback, policy: &QueuePolicy, now: DateTime<Utc>) -> Vec<Notice> {
    let mut notices = Vec::new();
    if !callback.state.is_open() {
        return notices;
    }
    let unattempted = callback.first_attempt_at.is_none();
    if callback.state == State::Scheduled && callback.due_at <= now {
        callback.state = State::Due;
        // A timer catching up (after downtime) past its agent's time offers it straight to
        // the queue, in one webhook.
        if awaits_agent(callback) && policy.personal_fallback_at(callback.due_at) <= now {
            callback.offered_to_queue_at = Some(now);
        }
        notices.push(Notice::Due);
    } else if awaits_agent(callback) && policy.personal_fallback_at(callback.due_at) <= now {
        // Its agent did not claim it in time: offer it to the whole queue, once.
        callback.offered_to_queue_at = Some(now);
        notices.push(Notice::Due);
    }
    if unattempted && callback.sla == SlaStatus::Pending {
        if callback.deadline <= now {
            callback.sla = SlaStatus::Missed;
            notices.push(Notice::Missed);
        } else if !callback.at_risk_notified && policy.at_risk_at(callback.deadline) <= now {
            callback.at_risk_notified = true;
            notices.push(Notice::AtRisk);
        }
    }
    if let Some(window) = callback.window {
        if unattempted && window.not_after <= now {
            callback.state = State::Expired;
            callback.sla = SlaStatus::Missed;
            callback.closed_at = Some(now);
            // A callback that expires is not due any more: no agent should be sent to call it.
            notices.retain(|n| *n != Notice::Due);
        }
    }
    if !notices.is_empty() || !callback.state.is_open() {
        callback.updated_at = now;
    }
    notices
}

/// The next moment [`advance`] has something to do, or `None` when nothing time-driven is left.
pub fn next_fire_at(callback: &Callback, policy: &QueuePolicy) -> Option<DateTime<Utc>> {
    if !callback.state.is_open() {
        return None;
    }
    let unattempted = callback.first_attempt_at.is_none();
    let pending = unattempted && callback.sla == SlaStatus::Pending;
    [
        (callback.state == State::Scheduled).then_some(callback.due_at),
        awaits_agent(callback).then(|| policy.personal_fallback_at(callback.due_at)),
        (pending && !callback.at_risk_notified).then(|| policy.at_risk_at(callback.deadline)),
        pending.then_some(callback.deadline),
        callback.window.filter(|_| unattempted).map(|w| w.not_after),
    ]
    .into_iter()
    .flatten()
    .min()
}

/// A personal callback that is due and offered to its agent alone, waiting for a claim.
fn awaits_agent(callback: &Callback) -> bool {
    callback.state == State::Due && callback.offered_to() == OfferedTo::Agent
}

/// An agent takes the callback. Claiming again by the same agent is fine.
pub fn claim(
    callback: &mut Callback,
    agent_id: &str,
    now: DateTime<Utc>,
) -> Result<(), LifecycleError> {
    match callback.state {
        State::Claimed if callback.claimed_by.as_deref() == Some(agent_id) => Ok(()),
        State::Claimed => Err(LifecycleError::ClaimedByOther),
        State::Scheduled | State::Due => {
            callback.state = State::Claimed;
            callback.claimed_by = Some(agent_id.to_owned());
            callback.claimed_at = Some(now);
            callback.updated_at = now;
            Ok(())
        }
        closed => Err(LifecycleError::NotOpen(closed)),
    }
}

/// Records an attempt and moves the callback on: completed, retried later, or failed (with
/// `callback.exhausted` when a retryable outcome used up its limit or the total).
///
/// `phone_attempts`: the times of earlier attempts to this callback's number, over all its
/// callbacks, after [`QueuePolicy::phone_attempts_since`] (empty when that is `None`); they
/// hold a retry back under the queue's per-number daily cap.
pub fn attempt(
    callback: &mut Callback,
    report: &AttemptReport,
    policy: &QueuePolicy,
    phone_attempts: &[DateTime<Utc>],
    now: DateTime<Utc>,
) -> Result<Vec<Notice>, LifecycleError> {
    if !callback.state.is_open() {
        return Err(LifecycleError::NotOpen(callback.state));
    }
    if callback.state == State::Claimed
        && callback.claimed_by.as_deref() != Some(report.agent_id.as_str())
    {
        return Err(LifecycleError::ClaimedByOther);
    }
    callback.attempts += 1;
    match report.outcome {
        Outcome::NoAnswer => callback.no_answer_attempts += 1,
        Outcome::Busy => callback.busy_attempts += 1,
        Outcome::Voicemail => callback.voicemail_attempts += 1,
        _ => {}
    }
    callback.last_outcome = Some(report.outcome);
    callback.updated_at = now;
    if callback.first_attempt_at.is_none() {
        callback.first_attempt_at = Some(now);
        if callback.sla == SlaStatus::Pending {
            callback.sla = if now <= callback.deadline {
                SlaStatus::Met
            } else {
                SlaStatus::Missed
            };
        }
    }
    callback.claimed_by = None;
    callback.claimed_at = None;
    let mut notices = Vec::new();
    match report.outcome {
        Outcome::Connected => close(callback, State::Completed, now),
        outcome if outcome.is_retryable() && !attempts_used_up(callback, outcome, policy) => {
            callback.state = State::Scheduled;
            let mut times = phone_attempts.to_vec();
            times.push(now);
            callback.due_at = policy.retry_at(callback, &times, now);
        }
        outcome if outcome.is_retryable() => {
            close(callback, State::Failed, now);
            notices.push(Notice::Exhausted);
        }
        _ => close(callback, State::Failed, now),
    }
    Ok(notices)
}

/// Whether the attempt just counted used up the total or the limit for its outcome.
fn attempts_used_up(callback: &Callback, outcome: Outcome, policy: &QueuePolicy) -> bool {
    callback.attempts >= callback.max_attempts
        || policy
            .retry_limits
            .for_outcome(outcome)
            .is_some_and(|limit| callback.outcome_attempts(outcome) >= limit)
}

/// Cancels an open callback.
pub fn cancel(
    callback: &mut Callback,
    reason: CancelReason,
    now: DateTime<Utc>,
) -> Result<(), LifecycleError> {
    if !callback.state.is_open() {
        return Err(LifecycleError::NotOpen(callback.state));
    }
    callback.cancel_reason = Some(reason);
    close(callback, State::Cancelled, now);
    Ok(())
}

fn close(callback: &mut Callback, state: State, now: DateTime<Utc>) {
    callback.state = state;
    callback.closed_at = Some(now);
    callback.claimed_by = None;
    callback.updated_at = now;
}
