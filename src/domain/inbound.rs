//! What an inbound event asks for, once decoded, and why one can be refused for good.

use serde::Serialize;

use super::{
    CallInfo, CallbackId, CancelReason, Customer, Outcome, Phone, Priority, QueueName, Window,
};

/// The idempotency key of an inbound event: CloudEvents `source` + `id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventKey {
    pub source: String,
    pub id: String,
}

/// A decoded event, ready to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    pub key: EventKey,
    /// Hash of the event's type and payload: the same key with another fingerprint is a conflict.
    pub fingerprint: String,
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Request(CallbackRequest),
    Cancel {
        target: CancelTarget,
        reason: CancelReason,
    },
    OptOut {
        phone: Phone,
    },
    Attempt {
        callback_id: CallbackId,
        report: AttemptReport,
    },
}

/// `callback.requested`'s data, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct CallbackRequest {
    pub queue: QueueName,
    pub phone: Phone,
    pub priority: Priority,
    pub window: Option<Window>,
    pub customer: Option<Customer>,
    pub agent_id: Option<String>,
    pub context: Option<serde_json::Value>,
    pub call: Option<CallInfo>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CancelTarget {
    Id(CallbackId),
    Phone {
        phone: Phone,
        queue: Option<QueueName>,
    },
}

/// An agent's or dialer's report of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptReport {
    pub agent_id: String,
    pub outcome: Outcome,
    pub note: Option<String>,
}

/// Why a message can never be applied: dead-lettered with these as `x-callkeeper-reason` and
/// `x-callkeeper-detail`. The detail never holds a full phone number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// Short machine code: `invalid_phone`, `unknown_queue`, `opted_out`, …
    pub reason: &'static str,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// What applying one inbound event did.
#[derive(Debug, Clone, PartialEq)]
pub enum InboundOutcome {
    Created(CallbackId),
    Merged(CallbackId),
    /// Cancel or opt-out: how many open callbacks it closed.
    Cancelled(u32),
    Attempted(CallbackId),
    /// Seen before with the same payload: nothing changed.
    Duplicate,
    Rejected(Rejection),
}
