//! The run lifecycle in the store on both backends: claim, lease, finish, reap, retry, cancel and output.
//! SQLite always; PostgreSQL when `AUTOMA_TEST_PG_URL` is set (required with `AUTOMA_REQUIRE_PG=1`).

use std::collections::HashSet;

use automa_core::{Role, RunStatus, Trigger};
use automa_store::{
    Actor, ChainLimits, HookTrigger, NewHook, NewLogChunk, NewRun, NewUser, RunEnd, RunFilter, RunPage, ScriptPackages,
    ScriptUpdate, Store, StoreError, UserUpdate,
};
use chrono::Duration;

#[macro_use]
mod support;

use support::*;

fn lease() -> Duration {
    Duration::seconds(30)
}

async fn claims_respect_pinning_labels_and_concurrency(store: &Store) {
    let s = script(store).await;
    let plain = agent(store, "plain", &[], 1).await;
    let gpu = agent(store, "gpu", &["gpu", "linux"], 2).await;
    let needs_gpu = store.create_run(None, new_run(s, &["gpu"], None, 0)).await.unwrap();
    let pinned = store.create_run(None, new_run(s, &[], Some(gpu), 0)).await.unwrap();
    assert!(store.claim_run(plain, lease()).await.unwrap().is_none(), "plain may take neither run");
    let first = store.claim_run(gpu, lease()).await.unwrap().expect("gpu takes the oldest");
    assert_eq!((first.run.id, first.content.as_str()), (needs_gpu.id, "print(1)"));
    assert_eq!(first.run.status, RunStatus::Running);
    assert_eq!(store.claim_run(gpu, lease()).await.unwrap().unwrap().run.id, pinned.id);
    store.create_run(None, new_run(s, &[], None, 0)).await.unwrap();
    assert!(store.claim_run(gpu, lease()).await.unwrap().is_none(), "gpu is at its concurrency");
    assert!(store.claim_run(plain, lease()).await.unwrap().is_some());
}
both_backends!(claim_rules, claims_respect_pinning_labels_and_concurrency);

async fn finish_is_idempotent_and_retries_with_backoff(store: &Store) {
    let s = script(store).await;
    let a = agent(store, "a", &[], 4).await;
    let mut spec = new_run(s, &[], None, 1);
    spec.retry_backoff_seconds = 3600;
    let run = store.create_run(None, spec).await.unwrap();
    store.claim_run(a, lease()).await.unwrap().unwrap();
    let end = RunEnd { exit_code: Some(2), ..RunEnd::new(RunStatus::Failed) };
    let finished = store.finish_run(run.id, Some(a), &end).await.unwrap();
    assert!(finished.changed);
    assert_eq!(finished.run.status, RunStatus::Failed);
    let retry = finished.retry.expect("one retry left");
    assert_eq!((retry.attempt, retry.trigger, retry.status), (2, Trigger::Retry, RunStatus::Queued));
    assert!(retry.not_before > retry.queued_at, "the retry waits for its backoff");
    assert!(store.claim_run(a, lease()).await.unwrap().is_none(), "not before its backoff");
    let again = store.finish_run(run.id, Some(a), &RunEnd::new(RunStatus::Succeeded)).await.unwrap();
    assert!(!again.changed && again.retry.is_none());
    assert_eq!(again.run.status, RunStatus::Failed, "a late finish changes nothing");
}
both_backends!(finish_and_retry, finish_is_idempotent_and_retries_with_backoff);

async fn expired_leases_are_reaped_and_retried(store: &Store) {
    let s = script(store).await;
    let a = agent(store, "a", &[], 4).await;
    let run = store.create_run(None, new_run(s, &[], None, 1)).await.unwrap();
    store.claim_run(a, Duration::seconds(-1)).await.unwrap().unwrap();
    let renewal = store.renew_leases(a, &[run.id, 999], Duration::seconds(-1)).await.unwrap();
    assert_eq!(renewal.gone, vec![999]);
    let lost = store.lose_runs(automa_store::now(), None).await.unwrap();
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].run.status, RunStatus::Lost);
    let retry = lost[0].retry.as_ref().expect("retried");
    let claimed = store.claim_run(a, lease()).await.unwrap().expect("the retry is due at once");
    assert_eq!(claimed.run.id, retry.id);
    let renewal = store.renew_leases(a, &[run.id, retry.id], lease()).await.unwrap();
    assert_eq!(renewal.gone, vec![run.id], "the lost run is gone for the agent");
    assert!(store.lose_runs(automa_store::now(), None).await.unwrap().is_empty(), "a renewed lease is kept");
    let restarted = store.lose_runs(automa_store::now(), Some(a)).await.unwrap();
    assert_eq!(restarted.len(), 1);
    assert!(restarted[0].retry.is_none(), "no retries left");
}
both_backends!(reaping, expired_leases_are_reaped_and_retried);

