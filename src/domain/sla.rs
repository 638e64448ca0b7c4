//! SLA figures over a set of callbacks, as a pure function of their stored times, so the report
//! means the same whatever database it came from.

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use super::SlaStatus;

/// One calendar day in a time zone, as the period `[from, to)` from its local midnight to the
/// next: 24 hours, or 23 and 25 on the days the clocks change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalDay {
    pub day: NaiveDate,
    pub zone: Tz,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl LocalDay {
    pub fn new(zone: Tz, day: NaiveDate) -> Self {
        // Where midnight falls in a DST gap (some zones change at 00:00) the day starts when
        // the gap ends; `instant` settles that for open hours too.
        let midnight =
            |date: NaiveDate| crate::schedule::instant(zone, date.and_time(NaiveTime::MIN));
        Self {
            day,
            zone,
            from: midnight(day),
            to: midnight(day.succ_opt().unwrap_or(day)),
        }
    }

    /// "Yesterday" for a report made at `at`: the day before `at`'s local date in `zone`.
    pub fn before(zone: Tz, at: DateTime<Utc>) -> Self {
        let today = at.with_timezone(&zone).date_naive();
        Self::new(zone, today.pred_opt().unwrap_or(today))
    }
}

/// What the report needs of one callback.
#[derive(Debug, Clone, PartialEq)]
pub struct SlaRow {
    pub requests: u32,
    pub sla: SlaStatus,
    pub requested_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    pub first_attempt_at: Option<DateTime<Utc>>,
    pub attempts: u32,
}

/// `GET /v1/sla`: how well the promise was kept for callbacks requested in a period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlaReport {
    /// Callbacks requested in the period.
    pub requested: u64,
    /// Requests including the duplicates merged into those callbacks.
    pub requests: u64,
    /// Callbacks with at least one attempt.
    pub attempted: u64,
    pub met: u64,
    pub missed: u64,
    /// Deadline not reached yet and no attempt.
    pub pending: u64,
    /// met / (met + missed); `None` while nothing is decided.
    pub attainment: Option<f64>,
    /// Seconds from request to first attempt.
    pub time_to_first_attempt: Percentiles,
    /// Seconds of first attempt relative to the deadline: negative is early, positive late.
    pub punctuality: Percentiles,
    /// Mean attempts over attempted callbacks.
    pub attempts_per_callback: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
}

impl SlaReport {
    pub fn from_rows(rows: &[SlaRow]) -> Self {
        let count = |status: SlaStatus| rows.iter().filter(|r| r.sla == status).count() as u64;
        let (met, missed) = (count(SlaStatus::Met), count(SlaStatus::Missed));
        let attempted: Vec<&SlaRow> = rows
            .iter()
            .filter(|r| r.first_attempt_at.is_some())
            .collect();
        let seconds = |f: &dyn Fn(&SlaRow) -> chrono::Duration| -> Vec<f64> {
            attempted
                .iter()
                .map(|r| f(r).num_milliseconds() as f64 / 1000.0)
                .collect()
        };
        let to_first = seconds(&|r| r.first_attempt_at.unwrap_or(r.requested_at) - r.requested_at);
        let punctuality = seconds(&|r| r.first_attempt_at.unwrap_or(r.deadline) - r.deadline);
        let total_attempts: u64 = attempted.iter().map(|r| u64::from(r.attempts)).sum();
        Self {
            requested: rows.len() as u64,
            requests: rows.iter().map(|r| u64::from(r.requests)).sum(),
            attempted: attempted.len() as u64,
            met,
            missed,
            pending: count(SlaStatus::Pending),
            attainment: (met + missed > 0).then(|| met as f64 / (met + missed) as f64),
            time_to_first_attempt: Percentiles::of(to_first),
            punctuality: Percentiles::of(punctuality),
            attempts_per_callback: (!attempted.is_empty())
                .then(|| total_attempts as f64 / attempted.len() as f64),
        }
    }
}

