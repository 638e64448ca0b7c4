//! Configuration: a TOML file, then `CALLKEEPER__SECTION__KEY` environment overrides, then
//! validation that reports every problem at once — before anything connects.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::domain::{Outcome, Priority, QueueName};
use crate::schedule::{Range, Recurring};

/// Exit code for a configuration the worker refuses to start with (BSD `EX_USAGE`).
pub const EXIT_BAD_CONFIG: i32 = 64;

const ENV_PREFIX: &str = "CALLKEEPER__";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub amqp: AmqpConfig,
    pub store: StoreConfig,
    pub http: HttpConfig,
    pub schedule: ScheduleConfig,
    pub notify: NotifyConfig,
    pub intake: IntakeConfig,
    pub retention: RetentionConfig,
    /// How long SIGTERM waits for in-flight work before giving up on it.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// When callees may be called, in their own local time.
    pub calling_window: CallingWindowConfig,
    /// Queues by name.
    pub queues: BTreeMap<String, QueueConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpConfig {
    pub url: SecretString,
    /// Declare the exchange, queues and bindings at start (off when ops own the topology).
    pub declare_topology: bool,
    pub exchange: String,
    pub queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    /// Topic exchange lifecycle events go out on (routing key = event type), declared durable
    /// with the rest of the topology.
    pub events_exchange: String,
    /// Unacked deliveries the broker may hand us at once.
    pub prefetch: u16,
    #[serde(with = "humantime_serde")]
    pub reconnect_max_delay: Duration,
}

