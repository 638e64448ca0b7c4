//! Weekly local-time ranges in one time zone, minus closed dates: a queue's open hours or a
//! callee's calling window. All arithmetic is done on real instants, so DST gaps and overlaps
//! are handled where local times are turned into instants, and nowhere else.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Datelike, Days, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// How far ahead a search looks before deciding a calendar never opens.
const SEARCH_DAYS: u64 = 800;

/// `08:30-17:30`; an end not after the start runs past midnight (`22:00-02:00`), and
/// `00:00-24:00` is the whole day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl Range {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let (start, end) = raw
            .split_once('-')
            .ok_or_else(|| format!("'{raw}' is not HH:MM-HH:MM"))?;
        let time = |s: &str| -> Result<NaiveTime, String> {
            let s = s.trim();
            if s == "24:00" {
                return Ok(NaiveTime::MIN);
            }
            NaiveTime::parse_from_str(s, "%H:%M").map_err(|_| format!("'{s}' is not a time HH:MM"))
        };
        let range = Range {
            start: time(start)?,
            end: time(end)?,
        };
        if range.start == range.end && range.start != NaiveTime::MIN {
            return Err(format!("'{raw}' is empty"));
        }
        Ok(range)
    }

    fn crosses_midnight(self) -> bool {
        self.end <= self.start
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}",
            self.start.format("%H:%M"),
            self.end.format("%H:%M")
        )
    }
}

/// A recurring closure or extra opening: starts at each cron occurrence (in the calendar's zone)
/// and lasts `length`.
#[derive(Debug, Clone)]
pub struct Recurring {
    pub schedule: cron::Schedule,
    pub length: chrono::Duration,
}

impl PartialEq for Recurring {
    fn eq(&self, other: &Self) -> bool {
        self.schedule.source() == other.schedule.source() && self.length == other.length
    }
}

impl Recurring {
    /// Parses a cron expression: the `cron` crate's 6 fields (`sec min hour day-of-month month
    /// day-of-week`, weekdays numbered 1 = Sunday … 7 = Saturday, names like `Mon-Fri` work
    /// too). A standard 5-field expression (`min hour dom month dow`) is accepted when its
    /// weekday field uses names or `*`, since its numbers would mean other days.
    pub fn parse(expression: &str, length: Duration) -> Result<Self, String> {
        let fields: Vec<&str> = expression.split_whitespace().collect();
        let six = match fields.len() {
            5 if fields[4].bytes().any(|b| b.is_ascii_digit()) => {
                return Err(format!(
                    "'{expression}': a 5-field expression must name its weekdays (Mon-Fri): \
                     numbers differ between cron dialects; or write 6 fields, 1 = Sunday"
                ))
            }
            5 => format!("0 {expression}"),
            _ => expression.to_owned(),
        };
        let schedule = six
            .parse::<cron::Schedule>()
            .map_err(|e| format!("'{expression}': {e}"))?;
        let length = chrono::Duration::from_std(length).map_err(|e| e.to_string())?;
        if length <= chrono::Duration::zero() {
            return Err(format!("'{expression}': must last longer than 0s"));
        }
        Ok(Self { schedule, length })
    }

