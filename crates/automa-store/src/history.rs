//! Benchmark history: a large, realistic run history written straight into the tables, so that lists and
//! filters can be measured at the scale a long-lived installation reaches (issue 12: 1,000,000 runs, 10,000
//! tasks) without executing a million scripts. Every row is one the store itself could have written.

use automa_core::Limits;
use chrono::Duration;
use sqlx::types::Json;

use crate::{Backend, Store, StoreError, StoreResult, WritePool, composed, dispatch, now, scripts::sha256_hex};

/// What [`Store::seed_history`] created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedReport {
    /// The one script every seeded task and run uses.
    pub script_id: i64,
    /// The seeded tasks, ascending.
    pub task_ids: Vec<i64>,
}

/// Runs per statement and transaction: large enough that statement overhead vanishes, small enough that one
/// transaction's share of SQLite's write-ahead log stays a few tens of megabytes.
const RUN_BATCH: i64 = 100_000;

/// How far back the history reaches; it ends two hours ago, so that every run, even one that ran for its whole
/// time limit (an hour by default), has ended by now.
const HISTORY_DAYS: i64 = 90;

/// The retired agents the seeded runs ran on.
const AGENTS: usize = 3;

/// The output of a run that has some (one in [`LOGGED_EVERY`]): `(seq, stream, line)`.
const LOG_LINES: [(i64, &str, &str); 3] =
    [(1, "stdout", "starting\n"), (2, "stdout", "processed 42 items\n"), (3, "stderr", "warning: 3 items skipped\n")];
const LOGGED_EVERY: i64 = 50;

/// Inserts the runs numbered `$1 <= k < $2` of `$3`. Each run's mix comes from multiplicative hashes of `k`
/// (distinct odd multipliers modulo 2^32, scaled to 0..100 or 0..1000), so a history is the same every time
/// and its status, trigger, task and agent vary independently: 85 % succeeded, 9 % failed, 3 % timed out,
/// 3 % cancelled; task runs mostly scheduled, ad-hoc runs (one slot in eleven, `task` NULL) by the API or by
/// hand. `queued` runs from `$4` (epoch seconds) over `$5` seconds, so ids and times grow together as they do
/// in a real installation. `{series}` yields `k`; `{time:X}` is epoch seconds `X` as the backend's timestamp.
const INSERT_RUNS: &str = "INSERT INTO runs (task_id, script_id, script_version, filename, agent_id, labels, trigger, \
     scheduled_for, attempt, retries, retry_backoff_seconds, status, queued_at, not_before, started_at, finished_at, \
     exit_code, signal, timed_out, max_rss_kb, cpu_ms, output_bytes, error, cancel_requested, args, env, secrets, \
     timeout_seconds, memory_mb, cpu_seconds, max_output_bytes, network, log_bytes) \
     SELECT task_id, $6, 1, $7, CASE v % 3 WHEN 0 THEN $8 WHEN 1 THEN $9 ELSE $10 END, '[]', trigger, \
     CASE WHEN trigger = 'schedule' THEN {time:queued} END, \
     CASE WHEN trigger = 'retry' THEN 2 ELSE 1 END, CASE WHEN trigger = 'retry' THEN 1 ELSE 0 END, 10, status, \
     {time:queued}, {time:queued}, {time:queued + 1}, {time:queued + 1 + seconds}, \
     CASE status WHEN 'succeeded' THEN 0 WHEN 'failed' THEN 1 END, \
     CASE status WHEN 'timed_out' THEN 9 WHEN 'cancelled' THEN 15 END, status = 'timed_out', \
     20000 + v * 40, seconds * 200 + v, logged * $11, \
     CASE status WHEN 'failed' THEN 'exit status 1' WHEN 'timed_out' THEN 'killed: ran past its time limit' END, \
     status = 'cancelled', '[]', '{}', '[]', $12, $13, $14, $15, FALSE, logged * $11 \
     FROM (SELECT t.id AS task_id, queued, v, \
      CASE WHEN s < 85 THEN 'succeeded' WHEN s < 94 THEN 'failed' WHEN s < 97 THEN 'timed_out' ELSE 'cancelled' END \
      AS status, \
      CASE WHEN t.id IS NULL THEN CASE WHEN g < 60 THEN 'api' ELSE 'manual' END \
       WHEN g < 70 THEN 'schedule' WHEN g < 80 THEN 'manual' WHEN g < 88 THEN 'api' WHEN g < 94 THEN 'hook' \
       ELSE 'retry' END AS trigger, \
      CASE WHEN s >= 94 AND s < 97 THEN $12 ELSE 1 + v % 60 END AS seconds, \
      CASE WHEN k % $16 = 0 THEN 1 ELSE 0 END AS logged \
      FROM (SELECT k, $4 + k * $5 / $3 AS queued, \
       k * 2654435761 % 4294967296 * 100 / 4294967296 AS s, \
       k * 2246822519 % 4294967296 * 100 / 4294967296 AS g, \
       k * 3266489917 % 4294967296 * 1000 / 4294967296 AS v, \
       k % $17 AS slot FROM {series}) d \
      LEFT JOIN tasks t ON t.name = $18 || d.slot) e";