/// The system lines of a run's output.
async fn system_lines(store: &Store, run_id: i64) -> Vec<String> {
    let logs = store.run_logs(run_id, 0, 100).await.unwrap();
    logs.into_iter().filter(|c| c.stream == "system").map(|c| c.data).collect()
}

async fn a_lost_run_says_why_in_its_log(store: &Store) {
    let s = script(store).await;
    let a = agent(store, "edge-1", &[], 4).await;
    let expired = store.create_run(None, new_run(s, &[], None, 0)).await.unwrap();
    store.claim_run(a, Duration::seconds(-1)).await.unwrap().unwrap();
    let lost = store.lose_runs(automa_store::now(), None).await.unwrap();
    let error = lost[0].run.error.clone().unwrap();
    assert!(error.starts_with("agent 'edge-1' stopped renewing the run's lease (it expired at "), "{error}");
    assert_eq!(system_lines(store, expired.id).await, [format!("lost: {error}\n")]);

    let restarted = store.create_run(None, new_run(s, &[], None, 0)).await.unwrap();
    store.claim_run(a, lease()).await.unwrap().unwrap();
    let output = NewLogChunk { seq: 1, stream: "stdout".into(), ts: automa_store::now(), data: "x\n".into() };
    store.append_logs(restarted.id, a, &[output], 1_000).await.unwrap();
    store.lose_runs(automa_store::now(), Some(a)).await.unwrap();
    let lines = system_lines(store, restarted.id).await;
    assert_eq!(lines, ["lost: agent 'edge-1' restarted while the run was running\n"], "after the run's output");
    assert_eq!(store.run_logs(restarted.id, 0, 100).await.unwrap().last().unwrap().seq, 2);
}
both_backends!(lost_runs_say_why, a_lost_run_says_why_in_its_log);

async fn a_lost_attempt_is_not_retried_before_its_lease_ends(store: &Store) {
    let s = script(store).await;
    let a = agent(store, "a", &[], 4).await;
    let run = store.create_run(None, new_run(s, &[], None, 1)).await.unwrap();
    let claimed = store.claim_run(a, lease()).await.unwrap().unwrap();
    // The agent reports it stopped the run because it could not renew its lease: the lease has not ended yet.
    let end =
        RunEnd { error: Some("stopped by its agent".into()), retry_after_lease: true, ..RunEnd::new(RunStatus::Lost) };
    let finished = store.finish_run(run.id, Some(a), &end).await.unwrap();
    let retry = finished.retry.expect("retried");
    assert!(retry.not_before >= claimed.run.lease_until.unwrap(), "{retry:?}");
    assert!(store.claim_run(a, lease()).await.unwrap().is_none(), "not while the old lease lasts");
    assert_eq!(store.next_queued_at(automa_store::now()).await.unwrap(), Some(retry.not_before));
}
both_backends!(lost_retry_waits_for_the_lease, a_lost_attempt_is_not_retried_before_its_lease_ends);

async fn agent_reported_times_are_kept_within_what_the_server_saw(store: &Store) {
    let s = script(store).await;
    let a = agent(store, "a", &[], 4).await;
    let run = store.create_run(None, new_run(s, &[], None, 0)).await.unwrap();
    let claimed = store.claim_run(a, lease()).await.unwrap().unwrap().run.started_at.unwrap();
    let before = automa_store::now();
    let end = RunEnd {
        exit_code: Some(0),
        ended_ago: Some(Duration::zero()),
        elapsed: Some(Duration::hours(1)),
        ..RunEnd::new(RunStatus::Succeeded)
    };
    let ended = store.finish_run(run.id, Some(a), &end).await.unwrap().run;
    let finished = ended.finished_at.unwrap();
    assert!(finished >= before && finished <= automa_store::now(), "ended as reported: {finished}");
    assert_eq!(ended.started_at, Some(claimed), "never before the claim");

    let run = store.create_run(None, new_run(s, &[], None, 0)).await.unwrap();
    store.claim_run(a, lease()).await.unwrap().unwrap();
    let end = RunEnd { elapsed: Some(Duration::zero()), ..RunEnd::new(RunStatus::Succeeded) };
    let ended = store.finish_run(run.id, Some(a), &end).await.unwrap().run;
    assert_eq!(ended.started_at, ended.finished_at, "started the reported time before it ended");

    let run = store.create_run(None, new_run(s, &[], None, 0)).await.unwrap();
    let claimed = store.claim_run(a, lease()).await.unwrap().unwrap().run.started_at.unwrap();
    let end = RunEnd {
        exit_code: Some(0),
        ended_ago: Some(Duration::hours(1)),
        elapsed: Some(Duration::milliseconds(5)),
        ..RunEnd::new(RunStatus::Succeeded)
    };
    let ended = store.finish_run(run.id, Some(a), &end).await.unwrap().run;
    assert_eq!((ended.started_at, ended.finished_at), (Some(claimed), Some(claimed)), "never before the claim");
}
both_backends!(agent_times, agent_reported_times_are_kept_within_what_the_server_saw);

