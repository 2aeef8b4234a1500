//! What the scheduler does with a task's due fires (DESIGN §5): which ticks become runs and which are skipped,
//! and why. Pure, so the misfire policy can be tested exhaustively; the store applies the plan in one
//! transaction.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::Schedule;

/// Due ticks recorded one by one; beyond this many, the rest of a long outage is summarised in one record
/// rather than writing a row per missed second.
pub const MAX_RECORDED_TICKS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum SkipReason {
    /// The fire was later than the task's grace.
    Misfire { late_seconds: i64, grace_seconds: i64 },
    /// Several missed fires became one run, at `into`.
    Coalesced { into: DateTime<Utc> },
    /// The task already had `max_instances` runs queued or running.
    MaxInstances { max_instances: i64 },
    /// A long outage's further missed fires, from `first` to `last`.
    Summarised { count: u64, first: DateTime<Utc>, last: DateTime<Utc> },
}

impl SkipReason {
    /// The sentence a user reads in the run's `error` field.
    pub fn describe(&self) -> String {
        match self {
            SkipReason::Misfire { late_seconds, grace_seconds } => {
                format!("skipped: fired {late_seconds} s late, beyond the misfire grace of {grace_seconds} s")
            }
            SkipReason::Coalesced { into } => format!("skipped: coalesced into the run for {}", into.to_rfc3339()),
            SkipReason::MaxInstances { max_instances } => {
                format!("skipped: the task already had {max_instances} run(s) queued or running (max_instances)")
            }
            SkipReason::Summarised { count, first, last } => format!(
                "skipped: {count} more missed fires between {} and {} (not recorded one by one)",
                first.to_rfc3339(),
                last.to_rfc3339()
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FireOutcome {
    Run,
    Skip(SkipReason),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFire {
    pub scheduled_for: DateTime<Utc>,
    pub outcome: FireOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirePlan {
    pub fires: Vec<PlannedFire>,
    /// The task's next fire after this plan, `None` when the schedule is exhausted.
    pub next_fire_at: Option<DateTime<Utc>>,
}

impl Schedule {
    /// Plans the fires due at `now`, starting from the task's `next_fire_at`, given how many of its runs are
    /// already queued or running.
    pub fn plan_fires(
        &self,
        next_fire_at: DateTime<Utc>,
        now: DateTime<Utc>,
        anchor_default: DateTime<Utc>,
        active_instances: i64,
    ) -> FirePlan {
        // The first ticks and the latest are planned one by one; the middle of a long outage is summarised.
        let mut due = Vec::new();
        let mut hidden: Option<(u64, DateTime<Utc>, DateTime<Utc>)> = None;
        let mut latest = None;
        let mut cursor = Some(next_fire_at);
        while let Some(tick) = cursor.filter(|tick| *tick <= now) {
            if let Some(earlier) = latest.replace(tick) {
                if due.len() < MAX_RECORDED_TICKS - 1 {
                    due.push(earlier);
                } else {
                    let (count, first, _) = hidden.unwrap_or((0, earlier, earlier));
                    hidden = Some((count + 1, first, earlier));
                }
            }
            cursor = self.next_fire_after(tick, anchor_default);
        }
        due.extend(latest);
        let grace = Duration::seconds(self.misfire_grace_seconds);
        let on_time: Vec<DateTime<Utc>> = due.iter().copied().filter(|tick| now - *tick <= grace).collect();
        let coalesce_into = (self.coalesce && on_time.len() > 1).then(|| on_time[on_time.len() - 1]);
        let mut started = 0;
        let mut fires: Vec<PlannedFire> = due
            .into_iter()
            .map(|tick| {
                let outcome = if now - tick > grace {
                    FireOutcome::Skip(SkipReason::Misfire {
                        late_seconds: (now - tick).num_seconds(),
                        grace_seconds: self.misfire_grace_seconds,
                    })
                } else if coalesce_into.is_some_and(|into| into != tick) {
                    FireOutcome::Skip(SkipReason::Coalesced { into: coalesce_into.unwrap_or(tick) })
                } else if active_instances + started >= self.max_instances {
                    FireOutcome::Skip(SkipReason::MaxInstances { max_instances: self.max_instances })
                } else {
                    started += 1;
                    FireOutcome::Run
                };
                PlannedFire { scheduled_for: tick, outcome }
            })
            .collect();
        if let Some((count, first, last)) = hidden {
            let summary = PlannedFire {
                scheduled_for: first,
                outcome: FireOutcome::Skip(SkipReason::Summarised { count, first, last }),
            };
            fires.insert(fires.len().saturating_sub(1), summary);
        }
        FirePlan { fires, next_fire_at: cursor }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ScheduleKind;
    use chrono::TimeZone;

    fn at(second: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + second, 0).unwrap()
    }

    fn every(seconds: i64, grace: i64, coalesce: bool, max_instances: i64) -> Schedule {
        Schedule {
            kind: ScheduleKind::Interval,
            every_seconds: Some(seconds),
            misfire_grace_seconds: grace,
            coalesce,
            max_instances,
            ..Schedule::once(at(0))
        }
    }

    fn outcomes(plan: &FirePlan) -> Vec<(i64, &FireOutcome)> {
        plan.fires.iter().map(|f| (f.scheduled_for.timestamp() - 1_800_000_000, &f.outcome)).collect()
    }

    #[test]
    fn an_on_time_fire_runs_and_advances() {
        let plan = every(10, 60, true, 1).plan_fires(at(10), at(10), at(0), 0);
        assert_eq!(outcomes(&plan), [(10, &FireOutcome::Run)]);
        assert_eq!(plan.next_fire_at, Some(at(20)));
    }

    #[test]
    fn nothing_due_plans_nothing() {
        let plan = every(10, 60, true, 1).plan_fires(at(10), at(9), at(0), 0);
        assert!(plan.fires.is_empty());
        assert_eq!(plan.next_fire_at, Some(at(10)));
    }

    #[test]
    fn late_fires_beyond_grace_are_skipped_and_say_why() {
        let plan = every(10, 5, false, 10).plan_fires(at(10), at(32), at(0), 0);
        let reasons: Vec<_> = plan.fires.iter().map(|f| f.outcome.clone()).collect();
        assert_eq!(
            reasons,
            [
                FireOutcome::Skip(SkipReason::Misfire { late_seconds: 22, grace_seconds: 5 }),
                FireOutcome::Skip(SkipReason::Misfire { late_seconds: 12, grace_seconds: 5 }),
                FireOutcome::Run,
            ]
        );
        let FireOutcome::Skip(reason) = &reasons[0] else { unreachable!() };
        assert!(reason.describe().contains("22 s late"));
        assert_eq!(plan.next_fire_at, Some(at(40)));
    }

    #[test]
    fn coalesce_makes_one_run_of_the_missed_fires() {
        let plan = every(10, 3600, true, 10).plan_fires(at(10), at(35), at(0), 0);
        assert_eq!(
            outcomes(&plan),
            [
                (10, &FireOutcome::Skip(SkipReason::Coalesced { into: at(30) })),
                (20, &FireOutcome::Skip(SkipReason::Coalesced { into: at(30) })),
                (30, &FireOutcome::Run),
            ]
        );
    }

    #[test]
    fn without_coalesce_every_fire_within_grace_runs() {
        let plan = every(10, 3600, false, 10).plan_fires(at(10), at(35), at(0), 0);
        assert!(plan.fires.iter().all(|f| f.outcome == FireOutcome::Run));
        assert_eq!(plan.fires.len(), 3);
    }

    #[test]
    fn max_instances_counts_active_runs() {
        let plan = every(10, 3600, false, 2).plan_fires(at(10), at(35), at(0), 1);
        let skipped = FireOutcome::Skip(SkipReason::MaxInstances { max_instances: 2 });
        assert_eq!(outcomes(&plan), [(10, &FireOutcome::Run), (20, &skipped), (30, &skipped)]);
    }

    #[test]
    fn a_long_outage_is_summarised_not_written_tick_by_tick() {
        let plan = every(1, 5, true, 1).plan_fires(at(1), at(100_000), at(0), 0);
        assert_eq!(plan.fires.len(), MAX_RECORDED_TICKS + 1);
        let summary = &plan.fires[MAX_RECORDED_TICKS - 1];
        let FireOutcome::Skip(SkipReason::Summarised { count, first, last }) = &summary.outcome else {
            panic!("{summary:?}")
        };
        let recorded = plan.fires.len() as u64 - 1;
        assert_eq!(count + recorded, 100_000, "every tick is accounted for");
        assert_eq!((*first, *last), (at(100), at(99_999)));
        assert_eq!(plan.fires.last().unwrap().scheduled_for, at(100_000), "the latest tick is planned itself");
        assert_eq!(plan.fires.last().unwrap().outcome, FireOutcome::Run);
        let mut ticks: Vec<_> = plan.fires.iter().map(|f| f.scheduled_for).collect();
        ticks.dedup();
        assert_eq!(ticks.len(), plan.fires.len(), "one record per tick key");
    }

    #[test]
    fn a_one_off_is_exhausted_after_its_fire() {
        let plan = Schedule::once(at(50)).plan_fires(at(50), at(51), at(0), 0);
        assert_eq!(outcomes(&plan), [(50, &FireOutcome::Run)]);
        assert_eq!(plan.next_fire_at, None);
    }
}
