//! A run's output: append-only chunks numbered by the agent, stored once each whatever number of times a
//! batch is resent, and capped per run with a final `system` chunk that says what was cut.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use crate::{LogAppend, LogChunk, Store, StoreError, StoreResult, WritePool, dispatch};

/// Rows per INSERT: well under SQLite's limit on bound parameters.
const INSERT_BATCH: usize = 1000;

/// A chunk as an agent sends it.
#[derive(Debug, Clone)]
pub struct NewLogChunk {
    pub seq: i64,
    pub stream: String,
    pub ts: DateTime<Utc>,
    pub data: String,
}

impl Store {
    /// Appends chunks to the output of a run that is running and held by `agent_id`; anything else (a
    /// finished run, a run handed to another agent) is refused, so an agent cannot write into history. The
    /// check locks the run's row for the rest of the transaction, so a finish cannot slip in between and
    /// concurrent batches of one run count their bytes one after the other. Chunks already stored (by `seq`)
    /// are skipped, so resending a batch after a lost response is harmless. Past `cap` bytes, the chunk that
    /// crosses it becomes a `system` note and later ones are dropped. Returns the chunks actually stored.
    pub async fn append_logs(
        &self,
        run_id: i64,
        agent_id: i64,
        chunks: &[NewLogChunk],
        cap: i64,
    ) -> StoreResult<LogAppend> {
        dispatch!(self, pool => {
            let mut tx = pool.begin_with_lock().await?;
            let held: Option<(i64, bool, bool)> = sqlx::query_as(
                "UPDATE runs SET log_bytes = log_bytes WHERE id = $1 AND agent_id = $2 AND status = 'running' \
                 RETURNING log_bytes, log_capped, cancel_requested",
            )
            .bind(run_id)
            .bind(agent_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((mut bytes, mut capped, cancel_requested)) = held else {
                let run: Option<(String, Option<i64>)> = sqlx::query_as("SELECT status, agent_id FROM runs WHERE id = $1")
                    .bind(run_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                // Another agent's runs, and runs that do not exist, get the same answer: an agent learns nothing
                // about runs that are not its own.
                return Err(match run {
                    Some((status, holder)) if holder == Some(agent_id) => {
                        StoreError::Conflict(format!("run {run_id} is {status}: it takes no more output; stop it"))
                    }
                    _ => StoreError::Conflict(format!("run {run_id} is not held by this agent; stop it")),
                });
            };
            let (Some(first), Some(last)) = (chunks.iter().map(|c| c.seq).min(), chunks.iter().map(|c| c.seq).max()) else {
                tx.commit().await?;
                return Ok(LogAppend { inserted: Vec::new(), cancel_requested });
            };
            // A set, so the duplicate check stays linear in the batch; it also absorbs a seq repeated within
            // one batch, which would otherwise be counted against the cap twice.
            let mut seen: HashSet<i64> = sqlx::query_scalar("SELECT seq FROM run_logs WHERE run_id = $1 AND seq >= $2 AND seq <= $3")
                .bind(run_id)
                .bind(first)
                .bind(last)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect();
            let mut inserted = Vec::new();
            for chunk in chunks {
                if capped || !seen.insert(chunk.seq) {
                    continue;
                }
                let size = chunk.data.len() as i64;
                if bytes + size > cap {
                    capped = true;
                    let note = format!("log limit of {cap} bytes reached: later output of this run is not stored\n");
                    inserted.push(LogChunk { seq: chunk.seq, stream: "system".into(), ts: chunk.ts, data: note });
                } else {
                    bytes += size;
                    inserted.push(LogChunk { seq: chunk.seq, stream: chunk.stream.clone(), ts: chunk.ts, data: chunk.data.clone() });
                }
            }
            for rows in inserted.chunks(INSERT_BATCH) {
                let mut insert = sqlx::QueryBuilder::new("INSERT INTO run_logs (run_id, seq, stream, ts, data) ");
                insert.push_values(rows, |mut row, chunk| {
                    row.push_bind(run_id).push_bind(chunk.seq).push_bind(&chunk.stream).push_bind(chunk.ts).push_bind(&chunk.data);
                });
                insert.push(" ON CONFLICT (run_id, seq) DO NOTHING");
                insert.build().execute(&mut *tx).await?;
            }
            if !inserted.is_empty() {
                sqlx::query("UPDATE runs SET log_bytes = $2, log_capped = $3 WHERE id = $1")
                    .bind(run_id)
                    .bind(bytes)
                    .bind(capped)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(LogAppend { inserted, cancel_requested })
        })
    }

    /// Up to `limit` chunks of a run's output after `after`, in order.
    pub async fn run_logs(&self, run_id: i64, after: i64, limit: i64) -> StoreResult<Vec<LogChunk>> {
        dispatch!(self, pool => {
            Ok(sqlx::query_as("SELECT seq, stream, ts, data FROM run_logs WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3")
                .bind(run_id)
                .bind(after)
                .bind(limit)
                .fetch_all(pool)
                .await?)
        })
    }
}