impl Percentiles {
    /// Nearest-rank percentiles: always a value that occurred.
    fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        let rank = |p: f64| -> Option<f64> {
            if values.is_empty() {
                return None;
            }
            let index = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
            Some(values[index])
        };
        Self {
            p50: rank(0.5),
            p90: rank(0.9),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn row(
        sla: SlaStatus,
        first_after_minutes: Option<i64>,
        deadline_minutes: i64,
        attempts: u32,
    ) -> SlaRow {
        let requested_at = Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap();
        SlaRow {
            requests: 1,
            sla,
            requested_at,
            deadline: requested_at + chrono::Duration::minutes(deadline_minutes),
            first_attempt_at: first_after_minutes
                .map(|m| requested_at + chrono::Duration::minutes(m)),
            attempts,
        }
    }

    #[test]
    fn a_known_scenario_gives_exact_figures() {
        let rows = vec![
            row(SlaStatus::Met, Some(10), 60, 1),
            row(SlaStatus::Met, Some(30), 60, 2),
            row(SlaStatus::Missed, Some(90), 60, 1),
            row(SlaStatus::Missed, None, 60, 0),
            row(SlaStatus::Pending, None, 60, 0),
        ];
        let report = SlaReport::from_rows(&rows);
        assert_eq!(
            (
                report.requested,
                report.attempted,
                report.met,
                report.missed,
                report.pending
            ),
            (5, 3, 2, 2, 1)
        );
        assert_eq!(report.attainment, Some(0.5));
        assert_eq!(
            report.time_to_first_attempt,
            Percentiles {
                p50: Some(1800.0),
                p90: Some(5400.0)
            }
        );
        assert_eq!(
            report.punctuality,
            Percentiles {
                p50: Some(-1800.0),
                p90: Some(1800.0)
            }
        );
        assert_eq!(report.attempts_per_callback, Some(4.0 / 3.0));
    }

    fn utc(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, min, 0).unwrap()
    }

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn yesterday_is_the_local_day_before_in_the_zone() {
        use chrono_tz::{America::Los_Angeles, Asia::Tokyo, Europe::Amsterdam, UTC};
        // 07:00 in Amsterdam (CET) on Tuesday 2030-03-05 is 06:00 UTC.
        let day = LocalDay::before(Amsterdam, utc(2030, 3, 5, 6, 0));
        assert_eq!(day.day, date(2030, 3, 4));
        assert_eq!(
            (day.from, day.to),
            (utc(2030, 3, 3, 23, 0), utc(2030, 3, 4, 23, 0))
        );
        // 00:30 UTC is already Wednesday in Tokyo, still Monday in Los Angeles.
        let at = utc(2030, 3, 5, 0, 30);
        assert_eq!(LocalDay::before(Tokyo, at).day, date(2030, 3, 4));
        assert_eq!(LocalDay::before(Los_Angeles, at).day, date(2030, 3, 3));
        assert_eq!(LocalDay::before(UTC, at).day, date(2030, 3, 4));
    }

    #[test]
    fn days_the_clocks_change_last_23_and_25_hours() {
        use chrono_tz::Europe::Amsterdam;
        // Spring forward on Sunday 2030-03-31 at 02:00 CET: midnight is still CET (UTC+1),
        // the next midnight CEST (UTC+2).
        let spring = LocalDay::before(Amsterdam, utc(2030, 4, 1, 5, 0));
        assert_eq!(spring.day, date(2030, 3, 31));
        assert_eq!(spring.from, utc(2030, 3, 30, 23, 0));
        assert_eq!(spring.to, utc(2030, 3, 31, 22, 0));
        assert_eq!(spring.to - spring.from, chrono::Duration::hours(23));
        // Fall back on Sunday 2030-10-27 at 03:00 CEST.
        let autumn = LocalDay::before(Amsterdam, utc(2030, 10, 28, 6, 0));
        assert_eq!(autumn.day, date(2030, 10, 27));
        assert_eq!(autumn.from, utc(2030, 10, 26, 22, 0));
        assert_eq!(autumn.to, utc(2030, 10, 27, 23, 0));
        assert_eq!(autumn.to - autumn.from, chrono::Duration::hours(25));
        // Consecutive days tile time: no gap, no overlap.
        let next = LocalDay::new(Amsterdam, date(2030, 10, 28));
        assert_eq!(next.from, autumn.to);
    }

    #[test]
    fn a_midnight_inside_a_dst_gap_starts_the_day_when_the_gap_ends() {
        use chrono_tz::America::Havana;
        // Cuba springs forward at midnight: 2030-03-10 00:00 CST (UTC-5) becomes 01:00 CDT
        // (UTC-4), so that day has no 00:00 and begins at 05:00 UTC.
        let day = LocalDay::new(Havana, date(2030, 3, 10));
        assert_eq!(day.from, utc(2030, 3, 10, 5, 0));
        assert_eq!(day.to, utc(2030, 3, 11, 4, 0));
        assert_eq!(day.to - day.from, chrono::Duration::hours(23));
        assert_eq!(LocalDay::new(Havana, date(2030, 3, 9)).to, day.from);
    }

    #[test]
    fn an_empty_period_has_no_figures_rather_than_zeros() {
        let report = SlaReport::from_rows(&[]);
        assert_eq!(report.requested, 0);
        assert_eq!(report.attainment, None);
        assert_eq!(report.time_to_first_attempt.p50, None);
    }
}
