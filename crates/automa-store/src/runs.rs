//! Runs: queueing, the atomic claim, lease renewal, finishing with retries, cancelling and reaping lost runs
//! (DESIGN §4). Every transition is one guarded statement (`... WHERE status = 'running'`), so a late or
//! repeated report about a run that has moved on changes nothing.

use chrono::{DateTime, Duration, Utc};
use serde_json::json;
use sqlx::{FromRow, Transaction, types::Json};

use automa_core::{RunStatus, Trigger};

use crate::models::BindRunParams;
use crate::{
    Actor, Agent, AgentUpdate, AgentUpdated, AuditEvent, Backend, ChainLimits, ClaimedRun, Finished, LeaseRenewal,
    NewRun, Run, RunEnd, RunFilter, RunList, RunPage, Store, StoreError, StoreResult, WritePool,
    agents::{AGENT_COLUMNS, EFFECTIVE_CONCURRENCY},
    composed, dispatch,
    notifications::queue_run_notices,
    now,
};

/// The channel that tells every server on a PostgreSQL database that a run was queued.
pub const WAKE_CHANNEL: &str = "automa_runs";

/// How many times one run may be handed back before a hand-back counts as a lost attempt.
pub const MAX_HAND_BACKS: i64 = 3;

/// Appends a `system` line (`$3`, ending in a newline) at time `$2` to run `$1`'s output, numbered after what is
/// stored: what the platform did to a run, written in the transaction that did it.
const APPEND_SYSTEM_LINE: &str = "INSERT INTO run_logs (run_id, seq, stream, ts, data) \
     SELECT $1, COALESCE(MAX(seq), 0) + 1, 'system', $2, $3 FROM run_logs WHERE run_id = $1";

/// Writes `line` (without its newline) as a `system` line of run `run_id`'s output at `at`, inside `tx`.
async fn append_system_line<DB>(
    tx: &mut Transaction<'_, DB>,
    run_id: i64,
    at: DateTime<Utc>,
    line: &str,
) -> StoreResult<()>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    sqlx::query(APPEND_SYSTEM_LINE).bind(run_id).bind(at).bind(format!("{line}\n")).execute(&mut **tx).await?;
    Ok(())
}

/// Retry delays double with each attempt from the task's backoff, up to this.
const MAX_BACKOFF_SECONDS: i64 = 3600;

const INSERT_RUN: &str = "INSERT INTO runs (task_id, script_id, script_version, content, filename, target_agent_id, \
     labels, trigger, scheduled_for, attempt, retries, retry_backoff_seconds, status, queued_at, not_before, args, env, \
     secrets, timeout_seconds, memory_mb, cpu_seconds, max_output_bytes, network, warm, created_by) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, $10, $11, 'queued', $12, $12, $13, $14, $15, $16, $17, $18, $19, \
     $20, $21, $22) RETURNING *";

/// Copies a finished run into a new queued attempt. `scheduled_for` stays behind: it is unique per tick.
const INSERT_RETRY: &str = "INSERT INTO runs (task_id, script_id, script_version, content, filename, \
     target_agent_id, labels, trigger, attempt, retries, retry_backoff_seconds, status, queued_at, not_before, args, \
     env, secrets, timeout_seconds, memory_mb, cpu_seconds, max_output_bytes, network, warm, created_by, hook_id, \
     upstream_run_id, depth) \
     SELECT task_id, script_id, script_version, content, filename, target_agent_id, labels, 'retry', attempt + 1, \
     retries, retry_backoff_seconds, 'queued', $2, $3, args, env, secrets, timeout_seconds, memory_mb, cpu_seconds, \
     max_output_bytes, network, warm, created_by, hook_id, upstream_run_id, depth FROM runs WHERE id = $1 \
     RETURNING *";

/// A retry gets the payload of the hook call that started the attempt before it (`$1` retry, `$2` attempt).
const COPY_PAYLOAD: &str =
    "INSERT INTO run_payloads (run_id, payload) SELECT $1, payload FROM run_payloads WHERE run_id = $2";

/// Inserts, for run `$1` of task `$2` that just ended in `$3` at `$4`, a run of every enabled task that runs
/// after it so, copying each task's fields like the scheduler does, with status `$5`, `finished_at` `$6`,
/// `error` `$7` and chain depth `$8`, for the tasks whose queued `after` runs number `{cmp}` `$9`. The unique
/// (upstream_run_id, task_id) index makes a second run for the same upstream run impossible.
const INSERT_AFTER: &str = "INSERT INTO runs (task_id, script_id, script_version, filename, target_agent_id, labels, trigger, \
     upstream_run_id, depth, retries, retry_backoff_seconds, status, queued_at, not_before, finished_at, \
     error, args, env, secrets, timeout_seconds, memory_mb, cpu_seconds, max_output_bytes, network, warm) \
     SELECT t.id, t.script_id, COALESCE(t.script_version, s.current_version), s.filename, t.agent_id, \
     t.labels, 'after', $1, $8, t.retries, t.retry_backoff_seconds, $5, $4, $4, $6, $7, t.args, t.env, \
     t.secrets, t.timeout_seconds, t.memory_mb, t.cpu_seconds, t.max_output_bytes, t.network, t.warm \
     FROM task_run_after a JOIN tasks t ON t.id = a.task_id JOIN scripts s ON s.id = t.script_id \
     WHERE a.after_task_id = $2 AND a.on_status = $3 AND t.enabled \
     AND (SELECT COUNT(*) FROM runs q WHERE q.task_id = t.id AND q.trigger = 'after' \
     AND q.status = 'queued') {cmp} $9 \
     ON CONFLICT (upstream_run_id, task_id) WHERE trigger = 'after' DO NOTHING RETURNING *";

