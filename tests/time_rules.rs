//! The time rules over many zones, dates, DST transitions and calendars: a due time is never
//! outside open hours or the callee's window, the deadline is never before the due time nor after
//! `not_after`, and the SLA clock never counts closed time. Plus worked examples for every DST
//! transition of 2026–2027 in Amsterdam, New York and Sydney.

use callkeeper::config::Config;
use callkeeper::domain::inbound::CallbackRequest;
use callkeeper::domain::lifecycle;
use callkeeper::domain::{Customer, Phone, Priority, QueueName, Window};
use callkeeper::schedule::{QueuePolicy, Rules};
use chrono::{DateTime, Duration, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use proptest::prelude::*;

const ZONES: [&str; 7] = [
    "Europe/Amsterdam",
    "America/New_York",
    "Australia/Sydney",
    "Asia/Kolkata",
    "America/St_Johns",
    "Pacific/Chatham",
    "UTC",
];

fn rules(queue_zone: &str, open_hours: &str, calling_window: &str, sla_minutes: u64) -> Rules {
    let text = format!(
        r#"
        [calling_window.default]
        {calling_window}
        [queues.q]
        webhook_url = "http://127.0.0.1:9/hooks"
        signing_secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
        timezone = "{queue_zone}"
        sla = {{ normal = "{sla_minutes}m", high = "{sla_minutes}m", urgent = "{sla_minutes}m" }}
        {open_hours}
        "#
    );
    Rules::from_config(&Config::from_toml_with_env(&text, []).expect("valid test config"))
}

fn policy(rules: &Rules) -> &QueuePolicy {
    rules.queue(&QueueName::parse("q").unwrap()).unwrap()
}

fn request(callee_zone: &str, window: Option<Window>) -> CallbackRequest {
    CallbackRequest {
        queue: QueueName::parse("q").unwrap(),
        phone: Phone::parse("+31612345678").unwrap(),
        priority: Priority::Normal,
        window,
        customer: Some(Customer {
            timezone: Some(callee_zone.into()),
            ..Customer::default()
        }),
        agent_id: None,
        context: None,
        call: None,
    }
}

fn local(zone: Tz, s: &str) -> DateTime<Utc> {
    zone.from_local_datetime(&NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap())
        .earliest()
        .unwrap()
        .with_timezone(&Utc)
}

/// Minutes in [from, until) during which the queue is open, counted one minute at a time.
fn open_minutes(policy: &QueuePolicy, from: DateTime<Utc>, until: DateTime<Utc>) -> i64 {
    let mut t = from;
    let mut minutes = 0;
    while t < until {
        if policy.open_hours.is_open(t) {
            minutes += 1;
        }
        t += Duration::minutes(1);
    }
    minutes
}

/// Whether the queue's hours and the callee's window share any quarter hour in the year after
/// `from`, checked one quarter hour at a time.
fn windows_meet(
    policy: &QueuePolicy,
    window: &callkeeper::schedule::Calendar,
    from: DateTime<Utc>,
) -> bool {
    (0..366 * 96).any(|quarter| {
        let t = from + Duration::minutes(15 * quarter);
        policy.open_hours.is_open(t) && window.is_open(t)
    })
}

fn hhmm(minutes: u32) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

prop_compose! {
    /// A weekly calendar: for each day either closed or one range on a quarter-hour grid
    /// (sometimes past midnight).
    fn week()(days in prop::collection::vec(prop::option::weighted(0.8, (0u32..96, 1u32..96)), 7)) -> String {
        let names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
        let mut out = String::new();
        for (name, day) in names.iter().zip(&days) {
            let ranges = match day {
                Some((start, len)) => format!("[\"{}-{}\"]", hhmm(start * 15), hhmm(((start + len) * 15) % 1440)),
                None => "[]".into(),
            };
            out.push_str(&format!("{name} = {ranges}\n"));
        }
        if days.iter().all(Option::is_none) {
            out.push_str("every_day = [\"09:00-17:00\"]\n");
            out = out.replace(" = []", " = [\"09:00-17:00\"]");
        }
        out
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn due_times_and_deadlines_obey_every_rule(
        queue_zone in prop::sample::select(&ZONES[..]),
        callee_zone in prop::sample::select(&ZONES[..]),
        hours in week(),
        window in prop::option::of((0u32..96, 1u32..96)),
        // Any minute of 2026-2027, which spans every DST transition of those years.
        minute_of_period in 0i64..(2 * 365 * 24 * 60),
        sla_minutes in 1u64..(3 * 24 * 60),
        caller_window in prop::option::of((0i64..(3 * 24 * 60), 1i64..(5 * 24 * 60))),
        recurring in 0u8..3,
    ) {
        let calling = match window {
            Some((start, len)) => format!("every_day = [\"{}-{}\"]", hhmm(start * 15), hhmm(((start + len) * 15) % 1440)),
            None => "every_day = [\"08:00-21:00\"]".into(),
        };
        let recurring = match recurring {
            0 => "",
            1 => "closures = [{ cron = \"0 0 12 * * Mon-Fri\", lasts = \"45m\" }]\n",
            _ => "openings = [{ cron = \"0 30 6 * * Sun\", lasts = \"5h\" }]\nclosures = [{ cron = \"0 0 0 1 * *\", lasts = \"1day\" }]\n",
        };
        let rules = rules(queue_zone, &format!("[queues.q.open_hours]\n{hours}{recurring}"), &calling, sla_minutes);
        let policy = policy(&rules);
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + Duration::minutes(minute_of_period);
        let window = caller_window.map(|(offset, len)| Window {
            not_before: now + Duration::minutes(offset),
            not_after: now + Duration::minutes(offset + len),
        });
        let request = request(callee_zone, window);
        let plan = policy.plan(&request, now);
        let callee = policy.callee(&request.phone, request.customer.as_ref());
        let callee_window = policy.calling_windows.calendar(&callee);

        prop_assert!(plan.due_at >= now);
        // When the queue's hours never meet the callee's window, the callee's window wins and the
        // callback escalates; otherwise the due time is inside both.
        prop_assert!(
            policy.open_hours.is_open(plan.due_at) || !windows_meet(policy, &callee_window, now),
            "due {} outside open hours", plan.due_at
        );
        prop_assert!(callee_window.is_open(plan.due_at), "due {} outside the callee window", plan.due_at);
        if let Some(w) = window {
            prop_assert!(plan.due_at >= w.not_before);
            prop_assert!(plan.deadline <= w.not_after);
            // A window that closes before the callee can be called leaves nothing to keep: the
            // callback expires at not_after. Otherwise the deadline is not before the due time.
            if plan.due_at <= w.not_after {
                prop_assert!(plan.deadline >= plan.due_at);
            }
        }
        // The deadline is the SLA in open time, unless pulled to the due time or not_after.
        let sla_start = window.map_or(now, |w| w.not_before.max(now));
        let clamped = window.is_some_and(|w| plan.deadline == w.not_after) || plan.deadline == plan.due_at;
        if window.is_none() {
            prop_assert!(plan.deadline >= plan.due_at);
        }
        if !clamped {
            prop_assert_eq!(open_minutes(policy, sla_start, plan.deadline), sla_minutes as i64);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A retry held back by the per-number daily cap still lands inside open hours and the
    /// callee's window, after the delay, and with fewer than the cap's calls in the 24 hours
    /// before it.
    #[test]
    fn capped_retries_obey_the_windows_and_the_cap(
        queue_zone in prop::sample::select(&ZONES[..]),
        callee_zone in prop::sample::select(&ZONES[..]),
        hours in week(),
        minute_of_period in 0i64..(2 * 365 * 24 * 60),
        earlier in prop::collection::vec(1i64..(24 * 60), 0..4),
    ) {
        let queue = format!(
            "max_attempts_per_phone_per_day = 2\nretry_delays = [\"10m\"]\n[queues.q.open_hours]\n{hours}"
        );
        let rules = rules(queue_zone, &queue, "every_day = [\"08:00-21:00\"]", 60);
        let policy = policy(&rules);
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + Duration::minutes(minute_of_period);
        let request = request(callee_zone, None);
        let mut callback = lifecycle::create(&request, policy.plan(&request, now), policy, now);
        callback.attempts = 1;
        let mut calls: Vec<_> = earlier.iter().map(|m| now - Duration::minutes(*m)).collect();
        calls.push(now);
        let retry = policy.retry_at(&callback, &calls, now);
        let callee = policy.callee(&request.phone, request.customer.as_ref());
        let callee_window = policy.calling_windows.calendar(&callee);

        prop_assert!(retry >= now + Duration::minutes(9));
        // As for the first due time: when the queue's hours never meet the callee's window, the
        // callee's window wins.
        prop_assert!(
            policy.open_hours.is_open(retry) || !windows_meet(policy, &callee_window, now),
            "retry {} outside open hours", retry
        );
        prop_assert!(callee_window.is_open(retry), "retry {} outside the callee window", retry);
        let in_day = calls.iter().filter(|&&c| c > retry - Duration::hours(24)).count();
        prop_assert!(in_day < 2, "{} calls in the day before the retry at {}", in_day, retry);
    }
}

/// For each DST transition: a 4-hour SLA requested at 00:30 local on the transition day in a
/// queue open around the clock ends 4 real hours later, whatever the wall clock says; and a
/// 2-hour SLA requested at 16:00 the day before, in a queue open 09:00–17:00, ends at 10:00 local.
#[test]
fn sla_clock_across_every_dst_transition_2026_2027() {
    let transitions: [(&str, [&str; 4]); 3] = [
        (
            "Europe/Amsterdam",
            ["2026-03-29", "2026-10-25", "2027-03-28", "2027-10-31"],
        ),
        (
            "America/New_York",
            ["2026-03-08", "2026-11-01", "2027-03-14", "2027-11-07"],
        ),
        (
            "Australia/Sydney",
            ["2026-04-05", "2026-10-04", "2027-04-04", "2027-10-03"],
        ),
    ];
    for (zone_name, days) in transitions {
        let zone: Tz = zone_name.parse().unwrap();
        let all_day = rules(
            zone_name,
            "[queues.q.open_hours]\nevery_day = [\"00:00-24:00\"]",
            "every_day = [\"00:00-24:00\"]",
            240,
        );
        let office = rules(
            zone_name,
            "[queues.q.open_hours]\nevery_day = [\"09:00-17:00\"]",
            "every_day = [\"00:00-24:00\"]",
            120,
        );
        for day in days {
            let now = local(zone, &format!("{day} 00:30"));
            let plan = policy(&all_day).plan(&request(zone_name, None), now);
            assert_eq!(plan.due_at, now, "{zone_name} {day}");
            assert_eq!(
                plan.deadline - now,
                Duration::hours(4),
                "{zone_name} {day}: 4 real hours"
            );

            let date = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap();
            let before = date.pred_opt().unwrap().format("%Y-%m-%d");
            let now = local(zone, &format!("{before} 16:00"));
            let plan = policy(&office).plan(&request(zone_name, None), now);
            assert_eq!(
                plan.deadline,
                local(zone, &format!("{day} 10:00")),
                "{zone_name} {day}: office hours"
            );
        }
    }
}

#[test]
fn friday_five_pm_two_hour_target_lands_on_monday() {
    let rules = rules(
        "Europe/Amsterdam",
        "[queues.q.open_hours]\nevery_day = [\"08:30-17:30\"]\nsat = []\nsun = []",
        "every_day = [\"08:00-21:00\"]",
        120,
    );
    let zone = chrono_tz::Europe::Amsterdam;
    // 2026-11-27 is a Friday.
    let plan = policy(&rules).plan(
        &request("Europe/Amsterdam", None),
        local(zone, "2026-11-27 17:00"),
    );
    assert_eq!(plan.due_at, local(zone, "2026-11-27 17:00"));
    assert_eq!(plan.deadline, local(zone, "2026-11-30 10:00"));
}

#[test]
fn a_request_at_night_waits_for_the_callee_morning_in_their_zone() {
    // The queue is open around the clock in Amsterdam; the callee lives in New York.
    let rules = rules("Europe/Amsterdam", "", "every_day = [\"08:00-21:00\"]", 240);
    let ny = chrono_tz::America::New_York;
    let plan = policy(&rules).plan(
        &request("America/New_York", None),
        local(ny, "2026-11-24 23:00"),
    );
    assert_eq!(plan.due_at, local(ny, "2026-11-25 08:00"));
}

#[test]
fn a_queue_closed_for_a_week_opens_after_it() {
    let closed: Vec<String> = (21..=27).map(|d| format!("2026-12-{d}")).collect();
    let rules = rules(
        "Europe/Amsterdam",
        &format!(
            "[queues.q.open_hours]\nevery_day = [\"09:00-17:00\"]\nclosed = [{}]",
            closed.join(", ")
        ),
        "every_day = [\"08:00-21:00\"]",
        60,
    );
    let zone = chrono_tz::Europe::Amsterdam;
    let plan = policy(&rules).plan(
        &request("Europe/Amsterdam", None),
        local(zone, "2026-12-21 10:00"),
    );
    assert_eq!(plan.due_at, local(zone, "2026-12-28 09:00"));
    assert_eq!(plan.deadline, local(zone, "2026-12-28 10:00"));
}

#[test]
fn per_country_windows_apply_to_numbers_from_that_country() {
    let text = r#"
        [calling_window.default]
        every_day = ["08:00-21:00"]
        [calling_window.countries.NL]
        sun = []
        [queues.q]
        webhook_url = "http://127.0.0.1:9/hooks"
        signing_secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
        sla = { normal = "4h", high = "1h", urgent = "15m" }
    "#;
    let rules = Rules::from_config(&Config::from_toml_with_env(text, []).unwrap());
    let zone = chrono_tz::Europe::Amsterdam;
    let mut req = request("Europe/Amsterdam", None);
    req.customer = None; // the zone comes from the +31 number
                         // 2026-11-29 is a Sunday.
    let plan = policy(&rules).plan(&req, local(zone, "2026-11-29 12:00"));
    assert_eq!(plan.due_at, local(zone, "2026-11-30 08:00"));
}

#[test]
fn a_region_told_apart_by_prefix_gets_its_own_stricter_window_and_zone() {
    let text = r#"
        [calling_window.default]
        every_day = ["08:00-21:00"]
        [calling_window.regions.us-fl]
        prefixes = ["+1305", "+1786"]
        timezone = "America/New_York"
        window = { every_day = ["08:00-20:00"] }
        [queues.q]
        webhook_url = "http://127.0.0.1:9/hooks"
        signing_secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
        timezone = "Europe/Amsterdam"
        sla = { normal = "4h", high = "1h", urgent = "15m" }
    "#;
    let rules = Rules::from_config(&Config::from_toml_with_env(text, []).unwrap());
    let ny = chrono_tz::America::New_York;
    let evening = local(ny, "2026-11-24 20:30");
    let mut miami = request("America/New_York", None);
    miami.phone = Phone::parse("+13056781234").unwrap();
    miami.customer = None; // the zone comes from the region
    let plan = policy(&rules).plan(&miami, evening);
    assert_eq!(
        plan.due_at,
        local(ny, "2026-11-25 08:00"),
        "Florida's 20:00 limit applies"
    );

    let mut manhattan = request("America/New_York", None);
    manhattan.phone = Phone::parse("+12127364000").unwrap();
    let plan = policy(&rules).plan(&manhattan, evening);
    assert_eq!(
        plan.due_at, evening,
        "elsewhere the default 21:00 limit applies"
    );
}
