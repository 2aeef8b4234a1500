//! The agent's environments: one virtual environment per (lock, interpreter, platform), built once with uv
//! inside the sandbox and kept in `<data dir>/environments/<key>` for every run that needs those packages,
//! which gets it read-only. The cache is size-capped; the least recently used environments go first, never one
//! a run is using.
//!
//! Concurrency: in this process, runs asking for one key at once share one build (a shared future); across
//! processes on one data directory, builds and evictions take `.lock`, and an environment appears only by the
//! rename of a finished build, so a half-built one is never used. A run holds a shared `flock` on its
//! environment's directory while it uses it; eviction takes it exclusively, and skips what it cannot take.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::future::{BoxFuture, FutureExt, Shared};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};

use automa_core::RequiresPython;
use automa_runner::{BuildSpec, Limits, OutputChunk, Sandbox, Stream};

use crate::protocol::EnvironmentSpec;

/// The `packages` part of an agent's capabilities.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PackagesReport {
    /// uv's version; null without uv.
    pub uv: Option<String>,
    /// Builds started since the agent started, failed ones included.
    pub environment_builds: u64,
    pub cached_environments: usize,
    /// Why this agent keeps no environments at all (its sandbox is refused, say).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

/// What a run needing packages is told when this agent has no uv.
pub const NO_UV: &str = "this run needs packages but the agent has no uv (set AUTOMA_UV)";
/// Lines of uv's output quoted in a failed build's error.
const TAIL_LINES: usize = 12;

/// Where packages come from and how much room environments may take: the `AUTOMA_UV`, `AUTOMA_PACKAGE_*` and
/// `AUTOMA_ENV_CACHE_MB` settings.
#[derive(Debug, Clone)]
pub struct PackageSettings {
    /// Where environments are kept: `<data dir>/environments`.
    pub environments_dir: PathBuf,
    /// The uv to build with (`AUTOMA_UV`); `None` looks for `uv` on `PATH`.
    pub uv: Option<PathBuf>,
    pub index_url: Option<String>,
    pub extra_index_urls: Vec<String>,
    /// Directories or URLs of wheels (`--find-links`); local directories are made readable to the build.
    pub find_links: Vec<String>,
    /// Builds use no network at all: `--offline --no-index`, so packages come from `find_links` only.
    pub offline: bool,
    /// The most megabytes environments may take together before the least recently used are removed.
    pub cache_mb: u64,
}

impl PackageSettings {
    /// Default of `AUTOMA_ENV_CACHE_MB`.
    pub const DEFAULT_CACHE_MB: u64 = 5120;

    /// Settings with no uv configured, the default index and the default cap, keeping environments in
    /// `environments/` under the data directory.
    pub fn new(data_dir: &Path) -> PackageSettings {
        PackageSettings {
            environments_dir: data_dir.join("environments"),
            uv: None,
            index_url: None,
            extra_index_urls: Vec::new(),
            find_links: Vec::new(),
            offline: false,
            cache_mb: Self::DEFAULT_CACHE_MB,
        }
    }
}

/// The uv found at start.
#[derive(Debug, Clone)]
struct Uv {
    program: PathBuf,
    /// As `uv --version` prints it, e.g. `0.13.9`.
    version: String,
}

/// The interpreter environments are built for.
#[derive(Debug, Clone)]
struct Interpreter {
    path: PathBuf,
    /// `3.11.7`, checked against a script's `requires-python`.
    version: String,
    /// Everything about it that makes an environment built for it unfit for another: its full `sys.version`,
    /// platform, machine, libc and cache tag.
    identity: String,
}

type Build = Shared<BoxFuture<'static, Result<(), String>>>;

struct Inner {
    settings: PackageSettings,
    sandbox: Arc<Sandbox>,
    uv: Option<Uv>,
    interpreter: Interpreter,
    builds: AtomicU64,
    /// Builds under way in this process, by key.
    pending: Mutex<HashMap<String, Build>>,
}

/// The environment cache. Cheap to clone: clones share the cache, its builds and its counter.
#[derive(Clone)]
pub struct Environments {
    inner: Arc<Inner>,
}