/// Counts the notifications on the wake channel (PostgreSQL; on SQLite there are none to count).
async fn wake_counter(store: &Store) -> std::sync::Arc<tokio::sync::Semaphore> {
    let woken = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let counted = woken.clone();
    store.listen_for_runs(move || counted.add_permits(1)).await.unwrap();
    woken
}

async fn woken_once(woken: &tokio::sync::Semaphore, what: &str) {
    let permit = tokio::time::timeout(std::time::Duration::from_secs(30), woken.acquire()).await;
    permit.unwrap_or_else(|_| panic!("no notification for {what}")).unwrap().forget();
}

/// The listener makes its connection again by itself after losing it; what was sent in between is lost, so the
/// reconnect wakes as a notification would.
async fn a_listener_that_lost_its_connection_wakes_once_it_is_back(store: &Store) {
    if store.backend_name() != "postgres" {
        return;
    }
    let woken = wake_counter(store).await;
    store
        .execute_raw(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() \
             AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
        )
        .await
        .unwrap();
    woken_once(&woken, "a reconnect").await;
}
both_backends!(listener_reconnect, a_listener_that_lost_its_connection_wakes_once_it_is_back);

async fn queued_retries_wake_every_server(store: &Store) {
    if store.backend_name() != "postgres" {
        return;
    }
    let s = script(store).await;
    let a = agent(store, "a", &[], 4).await;
    let failing = store.create_run(None, new_run(s, &[], None, 1)).await.unwrap();
    let expiring = store.create_run(None, new_run(s, &[], None, 1)).await.unwrap();
    store.claim_run(a, lease()).await.unwrap().unwrap();
    store.claim_run(a, Duration::seconds(-1)).await.unwrap().unwrap();
    let woken = wake_counter(store).await;
    let end = RunEnd { exit_code: Some(1), ..RunEnd::new(RunStatus::Failed) };
    assert!(store.finish_run(failing.id, Some(a), &end).await.unwrap().retry.is_some());
    woken_once(&woken, "a retry queued by a finish").await;
    let lost = store.lose_runs(automa_store::now(), None).await.unwrap();
    assert_eq!(lost.iter().map(|f| f.run.id).collect::<Vec<_>>(), [expiring.id]);
    assert!(lost[0].retry.is_some());
    woken_once(&woken, "a retry queued by the reaper").await;
}
both_backends!(retries_wake, queued_retries_wake_every_server);

async fn cancel_queued_and_running(store: &Store) {
    let s = script(store).await;
    let a = agent(store, "a", &[], 4).await;
    let queued = store.create_run(None, new_run(s, &[], None, 0)).await.unwrap();
    assert_eq!(store.cancel_run(&Actor::system(), queued.id).await.unwrap().run.status, RunStatus::Cancelled);
    let running = store.create_run(None, new_run(s, &[], None, 0)).await.unwrap();
    store.claim_run(a, lease()).await.unwrap().unwrap();
    let requested = store.cancel_run(&Actor::system(), running.id).await.unwrap().run;
    assert_eq!((requested.status, requested.cancel_requested), (RunStatus::Running, true));
    assert_eq!(store.renew_leases(a, &[running.id], lease()).await.unwrap().cancel, vec![running.id]);
    let error = store.cancel_run(&Actor::system(), queued.id).await.unwrap_err();
    assert_eq!(error.to_string(), format!("run {} is cancelled and cannot be cancelled", queued.id));
}
both_backends!(cancelling, cancel_queued_and_running);

