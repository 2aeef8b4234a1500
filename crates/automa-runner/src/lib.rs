//! The sandbox that runs one Python script under the configured isolation (in a prepared environment when it
//! needs packages), enforces its limits, streams its output and reports how it ended; it also runs the builds
//! of those environments under the same isolation. It knows nothing of HTTP or the database.
//!
//! The process that calls [`Sandbox::run`] is multithreaded, so it never does setup between `fork` and `exec`
//! (SANDBOX.md, trap 1): each slot starts a small single-threaded helper ([`helper::main`]) with a cleared
//! environment once and keeps it; for every run the helper forks a supervisor, the sandbox hands it the run's
//! configuration over a socket, and it builds the namespaces, mounts, cgroup membership and privilege drop
//! before it execs the interpreter. Profile `none`, which promises none of that, spawns the interpreter
//! directly with only raw system calls between fork and exec.

mod capabilities;
mod cgroup;
pub mod helper;
mod interpreter;
mod network;
mod output;
mod plain;
mod protocol;
mod sandbox;
mod slot_helper;
mod warm;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use capabilities::{Capabilities, CgroupVersion};
pub use interpreter::resolve_interpreter;
pub use network::Cidr;
pub use sandbox::Sandbox;

/// The payload file's name in the run's work directory. Not a `.py` name, so no script can be saved over it.
pub const TRIGGER_PAYLOAD_FILE: &str = ".automa-trigger-payload.json";

/// How much isolation runs get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Every layer the host offers; refuses to start when a required one is missing.
    Strict,
    /// A plain child process with rlimits and a timeout only. An admin's explicit choice.
    None,
}

impl FromStr for Profile {
    type Err = RunnerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "strict" => Ok(Profile::Strict),
            "none" => Ok(Profile::None),
            other => Err(RunnerError::InvalidConfig(format!(
                "unknown sandbox profile {other:?}: expected \"strict\" or \"none\""
            ))),
        }
    }
}

/// One isolation layer, as named in [`SandboxConfig::disabled_layers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    UserNs,
    MountNs,
    PidNs,
    NetNs,
    IpcNs,
    UtsNs,
    NoNewPrivs,
    /// Dropping every capability (bounding, ambient, effective, permitted, inheritable).
    Capabilities,
    /// Switching to the slot's unprivileged host uid when the helper runs as root.
    SlotUser,
    Seccomp,
    Landlock,
    Cgroups,
    Rlimits,
    /// The egress policy of networked runs: the routes that refuse link-local, multicast, the host's own
    /// addresses and the configured CIDRs, and slirp4netns's refusal of the host's loopback.
    NetworkPolicy,
}

/// How the sandbox is set up; read once by [`Sandbox::new`].
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub profile: Profile,
    /// The real Python executable, already resolved (see [`resolve_interpreter`]).
    pub interpreter: PathBuf,
    /// How to start the single-threaded setup helper.
    pub helper: HelperCommand,
    /// Maximum concurrent runs; each slot has its own unprivileged uid and cgroups.
    pub slots: usize,
    /// Where per-run mount points and directories live, e.g. `data_dir/runs`.
    pub work_root: PathBuf,
    /// First host uid used for slots when the helper runs as root. Sandboxes on one host must use disjoint
    /// ranges: RLIMIT_NPROC counts a uid's processes host-wide.
    pub uid_base: u32,
    /// Destinations networked runs may never reach, on top of those always refused (the host's loopback and
    /// own addresses, link-local and multicast).
    pub network_deny: Vec<Cidr>,
    /// The `slirp4netns` program that gives networked runs their own network namespace; `None` looks for it
    /// on `PATH` and in the usual directories.
    pub slirp4netns: Option<PathBuf>,
    /// For tests and diagnostics only: layers to leave out even where the host offers them. A disabled layer
    /// is reported as a warning in [`Capabilities`]; production configuration must leave this empty.
    #[doc(hidden)]
    pub disabled_layers: Vec<Layer>,
    /// Whether runs that ask for a warm start ([`RunSpec::warm`]) get one: a slot that served one keeps a
    /// sandbox prepared for the next (an idle interpreter, about 10 MiB, dropped after five unused minutes).
    /// Off, every run starts cold.
    pub warm_pool: bool,
}

impl SandboxConfig {
    /// The default uid of slot 0 when the helper runs as root: far above any uid a distribution hands out.
    pub const DEFAULT_UID_BASE: u32 = 200_000;

    /// A configuration with one slot per core, the default uid base and no layer disabled.
    pub fn new(profile: Profile, interpreter: PathBuf, helper: HelperCommand, work_root: PathBuf) -> Self {
        SandboxConfig {
            profile,
            interpreter,
            helper,
            slots: std::thread::available_parallelism().map_or(1, |n| n.get()),
            work_root,
            uid_base: Self::DEFAULT_UID_BASE,
            network_deny: Vec::new(),
            slirp4netns: None,
            disabled_layers: Vec::new(),
            warm_pool: true,
        }
    }
}