/// An environment a run is using: it cannot be evicted until this is dropped.
#[derive(Debug)]
pub struct Lease {
    path: PathBuf,
    /// Holds the shared lock on the directory.
    _directory: File,
}

impl Lease {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// An environment ready for a run, and whether it was there already.
#[derive(Debug)]
pub struct PreparedEnvironment {
    pub lease: Lease,
    pub cached: bool,
}

impl Environments {
    /// Prepares the cache directory and finds uv and the sandbox's interpreter. A missing uv is not an error:
    /// runs that need packages are refused with [`NO_UV`], the others run.
    pub fn new(mut settings: PackageSettings, sandbox: Arc<Sandbox>) -> Result<Environments, String> {
        // Runs see an environment at the path it was built at, so the path must not depend on a working directory.
        let dir = std::path::absolute(&settings.environments_dir)
            .map_err(|e| format!("{}: {e}", settings.environments_dir.display()))?;
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        remove_leftovers(&dir);
        settings.environments_dir = dir;
        let uv = match find_uv(settings.uv.as_deref()) {
            Ok(uv) => Some(uv),
            Err(reason) => {
                tracing::warn!(%reason, "runs that need packages will fail on this agent");
                None
            }
        };
        let interpreter = describe_interpreter(sandbox.interpreter())?;
        let inner = Inner {
            settings,
            sandbox,
            uv,
            interpreter,
            builds: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
        };
        Ok(Environments { inner: Arc::new(inner) })
    }

    /// Builds started since this agent started (a build another process finished first is not counted).
    pub fn builds(&self) -> u64 {
        self.inner.builds.load(Ordering::SeqCst)
    }

    /// The environments in the cache now.
    pub fn cached(&self) -> usize {
        environments_in(&self.inner.settings.environments_dir).len()
    }

    /// What the agent's capabilities say about packages.
    pub fn report(&self) -> PackagesReport {
        PackagesReport {
            uv: self.inner.uv.as_ref().map(|uv| uv.version.clone()),
            environment_builds: self.builds(),
            cached_environments: self.cached(),
            unavailable: None,
        }
    }

    /// The cache key of `lock` for this agent's interpreter.
    pub fn key(&self, lock: &str) -> String {
        key_of(lock, &self.inner.interpreter)
    }

    /// The environment for `spec`, built (once, whoever else asks meanwhile) when it is not cached. The
    /// build's output goes to `log` as `system` chunks when this call is the one that started it. Errors are
    /// the run's error text.
    pub async fn prepare(
        &self,
        spec: &EnvironmentSpec,
        log: &mpsc::Sender<OutputChunk>,
    ) -> Result<PreparedEnvironment, String> {
        if self.inner.uv.is_none() {
            return Err(NO_UV.into());
        }
        if let Some(wanted) = spec.requires_python.as_deref().filter(|w| !w.trim().is_empty()) {
            let version = &self.inner.interpreter.version;
            let requires = RequiresPython::parse(wanted).map_err(|e| format!("requires-python {wanted:?}: {e}"))?;
            if !requires.admits(version)? {
                return Err(format!(
                    "this script requires Python {wanted}, but the agent's interpreter is Python {version}"
                ));
            }
        }
        let key = self.key(&spec.lock);
        let dir = &self.inner.settings.environments_dir;
        let mut built = false;
        // A build another process evicts before this one leases it is built again, a few times at most.
        for _ in 0..3 {
            if let Some(lease) = lease(dir, &key) {
                return Ok(PreparedEnvironment { lease, cached: !built });
            }
            self.build_once(&key, &spec.lock, log).await?;
            built = true;
        }
        Err("environment build failed: the environment was evicted as soon as it was built \
             (is AUTOMA_ENV_CACHE_MB too small?)"
            .into())
    }