impl AmqpConfig {
    /// The parsed broker URL. The parser's own message quotes the URL, password included, so
    /// it is not passed on.
    pub fn uri(&self) -> anyhow::Result<lapin::uri::AMQPUri> {
        self.url
            .expose_secret()
            .parse()
            .map_err(|_| anyhow::anyhow!("amqp.url is not a valid AMQP URL"))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://path/to/file.db` (created when missing).
    pub url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Base URL agents use to reach this API; put into webhooks as claim/attempt links.
    pub public_url: String,
    /// Bearer tokens accepted by `/v1`. Empty: a random token is made at start and written to
    /// `<data dir>/api-token`.
    pub api_tokens: Vec<SecretString>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// How far ahead the timer keeps callbacks in memory; everything later stays in the store.
    #[serde(with = "humantime_serde")]
    pub horizon: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Webhook requests in flight at once, over all endpoints.
    pub max_in_flight: usize,
    /// Webhook requests in flight at once to one endpoint, so a slow one cannot hold the rest.
    pub max_in_flight_per_endpoint: usize,
    /// First retry delay; doubles per try, with jitter.
    #[serde(with = "humantime_serde")]
    pub retry_base: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Tries before a delivery is given up (kept, replayable).
    pub max_tries: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntakeConfig {
    /// How long `contact.opted_out` refuses new requests for that number.
    #[serde(with = "humantime_serde")]
    pub opt_out_period: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Completed, failed, cancelled and expired callbacks (with their attempts, deliveries and
    /// events) are purged this long after they closed; idempotency keys this long after they
    /// were applied.
    #[serde(with = "humantime_serde")]
    pub closed_after: Duration,
    /// When the purge runs: a cron expression with seconds, in UTC —
    /// `sec min hour day-of-month month day-of-week` (e.g. `0 30 3 * * *`, daily at 03:30).
    pub schedule: String,
}

impl RetentionConfig {
    /// The parsed schedule; `validate` has checked it.
    pub fn cron(&self) -> Result<cron::Schedule, String> {
        cron::Schedule::from_str(&self.schedule).map_err(|e| e.to_string())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Where `callback.due` (and every other notice) goes.
    pub webhook_url: String,
    /// Where `callback.missed` and `callback.exhausted` also go.
    pub escalation_url: Option<String>,
    /// `whsec_<base64>`; list two while rotating, the first signs too.
    pub signing_secrets: Vec<SecretString>,
    #[serde(default = "default_timezone")]
    pub timezone: String,
    pub sla: SlaTargets,
    #[serde(default = "default_at_risk_lead", with = "humantime_serde")]
    pub at_risk_lead: Duration,
    #[serde(default, with = "humantime_serde")]
    pub initial_delay: Duration,
    /// Delay before retry n (the last repeats), after `no_answer`, `busy` or `voicemail`.
    #[serde(default = "default_retry_delays", deserialize_with = "durations")]
    pub retry_delays: Vec<Duration>,
    /// Attempts in total; after the last one the callback is `failed` + `callback.exhausted`.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Attempts allowed per retryable outcome (each optional; absent = only `max_attempts`).
    #[serde(default)]
    pub retry_limits: RetryLimits,
    /// Attempts to one phone number (over all its callbacks, in every queue) in any 24 hours;
    /// a retry that would exceed it waits until the oldest of them is 24 hours old.
    #[serde(default)]
    pub max_attempts_per_phone_per_day: Option<u32>,
    /// How long a personal callback (`agent_id` set) is offered to that agent alone before it
    /// is offered to the whole queue; counted in open hours.
    #[serde(default = "default_personal_fallback", with = "humantime_serde")]
    pub personal_fallback: Duration,
    /// When agents work, in `timezone`; absent means always open. The SLA clock stops while
    /// the queue is closed.
    pub open_hours: Option<WeekConfig>,
    /// When the `sla.digest` webhook with yesterday's figures goes to `escalation_url`: a cron
    /// expression with seconds, in `timezone` (e.g. `0 0 7 * * *`, daily at 07:00). Absent: no
    /// digest.
    #[serde(default)]
    pub sla_digest: Option<String>,
}

impl QueueConfig {
    /// The parsed digest schedule, when one is set; `validate` has checked it.
    pub fn sla_digest_schedule(&self) -> Option<Result<cron::Schedule, String>> {
        self.sla_digest
            .as_deref()
            .map(|raw| cron::Schedule::from_str(raw).map_err(|e| e.to_string()))
    }
}

/// Attempts allowed per retryable outcome: after the `no_answer`-th no-answer (and so on) the
/// callback is `failed` + `callback.exhausted`, whatever `max_attempts` still allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryLimits {
    pub no_answer: Option<u32>,
    pub busy: Option<u32>,
    pub voicemail: Option<u32>,
}

impl RetryLimits {
    /// The limit for `outcome`, if it has one (only retryable outcomes do).
    pub fn for_outcome(&self, outcome: Outcome) -> Option<u32> {
        match outcome {
            Outcome::NoAnswer => self.no_answer,
            Outcome::Busy => self.busy,
            Outcome::Voicemail => self.voicemail,
            _ => None,
        }
    }
}

/// Weekly local-time ranges (`"08:30-17:30"`; an end before the start runs past midnight):
/// `every_day` first, then any named day replaces it (`sun = []` closes Sundays); `closed`
/// lists dates (holidays) with no range at all.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeekConfig {
    pub every_day: Option<Vec<String>>,
    pub mon: Option<Vec<String>>,
    pub tue: Option<Vec<String>>,
    pub wed: Option<Vec<String>>,
    pub thu: Option<Vec<String>>,
    pub fri: Option<Vec<String>>,
    pub sat: Option<Vec<String>>,
    pub sun: Option<Vec<String>>,
    #[serde(default)]
    pub closed: Vec<chrono::NaiveDate>,
    /// Extra open time, e.g. the first Sunday of the month.
    #[serde(default)]
    pub openings: Vec<RecurringConfig>,
    /// Closed time that wins over the ranges, e.g. a daily team meeting.
    #[serde(default)]
    pub closures: Vec<RecurringConfig>,
}

/// `{ cron = "0 0 12 * * Mon-Fri", lasts = "30m" }`: starts at each occurrence of the cron
/// expression, in the calendar's zone, and lasts that long.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecurringConfig {
    pub cron: String,
    #[serde(with = "humantime_serde")]
    pub lasts: Duration,
}

impl RecurringConfig {
    pub fn parse(&self) -> Result<Recurring, String> {
        Recurring::parse(&self.cron, self.lasts)
    }
}

impl WeekConfig {
    /// The recurring openings and closures, parsed.
    pub fn recurring(&self) -> Result<(Vec<Recurring>, Vec<Recurring>), String> {
        let parse = |list: &[RecurringConfig]| {
            list.iter()
                .map(RecurringConfig::parse)
                .collect::<Result<Vec<_>, _>>()
        };
        Ok((parse(&self.openings)?, parse(&self.closures)?))
    }