    /// Occurrences as intervals, in order, from the one that may still cover `at`.
    fn intervals_from(
        &self,
        zone: Tz,
        at: DateTime<Utc>,
    ) -> impl Iterator<Item = (DateTime<Utc>, DateTime<Utc>)> + '_ {
        let horizon = at + chrono::Duration::days(SEARCH_DAYS as i64);
        let length = self.length;
        self.schedule
            .after_owned((at - length).with_timezone(&zone))
            .map(move |start| {
                (
                    start.with_timezone(&Utc),
                    start.with_timezone(&Utc) + length,
                )
            })
            .take_while(move |&(start, _)| start < horizon)
    }

    fn covers(&self, zone: Tz, at: DateTime<Utc>) -> bool {
        let just_after = (at + chrono::Duration::milliseconds(1)).with_timezone(&zone);
        self.schedule
            .after(&just_after)
            .next_back()
            .is_some_and(|start| at < start.with_timezone(&Utc) + self.length)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Calendar {
    /// Open at every instant (no calendar configured).
    Always,
    Weekly(Box<Weekly>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Weekly {
    pub zone: Tz,
    /// Ranges per weekday, Monday first, sorted by start.
    pub days: [Vec<Range>; 7],
    /// Local dates on which no range starts (holidays).
    pub closed: BTreeSet<NaiveDate>,
    /// Extra open time on top of the weekly ranges.
    pub openings: Vec<Recurring>,
    /// Closed time, winning over ranges and openings.
    pub closures: Vec<Recurring>,
}

impl Calendar {
    pub fn weekly(zone: Tz, mut days: [Vec<Range>; 7], closed: BTreeSet<NaiveDate>) -> Self {
        for day in &mut days {
            day.sort_by_key(|r| r.start);
        }
        Calendar::Weekly(Box::new(Weekly {
            zone,
            days,
            closed,
            openings: Vec::new(),
            closures: Vec::new(),
        }))
    }

    /// Adds recurring extra openings and closures.
    pub fn with_recurring(self, openings: Vec<Recurring>, closures: Vec<Recurring>) -> Self {
        match self {
            Calendar::Weekly(w) => Calendar::Weekly(Box::new(Weekly {
                openings,
                closures,
                ..*w
            })),
            always => always,
        }
    }

    /// Whether `at` is inside the calendar. Computed from local time directly (not through the
    /// interval walk), so tests can check the two against each other.
    pub fn is_open(&self, at: DateTime<Utc>) -> bool {
        let Calendar::Weekly(w) = self else {
            return true;
        };
        let local = at.with_timezone(&w.zone).naive_local();
        let (date, time) = (local.date(), local.time());
        let today = !w.closed.contains(&date)
            && w.ranges(date)
                .iter()
                .any(|r| time >= r.start && (r.crosses_midnight() || time < r.end));
        let yesterday = date.pred_opt().is_some_and(|prev| {
            !w.closed.contains(&prev)
                && w.ranges(prev)
                    .iter()
                    .any(|r| r.crosses_midnight() && time < r.end)
        });
        let opened = w.openings.iter().any(|r| r.covers(w.zone, at));
        let closed = w.closures.iter().any(|r| r.covers(w.zone, at));
        (today || yesterday || opened) && !closed
    }

    /// The first instant at or after `at` inside the calendar; `None` if it never opens.
    pub fn next_open(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let Calendar::Weekly(w) = self else {
            return Some(at);
        };
        w.intervals_from(at)
            .find(|&(_, end)| end > at)
            .map(|(start, _)| start.max(at))
    }

    /// `start` plus `span` of time inside the calendar (the clock stops outside it);
    /// `None` if the calendar does not hold that much time within the search horizon.
    pub fn add_open_time(&self, start: DateTime<Utc>, span: Duration) -> Option<DateTime<Utc>> {
        let span = chrono::Duration::from_std(span).ok()?;
        let Calendar::Weekly(w) = self else {
            return Some(start + span);
        };
        let mut left = span;
        for (from, until) in w.intervals_from(start) {
            let from = from.max(start);
            if from >= until {
                continue;
            }
            if until - from >= left {
                return Some(from + left);
            }
            left -= until - from;
        }
        None
    }
}

impl Weekly {
    fn ranges(&self, date: NaiveDate) -> &[Range] {
        &self.days[date.weekday().num_days_from_monday() as usize]
    }

    /// Open intervals as instants, in order and merged: the weekly ranges plus the openings,
    /// minus the closures.
    fn intervals_from(&self, at: DateTime<Utc>) -> Box<dyn Iterator<Item = Interval> + '_> {
        let mut open: Box<dyn Iterator<Item = Interval>> = Box::new(self.weekly_intervals_from(at));
        for opening in &self.openings {
            open = Box::new(merge(merge_sorted(
                open,
                opening.intervals_from(self.zone, at),
            )));
        }
        for closure in &self.closures {
            open = Box::new(subtract(open, closure.intervals_from(self.zone, at)));
        }
        open
    }

    /// The weekly ranges as instants, in order and merged, from the local day before `at`'s
    /// (whose ranges may run past midnight) until the search horizon.
    fn weekly_intervals_from(&self, at: DateTime<Utc>) -> impl Iterator<Item = Interval> + '_ {
        let first = at
            .with_timezone(&self.zone)
            .date_naive()
            .pred_opt()
            .unwrap_or(NaiveDate::MIN);
        let raw = (0..SEARCH_DAYS)
            .filter_map(move |offset| first.checked_add_days(Days::new(offset)))
            .filter(|date| !self.closed.contains(date))
            .flat_map(move |date| {
                self.ranges(date).iter().filter_map(move |range| {
                    let end_date = if range.crosses_midnight() {
                        date.succ_opt()?
                    } else {
                        date
                    };
                    let start = instant(self.zone, date.and_time(range.start));
                    let end = instant(self.zone, end_date.and_time(range.end));
                    (start < end).then_some((start, end))
                })
            });
        merge(raw)
    }
}

/// The instant a local wall-clock time names. In a DST gap the time does not exist: take the
/// first instant after the gap. In an overlap it exists twice: take the earlier.
pub fn instant(zone: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    (0..=180)
        .find_map(|minutes| {
            zone.from_local_datetime(&(local + chrono::Duration::minutes(minutes)))
                .earliest()
        })
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| Utc.from_utc_datetime(&local))
}

