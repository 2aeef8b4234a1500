//! Runs on the server side: queueing them, and the agent protocol's operations (claim, heartbeat, output,
//! finish) with their rules, shared by the HTTP routes under `/agent/` and the embedded agent so that both
//! kinds of agent are held to the same rules. Also the reaper that turns expired leases into lost runs.

pub mod embedded;
mod presence;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{Notify, watch};

use automa_agent::{Assignment, EnvironmentSpec, FinishReply, Heartbeat, HeartbeatReply, LogBatch, LogsReply, Outcome};
use automa_core::{Role, RunStatus};
use automa_store::{ClaimedRun, Finished, NewLogChunk, NewRun, Run, RunEnd, Store, StoreError};

use crate::{
    api::agents::OFFLINE_AFTER_SECONDS,
    error::{ApiError, ApiResult},
    events::{Event, Hub},
    metrics::Metrics,
    sealing::{self, Sealer},
};

/// The longest an agent's claim over HTTP may be held open.
pub(crate) const MAX_CLAIM_WAIT: Duration = Duration::from_secs(60);
/// How soon the reaper looks again after a look failed (the database down or refusing writes).
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(5);

/// The answer to a claim from an agent that holds as many runs as it may.
pub const AT_CAPACITY: &str = "at capacity: this agent holds as many runs as it may; claim again when one ends";

pub struct Execution {
    pub store: Store,
    /// The application's event hub, where the protocol's operations announce the changes they commit.
    events: Hub,
    sealer: Sealer,
    /// Woken when a run is queued here or (PostgreSQL) anywhere.
    wake: Arc<Notify>,
    lease: chrono::Duration,
    /// What heartbeat replies tell idle agents: see [`idle_heartbeat_seconds`].
    idle_heartbeat_seconds: u64,
    max_log_bytes: i64,
    /// When the reaper looks next (Unix milliseconds; the largest value while it is looking), and what wakes
    /// it sooner: a lease taken here that ends before that.
    reap_at_ms: AtomicI64,
    reap_sooner: Notify,
    /// Secret values to mask per running run, so output is not re-decrypting secrets per batch.
    masks: Mutex<HashMap<i64, Arc<Vec<String>>>>,
    stopping: watch::Receiver<bool>,
    /// This process's counts of runs, fires and requests, for `/metrics`.
    pub metrics: Metrics,
    /// When each refused agent token was last logged.
    refusals: presence::RefusalLog,
}

impl Execution {
    pub fn new(
        store: Store,
        events: Hub,
        sealer: Sealer,
        lease_seconds: u64,
        agent_offline_seconds: u64,
        max_log_bytes: i64,
        stopping: watch::Receiver<bool>,
    ) -> Execution {
        Execution {
            store,
            events,
            sealer,
            wake: Arc::new(Notify::new()),
            lease: chrono::Duration::seconds(i64::try_from(lease_seconds.max(3)).unwrap_or(30)),
            idle_heartbeat_seconds: idle_heartbeat_seconds(lease_seconds.max(3), agent_offline_seconds),
            max_log_bytes,
            reap_at_ms: AtomicI64::new(i64::MAX),
            reap_sooner: Notify::new(),
            masks: Mutex::default(),
            stopping,
            metrics: Metrics::default(),
            refusals: presence::RefusalLog::default(),
        }
    }

    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    pub fn lease_seconds(&self) -> u64 {
        u64::try_from(self.lease.num_seconds()).unwrap_or(30)
    }

    /// Starts listening for runs queued by other servers (PostgreSQL) and the reaper.
    pub async fn start_background(self: &Arc<Self>) -> anyhow::Result<()> {
        let wake = self.wake.clone();
        self.store.listen_for_runs(move || wake.notify_waiters()).await?;
        let this = self.clone();
        tokio::spawn(async move { this.reap_forever().await });
        Ok(())
    }

    /// Queues a run and wakes waiting agents.
    pub async fn enqueue(&self, actor: Option<&automa_store::Actor>, new: NewRun) -> ApiResult<Run> {
        let run = self.store.create_run(actor, new).await?;
        self.published_run(&run);
        Ok(run)
    }

    /// Announces runs another part of the server wrote (the scheduler's fires) and wakes agents for them.
    pub fn publish_runs(&self, runs: &[Run]) {
        for run in runs {
            self.published_run(run);
        }
    }

    /// Announces a run that changed state (its transaction committed), counting it if it ended. Every change
    /// is published once, by the server that made it, so each ending is counted once.
    pub fn published_run(&self, run: &Run) {
        if run.status.is_terminal() {
            self.metrics.run_finished(run);
        }
        self.events.publish(Event::Run(Box::new(run.clone())));
        if run.status == RunStatus::Queued {
            self.wake.notify_waiters();
        }
    }

