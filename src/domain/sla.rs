//! SLA figures over a set of callbacks, as a pure function of their stored times, so the report
//! means the same whatever database it came from.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::SlaStatus;

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

    #[test]
    fn an_empty_period_has_no_figures_rather_than_zeros() {
        let report = SlaReport::from_rows(&[]);
        assert_eq!(report.requested, 0);
        assert_eq!(report.attainment, None);
        assert_eq!(report.time_to_first_attempt.p50, None);
    }
}
