//! A large run history on both backends: the benchmark seed leaves a database every API call accepts.
//! SQLite always; PostgreSQL when `AUTOMA_TEST_PG_URL` is set (required with `AUTOMA_REQUIRE_PG=1`).

use std::collections::{HashMap, HashSet};

use automa_core::{RunStatus, Trigger};
use automa_store::{Page, Run, RunFilter, Store};

#[macro_use]
mod support;

use support::*;

/// Every run of script `script_id`, newest first, read page by page.
async fn all_runs(store: &Store, script_id: i64) -> Vec<Run> {
    let filter = RunFilter { script_id: Some(script_id), ..RunFilter::default() };
    let mut runs = Vec::new();
    loop {
        let page = store.list_runs(&filter, Page::new(Some(Page::MAX_LIMIT), Some(runs.len() as i64))).await.unwrap();
        if page.items.is_empty() {
            return runs;
        }
        runs.extend(page.items);
    }
}

async fn a_seeded_history_is_valid_for_the_api(store: &Store) {
    let seeded = store.seed_history(20, 3000).await.unwrap();
    assert_eq!(seeded.task_ids.len(), 20);
    assert!(seeded.task_ids.is_sorted());
    store.get_script(seeded.script_id).await.unwrap();
    for task_id in &seeded.task_ids {
        assert_eq!(store.get_task(*task_id).await.unwrap().script_id, seeded.script_id);
    }
    let runs = all_runs(store, seeded.script_id).await;
    assert_eq!(runs.len(), 3000);
    assert!(runs.windows(2).all(|pair| pair[0].id > pair[1].id), "newest first, each once");

    let mut statuses: HashMap<RunStatus, usize> = HashMap::new();
    let mut triggers: HashMap<Trigger, usize> = HashMap::new();
    let mut agents = HashSet::new();
    let mut ad_hoc = 0;
    let now = chrono::Utc::now();
    for run in &runs {
        *statuses.entry(run.status).or_default() += 1;
        *triggers.entry(run.trigger).or_default() += 1;
        agents.insert(run.agent_id.expect("every seeded run ran on an agent"));
        match run.task_id {
            Some(task_id) => assert!(seeded.task_ids.contains(&task_id)),
            None => ad_hoc += 1,
        }
        let (started, finished) = (run.started_at.unwrap(), run.finished_at.unwrap());
        assert!(run.queued_at <= started && started <= finished && finished < now, "{run:?}");
        assert_eq!(run.scheduled_for.is_some(), run.trigger == Trigger::Schedule);
        assert_eq!(run.attempt, if run.trigger == Trigger::Retry { 2 } else { 1 });
        let expected_exit = match run.status {
            RunStatus::Succeeded => Some(0),
            RunStatus::Failed => Some(1),
            _ => None,
        };
        assert_eq!(run.exit_code, expected_exit, "{run:?}");
        assert_eq!(run.timed_out, run.status == RunStatus::TimedOut);
        assert_eq!(&store.get_run(run.id).await.unwrap().queued_at, &run.queued_at);
        let logs = store.run_logs(run.id, 0, 100).await.unwrap();
        assert_eq!(logs.iter().map(|chunk| chunk.data.len() as i64).sum::<i64>(), run.log_bytes);
    }
    for (status, count) in &statuses {
        let filter = RunFilter { script_id: Some(seeded.script_id), status: Some(*status), ..RunFilter::default() };
        assert_eq!(store.list_runs(&filter, Page::default()).await.unwrap().total, *count as i64);
    }
    let count = |status| statuses.get(&status).copied().unwrap_or_default();
    assert!(count(RunStatus::Succeeded) > 2400, "{statuses:?}");
    for status in [RunStatus::Failed, RunStatus::TimedOut, RunStatus::Cancelled] {
        assert!(count(status) > 30, "{statuses:?}");
    }
    assert_eq!(statuses.len(), 4, "only finished runs: {statuses:?}");
    for trigger in [Trigger::Schedule, Trigger::Manual, Trigger::Api, Trigger::Hook, Trigger::Retry] {
        assert!(triggers.get(&trigger).copied().unwrap_or_default() > 30, "{triggers:?}");
    }
    assert_eq!(agents.len(), 3);
    assert!((150..=400).contains(&ad_hoc), "about one run in eleven is ad hoc: {ad_hoc}");
    assert!(runs.iter().any(|run| run.log_bytes > 0));
    assert!(runs.first().unwrap().queued_at - runs.last().unwrap().queued_at > chrono::Duration::days(80));

    let again = store.seed_history(2, 10).await.unwrap();
    assert_ne!(again.script_id, seeded.script_id);
    assert_eq!(all_runs(store, again.script_id).await.len(), 10);
    let empty = store.seed_history(0, 0).await.unwrap();
    assert!(empty.task_ids.is_empty());
    assert!(all_runs(store, empty.script_id).await.is_empty());
}
both_backends!(seeded_history, a_seeded_history_is_valid_for_the_api);