const SQLITE_SERIES: &str = "(WITH RECURSIVE n(k) AS (SELECT $1 WHERE $1 < $2 UNION ALL SELECT k + 1 FROM n WHERE k + 1 < $2) \
     SELECT k FROM n)";
const POSTGRES_SERIES: &str = "generate_series($1::bigint, $2::bigint - 1) AS n(k)";
/// Whole seconds, spelled exactly as sqlx writes a `DateTime<Utc>` without a fraction, so that stored and bound
/// times compare as text on SQLite.
const SQLITE_TIME: &str = "strftime('%Y-%m-%dT%H:%M:%S+00:00', {arg}, 'unixepoch')";
const POSTGRES_TIME: &str = "to_timestamp({arg})";

/// Inserts the tasks numbered `$1 <= k < $2`, named `$3 || k`, running script `$4` with the seeded limits.
const INSERT_TASKS: &str = "INSERT INTO tasks (name, description, script_id, labels, args, env, secrets, \
     timeout_seconds, memory_mb, cpu_seconds, max_output_bytes, network, retries, retry_backoff_seconds, enabled, \
     created_at, updated_at) \
     SELECT $3 || k, 'benchmark history', $4, '[]', '[]', '{}', '[]', $5, $6, $7, $8, FALSE, 0, 10, TRUE, $9, $9 \
     FROM {series} RETURNING id";

/// The output lines of the seeded runs of script `$1` that have output.
const INSERT_LOGS: &str = "INSERT INTO run_logs (run_id, seq, stream, ts, data) \
     SELECT r.id, l.seq, l.stream, r.finished_at, l.data FROM runs r CROSS JOIN \
     (SELECT $2 AS seq, $3 AS stream, $4 AS data UNION ALL SELECT $5, $6, $7 UNION ALL SELECT $8, $9, $10) l \
     WHERE r.script_id = $1 AND r.log_bytes > 0";

