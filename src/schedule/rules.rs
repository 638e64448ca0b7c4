//! The time rules, as pure functions of the queue's policy and `now`.
//!
//! Open hours and the callee's calling window are the seam for the calendar issue: today every
//! queue is always open and every callee always reachable ([`QueuePolicy::next_callable`] and
//! [`QueuePolicy::add_open_time`] are where the calendar will plug in).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use secrecy::SecretString;

use crate::config::{Config, QueueConfig};
use crate::domain::{Phone, Priority, QueueName, Window};

/// Everything the rules need to know about one queue.
#[derive(Debug, Clone)]
pub struct QueuePolicy {
    pub name: QueueName,
    pub webhook_url: String,
    pub escalation_url: Option<String>,
    pub signing_secrets: Vec<SecretString>,
    pub timezone: chrono_tz::Tz,
    pub sla: crate::config::SlaTargets,
    pub at_risk_lead: Duration,
    pub initial_delay: Duration,
    pub retry_delays: Vec<Duration>,
    pub max_attempts: u32,
}

/// The times a new request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub due_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
}

impl QueuePolicy {
    fn from_config(name: QueueName, config: &QueueConfig) -> Self {
        Self {
            name,
            webhook_url: config.webhook_url.clone(),
            escalation_url: config.escalation_url.clone(),
            signing_secrets: config.signing_secrets.clone(),
            timezone: config.timezone.parse().unwrap_or(chrono_tz::UTC),
            sla: config.sla.clone(),
            at_risk_lead: config.at_risk_lead,
            initial_delay: config.initial_delay,
            retry_delays: config.retry_delays.clone(),
            max_attempts: config.max_attempts,
        }
    }

    /// Due time and deadline for a request made at `now`.
    pub fn plan(
        &self,
        priority: Priority,
        phone: &Phone,
        window: Option<&Window>,
        now: DateTime<Utc>,
    ) -> Plan {
        let asap = now + self.initial_delay;
        let wanted = window.map_or(asap, |w| w.not_before.max(asap));
        let due_at = self.next_callable(wanted, phone);
        let sla_start = window.map_or(now, |w| w.not_before.max(now));
        // Never before the due time (an initial delay longer than the target), never after the
        // caller's window closes.
        let mut deadline = self
            .add_open_time(sla_start, self.sla.for_priority(priority))
            .max(due_at);
        if let Some(w) = window {
            deadline = deadline.min(w.not_after);
        }
        Plan { due_at, deadline }
    }

    /// When `callback.at_risk` should go out for this deadline.
    pub fn at_risk_at(&self, deadline: DateTime<Utc>) -> DateTime<Utc> {
        deadline - self.at_risk_lead
    }

    /// When to call again after retryable attempt number `attempts` (1-based), with ±10 %
    /// jitter so a wave of no-answers does not come back as one wave.
    pub fn retry_at(&self, attempts: u32, phone: &Phone, now: DateTime<Utc>) -> DateTime<Utc> {
        let index = (attempts.max(1) as usize - 1).min(self.retry_delays.len().saturating_sub(1));
        let base = self.retry_delays.get(index).copied().unwrap_or_default();
        let jitter = rand::rng().random_range(0.9..=1.1);
        self.next_callable(now + base.mul_f64(jitter), phone)
    }

    /// The first moment at or after `at` when the queue is open and the callee may be called.
    /// Calendar seam: always open for now.
    pub fn next_callable(&self, at: DateTime<Utc>, _phone: &Phone) -> DateTime<Utc> {
        at
    }

    /// `start` plus `span` of open-hours time (the SLA clock stops while the queue is closed).
    /// Calendar seam: always open for now.
    pub fn add_open_time(&self, start: DateTime<Utc>, span: Duration) -> DateTime<Utc> {
        start + span
    }
}

/// The policies of every configured queue.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    queues: HashMap<QueueName, QueuePolicy>,
}

impl Rules {
    /// Builds from a validated configuration.
    pub fn from_config(config: &Config) -> Self {
        let queues = config
            .queues
            .iter()
            .filter_map(|(name, queue)| {
                let name = QueueName::parse(name).ok()?;
                Some((name.clone(), QueuePolicy::from_config(name, queue)))
            })
            .collect();
        Self { queues }
    }

    pub fn queue(&self, name: &QueueName) -> Option<&QueuePolicy> {
        self.queues.get(name)
    }

    pub fn queue_names(&self) -> impl Iterator<Item = &QueueName> {
        self.queues.keys()
    }
}
