//! The time rules, as pure functions of the queue's policy and `now`: when a callback is due,
//! by when it must happen, when to try again. A due time must fall inside both the queue's open
//! hours (its own zone) and the callee's calling window (the callee's zone); the SLA clock only
//! runs while the queue is open.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use rand::Rng;
use secrecy::SecretString;
use tracing::warn;

use super::calendar::{Calendar, Range, Recurring};
use super::country_zones::zone_of_country;
use crate::config::{CallingWindowConfig, Config, QueueConfig, RetryLimits, WeekConfig};
use crate::domain::inbound::CallbackRequest;
use crate::domain::{Callback, Customer, Phone, Priority, QueueName, Window};

/// The span `max_attempts_per_phone_per_day` counts over.
const PHONE_CAP_SPAN: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// Everything the rules need to know about one queue.
#[derive(Debug, Clone)]
pub struct QueuePolicy {
    pub name: QueueName,
    pub webhook_url: String,
    pub escalation_url: Option<String>,
    pub signing_secrets: Vec<SecretString>,
    pub timezone: Tz,
    pub sla: crate::config::SlaTargets,
    pub at_risk_lead: Duration,
    pub initial_delay: Duration,
    pub retry_delays: Vec<Duration>,
    pub max_attempts: u32,
    pub retry_limits: RetryLimits,
    pub max_attempts_per_phone_per_day: Option<u32>,
    pub personal_fallback: Duration,
    pub open_hours: Calendar,
    pub calling_windows: Arc<CallingWindows>,
}

/// The times a new request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub due_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
}

/// Where the callee is: their zone and their number's country.
#[derive(Debug, Clone, PartialEq)]
pub struct Callee {
    pub zone: Tz,
    pub country: Option<String>,
    /// The configured region whose prefix the number has, if any.
    pub region: Option<String>,
}

/// Weekly ranges and closed dates, before a zone is known.
#[derive(Debug, Clone, Default, PartialEq)]
struct Week {
    days: [Vec<Range>; 7],
    closed: BTreeSet<NaiveDate>,
    openings: Vec<Recurring>,
    closures: Vec<Recurring>,
}

impl Week {
    fn from_config(config: &WeekConfig, base: &Week) -> Self {
        // Validated at start; a bad range cannot get here.
        let days = config
            .days(&base.days)
            .unwrap_or_else(|_| base.days.clone());
        let closed = base.closed.iter().chain(&config.closed).copied().collect();
        let (mut openings, mut closures) = config.recurring().unwrap_or_default();
        openings.extend(base.openings.iter().cloned());
        closures.extend(base.closures.iter().cloned());
        Self {
            days,
            closed,
            openings,
            closures,
        }
    }

    fn in_zone(&self, zone: Tz) -> Calendar {
        // Whole days every day with no exceptions is "always": skip the interval walk, which
        // would otherwise merge touching days across the whole search horizon on every call.
        let whole_day =
            |r: &Range| r.start == chrono::NaiveTime::MIN && r.end == chrono::NaiveTime::MIN;
        let always = self.days.iter().all(|day| day.iter().any(whole_day))
            && self.closed.is_empty()
            && self.closures.is_empty();
        if always {
            return Calendar::Always;
        }
        Calendar::weekly(zone, self.days.clone(), self.closed.clone())
            .with_recurring(self.openings.clone(), self.closures.clone())
    }
}

/// The callee calling windows: a default and per-country overrides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallingWindows {
    default: Week,
    countries: HashMap<String, Week>,
    regions: BTreeMap<String, Region>,
}

impl CallingWindows {
    fn from_config(config: &CallingWindowConfig) -> Self {
        let default = Week::from_config(&config.default, &Week::default());
        let countries: HashMap<String, Week> = config
            .countries
            .iter()
            .map(|(country, week)| (country.clone(), Week::from_config(week, &default)))
            .collect();
        let regions = config
            .regions
            .iter()
            .map(|(name, region)| {
                // A region refines its country's window; its country is that of its prefixes.
                let country = region
                    .prefixes
                    .first()
                    .and_then(|p| phonenumber::parse(None, format!("{p}0000000")).ok())
                    .and_then(|n| n.country().id())
                    .map(|id| format!("{id:?}"));
                let base = country.and_then(|c| countries.get(&c)).unwrap_or(&default);
                let region = Region {
                    prefixes: region.prefixes.clone(),
                    timezone: region.timezone.as_deref().and_then(|tz| tz.parse().ok()),
                    week: Week::from_config(&region.window, base),
                };
                (name.clone(), region)
            })
            .collect();
        Self {
            default,
            countries,
            regions,
        }
    }

