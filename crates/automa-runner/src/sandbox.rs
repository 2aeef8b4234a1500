//! The sandbox as the server and agent see it: detects what the host offers once, keeps a pool of slots
//! (each with its own uid and cgroups), and runs scripts through the helper while draining their output and
//! enforcing the wall-clock, cancel and output limits.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use automa_core::params::TRIGGER_PAYLOAD_ENV;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::capabilities::{self, Capabilities, Networking};
use crate::cgroup::{CgroupPool, Hierarchy};
use crate::output::{self, Budget};
use crate::protocol::{
    self, Bind, HAND_OVER, HandOver, Layers, ProbeReport, ProbeRequest, Request, RunOutcome, RunReport, RunRequest,
    ScriptFile, UserNet, WORKDIR,
};
use crate::slot_helper::SlotHelpers;
use crate::warm::{self, Prepared, WarmPool};
use crate::{
    BuildSpec, HelperCommand, Layer, Limits, OutputChunk, Profile, Report, RunSpec, RunnerError, SandboxConfig, Stream,
};

/// How long a helper asked to kill its run may take before it is killed itself.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long output pipes may stay open after the helper is gone; only a process that escaped every layer
/// could hold them.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Runs scripts under one configuration. Cheap to share behind an `Arc`; `run` may be called concurrently.
pub struct Sandbox {
    profile: Profile,
    capabilities: Capabilities,
    layers: Layers,
    slot_user: bool,
    uid_base: u32,
    helper_ids: (u32, u32),
    interpreter: PathBuf,
    /// Sandboxes prepared for warm runs; `None` when the pool is switched off. Emptied when the sandbox is
    /// dropped (a task preparing the next one may hold the pool longer), so that the slots' helpers never
    /// wait for a prepared sandbox's supervisor to leave.
    warm: Option<Arc<WarmPool>>,
    slot_helpers: Arc<SlotHelpers>,
    work_root: PathBuf,
    system_paths: Vec<PathBuf>,
    cgroups: Option<Arc<CgroupPool>>,
    /// How networked runs get their network: slirp4netns and the egress policy, or why they are refused.
    user_net: Result<UserNet, String>,
    slots: Arc<Semaphore>,
    free: Arc<Mutex<Vec<usize>>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("profile", &self.profile)
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

/// What one slot executes, a script or an environment build, in the helper's terms.
struct Job {
    program: PathBuf,
    script: Option<ScriptFile>,
    payload: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    binds: Vec<Bind>,
    limits: Limits,
    network: bool,
    /// Asked to start warm and able to: handed to the slot's prepared sandbox when it has one.
    warm: bool,
}

/// Why the sandbox killed a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kill {
    Timeout,
    Cancel,
    Output,
}