/// A claim that commits while a cancel is between reading the run (`queued`) and updating it wins: the running
/// run is not marked cancelled under its agent, and the cancel becomes a request to stop it. PostgreSQL only:
/// SQLite's write lock puts every cancel wholly before or after a claim. A second connection holds the run's
/// row so that the cancel waits at its update, then moves the run to `running` as the claim statement does.
#[tokio::test]
async fn a_claim_between_a_cancels_read_and_update_wins() {
    use sqlx::{Connection, PgConnection};
    let Some(db) = TestDb::postgres().await else { return };
    let store = db.store.clone();
    let s = script(&store).await;
    let a = agent(&store, "a", &[], 4).await;
    let run = store.create_run(None, new_run(s, &[], None, 0)).await.unwrap();
    let url = db.postgres_url().unwrap();
    let mut claim = PgConnection::connect(&url).await.unwrap();
    let mut watch = PgConnection::connect(&url).await.unwrap();
    let mut claiming = claim.begin().await.unwrap();
    sqlx::query("SELECT id FROM runs WHERE id = $1 FOR UPDATE").bind(run.id).execute(&mut *claiming).await.unwrap();
    let cancel = tokio::spawn({
        let store = store.clone();
        async move { store.cancel_run(&Actor::system(), run.id).await }
    });
    // The cancel has read `queued` once it waits for the row.
    loop {
        let waiting: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND query LIKE 'UPDATE runs SET status = ''cancelled''%')",
        )
        .fetch_one(&mut watch)
        .await
        .unwrap();
        if waiting {
            break;
        }
        assert!(!cancel.is_finished(), "the cancel ended without waiting for the row: {:?}", cancel.await);
        tokio::task::yield_now().await;
    }
    sqlx::query("UPDATE runs SET status = 'running', agent_id = $2, started_at = now(), lease_until = now() + interval '1 hour' WHERE id = $1 AND status = 'queued'")
        .bind(run.id)
        .bind(a)
        .execute(&mut *claiming)
        .await
        .unwrap();
    claiming.commit().await.unwrap();
    let cancelled = cancel.await.unwrap().unwrap();
    assert_eq!((cancelled.run.status, cancelled.run.cancel_requested), (RunStatus::Running, true));
    assert!(cancelled.downstream.is_empty());
    let stored = store.get_run(run.id).await.unwrap();
    assert_eq!((stored.status, stored.agent_id, stored.finished_at), (RunStatus::Running, Some(a), None));
    assert_eq!(store.renew_leases(a, &[run.id], lease()).await.unwrap().cancel, vec![run.id]);
}

async fn logs_are_stored_once_and_capped(store: &Store) {
    let s = script(store).await;
    let a = agent(store, "a", &[], 4).await;
    let run = store.create_run(None, new_run(s, &[], None, 0)).await.unwrap();
    store.claim_run(a, lease()).await.unwrap().unwrap();
    let chunk =
        |seq: i64, data: &str| NewLogChunk { seq, stream: "stdout".into(), ts: automa_store::now(), data: data.into() };
    let batch = vec![chunk(1, "0123456789\n"), chunk(2, "abc\n")];
    assert_eq!(store.append_logs(run.id, a, &batch, 20).await.unwrap().inserted.len(), 2);
    assert!(store.append_logs(run.id, a, &batch, 20).await.unwrap().inserted.is_empty(), "a resent batch is skipped");
    store.append_logs(run.id, a, &[chunk(3, "this is past the cap\n"), chunk(4, "dropped\n")], 20).await.unwrap();
    let logs = store.run_logs(run.id, 0, 100).await.unwrap();
    let streams: Vec<_> = logs.iter().map(|c| (c.seq, c.stream.as_str())).collect();
    assert_eq!(streams, vec![(1, "stdout"), (2, "stdout"), (3, "system")]);
    assert!(logs[2].data.contains("log limit of 20 bytes"), "{}", logs[2].data);
    let other = agent(store, "other", &[], 1).await;
    let refused = store.append_logs(run.id, other, &[chunk(9, "x")], 20).await.unwrap_err();
    assert_eq!(refused.to_string(), format!("run {} is not held by this agent; stop it", run.id));
}
both_backends!(logs, logs_are_stored_once_and_capped);

async fn a_finished_run_takes_no_more_output(store: &Store) {
    let s = script(store).await;
    let a = agent(store, "a", &[], 4).await;
    let run = store.create_run(None, new_run(s, &[], None, 0)).await.unwrap();
    store.claim_run(a, lease()).await.unwrap().unwrap();
    let chunk = |seq: i64| NewLogChunk { seq, stream: "stdout".into(), ts: automa_store::now(), data: "x\n".into() };
    let repeated: Vec<_> = [1, 2, 2, 3, 1].into_iter().map(chunk).collect();
    let stored = store.append_logs(run.id, a, &repeated, 1_000).await.unwrap().inserted;
    assert_eq!(stored.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 2, 3], "a seq repeated in one batch counts once");
    assert_eq!(store.get_run(run.id).await.unwrap().log_bytes, 6);
    store.finish_run(run.id, Some(a), &RunEnd::new(RunStatus::Succeeded)).await.unwrap();
    let refused = store.append_logs(run.id, a, &[chunk(4)], 1_000).await.unwrap_err();
    assert_eq!(refused.to_string(), format!("run {} is succeeded: it takes no more output; stop it", run.id));
    let refused = store.append_logs(run.id, a, &[], 1_000).await.unwrap_err();
    assert!(refused.to_string().contains("takes no more output"), "even an empty batch is refused: {refused}");
    assert_eq!(store.run_logs(run.id, 0, 100).await.unwrap().len(), 3, "history is unchanged");
    let missing = store.append_logs(999_999, a, &[chunk(1)], 1_000).await.unwrap_err();
    assert_eq!(missing.to_string(), "run 999999 is not held by this agent; stop it", "as another agent's run would");
}
both_backends!(finished_logs, a_finished_run_takes_no_more_output);