    /// The configured region with the longest prefix of `phone`.
    fn region_of(&self, phone: &Phone) -> Option<(&String, &Region)> {
        self.regions
            .iter()
            .filter_map(|(name, region)| {
                let longest = region
                    .prefixes
                    .iter()
                    .filter(|p| phone.as_str().starts_with(p.as_str()))
                    .map(String::len)
                    .max()?;
                Some((longest, name, region))
            })
            .max_by_key(|(longest, _, _)| *longest)
            .map(|(_, name, region)| (name, region))
    }

    /// The window for this callee, in their own zone: the region's, else the country's, else
    /// the default.
    pub fn calendar(&self, callee: &Callee) -> Calendar {
        let week = callee
            .region
            .as_ref()
            .and_then(|r| self.regions.get(r))
            .map(|r| &r.week)
            .or_else(|| callee.country.as_ref().and_then(|c| self.countries.get(c)))
            .unwrap_or(&self.default);
        week.in_zone(callee.zone)
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Region {
    prefixes: Vec<String>,
    timezone: Option<Tz>,
    week: Week,
}

impl QueuePolicy {
    fn from_config(
        name: QueueName,
        config: &QueueConfig,
        calling_windows: Arc<CallingWindows>,
    ) -> Self {
        let timezone = config.timezone.parse().unwrap_or(chrono_tz::UTC);
        let open_hours = config
            .open_hours
            .as_ref()
            .map_or(Calendar::Always, |hours| {
                Week::from_config(hours, &Week::default()).in_zone(timezone)
            });
        Self {
            name,
            webhook_url: config.webhook_url.clone(),
            escalation_url: config.escalation_url.clone(),
            signing_secrets: config.signing_secrets.clone(),
            timezone,
            sla: config.sla.clone(),
            at_risk_lead: config.at_risk_lead,
            initial_delay: config.initial_delay,
            retry_delays: config.retry_delays.clone(),
            max_attempts: config.max_attempts,
            retry_limits: config.retry_limits,
            max_attempts_per_phone_per_day: config.max_attempts_per_phone_per_day,
            personal_fallback: config.personal_fallback,
            open_hours,
            calling_windows,
        }
    }

    /// The callee's zone: `customer.timezone`, else the zone of the number's country when it
    /// has one, else the queue's.
    pub fn callee(&self, phone: &Phone, customer: Option<&Customer>) -> Callee {
        let country = phone.region();
        let region = self.calling_windows.region_of(phone);
        let zone = customer
            .and_then(|c| c.timezone.as_deref())
            .and_then(|tz| tz.parse::<Tz>().ok())
            .or_else(|| region.and_then(|(_, r)| r.timezone))
            .or_else(|| country.as_deref().and_then(zone_of_country))
            .unwrap_or(self.timezone);
        Callee {
            zone,
            country,
            region: region.map(|(name, _)| name.clone()),
        }
    }

    /// The callee when no number is known (an estimate without `phone`): the queue's zone
    /// and the default calling window.
    pub fn queue_callee(&self) -> Callee {
        Callee {
            zone: self.timezone,
            country: None,
            region: None,
        }
    }

    /// Due time and deadline for a request made at `now`.
    pub fn plan(&self, request: &CallbackRequest, now: DateTime<Utc>) -> Plan {
        let callee = self.callee(&request.phone, request.customer.as_ref());
        self.plan_for(&callee, request.priority, request.window.as_ref(), now)
    }

    /// Due time and deadline for a request from `callee` made at `now`.
    pub fn plan_for(
        &self,
        callee: &Callee,
        priority: Priority,
        window: Option<&Window>,
        now: DateTime<Utc>,
    ) -> Plan {
        let asap = now + self.initial_delay;
        let wanted = window.map_or(asap, |w| w.not_before.max(asap));
        let due_at = self.next_callable(wanted, callee);
        let sla_start = window.map_or(now, |w| w.not_before.max(now));
        let target = self.sla.for_priority(priority);
        let counted = self
            .open_hours
            .add_open_time(sla_start, target)
            .unwrap_or(sla_start + target);
        // Never before the due time (a long initial delay, a callee asleep), never after the
        // caller's window closes.
        let mut deadline = counted.max(due_at);
        if let Some(w) = window {
            deadline = deadline.min(w.not_after);
        }
        Plan { due_at, deadline }
    }

    /// When `callback.at_risk` should go out for this deadline.
    pub fn at_risk_at(&self, deadline: DateTime<Utc>) -> DateTime<Utc> {
        deadline - self.at_risk_lead
    }

    /// When a personal callback that became due at `due_at` is offered to the whole queue:
    /// after `personal_fallback` of open time, so its agent's time does not run out overnight.
    pub fn personal_fallback_at(&self, due_at: DateTime<Utc>) -> DateTime<Utc> {
        self.open_hours
            .add_open_time(due_at, self.personal_fallback)
            .unwrap_or_else(|| due_at + self.personal_fallback)
    }

    /// When to call again after a retryable attempt: the delay for this attempt (the last one
    /// repeats) with ±10 % jitter, so a wave of no-answers does not return as one wave, no
    /// earlier than the number's daily cap allows, then moved into both windows.
    ///
    /// `phone_attempts`: the times of the attempts to this number, over all its callbacks, in
    /// the 24 hours up to `now`, the one just made included.
    pub fn retry_at(
        &self,
        callback: &Callback,
        phone_attempts: &[DateTime<Utc>],
        now: DateTime<Utc>,
    ) -> DateTime<Utc> {
        let index =
            (callback.attempts.max(1) as usize - 1).min(self.retry_delays.len().saturating_sub(1));
        let base = self.retry_delays.get(index).copied().unwrap_or_default();
        let delay = base.mul_f64(rand::rng().random_range(0.9..=1.1));
        let mut wanted = now + delay;
        if let Some(free) = self.phone_free_at(phone_attempts) {
            wanted = wanted.max(free);
        }
        let callee = self.callee(&callback.phone, callback.customer.as_ref());
        self.next_callable(wanted, &callee)
    }

    /// Where the store must look back from for the attempts [`Self::retry_at`] needs, or
    /// `None` when this queue has no per-number cap (and the store need not look at all).
    pub fn phone_attempts_since(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.max_attempts_per_phone_per_day
            .map(|_| now - PHONE_CAP_SPAN)
    }

    /// When `max_attempts_per_phone_per_day` lets the number be called again, given the times
    /// of its attempts in the last 24 hours; `None` when it may be called now.
    pub fn phone_free_at(&self, phone_attempts: &[DateTime<Utc>]) -> Option<DateTime<Utc>> {
        let cap = self.max_attempts_per_phone_per_day.filter(|&c| c > 0)? as usize;
        if phone_attempts.len() < cap {
            return None;
        }
        let mut times = phone_attempts.to_vec();
        times.sort_unstable();
        // One more call fits once all but the newest `cap - 1` of them are 24 hours old.
        Some(times[times.len() - cap] + PHONE_CAP_SPAN)
    }

    /// The first moment at or after `at` when the queue is open and the callee may be called.
    pub fn next_callable(&self, at: DateTime<Utc>, callee: &Callee) -> DateTime<Utc> {
        let window = self.calling_windows.calendar(callee);
        let mut t = at;
        // The first time the callee may be called once the queue has opened: the fallback when
        // the two never overlap.
        let mut fallback = None;
        // Alternate until both agree; each round moves strictly forward. Searching over a year
        // finds any overlap, seasonal ones (DST shifting one zone against the other) included.
        let give_up_at = at + chrono::Duration::days(400);
        while t < give_up_at {
            let Some(open) = self.open_hours.next_open(t) else {
                break;
            };
            let Some(callable) = window.next_open(open) else {
                break;
            };
            if callable == open {
                return open;
            }
            fallback.get_or_insert(callable);
            t = callable;
        }
        // The callee may never be called while this queue is open. Never call at an indecent
        // hour: take the callee's first callable time after the queue opens; the deadline then
        // passes and escalates, so a supervisor decides.
        warn!(queue = %self.name, "Open hours never overlap the callee's calling window; the callback will escalate.");
        fallback.unwrap_or(at)
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
        let windows = Arc::new(CallingWindows::from_config(&config.calling_window));
        let queues = config
            .queues
            .iter()
            .filter_map(|(name, queue)| {
                let name = QueueName::parse(name).ok()?;
                Some((
                    name.clone(),
                    QueuePolicy::from_config(name, queue, windows.clone()),
                ))
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