impl Sandbox {
    /// Probes the host through the helper, decides the layers and prepares the slots. With
    /// `Profile::Strict` a missing required layer is `RunnerError::Unsupported`.
    pub fn new(config: SandboxConfig) -> Result<Sandbox, RunnerError> {
        validate_config(&config)?;
        let system_paths = crate::interpreter::system_paths(&config.interpreter)?;
        std::fs::create_dir_all(&config.work_root)?;
        // Others may pass through to their slot's mount point but not list the runs.
        std::fs::set_permissions(&config.work_root, std::fs::Permissions::from_mode(0o711))?;
        for slot in 0..config.slots {
            let dir = config.work_root.join(format!("slot-{slot}"));
            std::fs::create_dir_all(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
        }
        let use_cgroups = config.profile == Profile::Strict && !config.disabled_layers.contains(&crate::Layer::Cgroups);
        let mut pool = use_cgroups.then(|| CgroupPool::create(&Hierarchy::detect(), config.slots));
        let probe_request = ProbeRequest { cgroup_procs: pool.as_ref().map(|p| p.procs_files(0)).unwrap_or_default() };
        let probe = probe(&config.helper, probe_request)?;
        let (versions, warnings) =
            pool.as_ref().map_or(([None; 3], Vec::new()), |p| (p.versions(), p.warnings.clone()));
        let slirp =
            crate::network::find_slirp4netns(config.slirp4netns.as_deref()).and_then(|slirp| match &probe.tun {
                Ok(()) => Ok(slirp),
                Err(e) => Err(format!("the helper cannot open /dev/net/tun, which slirp4netns needs: {e}")),
            });
        let networking = Networking { slirp: slirp.as_ref().map_err(String::as_str), deny: &config.network_deny };
        let plan =
            capabilities::plan(config.profile, &probe, &config.disabled_layers, versions, &warnings, &networking)?;
        let user_net = match slirp {
            Ok(slirp) if plan.user_net => Ok(UserNet {
                slirp4netns: slirp.program,
                policy: !config.disabled_layers.contains(&Layer::NetworkPolicy),
                deny: config.network_deny.clone(),
            }),
            Ok(_) => Err("the sandbox gives runs no network namespace".to_owned()),
            Err(reason) => Err(reason),
        };
        if !plan.cgroups {
            if let Some(p) = pool.as_mut() {
                p.disable();
            }
            pool = None;
        }
        for warning in &plan.capabilities.warnings {
            tracing::warn!(%warning, "sandbox");
        }
        Ok(Sandbox {
            profile: config.profile,
            capabilities: plan.capabilities,
            layers: plan.layers,
            slot_user: plan.slot_user,
            uid_base: config.uid_base,
            helper_ids: (probe.euid, probe.egid),
            interpreter: config.interpreter,
            slot_helpers: Arc::new(SlotHelpers::new(
                config.helper,
                (0..config.slots).map(|slot| pool.as_ref().map(|p| p.procs_files(slot)).unwrap_or_default()).collect(),
            )),
            work_root: config.work_root,
            system_paths,
            cgroups: pool.map(Arc::new),
            user_net,
            slots: Arc::new(Semaphore::new(config.slots)),
            free: Arc::new(Mutex::new((0..config.slots).rev().collect())),
            warm: config.warm_pool.then(|| WarmPool::new(config.slots)),
        })
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// The interpreter runs without an environment start, and environments are built for.
    pub fn interpreter(&self) -> &Path {
        &self.interpreter
    }

    /// Runs one script: waits for a free slot, streams its output to `output` as it is read (in order within
    /// each stream), and kills the whole process tree on timeout, when `cancel` becomes true or when the
    /// output passes its hard cap. A script that fails is a [`Report`], not an error.
    ///
    /// Under profile `none` the program's parent-death signal follows the thread that started it: poll runs on
    /// a runtime whose worker threads outlive them (tokio's workers do), never on a thread that may exit first.
    pub async fn run(
        &self,
        spec: RunSpec,
        output: mpsc::Sender<OutputChunk>,
        cancel: watch::Receiver<bool>,
    ) -> Result<Report, RunnerError> {
        validate_spec(&spec)?;
        let environment = spec.environment.as_deref().map(environment_dir).transpose()?;
        let warm = spec.warm
            && self.warm.is_some()
            && match warm::refusal(spec.network, environment.is_some(), &spec.env) {
                None => true,
                Some(reason) => {
                    tracing::debug!(%reason, "a warm run starts cold");
                    false
                }
            };
        let job = Job {
            program: environment.as_ref().map_or_else(|| self.interpreter.clone(), |env| env.join("bin/python")),
            script: Some(ScriptFile { name: spec.script_name, content: spec.script }),
            payload: spec.payload,
            args: spec.args,
            env: spec.env,
            binds: environment.into_iter().map(|path| Bind { path, writable: false }).collect(),
            limits: spec.limits,
            network: spec.network,
            warm,
        };
        self.execute(job, output, cancel).await
    }

    /// Runs an environment build (`spec.program`, typically uv) in a slot like a script: the same layers and
    /// limits, network on the same terms as a networked run, with `spec.readable` readable and `spec.writable`
    /// writable besides the work directory. Its output streams to `output` as a run's does.
    pub async fn build(
        &self,
        spec: BuildSpec,
        output: mpsc::Sender<OutputChunk>,
        cancel: watch::Receiver<bool>,
    ) -> Result<Report, RunnerError> {
        let invalid = |what: &Path, e: std::io::Error| RunnerError::InvalidSpec(format!("{}: {e}", what.display()));
        let canonical = |path: &PathBuf| std::fs::canonicalize(path).map_err(|e| invalid(path, e));
        if !spec.program.is_absolute() {
            return Err(RunnerError::InvalidSpec(format!("{} is not an absolute path", spec.program.display())));
        }
        let program = canonical(&spec.program)?;
        let mut binds = Vec::new();
        for path in std::iter::once(&program).chain(&spec.readable) {
            let path = canonical(path)?;
            // Already visible through a system path, whose read-only bind would refuse a mount point's creation.
            if !self.system_paths.iter().any(|system| path.starts_with(system)) {
                binds.push(Bind { path, writable: false });
            }
        }
        for path in &spec.writable {
            let path = canonical(path)?;
            if !path.is_dir() {
                return Err(RunnerError::InvalidSpec(format!("{} is not a directory", path.display())));
            }
            binds.push(Bind { path, writable: true });
        }
        let job = Job {
            program,
            script: None,
            payload: None,
            args: spec.args,
            env: spec.env,
            binds,
            limits: spec.limits,
            network: spec.network,
            warm: false,
        };
        self.execute(job, output, cancel).await
    }

    async fn execute(
        &self,
        job: Job,
        output: mpsc::Sender<OutputChunk>,
        mut cancel: watch::Receiver<bool>,
    ) -> Result<Report, RunnerError> {
        validate_job(&job)?;
        if let (true, true, Err(reason)) = (job.network, self.layers.net_ns, &self.user_net) {
            // Never a silently less isolated run: sharing the host's network would reach its loopback.
            return Err(RunnerError::Unsupported(format!(
                "this run needs network, which cannot be isolated: {reason}"
            )));
        }
        let cancelled = Report { cancelled: true, ..Report::default() };
        let Some(slot) = self.acquire(&mut cancel, job.warm).await else {
            return Ok(cancelled);
        };
        if *cancel.borrow() {
            return Ok(cancelled);
        }
        // The duration is the run's own, without the wait for a slot.
        let start = Instant::now();
        let result = self.run_in_slot(slot.index, &job, &output, cancel).await;
        let result = result.map(|r| Report { duration: start.elapsed(), ..r });
        if job.warm {
            self.prepare_next(slot, &job.limits);
        }
        result
    }

    /// Waits for a slot, or returns `None` when the run is cancelled first. A warm run takes a free slot with
    /// a prepared sandbox if there is one, any other run one without, so that no prepared sandbox is wasted.
    async fn acquire(&self, cancel: &mut watch::Receiver<bool>, prepared: bool) -> Option<Slot> {
        let permit = tokio::select! {
            permit = self.slots.clone().acquire_owned() => permit.ok()?,
            () = cancelled(cancel) => return None,
        };
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let has_prepared = |slot: usize| self.warm.as_ref().is_some_and(|pool| pool.has(slot));
        let position = free.iter().rposition(|&slot| has_prepared(slot) == prepared).or(free.len().checked_sub(1))?;
        let index = free.swap_remove(position);
        Some(Slot { free: self.free.clone(), index, _permit: permit })
    }

    /// Prepares the slot's next sandbox for warm runs, in the background (off the finished run's path) and
    /// holding the slot until its helper has its request, so that no other run shares the slot's cgroups and
    /// uid with it meanwhile.
    fn prepare_next(&self, slot: Slot, after: &Limits) {
        let Some(pool) = self.warm.clone() else {
            return;
        };
        let limits = warm::ceiling(after);
        let request = self.prepared_request(slot.index, limits);
        let owner = self.slot_user(slot.index).unwrap_or(self.helper_ids);
        let fresh = (!self.layers.mount_ns).then(|| (request.host_workdir.clone(), owner));
        let cgroups = self.cgroups.clone();
        let helpers = self.slot_helpers.clone();
        tokio::spawn(async move {
            let index = slot.index;
            let setup = tokio::task::spawn_blocking(move || {
                // The slot's cgroups get the prepared limits until a run is handed over.
                if let Some(cgroups) = cgroups {
                    cgroups.slot(index).prepare(&limits)?;
                }
                fresh.map_or(Ok(()), |(dir, ids)| fresh_workdir(&dir, ids))
            });
            let prepared = match setup.await {
                Ok(Ok(())) => start_supervisor(helpers, index).await,
                Ok(Err(error)) => Err(error),
                Err(e) => Err(RunnerError::Helper(format!("preparing a sandbox: {e}"))),
            };
            let sent = match prepared {
                Ok(launched) => launched.send(&Request::Run(Box::new(request))).await,
                Err(error) => Err(error),
            };
            match sent {
                Ok(launched) => pool.put(index, limits, launched),
                Err(error) => tracing::warn!(%error, slot = index, "cannot prepare a sandbox for warm runs"),
            }
            drop(slot);
        });
    }

    /// The request of a prepared sandbox: a cold run's, with the interpreter's bootstrap as its script and the
    /// limits any run may lower to its own.
    fn prepared_request(&self, slot: usize, limits: Limits) -> RunRequest {
        let host_workdir = self.work_root.join(format!("slot-{slot}")).join("work");
        let user = self.slot_user(slot);
        let job = Job {
            program: self.interpreter.clone(),
            script: Some(ScriptFile { name: warm::BOOTSTRAP_NAME.into(), content: warm::BOOTSTRAP.into() }),
            payload: None,
            args: Vec::new(),
            env: Vec::new(),
            binds: Vec::new(),
            limits,
            network: false,
            warm: true,
        };
        RunRequest { warm: true, ..self.request(slot, &job, user, &host_workdir) }
    }

    fn slot_user(&self, slot: usize) -> Option<(u32, u32)> {
        self.slot_user.then(|| {
            let id = self.uid_base + u32::try_from(slot).unwrap_or(0);
            (id, id)
        })
    }

    async fn run_in_slot(
        &self,
        slot: usize,
        job: &Job,
        output: &mpsc::Sender<OutputChunk>,
        cancel: watch::Receiver<bool>,
    ) -> Result<Report, RunnerError> {
        // A prepared sandbox serves only a warm run; any other run never shares the slot's cgroups and uid
        // with one.
        let prepared = match self.warm.as_ref().and_then(|pool| pool.take(slot)) {
            Some(prepared) => {
                // Dropping a prepared sandbox kills its supervisor, and with it the sandbox's init.
                (job.warm && warm::fits(&prepared.limits, &job.limits) && prepared.launched.running())
                    .then_some(prepared)
            }
            None => None,
        };
        let warm_start = prepared.is_some();
        let cgroup = self.cgroups.as_ref().map(|p| p.slot(slot));
        let baseline = cgroup.map(|c| c.prepare(&job.limits)).transpose()?;
        let host_workdir = self.work_root.join(format!("slot-{slot}")).join("work");
        let user = self.slot_user(slot);
        if !self.layers.mount_ns && !warm_start {
            fresh_workdir(&host_workdir, user.unwrap_or(self.helper_ids))?;
        }
        let lent: Vec<PathBuf> = job.binds.iter().filter(|b| b.writable).map(|b| b.path.clone()).collect();
        if let Some(ids) = user.filter(|_| !lent.is_empty()) {
            change_owner(lent.clone(), ids).await?;
        }
        let request = self.request(slot, job, user, &host_workdir);
        let outcome = match prepared {
            Some(prepared) => self.hand_over(prepared, request, job, output, cancel).await,
            None => self.supervise(slot, request, &job.limits, output, cancel).await,
        };
        let usage = match (cgroup, &baseline) {
            (Some(c), Some(b)) => Some(c.finish(b, self.slot_helpers.pid(slot)).await),
            _ => None,
        };
        if !self.layers.mount_ns {
            let _ = std::fs::remove_dir_all(&host_workdir);
        }
        if user.is_some() && !lent.is_empty() {
            change_owner(lent, self.helper_ids).await?;
        }
        let (helper_report, killed, budget) = outcome?;
        let mut report = Report {
            setup: helper_report.setup,
            timed_out: killed == Some(Kill::Timeout),
            cancelled: killed == Some(Kill::Cancel),
            output_limit_exceeded: killed == Some(Kill::Output),
            max_rss_kb: helper_report.report.max_rss_kb,
            cpu_ms: usage.as_ref().and_then(|u| u.cpu_ms).or(helper_report.report.cpu_ms),
            oom_killed: usage.as_ref().is_some_and(|u| u.oom_killed),
            warm_start,
            ..Report::default()
        };
        (report.output_bytes, report.truncated) = budget.totals();
        match helper_report.report.outcome {
            RunOutcome::Exited(code) => report.exit_code = Some(code),
            RunOutcome::Signaled(sig) => report.signal = Some(sig),
            RunOutcome::Failed(message) => return Err(RunnerError::Helper(message)),
        }
        if report.oom_killed {
            let note = format!("the run ran out of memory (limit {} MiB)\n", job.limits.memory_mb);
            output::send(output, Stream::System, note.as_bytes()).await;
        }
        Ok(report)
    }

    fn request(&self, slot: usize, job: &Job, user: Option<(u32, u32)>, host_workdir: &Path) -> RunRequest {
        let layers = self.layers;
        let user_net = if job.network && layers.net_ns { self.user_net.as_ref().ok().cloned() } else { None };
        let home = if layers.mount_ns { PathBuf::from(WORKDIR) } else { host_workdir.to_path_buf() };
        let home = home.to_string_lossy().into_owned();
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("HOME".into(), home.clone()),
            ("LANG".into(), "C.UTF-8".into()),
            ("PYTHONUNBUFFERED".into(), "1".into()),
            ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
        ];
        if !layers.mount_ns {
            // The host's /tmp is shared with everyone: temporary files go to the run's own directory.
            env.push(("TMPDIR".into(), home.clone()));
        }
        for (key, value) in &job.env {
            env.retain(|(k, _)| k != key);
            env.push((key.clone(), value.clone()));
        }
        // Set last, after the run's own variables, so that nothing the task sets can point it elsewhere.
        env.retain(|(k, _)| k != TRIGGER_PAYLOAD_ENV);
        if job.payload.is_some() {
            let path = std::path::Path::new(&home).join(crate::TRIGGER_PAYLOAD_FILE);
            env.push((TRIGGER_PAYLOAD_ENV.into(), path.to_string_lossy().into_owned()));
        }
        RunRequest {
            layers,
            user,
            program: job.program.clone(),
            script: job.script.clone(),
            payload: job.payload.clone(),
            args: job.args.clone(),
            env,
            root_mount: self.work_root.join(format!("slot-{slot}")),
            host_workdir: host_workdir.to_path_buf(),
            system_paths: self.system_paths.clone(),
            binds: job.binds.clone(),
            limits: job.limits,
            network: job.network,
            user_net,
            warm: false,
        }
    }

    /// Has the slot's helper fork a supervisor, feeds it the request and drains output until it reports,
    /// killing the run when a limit or the caller says so.
    async fn supervise(
        &self,
        slot: usize,
        request: RunRequest,
        limits: &crate::Limits,
        output: &mpsc::Sender<OutputChunk>,
        cancel: watch::Receiver<bool>,
    ) -> Result<(HelperReport, Option<Kill>, Arc<Budget>), RunnerError> {
        if self.profile == Profile::None {
            return crate::plain::supervise(&request, limits, output, cancel).await;
        }
        let spawned_ns = protocol::monotonic_ns();
        let launched =
            start_supervisor(self.slot_helpers.clone(), slot).await?.send(&Request::Run(Box::new(request))).await?;
        let deadline = tokio::time::Instant::now() + limits.timeout;
        self.watch_helper(launched, Some(spawned_ns), (deadline, None), limits, output, cancel).await
    }

    /// Hands a warm run to a prepared sandbox (its request tells the environment the run gets) and watches it
    /// as a cold run's helper is watched; the setup happened before the run came and is not reported.
    async fn hand_over(
        &self,
        mut prepared: Prepared,
        request: RunRequest,
        job: &Job,
        output: &mpsc::Sender<OutputChunk>,
        mut cancel: watch::Receiver<bool>,
    ) -> Result<(HelperReport, Option<Kill>, Arc<Budget>), RunnerError> {
        let script = job.script.as_ref().ok_or_else(|| RunnerError::InvalidSpec("a warm run needs a script".into()))?;
        let rlimits = self.layers.rlimits.then_some(&job.limits);
        let run = warm::encode_run(&script.name, &script.content, &job.args, &request.env, rlimits);
        let mut framed = vec![HAND_OVER];
        protocol::write_message(&mut framed, &HandOver { payload: job.payload.clone(), run })?;
        // The hand-over is part of the run: its deadline and cancel bound it as they bound the rest.
        let deadline = tokio::time::Instant::now() + job.limits.timeout;
        let killed = tokio::select! {
            written = prepared.launched.to_helper.write_all(&framed) => written.map(|()| None)?,
            () = tokio::time::sleep_until(deadline) => Some(Kill::Timeout),
            () = cancelled(&mut cancel) => Some(Kill::Cancel),
        };
        if killed.is_some() {
            // Half a run on the channel: only killing the supervisor stops it.
            prepared.launched.supervisor.kill();
        }
        self.watch_helper(prepared.launched, None, (deadline, killed), &job.limits, output, cancel).await
    }

    /// Drains the helper's output and waits for its report, killing the run when a limit or the caller says
    /// so. `spawned_ns`: when the helper was started, for the setup time; `deadline`: when the run times out,
    /// with the kill that already ended it (its supervisor killed) if any.
    async fn watch_helper(
        &self,
        launched: Launched,
        spawned_ns: Option<u64>,
        (deadline, already_killed): (tokio::time::Instant, Option<Kill>),
        limits: &crate::Limits,
        output: &mpsc::Sender<OutputChunk>,
        mut cancel: watch::Receiver<bool>,
    ) -> Result<(HelperReport, Option<Kill>, Arc<Budget>), RunnerError> {
        let Launched { mut supervisor, mut from_helper, mut to_helper, stdout, stderr } = launched;
        let budget = Budget::new(limits.max_output_bytes);
        let stdout = Some(tokio::spawn(output::drain(stdout, Stream::Stdout, budget.clone(), output.clone())));
        let stderr = Some(tokio::spawn(output::drain(stderr, Stream::Stderr, budget.clone(), output.clone())));

        let mut answer = Vec::new();
        let reading = from_helper.read_to_end(&mut answer);
        tokio::pin!(reading);
        let deadline = tokio::time::sleep_until(deadline);
        tokio::pin!(deadline);
        let grace = tokio::time::sleep(Duration::MAX / 4);
        tokio::pin!(grace);
        let mut killed = already_killed;
        let mut force_killed = already_killed.is_some();
        loop {
            let kill = tokio::select! {
                _ = &mut reading => break,
                () = &mut deadline, if killed.is_none() => Kill::Timeout,
                () = cancelled(&mut cancel), if killed.is_none() => Kill::Cancel,
                () = budget.over_cap.notified(), if killed.is_none() => Kill::Output,
                () = &mut grace, if !force_killed => {
                    // The supervisor did not finish after being asked to: its death takes the init and with
                    // it the whole namespace (parent-death signal).
                    supervisor.kill();
                    force_killed = true;
                    continue;
                }
            };
            killed = Some(kill);
            let _ = to_helper.write_all(b"k").await;
            grace.as_mut().reset(tokio::time::Instant::now() + KILL_GRACE);
        }
        // The supervisor closed the channel: its report is in, and it is on its way out.
        supervisor.ended();
        join_drains([stdout, stderr]).await;
        if let Some(kill) = killed {
            output::send(output, Stream::System, kill_note(kill, limits).as_bytes()).await;
        }
        let report = if answer.is_empty() && force_killed {
            RunReport {
                outcome: RunOutcome::Signaled(libc::SIGKILL),
                max_rss_kb: None,
                cpu_ms: None,
                workload_started_ns: None,
            }
        } else {
            protocol::decode::<RunReport>(&answer)
                .map_err(|e| RunnerError::Helper(format!("no report from the helper: {e}")))?
        };
        let setup = spawned_ns
            .zip(report.workload_started_ns)
            .map(|(spawned, started)| Duration::from_nanos(started.saturating_sub(spawned)));
        Ok((HelperReport { report, setup }, killed, budget))
    }

    /// The process ids of the slots' long-lived helpers started so far; for tests that kill one.
    #[doc(hidden)]
    pub fn slot_helper_pids(&self) -> Vec<u32> {
        self.slot_helpers.pids()
    }
}

/// Has the slot's helper fork a supervisor wired to a new channel and new output pipes. Nothing runs
/// between fork and exec here: the fork happens in the single-threaded helper. The exchange with the helper
/// blocks, so it runs on the blocking pool.
async fn start_supervisor(helpers: Arc<SlotHelpers>, slot: usize) -> Result<Launched, RunnerError> {
    let (ours, supervisor, stdout, stderr) = tokio::task::spawn_blocking(move || {
        let mut retried = false;
        loop {
            // Fresh fds for every attempt: a helper that failed may have forked a supervisor on the last
            // ones before it was killed.
            let (ours, theirs) = UnixStream::pair()?;
            let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from);
            let (stdout, stdout_w) = pipe()?;
            let (stderr, stderr_w) = pipe()?;
            match helpers.launch(slot, [theirs.as_fd(), stdout_w.as_fd(), stderr_w.as_fd()]) {
                // A supervisor, killed when dropped, also when this run is abandoned meanwhile.
                Ok(pidfd) => return Ok((ours, Supervisor { pidfd, ended: false }, stdout, stderr)),
                Err(failed) if failed.retry && !retried => {
                    tracing::warn!(slot, error = %failed.error, "the slot's sandbox helper is gone; starting another");
                    retried = true;
                }
                Err(failed) => return Err(failed.error),
            }
        }
    })
    .await
    .map_err(|e| RunnerError::Helper(format!("starting a supervisor: {e}")))??;
    // Only the supervisor holds the far ends now (ours were dropped): EOF then means "supervisor gone".
    ours.set_nonblocking(true)?;
    let (from_helper, to_helper) = tokio::net::UnixStream::from_std(ours)?.into_split();
    let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd;
    Ok(Launched { supervisor, from_helper, to_helper, stdout: pipe(stdout)?, stderr: pipe(stderr)? })
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(pool) = &self.warm {
            pool.clear();
        }
    }
}

