//! The agent loop: an initial heartbeat, then periodic heartbeats that renew leases, deliver cancel requests and
//! grant the agent its concurrency, and a claim loop that long-polls for work whenever it holds fewer runs than
//! both its own concurrency and the server's grant. On shutdown it stops claiming,
//! lets running runs finish within a grace period, then stops the rest and hands them back to the server, which
//! queues them again without counting an attempt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use automa_runner::Sandbox;

use crate::backend::{AgentBackend, AgentError};
use crate::protocol::{Assignment, Heartbeat, HeartbeatReply};
use crate::runner::{RunControl, execute};

/// How long one claim may wait at the server.
const CLAIM_WAIT: Duration = Duration::from_secs(30);
/// How long a claim in flight when shutdown comes may still take to answer. A granted claim answers within
/// milliseconds, and waiting less than a grace period (whole seconds) keeps a remote long poll from taking
/// back the runs handed back when the grace period ends.
const LATE_CLAIM_WAIT: Duration = Duration::from_millis(500);
/// Longest pause between attempts to reach an unreachable server.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Runs executed at once.
    pub concurrency: usize,
    /// How long running runs may continue after shutdown is requested.
    pub shutdown_grace: Duration,
    pub hostname: String,
}

/// The runs this agent executes, by id, with the handle that stops each.
pub(crate) type Running = Arc<Mutex<HashMap<i64, Arc<RunControl>>>>;

pub struct Agent<B: AgentBackend> {
    backend: Arc<B>,
    /// The sandbox, or why this host cannot run scripts under the configured profile.
    sandbox: Result<Arc<Sandbox>, String>,
    config: AgentConfig,
    running: Running,
}

impl<B: AgentBackend> Agent<B> {
    pub fn new(backend: B, sandbox: Result<Arc<Sandbox>, String>, config: AgentConfig) -> Agent<B> {
        Agent { backend: Arc::new(backend), sandbox, config, running: Running::default() }
    }

    /// What heartbeats report: the sandbox's layers, or why runs are refused.
    pub fn capabilities(&self) -> serde_json::Value {
        match &self.sandbox {
            Ok(sandbox) => {
                let mut value = serde_json::to_value(sandbox.capabilities()).unwrap_or_default();
                value["profile"] = serde_json::to_value(sandbox.profile()).unwrap_or_default();
                value["ready"] = true.into();
                value
            }
            Err(reason) => serde_json::json!({"ready": false, "refused": reason}),
        }
    }

    /// Runs until `shutdown` becomes true, then drains as described in the module documentation.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let Some(reply) = self.register(&mut shutdown).await else { return };
        let lease = Duration::from_secs(reply.lease_seconds.max(3));
        let (grant, granted) = watch::channel(reply.max_concurrency);
        let heartbeats = tokio::spawn(heartbeat_loop(
            self.backend.clone(),
            self.running.clone(),
            self.heartbeat(false),
            lease,
            grant,
        ));
        match self.sandbox.clone() {
            Ok(sandbox) => self.claim_loop(sandbox, &mut shutdown, granted).await,
            Err(reason) => {
                tracing::error!(%reason, "this agent refuses to run scripts: the sandbox cannot be built");
                let _ = shutdown.wait_for(|stop| *stop).await;
            }
        }
        heartbeats.abort();
    }

    fn heartbeat(&self, initial: bool) -> Heartbeat {
        Heartbeat {
            initial,
            hostname: self.config.hostname.clone(),
            version: crate::VERSION.into(),
            capabilities: self.capabilities(),
            running: Vec::new(),
            concurrency: Some(i64::try_from(self.config.concurrency).unwrap_or(i64::MAX)),
        }
    }

    /// The initial heartbeat, retried until the server answers or shutdown.
    async fn register(&self, shutdown: &mut watch::Receiver<bool>) -> Option<HeartbeatReply> {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.backend.heartbeat(self.heartbeat(true)).await {
                Ok(reply) => return Some(reply),
                Err(error) if error.is_retryable() => {
                    tracing::warn!(%error, "cannot register with the server; retrying")
                }
                Err(error) => {
                    tracing::error!(%error, "the server refused this agent");
                    return None;
                }
            }
            if pause(shutdown, delay).await {
                return None;
            }
            delay = (delay * 2).min(MAX_RETRY_DELAY);
        }
    }

    /// Claims while it holds fewer runs than it may: its own concurrency within the server's latest grant. At
    /// that capacity it sends no claim (a claim the server cannot grant would wait out a whole long poll) and
    /// waits for one of its runs to end, a new grant or shutdown; so it does after the server answers that it
    /// is at capacity (409), which happens when the server counts runs this agent no longer knows of.
    async fn claim_loop(
        &self,
        sandbox: Arc<Sandbox>,
        shutdown: &mut watch::Receiver<bool>,
        mut granted: watch::Receiver<Option<i64>>,
    ) {
        let own = self.config.concurrency.max(1);
        let mut runs = JoinSet::new();
        let mut delay = Duration::from_millis(200);
        loop {
            while runs.try_join_next().is_some() {}
            if runs.len() >= capacity(own, *granted.borrow_and_update()) {
                if wait_for_room(&mut runs, &mut granted, shutdown).await {
                    break;
                }
                continue;
            }
            let claiming = self.backend.clone();
            let mut claim = Box::pin(async move { claiming.claim(CLAIM_WAIT).await });
            let claimed = tokio::select! {
                claimed = &mut claim => Some(claimed),
                _ = shutdown.wait_for(|stop| *stop) => None,
            };
            let Some(claimed) = claimed else {
                // Settled beside the running runs, so it does not hold up their grace period.
                runs.spawn(give_back_late_claim(self.backend.clone(), claim));
                break;
            };
            match claimed {
                Ok(Some(assignment)) => {
                    delay = Duration::from_millis(200);
                    let (backend, sandbox, running) = (self.backend.clone(), sandbox.clone(), self.running.clone());
                    runs.spawn(execute(backend, sandbox, running, assignment));
                }
                Ok(None) => delay = Duration::from_millis(200),
                Err(AgentError::Rejected { status: 409, .. }) => {
                    tracing::debug!(runs = runs.len(), "the server says this agent is at capacity");
                    if wait_for_room(&mut runs, &mut granted, shutdown).await {
                        break;
                    }
                }
                Err(error) => {
                    log_claim_error(&error);
                    if pause(shutdown, delay).await {
                        break;
                    }
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
            }
        }
        self.drain(runs).await;
    }

    /// Lets running runs finish within the grace period, then stops the rest and hands them back.
    async fn drain(&self, mut runs: JoinSet<()>) {
        if runs.is_empty() {
            return;
        }
        tracing::info!(runs = runs.len(), grace = ?self.config.shutdown_grace, "waiting for running runs");
        let all_done = async { while runs.join_next().await.is_some() {} };
        if tokio::time::timeout(self.config.shutdown_grace, all_done).await.is_ok() {
            return;
        }
        let controls: Vec<_> = self.running.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        tracing::warn!(runs = controls.len(), "grace period over: giving the remaining runs back");
        for control in controls {
            control.abandon();
        }
        while runs.join_next().await.is_some() {}
    }
}