async fn concurrent_claimers_never_share_a_run(store: &Store) {
    let s = script(store).await;
    let mut agents = Vec::new();
    for index in 0..8 {
        agents.push(agent(store, &format!("a{index}"), &[], 1000).await);
    }
    for _ in 0..100 {
        store.create_run(None, new_run(s, &[], None, 0)).await.unwrap();
    }
    let mut claimers = tokio::task::JoinSet::new();
    for agent_id in agents {
        let store = store.clone();
        claimers.spawn(async move {
            let mut mine = Vec::new();
            while let Some(claimed) = store.claim_run(agent_id, Duration::seconds(30)).await.unwrap() {
                assert_eq!(claimed.run.agent_id, Some(agent_id));
                mine.push(claimed.run.id);
            }
            mine
        });
    }
    let mut seen = HashSet::new();
    while let Some(mine) = claimers.join_next().await {
        for id in mine.unwrap() {
            assert!(seen.insert(id), "run {id} was claimed twice");
        }
    }
    assert_eq!(seen.len(), 100);
}
both_backends!(concurrent_claims, concurrent_claimers_never_share_a_run);

async fn a_handed_back_run_is_queued_again_without_spending_a_retry(store: &Store) {
    let s = script(store).await;
    let a = agent(store, "a", &[], 4).await;
    let b = agent(store, "b", &[], 4).await;
    let older = store.create_run(None, new_run(s, &[], None, 0)).await.unwrap();
    let run = store.create_run(None, new_run(s, &[], None, 0)).await.unwrap();
    let chunk = |seq: i64| NewLogChunk { seq, stream: "stdout".into(), ts: automa_store::now(), data: "x\n".into() };
    assert_eq!(store.claim_run(a, lease()).await.unwrap().unwrap().run.id, older.id);
    let claimed = store.claim_run(a, lease()).await.unwrap().unwrap();
    assert_eq!((claimed.run.id, claimed.last_log_seq), (run.id, 0));
    store.append_logs(run.id, a, &[chunk(1), chunk(2)], 1_000).await.unwrap();

    assert!(store.hand_back_run(run.id, b, "not b's").await.unwrap().is_none(), "only its holder hands it back");
    let handed = store.hand_back_run(run.id, a, "the server shut down").await.unwrap().expect("handed back");
    assert_eq!((handed.run.status, handed.run.attempt, handed.run.agent_id), (RunStatus::Queued, 1, None));
    assert!(handed.retry.is_none(), "no new run: the same one goes back to the queue");
    assert!(handed.run.started_at.is_none() && handed.run.lease_until.is_none(), "its lease is released");
    assert!(store.hand_back_run(run.id, a, "again").await.unwrap().is_none(), "a repeated hand-back changes nothing");
    let lost = store.lose_runs(automa_store::now(), Some(a)).await.unwrap();
    assert_eq!(lost.iter().map(|f| f.run.id).collect::<Vec<_>>(), [older.id], "the handed-back run is not lost");

    let again = store.claim_run(b, lease()).await.unwrap().expect("claimable at once");
    assert_eq!((again.run.id, again.run.attempt, again.last_log_seq), (run.id, 1, 3), "after the system line");
    store.append_logs(run.id, b, &[chunk(4)], 1_000).await.unwrap();
    let end = RunEnd { exit_code: Some(1), ..RunEnd::new(RunStatus::Failed) };
    let finished = store.finish_run(run.id, Some(b), &end).await.unwrap();
    assert!(finished.retry.is_none(), "retries 0: the hand-back spent no attempt, and no retry is left");
    let logs = store.run_logs(run.id, 0, 100).await.unwrap();
    let streams: Vec<_> = logs.iter().map(|c| (c.seq, c.stream.as_str(), c.data.as_str())).collect();
    assert_eq!(
        streams,
        vec![(1, "stdout", "x\n"), (2, "stdout", "x\n"), (3, "system", "the server shut down\n"), (4, "stdout", "x\n")]
    );

    let cancelled = store.create_run(None, new_run(s, &[], None, 0)).await.unwrap();
    store.claim_run(a, lease()).await.unwrap().unwrap();
    store.cancel_run(&Actor::system(), cancelled.id).await.unwrap();
    let ended = store.hand_back_run(cancelled.id, a, "the server shut down").await.unwrap().unwrap();
    assert_eq!(ended.run.status, RunStatus::Cancelled, "a run whose cancel was requested is not run again");
}
both_backends!(hand_back, a_handed_back_run_is_queued_again_without_spending_a_retry);

