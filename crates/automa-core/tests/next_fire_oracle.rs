//! Next-fire computation checked against an independent oracle: a brute-force walk over every minute (or
//! second) that reads cron fields with its own small parser and applies the daylight-saving rules users
//! expect, as Vixie cron defined them: a job at a fixed time (no `*` in its minute and hour fields) whose local
//! time is skipped by a spring-forward gap fires right after the gap, and one whose local time is repeated by a
//! fall-back fires once, the first time; a job with `*` in those fields follows elapsed time instead (an hourly
//! job runs every hour, both repeated hours included, and nothing is caught up after a gap).

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use proptest::prelude::*;

use automa_core::{Schedule, ScheduleKind};

const ZONES: &[&str] = &[
    "UTC",
    "Europe/Berlin",
    "Europe/London",
    "America/New_York",
    "America/St_Johns",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "Pacific/Chatham",
];

/// Spring-forward and fall-back days of the zones above, to aim instants at.
const TRANSITIONS: &[&str] = &[
    "2026-03-29T01:00:00Z", // Europe: spring forward
    "2026-10-25T01:00:00Z", // Europe: fall back
    "2026-03-08T07:00:00Z", // New York: spring forward
    "2026-11-01T06:00:00Z", // New York: fall back
    "2026-04-04T16:00:00Z", // Sydney: fall back
    "2026-10-03T16:00:00Z", // Sydney: spring forward
    "2026-04-04T15:00:00Z", // Lord Howe: half-hour fall back
    "2026-10-03T15:30:00Z", // Lord Howe: half-hour spring forward
    "2026-03-08T05:30:00Z", // St John's: spring forward
];

/// One cron field as a set of allowed values, parsed independently of the code under test.
fn field_values(field: &str, min: u32, max: u32) -> Vec<u32> {
    let mut values = Vec::new();
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (range, step.parse::<u32>().unwrap()),
            None => (part, 1),
        };
        let (low, high) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (a.parse().unwrap(), b.parse().unwrap())
        } else {
            let single: u32 = range.parse().unwrap();
            (single, if part.contains('/') { max } else { single })
        };
        values.extend((low..=high).step_by(step as usize));
    }
    values
}

struct Oracle {
    seconds: Vec<u32>,
    minutes: Vec<u32>,
    hours: Vec<u32>,
    days: Vec<u32>,
    months: Vec<u32>,
    weekdays: Vec<u32>,
    day_restricted: bool,
    weekday_restricted: bool,
    fixed_time: bool,
    step: Duration,
}

impl Oracle {
    fn new(expression: &str) -> Oracle {
        let fields: Vec<&str> = expression.split_whitespace().collect();
        let (seconds, rest) =
            if fields.len() == 6 { (field_values(fields[0], 0, 59), &fields[1..]) } else { (vec![0], &fields[..]) };
        Oracle {
            step: if fields.len() == 6 { Duration::seconds(1) } else { Duration::minutes(1) },
            seconds,
            minutes: field_values(rest[0], 0, 59),
            hours: field_values(rest[1], 0, 23),
            days: field_values(rest[2], 1, 31),
            months: field_values(rest[3], 1, 12),
            weekdays: field_values(rest[4], 0, 6),
            fixed_time: !rest[0].starts_with('*') && !rest[1].starts_with('*'),
            day_restricted: rest[2] != "*",
            weekday_restricted: rest[4] != "*",
        }
    }

    fn matches(&self, local: NaiveDateTime) -> bool {
        let day = self.days.contains(&local.day());
        let weekday = self.weekdays.contains(&local.weekday().num_days_from_sunday());
        // POSIX cron: when both day fields are restricted, either may match.
        let date = match (self.day_restricted, self.weekday_restricted) {
            (true, true) => day || weekday,
            _ => day && weekday,
        };
        date && self.months.contains(&local.month())
            && self.hours.contains(&local.hour())
            && self.minutes.contains(&local.minute())
            && self.seconds.contains(&local.second())
    }

    /// The first fire strictly after `after`, or `None` within `horizon`.
    fn next_after(&self, tz: Tz, after: DateTime<Utc>, horizon: Duration) -> Option<DateTime<Utc>> {
        let step_seconds = self.step.num_seconds();
        let start = after.timestamp() - after.timestamp().rem_euclid(step_seconds) + step_seconds;
        let mut previous_local = Utc.timestamp_opt(start - step_seconds, 0).unwrap().with_timezone(&tz).naive_local();
        let mut t = Utc.timestamp_opt(start, 0).unwrap();
        while t - after <= horizon {
            let local = t.with_timezone(&tz).naive_local();
            let is_second_occurrence = self.fixed_time
                && matches!(tz.from_local_datetime(&local), LocalResult::Ambiguous(first, _) if first.with_timezone(&Utc) != t);
            if self.matches(local) && !is_second_occurrence {
                return Some(t);
            }
            // A spring-forward gap: wall times strictly between the previous step and this one never happened;
            // if one of them matches, it fires now, right after the gap.
            let mut skipped = previous_local + self.step;
            while self.fixed_time && skipped < local && local - previous_local > self.step {
                if self.matches(skipped) {
                    return Some(t);
                }
                skipped += self.step;
            }
            previous_local = local;
            t += self.step;
        }
        None
    }
}