/// Settles a claim that was in flight when shutdown came. Dropping it could lose a run the server had already
/// granted (marked running on this agent) but not yet answered with, which would then end `lost` instead of
/// going back to the queue. A stopping server answers its embedded agent's claim at once; a remote server's long
/// poll that has granted nothing is dropped after a moment.
async fn give_back_late_claim<B: AgentBackend>(
    backend: Arc<B>,
    claim: impl Future<Output = Result<Option<Assignment>, AgentError>>,
) {
    let Ok(Ok(Some(assignment))) = tokio::time::timeout(LATE_CLAIM_WAIT, claim).await else { return };
    tracing::info!(run_id = assignment.run_id, "claimed while shutting down: handing the run back");
    if let Err(error) = backend.hand_back(assignment.run_id).await {
        tracing::warn!(run_id = assignment.run_id, %error, "could not hand back a run claimed while shutting down");
    }
}

/// The runs this agent holds at once: its own concurrency, within what the server grants (servers that grant
/// nothing leave it its own).
fn capacity(own: usize, granted: Option<i64>) -> usize {
    granted.and_then(|granted| usize::try_from(granted.max(1)).ok()).map_or(own, |granted| own.min(granted))
}

/// Waits until one of `runs` ends, the server grants a new concurrency, or shutdown; true on shutdown.
async fn wait_for_room(
    runs: &mut JoinSet<()>,
    granted: &mut watch::Receiver<Option<i64>>,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let grant = async {
        // The heartbeats ended (they only do when the agent stops): no grant will come.
        if granted.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = runs.join_next(), if !runs.is_empty() => false,
        _ = grant => false,
        _ = shutdown.wait_for(|stop| *stop) => true,
    }
}

fn log_claim_error(error: &AgentError) {
    tracing::warn!(%error, "claim failed; retrying");
}

/// Sleeps for `delay`; true when shutdown came first.
async fn pause(shutdown: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        _ = shutdown.wait_for(|stop| *stop) => true,
    }
}

/// How often a busy agent heartbeats: a cancel reaches a silent script within about this long.
const BUSY_HEARTBEAT: Duration = Duration::from_secs(1);

/// Heartbeats, renewing the leases of running runs and acting on the answers: every second while runs are
/// going, so cancels are prompt, and three times per lease when idle, which is enough to stay online. Each
/// answer's concurrency grant goes to the claim loop through `grant`.
async fn heartbeat_loop<B: AgentBackend>(
    backend: Arc<B>,
    running: Running,
    template: Heartbeat,
    lease: Duration,
    grant: watch::Sender<Option<i64>>,
) {
    let idle_every = lease / 3;
    let mut ticker = tokio::time::interval(BUSY_HEARTBEAT.min(idle_every));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut last = tokio::time::Instant::now();
    loop {
        ticker.tick().await;
        let ids: Vec<i64> = running.lock().unwrap_or_else(|e| e.into_inner()).keys().copied().collect();
        if ids.is_empty() && last.elapsed() < idle_every {
            continue;
        }
        last = tokio::time::Instant::now();
        let heartbeat = Heartbeat { running: ids, ..template.clone() };
        match backend.heartbeat(heartbeat).await {
            Ok(reply) => {
                grant.send_replace(reply.max_concurrency);
                let running = running.lock().unwrap_or_else(|e| e.into_inner());
                for id in reply.cancel.iter().chain(&reply.gone) {
                    if let Some(control) = running.get(id) {
                        control.cancel();
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "heartbeat failed; runs keep going and the next one retries"),
        }
    }
}
