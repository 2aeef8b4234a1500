//! Property tests of the parsers at the API's edge: cron expressions, schedules, resource names and e-mail
//! addresses. Whatever a client sends, parsing answers with a value or an error naming the field, never a
//! panic, and what it accepts keeps the promises the rest of the code relies on (a valid schedule always
//! computes its next fires, strictly increasing).

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;

use automa_core::{Email, ResourceName, Schedule, ScheduleKind, schedule::parse_cron};

fn config() -> ProptestConfig {
    ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() }
}

/// Strings shaped like cron fields, so that many parse and the rest fail in interesting places.
fn cron_expression() -> impl Strategy<Value = String> {
    let field = prop_oneof![
        Just("*".to_owned()),
        Just("?".to_owned()),
        Just("L".to_owned()),
        Just("W".to_owned()),
        Just("#".to_owned()),
        (0u32..70).prop_map(|n| n.to_string()),
        (0u32..70, 0u32..70).prop_map(|(a, b)| format!("{a}-{b}")),
        (0u32..70, 0u32..70).prop_map(|(a, b)| format!("*/{a},{b}")),
        (1u32..8, 1u32..6).prop_map(|(day, nth)| format!("{day}#{nth}")),
        (1u32..32).prop_map(|day| format!("{day}W")),
        prop::sample::select(vec!["MON-FRI", "JAN", "sun", "L-3", "5L", "LW", "-", ",", "/", "*/0", "99999999999"])
            .prop_map(str::to_owned),
        "[0-9*/,#LW?-]{0,6}",
    ];
    prop_oneof![
        4 => prop::collection::vec(field, 0..8).prop_map(|fields| fields.join(" ")),
        1 => prop::sample::select(vec!["@daily", "@hourly", "@weekly", "@reboot", "@yearly", "@ every", "@"]).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

fn timezone() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "UTC",
            "Europe/Berlin",
            "America/St_Johns",
            "Australia/Lord_Howe",
            "Pacific/Chatham",
            "Pacific/Kiritimati",
            "Etc/GMT+12",
            "",
            "utc",
            "Mars/Olympus",
            "../../etc/passwd",
        ])
        .prop_map(str::to_owned),
        any::<String>(),
    ]
}

/// Any instant chrono can represent, with the ordinary years far more likely.
fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    let near = (1_700_000_000i64..2_100_000_000).prop_map(|secs| Utc.timestamp_opt(secs, 0).unwrap());
    let any_instant = (DateTime::<Utc>::MIN_UTC.timestamp()..=DateTime::<Utc>::MAX_UTC.timestamp())
        .prop_map(|secs| Utc.timestamp_opt(secs, 0).unwrap());
    prop_oneof![4 => near, 1 => any_instant, 1 => Just(DateTime::<Utc>::MIN_UTC), 1 => Just(DateTime::<Utc>::MAX_UTC)]
}

fn seconds() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        Just(1),
        Just(-1),
        Just(366 * 24 * 3600),
        Just(366 * 24 * 3600 + 1),
        Just(i64::MAX),
        Just(i64::MIN),
        any::<i64>(),
        1i64..100_000,
    ]
}

fn schedule() -> impl Strategy<Value = Schedule> {
    (
        prop::sample::select(vec![ScheduleKind::Once, ScheduleKind::Cron, ScheduleKind::Interval]),
        prop::option::of(instant()),
        prop::option::of(cron_expression()),
        prop::option::of(seconds()),
        timezone(),
        (seconds(), seconds(), seconds(), any::<bool>()),
    )
        .prop_map(
            |(
                kind,
                at,
                cron,
                every_seconds,
                timezone,
                (misfire_grace_seconds, jitter_seconds, max_instances, coalesce),
            )| {
                Schedule {
                    kind,
                    at,
                    cron,
                    every_seconds,
                    timezone,
                    misfire_grace_seconds,
                    coalesce,
                    max_instances,
                    jitter_seconds,
                }
            },
        )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn cron_parsing_answers_every_string(expression in cron_expression()) {
        if let Err(invalid) = parse_cron(&expression) {
            prop_assert_eq!(invalid.field, "schedule.cron");
            prop_assert!(!invalid.message.is_empty());
        }
    }

    #[test]
    fn a_valid_schedule_always_computes_increasing_fires(schedule in schedule(), after in instant(), set_at in instant()) {
        let Ok(valid) = schedule.clone().validate() else {
            let invalid = schedule.validate().unwrap_err();
            prop_assert!(invalid.field.starts_with("schedule."), "{}", invalid.field);
            return Ok(());
        };
        let fires = valid.upcoming(after, set_at, 4);
        let mut previous = after;
        for fire in &fires {
            prop_assert!(*fire > previous, "{:?}: {} after {}", valid, fire, previous);
            previous = *fire;
        }
        if valid.kind == ScheduleKind::Once {
            prop_assert!(fires.len() <= 1);
        }
        if valid.kind == ScheduleKind::Interval && fires.len() == 2 {
            prop_assert_eq!(fires[1] - fires[0], Duration::seconds(valid.every_seconds.unwrap()));
        }
    }

    #[test]
    fn schedules_from_json_never_panic(json in any::<String>()) {
        if let Ok(schedule) = serde_json::from_str::<Schedule>(&json) {
            let _ = schedule.validate();
        }
    }

    #[test]
    fn resource_names_are_parsed_or_refused_with_the_field(raw in prop_oneof![any::<String>(), "[a-zA-Z0-9 ._-]{0,110}"]) {
        match ResourceName::parse("name", &raw) {
            Ok(name) => {
                let name = name.as_str();
                prop_assert!(!name.is_empty() && name.chars().count() <= ResourceName::MAX_LEN);
                prop_assert_eq!(name.trim(), name);
                prop_assert!(name.chars().all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ' ')));
            }
            Err(invalid) => prop_assert_eq!(invalid.field, "name"),
        }
    }

    #[test]
    fn email_addresses_are_parsed_or_refused_with_the_field(raw in prop_oneof![any::<String>(), "[a-zA-Z.@ ]{0,20}", ".{0,300}@.{0,30}"]) {
        match Email::parse("email", &raw) {
            Ok(email) => {
                let email = email.as_str();
                prop_assert!(email.len() <= 254 * 2, "lower-casing can grow a string, but only boundedly");
                prop_assert_eq!(email.matches('@').count(), 1);
                prop_assert!(!email.chars().any(char::is_whitespace));
            }
            Err(invalid) => prop_assert_eq!(invalid.field, "email"),
        }
    }
}
