//! A large run history on both backends: the benchmark seed leaves a database every API call accepts.
//! SQLite always; PostgreSQL when `AUTOMA_TEST_PG_URL` is set (required with `AUTOMA_REQUIRE_PG=1`).

use std::collections::{HashMap, HashSet};

use automa_core::{RunStatus, Trigger};
use automa_store::{Run, RunFilter, RunPage, Store, StoreError};
use chrono::{Duration, Utc};

#[macro_use]
mod support;

use support::*;

/// Every run of script `script_id`, newest first, read page by page.
async fn all_runs(store: &Store, script_id: i64) -> Vec<Run> {
    let filter = RunFilter { script_id: Some(script_id), ..RunFilter::default() };
    let mut runs = Vec::new();
    let mut page = RunPage::new(Some(500));
    loop {
        let listed = store.list_runs(&filter, page).await.unwrap();
        runs.extend(listed.items);
        match listed.next_before {
            Some(before) => page.before = Some(before),
            None => return runs,
        }
    }
}

/// The runs `filter` matches, read by following the cursor `limit` at a time, and the pages' totals.
async fn by_cursor(store: &Store, filter: &RunFilter, limit: i64) -> (Vec<i64>, Vec<(i64, bool)>) {
    let mut ids = Vec::new();
    let mut totals = Vec::new();
    let mut page = RunPage::new(Some(limit));
    loop {
        let listed = store.list_runs(filter, page).await.unwrap();
        assert!(listed.items.len() as i64 <= limit);
        ids.extend(listed.items.iter().map(|run| run.id));
        totals.push((listed.total, listed.total_exact));
        match listed.next_before {
            Some(before) => {
                assert_eq!(listed.items.len() as i64, limit, "only the last page is short");
                page.before = Some(before);
            }
            None => return (ids, totals),
        }
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
        assert_eq!(store.list_runs(&filter, RunPage::new(None)).await.unwrap().total, *count as i64);
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

/// A seeded agent's token hash is not derived from what the API shows of it (its name and creation time):
/// nobody can compute a token that authenticates as it.
async fn seeded_agents_have_token_hashes_nobody_can_derive(store: &Store) {
    use sha2::Digest;
    let seeded = store.seed_history(1, 30).await.unwrap();
    let agent_ids: HashSet<i64> =
        all_runs(store, seeded.script_id).await.iter().filter_map(|run| run.agent_id).collect();
    assert_eq!(agent_ids.len(), 3);
    for id in agent_ids {
        let agent = store.get_agent(id).await.unwrap();
        let derived = format!("{} {}", agent.name, agent.created_at.timestamp_nanos_opt().unwrap());
        let derived = hex::encode(sha2::Sha256::digest(derived.as_bytes()));
        assert!(store.agent_by_token_hash(&derived).await.unwrap().is_none(), "{} has a derivable hash", agent.name);
    }
}
both_backends!(seeded_agent_tokens, seeded_agents_have_token_hashes_nobody_can_derive);

async fn paging_by_cursor_visits_every_run_once(store: &Store) {
    let seeded = store.seed_history(7, 1200).await.unwrap();
    let runs = all_runs(store, seeded.script_id).await;
    let task = seeded.task_ids[3];
    let agent = runs[0].agent_id;
    let middle = runs[600].queued_at;
    let filters = [
        RunFilter::default(),
        RunFilter { status: Some(RunStatus::Failed), ..RunFilter::default() },
        RunFilter { task_id: Some(task), ..RunFilter::default() },
        RunFilter { task_id: Some(task), status: Some(RunStatus::Succeeded), ..RunFilter::default() },
        RunFilter { task_id: Some(task), trigger: Some(Trigger::Schedule), ..RunFilter::default() },
        RunFilter { agent_id: agent, ..RunFilter::default() },
        RunFilter { agent_id: agent, status: Some(RunStatus::Cancelled), ..RunFilter::default() },
        RunFilter { trigger: Some(Trigger::Retry), ..RunFilter::default() },
        RunFilter { status: Some(RunStatus::Succeeded), trigger: Some(Trigger::Api), ..RunFilter::default() },
        RunFilter { since: Some(middle), ..RunFilter::default() },
        RunFilter { until: Some(middle), ..RunFilter::default() },
        RunFilter { since: Some(middle - Duration::days(10)), until: Some(middle), ..RunFilter::default() },
        RunFilter { status: Some(RunStatus::Failed), until: Some(middle), ..RunFilter::default() },
        RunFilter { status: Some(RunStatus::Queued), ..RunFilter::default() },
    ];
    for filter in filters {
        let expected: Vec<i64> = runs
            .iter()
            .filter(|run| filter.task_id.is_none_or(|task| run.task_id == Some(task)))
            .filter(|run| filter.agent_id.is_none_or(|agent| run.agent_id == Some(agent)))
            .filter(|run| filter.status.is_none_or(|status| run.status == status))
            .filter(|run| filter.trigger.is_none_or(|trigger| run.trigger == trigger))
            .filter(|run| filter.since.is_none_or(|since| run.queued_at >= since))
            .filter(|run| filter.until.is_none_or(|until| run.queued_at < until))
            .map(|run| run.id)
            .collect();
        let (ids, totals) = by_cursor(store, &filter, 37).await;
        assert_eq!(ids, expected, "{filter:?}");
        assert!(totals.iter().all(|total| *total == (expected.len() as i64, true)), "{filter:?}: {totals:?}");
    }
}
both_backends!(paging_by_cursor, paging_by_cursor_visits_every_run_once);

async fn totals_are_counted_up_to_a_cap_unless_asked(store: &Store) {
    let runs = RunPage::TOTAL_CAP + 40;
    let seeded = store.seed_history(3, runs as u64).await.unwrap();
    let everything = RunFilter::default();
    let first = store.list_runs(&everything, RunPage::new(None)).await.unwrap();
    assert_eq!((first.total, first.total_exact), (RunPage::TOTAL_CAP, false), "more than the cap");
    let deep = RunPage { before: Some(first.items[0].id - 10_020), ..RunPage::new(None) };
    let near_the_end = store.list_runs(&everything, deep).await.unwrap();
    assert_eq!((near_the_end.total, near_the_end.total_exact), (RunPage::TOTAL_CAP, false), "of the whole list");
    assert_eq!(near_the_end.items.len(), 19);
    assert_eq!(near_the_end.next_before, None);
    let exact = store.list_runs(&everything, RunPage { exact_total: true, ..RunPage::new(None) }).await.unwrap();
    assert_eq!((exact.total, exact.total_exact), (runs, true));
    let failed = RunFilter { status: Some(RunStatus::Failed), ..RunFilter::default() };
    let failures = all_runs(store, seeded.script_id).await.iter().filter(|run| run.status == RunStatus::Failed).count();
    let listed = store.list_runs(&failed, RunPage::new(Some(1))).await.unwrap();
    assert_eq!((listed.total, listed.total_exact), (failures as i64, true), "under the cap: counted");
    let deepest = RunPage { offset: RunPage::MAX_OFFSET, ..RunPage::new(None) };
    let tail = store.list_runs(&everything, deepest).await.unwrap();
    assert_eq!(
        (tail.items.len() as i64, tail.total, tail.total_exact, tail.next_before),
        (runs - RunPage::MAX_OFFSET, runs, true, None),
        "known from the page"
    );
    let beyond = RunPage { offset: failures as i64 + 5, ..RunPage::new(None) };
    let beyond = store.list_runs(&failed, beyond).await.unwrap();
    assert!(beyond.items.is_empty());
    assert_eq!((beyond.total, beyond.total_exact), (failures as i64, true), "counted: the page is past the end");
    // Deeper offset pages would read every run they skip: the cursor goes there.
    let too_deep = RunPage { offset: RunPage::MAX_OFFSET + 1, ..RunPage::new(None) };
    match store.list_runs(&everything, too_deep).await {
        Err(StoreError::Invalid(invalid)) => assert!(invalid.to_string().contains("cursor"), "{invalid}"),
        other => panic!("an offset past the cap was not refused: {other:?}"),
    }
}
both_backends!(capped_totals, totals_are_counted_up_to_a_cap_unless_asked);

/// The plan's steps that read `runs`, as one string.
async fn plan(store: &Store, filter: RunFilter) -> String {
    store.explain_runs_page(&filter, RunPage { before: Some(900), ..RunPage::new(None) }).await.unwrap().join("\n")
}

async fn every_filter_reads_its_page_through_an_index(store: &Store) {
    let seeded = store.seed_history(500, 5000).await.unwrap();
    if store.backend_name() == "postgres" {
        // PostgreSQL plans by statistics; the seed gathers them.
        let cases = [
            (
                RunFilter {
                    task_id: Some(seeded.task_ids[0]),
                    status: Some(RunStatus::Failed),
                    ..RunFilter::default()
                },
                &["runs_task_status"][..],
            ),
            (RunFilter { task_id: Some(seeded.task_ids[0]), ..RunFilter::default() }, &["runs_task_id_id"]),
            (RunFilter { status: Some(RunStatus::Queued), ..RunFilter::default() }, &["runs_status"]),
            // The partial index of run-after runs serves as well.
            (RunFilter { trigger: Some(Trigger::After), ..RunFilter::default() }, &["runs_trigger", "runs_after_once"]),
        ];
        for (filter, indexes) in cases {
            let plan = plan(store, filter.clone()).await;
            assert!(
                plan.split_whitespace().any(|word| indexes.contains(&word)),
                "{filter:?} reads {indexes:?}: {plan}"
            );
            assert!(!plan.contains("Seq Scan"), "{filter:?}: {plan}");
        }
        return;
    }
    let since = Utc::now() - Duration::days(3);
    let until = Utc::now() - Duration::days(2);
    let task = Some(seeded.task_ids[0]);
    let cases = [
        (RunFilter::default(), "SEARCH runs USING INTEGER PRIMARY KEY (rowid<?)"),
        (
            RunFilter { status: Some(RunStatus::Failed), ..RunFilter::default() },
            "INDEX runs_status (status=? AND rowid<?)",
        ),
        (RunFilter { task_id: task, ..RunFilter::default() }, "INDEX runs_task_id (task_id=? AND rowid<?)"),
        (
            RunFilter {
                task_id: task,
                status: Some(RunStatus::Failed),
                trigger: Some(Trigger::Hook),
                ..RunFilter::default()
            },
            "INDEX runs_task_status (task_id=? AND status=? AND rowid<?)",
        ),
        (
            RunFilter { task_id: task, agent_id: Some(1), since: Some(since), ..RunFilter::default() },
            "INDEX runs_task_id (task_id=? AND rowid<?)",
        ),
        (
            RunFilter { script_id: Some(seeded.script_id), status: Some(RunStatus::Failed), ..RunFilter::default() },
            "INDEX runs_script_id (script_id=? AND rowid<?)",
        ),
        (RunFilter { agent_id: Some(1), ..RunFilter::default() }, "INDEX runs_agent (agent_id=? AND rowid<?)"),
        (
            RunFilter {
                agent_id: Some(1),
                status: Some(RunStatus::Failed),
                trigger: Some(Trigger::Api),
                ..RunFilter::default()
            },
            "INDEX runs_agent_id (agent_id=? AND status=? AND rowid<?)",
        ),
        (
            RunFilter { trigger: Some(Trigger::Retry), status: Some(RunStatus::Failed), ..RunFilter::default() },
            "INDEX runs_status (status=? AND rowid<?)",
        ),
        (
            RunFilter { trigger: Some(Trigger::Retry), ..RunFilter::default() },
            "INDEX runs_trigger (trigger=? AND rowid<?)",
        ),
        (RunFilter { since: Some(since), ..RunFilter::default() }, "SEARCH runs USING INTEGER PRIMARY KEY (rowid<?)"),
        (
            RunFilter { since: Some(since), until: Some(until), ..RunFilter::default() },
            "COVERING INDEX runs_queued_at (queued_at>? AND queued_at<?)",
        ),
    ];
    for (filter, step) in cases {
        let plan = plan(store, filter.clone()).await;
        assert!(plan.contains(step), "{filter:?}: {plan}");
        // The page's rows are then read by id; only a time window's ids are sorted.
        assert!(plan.contains("SEARCH runs USING INTEGER PRIMARY KEY (rowid=?)"), "{filter:?}: {plan}");
        assert_eq!(plan.contains("TEMP B-TREE"), filter.until.is_some(), "{filter:?}: {plan}");
        assert!(!plan.contains("SCAN runs"), "{filter:?}: {plan}");
    }
}
both_backends!(index_plans, every_filter_reads_its_page_through_an_index);

/// The oid of each of migration 0014's indexes that exists, by name.
async fn history_indexes(connection: &mut sqlx::PgConnection) -> HashMap<String, i64> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT relname::text, oid::bigint FROM pg_class WHERE relkind = 'i' AND relname = ANY($1)")
            .bind(HISTORY_INDEXES)
            .fetch_all(connection)
            .await
            .unwrap();
    rows.into_iter().collect()
}

const HISTORY_INDEXES: &[&str] = &[
    "runs_script_id_id",
    "runs_agent_status_id",
    "runs_status",
    "runs_task_status",
    "runs_agent",
    "runs_trigger",
    "runs_queued_at",
];

/// On a long history an operator builds 0014's indexes with CREATE INDEX CONCURRENTLY before upgrading
/// (docs/deployment.md, "Upgrades"): the migration then keeps them rather than failing or building them again.
#[tokio::test]
async fn indexes_built_before_the_upgrade_are_kept_by_the_migration() {
    use sqlx::Connection;
    let Some(db) = TestDb::postgres().await else { return };
    let mut connection = sqlx::PgConnection::connect(&db.postgres_url().unwrap()).await.unwrap();
    assert_eq!(history_indexes(&mut connection).await.len(), HISTORY_INDEXES.len());
    // Back to the database as 0013 left it.
    db.store
        .execute_raw(&format!(
            "DROP INDEX {}; CREATE INDEX runs_script_id ON runs (script_id); \
             CREATE INDEX runs_agent_id ON runs (agent_id, status); DELETE FROM _sqlx_migrations WHERE version = 14",
            HISTORY_INDEXES.join(", ")
        ))
        .await
        .unwrap();
    db.store.seed_history(3, 200).await.unwrap();
    for name in ["runs_status", "runs_script_id_id"] {
        let columns = if name == "runs_status" { "status, id" } else { "script_id, id" };
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE INDEX CONCURRENTLY {name} ON runs ({columns})")))
            .execute(&mut connection)
            .await
            .unwrap();
    }
    let built_before = history_indexes(&mut connection).await;
    db.store.migrate().await.unwrap();
    let after = history_indexes(&mut connection).await;
    assert_eq!(after.len(), HISTORY_INDEXES.len(), "{after:?}");
    for (name, oid) in &built_before {
        assert_eq!(after[name], *oid, "{name} was built again");
    }
    let replaced: Vec<String> =
        sqlx::query_scalar("SELECT relname::text FROM pg_class WHERE relname IN ('runs_script_id', 'runs_agent_id')")
            .fetch_all(&mut connection)
            .await
            .unwrap();
    assert!(replaced.is_empty(), "the narrower indexes of 0002 stay: {replaced:?}");
}

/// The seed leaves a PostgreSQL history as autovacuum soon would: every page of `runs` all-visible, so that a
/// filter's capped count reads its index alone instead of scanning the table.
#[tokio::test]
async fn a_seeded_postgres_history_is_vacuumed_as_autovacuum_would_leave_it() {
    use sqlx::Connection;
    let Some(db) = TestDb::postgres().await else { return };
    db.store.seed_history(3, 5000).await.unwrap();
    let mut connection = sqlx::PgConnection::connect(&db.postgres_url().unwrap()).await.unwrap();
    let (pages, all_visible): (i32, i32) =
        sqlx::query_as("SELECT relpages, relallvisible FROM pg_class WHERE relname = 'runs' AND relkind = 'r'")
            .fetch_one(&mut connection)
            .await
            .unwrap();
    assert!(pages > 0 && all_visible == pages, "{all_visible} of {pages} pages all-visible");
}
