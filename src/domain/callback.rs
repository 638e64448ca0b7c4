use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::string_enum::string_enum;
use super::{CallbackId, Phone, Priority, QueueName};

string_enum! {
    /// Where a callback is in its life. `scheduled`, `due` and `claimed` are open.
    pub enum State {
        Scheduled => "scheduled",
        Due => "due",
        Claimed => "claimed",
        Completed => "completed",
        Failed => "failed",
        Cancelled => "cancelled",
        Expired => "expired",
    }
}

impl State {
    /// Open callbacks are promises still to keep: they merge duplicates and take attempts.
    pub fn is_open(self) -> bool {
        matches!(self, State::Scheduled | State::Due | State::Claimed)
    }
}

string_enum! {
    /// Whether the first attempt came by the deadline.
    pub enum SlaStatus {
        Pending => "pending",
        Met => "met",
        Missed => "missed",
    }
}

string_enum! {
    /// What an agent or dialer reports after calling.
    pub enum Outcome {
        Connected => "connected",
        NoAnswer => "no_answer",
        Busy => "busy",
        Voicemail => "voicemail",
        InvalidNumber => "invalid_number",
        Declined => "declined",
    }
}

impl Outcome {
    /// Outcomes after which calling again may still reach the customer.
    pub fn is_retryable(self) -> bool {
        matches!(self, Outcome::NoAnswer | Outcome::Busy | Outcome::Voicemail)
    }
}

string_enum! {
    /// Who a callback is offered to: a personal callback goes to its agent first, everything
    /// else (and a personal one its agent left unclaimed) to the whole queue.
    pub enum OfferedTo {
        Agent => "agent",
        Queue => "queue",
    }
}

string_enum! {
    pub enum CancelReason {
        /// The customer got through another way.
        CustomerReached => "customer_reached",
        CustomerRequest => "customer_request",
        /// The number opted out of contact.
        OptedOut => "opted_out",
        Other => "other",
    }
}

/// The slot the caller chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

/// Who is calling back; every field optional because IVRs know different things.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// IANA zone, already checked by the decoder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

/// The original inbound call the customer gave up on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CallInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waited_seconds: Option<u64>,
}

/// One stored callback: the promise and everything needed to keep it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Callback {
    pub id: CallbackId,
    pub queue: QueueName,
    pub phone: Phone,
    pub priority: Priority,
    pub state: State,
    pub sla: SlaStatus,
    pub customer: Option<Customer>,
    pub agent_id: Option<String>,
    /// Handed to the agent verbatim, so the customer never repeats their story.
    pub context: Option<serde_json::Value>,
    pub call: Option<CallInfo>,
    pub window: Option<Window>,
    pub requested_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    /// How many requests were merged into this callback (1 = no duplicates).
    pub requests: u32,
    /// Attempts recorded so far.
    pub attempts: u32,
    pub max_attempts: u32,
    /// Attempts per retryable outcome, checked against the queue's `retry_limits`.
    pub no_answer_attempts: u32,
    pub busy_attempts: u32,
    pub voicemail_attempts: u32,
    pub claimed_by: Option<String>,
    pub claimed_at: Option<DateTime<Utc>>,
    pub first_attempt_at: Option<DateTime<Utc>>,
    pub last_outcome: Option<Outcome>,
    /// Whether `callback.at_risk` went out, so it goes out once.
    pub at_risk_notified: bool,
    /// When a personal callback was offered to the whole queue because its agent had not
    /// claimed it in time; stored, so the second `callback.due` goes out once, even across
    /// restarts.
    pub offered_to_queue_at: Option<DateTime<Utc>>,
    pub cancel_reason: Option<CancelReason>,
    pub closed_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl Callback {
    /// Attempts so far that ended with `outcome` (counted for retryable outcomes only).
    pub fn outcome_attempts(&self, outcome: Outcome) -> u32 {
        match outcome {
            Outcome::NoAnswer => self.no_answer_attempts,
            Outcome::Busy => self.busy_attempts,
            Outcome::Voicemail => self.voicemail_attempts,
            _ => 0,
        }
    }

    /// Who the callback is offered to now.
    pub fn offered_to(&self) -> OfferedTo {
        if self.agent_id.is_some() && self.offered_to_queue_at.is_none() {
            OfferedTo::Agent
        } else {
            OfferedTo::Queue
        }
    }

    /// The agent the callback is offered to, or `None` once it is the whole queue's.
    pub fn offered_agent(&self) -> Option<&str> {
        match self.offered_to() {
            OfferedTo::Agent => self.agent_id.as_deref(),
            OfferedTo::Queue => None,
        }
    }
}

/// One recorded attempt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attempt {
    pub callback_id: CallbackId,
    /// 1-based.
    pub number: u32,
    pub agent_id: String,
    pub outcome: Outcome,
    pub note: Option<String>,
    pub at: DateTime<Utc>,
}