    /// The ranges per weekday (Monday first), starting from `base` where this names nothing.
    pub fn days(&self, base: &[Vec<Range>; 7]) -> Result<[Vec<Range>; 7], String> {
        let parse = |list: &Vec<String>| {
            list.iter()
                .map(|r| Range::parse(r))
                .collect::<Result<Vec<_>, _>>()
        };
        let mut days = base.clone();
        if let Some(every) = &self.every_day {
            let ranges = parse(every)?;
            days = std::array::from_fn(|_| ranges.clone());
        }
        let named = [
            &self.mon, &self.tue, &self.wed, &self.thu, &self.fri, &self.sat, &self.sun,
        ];
        for (day, list) in days.iter_mut().zip(named) {
            if let Some(list) = list {
                *day = parse(list)?;
            }
        }
        Ok(days)
    }
}

/// The callee's calling window: a default for everyone and overrides per country (ISO 3166
/// code of the phone number, e.g. `DE`), each applied on top of the default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallingWindowConfig {
    pub default: WeekConfig,
    pub countries: BTreeMap<String, WeekConfig>,
    /// Parts of a country told apart by number prefix (a US state by its area codes), each
    /// applied on top of its country's window.
    pub regions: BTreeMap<String, RegionConfig>,
}

/// A region: the E.164 prefixes that belong to it, its zone when numbers there have one, and
/// its window on top of the country's.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// E.164 prefixes, e.g. `["+1305", "+1786"]`; the longest matching prefix wins.
    pub prefixes: Vec<String>,
    /// The callee's zone for these numbers when the request names none.
    pub timezone: Option<String>,
    #[serde(default)]
    pub window: WeekConfig,
}

impl Default for CallingWindowConfig {
    fn default() -> Self {
        Self {
            default: WeekConfig {
                every_day: Some(vec!["08:00-21:00".into()]),
                ..WeekConfig::default()
            },
            countries: BTreeMap::new(),
            regions: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaTargets {
    #[serde(with = "humantime_serde")]
    pub normal: Duration,
    #[serde(with = "humantime_serde")]
    pub high: Duration,
    #[serde(with = "humantime_serde")]
    pub urgent: Duration,
}

impl SlaTargets {
    pub fn for_priority(&self, priority: Priority) -> Duration {
        match priority {
            Priority::Normal => self.normal,
            Priority::High => self.high,
            Priority::Urgent => self.urgent,
        }
    }
}

fn default_timezone() -> String {
    "UTC".into()
}
fn default_at_risk_lead() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_retry_delays() -> Vec<Duration> {
    vec![Duration::from_secs(10 * 60), Duration::from_secs(30 * 60)]
}
fn default_max_attempts() -> u32 {
    3
}
fn default_personal_fallback() -> Duration {
    Duration::from_secs(10 * 60)
}

impl Default for Config {
    fn default() -> Self {
        Self {
            amqp: AmqpConfig::default(),
            store: StoreConfig::default(),
            http: HttpConfig::default(),
            schedule: ScheduleConfig::default(),
            notify: NotifyConfig::default(),
            intake: IntakeConfig::default(),
            retention: RetentionConfig::default(),
            drain_timeout: Duration::from_secs(20),
            calling_window: CallingWindowConfig::default(),
            queues: BTreeMap::new(),
        }
    }
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            declare_topology: true,
            exchange: "callkeeper".into(),
            queue: "callkeeper.intake".into(),
            dead_letter_exchange: "callkeeper.dlx".into(),
            dead_letter_queue: "callkeeper.dead".into(),
            events_exchange: "callkeeper.events".into(),
            prefetch: 1024,
            reconnect_max_delay: Duration::from_secs(30),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://data/callkeeper.db".into(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 8080).into(),
            public_url: "http://127.0.0.1:8080".into(),
            api_tokens: Vec::new(),
        }
    }
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            horizon: Duration::from_secs(120),
        }
    }
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            // Sized for bursts: 10,000 callbacks due in one second must reach one agent endpoint
            // within 2 s, and an endpoint answering in 5 ms takes 6,400/s at 32 in flight.
            max_in_flight: 256,
            max_in_flight_per_endpoint: 128,
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(30 * 60),
            max_tries: 15,
        }
    }
}