    /// Wakes the claims waiting at this server, after a change that may let an agent take a run it could not
    /// (PostgreSQL tells the other servers through the transaction's notification).
    pub fn wake_claimers(&self) {
        self.wake.notify_waiters();
    }

    /// Announces a run that ended (or was asked to) and the runs its end queued: its retry, or the runs of
    /// the tasks that run after it.
    pub fn publish_finish(&self, finished: &Finished) {
        if finished.changed {
            self.masks.lock().unwrap_or_else(|e| e.into_inner()).remove(&finished.run.id);
            self.published_run(&finished.run);
        }
        for queued in finished.retry.iter().chain(&finished.downstream) {
            self.published_run(queued);
        }
    }

    /// Resolves once the server begins to shut down.
    pub fn stopping(&self) -> impl Future<Output = ()> + Send + use<> {
        let mut stopping = self.stopping.clone();
        async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        }
    }

    /// Waits up to `wait` (callers cap it) for a run `agent_id` may take, answering at once when one is
    /// waiting. Woken by queued runs rather than polling; sleeps no longer than until the next retry becomes
    /// due. An agent that
    /// already holds as many runs as it may is answered at once with a conflict rather than held: a claim held
    /// open would not be woken when one of its runs ends, and the agent would wait out the whole poll while
    /// work it may take is queued.
    pub async fn claim(&self, agent_id: i64, wait: Duration) -> ApiResult<Option<Assignment>> {
        let received = tokio::time::Instant::now();
        let deadline = received + wait;
        let mut stopping = self.stopping.clone();
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let claiming = tokio::time::Instant::now();
            let looked = automa_store::now();
            if let Some(claimed) = self.store.claim_run(agent_id, self.lease).await? {
                self.lease_taken(claimed.run.lease_until.unwrap_or_else(|| Utc::now() + self.lease));
                let held = claiming - received;
                match self.assignment(agent_id, claimed, held).await? {
                    Some(assignment) => return Ok(Some(assignment)),
                    None => continue,
                }
            }
            if self.store.agent_at_capacity(agent_id).await? {
                return Err(ApiError::Conflict(AT_CAPACITY.into()));
            }
            // From when the claim looked, not from now: a run that became due in between, already past, is taken
            // by the next pass at once, which looks from later and so does not come back to it.
            let mut until = deadline;
            if let Some(next) = self.store.next_queued_at(looked).await? {
                let due_in = (next - Utc::now()).to_std().unwrap_or_default();
                until = until.min(tokio::time::Instant::now() + due_in);
            }
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep_until(until) => {}
                _ = stopping.wait_for(|stop| *stop) => return Ok(None),
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// Turns a claimed run into what the agent executes, with its secrets' values. A run naming a secret
    /// that does not exist, does not decrypt, or whose policy refuses this run or this agent fails at once;
    /// `None` tells the caller to claim again.
    async fn assignment(&self, agent_id: i64, claimed: ClaimedRun, held: Duration) -> ApiResult<Option<Assignment>> {
        let ClaimedRun { run, content, environment, last_log_seq, payload } = claimed;
        let names = run.params.secrets().as_slice().to_vec();
        let mut problem = self.secret_refusal(agent_id, &run).await?;
        let sealed = if problem.is_some() { Vec::new() } else { self.store.sealed_secrets(&names).await? };
        let mut env = run.params.env().as_map().clone();
        let mut values = Vec::new();
        if problem.is_none() {
            problem = names
                .iter()
                .find(|name| !sealed.iter().any(|s| &s.name == *name))
                .map(|name| format!("secret '{name}' does not exist"));
        }
        for secret in &sealed {
            match self.sealer.unseal(secret) {
                Ok(value) => {
                    values.push(value.clone());
                    env.insert(secret.name.clone(), value);
                }
                Err(error) => problem = Some(error.to_string()),
            }
        }
        if let Some(problem) = problem {
            let finished = self.store.finish_run(run.id, Some(agent_id), &RunEnd::failed(&problem)).await?;
            self.publish_finish(&finished);
            return Ok(None);
        }
        self.masks.lock().unwrap_or_else(|e| e.into_inner()).insert(run.id, Arc::new(sealing::mask_order(values)));
        self.metrics.run_started(&run);
        self.published_run(&run);
        Ok(Some(Assignment {
            run_id: run.id,
            attempt: run.attempt,
            filename: run.filename,
            content,
            args: run.params.args().clone(),
            env,
            limits: run.params.limits(),
            network: run.params.network(),
            warm: run.params.warm(),
            last_log_seq,
            payload,
            held_ms: Some(i64::try_from(held.as_millis()).unwrap_or(0)),
            environment: environment.map(|(lock, requires_python)| EnvironmentSpec { lock, requires_python }),
        }))
    }

    /// Why the run may not receive its secrets on this agent, checked again when the values are handed out
    /// although the claim statement already applied the agent part: the policy may have narrowed since the
    /// run was queued, and a second, independent check keeps one mistake from leaking a value. A task's run
    /// needs the task in every secret's policy; a run without a task (ad-hoc, or one whose task was deleted)
    /// needs an active admin as its creator, as `POST /execute` does.
    async fn secret_refusal(&self, agent_id: i64, run: &Run) -> ApiResult<Option<String>> {
        if run.params.secrets().as_slice().is_empty() {
            return Ok(None);
        }
        let agent = self.store.get_agent(agent_id).await?;
        if run.task_id.is_none() {
            let creator = match run.created_by {
                Some(user_id) => match self.store.get_user(user_id).await {
                    Ok(user) => Some(user),
                    Err(StoreError::NotFound) => None,
                    Err(other) => return Err(other.into()),
                },
                None => None,
            };
            if !creator.is_some_and(|user| user.active && user.role == Role::Admin) {
                return Ok(Some("only an admin's ad-hoc run may receive secrets".into()));
            }
        }
        let infos = self.store.secret_infos(run.params.secrets().as_slice()).await?;
        for info in &infos {
            let policy = info.policy();
            if let Some(task_id) = run.task_id.filter(|task_id| !policy.allows_task(*task_id)) {
                return Ok(Some(format!("secret '{}' does not allow task {task_id}", info.name)));
            }
            if !policy.allows_agent(&agent) {
                return Ok(Some(format!("secret '{}' may not be given to agent '{}'", info.name, agent.name)));
            }
        }
        Ok(None)
    }

    /// Records a heartbeat, renews the leases of the runs the agent reports, and on an agent's first
    /// heartbeat after a start marks the runs it held before as lost: it cannot be running them any more.
    /// The reply grants the agent its effective concurrency.
    pub async fn heartbeat(&self, agent_id: i64, heartbeat: Heartbeat) -> ApiResult<HeartbeatReply> {
        let seen = self
            .store
            .agent_seen(
                agent_id,
                automa_store::now() - chrono::Duration::seconds(OFFLINE_AFTER_SECONDS),
                &heartbeat.hostname,
                &heartbeat.version,
                &heartbeat.capabilities,
                heartbeat.concurrency,
            )
            .await?;
        self.note_presence(&seen, heartbeat.initial).await;
        let agent = seen.agent;
        if heartbeat.initial {
            let lost = self.store.lose_runs(automa_store::now(), Some(agent_id)).await?;
            lost.iter().for_each(|finished| self.publish_finish(finished));
            self.note_lost(&lost).await;
            self.events.publish(Event::Agent { id: agent_id });
        }
        let renewal = self.store.renew_leases(agent_id, &heartbeat.running, self.lease).await?;
        if !heartbeat.running.is_empty() {
            // Sooner than the reaper planned only when the lease was shortened across a restart.
            self.lease_taken(Utc::now() + self.lease);
        }
        Ok(HeartbeatReply {
            lease_seconds: self.lease_seconds(),
            cancel: renewal.cancel,
            gone: renewal.gone,
            max_concurrency: Some(agent.effective_concurrency()),
            idle_heartbeat_seconds: Some(self.idle_heartbeat_seconds),
        })
    }

    /// Stores a batch of output with secret values masked. Masking happens here, not on the agent, so an agent
    /// on another host cannot skip it.
    pub async fn append_logs(&self, agent_id: i64, run_id: i64, batch: LogBatch) -> ApiResult<LogsReply> {
        let masks = self.masks_for(agent_id, run_id).await?;
        let mut chunks = Vec::with_capacity(batch.chunks.len());
        for chunk in batch.chunks {
            if !matches!(chunk.stream.as_str(), "stdout" | "stderr" | "system") {
                return Err(ApiError::invalid("chunks.stream", "must be stdout, stderr or system"));
            }
            let data = if masks.is_empty() { chunk.data } else { sealing::mask(&chunk.data, &masks) };
            chunks.push(NewLogChunk { seq: chunk.seq, stream: chunk.stream, ts: chunk.ts, data });
        }
        let appended = self.store.append_logs(run_id, agent_id, &chunks, self.max_log_bytes).await?;
        if let Some(last) = appended.inserted.last() {
            self.events.publish(Event::Output { run_id, last_seq: last.seq });
        }
        Ok(LogsReply { cancel_requested: appended.cancel_requested })
    }

    async fn masks_for(&self, agent_id: i64, run_id: i64) -> ApiResult<Arc<Vec<String>>> {
        if let Some(masks) = self.masks.lock().unwrap_or_else(|e| e.into_inner()).get(&run_id) {
            return Ok(masks.clone());
        }
        // Claimed by another server, or before a restart: derive the masks from the database, but only for the
        // agent that holds the run, so another agent cannot make the server decrypt a run's secrets on demand.
        let run = match self.store.get_run(run_id).await {
            Ok(run) if run.agent_id == Some(agent_id) => run,
            Ok(_) | Err(StoreError::NotFound) => {
                return Err(ApiError::Conflict(format!("run {run_id} is not held by this agent; stop it")));
            }
            Err(other) => return Err(other.into()),
        };
        let sealed = self.store.sealed_secrets(run.params.secrets().as_slice()).await?;
        let values = sealed.iter().filter_map(|secret| self.sealer.unseal(secret).ok()).collect();
        let masks = Arc::new(sealing::mask_order(values));
        if run.status == RunStatus::Running {
            self.masks.lock().unwrap_or_else(|e| e.into_inner()).insert(run_id, masks.clone());
        }
        Ok(masks)
    }

    /// Ends a run the agent holds. Idempotent: a report about a run that already ended changes nothing.
    pub async fn finish(&self, agent_id: i64, run_id: i64, outcome: Outcome) -> ApiResult<FinishReply> {
        if let Some(setup_ms) = outcome.setup_ms.and_then(|ms| u64::try_from(ms).ok()) {
            self.metrics.sandbox_setup(Duration::from_millis(setup_ms));
        }
        if outcome.abandoned {
            return self.hand_back(agent_id, run_id).await;
        }
        let ended_ago = agent_duration("ended_ms_ago", outcome.ended_ms_ago)?;
        let elapsed = agent_duration("elapsed_ms", outcome.elapsed_ms)?;
        agent_duration("environment_ms", outcome.environment_ms)?;
        let end = RunEnd {
            status: outcome.status(),
            exit_code: outcome.exit_code,
            signal: outcome.signal,
            timed_out: outcome.timed_out,
            oom_killed: outcome.oom_killed,
            max_rss_kb: outcome.max_rss_kb,
            cpu_ms: outcome.cpu_ms,
            output_bytes: outcome.output_bytes,
            truncated: outcome.truncated,
            error: outcome.explanation(),
            environment_ms: outcome.environment_ms,
            warm_start: outcome.warm_start,
            ended_ago,
            elapsed,
            // Stopped only because the agent could not renew the lease: the retry waits for the lease's end as
            // after any loss the server did not see end, which the fence's margin is there to cover.
            retry_after_lease: outcome.lease_lost,
        };
        let finished = match self.store.finish_run(run_id, Some(agent_id), &end).await {
            Err(StoreError::NotFound) => return Err(ApiError::not_found("run")),
            other => other?,
        };
        self.publish_finish(&finished);
        Ok(FinishReply { status: finished.run.status.to_string() })
    }

    /// Takes back a run its agent stopped because it is shutting down and queues it again (the store's
    /// `hand_back_run` says how). Idempotent: a run that is no longer running on this agent is left as it is.
    pub async fn hand_back(&self, agent_id: i64, run_id: i64) -> ApiResult<FinishReply> {
        let agent = self.store.get_agent(agent_id).await?;
        let reason = if agent.embedded {
            "the server shut down; run handed back and requeued".to_owned()
        } else {
            format!("agent '{}' shut down; run handed back and requeued", agent.name)
        };
        match self.store.hand_back_run(run_id, agent_id, &reason).await? {
            Some(handed) => {
                tracing::info!(run_id, agent = %agent.name, status = %handed.run.status, "run handed back");
                self.publish_finish(&handed);
                Ok(FinishReply { status: handed.run.status.to_string() })
            }
            // Another agent's runs, and runs that do not exist, get the same answer.
            None => match self.store.get_run(run_id).await {
                Ok(run) if run.agent_id == Some(agent_id) => Ok(FinishReply { status: run.status.to_string() }),
                Ok(_) | Err(StoreError::NotFound) => {
                    Err(ApiError::Conflict(format!("run {run_id} is not held by this agent")))
                }
                Err(other) => Err(other.into()),
            },
        }
    }

    /// Wakes the reaper if a lease taken here ends before its next look. One taken while it looks wakes it
    /// too: the look may have read the database before the lease was written. Sequentially consistent, as
    /// the reaper's "looking" and the lease's write must not be seen out of order by the other side.
    fn lease_taken(&self, until: chrono::DateTime<Utc>) {
        if until.timestamp_millis() < self.reap_at_ms.load(Ordering::SeqCst) {
            self.reap_sooner.notify_one();
        }
    }

    /// Marks runs with expired leases lost, and agents silent past the offline threshold offline, as soon as
    /// the earliest lease ends or the longest-silent agent crosses the threshold. Between those it sleeps, but
    /// no longer than the threshold: an agent first heard from after a look goes silent a threshold after it
    /// at the earliest, so the next look sees it in time (a server whose clock is behind ours makes that look
    /// later by the difference, no more). A lease taken here after a look wakes it if it ends sooner. On
    /// PostgreSQL another server may take leases, which end a lease after the look at the earliest, so there
    /// it sleeps no longer than a lease either; a SQLite file has this server alone. A killed agent's run is
    /// so lost within moments of its lease's end, and an idle server looks about once a minute and a half on
    /// SQLite, twice a minute on PostgreSQL.
    async fn reap_forever(self: Arc<Self>) {
        let offline_after = chrono::Duration::seconds(OFFLINE_AFTER_SECONDS);
        let longest = if self.store.shared_by_servers() { self.lease.min(offline_after) } else { offline_after };
        let longest = longest.to_std().unwrap_or(Duration::from_secs(30));
        let mut stopping = self.stopping.clone();
        loop {
            self.reap_at_ms.store(i64::MAX, Ordering::SeqCst);
            let reaped = match self.store.lose_runs(automa_store::now(), None).await {
                Ok(lost) => {
                    lost.iter().for_each(|finished| self.publish_finish(finished));
                    self.note_lost(&lost).await;
                    self.note_silent_agents().await
                }
                Err(error) => Err(error),
            };
            let next = match reaped {
                Ok(()) => self.store.next_reap_at(offline_after).await,
                Err(error) => Err(error),
            };
            let pause = match next {
                // Just past it: the reaper takes leases that ended, and agents silent since, strictly before its
                // time. A time already past is one this look could not act on (something changed between its
                // statements): a second later, not a spin.
                Ok(Some(at)) => match (at - Utc::now()).to_std() {
                    Ok(until) => longest.min(until + Duration::from_millis(5)),
                    Err(_) => longest.min(Duration::from_secs(1)),
                },
                Ok(None) => longest,
                // After a failure the next look waits a while, so a database that is down is not hammered, and
                // not the longest pause, so runs lost meanwhile are not much later for it once it is back.
                Err(error) => {
                    tracing::warn!(%error, "reaping expired leases or silent agents failed; trying again later");
                    longest.min(RETRY_AFTER_ERROR)
                }
            };
            let planned = Utc::now() + chrono::Duration::from_std(pause).unwrap_or(offline_after);
            self.reap_at_ms.store(planned.timestamp_millis(), Ordering::SeqCst);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                () = self.reap_sooner.notified() => {}
                _ = stopping.wait_for(|stop| *stop) => return,
            }
        }
    }
}