/// Starts the tasks that run after `run` (task `task_id`), which ended at `at`, within `chains`; returns the
/// runs queued. A run that would go deeper than the limit, or join a task's full queue, is recorded `skipped`
/// with the reason instead: refused visibly, and starting nothing further (no link fires on `skipped`), so the
/// records are bounded by the runs that really ran.
async fn queue_after<DB>(
    tx: &mut Transaction<'_, DB>,
    chains: ChainLimits,
    run: &Run,
    task_id: i64,
    at: DateTime<Utc>,
) -> StoreResult<Vec<Run>>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    Run: for<'r> sqlx::FromRow<'r, DB::Row>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<DateTime<Utc>>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'a, 'q> &'a str: sqlx::Encode<'q, DB>,
    str: sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let upstream_depth: i64 =
        sqlx::query_scalar("SELECT depth FROM runs WHERE id = $1").bind(run.id).fetch_one(&mut **tx).await?;
    let depth = upstream_depth + 1;
    let (cap, refusal) = if depth > chains.max_depth {
        (0, format!("not started: run-after chains stop at {} links", chains.max_depth))
    } else {
        (chains.max_queued, format!("not started: {} run-after runs of this task already queued", chains.max_queued))
    };
    let queued: Vec<Run> = if cap > 0 {
        sqlx::query_as(composed(INSERT_AFTER.replace("{cmp}", "<")))
            .bind(run.id)
            .bind(task_id)
            .bind(run.status.as_str())
            .bind(at)
            .bind(RunStatus::Queued.as_str())
            .bind(None::<DateTime<Utc>>)
            .bind(None::<String>)
            .bind(depth)
            .bind(cap)
            .fetch_all(&mut **tx)
            .await?
    } else {
        Vec::new()
    };
    sqlx::query(composed(INSERT_AFTER.replace("{cmp}", ">=")))
        .bind(run.id)
        .bind(task_id)
        .bind(run.status.as_str())
        .bind(at)
        .bind(RunStatus::Skipped.as_str())
        .bind(Some(at))
        .bind(Some(refusal))
        .bind(depth)
        .bind(cap)
        .execute(&mut **tx)
        .await?;
    Ok(queued)
}

/// The oldest queued run agent `$1` may take at time `$2`: pinned to it or to no agent, with labels the agent
/// has, whose every secret's policy lets this agent receive it, while the agent is neither draining nor
/// disabled (nor retired) and below its effective concurrency (`{effective}`: its slots within the admin's cap).
/// A run whose script version has a lock goes only to an agent that last reported a uv to build its environment
/// with (`{builds_environments}`): an agent without one, or one from before environments, which drops the
/// unknown field, would run the script against whatever happens to be installed.
/// `{labels}`, `{secrets}` and `{lock}` are the backend's subset test, secret policy test and row lock.
const CLAIM_TEMPLATE: &str = "UPDATE runs SET status = 'running', agent_id = $1, started_at = $2, lease_until = $3 \
     WHERE status = 'queued' AND id = (SELECT r.id FROM runs r WHERE r.status = 'queued' AND r.not_before <= $2 \
     AND (r.target_agent_id IS NULL OR r.target_agent_id = $1) AND {labels} AND {secrets} \
     AND ({builds_environments} OR NOT EXISTS (SELECT 1 FROM script_versions v WHERE v.script_id = r.script_id \
     AND v.version = r.script_version AND v.lock IS NOT NULL)) \
     AND EXISTS (SELECT 1 FROM agents a WHERE a.id = $1 AND NOT a.draining AND NOT a.disabled \
     AND a.retired_at IS NULL AND {effective} > (SELECT COUNT(*) FROM runs x WHERE x.agent_id = $1 AND x.status = 'running') \
     {agent_lock}) ORDER BY r.queued_at, r.id LIMIT 1 {lock}) RETURNING *";

/// What an agent needs of the run just claimed (`{claimed}`, its row), beside the row itself: the script's
/// content (its version's, or an ad-hoc run's own; NULL when the version no longer exists), the version's lock
/// and `requires-python`, the highest output chunk number the run already has (a run handed back continues its
/// log after it) and its hook payload.
const CLAIMED_DETAILS: &str = "SELECT claimed.*, CASE WHEN claimed.script_id IS NOT NULL \
     AND claimed.script_version IS NOT NULL THEN v.content ELSE claimed.content END AS claim_content, \
     v.lock AS claim_lock, v.requires_python AS claim_requires_python, \
     (SELECT COALESCE(MAX(seq), 0) FROM run_logs WHERE run_id = claimed.id) AS claim_last_log_seq, \
     (SELECT payload FROM run_payloads WHERE run_id = claimed.id) AS claim_payload \
     FROM {claimed} LEFT JOIN script_versions v ON v.script_id = claimed.script_id \
     AND v.version = claimed.script_version";

/// [`CLAIMED_DETAILS`] as read.
#[derive(sqlx::FromRow)]
struct ClaimDetails {
    #[sqlx(rename = "claim_content")]
    content: Option<String>,
    #[sqlx(rename = "claim_lock")]
    lock: Option<String>,
    #[sqlx(rename = "claim_requires_python")]
    requires_python: Option<String>,
    #[sqlx(rename = "claim_last_log_seq")]
    last_log_seq: i64,
    #[sqlx(rename = "claim_payload")]
    payload: Option<String>,
}

/// Agent `$1` reported `capabilities.packages.uv` as a version (`Agent::builds_environments` in Rust).
const SQLITE_BUILDS_ENVIRONMENTS: &str =
    "EXISTS (SELECT 1 FROM agents b WHERE b.id = $1 AND json_type(b.capabilities, '$.packages.uv') = 'text')";
const POSTGRES_BUILDS_ENVIRONMENTS: &str =
    "EXISTS (SELECT 1 FROM agents b WHERE b.id = $1 AND jsonb_typeof(b.capabilities -> 'packages' -> 'uv') = 'string')";

const SQLITE_LABELS: &str = "NOT EXISTS (SELECT 1 FROM json_each(r.labels) l WHERE l.value NOT IN \
     (SELECT value FROM json_each((SELECT labels FROM agents WHERE id = $1))))";
const POSTGRES_LABELS: &str = "r.labels <@ (SELECT labels FROM agents WHERE id = $1)";