type Pipe = tokio::net::unix::pipe::Receiver;

/// A supervisor the slot's helper forked, with the channel to it and the read ends of its output pipes.
pub(crate) struct Launched {
    supervisor: Supervisor,
    from_helper: OwnedReadHalf,
    pub(crate) to_helper: OwnedWriteHalf,
    stdout: Pipe,
    stderr: Pipe,
}

impl Launched {
    /// Sends the supervisor its request.
    async fn send(mut self, request: &Request) -> Result<Launched, RunnerError> {
        self.to_helper.write_all(&frame(request)?).await?;
        Ok(self)
    }

    /// Whether the supervisor is still there to take a run.
    pub(crate) fn running(&self) -> bool {
        let mut fds = [PollFd::new(self.supervisor.pidfd.as_fd(), PollFlags::POLLIN)];
        // A pidfd becomes readable when its process ends.
        matches!(nix::poll::poll(&mut fds, PollTimeout::ZERO), Ok(0))
    }
}

/// A run's supervisor, forked by the slot's helper. Dropped before it ended (the run's future abandoned),
/// it is killed, and its init and namespace with it.
struct Supervisor {
    pidfd: OwnedFd,
    ended: bool,
}

impl Supervisor {
    fn kill(&self) {
        // SAFETY: pidfd_send_signal takes the pidfd, a signal number and no siginfo.
        unsafe { libc::syscall(libc::SYS_pidfd_send_signal, self.pidfd.as_raw_fd(), libc::SIGKILL, 0usize, 0u32) };
    }

