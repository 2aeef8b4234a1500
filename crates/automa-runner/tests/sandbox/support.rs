//! Starting sandboxes for tests and running scripts in them, with the real helper and real Python.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use automa_runner::{
    HelperCommand, Layer, Limits, OutputChunk, Profile, Report, RunSpec, Sandbox, SandboxConfig, Stream,
};
use tokio::sync::{mpsc, watch};

/// The interpreter behind `python3`, resolved once per test process.
pub fn interpreter() -> PathBuf {
    static INTERPRETER: OnceLock<PathBuf> = OnceLock::new();
    INTERPRETER.get_or_init(|| automa_runner::resolve_interpreter(None).expect("python3 is installed")).clone()
}

pub fn helper() -> HelperCommand {
    HelperCommand { program: env!("CARGO_BIN_EXE_automa-sandbox-helper").into(), args: Vec::new() }
}

/// A sandbox and the temporary directory it works in, removed together.
pub struct Harness {
    pub sandbox: Sandbox,
    pub dir: tempfile::TempDir,
    /// Every run through [`run`] asks for a warm start, and must get one unless it cannot have one.
    pub warm: bool,
}

/// How the runs of a test start: the same isolation tests run in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Cold,
    Warm,
}

/// A sandbox for runs started in `mode`. A warm one has already served a warm run on each slot, so that each
/// holds a prepared sandbox (the first warm run of a slot starts cold).
pub async fn harness(profile: Profile, disabled: &[Layer], mode: Mode) -> Harness {
    let harness = with(profile, disabled);
    match mode {
        Mode::Cold => harness,
        Mode::Warm => warmed(harness).await,
    }
}

/// `harness` after a warm run on each of its two slots, each of which then holds a prepared sandbox.
pub async fn warmed(mut harness: Harness) -> Harness {
    let warm = || RunSpec { warm: true, ..spec("pass") };
    let first = tokio::join!(run(&harness, warm()), run(&harness, warm()));
    for out in [first.0, first.1] {
        assert!(out.report.exit_code == Some(0) && !out.report.warm_start, "{out:#?}");
    }
    harness.warm = true;
    harness
}

impl Harness {
    pub fn work_root(&self) -> PathBuf {
        self.dir.path().join("runs")
    }
}

pub fn config(profile: Profile, dir: &tempfile::TempDir) -> SandboxConfig {
    let mut config = SandboxConfig::new(profile, interpreter(), helper(), dir.path().join("runs"));
    config.slots = 2;
    config.uid_base = uid_base();
    config
}

/// Slot uids of their own for every test process: RLIMIT_NPROC counts a uid's processes host-wide, so
/// sandboxes running at the same time must never share one.
fn uid_base() -> u32 {
    SandboxConfig::DEFAULT_UID_BASE + (std::process::id() % 100_000) * 2
}

pub fn strict() -> Harness {
    with(Profile::Strict, &[])
}

pub fn with(profile: Profile, disabled: &[Layer]) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(profile, &dir);
    config.disabled_layers = disabled.to_vec();
    let sandbox = Sandbox::new(config).expect("the sandbox starts");
    Harness { sandbox, dir, warm: false }
}

/// A sandbox whose helper runs as `nobody` through setpriv, as an unprivileged deployment would. It uses
/// Debian's Python: root's pyenv under the 0700 /root is out of nobody's reach.
pub fn unprivileged(disabled: &[Layer]) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let python = automa_runner::resolve_interpreter(Some("/usr/bin/python3".as_ref())).expect("Debian python3");
    let helper = HelperCommand {
        program: "/usr/bin/setpriv".into(),
        args: ["--reuid=65534", "--regid=65534", "--clear-groups", "--"]
            .into_iter()
            .map(String::from)
            .chain([env!("CARGO_BIN_EXE_automa-sandbox-helper").to_owned()])
            .collect(),
    };
    let mut config = SandboxConfig::new(Profile::Strict, python, helper, dir.path().join("runs"));
    config.slots = 2;
    config.disabled_layers = disabled.to_vec();
    let sandbox = Sandbox::new(config).expect("the unprivileged sandbox starts");
    Harness { sandbox, dir, warm: false }
}

/// Limits small enough for tests to hit quickly.
pub fn limits() -> Limits {
    Limits {
        timeout: std::time::Duration::from_secs(60),
        memory_mb: 256,
        cpu_seconds: 60,
        max_output_bytes: 1024 * 1024,
        max_processes: 32,
        disk_mb: 16,
        open_files: 64,
    }
}

pub fn spec(script: &str) -> RunSpec {
    RunSpec {
        script_name: "main.py".into(),
        script: script.into(),
        args: Vec::new(),
        env: Vec::new(),
        limits: limits(),
        network: false,
        payload: None,
        environment: None,
        warm: false,
    }
}

/// What a run printed, stream by stream, and its report.
#[derive(Debug)]
pub struct Outcome {
    pub report: Report,
    pub stdout: String,
    pub stderr: String,
    pub system: String,
    pub chunks: Vec<OutputChunk>,
}

impl Outcome {
    /// The run's stdout, failing the test with everything known when the run did not exit 0.
    pub fn ok(&self) -> &str {
        assert_eq!(self.report.exit_code, Some(0), "run failed: {self:#?}");
        &self.stdout
    }
}

pub async fn run(harness: &Harness, spec: RunSpec) -> Outcome {
    let (_cancel, cancel_rx) = watch::channel(false);
    run_with(harness, spec, cancel_rx).await
}

pub async fn run_with(harness: &Harness, mut spec: RunSpec, cancel: watch::Receiver<bool>) -> Outcome {
    spec.warm |= harness.warm;
    let can_start_warm = harness.warm && !spec.network && spec.environment.is_none();
    let (tx, mut rx) = mpsc::channel(64);
    let collector = tokio::spawn(async move {
        let mut chunks = Vec::new();
        while let Some(chunk) = rx.recv().await {
            chunks.push(chunk);
        }
        chunks
    });
    let report = harness.sandbox.run(spec, tx, cancel).await.expect("the sandbox runs the script");
    let chunks = collector.await.expect("collector");
    let text = |stream: Stream| chunks.iter().filter(|c| c.stream == stream).map(|c| c.data.as_str()).collect();
    if harness.warm && !report.cancelled {
        assert_eq!(report.warm_start, can_start_warm, "{report:#?}");
    }
    Outcome { report, stdout: text(Stream::Stdout), stderr: text(Stream::Stderr), system: text(Stream::System), chunks }
}

pub async fn script(harness: &Harness, script: &str) -> Outcome {
    run(harness, spec(script)).await
}