/// How to start the helper: `program args...`, after which the helper reads its request from stdin.
#[derive(Debug, Clone)]
pub struct HelperCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// File name the script is saved as in the work directory; also `sys.argv[0]`.
    pub script_name: String,
    pub script: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    /// Whether the run may use the network: its own network namespace with user-mode networking behind the
    /// egress policy. Without it the run has an empty network namespace.
    pub network: bool,
    /// Data the run was started with (a hook's JSON body): written next to the script as a read-only file
    /// named [`TRIGGER_PAYLOAD_FILE`], whose path the script finds in
    /// [`automa_core::params::TRIGGER_PAYLOAD_ENV`].
    pub payload: Option<String>,
    /// A prepared virtual environment (made by [`Sandbox::build`]) the script runs in: bound read-only at the
    /// same path, so its `bin/python` link to the base interpreter stays valid, and started as
    /// `<environment>/bin/python`, so its packages are importable. `None`: the plain interpreter.
    pub environment: Option<PathBuf>,
    /// Start the script in a sandbox prepared before it came, isolated like any other, when the sandbox can:
    /// not with network, an environment, variables that change how the interpreter starts, or no pool. See
    /// [`Report::warm_start`].
    pub warm: bool,
}

/// A program run in the sandbox to build a run's environment (uv), rather than a script.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    /// An absolute path; bound read-only into the sandbox.
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Host paths the build reads besides the system paths and the interpreter: local package directories.
    pub readable: Vec<PathBuf>,
    /// Existing host directories the build writes (the environment being built, its download cache). When the
    /// sandbox switches runs to slot uids they belong to the slot's uid for the build's duration, and are given
    /// back to the sandbox's own uid, recursively, when it ends: no run's uid owns what a build made.
    pub writable: Vec<PathBuf>,
    pub limits: Limits,
    /// Whether the build may use the network, on the same terms as a networked run.
    pub network: bool,
}

/// Resource budget of one run: the run's own [`automa_core::Limits`] and the sandbox's fixed ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub timeout: Duration,
    pub memory_mb: u64,
    pub cpu_seconds: u64,
    /// Output kept across stdout and stderr; the rest is counted and dropped, and a run that writes more than
    /// twice this (at least this plus 1 MiB) is killed.
    pub max_output_bytes: u64,
    pub max_processes: u32,
    /// Size of the work directory and, separately, of `/tmp`.
    pub disk_mb: u64,
    pub open_files: u64,
}

impl Limits {
    /// The rlimits a run's program starts with: resource, soft and hard limit. Computed before any fork, so
    /// that profile `none` sets them without allocating between fork and exec.
    pub(crate) fn rlimits(&self) -> [(libc::__rlimit_resource_t, libc::rlim_t, libc::rlim_t); 6] {
        const MIB: u64 = 1024 * 1024;
        let memory = self.memory_mb.saturating_mul(MIB);
        let disk = self.disk_mb.saturating_mul(MIB);
        let processes = u64::from(self.max_processes);
        [
            (libc::RLIMIT_AS, memory, memory),
            // The soft limit sends SIGXCPU, the hard one a second later SIGKILL for a script that ignores it.
            (libc::RLIMIT_CPU, self.cpu_seconds, self.cpu_seconds.saturating_add(1)),
            (libc::RLIMIT_NPROC, processes, processes),
            (libc::RLIMIT_NOFILE, self.open_files, self.open_files),
            (libc::RLIMIT_FSIZE, disk, disk),
            (libc::RLIMIT_CORE, 0, 0),
        ]
    }
}

impl Default for Limits {
    fn default() -> Self {
        automa_core::Limits::default().into()
    }
}

impl From<automa_core::Limits> for Limits {
    fn from(limits: automa_core::Limits) -> Self {
        // Valid limits are positive, so the conversions cannot fail.
        let unsigned = |value: i64| u64::try_from(value).unwrap_or(0);
        Limits {
            timeout: Duration::from_secs(unsigned(limits.timeout_seconds())),
            memory_mb: unsigned(limits.memory_mb()),
            cpu_seconds: unsigned(limits.cpu_seconds()),
            max_output_bytes: unsigned(limits.max_output_bytes()),
            max_processes: 64,
            disk_mb: 256,
            open_files: 256,
        }
    }
}

/// Which stream a chunk of output came from; `System` is the sandbox's own notes (truncation, timeout ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
    System,
}

/// A piece of a run's output. Chunks end at line boundaries unless a line is longer than 64 KiB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputChunk {
    pub stream: Stream,
    /// The bytes as written, decoded as lossy UTF-8.
    pub data: String,
    /// When the chunk was read from the script (this host's clock), so that output shipped late, after an
    /// outage, keeps the time it was written.
    pub at: std::time::SystemTime,
}

/// How a run ended and what it used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub cancelled: bool,
    pub oom_killed: bool,
    /// The run was killed because it wrote past the hard output cap.
    pub output_limit_exceeded: bool,
    pub max_rss_kb: Option<u64>,
    pub cpu_ms: Option<u64>,
    /// Bytes the script wrote to stdout and stderr, including those that were dropped.
    pub output_bytes: u64,
    /// Some output was dropped because it was over [`Limits::max_output_bytes`].
    pub truncated: bool,
    /// Time from the start of the helper to the end of the run, without the wait for a free slot.
    pub duration: Duration,
    /// Time from starting the helper until the sandbox was built and the workload started in it (what is
    /// left, the workload confining itself and starting the interpreter, is not included). Absent when the
    /// run failed before that, and for a warm start, whose sandbox was built before the run came.
    pub setup: Option<Duration>,
    /// The run was handed to a prepared sandbox; its `duration` counts from the hand-over.
    #[serde(default)]
    pub warm_start: bool,
}

/// Why the sandbox could not start or run a script. A script that fails is not an error: see [`Report`].
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("the sandbox cannot run here: {0}")]
    Unsupported(String),
    #[error("invalid sandbox configuration: {0}")]
    InvalidConfig(String),
    #[error("invalid run: {0}")]
    InvalidSpec(String),
    #[error("could not start {program}: {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sandbox i/o failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("sandbox helper failed: {0}")]
    Helper(String),
}