/// No secret the run names refuses agent `$1` (`SecretPolicy::allows_agent` is the same rule in Rust): a
/// policy without agent ids and labels admits only the embedded agent; otherwise the agent's id or one of its
/// labels must be listed. A secret that does not exist refuses nobody: the run is claimed and fails with a
/// clear error rather than waiting forever, and no value exists to leak.
const SQLITE_SECRETS: &str = "NOT EXISTS (SELECT 1 FROM secrets s \
     WHERE s.name IN (SELECT value FROM json_each(r.secrets)) AND NOT ( \
     (json_array_length(s.agent_ids) = 0 AND json_array_length(s.agent_labels) = 0 \
      AND EXISTS (SELECT 1 FROM agents a WHERE a.id = $1 AND a.embedded)) \
     OR EXISTS (SELECT 1 FROM json_each(s.agent_ids) i WHERE i.value = $1) \
     OR EXISTS (SELECT 1 FROM json_each(s.agent_labels) l \
      WHERE l.value IN (SELECT value FROM json_each((SELECT labels FROM agents WHERE id = $1))))))";
const POSTGRES_SECRETS: &str = "NOT EXISTS (SELECT 1 FROM secrets s \
     WHERE r.secrets @> jsonb_build_array(s.name) AND NOT ( \
     (s.agent_ids = '[]'::jsonb AND s.agent_labels = '[]'::jsonb \
      AND EXISTS (SELECT 1 FROM agents a WHERE a.id = $1 AND a.embedded)) \
     OR s.agent_ids @> jsonb_build_array($1::bigint) \
     OR EXISTS (SELECT 1 FROM jsonb_array_elements_text(s.agent_labels) l(label) \
      WHERE (SELECT labels FROM agents WHERE id = $1) @> jsonb_build_array(l.label))))";

/// Ends a running run. `$1` run, `$2` agent (NULL: whichever agent holds it, for the reaper).
const FINISH_RUN: &str = "UPDATE runs SET status = $3, finished_at = $4, exit_code = $5, signal = $6, timed_out = $7, \
     oom_killed = $8, max_rss_kb = $9, cpu_ms = $10, output_bytes = $11, truncated = $12, error = $13, \
     started_at = $14, environment_ms = $15, warm_start = $16, lease_until = NULL WHERE id = $1 AND status = 'running' \
     AND ($2 IS NULL OR agent_id = $2) \
     RETURNING *";

/// What the finish of a running run needs to know about it: when it was claimed and its lease's end.
const RUNNING_TIMES: &str =
    "SELECT started_at, lease_until FROM runs WHERE id = $1 AND status = 'running' AND ($2 IS NULL OR agent_id = $2)";
type RunningTimes = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// When a run that ended at `at` by the store's clock really started and ended: the agent's account
/// (`end.ended_ago`, `end.elapsed`), bounded by what the server saw: nothing before the claim, nothing after
/// now. A result delivered late, after an outage, so keeps the run's own times instead of the delivery's.
fn run_times(
    end: &RunEnd,
    at: DateTime<Utc>,
    claimed: Option<DateTime<Utc>>,
) -> (DateTime<Utc>, Option<DateTime<Utc>>) {
    let earliest = claimed.unwrap_or(at).min(at);
    let finished = end.ended_ago.map_or(at, |ago| (at - ago.max(Duration::zero())).clamp(earliest, at));
    let started = match end.elapsed {
        Some(elapsed) => Some((finished - elapsed.max(Duration::zero())).clamp(earliest, finished)),
        None => claimed,
    };
    (finished, started)
}

/// When attempt `attempt` failing should be retried: the backoff doubled per earlier attempt, capped.
fn retry_delay(run: &Run) -> Duration {
    let doublings = u32::try_from(run.attempt.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    let seconds = run.retry_backoff_seconds.max(0).saturating_mul(1_i64 << doublings).min(MAX_BACKOFF_SECONDS);
    Duration::seconds(seconds)
}

/// Finishes `run_id` with `end` inside `tx` and queues its retry when it ended retryably with attempts left,
/// or else, its outcome being final, the runs of the tasks that run after it (within `chains`). `None`: the
/// run was not running, or not held by `agent` (any holder when `agent` is `None`).
async fn finish_in_tx<DB>(
    tx: &mut Transaction<'_, DB>,
    chains: ChainLimits,
    run_id: i64,
    agent: Option<i64>,
    end: &RunEnd,
) -> StoreResult<Option<Finished>>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    Run: for<'r> sqlx::FromRow<'r, DB::Row>,
    RunningTimes: for<'r> sqlx::FromRow<'r, DB::Row>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<i32>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> bool: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<DateTime<Utc>>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'a, 'q> &'a str: sqlx::Encode<'q, DB>,
    str: sqlx::Type<DB>,
    for<'a, 'q> Json<&'a serde_json::Value>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    crate::notifications::ChannelRow: for<'r> sqlx::FromRow<'r, DB::Row>,
    crate::notifications::TaskChoice: for<'r> sqlx::FromRow<'r, DB::Row>,
    crate::notifications::PreviousRun: for<'r> sqlx::FromRow<'r, DB::Row>,
    crate::notifications::RecentDelivery: for<'r> sqlx::FromRow<'r, DB::Row>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let at = now();
    let times: Option<RunningTimes> =
        sqlx::query_as(RUNNING_TIMES).bind(run_id).bind(agent).fetch_optional(&mut **tx).await?;
    let (claimed, lease_until) = times.unwrap_or_default();
    let (finished_at, started_at) = run_times(end, at, claimed);
    let run: Option<Run> = sqlx::query_as(FINISH_RUN)
        .bind(run_id)
        .bind(agent)
        .bind(end.status.as_str())
        .bind(finished_at)
        .bind(end.exit_code)
        .bind(end.signal)
        .bind(end.timed_out)
        .bind(end.oom_killed)
        .bind(end.max_rss_kb)
        .bind(end.cpu_ms)
        .bind(end.output_bytes)
        .bind(end.truncated)
        .bind(&end.error)
        .bind(started_at)
        .bind(end.environment_ms)
        .bind(end.warm_start)
        .fetch_optional(&mut **tx)
        .await?;
    let Some(run) = run else { return Ok(None) };
    // A run whose cancellation was requested is not tried again, however it ended: the user wants it stopped
    // (an agent cut off from the server could not be told before it lost the run).
    let retry: Option<Run> = if end.status.is_retryable() && run.attempt <= run.retries && !run.cancel_requested {
        let not_before = match lease_until.filter(|_| end.retry_after_lease) {
            Some(lease_until) => (at + retry_delay(&run)).max(lease_until),
            None => at + retry_delay(&run),
        };
        Some(sqlx::query_as(INSERT_RETRY).bind(run.id).bind(at).bind(not_before).fetch_one(&mut **tx).await?)
    } else {
        None
    };
    if let Some(retry) = &retry {
        sqlx::query(COPY_PAYLOAD).bind(retry.id).bind(run.id).execute(&mut **tx).await?;
    }
    // The payload serves this run and its retries only: once neither can start again, it goes.
    sqlx::query("DELETE FROM run_payloads WHERE run_id = $1").bind(run.id).execute(&mut **tx).await?;
    let downstream: Vec<Run> = match (&retry, run.task_id) {
        (None, Some(task_id)) => queue_after(tx, chains, &run, task_id, at).await?,
        _ => Vec::new(),
    };
    queue_run_notices(tx, &run, retry.is_some()).await?;
    Ok(Some(Finished { run, changed: true, retry, downstream }))
}