    /// Joins the build of `key` under way in this process, or starts it.
    async fn build_once(&self, key: &str, lock: &str, log: &mpsc::Sender<OutputChunk>) -> Result<(), String> {
        let (build, output) = {
            let mut pending = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
            match pending.get(key) {
                Some(build) => (build.clone(), None),
                None => {
                    let (tx, rx) = mpsc::channel(64);
                    let (inner, key_owned, lock) = (self.inner.clone(), key.to_owned(), lock.to_owned());
                    // A task of its own, so the build finishes for the others even if the run that started it
                    // is cancelled.
                    let task = tokio::spawn(async move {
                        let result = build(&inner, &key_owned, &lock, tx).await;
                        inner.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&key_owned);
                        result
                    });
                    let build =
                        async move { task.await.unwrap_or_else(|e| Err(format!("environment build failed: {e}"))) }
                            .boxed()
                            .shared();
                    pending.insert(key.to_owned(), build.clone());
                    (build, Some(rx))
                }
            }
        };
        if let Some(mut output) = output {
            while let Some(chunk) = output.recv().await {
                let _ = log.send(chunk).await;
            }
        }
        build.await
    }
}

/// The cache key of `lock` for `interpreter`. Its path counts too: a venv's `bin/python` points at the
/// interpreter it was made with, so an interpreter moved elsewhere, even an identical one, needs environments of
/// its own.
fn key_of(lock: &str, interpreter: &Interpreter) -> String {
    let mut hash = Sha256::new();
    for part in [lock, &interpreter.identity, &interpreter.path.to_string_lossy()] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hex::encode(hash.finalize())
}

/// How preparing a run's environment ended.
pub(crate) enum Preparation {
    /// Ready, after this long (zero when it was cached).
    Ready(PreparedEnvironment, Duration),
    /// The run ends `failed` with this error.
    Failed(String),
    /// The run was stopped while it waited.
    Stopped,
}

/// Prepares a run's environment, telling its log: `preparing environment`, uv's output when this run builds
/// it, then `environment ready (N ms, cached|built)`.
pub(crate) async fn prepare_for_run(
    environments: &Result<Environments, String>,
    spec: &EnvironmentSpec,
    log: &mpsc::Sender<OutputChunk>,
    mut stopped: watch::Receiver<bool>,
    limit: Duration,
) -> Preparation {
    let environments = match environments {
        Ok(environments) => environments,
        Err(reason) => return Preparation::Failed(format!("this agent cannot keep environments: {reason}")),
    };
    let started = Instant::now();
    note(log, "preparing environment\n").await;
    // Waiting counts against the run's time limit: a run must not hold its slot for longer than it may run
    // while another script's build holds the key's lock. The build itself goes on for later runs.
    let prepared = tokio::select! {
        prepared = tokio::time::timeout(limit, environments.prepare(spec, log)) => prepared.unwrap_or_else(|_| {
            Err(format!("environment build failed: not ready within the run's time limit ({} s)", limit.as_secs()))
        }),
        _ = stopped.wait_for(|stop| *stop) => return Preparation::Stopped,
    };
    match prepared {
        Ok(prepared) => {
            let took = if prepared.cached { Duration::ZERO } else { started.elapsed() };
            let how = if prepared.cached { "cached" } else { "built" };
            note(log, &format!("environment ready ({} ms, {how})\n", took.as_millis())).await;
            Preparation::Ready(prepared, took)
        }
        Err(error) => Preparation::Failed(error),
    }
}

async fn note(log: &mpsc::Sender<OutputChunk>, text: &str) {
    let chunk = OutputChunk { stream: Stream::System, data: text.into(), at: SystemTime::now() };
    let _ = log.send(chunk).await;
}

/// Leases the environment `key` when it is in the cache and not being evicted.
fn lease(dir: &Path, key: &str) -> Option<Lease> {
    let path = dir.join(key);
    let directory = File::open(&path).ok()?;
    directory.try_lock_shared().ok()?;
    // Evicted (renamed away) between the open and the lock: that directory is on its way out.
    if std::fs::metadata(&path).ok()?.ino() != directory.metadata().ok()?.ino() {
        return None;
    }
    // The directory's time is its last use, which eviction orders by; a build never changes it afterwards.
    let _ = directory.set_modified(SystemTime::now());
    Some(Lease { path, _directory: directory })
}