fn field(min: u32, max: u32, allow_step: bool) -> BoxedStrategy<String> {
    let span = max - min;
    let plain = prop_oneof![
        Just("*".to_owned()),
        (min..=max).prop_map(|v| v.to_string()),
        (min..=max, 0..=span).prop_map(move |(a, len)| format!("{a}-{}", (a + len).min(max))),
        (min..=max, min..=max).prop_map(|(a, b)| if a == b {
            a.to_string()
        } else {
            format!("{},{}", a.min(b), a.max(b))
        }),
    ];
    if allow_step {
        // Steps only on fields where "*/n" cannot change POSIX's day-of-month/day-of-week rule.
        prop_oneof![4 => plain, 1 => (2..=span.max(2)).prop_map(|n| format!("*/{n}"))].boxed()
    } else {
        plain.boxed()
    }
}

fn expression() -> impl Strategy<Value = String> {
    (
        prop::option::weighted(0.25, field(0, 59, true)),
        field(0, 59, true),
        field(0, 23, true),
        prop_oneof![3 => Just("*".to_owned()), 1 => field(1, 28, false)],
        prop_oneof![4 => Just("*".to_owned()), 1 => field(1, 12, false)],
        prop_oneof![3 => Just("*".to_owned()), 1 => field(0, 6, false)],
    )
        .prop_map(|(seconds, minute, hour, day, month, weekday)| match seconds {
            Some(seconds) => format!("{seconds} {minute} {hour} {day} {month} {weekday}"),
            None => format!("{minute} {hour} {day} {month} {weekday}"),
        })
}

fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    prop_oneof![
        (1_735_689_600i64..1_861_920_000).prop_map(|s| Utc.timestamp_opt(s, 0).unwrap()),
        (prop::sample::select(TRANSITIONS), -6 * 3600i64..6 * 3600).prop_map(|(at, offset)| {
            DateTime::parse_from_rfc3339(at).unwrap().with_timezone(&Utc) + Duration::seconds(offset)
        }),
    ]
}

fn cron_schedule(expression: &str, zone: &str) -> Schedule {
    Schedule {
        kind: ScheduleKind::Cron,
        cron: Some(expression.to_owned()),
        timezone: zone.to_owned(),
        ..Schedule::once(Utc::now())
    }
    .validate()
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn next_fire_matches_the_oracle(expression in expression(), zone in prop::sample::select(ZONES), after in instant()) {
        let oracle = Oracle::new(&expression);
        let tz: Tz = zone.parse().unwrap();
        let horizon = if oracle.step == Duration::seconds(1) { Duration::days(2) } else { Duration::days(40) };
        let expected = oracle.next_after(tz, after, horizon);
        let actual = cron_schedule(&expression, zone).next_fire_after(after, after);
        match expected {
            Some(expected) => prop_assert_eq!(actual, Some(expected), "{} in {} after {}", expression, zone, after),
            None => prop_assert!(actual.is_none_or(|a| a - after > horizon), "{} in {} after {}: {:?}", expression, zone, after, actual),
        }
    }
}

#[test]
fn the_oracle_applies_both_transitions() {
    let berlin: Tz = "Europe/Berlin".parse().unwrap();
    let oracle = Oracle::new("30 2 * * *");
    let spring = oracle.next_after(berlin, Utc.with_ymd_and_hms(2026, 3, 28, 23, 0, 0).unwrap(), Duration::days(2));
    assert_eq!(spring, Some(Utc.with_ymd_and_hms(2026, 3, 29, 1, 0, 0).unwrap()));
    let fall = oracle.next_after(berlin, Utc.with_ymd_and_hms(2026, 10, 25, 0, 31, 0).unwrap(), Duration::days(2));
    assert_eq!(
        fall,
        Some(Utc.with_ymd_and_hms(2026, 10, 26, 1, 30, 0).unwrap()),
        "the repeated 02:30 does not fire again"
    );
}

/// Deterministic coverage of both transitions of every zone: each expression, from every ten minutes within
/// six hours of each transition.
#[test]
fn every_transition_agrees_with_the_oracle() {
    let expressions = [
        "30 2 * * *",
        "0 2 * * *",
        "15 1 * * *",
        "0 3 * * *",
        "0 * * * *",
        "*/20 * * * *",
        "45 2 * * 0",
        "0,30 1-3 * * *",
    ];
    let mut compared = 0;
    for zone in ZONES {
        let tz: Tz = zone.parse().unwrap();
        for transition in TRANSITIONS {
            let center = DateTime::parse_from_rfc3339(transition).unwrap().with_timezone(&Utc);
            for expression in expressions {
                let oracle = Oracle::new(expression);
                let schedule = cron_schedule(expression, zone);
                for step in -36..=36 {
                    let after = center + Duration::minutes(10 * step);
                    let expected = oracle.next_after(tz, after, Duration::days(9));
                    assert_eq!(
                        schedule.next_fire_after(after, after),
                        expected,
                        "{expression} in {zone} after {after}"
                    );
                    compared += 1;
                }
            }
        }
    }
    assert_eq!(compared, ZONES.len() * TRANSITIONS.len() * 8 * 73);
}