    fn ended(&mut self) {
        self.ended = true;
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if !self.ended {
            self.kill();
        }
    }
}

/// Waits for both output drains to reach the end of their pipes, for at most [`DRAIN_GRACE`] each.
pub(crate) async fn join_drains(drains: [Option<tokio::task::JoinHandle<()>>; 2]) {
    for drain in drains.into_iter().flatten() {
        let abort = drain.abort_handle();
        if tokio::time::timeout(DRAIN_GRACE, drain).await.is_err() {
            abort.abort();
        }
    }
}

/// The helper's report, with the setup time measured from this side.
pub(crate) struct HelperReport {
    pub(crate) report: RunReport,
    pub(crate) setup: Option<Duration>,
}

/// Resolves when the watched value becomes true; never, if the sender is gone without cancelling.
pub(crate) async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    if cancel.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

pub(crate) fn kill_note(kill: Kill, limits: &crate::Limits) -> String {
    match kill {
        Kill::Timeout => format!("the run was killed: it exceeded its timeout of {:?}\n", limits.timeout),
        Kill::Cancel => "the run was cancelled\n".to_owned(),
        Kill::Output => {
            format!("the run was killed: it wrote far more than its {} bytes of output\n", limits.max_output_bytes)
        }
    }
}

/// A held slot; returned to the pool when dropped.
struct Slot {
    free: Arc<Mutex<Vec<usize>>>,
    index: usize,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).push(self.index);
    }
}