/// Builds `key` from `lock` in a staging directory and renames it into place, then evicts what the cap
/// requires. One build of a key at a time, in this process or another, while builds of other keys go on beside
/// it. A failed build leaves nothing behind.
async fn build(inner: &Inner, key: &str, lock: &str, output: mpsc::Sender<OutputChunk>) -> Result<(), String> {
    let dir = inner.settings.environments_dir.clone();
    let _building = lock_file(key_lock(&dir, key)).await?;
    if dir.join(key).is_dir() {
        return Ok(());
    }
    let staging = dir.join(format!(".build-{key}"));
    // A build of this key that stopped half-way (the agent was killed) left this behind.
    let _ = std::fs::remove_dir_all(&staging);
    let failed = |why: String| {
        let _ = std::fs::remove_dir_all(&staging);
        Err(format!("environment build failed: {why}"))
    };
    if let Err(e) = std::fs::create_dir_all(staging.join("cache")) {
        return failed(format!("cannot create {}: {e}", staging.display()));
    }
    if let Err(e) = std::fs::write(staging.join("lock.txt"), lock) {
        return failed(format!("cannot write the lock: {e}"));
    }
    inner.builds.fetch_add(1, Ordering::SeqCst);
    let cap = inner.settings.cache_mb.saturating_mul(1024 * 1024);
    let (too_big, size_watch) = watch_size(staging.clone(), cap);
    let (chunks, forwarded) = mpsc::channel(64);
    let forwarding = tokio::spawn(forward(forwarded, output));
    let mut outcome = Ok(());
    for spec in build_steps(inner, &staging) {
        match inner.sandbox.build(spec, chunks.clone(), too_big.clone()).await {
            Ok(report) if report.exit_code == Some(0) => {}
            Ok(report) => {
                outcome = Err(match (report.timed_out, report.signal) {
                    (true, _) => Some("uv ran past its time limit".to_owned()),
                    (false, Some(signal)) => Some(format!("uv was killed by signal {signal}")),
                    (false, None) => None,
                });
                break;
            }
            Err(error) => {
                outcome = Err(Some(error.to_string()));
                break;
            }
        }
    }
    size_watch.abort();
    drop(chunks);
    let tail = forwarding.await.unwrap_or_default();
    // Checked again once uv has stopped writing: what it wrote after the watch last looked counts too.
    if *too_big.borrow() || size_of(&staging.join("env")) > cap {
        return failed(format!(
            "the environment is larger than the cache may hold ({} MB, AUTOMA_ENV_CACHE_MB)",
            inner.settings.cache_mb
        ));
    }
    if let Err(reason) = outcome {
        return failed(
            reason.map_or(tail.clone(), |reason| if tail.is_empty() { reason } else { format!("{reason}\n{tail}") }),
        );
    }
    let _cache = lock_file(dir.join(".lock")).await?;
    if let Err(e) = std::fs::rename(staging.join("env"), dir.join(key)) {
        return failed(format!("cannot move the environment into place: {e}"));
    }
    let _ = std::fs::remove_dir_all(&staging);
    evict(&dir, cap, key);
    Ok(())
}

/// How often a build's size is looked at.
const SIZE_CHECK_EVERY: Duration = Duration::from_millis(250);

/// Stops a build whose staging directory grows past `cap` bytes: the sandbox bounds each file a build writes,
/// not their sum, and a small compressed wheel can unpack into gigabytes.
fn watch_size(staging: PathBuf, cap: u64) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (too_big, stop) = watch::channel(false);
    let watcher = tokio::spawn(async move {
        loop {
            tokio::time::sleep(SIZE_CHECK_EVERY).await;
            let staging = staging.clone();
            let size = tokio::task::spawn_blocking(move || size_of(&staging)).await.unwrap_or(0);
            if size > cap {
                too_big.send_replace(true);
                return;
            }
        }
    });
    (stop, watcher)
}

