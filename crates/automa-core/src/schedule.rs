//! Schedules and their next fire times (DESIGN §5). A schedule is parsed once at the API edge; afterwards its
//! cron expression and time zone are known to be valid, so computing the next fire cannot fail for bad input.

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::{Cron, parser::CronParser, parser::Seconds};
use serde::{Deserialize, Serialize};

use crate::names::InvalidField;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Once, at `at`.
    Once,
    /// At every match of `cron` in `timezone`.
    Cron,
    /// Every `every_seconds` from the anchor `at` (or from when the schedule was set).
    Interval,
}

/// When a task runs by itself. Fields that do not apply to the kind are ignored on input and null on output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Schedule {
    pub kind: ScheduleKind,
    /// The one-off time (`once`) or the anchor of an interval.
    #[serde(default)]
    pub at: Option<DateTime<Utc>>,
    /// Five fields (minute precision) or six (with seconds first).
    #[serde(default)]
    pub cron: Option<String>,
    #[serde(default)]
    pub every_seconds: Option<i64>,
    /// IANA time zone the cron expression is read in.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// A fire later than this is skipped and recorded rather than run.
    #[serde(default = "default_misfire_grace")]
    pub misfire_grace_seconds: i64,
    /// Whether several missed fires become one run.
    #[serde(default = "default_true")]
    pub coalesce: bool,
    /// At most this many runs of the task queued or running at once.
    #[serde(default = "default_max_instances")]
    pub max_instances: i64,
    /// Each fire is delayed by a random amount up to this.
    #[serde(default)]
    pub jitter_seconds: i64,
}

fn default_timezone() -> String {
    "UTC".to_owned()
}
fn default_misfire_grace() -> i64 {
    60
}
fn default_true() -> bool {
    true
}
fn default_max_instances() -> i64 {
    1
}

/// The longest interval and jitter accepted: one year, to keep date arithmetic far from overflow.
const MAX_SECONDS: i64 = 366 * 24 * 3600;

impl Schedule {
    /// A one-off schedule, the shape the seed's `scheduled_time` field stands for.
    pub fn once(at: DateTime<Utc>) -> Self {
        Self {
            kind: ScheduleKind::Once,
            at: Some(at),
            cron: None,
            every_seconds: None,
            timezone: default_timezone(),
            misfire_grace_seconds: default_misfire_grace(),
            coalesce: true,
            max_instances: default_max_instances(),
            jitter_seconds: 0,
        }
    }

    /// Checks every field against the kind and normalises what does not apply, naming the first bad field.
    pub fn validate(mut self) -> Result<Self, InvalidField> {
        self.timezone.parse::<Tz>().map_err(|_| {
            InvalidField::new("schedule.timezone", format!("'{}' is not an IANA time zone", self.timezone))
        })?;
        match self.kind {
            ScheduleKind::Once => {
                if self.at.is_none() {
                    return Err(InvalidField::new("schedule.at", "is required for a one-off schedule"));
                }
                self.cron = None;
                self.every_seconds = None;
            }
            ScheduleKind::Cron => {
                let expression = self
                    .cron
                    .as_deref()
                    .ok_or_else(|| InvalidField::new("schedule.cron", "is required for a cron schedule"))?;
                parse_cron(expression)?;
                self.every_seconds = None;
                self.at = None;
            }
            ScheduleKind::Interval => {
                let every = self.every_seconds.ok_or_else(|| {
                    InvalidField::new("schedule.every_seconds", "is required for an interval schedule")
                })?;
                if !(1..=MAX_SECONDS).contains(&every) {
                    return Err(InvalidField::new(
                        "schedule.every_seconds",
                        format!("must be between 1 and {MAX_SECONDS}"),
                    ));
                }
                self.cron = None;
            }
        }
        if !(0..=MAX_SECONDS).contains(&self.misfire_grace_seconds) {
            return Err(InvalidField::new(
                "schedule.misfire_grace_seconds",
                format!("must be between 0 and {MAX_SECONDS}"),
            ));
        }
        if !(0..=MAX_SECONDS).contains(&self.jitter_seconds) {
            return Err(InvalidField::new("schedule.jitter_seconds", format!("must be between 0 and {MAX_SECONDS}")));
        }
        if !(1..=10_000).contains(&self.max_instances) {
            return Err(InvalidField::new("schedule.max_instances", "must be between 1 and 10000"));
        }
        Ok(self)
    }