impl Store {
    pub(crate) fn is_postgres(&self) -> bool {
        matches!(&*self.backend, Backend::Postgres(_))
    }

    /// Queues a run. A user's request is audited in the same transaction; the scheduler's fires are recorded
    /// by the run itself. On PostgreSQL the commit also notifies every server listening on [`WAKE_CHANNEL`].
    pub async fn create_run(&self, actor: Option<&Actor>, new: NewRun) -> StoreResult<Run> {
        let created_by = actor.and_then(crate::scripts::actor_user_id);
        let postgres = self.is_postgres();
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let run: Run = sqlx::query_as(INSERT_RUN)
                .bind(new.task_id)
                .bind(new.script_id)
                .bind(new.script_version)
                .bind(&new.content)
                .bind(&new.filename)
                .bind(new.target_agent_id)
                .bind(Json(&new.labels))
                .bind(new.trigger.as_str())
                .bind(new.scheduled_for)
                .bind(new.retries)
                .bind(new.retry_backoff_seconds)
                .bind(now())
                .bind_run_params(&new.params)
                .bind(created_by)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| StoreError::from_constraint(e, || "this task already has a run for that tick".into()))?;
            if let Some(actor) = actor {
                let details = json!({"task_id": run.task_id, "script_id": run.script_id, "trigger": run.trigger,
                    "args": new.params.args(), "env_keys": new.params.env().as_map().keys().collect::<Vec<_>>(),
                    "secrets": new.params.secrets()});
                self.append_audit(&mut tx, actor, AuditEvent::new("run.create", "run", Some(run.id), details)).await?;
            }
            if postgres {
                sqlx::query("SELECT pg_notify($1, '')").bind(WAKE_CHANNEL).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(run)
        })
    }

    pub async fn get_run(&self, id: i64) -> StoreResult<Run> {
        dispatch!(self, pool => {
            sqlx::query_as("SELECT * FROM runs WHERE id = $1").bind(id).fetch_optional(pool).await?.ok_or(StoreError::NotFound)
        })
    }

    /// Runs, newest first: one page of them and how many match (see [`RunPage`]). The page is read through
    /// one index chosen for the filter (docs/architecture.md, "Run history"), so a page costs about the same
    /// at any depth reached by `before`; the total is counted only when the page alone cannot tell it.
    /// An `offset` past [`RunPage::MAX_OFFSET`] is refused.
    pub async fn list_runs(&self, filter: &RunFilter, page: RunPage) -> StoreResult<RunList> {
        if page.offset > RunPage::MAX_OFFSET {
            return Err(StoreError::Invalid(automa_core::InvalidField::new(
                "offset",
                format!("is at most {}: page deeper with cursor (each answer's next_cursor)", RunPage::MAX_OFFSET),
            )));
        }
        let hints = !self.is_postgres();
        dispatch!(self, pool => {
            let mut select = sqlx::QueryBuilder::new("");
            push_page_query(&mut select, filter, page, hints);
            let mut items: Vec<Run> = select.build_query_as().fetch_all(pool).await?;
            let more = items.len() as i64 > page.limit;
            items.truncate(usize::try_from(page.limit).unwrap_or_default());
            let next_before = if more { items.last().map(|run| run.id) } else { None };
            // A first page (or an offset page) that is not full holds the end of the list: its total is known.
            let (total, total_exact) = if !more && page.before.is_none() && (page.offset == 0 || !items.is_empty()) {
                (page.offset + items.len() as i64, true)
            } else {
                let mut count = sqlx::QueryBuilder::new("SELECT COUNT(*) FROM (SELECT 1 FROM runs WHERE 1=1");
                push_run_filter(&mut count, filter, Reading { hints, count: true });
                if !page.exact_total {
                    count.push(" LIMIT ").push_bind(RunPage::TOTAL_CAP + 1);
                }
                count.push(") matching");
                let counted: i64 = count.build_query_scalar().fetch_one(pool).await?;
                if page.exact_total || counted <= RunPage::TOTAL_CAP {
                    (counted, true)
                } else {
                    (RunPage::TOTAL_CAP, false)
                }
            };
            Ok(RunList { items, total, total_exact, next_before })
        })
    }

    /// The database's plan for reading one page of runs (`EXPLAIN QUERY PLAN` on SQLite, `EXPLAIN` on
    /// PostgreSQL), one line per step: which index each filter is read through, for tests and diagnosis.
    pub async fn explain_runs_page(&self, filter: &RunFilter, page: RunPage) -> StoreResult<Vec<String>> {
        match &*self.backend {
            Backend::Sqlite(pool) => {
                let mut explain = sqlx::QueryBuilder::new("EXPLAIN QUERY PLAN ");
                push_page_query(&mut explain, filter, page, true);
                let steps: Vec<(i64, i64, i64, String)> = explain.build_query_as().fetch_all(pool).await?;
                Ok(steps.into_iter().map(|(_, _, _, detail)| detail).collect())
            }
            Backend::Postgres(pool) => {
                let mut explain = sqlx::QueryBuilder::new("EXPLAIN ");
                push_page_query(&mut explain, filter, page, false);
                Ok(explain.build_query_scalar().fetch_all(pool).await?)
            }
        }
    }

    /// Claims the oldest run `agent_id` may take, in one atomic statement, with a lease of `lease`, and reads
    /// everything the agent needs to execute it with the claim: on PostgreSQL in the same statement, on SQLite
    /// in the same transaction.
    pub async fn claim_run(&self, agent_id: i64, lease: Duration) -> StoreResult<Option<ClaimedRun>> {
        let at = now();
        let claimed: Option<(Run, ClaimDetails)> = match &*self.backend {
            Backend::Sqlite(pool) => {
                let sql = CLAIM_TEMPLATE
                    .replace("{labels}", SQLITE_LABELS)
                    .replace("{secrets}", SQLITE_SECRETS)
                    .replace("{builds_environments}", SQLITE_BUILDS_ENVIRONMENTS)
                    .replace("{lock}", "")
                    .replace("{agent_lock}", "")
                    .replace("{effective}", EFFECTIVE_CONCURRENCY);
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let run: Option<Run> = sqlx::query_as(composed(sql))
                    .bind(agent_id)
                    .bind(at)
                    .bind(at + lease)
                    .fetch_optional(&mut *tx)
                    .await?;
                let claimed = match run {
                    Some(run) => {
                        let sql = CLAIMED_DETAILS.replace("{claimed}", "(SELECT * FROM runs WHERE id = $1) claimed");
                        let details = sqlx::query_as(composed(sql)).bind(run.id).fetch_one(&mut *tx).await?;
                        Some((run, details))
                    }
                    None => None,
                };
                tx.commit().await?;
                claimed
            }
            Backend::Postgres(pool) => {
                let claim = CLAIM_TEMPLATE
                    .replace("{labels}", POSTGRES_LABELS)
                    .replace("{secrets}", POSTGRES_SECRETS)
                    .replace("{builds_environments}", POSTGRES_BUILDS_ENVIRONMENTS)
                    .replace("{lock}", "FOR UPDATE SKIP LOCKED")
                    // Disabling or retiring writes the agent's row and then reads its running runs: holding the
                    // row for the claim's statement puts each such change wholly before or after the claim.
                    .replace("{agent_lock}", "FOR SHARE")
                    .replace("{effective}", EFFECTIVE_CONCURRENCY);
                let sql = format!("WITH claimed AS ({claim}) {}", CLAIMED_DETAILS.replace("{claimed}", "claimed"));
                let row: Option<sqlx::postgres::PgRow> =
                    sqlx::query(composed(sql)).bind(agent_id).bind(at).bind(at + lease).fetch_optional(pool).await?;
                row.map(|row| Ok::<_, sqlx::Error>((Run::from_row(&row)?, ClaimDetails::from_row(&row)?)))
                    .transpose()?
            }
        };
        let Some((run, details)) = claimed else { return Ok(None) };
        match details.content {
            Some(content) => {
                let environment = details.lock.map(|lock| (lock, details.requires_python));
                let (last_log_seq, payload) = (details.last_log_seq, details.payload);
                Ok(Some(ClaimedRun { run, content, environment, last_log_seq, payload }))
            }
            None => {
                let end = RunEnd::failed("the script version of this run no longer exists");
                self.finish_run(run.id, Some(agent_id), &end).await?;
                Box::pin(self.claim_run(agent_id, lease)).await
            }
        }
    }

    /// The hook payload kept for a run: only until the run and its retries can no longer start.
    pub async fn run_payload(&self, run_id: i64) -> StoreResult<Option<String>> {
        dispatch!(self, pool => {
            Ok(sqlx::query_scalar("SELECT payload FROM run_payloads WHERE run_id = $1").bind(run_id).fetch_optional(pool).await?)
        })
    }

    /// The earliest time after `after` at which a queued run becomes claimable, if one waits (for its retry
    /// backoff, or for the lease of the attempt it retries to end). Runs already claimable do not count: one
    /// this agent may not take must not hide a later one it may.
    pub async fn next_queued_at(&self, after: DateTime<Utc>) -> StoreResult<Option<DateTime<Utc>>> {
        dispatch!(self, pool => {
            Ok(sqlx::query_scalar("SELECT MIN(not_before) FROM runs WHERE status = 'queued' AND not_before > $1")
                .bind(after)
                .fetch_one(pool)
                .await?)
        })
    }

    /// Renews the leases of the runs `agent_id` reports running and says which of them to cancel or stop.
    pub async fn renew_leases(&self, agent_id: i64, running: &[i64], lease: Duration) -> StoreResult<LeaseRenewal> {
        if running.is_empty() {
            return Ok(LeaseRenewal::default());
        }
        dispatch!(self, pool => {
            let mut update = sqlx::QueryBuilder::new("UPDATE runs SET lease_until = ");
            update.push_bind(now() + lease).push(" WHERE status = 'running' AND agent_id = ").push_bind(agent_id);
            update.push(" AND id IN (");
            let mut ids = update.separated(", ");
            for id in running {
                ids.push_bind(*id);
            }
            update.push(") RETURNING id, cancel_requested");
            let renewed: Vec<(i64, bool)> = update.build_query_as().fetch_all(pool).await?;
            let cancel = renewed.iter().filter(|(_, cancel)| *cancel).map(|(id, _)| *id).collect();
            let gone = running.iter().filter(|id| !renewed.iter().any(|(r, _)| r == *id)).copied().collect();
            Ok(LeaseRenewal { cancel, gone })
        })
    }

    /// Ends a run `agent_id` holds (any holder when `None`), queueing its retry in the same transaction. A run
    /// that is no longer running is returned unchanged.
    pub async fn finish_run(&self, run_id: i64, agent_id: Option<i64>, end: &RunEnd) -> StoreResult<Finished> {
        let postgres = self.is_postgres();
        let finished = dispatch!(self, pool => {
            let mut tx = pool.begin_with_lock().await?;
            let finished = finish_in_tx(&mut tx, self.chains, run_id, agent_id, end).await?;
            if postgres && finished.as_ref().is_some_and(Finished::queued_any) {
                sqlx::query("SELECT pg_notify($1, '')").bind(WAKE_CHANNEL).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            finished
        });
        match finished {
            Some(finished) => Ok(finished),
            None => {
                Ok(Finished { run: self.get_run(run_id).await?, changed: false, retry: None, downstream: Vec::new() })
            }
        }
    }

    /// Gives a running run back to the queue because its agent is shutting down, not because the run failed:
    /// the same run (same id, same attempt, so its retries are untouched) becomes `queued` again at the head of
    /// the queue, with a `system` line in its output saying why, in the transaction that releases the agent's
    /// lease. A run whose cancellation was requested ends `cancelled` instead, and one already handed back
    /// [`MAX_HAND_BACKS`] times ends `lost` (spending an attempt, retried as usual), so that agents shutting
    /// down again and again cannot keep a run going forever. `None` when the run is not running on `agent_id`
    /// (already ended, reaped or handed back), so a repeated hand-back changes nothing.
    pub async fn hand_back_run(&self, run_id: i64, agent_id: i64, reason: &str) -> StoreResult<Option<Finished>> {
        let postgres = self.is_postgres();
        dispatch!(self, pool => {
            let mut tx = pool.begin_with_lock().await?;
            let run: Option<Run> = sqlx::query_as(
                "UPDATE runs SET status = 'queued', agent_id = NULL, started_at = NULL, lease_until = NULL, \
                 not_before = $3, hand_backs = hand_backs + 1 WHERE id = $1 AND agent_id = $2 AND status = 'running' \
                 AND NOT cancel_requested AND hand_backs < $4 RETURNING *",
            )
            .bind(run_id)
            .bind(agent_id)
            .bind(now())
            .bind(MAX_HAND_BACKS)
            .fetch_optional(&mut *tx)
            .await?;
            let finished = match run {
                Some(run) => {
                    append_system_line(&mut tx, run_id, now(), reason).await?;
                    if postgres {
                        sqlx::query("SELECT pg_notify($1, '')").bind(WAKE_CHANNEL).execute(&mut *tx).await?;
                    }
                    Some(Finished { run, changed: true, retry: None, downstream: Vec::new() })
                }
                None => {
                    let cancel: Option<bool> = sqlx::query_scalar("SELECT cancel_requested FROM runs WHERE id = $1")
                        .bind(run_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    let end = if cancel == Some(true) {
                        let error = Some("cancelled; its agent shut down before it stopped".to_owned());
                        RunEnd { error, ..RunEnd::new(RunStatus::Cancelled) }
                    } else {
                        let error = format!("handed back {MAX_HAND_BACKS} times already; this shutdown counts as a lost attempt");
                        RunEnd { error: Some(error), ..RunEnd::new(RunStatus::Lost) }
                    };
                    let finished = finish_in_tx(&mut tx, self.chains, run_id, Some(agent_id), &end).await?;
                    if postgres && finished.as_ref().is_some_and(Finished::queued_any) {
                        sqlx::query("SELECT pg_notify($1, '')").bind(WAKE_CHANNEL).execute(&mut *tx).await?;
                    }
                    finished
                }
            };
            tx.commit().await?;
            Ok(finished)
        })
    }

    /// Marks `lost` every running run whose lease expired before `at` (or, with `agent_id`, every running run
    /// of that agent, which has restarted and so holds none), queueing retries and waking the servers' waiting
    /// claims for them. Each lost run gets the reason as its error and as a `system` line in its output, in the
    /// same transaction. Returns what changed.
    pub async fn lose_runs(&self, at: DateTime<Utc>, agent_id: Option<i64>) -> StoreResult<Vec<Finished>> {
        let postgres = self.is_postgres();
        dispatch!(self, pool => {
            let mut tx = pool.begin_with_lock().await?;
            let select = "SELECT r.id, a.name, r.lease_until FROM runs r LEFT JOIN agents a ON a.id = r.agent_id \
                 WHERE r.status = 'running' AND ";
            let expired: Vec<(i64, Option<String>, Option<DateTime<Utc>>)> = match agent_id {
                Some(agent_id) => sqlx::query_as(composed(format!("{select} r.agent_id = $1 ORDER BY r.id")))
                    .bind(agent_id)
                    .fetch_all(&mut *tx)
                    .await?,
                None => sqlx::query_as(composed(format!("{select} r.lease_until < $1 ORDER BY r.id")))
                    .bind(at)
                    .fetch_all(&mut *tx)
                    .await?,
            };
            let mut lost = Vec::with_capacity(expired.len());
            for (run_id, agent, lease_until) in expired {
                let agent = agent.unwrap_or_else(|| "(deleted)".into());
                let reason = match (agent_id, lease_until) {
                    (Some(_), _) => format!("agent '{agent}' restarted while the run was running"),
                    (None, Some(expiry)) => format!(
                        "agent '{agent}' stopped renewing the run's lease (it expired at {})",
                        expiry.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                    ),
                    (None, None) => format!("agent '{agent}' stopped renewing the run's lease"),
                };
                // Lost without its agent's word that it stopped (a second process with the same token, an agent
                // cut off): the retry waits for the lease, which the reaper's runs have already passed.
                let end =
                    RunEnd { error: Some(reason.clone()), retry_after_lease: true, ..RunEnd::new(RunStatus::Lost) };
                if let Some(finished) = finish_in_tx(&mut tx, self.chains, run_id, None, &end).await? {
                    append_system_line(&mut tx, run_id, finished.run.finished_at.unwrap_or(at), &format!("lost: {reason}")).await?;
                    lost.push(finished);
                }
            }
            if postgres && lost.iter().any(Finished::queued_any) {
                sqlx::query("SELECT pg_notify($1, '')").bind(WAKE_CHANNEL).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(lost)
        })
    }

    /// When the reaper has work next, as the database stands: the earliest lease of a running run ends, or the
    /// agent heard from longest ago (among those counted connected) has been silent for `offline_after`. One
    /// statement, so that an idle server's reaper costs one round trip a look.
    pub async fn next_reap_at(&self, offline_after: Duration) -> StoreResult<Option<DateTime<Utc>>> {
        let (lease, heard): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) = dispatch!(self, pool => {
            sqlx::query_as(
                "SELECT (SELECT MIN(lease_until) FROM runs WHERE status = 'running'), \
                 (SELECT MIN(last_seen_at) FROM agents WHERE disconnected_at IS NULL AND NOT disabled \
                 AND retired_at IS NULL AND last_seen_at IS NOT NULL)",
            )
            .fetch_one(pool)
            .await?
        });
        Ok([lease, heard.map(|at| at + offline_after)].into_iter().flatten().min())
    }

    /// Cancels a run: a queued one at once (which starts the tasks that run after it on `cancelled`), a running
    /// one by asking its agent. Anything else is a conflict.
    pub async fn cancel_run(&self, actor: &Actor, run_id: i64) -> StoreResult<Finished> {
        let postgres = self.is_postgres();
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            // Each update names the status it moves from: a claim, a finish or a hand-back committed between the
            // read and the update leaves it without a row, and the run is looked at again in its new state.
            let (status, run) = loop {
                let current: Run = sqlx::query_as("SELECT * FROM runs WHERE id = $1")
                    .bind(run_id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or(StoreError::NotFound)?;
                let status = current.status;
                let run: Option<Run> = match status {
                    RunStatus::Queued => sqlx::query_as(
                        "UPDATE runs SET status = 'cancelled', finished_at = $2, error = 'cancelled before it started' \
                         WHERE id = $1 AND status = 'queued' RETURNING *",
                    )
                    .bind(run_id)
                    .bind(now())
                    .fetch_optional(&mut *tx)
                    .await?,
                    RunStatus::Running => {
                        sqlx::query_as("UPDATE runs SET cancel_requested = $2 WHERE id = $1 AND status = 'running' RETURNING *")
                            .bind(run_id)
                            .bind(true)
                            .fetch_optional(&mut *tx)
                            .await?
                    }
                    other => return Err(StoreError::Conflict(format!("run {run_id} is {other} and cannot be cancelled"))),
                };
                if let Some(run) = run {
                    break (status, run);
                }
            };
            if run.status == RunStatus::Cancelled {
                sqlx::query("DELETE FROM run_payloads WHERE run_id = $1").bind(run.id).execute(&mut *tx).await?;
            }
            let downstream: Vec<Run> = match run.task_id.filter(|_| run.status == RunStatus::Cancelled) {
                Some(task_id) => queue_after(&mut tx, self.chains, &run, task_id, now()).await?,
                None => Vec::new(),
            };
            let details = json!({"status_before": status});
            self.append_audit(&mut tx, actor, AuditEvent::new("run.cancel", "run", Some(run_id), details)).await?;
            if postgres && !downstream.is_empty() {
                sqlx::query("SELECT pg_notify($1, '')").bind(WAKE_CHANNEL).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(Finished { run, changed: true, retry: None, downstream })
        })
    }
}

impl RunEnd {
    pub fn new(status: RunStatus) -> RunEnd {
        RunEnd {
            status,
            exit_code: None,
            signal: None,
            timed_out: false,
            oom_killed: false,
            max_rss_kb: None,
            cpu_ms: None,
            output_bytes: None,
            truncated: false,
            error: None,
            environment_ms: None,
            warm_start: false,
            ended_ago: None,
            elapsed: None,
            retry_after_lease: false,
        }
    }

    pub fn failed(error: &str) -> RunEnd {
        RunEnd { error: Some(error.to_owned()), ..RunEnd::new(RunStatus::Failed) }
    }
}

impl Finished {
    /// Whether this end queued a run (a retry or a run-after run) that waiting claims should hear of.
    pub fn queued_any(&self) -> bool {
        self.retry.is_some() || !self.downstream.is_empty()
    }
}

/// The query for one page of runs, `limit + 1` of them (the extra one tells whether a next page exists). Ids
/// first, then their rows: where the page must be sorted (a time window), only ids are.
fn push_page_query<DB>(builder: &mut sqlx::QueryBuilder<DB>, filter: &RunFilter, page: RunPage, hints: bool)
where
    DB: sqlx::Database,
    for<'t> &'static str: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> i64: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> DateTime<Utc>: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    builder.push("SELECT * FROM runs WHERE id IN (SELECT id FROM runs WHERE 1=1");
    let order = push_run_filter(builder, filter, Reading { hints, count: false });
    if let Some(before) = page.before {
        builder.push(" AND id < ").push_bind(before);
    }
    builder.push(format_args!(" ORDER BY {order} DESC LIMIT ")).push_bind(page.limit + 1);
    if page.offset > 0 {
        builder.push(" OFFSET ").push_bind(page.offset);
    }
    builder.push(") ORDER BY id DESC");
}

