//! The agent loop: an initial heartbeat, then periodic heartbeats that renew leases, deliver cancel requests and
//! grant the agent its concurrency, and a claim loop that long-polls for work whenever it holds fewer runs than
//! both its own concurrency and the server's grant. On shutdown it stops claiming,
//! lets running runs finish within a grace period, then stops the rest and hands them back to the server, which
//! queues them again without counting an attempt, and says goodbye so the server shows it offline at once.
//! When the server refuses the agent's token (the agent was disabled or retired), whichever request met the
//! refusal, the agent stops every run at once and [`Agent::run`] returns the refusal: nothing it would send
//! could be taken any more.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use automa_runner::Sandbox;

use crate::backend::{AgentBackend, AgentError};
use crate::environments::{Environments, PackageSettings, PackagesReport};
use crate::protocol::{Assignment, FinishReply, Heartbeat, HeartbeatReply, LogBatch, LogsReply, Outcome};
use crate::runner::{RunControl, Stop, execute};
use crate::sandbox::SandboxStatus;

/// How long one claim may wait at the server.
const CLAIM_WAIT: Duration = Duration::from_secs(30);
/// How long a claim in flight when shutdown comes may still take to answer. A granted claim answers within
/// milliseconds, and waiting less than a grace period (whole seconds) keeps a remote long poll from taking
/// back the runs handed back when the grace period ends.
const LATE_CLAIM_WAIT: Duration = Duration::from_millis(500);
/// How long the first heartbeat may take to be answered: no lease depends on it yet.
const REGISTER_PATIENCE: Duration = Duration::from_secs(30);
/// Heartbeats sent at once at most: the next is not held up by one a slow server has yet to answer, and a
/// server that answers nothing does not collect them without bound.
const HEARTBEATS_IN_FLIGHT: usize = 3;
/// Longest pause between attempts to reach an unreachable server.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

/// How long running runs may finish after shutdown is requested, unless configured otherwise
/// (`AUTOMA_SHUTDOWN_GRACE_SECONDS`).
pub const DEFAULT_SHUTDOWN_GRACE_SECONDS: u64 = 30;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Runs executed at once.
    pub concurrency: usize,
    /// How long running runs may continue after shutdown is requested.
    pub shutdown_grace: Duration,
    pub hostname: String,
    /// Where runs' packages come from and where their environments are kept.
    pub packages: PackageSettings,
}

/// The runs this agent executes, by id, with the handle that stops each.
pub(crate) type Running = Arc<RunningRuns>;

/// The runs executing, and a count of runs started that the heartbeats and the watchdog wait on while none
/// runs, so that an idle agent sleeps instead of ticking.
#[derive(Default)]
pub(crate) struct RunningRuns {
    runs: Mutex<HashMap<i64, Arc<RunControl>>>,
    started: watch::Sender<u64>,
}

impl RunningRuns {
    pub(crate) fn lock(&self) -> std::sync::LockResult<std::sync::MutexGuard<'_, HashMap<i64, Arc<RunControl>>>> {
        self.runs.lock()
    }

    /// Adds a run and wakes whoever waits for one.
    pub(crate) fn start(&self, run_id: i64, control: Arc<RunControl>) {
        self.lock().unwrap_or_else(|e| e.into_inner()).insert(run_id, control);
        self.started.send_modify(|started| *started += 1);
    }

    fn is_empty(&self) -> bool {
        self.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// Sees every run started after it was taken.
    fn starts(&self) -> watch::Receiver<u64> {
        self.started.subscribe()
    }
}

pub struct Agent<B: AgentBackend> {
    backend: Arc<Guarded<B>>,
    /// The sandbox, or why this host cannot run scripts under the configured profile.
    sandbox: Result<Arc<Sandbox>, String>,
    /// The environments of runs that need packages, or why this agent cannot keep them.
    environments: Result<Environments, String>,
    config: AgentConfig,
    running: Running,
}

impl<B: AgentBackend> Agent<B> {
    pub fn new(backend: B, sandbox: Result<Arc<Sandbox>, String>, config: AgentConfig) -> Agent<B> {
        let backend = Guarded { inner: backend, refused: watch::channel(None).0 };
        let environments = sandbox
            .clone()
            .and_then(|sandbox| Environments::new(config.packages.clone(), sandbox))
            .inspect_err(|reason| tracing::warn!(%reason, "runs that need packages will fail on this agent"));
        Agent { backend: Arc::new(backend), sandbox, environments, config, running: Running::default() }
    }