impl Default for IntakeConfig {
    fn default() -> Self {
        Self {
            opt_out_period: Duration::from_secs(365 * 24 * 3600),
        }
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            closed_after: Duration::from_secs(90 * 24 * 3600),
            schedule: "0 30 3 * * *".into(),
        }
    }
}

/// Every problem found in a configuration, each with the key it concerns.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl ConfigError {
    fn one(problem: impl Into<String>) -> Self {
        Self {
            problems: vec![problem.into()],
        }
    }
}

impl Config {
    /// Reads `path` (or only defaults when `None`), applies environment overrides, validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| ConfigError::one(format!("{}: cannot read: {e}", path.display())))?,
            None => String::new(),
        };
        Self::from_toml_with_env(&text, std::env::vars())
    }

    /// Parses TOML text, overlays `CALLKEEPER__A__B=value` pairs from `env`, validates.
    pub fn from_toml_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut tree: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::one(format!("TOML: {e}")))?;
        for (key, value) in env {
            if let Some(path) = key.strip_prefix(ENV_PREFIX) {
                overlay(&mut tree, path, &value)
                    .map_err(|e| ConfigError::one(format!("environment {key}: {e}")))?;
            }
        }
        let config: Config = toml::Value::Table(tree)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::one(e.message().to_owned()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let amqp_url = self.amqp.url.expose_secret();
        if !(amqp_url.starts_with("amqp://") || amqp_url.starts_with("amqps://")) {
            problems.push("amqp.url: must start with amqp:// or amqps://".into());
        }
        if self.amqp.prefetch == 0 {
            problems.push("amqp.prefetch: must be at least 1".into());
        }
        if !self.store.url.starts_with("sqlite:") {
            problems.push(format!(
                "store.url: '{}' is not supported; use sqlite://path/to/file.db",
                self.store.url
            ));
        }
        if let Err(e) = reqwest::Url::parse(&self.http.public_url) {
            problems.push(format!("http.public_url: {e}"));
        }
        if self.schedule.horizon < Duration::from_secs(1) {
            problems.push("schedule.horizon: must be at least 1s".into());
        }
        if self.notify.max_in_flight == 0 || self.notify.max_in_flight_per_endpoint == 0 {
            problems.push("notify.max_in_flight*: must be at least 1".into());
        }
        if self.amqp.events_exchange.is_empty() {
            problems.push("amqp.events_exchange: must not be empty".into());
        }
        if let Err(e) = self.retention.cron() {
            problems.push(format!(
                "retention.schedule: '{}' is not a cron expression \
                 (sec min hour day month weekday): {e}",
                self.retention.schedule
            ));
        }
        if self.retention.closed_after < Duration::from_secs(3600) {
            problems.push("retention.closed_after: must be at least 1h".into());
        }
        if self.notify.max_tries == 0 {
            problems.push("notify.max_tries: must be at least 1".into());
        }
        let no_days: [Vec<Range>; 7] = Default::default();
        let mut recurring = |at: &str, week: &WeekConfig| {
            if let Err(e) = week.recurring() {
                problems.push(format!("{at}: {e}"));
            }
        };
        recurring("calling_window.default", &self.calling_window.default);
        for (country, week) in &self.calling_window.countries {
            recurring(&format!("calling_window.countries.{country}"), week);
        }
        for (name, queue) in &self.queues {
            if let Some(hours) = &queue.open_hours {
                recurring(&format!("queues.{name}.open_hours"), hours);
            }
        }
        for (region, config) in &self.calling_window.regions {
            let at = format!("calling_window.regions.{region}");
            if let Err(e) = config.window.recurring() {
                problems.push(format!("{at}.window: {e}"));
            }
            if config.prefixes.is_empty() {
                problems.push(format!(
                    "{at}.prefixes: list the E.164 prefixes of the region, e.g. [\"+1305\"]"
                ));
            }
            for prefix in &config.prefixes {
                let digits = prefix.strip_prefix('+').unwrap_or("");
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    problems.push(format!("{at}.prefixes: '{prefix}' is not '+' and digits"));
                }
            }
            if let Some(tz) = &config.timezone {
                if tz.parse::<chrono_tz::Tz>().is_err() {
                    problems.push(format!("{at}.timezone: '{tz}' is not an IANA time zone"));
                }
            }
            if let Err(e) = config.window.days(&Default::default()) {
                problems.push(format!("{at}.window: {e}"));
            }
        }
        match self.calling_window.default.days(&no_days) {
            Err(e) => problems.push(format!("calling_window.default: {e}")),
            Ok(base) => {
                if base.iter().all(Vec::is_empty) {
                    problems.push("calling_window.default: callees could never be called".into());
                }
                for (country, week) in &self.calling_window.countries {
                    let at = format!("calling_window.countries.{country}");
                    if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
                        problems.push(format!("{at}: use the two-letter ISO 3166 code, e.g. DE"));
                    }
                    match week.days(&base) {
                        Ok(days) if days.iter().all(Vec::is_empty) => {
                            problems.push(format!("{at}: callees could never be called"))
                        }
                        Ok(_) => {}
                        Err(e) => problems.push(format!("{at}: {e}")),
                    }
                }
            }
        }
        if self.queues.is_empty() {
            problems.push("queues: at least one queue must be configured ([queues.<name>])".into());
        }
        for (name, queue) in &self.queues {
            let at = format!("queues.{name}");
            if QueueName::parse(name).is_err() {
                problems.push(format!(
                    "{at}: name must be 1-64 characters of a-z, 0-9, '.', '_' or '-'"
                ));
            }
            check_http_url(
                &mut problems,
                &format!("{at}.webhook_url"),
                &queue.webhook_url,
            );
            if let Some(url) = &queue.escalation_url {
                check_http_url(&mut problems, &format!("{at}.escalation_url"), url);
            }
            if queue.signing_secrets.is_empty() {
                problems.push(format!(
                    "{at}.signing_secrets: at least one whsec_ secret is required"
                ));
            }
            for (i, secret) in queue.signing_secrets.iter().enumerate() {
                if let Err(e) = decode_secret(secret) {
                    problems.push(format!("{at}.signing_secrets[{i}]: {e}"));
                }
            }
            if queue.timezone.parse::<chrono_tz::Tz>().is_err() {
                problems.push(format!(
                    "{at}.timezone: '{}' is not an IANA time zone",
                    queue.timezone
                ));
            }
            for priority in Priority::ALL {
                if queue.sla.for_priority(*priority).is_zero() {
                    problems.push(format!("{at}.sla.{priority}: must be longer than 0s"));
                }
            }
            if queue.max_attempts == 0 {
                problems.push(format!("{at}.max_attempts: must be at least 1"));
            }
            let limits = &queue.retry_limits;
            for (outcome, limit) in [
                ("no_answer", limits.no_answer),
                ("busy", limits.busy),
                ("voicemail", limits.voicemail),
            ] {
                if limit == Some(0) {
                    problems.push(format!("{at}.retry_limits.{outcome}: must be at least 1"));
                }
            }
            if queue.max_attempts_per_phone_per_day == Some(0) {
                problems.push(format!(
                    "{at}.max_attempts_per_phone_per_day: must be at least 1"
                ));
            }
            if let Some(hours) = &queue.open_hours {
                match hours.days(&no_days) {
                    Ok(days) if days.iter().all(Vec::is_empty) => {
                        problems.push(format!("{at}.open_hours: the queue would never open"))
                    }
                    Ok(_) => {}
                    Err(e) => problems.push(format!("{at}.open_hours: {e}")),
                }
            }
            if queue.max_attempts > 1 && queue.retry_delays.is_empty() {
                problems.push(format!("{at}.retry_delays: needed when max_attempts > 1"));
            }
            if let Some(Err(e)) = queue.sla_digest_schedule() {
                problems.push(format!(
                    "{at}.sla_digest: '{}' is not a cron expression \
                     (sec min hour day month weekday): {e}",
                    queue.sla_digest.as_deref().unwrap_or_default()
                ));
            }
            if queue.sla_digest.is_some() && queue.escalation_url.is_none() {
                problems.push(format!(
                    "{at}.sla_digest: needs {at}.escalation_url, where the digest is sent"
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// The folder the SQLite file lives in, for the generated API token too.
    pub fn data_dir(&self) -> PathBuf {
        let path = self
            .store
            .url
            .trim_start_matches("sqlite://")
            .trim_start_matches("sqlite:");
        let path = path.split('?').next().unwrap_or(path);
        Path::new(path)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }
}

/// A list of humantime durations (`["10m", "30m"]`).
fn durations<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    let wrapped: Vec<humantime_serde::Serde<Duration>> = Deserialize::deserialize(d)?;
    Ok(wrapped.into_iter().map(|w| w.into_inner()).collect())
}

fn check_http_url(problems: &mut Vec<String>, key: &str, raw: &str) {
    match reqwest::Url::parse(raw) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => {}
        Ok(_) => problems.push(format!("{key}: must be an http or https URL")),
        Err(e) => problems.push(format!("{key}: {e}")),
    }
}

/// Decodes a `whsec_<base64>` signing secret into its key bytes.
pub fn decode_secret(secret: &SecretString) -> Result<Vec<u8>, String> {
    let raw = secret.expose_secret();
    let b64 = raw
        .strip_prefix("whsec_")
        .ok_or("must start with 'whsec_'")?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "the part after 'whsec_' is not valid base64".to_string())?;
    if key.len() < 24 {
        return Err(format!(
            "key is {} bytes; use at least 24 random bytes",
            key.len()
        ));
    }
    Ok(key)
}