async fn a_handed_back_run_keeps_its_retry_budget(store: &Store) {
    let s = script(store).await;
    let a = agent(store, "a", &[], 4).await;
    let run = store.create_run(None, new_run(s, &[], None, 1)).await.unwrap();
    for _ in 0..3 {
        store.claim_run(a, lease()).await.unwrap().unwrap();
        store.hand_back_run(run.id, a, "the server shut down").await.unwrap().unwrap();
    }
    store.claim_run(a, lease()).await.unwrap().unwrap();
    let end = RunEnd { exit_code: Some(1), ..RunEnd::new(RunStatus::Failed) };
    let retry = store.finish_run(run.id, Some(a), &end).await.unwrap().retry.expect("its one retry is still there");
    assert_eq!(retry.attempt, 2);
}
both_backends!(hand_back_budget, a_handed_back_run_keeps_its_retry_budget);

async fn a_run_handed_back_too_often_is_lost_and_retried(store: &Store) {
    let s = script(store).await;
    let a = agent(store, "a", &[], 4).await;
    let run = store.create_run(None, new_run(s, &[], None, 1)).await.unwrap();
    for _ in 0..automa_store::MAX_HAND_BACKS {
        store.claim_run(a, lease()).await.unwrap().unwrap();
        let handed = store.hand_back_run(run.id, a, "the server shut down").await.unwrap().unwrap();
        assert_eq!(handed.run.status, RunStatus::Queued);
    }
    store.claim_run(a, lease()).await.unwrap().unwrap();
    let lost = store.hand_back_run(run.id, a, "the server shut down").await.unwrap().expect("ended");
    assert_eq!(lost.run.status, RunStatus::Lost, "one hand-back too many spends the attempt");
    assert!(lost.run.error.as_deref().unwrap().contains("handed back 3 times"), "{:?}", lost.run.error);
    let retry = lost.retry.expect("the normal retry path");
    assert_eq!((retry.attempt, retry.status), (2, RunStatus::Queued));
    store.claim_run(a, lease()).await.unwrap().unwrap();
    assert_eq!(
        store.hand_back_run(retry.id, a, "again").await.unwrap().unwrap().run.status,
        RunStatus::Queued,
        "a fresh count"
    );
}
both_backends!(hand_back_limit, a_run_handed_back_too_often_is_lost_and_retried);

async fn task(store: &Store, name: &str, script: (i64, i64), after: &[i64], labels: &[&str]) -> i64 {
    store.create_task(&Actor::system(), task_spec(name, script, after, labels, 0), &[]).await.unwrap().id
}

fn task_run(task_id: i64, script: (i64, i64)) -> NewRun {
    NewRun { task_id: Some(task_id), ..new_run(script, &[], None, 0) }
}

/// Claims and succeeds every run agent `agent_id` may take, oldest first, until none is left.
async fn drain(store: &Store, agent_id: i64) {
    while let Some(claimed) = store.claim_run(agent_id, lease()).await.unwrap() {
        store.finish_run(claimed.run.id, Some(agent_id), &RunEnd::new(RunStatus::Succeeded)).await.unwrap();
    }
}

/// (queued, skipped with `reason`) `after` runs of a task.
async fn after_runs(store: &Store, task_id: i64, reason: &str) -> (usize, usize) {
    let filter = RunFilter { task_id: Some(task_id), trigger: Some(Trigger::After), ..RunFilter::default() };
    let runs = store.list_runs(&filter, RunPage { limit: 1000, ..RunPage::new(None) }).await.unwrap().items;
    let queued = runs.iter().filter(|r| r.status == RunStatus::Queued).count();
    let skipped = runs.iter().filter(|r| r.status == RunStatus::Skipped).inspect(|r| {
        assert!(r.error.as_deref().unwrap_or_default().contains(reason), "{:?}", r.error);
        assert!(r.finished_at.is_some());
    });
    (queued, skipped.count())
}

async fn fan_in_is_bounded_by_the_queue_cap(store: &Store) {
    let store = &store.clone().with_chain_limits(ChainLimits { max_depth: 10, max_queued: 3 });
    let s = script(store).await;
    // D's runs wait for an agent with its label, so they pile up as they would behind a slow agent.
    let worker = agent(store, "worker", &[], 100).await;
    let a = task(store, "a", s, &[], &[]).await;
    let mut bs = Vec::new();
    for index in 1..=4 {
        bs.push(task(store, &format!("b{index}"), s, &[a], &[]).await);
    }
    let mut cs = Vec::new();
    for index in 1..=4 {
        cs.push(task(store, &format!("c{index}"), s, &bs, &[]).await);
    }
    let d = task(store, "d", s, &cs, &["slow"]).await;
    store.create_run(None, task_run(a, s)).await.unwrap();
    drain(store, worker).await;
    // Unbounded, each C would run once per B run (4) and D once per C run (16). Each B's run queues every C
    // once; the fourth finds each C's queue full, since the worker takes runs oldest first.
    for c in &cs {
        assert_eq!(after_runs(store, *c, "3 run-after runs of this task already queued").await, (0, 1));
    }
    assert_eq!(after_runs(store, d, "3 run-after runs of this task already queued").await, (3, 9), "12 C runs");
}
both_backends!(fan_in_cap, fan_in_is_bounded_by_the_queue_cap);