/// `uv venv`, then `uv pip install` of the lock: exact versions, checked against their hashes, wheels only (an
/// sdist's build would run package code), nothing the lock does not list.
fn build_steps(inner: &Inner, staging: &Path) -> Vec<BuildSpec> {
    let settings = &inner.settings;
    let uv = inner.uv.as_ref().map(|uv| uv.program.clone()).unwrap_or_default();
    let text = |path: &Path| path.to_string_lossy().into_owned();
    let env = staging.join("env");
    let venv = vec![
        "venv".into(),
        "--no-progress".into(),
        "--relocatable".into(),
        "--python".into(),
        text(&inner.interpreter.path),
        text(&env),
    ];
    let mut install: Vec<String> = ["pip", "install", "--no-progress", "--python"].map(String::from).into();
    install.push(text(&env.join("bin/python")));
    install.extend(["--no-deps", "--require-hashes", "--no-build", "-r"].map(String::from));
    install.push(text(&staging.join("lock.txt")));
    for place in &settings.find_links {
        install.extend(["--find-links".into(), place.clone()]);
    }
    let readable: Vec<PathBuf> =
        settings.find_links.iter().filter(|place| !place.contains("://")).map(PathBuf::from).collect();
    let mut env_vars = vec![
        ("UV_CACHE_DIR".into(), text(&staging.join("cache"))),
        ("UV_NO_CONFIG".into(), "1".into()),
        ("UV_PYTHON_DOWNLOADS".into(), "never".into()),
        ("NO_COLOR".into(), "1".into()),
    ];
    if settings.offline {
        install.extend(["--offline", "--no-index"].map(String::from));
    } else {
        // Index URLs may carry credentials: in uv's environment they are not on a command line that any user
        // of the host can read, as the server does when it locks.
        if let Some(url) = &settings.index_url {
            env_vars.push(("UV_INDEX_URL".into(), url.clone()));
        }
        if !settings.extra_index_urls.is_empty() {
            env_vars.push(("UV_EXTRA_INDEX_URL".into(), settings.extra_index_urls.join(" ")));
        }
    }
    [(venv, false), (install, !settings.offline)]
        .into_iter()
        .map(|(args, network)| BuildSpec {
            program: uv.clone(),
            args,
            env: env_vars.clone(),
            readable: readable.clone(),
            writable: vec![staging.to_path_buf()],
            limits: build_limits(),
            network,
        })
        .collect()
}

/// uv runs many threads, each of which counts as a process.
fn build_limits() -> Limits {
    Limits {
        timeout: Duration::from_secs(30 * 60),
        memory_mb: 4096,
        cpu_seconds: 30 * 60,
        max_output_bytes: 1024 * 1024,
        max_processes: 512,
        disk_mb: 1024,
        open_files: 4096,
    }
}

/// Passes the build's output on as `system` chunks, and returns its last lines.
async fn forward(mut chunks: mpsc::Receiver<OutputChunk>, output: mpsc::Sender<OutputChunk>) -> String {
    let mut tail: Vec<String> = Vec::new();
    while let Some(chunk) = chunks.recv().await {
        tail.extend(chunk.data.lines().map(str::to_owned).filter(|line| !line.trim().is_empty()));
        if tail.len() > TAIL_LINES {
            tail.drain(..tail.len() - TAIL_LINES);
        }
        let _ = output.send(OutputChunk { stream: Stream::System, ..chunk }).await;
    }
    tail.join("\n")
}

/// The lock file a build of `key` holds, in `.locks/` beside the environments; created when missing.
fn key_lock(dir: &Path, key: &str) -> PathBuf {
    let locks = dir.join(".locks");
    let _ = std::fs::create_dir(&locks);
    locks.join(key)
}

/// Takes the lock file `path` (created if need be), waiting while another build or eviction, in this process
/// or another, holds it.
async fn lock_file(path: PathBuf) -> Result<File, String> {
    tokio::task::spawn_blocking(move || {
        let file = File::options().create(true).truncate(false).write(true).open(&path)?;
        file.lock()?;
        Ok::<File, std::io::Error>(file)
    })
    .await
    .map_err(|e| format!("environment build failed: {e}"))?
    .map_err(|e| format!("environment build failed: cannot lock the environment cache: {e}"))
}