/// Sets `a__b__c` (lowercased) in the TOML tree; the value is read as TOML when it parses as a
/// TOML value (numbers, booleans, arrays), else taken as a string.
fn overlay(tree: &mut toml::Table, path: &str, raw: &str) -> Result<(), String> {
    let keys: Vec<String> = path.split("__").map(str::to_lowercase).collect();
    if keys.iter().any(String::is_empty) {
        return Err("empty key segment".into());
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    let (last, parents) = keys.split_last().expect("at least one key");
    let mut table = tree;
    for key in parents {
        let entry = table
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("'{key}' is not a table"))?;
    }
    table.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUEUE: &str = r#"
        [queues.support]
        webhook_url = "http://127.0.0.1:9000/hooks"
        signing_secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
        sla = { normal = "4h", high = "1h", urgent = "15m" }
    "#;

    #[test]
    fn defaults_plus_one_queue_are_valid() {
        let config = Config::from_toml_with_env(QUEUE, []).unwrap();
        assert_eq!(config.http.listen.port(), 8080);
        assert_eq!(config.queues["support"].max_attempts, 3);
        assert_eq!(config.data_dir(), PathBuf::from("data"));
    }

    #[test]
    fn environment_overrides_file() {
        let env = [
            (
                "CALLKEEPER__HTTP__LISTEN".to_string(),
                "127.0.0.1:9999".to_string(),
            ),
            (
                "CALLKEEPER__QUEUES__SUPPORT__MAX_ATTEMPTS".to_string(),
                "5".to_string(),
            ),
            ("OTHER".to_string(), "x".to_string()),
        ];
        let config = Config::from_toml_with_env(QUEUE, env).unwrap();
        assert_eq!(config.http.listen.port(), 9999);
        assert_eq!(config.queues["support"].max_attempts, 5);
    }

    #[test]
    fn reports_every_problem_at_once() {
        let text = r#"
            [amqp]
            url = "http://nope"
            [queues.Bad]
            webhook_url = "ftp://x"
            signing_secrets = ["secret"]
            timezone = "Mars/Olympus"
            sla = { normal = "0s", high = "1h", urgent = "15m" }
        "#;
        let err = Config::from_toml_with_env(text, []).unwrap_err();
        let all = err.to_string();
        for needle in [
            "amqp.url",
            "queues.Bad: name",
            "webhook_url",
            "whsec_",
            "Mars/Olympus",
            "sla.normal",
        ] {
            assert!(all.contains(needle), "{needle} missing from {all}");
        }
    }

    #[test]
    fn calendars_parse_and_bad_ranges_are_explained() {
        let text = format!(
            "{QUEUE}\n[queues.support.open_hours]\nevery_day = [\"08:30-17:30\"]\nsun = []\nclosed = [2026-12-25]\n\
             [calling_window.countries.DE]\nsun = []\n[calling_window.countries.us]\nmon = [\"9-5\"]\n"
        );
        let err = Config::from_toml_with_env(&text, [])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("calling_window.countries.us: use the two-letter"),
            "{err}"
        );
        assert!(err.contains("'9' is not a time"), "{err}");
        let ok = text.replace("[calling_window.countries.us]\nmon = [\"9-5\"]\n", "");
        let config = Config::from_toml_with_env(&ok, []).unwrap();
        let hours = config.queues["support"].open_hours.as_ref().unwrap();
        let days = hours.days(&Default::default()).unwrap();
        assert_eq!(days[0].len(), 1);
        assert!(days[6].is_empty());
        assert_eq!(hours.closed.len(), 1);
    }

    #[test]
    fn retry_rules_parse_default_and_are_checked() {
        let config = Config::from_toml_with_env(QUEUE, []).unwrap();
        let queue = &config.queues["support"];
        assert_eq!(queue.retry_limits, RetryLimits::default());
        assert_eq!(queue.max_attempts_per_phone_per_day, None);
        assert_eq!(queue.personal_fallback, Duration::from_secs(600));

        let text = format!(
            "{QUEUE}retry_limits = {{ no_answer = 3, busy = 5 }}\n\
             max_attempts_per_phone_per_day = 4\npersonal_fallback = \"2m\"\n"
        );
        let config = Config::from_toml_with_env(&text, []).unwrap();
        let queue = &config.queues["support"];
        assert_eq!(queue.retry_limits.for_outcome(Outcome::NoAnswer), Some(3));
        assert_eq!(queue.retry_limits.for_outcome(Outcome::Busy), Some(5));
        assert_eq!(queue.retry_limits.for_outcome(Outcome::Voicemail), None);
        assert_eq!(queue.retry_limits.for_outcome(Outcome::Declined), None);
        assert_eq!(queue.max_attempts_per_phone_per_day, Some(4));
        assert_eq!(queue.personal_fallback, Duration::from_secs(120));

        let text = format!(
            "{QUEUE}retry_limits = {{ voicemail = 0 }}\nmax_attempts_per_phone_per_day = 0\n"
        );
        let err = Config::from_toml_with_env(&text, [])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("retry_limits.voicemail: must be at least 1"),
            "{err}"
        );
        assert!(
            err.contains("max_attempts_per_phone_per_day: must be at least 1"),
            "{err}"
        );
        let text = format!("{QUEUE}retry_limits = {{ hang_up = 1 }}\n");
        let err = Config::from_toml_with_env(&text, [])
            .unwrap_err()
            .to_string();
        assert!(err.contains("hang_up"), "{err}");
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let config =
            Config::from_toml_with_env(include_str!("../deploy/callkeeper.toml"), []).unwrap();
        assert!(config.queues.contains_key("support"));
    }

    #[test]
    fn retention_and_events_keys_default_and_are_checked() {
        let config = Config::from_toml_with_env(QUEUE, []).unwrap();
        assert_eq!(config.amqp.events_exchange, "callkeeper.events");
        assert_eq!(
            config.retention.closed_after,
            Duration::from_secs(90 * 24 * 3600)
        );
        assert!(config.retention.cron().is_ok());
        let text = format!(
            "{QUEUE}\n[retention]\nclosed_after = \"30days\"\nschedule = \"0 0 4 * * Sun\"\n"
        );
        let config = Config::from_toml_with_env(&text, []).unwrap();
        assert_eq!(
            config.retention.closed_after,
            Duration::from_secs(30 * 24 * 3600)
        );
        let text =
            format!("{QUEUE}\n[retention]\nclosed_after = \"10m\"\nschedule = \"30 3 * * *\"\n");
        let err = Config::from_toml_with_env(&text, [])
            .unwrap_err()
            .to_string();
        assert!(err.contains("retention.schedule"), "{err}");
        assert!(err.contains("retention.closed_after"), "{err}");
    }

    #[test]
    fn sla_digest_is_optional_and_checked() {
        let config = Config::from_toml_with_env(QUEUE, []).unwrap();
        assert!(config.queues["support"].sla_digest_schedule().is_none());

        let with_escalation =
            format!("{QUEUE}escalation_url = \"http://127.0.0.1:9000/escalations\"\n");
        let text = format!("{with_escalation}sla_digest = \"0 0 7 * * Mon-Fri\"\n");
        let config = Config::from_toml_with_env(&text, []).unwrap();
        assert!(matches!(
            config.queues["support"].sla_digest_schedule(),
            Some(Ok(_))
        ));

        // Five fields: no seconds, so not what it seems (and refused like retention.schedule).
        let text = format!("{with_escalation}sla_digest = \"0 7 * * *\"\n");
        let err = Config::from_toml_with_env(&text, [])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("queues.support.sla_digest: '0 7 * * *' is not a cron expression"),
            "{err}"
        );

        // Without an escalation endpoint there is nowhere to send it; both problems at once.
        let text = format!(
            "{QUEUE}sla_digest = \"0 0 7 * * *\"\n[queues.sales]\n\
             webhook_url = \"http://127.0.0.1:9000/sales\"\n\
             signing_secrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n\
             sla = {{ normal = \"4h\", high = \"1h\", urgent = \"15m\" }}\n\
             escalation_url = \"http://127.0.0.1:9000/escalations\"\n\
             sla_digest = \"every morning\"\n"
        );
        let err = Config::from_toml_with_env(&text, []).unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(
            err.problems[0].starts_with("queues.sales.sla_digest: 'every morning'"),
            "{err}"
        );
        assert_eq!(
            err.problems[1],
            "queues.support.sla_digest: needs queues.support.escalation_url, \
             where the digest is sent"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::from_toml_with_env("[amqp]\nprefech = 3\n", []).unwrap_err();
        assert!(err.to_string().contains("prefech"), "{err}");
    }
}