/// Merges touching or overlapping intervals of a start-ordered stream.
fn merge(
    mut intervals: impl Iterator<Item = (DateTime<Utc>, DateTime<Utc>)>,
) -> impl Iterator<Item = (DateTime<Utc>, DateTime<Utc>)> {
    let mut current = intervals.next();
    std::iter::from_fn(move || loop {
        let (start, end) = current?;
        match intervals.next() {
            Some((next_start, next_end)) if next_start <= end => {
                current = Some((start, end.max(next_end)))
            }
            next => {
                current = next;
                return Some((start, end));
            }
        }
    })
}

type Interval = (DateTime<Utc>, DateTime<Utc>);

/// Two start-ordered streams as one start-ordered stream.
fn merge_sorted<'a>(
    a: impl Iterator<Item = Interval> + 'a,
    b: impl Iterator<Item = Interval> + 'a,
) -> impl Iterator<Item = Interval> + 'a {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) if y.0 < x.0 => b.next(),
        (Some(_), _) => a.next(),
        (None, _) => b.next(),
    })
}

/// `open` minus `closed`; both start-ordered, `open` merged.
fn subtract<'a>(
    mut open: impl Iterator<Item = Interval> + 'a,
    closed: impl Iterator<Item = Interval> + 'a,
) -> impl Iterator<Item = Interval> + 'a {
    let mut closed = closed.peekable();
    // What is left of an open interval after a closure cut into it.
    let mut rest: Option<Interval> = None;
    std::iter::from_fn(move || loop {
        let (start, end) = match rest.take() {
            Some(interval) => interval,
            None => open.next()?,
        };
        // Closures that ended before this interval can no longer matter.
        while closed
            .peek()
            .is_some_and(|&(_, closure_end)| closure_end <= start)
        {
            closed.next();
        }
        match closed.peek().copied() {
            Some((closure_start, closure_end)) if closure_start < end => {
                if closure_end < end {
                    rest = Some((closure_end.max(start), end));
                }
                if closure_start > start {
                    return Some((start, closure_start));
                }
            }
            _ => return Some((start, end)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::Europe::Amsterdam;

    fn office(zone: Tz) -> Calendar {
        let weekday = vec![Range::parse("08:30-17:30").unwrap()];
        let saturday = vec![Range::parse("10:00-14:00").unwrap()];
        Calendar::weekly(
            zone,
            [
                weekday.clone(),
                weekday.clone(),
                weekday.clone(),
                weekday.clone(),
                weekday,
                saturday,
                vec![],
            ],
            BTreeSet::new(),
        )
    }

    fn at(zone: Tz, s: &str) -> DateTime<Utc> {
        zone.from_local_datetime(&NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap())
            .earliest()
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn friday_afternoon_two_hour_target_lands_on_saturday_or_monday() {
        let cal = office(Amsterdam);
        // 2026-11-27 is a Friday: 30 min left Friday, 4 h on Saturday covers the rest.
        let deadline = cal
            .add_open_time(at(Amsterdam, "2026-11-27 17:00"), Duration::from_secs(7200))
            .unwrap();
        assert_eq!(deadline, at(Amsterdam, "2026-11-28 11:30"));
        // Without Saturday hours it lands on Monday.
        let mut no_saturday = office(Amsterdam);
        if let Calendar::Weekly(w) = &mut no_saturday {
            w.days[5].clear();
        }
        let deadline = no_saturday
            .add_open_time(at(Amsterdam, "2026-11-27 17:00"), Duration::from_secs(7200))
            .unwrap();
        assert_eq!(deadline, at(Amsterdam, "2026-11-30 10:00"));
    }

    #[test]
    fn next_open_skips_nights_weekends_and_holidays() {
        let mut cal = office(Amsterdam);
        assert_eq!(
            cal.next_open(at(Amsterdam, "2026-11-27 18:00")),
            Some(at(Amsterdam, "2026-11-28 10:00"))
        );
        assert_eq!(
            cal.next_open(at(Amsterdam, "2026-11-29 12:00")),
            Some(at(Amsterdam, "2026-11-30 08:30"))
        );
        let inside = at(Amsterdam, "2026-11-30 09:00");
        assert_eq!(cal.next_open(inside), Some(inside));
        if let Calendar::Weekly(w) = &mut cal {
            w.closed
                .insert(NaiveDate::from_ymd_opt(2026, 12, 25).unwrap());
        }
        assert_eq!(
            cal.next_open(at(Amsterdam, "2026-12-24 18:00")),
            Some(at(Amsterdam, "2026-12-26 10:00"))
        );
    }

    #[test]
    fn ranges_past_midnight_and_whole_days() {
        let night = vec![Range::parse("22:00-02:00").unwrap()];
        let cal = Calendar::weekly(
            Amsterdam,
            std::array::from_fn(|_| night.clone()),
            BTreeSet::new(),
        );
        assert!(cal.is_open(at(Amsterdam, "2026-11-24 01:00")));
        assert!(!cal.is_open(at(Amsterdam, "2026-11-24 03:00")));
        assert_eq!(
            cal.next_open(at(Amsterdam, "2026-11-24 03:00")),
            Some(at(Amsterdam, "2026-11-24 22:00"))
        );
        let whole = Range::parse("00:00-24:00").unwrap();
        assert!(whole.crosses_midnight());
        assert!(Range::parse("10:00-10:00").is_err());
        assert!(Range::parse("25:00-26:00").is_err());
    }

    #[test]
    fn spring_forward_gap_opens_after_the_gap() {
        // Europe/Amsterdam skips 02:00-03:00 on 2026-03-29.
        let early = vec![Range::parse("02:30-05:00").unwrap()];
        let cal = Calendar::weekly(
            Amsterdam,
            std::array::from_fn(|_| early.clone()),
            BTreeSet::new(),
        );
        let open = cal.next_open(at(Amsterdam, "2026-03-29 00:00")).unwrap();
        assert_eq!(open, at(Amsterdam, "2026-03-29 03:00"));
        // The day is an hour short: 02:30 does not exist, so 03:00-05:00 = 2 h of open time.
        let end = cal
            .add_open_time(open, Duration::from_secs(2 * 3600))
            .unwrap();
        assert_eq!(end, at(Amsterdam, "2026-03-29 05:00"));
    }

    #[test]
    fn recurring_closures_cut_and_openings_add_time() {
        let lunch = Recurring::parse("0 0 12 * * Mon-Fri", Duration::from_secs(1800)).unwrap();
        let first_sunday =
            Recurring::parse("0 10 1-7 * Sun", Duration::from_secs(4 * 3600)).unwrap();
        let cal = office(Amsterdam).with_recurring(vec![first_sunday], vec![lunch]);
        // Monday 2026-11-30: closed 12:00-12:30.
        assert!(cal.is_open(at(Amsterdam, "2026-11-30 11:59")));
        assert!(!cal.is_open(at(Amsterdam, "2026-11-30 12:10")));
        assert_eq!(
            cal.next_open(at(Amsterdam, "2026-11-30 12:10")),
            Some(at(Amsterdam, "2026-11-30 12:30"))
        );
        // A 1-hour target from 11:45 skips the lunch half hour.
        let end = cal
            .add_open_time(at(Amsterdam, "2026-11-30 11:45"), Duration::from_secs(3600))
            .unwrap();
        assert_eq!(end, at(Amsterdam, "2026-11-30 13:15"));
        // Sunday 2026-12-06 is the first Sunday of December: open 10:00-14:00.
        assert!(cal.is_open(at(Amsterdam, "2026-12-06 13:00")));
        assert!(!cal.is_open(at(Amsterdam, "2026-12-13 13:00")));
        assert_eq!(
            cal.next_open(at(Amsterdam, "2026-12-05 15:00")),
            Some(at(Amsterdam, "2026-12-06 10:00"))
        );
    }

    #[test]
    fn cron_expressions_are_checked() {
        assert!(Recurring::parse("0 0 12 * * Mon-Fri", Duration::from_secs(60)).is_ok());
        assert!(
            Recurring::parse("0 12 * * Mon-Fri", Duration::from_secs(60)).is_ok(),
            "5 fields with names"
        );
        let err = Recurring::parse("0 12 * * 1-5", Duration::from_secs(60)).unwrap_err();
        assert!(err.contains("must name its weekdays"), "{err}");
        assert!(Recurring::parse("not cron", Duration::from_secs(60)).is_err());
        assert!(Recurring::parse("0 0 12 * * *", Duration::ZERO).is_err());
    }

    #[test]
    fn a_calendar_that_never_opens_says_so() {
        let cal = Calendar::weekly(Amsterdam, Default::default(), BTreeSet::new());
        assert_eq!(cal.next_open(Utc::now()), None);
        assert_eq!(cal.add_open_time(Utc::now(), Duration::from_secs(60)), None);
    }
}