/// Staging and trash directories of builds and evictions that did not finish (the agent stopped during them),
/// unless the build or eviction that made them is still under way here or in another process.
fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let guard = match name.strip_prefix(".build-") {
            Some(key) => key_lock(dir, key),
            None if name.starts_with(".trash-") => dir.join(".lock"),
            None => continue,
        };
        let Ok(lock) = File::options().create(true).truncate(false).write(true).open(guard) else { continue };
        if lock.try_lock().is_ok() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The environments in `dir`: directories named by a key.
fn environments_in(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_str()?.to_owned();
            let is_key = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
            (is_key && entry.file_type().ok()?.is_dir()).then(|| (name, entry.path()))
        })
        .collect()
}

/// Removes the least recently used environments until the rest fit in `cap` bytes, skipping `keep` (just
/// built, about to be used) and any a run holds.
fn evict(dir: &Path, cap: u64, keep: &str) {
    let mut all: Vec<(SystemTime, u64, String, PathBuf)> = environments_in(dir)
        .into_iter()
        .map(|(key, path)| {
            let used = std::fs::metadata(&path).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
            (used, size_of(&path), key, path)
        })
        .collect();
    let mut total: u64 = all.iter().map(|(_, size, _, _)| size).sum();
    all.sort();
    for (_, size, key, path) in all {
        if total <= cap {
            break;
        }
        if key == keep {
            continue;
        }
        let Ok(directory) = File::open(&path) else { continue };
        if directory.try_lock().is_err() {
            continue;
        }
        let trash = dir.join(format!(".trash-{key}"));
        if std::fs::rename(&path, &trash).is_ok() {
            drop(directory);
            let _ = std::fs::remove_dir_all(&trash);
            total = total.saturating_sub(size);
            tracing::info!(environment = %key, bytes = size, "evicted the least recently used environment");
        }
    }
}

/// The disk space under `path`, symlinks not followed: each file's allocated blocks, counted once however many
/// hard links it has (uv links an environment's files from its cache), and at least one block per entry, so a
/// flood of empty files counts too.
fn size_of(path: &Path) -> u64 {
    fn walk(path: &Path, seen: &mut std::collections::HashSet<(u64, u64)>) -> u64 {
        let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
        if !seen.insert((meta.dev(), meta.ino())) {
            return 0;
        }
        let own = (meta.blocks() * 512).max(ENTRY_BYTES);
        if !meta.is_dir() {
            return own;
        }
        own + std::fs::read_dir(path)
            .map_or(0, |entries| entries.flatten().map(|entry| walk(&entry.path(), seen)).sum())
    }
    walk(path, &mut std::collections::HashSet::new())
}

/// The least an entry is counted as: one filesystem block.
const ENTRY_BYTES: u64 = 4096;