/// The filter columns in the order [`push_run_filter`] prefers to read them through their index: a task's or
/// a script's runs are few beside the whole history; an agent, a status or a trigger covers many more.
const DRIVING_ORDER: [&str; 5] = ["task_id", "script_id", "agent_id", "status", "trigger"];

/// What a filter is written for: `hints` for SQLite (see [`push_run_filter`]), `count` for counting the
/// matching runs rather than reading a page of them in order.
#[derive(Clone, Copy)]
struct Reading {
    hints: bool,
    count: bool,
}

/// Adds `filter`'s conditions to a `WHERE` and returns what to order the page by (`id`, or `id + 0` to read a
/// time window through its index rather than walking the primary key).
///
/// With hints (SQLite, which plans without statistics), the conditions the chosen index does not serve are
/// written `+column`, SQLite's documented way to keep a term from choosing an index: the first column of
/// [`DRIVING_ORDER`] present drives (with `status` beside `task_id` or `agent_id`, which have indexes on
/// both), so SQLite never walks every failed run for one task's. PostgreSQL chooses by its statistics.
///
/// A time window with an end (`until`), and no column to drive, is read through `runs_queued_at` and sorted:
/// walking ids down from the newest would pass every run queued after `until` first. `since` alone does not
/// need it: the newest runs are the ones queued since. A count has no order to keep, so a time filter always
/// drives it: a column index would be walked to its end whenever fewer runs than the cap fall in the window.
fn push_run_filter<DB>(builder: &mut sqlx::QueryBuilder<DB>, filter: &RunFilter, reading: Reading) -> &'static str
where
    DB: sqlx::Database,
    for<'t> &'static str: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> i64: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> DateTime<Utc>: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    let ids = [("task_id", filter.task_id), ("script_id", filter.script_id), ("agent_id", filter.agent_id)];
    let texts = [("status", filter.status.map(RunStatus::as_str)), ("trigger", filter.trigger.map(Trigger::as_str))];
    let present = |column: &str| match column {
        "task_id" => filter.task_id.is_some(),
        "script_id" => filter.script_id.is_some(),
        "agent_id" => filter.agent_id.is_some(),
        "status" => filter.status.is_some(),
        _ => filter.trigger.is_some(),
    };
    let count_by_time = reading.count && (filter.since.is_some() || filter.until.is_some());
    let driver = if count_by_time { None } else { DRIVING_ORDER.into_iter().find(|column| present(column)) };
    let served = |column: &str| {
        !reading.hints
            || driver == Some(column)
            || (column == "status" && matches!(driver, Some("task_id" | "agent_id")))
    };
    let prefix = |column: &str| if served(column) { "" } else { "+" };
    for (column, value) in ids {
        if let Some(value) = value {
            builder.push(format_args!(" AND {}{column} = ", prefix(column))).push_bind(value);
        }
    }
    for (column, value) in texts {
        if let Some(value) = value {
            builder.push(format_args!(" AND {}{column} = ", prefix(column))).push_bind(value);
        }
    }
    let window = !reading.count && driver.is_none() && filter.until.is_some();
    let time = if reading.hints && !window && !count_by_time { "+queued_at" } else { "queued_at" };
    if let Some(since) = filter.since {
        builder.push(format_args!(" AND {time} >= ")).push_bind(since);
    }
    if let Some(until) = filter.until {
        builder.push(format_args!(" AND {time} < ")).push_bind(until);
    }
    if window { "id + 0" } else { "id" }
}