async fn chains_stop_at_the_maximum_depth(store: &Store) {
    let store = &store.clone().with_chain_limits(ChainLimits { max_depth: 2, max_queued: 100 });
    let s = script(store).await;
    let worker = agent(store, "worker", &[], 100).await;
    let first = task(store, "first", s, &[], &[]).await;
    let second = task(store, "second", s, &[first], &[]).await;
    let third = task(store, "third", s, &[second], &[]).await;
    let fourth = task(store, "fourth", s, &[third], &[]).await;
    store.create_run(None, task_run(first, s)).await.unwrap();
    drain(store, worker).await;
    assert_eq!(after_runs(store, second, "").await, (0, 0));
    let filter = RunFilter { task_id: Some(third), ..RunFilter::default() };
    let third_runs = store.list_runs(&filter, RunPage::new(Some(10))).await.unwrap().items;
    assert_eq!(third_runs.iter().map(|r| r.status).collect::<Vec<_>>(), [RunStatus::Succeeded], "depth 2 runs");
    assert_eq!(after_runs(store, fourth, "run-after chains stop at 2 links").await, (0, 1), "depth 3 is refused");
}
both_backends!(chain_depth, chains_stop_at_the_maximum_depth);

async fn user(store: &Store, email: &str, role: Role) -> i64 {
    let new = NewUser { email: email.into(), password_hash: "x".into(), role };
    store.create_user(&Actor::system(), new, false).await.unwrap().unwrap().id
}

async fn hook(store: &Store, creator: i64, task_id: i64, name: &str) -> String {
    let token_hash = format!("hash-{name}");
    let new = NewHook {
        task_id,
        name: name.into(),
        token_hash: token_hash.clone(),
        prefix: "p".into(),
        rate_per_minute: 100,
    };
    store.create_hook(&Actor::user(creator, None), new).await.unwrap();
    token_hash
}

async fn hooks_die_with_their_creators_rights(store: &Store) {
    let s = script(store).await;
    let t = task(store, "t", s, &[], &[]).await;
    let admin = user(store, "admin@example.com", Role::Admin).await;
    let operator = user(store, "op@example.com", Role::Operator).await;
    let fires = |hash: String| async move {
        matches!(store.trigger_hook(&hash, None, None).await.unwrap(), HookTrigger::Queued(_))
    };
    let by_operator = hook(store, operator, t, "op").await;
    let by_admin = hook(store, admin, t, "admin").await;
    assert!(fires(by_operator.clone()).await && fires(by_admin.clone()).await);

    let update = |active, role| UserUpdate { active, role, ..UserUpdate::default() };
    store.update_user(&Actor::user(admin, None), operator, update(Some(false), None)).await.unwrap();
    assert!(!fires(by_operator.clone()).await, "a deactivated creator's hook is unknown");
    assert!(store.live_hook(&by_operator).await.unwrap().is_none());
    store.update_user(&Actor::user(admin, None), operator, update(Some(true), None)).await.unwrap();
    assert!(fires(by_operator.clone()).await, "reactivated");
    store.update_user(&Actor::user(admin, None), operator, update(None, Some(Role::Viewer))).await.unwrap();
    assert!(!fires(by_operator.clone()).await, "a viewer may not start runs, nor may the hooks it made");
    store.update_user(&Actor::user(admin, None), operator, update(None, Some(Role::Operator))).await.unwrap();
    store.delete_user(&Actor::user(admin, None), operator).await.unwrap();
    assert!(!fires(by_operator).await, "a deleted creator's hook is unknown");
    assert!(fires(by_admin).await, "other hooks are untouched");
}
both_backends!(hook_creators, hooks_die_with_their_creators_rights);

