//! The lifecycle rules added with the calendar issue, as pure functions at fixed times: retry
//! limits per outcome and in total, the per-number daily cap, personal callbacks falling back to
//! the queue, and a window that closed before the request arrived.

use callkeeper::config::Config;
use callkeeper::domain::inbound::{AttemptReport, CallbackRequest};
use callkeeper::domain::lifecycle::{self, Notice};
use callkeeper::domain::{
    Callback, OfferedTo, Outcome, Phone, Priority, QueueName, SlaStatus, State, Window,
};
use callkeeper::schedule::{QueuePolicy, Rules};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};

/// Monday 2030-03-04 09:00 UTC.
fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 3, 4, 9, 0, 0).unwrap()
}

fn mins(n: i64) -> TimeDelta {
    TimeDelta::minutes(n)
}

/// Rules for one queue `q` with `extra` queue keys; callees may be called at any hour, so only
/// what a test configures moves a time.
fn rules(extra: &str) -> Rules {
    let text = format!(
        r#"
        [calling_window.default]
        every_day = ["00:00-24:00"]
        [queues.q]
        webhook_url = "http://127.0.0.1:9/hooks"
        signing_secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
        sla = {{ normal = "4h", high = "1h", urgent = "15m" }}
        retry_delays = ["10m"]
        {extra}
        "#
    );
    Rules::from_config(&Config::from_toml_with_env(&text, []).expect("valid test config"))
}

fn policy(rules: &Rules) -> &QueuePolicy {
    rules.queue(&QueueName::parse("q").unwrap()).unwrap()
}

fn request(agent_id: Option<&str>, window: Option<Window>) -> CallbackRequest {
    CallbackRequest {
        queue: QueueName::parse("q").unwrap(),
        phone: Phone::parse("+31612345678").unwrap(),
        priority: Priority::Normal,
        window,
        customer: None,
        agent_id: agent_id.map(Into::into),
        context: None,
        call: None,
    }
}

fn create(policy: &QueuePolicy, request: &CallbackRequest, now: DateTime<Utc>) -> Callback {
    lifecycle::create(request, policy.plan(request, now), policy, now)
}

fn report(outcome: Outcome) -> AttemptReport {
    AttemptReport {
        agent_id: "agent-1".into(),
        outcome,
        note: None,
    }
}

/// Records attempts with `outcomes` an hour apart from `t0`, no earlier calls to the number;
/// returns the notices of each.
fn attempts(policy: &QueuePolicy, cb: &mut Callback, outcomes: &[Outcome]) -> Vec<Vec<Notice>> {
    outcomes
        .iter()
        .enumerate()
        .map(|(i, &outcome)| {
            let at = t0() + TimeDelta::hours(i as i64);
            lifecycle::attempt(cb, &report(outcome), policy, &[], at).unwrap()
        })
        .collect()
}

#[test]
fn an_outcome_limit_fails_the_callback_and_exhausts_it() {
    let rules = rules("max_attempts = 10\nretry_limits = { busy = 2 }");
    let policy = policy(&rules);
    let mut cb = create(policy, &request(None, None), t0());
    // Other outcomes do not count towards the busy limit.
    let notices = attempts(
        policy,
        &mut cb,
        &[Outcome::Busy, Outcome::NoAnswer, Outcome::Busy],
    );
    assert_eq!(notices[0], vec![]);
    assert_eq!(notices[1], vec![]);
    assert_eq!(notices[2], vec![Notice::Exhausted]);
    assert_eq!(cb.state, State::Failed);
    assert_eq!((cb.busy_attempts, cb.no_answer_attempts), (2, 1));
    assert_eq!(cb.attempts, 3);
    assert!(cb.closed_at.is_some());
}