    /// What `/ready` reports: the sandbox's layers, or why runs are refused.
    pub fn sandbox_status(&self) -> SandboxStatus {
        SandboxStatus::of(&self.sandbox)
    }

    /// What heartbeats report: the sandbox's status and what the agent has for runs that need packages.
    pub fn capabilities(&self) -> AgentCapabilities {
        AgentCapabilities { sandbox: self.sandbox_status(), packages: packages(&self.environments) }
    }

    /// The environment cache, for the agent's owner (tests and benchmarks count its builds).
    pub fn environments(&self) -> Option<&Environments> {
        self.environments.as_ref().ok()
    }

    /// Runs until `shutdown` becomes true, then drains as described in the module documentation. An error when
    /// the server refused the agent (at start-up or later) or its answers make no sense to it: the agent cannot
    /// go on, and a supervisor should hear of it.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> Result<(), AgentError> {
        let (mut stop, stopper) = self.stop_on(shutdown);
        let registered = self.register(&mut stop).await;
        let reply = match registered {
            Ok(Some(reply)) => reply,
            Ok(None) => {
                stopper.abort();
                return self.refusal().map_or(Ok(()), Err);
            }
            Err(error) => {
                stopper.abort();
                return Err(error);
            }
        };
        let lease = Duration::from_secs(reply.lease_seconds.max(3));
        let (grant, granted) = watch::channel(reply.max_concurrency);
        let heartbeats = tokio::spawn(heartbeat_loop(
            self.backend.clone(),
            self.running.clone(),
            self.heartbeat(false),
            self.environments.clone(),
            Cadence::new(lease, reply.idle_heartbeat_seconds),
            grant,
        ));
        match self.sandbox.clone() {
            Ok(sandbox) => self.claim_loop(sandbox, &mut stop, granted).await,
            Err(reason) => {
                tracing::error!(%reason, "this agent refuses to run scripts: the sandbox cannot be built");
                let _ = stop.wait_for(|stop| *stop).await;
            }
        }
        heartbeats.abort();
        stopper.abort();
        if let Some(refusal) = self.refusal() {
            return Err(refusal);
        }
        if let Err(error) = self.backend.goodbye().await {
            tracing::warn!(%error, "could not say goodbye: the server shows this agent offline once its heartbeats are missed");
        }
        Ok(())
    }

    /// A stop signal that turns true on `shutdown` or when the server refuses the agent.
    fn stop_on(&self, mut shutdown: watch::Receiver<bool>) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
        let (stop, stopping) = watch::channel(false);
        let mut refused = self.backend.refused.subscribe();
        let stopper = tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => {}
                _ = refused.wait_for(Option::is_some) => {}
            }
            stop.send_replace(true);
        });
        (stopping, stopper)
    }

    /// The refusal that stopped the agent, if one did.
    fn refusal(&self) -> Option<AgentError> {
        self.backend.refused.borrow().clone()
    }

    fn heartbeat(&self, initial: bool) -> Heartbeat {
        Heartbeat {
            initial,
            hostname: self.config.hostname.clone(),
            version: crate::VERSION.into(),
            capabilities: serde_json::to_value(self.capabilities()).unwrap_or_default(),
            running: Vec::new(),
            concurrency: Some(i64::try_from(self.config.concurrency).unwrap_or(i64::MAX)),
        }
    }

    /// The initial heartbeat, retried while the server cannot be reached; `None` when shutdown came first, an
    /// error when the server refused it.
    async fn register(&self, shutdown: &mut watch::Receiver<bool>) -> Result<Option<HeartbeatReply>, AgentError> {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.backend.heartbeat(self.heartbeat(true), REGISTER_PATIENCE).await {
                Ok(reply) => return Ok(Some(reply)),
                Err(error) if error.is_retryable() => {
                    tracing::warn!(%error, "cannot register with the server; retrying")
                }
                Err(error) => return Err(error),
            }
            if pause(shutdown, delay).await {
                return Ok(None);
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
            let claim_sent = tokio::time::Instant::now();
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
                    let environments = self.environments.clone();
                    runs.spawn(execute(backend, sandbox, environments, running, assignment, claim_sent));
                }
                Ok(None) => delay = Duration::from_millis(200),
                Err(AgentError::Rejected { status: 409, .. }) => {
                    tracing::debug!(runs = runs.len(), "the server says this agent is at capacity");
                    // The server may count a run this agent no longer holds (its result could not be delivered)
                    // until that run's lease ends: look again after a while even if nothing here changes.
                    let room = tokio::time::timeout(MAX_RETRY_DELAY, wait_for_room(&mut runs, &mut granted, shutdown));
                    if room.await == Ok(true) {
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

    /// Lets running runs finish within the grace period, then stops the rest and hands them back. A refused
    /// agent has no grace to give: the server takes nothing from it any more, so its runs stop at once.
    async fn drain(&self, mut runs: JoinSet<()>) {
        let refused = self.refusal().is_some();
        // The set also holds a claim that was in flight at shutdown: count only what is running.
        let running = self.controls().len();
        if refused {
            tracing::error!(runs = running, "the server refused this agent: stopping every run now");
        } else if running > 0 {
            tracing::info!(runs = running, grace = ?self.config.shutdown_grace, "waiting for running runs");
        }
        let all_done = async { while runs.join_next().await.is_some() {} };
        let grace = if refused { Duration::ZERO } else { self.config.shutdown_grace };
        if tokio::time::timeout(grace, all_done).await.is_ok() {
            return;
        }
        let controls = self.controls();
        if !refused {
            tracing::warn!(runs = controls.len(), "grace period over: giving the remaining runs back");
        }
        // A refused agent's runs are no longer its own: the server has ended them (a disabled agent's end
        // `cancelled`), so there is nothing to hand back.
        let reason = if refused { Stop::Gone } else { Stop::HandedBack };
        for control in controls {
            control.stop(reason);
        }
        while runs.join_next().await.is_some() {}
    }

    fn controls(&self) -> Vec<Arc<RunControl>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }
}

/// The backend as the agent's loops use it: a refusal of the agent's token, met by whichever request (a
/// heartbeat, a claim, a run's output or result), is noted once for the whole agent, which then stops.
pub(crate) struct Guarded<B> {
    inner: B,
    refused: watch::Sender<Option<AgentError>>,
}

impl<B: AgentBackend> Guarded<B> {
    fn note<T>(&self, result: Result<T, AgentError>) -> Result<T, AgentError> {
        if let Err(error @ AgentError::Refused { .. }) = &result {
            self.refused.send_if_modified(|refused| {
                let first = refused.is_none();
                if first {
                    *refused = Some(error.clone());
                }
                first
            });
        }
        result
    }
}

impl<B: AgentBackend> AgentBackend for Guarded<B> {
    async fn heartbeat(&self, heartbeat: Heartbeat, patience: Duration) -> Result<HeartbeatReply, AgentError> {
        self.note(self.inner.heartbeat(heartbeat, patience).await)
    }

    async fn claim(&self, wait: Duration) -> Result<Option<Assignment>, AgentError> {
        self.note(self.inner.claim(wait).await)
    }

    async fn append_logs(&self, run_id: i64, batch: LogBatch) -> Result<LogsReply, AgentError> {
        self.note(self.inner.append_logs(run_id, batch).await)
    }

    async fn finish(&self, run_id: i64, outcome: Outcome) -> Result<FinishReply, AgentError> {
        self.note(self.inner.finish(run_id, outcome).await)
    }

    async fn hand_back(&self, run_id: i64) -> Result<FinishReply, AgentError> {
        self.note(self.inner.hand_back(run_id).await)
    }

    async fn goodbye(&self) -> Result<(), AgentError> {
        self.inner.goodbye().await
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

/// The `packages` part of the capabilities: uv's version (null without uv) and the environment cache's counts.
fn packages(environments: &Result<Environments, String>) -> PackagesReport {
    match environments {
        Ok(environments) => environments.report(),
        Err(reason) => PackagesReport { unavailable: Some(reason.clone()), ..PackagesReport::default() },
    }
}

/// What heartbeats report about an agent.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentCapabilities {
    #[serde(flatten)]
    pub sandbox: SandboxStatus,
    pub packages: PackagesReport,
}

/// How often a busy agent heartbeats: a cancel reaches a silent script within about this long.
const BUSY_HEARTBEAT: Duration = Duration::from_secs(1);

/// How long after its last renewal this agent stops a run it could not renew (the fence), for a lease of
/// `lease`: two thirds of it. The server's reaper marks the run lost, and may give it to another agent, once the
/// lease has expired by the clock of whichever server reaps, so the remaining third must cover that server's
/// clock running ahead of the one that wrote the lease, the stop itself (killing the sandbox takes
/// milliseconds) and this watchdog's tick. A renewal counts from when its request was sent, which the server
/// can only have received later, so the measured age is never less than the true one.
pub(crate) fn fence(lease: Duration) -> Duration {
    lease * 2 / 3
}

/// The shortest lease and idle heartbeat period any server has announced, in milliseconds: servers should all
/// agree, and if they do not, the shortest lease is the one that can expire first and the shortest period the
/// one that keeps the agent online on every server.
#[derive(Clone)]
struct Cadence {
    lease_ms: Arc<AtomicU64>,
    idle_ms: Arc<AtomicU64>,
    /// Heartbeats failed in a row, and a signal for each failure: an idle agent tries again sooner.
    failures: Arc<AtomicU32>,
    failed: Arc<Notify>,
}

impl Cadence {
    /// From the first server's answer; one that does not say how often an idle agent heartbeats is an older
    /// server, which expects a third of the lease.
    fn new(lease: Duration, idle_heartbeat_seconds: Option<u64>) -> Cadence {
        let millis = |duration: Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        let idle_ms = idle_heartbeat_seconds.map_or(millis(lease / 3), idle_millis);
        Cadence {
            lease_ms: Arc::new(AtomicU64::new(millis(lease))),
            idle_ms: Arc::new(AtomicU64::new(idle_ms)),
            failures: Arc::default(),
            failed: Arc::default(),
        }
    }

    /// Takes in what a later heartbeat reply announced.
    fn heard(&self, lease_seconds: u64, idle_heartbeat_seconds: Option<u64>) {
        self.failures.store(0, Ordering::Release);
        self.lease_ms.fetch_min(lease_seconds.max(3).saturating_mul(1000), Ordering::AcqRel);
        if let Some(seconds) = idle_heartbeat_seconds {
            self.idle_ms.fetch_min(idle_millis(seconds), Ordering::AcqRel);
        }
    }

    fn heartbeat_failed(&self) {
        self.failures.fetch_add(1, Ordering::AcqRel);
        self.failed.notify_one();
    }

    /// How long an idle agent waits after its last heartbeat: the idle period, or after failures a second,
    /// doubling, up to it. A server back after an outage so hears from its idle agents within moments, before
    /// their silence shows them offline, and one that stays down is not asked every second.
    fn idle_wait(&self) -> Duration {
        let every = Duration::from_millis(self.idle_ms.load(Ordering::Acquire));
        match self.failures.load(Ordering::Acquire) {
            0 => every,
            failures => every.min(Duration::from_secs(1 << (failures - 1).min(6))),
        }
    }
}

/// An announced idle period in milliseconds; one below a second would be a server's mistake, not a reason to
/// hammer it.
fn idle_millis(seconds: u64) -> u64 {
    seconds.max(1).saturating_mul(1000)
}

/// Heartbeats, renewing the leases of running runs and acting on the answers: every second while runs are
/// going, so cancels are prompt, and when idle as often as the servers ask (every 30 s by default, a third of
/// the lease with servers that do not say), which keeps the agent online. Each answer's concurrency grant goes
/// to the claim loop through `grant`. Beside them a watchdog stops any run whose lease could not be renewed for
/// [`fence`] of the shortest lease any server has announced, whatever the heartbeats are waiting for.
async fn heartbeat_loop<B: AgentBackend>(
    backend: Arc<B>,
    running: Running,
    template: Heartbeat,
    environments: Result<Environments, String>,
    cadence: Cadence,
    grant: watch::Sender<Option<i64>>,
) {
    let shortest_lease = cadence.lease_ms.clone();
    tokio::select! {
        () = heartbeats(backend, running.clone(), template, environments, cadence, grant) => {}
        () = watchdog(running, shortest_lease) => {}
    }
}

async fn heartbeats<B: AgentBackend>(
    backend: Arc<B>,
    running: Running,
    template: Heartbeat,
    environments: Result<Environments, String>,
    cadence: Cadence,
    grant: watch::Sender<Option<i64>>,
) {
    let lease = Duration::from_millis(cadence.lease_ms.load(Ordering::Acquire));
    // A server that has not answered in a third of the lease counts as unreachable, so an agent with several
    // servers moves on while there is time to renew before the fence; several heartbeats may be in flight, so
    // a slow server's late answer still renews (it counts from when it was sent) without holding up the next.
    let patience = lease / 3;
    let mut starts = running.starts();
    let mut ticker = tokio::time::interval(BUSY_HEARTBEAT.min(cadence.idle_wait()));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut last = tokio::time::Instant::now();
    let mut in_flight = JoinSet::new();
    loop {
        if running.is_empty() {
            // Idle: the next heartbeat is due an idle wait after the last, unless a run starts first (the busy
            // cadence then resumes a tick after the start) or the last failed, which shortens the wait.
            tokio::select! {
                () = tokio::time::sleep_until(last + cadence.idle_wait()) => {}
                () = cadence.failed.notified() => continue,
                _ = starts.changed() => {
                    ticker.reset();
                    continue;
                }
            }
        } else {
            ticker.tick().await;
        }
        while in_flight.try_join_next().is_some() {}
        if in_flight.len() >= HEARTBEATS_IN_FLIGHT {
            // The server answers none of them yet: the next goes when one is settled (each waits its patience
            // at most).
            in_flight.join_next().await;
        }
        let ids: Vec<i64> = running.lock().unwrap_or_else(|e| e.into_inner()).keys().copied().collect();
        if ids.is_empty() && last.elapsed() < cadence.idle_wait() {
            continue;
        }
        let sent = tokio::time::Instant::now();
        last = sent;
        let mut heartbeat = Heartbeat { running: ids.clone(), ..template.clone() };
        // Builds and evictions change these while the agent runs.
        heartbeat.capabilities["packages"] = serde_json::to_value(packages(&environments)).unwrap_or_default();
        let (backend, running, grant, cadence) = (backend.clone(), running.clone(), grant.clone(), cadence.clone());
        in_flight.spawn(async move {
            match backend.heartbeat(heartbeat, patience).await {
                Ok(reply) => {
                    cadence.heard(reply.lease_seconds, reply.idle_heartbeat_seconds);
                    grant.send_if_modified(|granted| {
                        let changed = *granted != reply.max_concurrency;
                        *granted = reply.max_concurrency;
                        changed
                    });
                    let running = running.lock().unwrap_or_else(|e| e.into_inner());
                    for id in ids.iter().filter(|id| !reply.gone.contains(id)) {
                        if let Some(control) = running.get(id) {
                            control.renewed(sent);
                        }
                    }
                    for (ids, reason) in [(&reply.cancel, Stop::Cancelled), (&reply.gone, Stop::Gone)] {
                        for control in ids.iter().filter_map(|id| running.get(id)) {
                            control.stop(reason);
                        }
                    }
                }
                Err(error) => {
                    cadence.heartbeat_failed();
                    tracing::warn!(%error, "heartbeat failed; runs keep going until their lease's fence");
                }
            }
        });
    }
}

/// How often the watchdog looks at the runs while any is executing.
const WATCHDOG_TICK: Duration = Duration::from_millis(50);

/// Stops every run still executing whose lease was last renewed longer ago than the fence of the shortest
/// lease announced (milliseconds in `shortest_lease`). With no run executing it sleeps until one starts.
async fn watchdog(running: Running, shortest_lease: Arc<AtomicU64>) {
    let mut starts = running.starts();
    let mut ticker = tokio::time::interval(WATCHDOG_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if running.is_empty() {
            // The sender lives as long as `running`, which this holds: `changed` only returns on a start.
            let _ = starts.changed().await;
            ticker.reset();
            continue;
        }
        ticker.tick().await;
        let fence = fence(Duration::from_millis(shortest_lease.load(Ordering::Acquire)));
        let running = running.lock().unwrap_or_else(|e| e.into_inner());
        for (run_id, control) in running.iter() {
            let unrenewed = control.unrenewed_for();
            let fenced = matches!(control.reason(), Some(Stop::Gone | Stop::LeaseLost(_)));
            if unrenewed > fence && !fenced && !control.script_ended() {
                tracing::error!(run_id, ?unrenewed, "the run's lease could not be renewed: stopping the run");
                control.stop(Stop::LeaseLost(unrenewed));
            }
        }
    }
}