/// The configured uv, else the first on `PATH`, as long as `uv --version` says it is one.
fn find_uv(configured: Option<&Path>) -> Result<Uv, String> {
    let program = match configured {
        Some(path) => path.to_path_buf(),
        None => std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .filter(|dir| dir.is_absolute())
            .map(|dir| dir.join("uv"))
            .find(|candidate| candidate.is_file())
            .ok_or("uv is not on PATH and AUTOMA_UV is not set")?,
    };
    let program = std::fs::canonicalize(&program).map_err(|e| format!("{}: {e}", program.display()))?;
    let out = Command::new(&program)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("{} does not start: {e}", program.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .split_whitespace()
        .nth(1)
        .filter(|_| out.status.success() && text.starts_with("uv "))
        .ok_or_else(|| format!("{} --version does not report a uv version", program.display()))?
        .to_owned();
    Ok(Uv { program, version })
}

fn describe_interpreter(path: &Path) -> Result<Interpreter, String> {
    // The release from `sys.version_info`: a build between releases says `3.14.0a1+`, which is no PEP 440 version.
    const DESCRIBE: &str = "import platform, sys\nprint('.'.join(map(str, sys.version_info[:3])))\nprint(sys.version)\n\
                            print(sys.platform, platform.machine(), *platform.libc_ver(), sys.implementation.cache_tag)";
    let out = Command::new(path)
        .args(["-I", "-c", DESCRIBE])
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{} does not start: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (version, identity) = text.split_once('\n').filter(|_| out.status.success()).ok_or_else(|| {
        format!("{} does not describe itself: {}", path.display(), String::from_utf8_lossy(&out.stderr))
    })?;
    Ok(Interpreter { path: path.to_path_buf(), version: version.trim().to_owned(), identity: identity.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three environments of 400 KiB, used in the order a, b, c.
    fn cache() -> (tempfile::TempDir, [String; 3]) {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = ["a", "b", "c"].map(|c| c.repeat(64));
        for (age, key) in keys.iter().enumerate() {
            let env = dir.path().join(key);
            std::fs::create_dir_all(env.join("lib")).expect("mkdir");
            std::fs::write(env.join("lib/module.py"), vec![b'#'; 400 * 1024]).expect("write");
            let used = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + age as u64);
            File::open(&env).expect("open").set_modified(used).expect("set last use");
        }
        (dir, keys)
    }

    fn left(dir: &Path) -> Vec<String> {
        let mut keys: Vec<String> = environments_in(dir).into_iter().map(|(key, _)| key).collect();
        keys.sort();
        keys
    }

    #[test]
    fn an_interpreter_elsewhere_gets_environments_of_its_own() {
        let interpreter = |path: &str| Interpreter {
            path: path.into(),
            version: "3.11.7".into(),
            identity: "3.11.7 (main) linux x86_64 glibc 2.36 cpython-311".into(),
        };
        let (here, moved) = (interpreter("/usr/bin/python3.11"), interpreter("/opt/python/bin/python3.11"));
        assert_eq!(key_of("lock", &here), key_of("lock", &interpreter("/usr/bin/python3.11")));
        assert_ne!(key_of("lock", &here), key_of("lock", &moved));
    }

    #[test]
    fn leftovers_of_stopped_builds_go_but_not_those_of_builds_under_way() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in [".build-stopped", ".build-running", ".trash-old"] {
            std::fs::create_dir_all(dir.path().join(name).join("env")).expect("mkdir");
        }
        let running = File::options().create(true).truncate(false).write(true).open(key_lock(dir.path(), "running"));
        running.as_ref().expect("lock file").lock().expect("lock");
        remove_leftovers(dir.path());
        assert!(!dir.path().join(".build-stopped").exists());
        assert!(!dir.path().join(".trash-old").exists());
        assert!(dir.path().join(".build-running").exists());
    }

    #[test]
    fn eviction_removes_the_least_recently_used_first() {
        let (dir, [a, b, c]) = cache();
        evict(dir.path(), 900 * 1024, &c);
        assert_eq!(left(dir.path()), vec![b.clone(), c.clone()]);
        evict(dir.path(), 0, &c);
        assert_eq!(left(dir.path()), vec![c]);
        assert!(!dir.path().join(&a).exists());
    }

    #[test]
    fn eviction_skips_an_environment_in_use() {
        let (dir, [a, b, c]) = cache();
        let in_use = lease(dir.path(), &a).expect("leased");
        evict(dir.path(), 900 * 1024, &c);
        // The oldest is in use, so the next oldest goes instead.
        assert_eq!(left(dir.path()), vec![a.clone(), c.clone()]);
        drop(in_use);
        evict(dir.path(), 0, &c);
        assert_eq!(left(dir.path()), vec![c]);
        assert!(!dir.path().join(&b).exists());
    }

    #[test]
    fn a_lease_records_the_last_use() {
        let (dir, [a, _, _]) = cache();
        let before = std::fs::metadata(dir.path().join(&a)).and_then(|m| m.modified()).expect("mtime");
        let _lease = lease(dir.path(), &a).expect("leased");
        let after = std::fs::metadata(dir.path().join(&a)).and_then(|m| m.modified()).expect("mtime");
        assert!(after > before);
        assert!(lease(dir.path(), &"d".repeat(64)).is_none());
    }
}