fn frame(request: &Request) -> Result<Vec<u8>, RunnerError> {
    let mut framed = Vec::new();
    protocol::write_message(&mut framed, request)?;
    Ok(framed)
}

/// Asks the helper what the host lets it do; synchronous, like `Sandbox::new`.
fn probe(helper: &HelperCommand, request: ProbeRequest) -> Result<ProbeReport, RunnerError> {
    use std::io::Read;
    let (mut child, mut ours) = crate::slot_helper::start_helper(helper, &Request::Probe(request))?;
    let mut answer = Vec::new();
    ours.read_to_end(&mut answer)?;
    let status = child.wait()?;
    protocol::decode::<ProbeReport>(&answer)
        .map_err(|e| RunnerError::Helper(format!("{} gave no probe report ({status}): {e}", helper.program.display())))
}

fn fresh_workdir(dir: &std::path::Path, (uid, gid): (u32, u32)) -> Result<(), RunnerError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    std::fs::create_dir(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    }
    Ok(())
}

fn validate_config(config: &SandboxConfig) -> Result<(), RunnerError> {
    let bad = |m: String| Err(RunnerError::InvalidConfig(m));
    if config.slots == 0 {
        return bad("slots must be at least 1".into());
    }
    if !config.interpreter.is_absolute() {
        return bad(format!("interpreter {} is not an absolute path", config.interpreter.display()));
    }
    if !config.work_root.is_absolute() {
        return bad(format!("work_root {} is not an absolute path", config.work_root.display()));
    }
    let slots = u32::try_from(config.slots).unwrap_or(u32::MAX);
    if config.uid_base == 0 || config.uid_base.checked_add(slots).is_none() {
        return bad(format!("uid_base {} leaves no room for {} slot uids", config.uid_base, config.slots));
    }
    Ok(())
}