async fn payloads_go_with_the_last_attempt(store: &Store) {
    let s = script(store).await;
    let worker = agent(store, "worker", &[], 4).await;
    let operator = user(store, "op@example.com", Role::Operator).await;
    let once = store.create_task(&Actor::system(), task_spec("once", s, &[], &[], 0), &[]).await.unwrap().id;
    let twice = store.create_task(&Actor::system(), task_spec("twice", s, &[], &[], 1), &[]).await.unwrap().id;
    let trigger = |hash: String| async move {
        match store.trigger_hook(&hash, Some(r#"{"n": 1}"#), None).await.unwrap() {
            HookTrigger::Queued(run) => run.id,
            _ => panic!("the hook is live"),
        }
    };

    let run = trigger(hook(store, operator, once, "once").await).await;
    assert_eq!(store.run_payload(run).await.unwrap().as_deref(), Some(r#"{"n": 1}"#));
    let claimed = store.claim_run(worker, lease()).await.unwrap().unwrap();
    assert_eq!(claimed.payload.as_deref(), Some(r#"{"n": 1}"#));
    store.finish_run(run, Some(worker), &RunEnd::new(RunStatus::Succeeded)).await.unwrap();
    assert_eq!(store.run_payload(run).await.unwrap(), None, "gone once the run succeeded");

    let run = trigger(hook(store, operator, twice, "twice").await).await;
    store.claim_run(worker, lease()).await.unwrap().unwrap();
    let failed = RunEnd { exit_code: Some(1), ..RunEnd::new(RunStatus::Failed) };
    let retry = store.finish_run(run, Some(worker), &failed).await.unwrap().retry.expect("one retry").id;
    assert_eq!(store.run_payload(run).await.unwrap(), None, "the failed attempt's copy is gone");
    assert_eq!(store.run_payload(retry).await.unwrap().as_deref(), Some(r#"{"n": 1}"#), "the retry has its own");
    assert_eq!(store.claim_run(worker, lease()).await.unwrap().unwrap().payload.as_deref(), Some(r#"{"n": 1}"#));
    assert!(store.finish_run(retry, Some(worker), &failed).await.unwrap().retry.is_none());
    assert_eq!(store.run_payload(retry).await.unwrap(), None, "gone after the last attempt");

    let cancelled = trigger(hook(store, operator, once, "cancelled").await).await;
    store.cancel_run(&Actor::system(), cancelled).await.unwrap();
    assert_eq!(store.run_payload(cancelled).await.unwrap(), None, "a run cancelled before it started keeps none");
}
both_backends!(payloads, payloads_go_with_the_last_attempt);

async fn a_locked_version_hands_its_lock_to_the_claim_and_the_run_keeps_its_environment_time(store: &Store) {
    let (script_id, first) = script(store).await;
    let lock = "demo-pkg==1.0.0 \\\n    --hash=sha256:aa\n";
    let packages = ScriptPackages::new(vec!["demo-pkg>=1".into()], Some(">=3.8".into()), Some(lock.into()));
    let stale =
        ScriptUpdate { packages: Some(packages.clone()), expected_version: Some(first + 1), ..Default::default() };
    let refused = store.update_script(&Actor::system(), script_id, stale).await.unwrap_err();
    assert!(matches!(refused, StoreError::Conflict(_)), "a change computed from another version is refused");
    let update = ScriptUpdate { packages: Some(packages.clone()), expected_version: Some(first), ..Default::default() };
    let locked = store.update_script(&Actor::system(), script_id, update).await.unwrap();
    assert_eq!((locked.version, &locked.packages, locked.content.as_str()), (first + 1, &packages, "print(1)"));
    assert_eq!(store.get_script_version(script_id, first).await.unwrap().packages, ScriptPackages::default());

    let a = agent(store, "a", &[], 4).await;
    let without_uv = agent(store, "without-uv", &[], 4).await;
    let no_uv = serde_json::json!({"packages": {"uv": null}});
    store.agent_seen(without_uv, automa_store::now(), "host", "1", &no_uv, None).await.unwrap();
    let with_uv = serde_json::json!({"packages": {"uv": "0.9.0"}});
    store.agent_seen(a, automa_store::now(), "host", "1", &with_uv, None).await.unwrap();
    let with_packages = store.create_run(None, new_run((script_id, locked.version), &[], None, 0)).await.unwrap();
    let plain = store.create_run(None, new_run((script_id, first), &[], None, 0)).await.unwrap();
    let claimed = store.claim_run(without_uv, lease()).await.unwrap().unwrap();
    assert_eq!((claimed.run.id, claimed.environment), (plain.id, None), "an agent without uv takes no locked run");
    assert!(store.claim_run(without_uv, lease()).await.unwrap().is_none());
    let claimed = store.claim_run(a, lease()).await.unwrap().unwrap();
    assert_eq!(claimed.run.id, with_packages.id);
    assert_eq!(claimed.environment, Some((lock.to_owned(), Some(">=3.8".to_owned()))));

    let end = RunEnd { exit_code: Some(0), environment_ms: Some(0), ..RunEnd::new(RunStatus::Succeeded) };
    let finished = store.finish_run(with_packages.id, Some(a), &end).await.unwrap();
    assert_eq!(finished.run.environment_ms, Some(0));
    let end = RunEnd { exit_code: Some(0), ..RunEnd::new(RunStatus::Succeeded) };
    assert_eq!(store.finish_run(plain.id, Some(without_uv), &end).await.unwrap().run.environment_ms, None);
}

both_backends!(script_packages, a_locked_version_hands_its_lock_to_the_claim_and_the_run_keeps_its_environment_time);