#[test]
fn each_outcome_has_its_own_limit() {
    let rules = rules("max_attempts = 10\nretry_limits = { no_answer = 3, voicemail = 1 }");
    let policy = policy(&rules);

    let mut cb = create(policy, &request(None, None), t0());
    let notices = attempts(policy, &mut cb, &[Outcome::NoAnswer; 3]);
    assert_eq!(notices[1], vec![]);
    assert_eq!(notices[2], vec![Notice::Exhausted]);
    assert_eq!(cb.state, State::Failed);

    let mut cb = create(policy, &request(None, None), t0());
    let notices = attempts(policy, &mut cb, &[Outcome::Voicemail]);
    assert_eq!(notices[0], vec![Notice::Exhausted]);
    assert_eq!(cb.voicemail_attempts, 1);

    // No busy limit: only the total stops it.
    let mut cb = create(policy, &request(None, None), t0());
    attempts(policy, &mut cb, &[Outcome::Busy; 9]);
    assert_eq!(cb.state, State::Scheduled);
    assert_eq!(cb.busy_attempts, 9);
}

#[test]
fn the_total_still_applies_under_higher_outcome_limits() {
    let rules = rules("max_attempts = 3\nretry_limits = { no_answer = 5, busy = 5 }");
    let policy = policy(&rules);
    let mut cb = create(policy, &request(None, None), t0());
    let notices = attempts(
        policy,
        &mut cb,
        &[Outcome::NoAnswer, Outcome::Busy, Outcome::NoAnswer],
    );
    assert_eq!(notices[2], vec![Notice::Exhausted]);
    assert_eq!(cb.state, State::Failed);
}

#[test]
fn without_limits_a_retry_comes_after_the_delay() {
    let rules = rules("max_attempts = 3");
    let policy = policy(&rules);
    let mut cb = create(policy, &request(None, None), t0());
    let notices = lifecycle::attempt(&mut cb, &report(Outcome::NoAnswer), policy, &[], t0());
    assert_eq!(notices, Ok(vec![]));
    assert_eq!(cb.state, State::Scheduled);
    // 10 minutes ± 10 % jitter.
    assert!(cb.due_at >= t0() + mins(9) && cb.due_at <= t0() + mins(11));
    assert_eq!(policy.phone_attempts_since(t0()), None, "no cap, no lookup");
}

#[test]
fn the_daily_cap_holds_the_retry_until_the_oldest_call_is_a_day_old() {
    let rules = rules("max_attempts = 5\nmax_attempts_per_phone_per_day = 3");
    let policy = policy(&rules);
    assert_eq!(
        policy.phone_attempts_since(t0()),
        Some(t0() - TimeDelta::hours(24))
    );

    // One earlier call to the number (another callback): with this one, 2 of 3.
    let mut cb = create(policy, &request(None, None), t0());
    let earlier = [t0() - TimeDelta::hours(3)];
    lifecycle::attempt(&mut cb, &report(Outcome::Busy), policy, &earlier, t0()).unwrap();
    assert!(
        cb.due_at <= t0() + mins(11),
        "under the cap: the usual delay"
    );

    // Two earlier calls: this one is the third, so the next waits for the oldest to age out.
    let mut cb = create(policy, &request(None, None), t0());
    let earlier = [t0() - TimeDelta::hours(3), t0() - TimeDelta::hours(5)];
    lifecycle::attempt(&mut cb, &report(Outcome::Busy), policy, &earlier, t0()).unwrap();
    assert_eq!(cb.state, State::Scheduled);
    assert_eq!(cb.due_at, t0() - TimeDelta::hours(5) + TimeDelta::hours(24));
}

#[test]
fn the_daily_cap_counts_every_call_above_it() {
    let rules = rules("max_attempts_per_phone_per_day = 2");
    let policy = policy(&rules);
    let h = TimeDelta::hours;
    assert_eq!(policy.phone_free_at(&[t0()]), None);
    // Three calls (more than the cap, from other queues' callbacks): two must age out.
    let calls = [t0() - h(1), t0() - h(10), t0() - h(4)];
    assert_eq!(policy.phone_free_at(&calls), Some(t0() - h(4) + h(24)));
}