/// How often an idle agent should heartbeat. It renews no lease, so only its presence counts: three
/// heartbeats within the silence after which servers show it offline ([`OFFLINE_AFTER_SECONDS`]) and within
/// the one this server reports (`agent_offline_seconds`, 0 when off), and no more than once per lease, which
/// an operator shortens for quicker reactions (an idle agent hears of a changed grant at its next heartbeat).
fn idle_heartbeat_seconds(lease_seconds: u64, agent_offline_seconds: u64) -> u64 {
    let shown_offline = OFFLINE_AFTER_SECONDS.unsigned_abs() / 3;
    let reported_offline = if agent_offline_seconds == 0 { u64::MAX } else { agent_offline_seconds / 3 };
    lease_seconds.min(shown_offline).min(reported_offline).max(1)
}

/// The longest time an agent may report for a run's duration or for how long ago it ended: far beyond any real
/// run or outage, and far within what date arithmetic can represent.
const MAX_AGENT_MS: i64 = 10 * 366 * 24 * 3600 * 1000;

/// A duration an agent reported, checked: between 0 and [`MAX_AGENT_MS`] milliseconds.
fn agent_duration(field: &str, ms: Option<i64>) -> ApiResult<Option<chrono::Duration>> {
    match ms {
        None => Ok(None),
        Some(ms) if (0..=MAX_AGENT_MS).contains(&ms) => Ok(Some(chrono::Duration::milliseconds(ms))),
        Some(_) => Err(ApiError::invalid(field, format!("must be between 0 and {MAX_AGENT_MS} milliseconds"))),
    }
}