impl Store {
    /// Writes a benchmark history: one new script, `tasks` tasks running it, and `runs` finished runs spread
    /// over those tasks and ad-hoc executions, on three retired agents, over the past 90 days (ending two hours
    /// ago; longer than 90 days only past one run per second), one run in fifty with three lines of output.
    /// Batched `INSERT ... SELECT` statements generate the rows inside the database. Nothing is audited (it
    /// is benchmark data, not anyone's action), but every row is valid for every API call. The names carry a
    /// fresh suffix, so seeding twice adds a second history beside the first. On PostgreSQL it ends with
    /// `VACUUM (ANALYZE)`, so that what runs next finds the data as autovacuum would soon leave it.
    pub async fn seed_history(&self, tasks: u32, runs: u64) -> StoreResult<SeedReport> {
        let (series, time) = match &*self.backend {
            Backend::Sqlite(_) => (SQLITE_SERIES, SQLITE_TIME),
            Backend::Postgres(_) => (POSTGRES_SERIES, POSTGRES_TIME),
        };
        let insert_runs = with_times(&INSERT_RUNS.replace("{series}", series), time);
        let insert_tasks = INSERT_TASKS.replace("{series}", series);
        let at = now();
        let suffix = format!("{:x}", at.timestamp_micros());
        let limits = Limits::default();
        let content = "print(\"history\")\n";
        let runs = i64::try_from(runs).map_err(|_| StoreError::Refused("too many runs to seed".into()))?;
        let span = (Duration::days(HISTORY_DAYS) - Duration::hours(2)).num_seconds().max(runs);
        let start = (at - Duration::hours(2)).timestamp() - span;
        let log_bytes: i64 = LOG_LINES.iter().map(|(_, _, line)| line.len() as i64).sum();
        let task_prefix = format!("history-{suffix}-task-");
        // Ad-hoc runs take one slot in eleven beside the tasks' ten.
        let slots = i64::from(tasks) + (i64::from(tasks) / 10).max(1);
        let (script_id, task_ids) = dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let script_id: i64 = sqlx::query_scalar(
                "INSERT INTO scripts (name, description, filename, current_version, created_at, updated_at) \
                 VALUES ($1, 'benchmark history', 'history.py', 1, $2, $2) RETURNING id",
            )
            .bind(format!("history-{suffix}"))
            .bind(at)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO script_versions (script_id, version, content, sha256, size, dependencies, created_at) \
                 VALUES ($1, 1, $2, $3, $4, $5, $6)",
            )
            .bind(script_id)
            .bind(content)
            .bind(sha256_hex(content))
            .bind(content.len() as i64)
            .bind(Json(Vec::<String>::new()))
            .bind(at)
            .execute(&mut *tx)
            .await?;
            let mut agents = Vec::with_capacity(AGENTS);
            for n in 1..=AGENTS {
                let name = format!("history-{suffix}-agent-{n}");
                // The hash of a random value nobody ever holds: no token hashes to it, so nobody can connect
                // as a seeded agent (which is retired anyway), even knowing its name and creation time.
                let token_hash = sha256_hex(&unguessable_hex());
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO agents (name, description, token_hash, created_at, retired_at) \
                     VALUES ($1, 'benchmark history', $2, $3, $3) RETURNING id",
                )
                .bind(name)
                .bind(token_hash)
                .bind(at)
                .fetch_one(&mut *tx)
                .await?;
                agents.push(id);
            }
            let mut task_ids: Vec<i64> = sqlx::query_scalar(composed(insert_tasks))
                .bind(0_i64)
                .bind(i64::from(tasks))
                .bind(&task_prefix)
                .bind(script_id)
                .bind(limits.timeout_seconds())
                .bind(limits.memory_mb())
                .bind(limits.cpu_seconds())
                .bind(limits.max_output_bytes())
                .bind(at)
                .fetch_all(&mut *tx)
                .await?;
            task_ids.sort_unstable();
            tx.commit().await?;
            let mut first = 0;
            while first < runs {
                let end = (first + RUN_BATCH).min(runs);
                sqlx::query(composed(insert_runs.clone()))
                    .bind(first)
                    .bind(end)
                    .bind(runs)
                    .bind(start)
                    .bind(span)
                    .bind(script_id)
                    .bind("history.py")
                    .bind(agents[0])
                    .bind(agents[1])
                    .bind(agents[2])
                    .bind(log_bytes)
                    .bind(limits.timeout_seconds())
                    .bind(limits.memory_mb())
                    .bind(limits.cpu_seconds())
                    .bind(limits.max_output_bytes())
                    .bind(LOGGED_EVERY)
                    .bind(slots)
                    .bind(&task_prefix)
                    .execute(pool)
                    .await?;
                first = end;
            }
            let mut logs = sqlx::query(INSERT_LOGS).bind(script_id);
            for (seq, stream, line) in LOG_LINES {
                logs = logs.bind(seq).bind(stream).bind(line);
            }
            logs.execute(pool).await?;
            Ok::<_, StoreError>((script_id, task_ids))
        })?;
        // What autovacuum does within minutes of a bulk insert (PostgreSQL 13 and later vacuum insert-only
        // tables too), done before the benchmark reads: without statistics the plans are made for empty tables,
        // and without the visibility map the run list's capped count cannot read its index alone and scans
        // the table instead (35 ms instead of 2 for `status=failed` over a million runs). A history built
        // over months is in the vacuumed state; a freshly seeded one would measure a moment real ones pass.
        if let Backend::Postgres(pool) = &*self.backend {
            sqlx::raw_sql("VACUUM (ANALYZE) runs, tasks, run_logs").execute(pool).await?;
        }
        Ok(SeedReport { script_id, task_ids })
    }
}

fn unguessable_hex() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source is available");
    hex::encode(bytes)
}

/// `sql` with every `{time:X}` replaced by `time` applied to the expression `X`.
fn with_times(sql: &str, time: &str) -> String {
    let mut out = String::with_capacity(sql.len() * 2);
    let mut rest = sql;
    while let Some(open) = rest.find("{time:") {
        out.push_str(&rest[..open]);
        let after = &rest[open + "{time:".len()..];
        let close = after.find('}').unwrap_or(after.len());
        out.push_str(&time.replace("{arg}", &after[..close]));
        rest = after.get(close + 1..).unwrap_or_default();
    }
    out.push_str(rest);
    out
}