#[test]
fn a_capped_retry_still_lands_inside_open_hours_and_the_calling_window() {
    let rules = rules(
        "max_attempts = 5\nmax_attempts_per_phone_per_day = 1\ntimezone = \"Europe/Amsterdam\"\n\
         [queues.q.open_hours]\nevery_day = [\"09:00-17:00\"]\nsat = []\nsun = []",
    );
    let policy = policy(&rules);
    // Friday 2030-03-08 16:30 Amsterdam (15:30 UTC): the cap frees the number Saturday 16:30,
    // the queue is closed all weekend, so Monday 09:00 Amsterdam (08:00 UTC).
    let friday = Utc.with_ymd_and_hms(2030, 3, 8, 15, 30, 0).unwrap();
    let mut cb = create(policy, &request(None, None), friday - mins(30));
    lifecycle::attempt(&mut cb, &report(Outcome::NoAnswer), policy, &[], friday).unwrap();
    assert_eq!(
        cb.due_at,
        Utc.with_ymd_and_hms(2030, 3, 11, 8, 0, 0).unwrap()
    );
    assert!(policy.open_hours.is_open(cb.due_at));
}

#[test]
fn a_personal_callback_falls_back_to_the_queue_once() {
    let rules = rules("personal_fallback = \"10m\"");
    let policy = policy(&rules);
    let mut cb = create(policy, &request(Some("agent-7"), None), t0());
    assert_eq!(lifecycle::advance(&mut cb, policy, t0()), vec![Notice::Due]);
    assert_eq!(cb.offered_to(), OfferedTo::Agent);
    assert_eq!(cb.offered_agent(), Some("agent-7"));
    assert_eq!(lifecycle::next_fire_at(&cb, policy), Some(t0() + mins(10)));

    assert_eq!(lifecycle::advance(&mut cb, policy, t0() + mins(9)), vec![]);
    assert_eq!(
        lifecycle::advance(&mut cb, policy, t0() + mins(10)),
        vec![Notice::Due]
    );
    assert_eq!(cb.offered_to(), OfferedTo::Queue);
    assert_eq!(cb.offered_agent(), None);
    assert_eq!(
        cb.agent_id.as_deref(),
        Some("agent-7"),
        "kept for the record"
    );
    assert_eq!(cb.offered_to_queue_at, Some(t0() + mins(10)));

    // Once: the next thing left is the at-risk notice.
    assert_eq!(
        lifecycle::next_fire_at(&cb, policy),
        Some(t0() + TimeDelta::hours(4) - mins(15))
    );
    assert_eq!(lifecycle::advance(&mut cb, policy, t0() + mins(30)), vec![]);
}

#[test]
fn a_claim_before_the_fallback_keeps_it_with_the_agent() {
    let rules = rules("personal_fallback = \"10m\"");
    let policy = policy(&rules);
    let mut cb = create(policy, &request(Some("agent-7"), None), t0());
    lifecycle::advance(&mut cb, policy, t0());
    lifecycle::claim(&mut cb, "agent-7", t0() + mins(5)).unwrap();
    assert_eq!(lifecycle::advance(&mut cb, policy, t0() + mins(15)), vec![]);
    assert_eq!(cb.offered_to_queue_at, None);
    assert_ne!(lifecycle::next_fire_at(&cb, policy), Some(t0() + mins(10)));

    // A retry goes to the agent first again, with a fresh fallback.
    let by_agent = AttemptReport {
        agent_id: "agent-7".into(),
        ..report(Outcome::NoAnswer)
    };
    lifecycle::attempt(&mut cb, &by_agent, policy, &[], t0() + mins(20)).unwrap();
    let due = cb.due_at;
    assert_eq!(lifecycle::advance(&mut cb, policy, due), vec![Notice::Due]);
    assert_eq!(cb.offered_to(), OfferedTo::Agent);
    assert_eq!(lifecycle::next_fire_at(&cb, policy), Some(due + mins(10)));
}

#[test]
fn a_timer_late_past_the_fallback_offers_to_the_queue_in_one_webhook() {
    let rules = rules("personal_fallback = \"10m\"");
    let policy = policy(&rules);
    let mut cb = create(policy, &request(Some("agent-7"), None), t0());
    assert_eq!(
        lifecycle::advance(&mut cb, policy, t0() + mins(30)),
        vec![Notice::Due]
    );
    assert_eq!(cb.offered_to(), OfferedTo::Queue);
    assert_eq!(lifecycle::advance(&mut cb, policy, t0() + mins(31)), vec![]);
}