impl Store {
    /// Changes an agent. Disabling it ends the runs it is running `cancelled`, with the reason as their error and
    /// as a `system` line (they are not retried: the admin stopped them), in the same transaction. Any change
    /// that may let the agent take runs it could not take before (a higher cap, other labels, no longer
    /// draining or disabled) notifies every server's waiting claims. A retired agent takes only a new name,
    /// which frees its old one for a new agent. It lives beside the run transitions because disabling is one.
    pub async fn update_agent(&self, actor: &Actor, id: i64, update: AgentUpdate) -> StoreResult<AgentUpdated> {
        let postgres = self.is_postgres();
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let current: Agent = sqlx::query_as(composed(format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1")))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
            let only_renames = update.description.is_none()
                && update.labels.is_none()
                && update.max_concurrency.is_none()
                && update.disabled.is_none()
                && update.draining.is_none();
            if current.retired_at.is_some() && !only_renames {
                return Err(StoreError::Conflict(format!(
                    "agent '{}' is retired: only its name can change",
                    current.name
                )));
            }
            let name = update.name.clone().unwrap_or_else(|| current.name.clone());
            if name != current.name {
                let retired: Option<i64> =
                    sqlx::query_scalar("SELECT id FROM agents WHERE name = $1 AND retired_at IS NOT NULL")
                        .bind(&name)
                        .fetch_optional(&mut *tx)
                        .await?;
                if let Some(retired) = retired {
                    return Err(crate::agents::name_of_retired_agent(&name, retired));
                }
            }
            let labels = update.labels.clone().unwrap_or_else(|| current.labels.0.clone());
            let max_concurrency = update.max_concurrency.unwrap_or(current.max_concurrency);
            let disabled = update.disabled.unwrap_or(current.disabled);
            let draining = update.draining.unwrap_or(current.draining);
            let agent: Agent = sqlx::query_as(composed(format!(
                "UPDATE agents SET name = $1, description = $2, labels = $3, max_concurrency = $4, disabled = $5, \
                 draining = $6 WHERE id = $7 RETURNING {AGENT_COLUMNS}"
            )))
            .bind(&name)
            .bind(update.description.clone().unwrap_or_else(|| current.description.clone()))
            .bind(Json(&labels))
            .bind(max_concurrency)
            .bind(disabled)
            .bind(draining)
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| StoreError::from_constraint(e, || format!("an agent named '{name}' already exists")))?;
            let mut cancelled = Vec::new();
            if disabled {
                let who: String = match (actor.actor_type, actor.actor_id.as_deref()) {
                    ("user", Some(user_id)) => {
                        let email: Option<String> = sqlx::query_scalar("SELECT email FROM users WHERE id = $1")
                            .bind(user_id.parse::<i64>().unwrap_or_default())
                            .fetch_optional(&mut *tx)
                            .await?;
                        email.unwrap_or_else(|| format!("user {user_id}"))
                    }
                    (kind, _) => kind.to_owned(),
                };
                let reason = format!("cancelled: agent '{}' was disabled by {who}", agent.name);
                let end = RunEnd { error: Some(reason.clone()), ..RunEnd::new(RunStatus::Cancelled) };
                let running: Vec<i64> =
                    sqlx::query_scalar("SELECT id FROM runs WHERE status = 'running' AND agent_id = $1 ORDER BY id")
                        .bind(id)
                        .fetch_all(&mut *tx)
                        .await?;
                for run_id in running {
                    if let Some(finished) = finish_in_tx(&mut tx, self.chains, run_id, Some(id), &end).await? {
                        append_system_line(&mut tx, run_id, now(), &reason).await?;
                        cancelled.push(finished);
                    }
                }
            }
            let details = json!({"name": update.name, "description": update.description, "labels": update.labels,
                "max_concurrency": update.max_concurrency, "disabled": update.disabled, "draining": update.draining,
                "runs_cancelled": cancelled.iter().map(|f: &Finished| f.run.id).collect::<Vec<_>>()});
            self.append_audit(&mut tx, actor, AuditEvent::new("agent.update", "agent", Some(id), details)).await?;
            let may_take_more = may_take_more(&current, &agent);
            let queued_more = cancelled.iter().any(|f| !f.downstream.is_empty());
            if postgres && (may_take_more || queued_more) {
                sqlx::query("SELECT pg_notify($1, '')").bind(WAKE_CHANNEL).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(AgentUpdated { agent, cancelled, may_take_more })
        })
    }
}

/// Whether an agent changed from `before` to `after` may take runs it could not take before, so that claims
/// waiting at any server should look again.
fn may_take_more(before: &Agent, after: &Agent) -> bool {
    after.effective_concurrency() > before.effective_concurrency()
        || after.labels.0 != before.labels.0
        || (before.draining && !after.draining)
        || (before.disabled && !after.disabled)
}