/// The environment's real path, where it is bound and started from; refused unless it holds `bin/python`.
fn environment_dir(dir: &Path) -> Result<PathBuf, RunnerError> {
    let bad = |why: String| RunnerError::InvalidSpec(format!("environment {}: {why}", dir.display()));
    if !dir.is_absolute() {
        return Err(bad("not an absolute path".into()));
    }
    let dir = std::fs::canonicalize(dir).map_err(|e| bad(e.to_string()))?;
    if !dir.join("bin/python").is_file() {
        return Err(bad("it has no bin/python".into()));
    }
    Ok(dir)
}

/// Gives `paths`, and everything in them, to `(uid, gid)`; symlinks themselves, never what they point to.
async fn change_owner(paths: Vec<PathBuf>, (uid, gid): (u32, u32)) -> Result<(), RunnerError> {
    fn walk(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
        if std::fs::symlink_metadata(path)?.is_dir() {
            for entry in std::fs::read_dir(path)? {
                walk(&entry?.path(), uid, gid)?;
            }
        }
        Ok(())
    }
    tokio::task::spawn_blocking(move || paths.iter().try_for_each(|path| walk(path, uid, gid)))
        .await
        .map_err(|e| RunnerError::Helper(format!("changing owners: {e}")))?
        .map_err(RunnerError::Io)
}

fn validate_job(job: &Job) -> Result<(), RunnerError> {
    let bad = |m: String| Err(RunnerError::InvalidSpec(m));
    if job.args.iter().any(|a| a.contains('\0')) {
        return bad("arguments may not contain NUL bytes".into());
    }
    for (key, value) in &job.env {
        if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
            return bad(format!("environment variable {key:?} is not a valid name=value pair"));
        }
    }
    if job.limits.timeout.is_zero() || job.limits.memory_mb == 0 || job.limits.max_processes == 0 {
        return bad("timeout, memory and process limits must be above zero".into());
    }
    Ok(())
}

fn validate_spec(spec: &RunSpec) -> Result<(), RunnerError> {
    let bad = |m: String| Err(RunnerError::InvalidSpec(m));
    let name = &spec.script_name;
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) || name.len() > 255 {
        return bad(format!("script name {name:?} must be a plain file name"));
    }
    if name == crate::TRIGGER_PAYLOAD_FILE {
        return bad(format!("script name {name:?} is the payload file's"));
    }
    Ok(())
}