#[test]
fn the_fallback_counts_open_time_only() {
    let rules =
        rules("personal_fallback = \"10m\"\n[queues.q.open_hours]\nevery_day = [\"08:00-17:00\"]");
    let policy = policy(&rules);
    // Due at 16:55 UTC: 5 minutes today, 5 tomorrow from 08:00.
    let late = Utc.with_ymd_and_hms(2030, 3, 4, 16, 55, 0).unwrap();
    let mut cb = create(policy, &request(Some("agent-7"), None), late);
    assert_eq!(cb.due_at, late);
    lifecycle::advance(&mut cb, policy, late);
    assert_eq!(
        lifecycle::next_fire_at(&cb, policy),
        Some(Utc.with_ymd_and_hms(2030, 3, 5, 8, 5, 0).unwrap())
    );
}

#[test]
fn without_an_agent_there_is_no_fallback() {
    let rules = rules("personal_fallback = \"10m\"");
    let policy = policy(&rules);
    let mut cb = create(policy, &request(None, None), t0());
    assert_eq!(lifecycle::advance(&mut cb, policy, t0()), vec![Notice::Due]);
    assert_eq!(cb.offered_to(), OfferedTo::Queue);
    assert_eq!(lifecycle::advance(&mut cb, policy, t0() + mins(10)), vec![]);
}

#[test]
fn a_window_closed_on_arrival_expires_at_the_first_step_without_a_due() {
    let rules = rules("");
    let policy = policy(&rules);
    for not_after in [t0(), t0() - TimeDelta::hours(2)] {
        let window = Window {
            not_before: not_after - TimeDelta::hours(1),
            not_after,
        };
        let mut cb = create(policy, &request(Some("agent-7"), Some(window)), t0());
        assert_eq!(cb.state, State::Scheduled);
        let first = lifecycle::next_fire_at(&cb, policy).expect("a fire time");
        assert!(first <= t0(), "the timer must look at it at once");
        let notices = lifecycle::advance(&mut cb, policy, t0());
        assert_eq!(notices, vec![Notice::Missed], "never a due webhook");
        assert_eq!(cb.state, State::Expired);
        assert_eq!(cb.sla, SlaStatus::Missed);
        assert_eq!(cb.closed_at, Some(t0()));
        assert_eq!(lifecycle::next_fire_at(&cb, policy), None);
    }
}

#[test]
fn a_duplicate_whose_window_had_closed_moves_no_time() {
    let rules = rules("");
    let policy = policy(&rules);
    let mut cb = create(policy, &request(None, None), t0());
    let before = (cb.due_at, cb.deadline);
    let closed = Window {
        not_before: t0() - TimeDelta::hours(2),
        not_after: t0() - TimeDelta::hours(1),
    };
    let late = request(None, Some(closed));
    let now = t0() + mins(5);
    lifecycle::merge(&mut cb, &late, policy.plan(&late, now), now);
    assert_eq!(cb.requests, 2);
    assert_eq!((cb.due_at, cb.deadline), before);
    assert_eq!(lifecycle::advance(&mut cb, policy, now), vec![Notice::Due]);
    assert_eq!(cb.sla, SlaStatus::Pending);
}

#[test]
fn a_duplicate_naming_an_agent_after_the_due_sends_no_second_due() {
    let rules = rules("personal_fallback = \"10m\"");
    let policy = policy(&rules);
    let mut cb = create(policy, &request(None, None), t0());
    assert_eq!(lifecycle::advance(&mut cb, policy, t0()), vec![Notice::Due]);
    let named = request(Some("agent-7"), None);
    let now = t0() + mins(20);
    lifecycle::merge(&mut cb, &named, policy.plan(&named, now), now);
    assert_eq!(cb.agent_id.as_deref(), Some("agent-7"));
    assert_eq!(cb.offered_to(), OfferedTo::Queue);
    assert_eq!(lifecycle::advance(&mut cb, policy, now), vec![]);

    // Named before it was due: a personal callback like any other.
    let mut cb = create(policy, &request(None, None), t0() + mins(5));
    lifecycle::merge(&mut cb, &named, policy.plan(&named, t0()), t0());
    assert_eq!(cb.offered_to(), OfferedTo::Agent);
}