    /// The first fire strictly after `after`, or `None` when the schedule is exhausted. An interval without an
    /// anchor counts from `anchor_default` (when the schedule was set).
    pub fn next_fire_after(&self, after: DateTime<Utc>, anchor_default: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self.kind {
            ScheduleKind::Once => self.at.filter(|at| *at > after),
            ScheduleKind::Interval => {
                let every = self.every_seconds?.max(1);
                let anchor = self.at.unwrap_or(anchor_default);
                if anchor > after {
                    return Some(anchor);
                }
                let elapsed_ms = (after - anchor).num_milliseconds();
                let periods = elapsed_ms / (every * 1000) + 1;
                anchor.checked_add_signed(Duration::seconds(every.checked_mul(periods)?))
            }
            ScheduleKind::Cron => {
                let expression = self.cron.as_deref()?;
                let cron = parse_cron(expression).ok()?;
                let tz: Tz = self.timezone.parse().ok()?;
                if is_fixed_time(expression) {
                    next_fixed_time_fire(&cron, tz, after)
                } else {
                    cron.find_next_occurrence(&after.with_timezone(&tz), false)
                        .ok()
                        .map(|next| next.with_timezone(&Utc))
                }
            }
        }
    }

    /// The next `count` fires after `after`, for previews and `GET /schedule/`.
    pub fn upcoming(&self, after: DateTime<Utc>, anchor_default: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        let mut fires = Vec::with_capacity(count);
        let mut cursor = after;
        while fires.len() < count {
            match self.next_fire_after(cursor, anchor_default) {
                Some(next) => {
                    fires.push(next);
                    cursor = next;
                }
                None => break,
            }
        }
        fires
    }
}

/// Whether a cron expression names fixed wall-clock times rather than a rhythm: Vixie cron's rule, no `*` in
/// its minute and hour fields. Daylight-saving changes treat the two differently, as users of cron expect: a
/// fixed time skipped by a spring-forward gap fires right after the gap and one repeated by a fall-back fires
/// once, while a rhythm (`0 * * * *`, `*/15 * * * *`) follows elapsed time through both.
fn is_fixed_time(expression: &str) -> bool {
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let (minute, hour) = match fields.len() {
        5 => (fields[0], fields[1]),
        6 => (fields[1], fields[2]),
        _ => return false,
    };
    !minute.starts_with('*') && !hour.starts_with('*')
}

/// The next fire of a fixed-time expression: matched on local wall-clock time, then placed on the time line.
/// A wall time that happens twice fires at its first occurrence only; one that does not happen fires at the
/// first instant after the gap.
fn next_fixed_time_fire(cron: &Cron, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let mut cursor = after.with_timezone(&tz).naive_local();
    // Each pass either returns or moves past one repeated wall time; a handful bounds any real zone.
    for _ in 0..8 {
        let local = cron.find_next_occurrence(&cursor, false).ok()?;
        match tz.from_local_datetime(&local) {
            LocalResult::Single(at) => return Some(at.with_timezone(&Utc)).filter(|at| *at > after),
            LocalResult::Ambiguous(first, _) if first.with_timezone(&Utc) > after => {
                return Some(first.with_timezone(&Utc));
            }
            LocalResult::Ambiguous(..) => cursor = last_second_of_fold(tz, local)?,
            LocalResult::None => return end_of_gap(tz, local).filter(|at| *at > after),
        }
    }
    None
}

/// The last wall-clock second of the fall-back fold that repeats `local`. Searching on from there skips every
/// repeated wall time at once, where stepping through them one match at a time would need as many passes as
/// the expression has matches in the fold (`0-29 2 * * *` has 30).
fn last_second_of_fold(tz: Tz, local: NaiveDateTime) -> Option<NaiveDateTime> {
    let minute = local.with_second(0)?.with_nanosecond(0)?;
    (1..=24 * 60).find_map(|minutes| {
        let next = minute + Duration::minutes(minutes);
        match tz.from_local_datetime(&next) {
            LocalResult::Ambiguous(..) => None,
            LocalResult::Single(_) | LocalResult::None => Some(next - Duration::seconds(1)),
        }
    })
}

/// The first instant after the daylight-saving gap that swallowed `local`: the first wall-clock minute after
/// it that exists (gaps start and end on whole minutes in every zone).
fn end_of_gap(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    let minute = local.with_second(0)?.with_nanosecond(0)?;
    (1..=24 * 60).find_map(|minutes| match tz.from_local_datetime(&(minute + Duration::minutes(minutes))) {
        LocalResult::Single(at) | LocalResult::Ambiguous(at, _) => Some(at.with_timezone(&Utc)),
        LocalResult::None => None,
    })
}

/// Parses a 5-field (minutes) or 6-field (seconds first) cron expression.
pub fn parse_cron(expression: &str) -> Result<Cron, InvalidField> {
    let fields = expression.split_whitespace().count();
    if !expression.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
        return Err(InvalidField::new(
            "schedule.cron",
            format!("has {fields} fields: expected 5 (minute hour day month weekday) or 6 (with seconds first)"),
        ));
    }
    CronParser::builder().seconds(Seconds::Optional).build().parse(expression).map_err(|error| {
        InvalidField::new("schedule.cron", format!("'{expression}' is not a valid cron expression: {error}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn cron(expression: &str, timezone: &str) -> Schedule {
        Schedule {
            kind: ScheduleKind::Cron,
            cron: Some(expression.to_owned()),
            timezone: timezone.to_owned(),
            ..Schedule::once(Utc::now())
        }
        .validate()
        .unwrap()
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn validation_names_the_field() {
        let bad_cron = Schedule { cron: Some("61 * * * *".into()), ..cron("* * * * *", "UTC") };
        assert_eq!(bad_cron.validate().unwrap_err().field, "schedule.cron");
        let bad_zone = Schedule { timezone: "Mars/Base".into(), ..cron("* * * * *", "UTC") };
        assert_eq!(bad_zone.validate().unwrap_err().field, "schedule.timezone");
        let bad_interval =
            Schedule { kind: ScheduleKind::Interval, every_seconds: Some(0), ..Schedule::once(Utc::now()) };
        assert_eq!(bad_interval.validate().unwrap_err().field, "schedule.every_seconds");
        let four_fields = Schedule { cron: Some("* * * *".into()), ..cron("* * * * *", "UTC") };
        assert!(four_fields.validate().unwrap_err().message.contains("4 fields"));
    }

    #[test]
    fn cron_reads_local_time() {
        let schedule = cron("0 9 * * *", "Europe/Paris");
        let next = schedule.next_fire_after(utc(2026, 1, 15, 12, 0, 0), Utc::now()).unwrap();
        assert_eq!(next, utc(2026, 1, 16, 8, 0, 0));
    }

    #[test]
    fn spring_forward_gap_fires_after_the_gap_and_fall_back_fires_once() {
        // Europe/Berlin skips 02:00-03:00 on 2026-03-29 and repeats 02:00-03:00 on 2026-10-25.
        let schedule = cron("30 2 * * *", "Europe/Berlin");
        let spring = schedule.next_fire_after(utc(2026, 3, 28, 23, 0, 0), Utc::now()).unwrap();
        assert_eq!(spring, utc(2026, 3, 29, 1, 0, 0), "03:00 CEST, right after the gap");
        let fall = schedule.upcoming(utc(2026, 10, 24, 23, 0, 0), Utc::now(), 2);
        assert_eq!(fall[0], utc(2026, 10, 25, 0, 30, 0), "02:30 CEST, the first of the two");
        assert_eq!(fall[1], utc(2026, 10, 26, 1, 30, 0), "the next day, not 02:30 CET");
    }

    #[test]
    fn a_fold_with_many_matches_is_skipped_whole() {
        // Australia/Sydney repeats 02:00-03:00 on 2026-04-05: 15:00-16:00 UTC in daylight time, 16:00-17:00 in
        // standard time. Thirty matches in the repeat once exhausted a bounded step-by-step search.
        let schedule = cron("0-29 0,2 * * *", "Australia/Sydney");
        let in_the_repeat = schedule.next_fire_after(utc(2026, 4, 4, 16, 0, 0), Utc::now());
        assert_eq!(in_the_repeat, Some(utc(2026, 4, 5, 14, 0, 0)), "00:00 on the next day");
        let in_the_first_pass = schedule.next_fire_after(utc(2026, 4, 4, 15, 10, 0), Utc::now());
        assert_eq!(in_the_first_pass, Some(utc(2026, 4, 4, 15, 11, 0)), "02:11 daylight time");
        let seconds = cron("*/20 0-29 2 * * *", "Australia/Sydney");
        let last_of_first_pass = seconds.next_fire_after(utc(2026, 4, 4, 15, 29, 40), Utc::now());
        assert_eq!(last_of_first_pass, Some(utc(2026, 4, 5, 16, 0, 0)), "02:00:00 standard time on the next day");
    }

    #[test]
    fn six_fields_have_seconds() {
        let schedule = cron("*/15 * * * * *", "UTC");
        assert_eq!(schedule.next_fire_after(utc(2026, 1, 1, 0, 0, 1), Utc::now()).unwrap(), utc(2026, 1, 1, 0, 0, 15));
    }

    #[test]
    fn interval_counts_from_its_anchor() {
        let anchor = utc(2026, 1, 1, 0, 0, 0);
        let schedule = Schedule { kind: ScheduleKind::Interval, every_seconds: Some(10), ..Schedule::once(anchor) };
        assert_eq!(schedule.next_fire_after(utc(2026, 1, 1, 0, 0, 25), anchor).unwrap(), utc(2026, 1, 1, 0, 0, 30));
        assert_eq!(schedule.next_fire_after(utc(2026, 1, 1, 0, 0, 30), anchor).unwrap(), utc(2026, 1, 1, 0, 0, 40));
        assert_eq!(schedule.next_fire_after(utc(2025, 1, 1, 0, 0, 0), anchor).unwrap(), anchor);
    }

    #[test]
    fn once_fires_once() {
        let at = utc(2026, 6, 1, 12, 0, 0);
        let schedule = Schedule::once(at);
        assert_eq!(schedule.next_fire_after(utc(2026, 1, 1, 0, 0, 0), at), Some(at));
        assert_eq!(schedule.next_fire_after(at, at), None);
    }
}
