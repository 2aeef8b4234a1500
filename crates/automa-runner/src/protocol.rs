//! The messages between the sandbox and its helper: a length-prefixed JSON request on the helper's stdin (a
//! socket), then one JSON answer back on the same socket. Configuration never travels through argv or the
//! environment, where `/proc` would show it to the script (SANDBOX.md, trap 3).

use std::io::{Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The work directory inside the sandbox.
pub(crate) const WORKDIR: &str = "/work";

/// Requests bigger than this are refused: scripts are bounded by the server well below it.
const MAX_REQUEST: u32 = 64 * 1024 * 1024;

/// What the helper is asked to do.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    Probe(ProbeRequest),
    /// Become the slot's long-lived helper, forking a supervisor per run (`helper::server`), after joining the
    /// slot's cgroups through these `cgroup.procs` files so that every run is born in them.
    Serve {
        cgroup_procs: Vec<PathBuf>,
    },
    Run(Box<RunRequest>),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ProbeRequest {
    /// `cgroup.procs` files the helper must be able to write for cgroups to be usable.
    pub cgroup_procs: Vec<PathBuf>,
}

/// What the helper found it can do, each layer tried in a throwaway child.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ProbeReport {
    pub euid: u32,
    pub egid: u32,
    pub user_ns: Result<(), String>,
    pub mount_ns: Result<(), String>,
    pub pid_ns: Result<(), String>,
    pub net_ns: Result<(), String>,
    pub ipc_ns: Result<(), String>,
    pub uts_ns: Result<(), String>,
    pub no_new_privs: Result<(), String>,
    pub seccomp: Result<(), String>,
    pub landlock_abi: Option<u8>,
    pub rlimits: Result<(), String>,
    pub cgroups_writable: Result<(), String>,
    /// Whether the helper can open `/dev/net/tun`, which slirp4netns needs for networked runs.
    pub tun: Result<(), String>,
}

/// The layers a run applies. Every `true` layer must succeed or the run fails: the helper never silently
/// gives less isolation than it was asked for.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct Layers {
    pub user_ns: bool,
    pub mount_ns: bool,
    pub pid_ns: bool,
    pub net_ns: bool,
    pub ipc_ns: bool,
    pub uts_ns: bool,
    pub no_new_privs: bool,
    pub drop_caps: bool,
    pub seccomp: bool,
    pub landlock: bool,
    pub rlimits: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RunRequest {
    pub layers: Layers,
    /// Host uid and gid to switch to; `None` keeps the helper's own.
    pub user: Option<(u32, u32)>,
    /// The program exec'd: the interpreter (an environment's `bin/python` when the run has one), or for an
    /// environment build, the builder.
    pub program: PathBuf,
    /// The script written into the work directory and passed to the program before `args`; none for a build.
    pub script: Option<ScriptFile>,
    /// Written beside the script, read-only, as `TRIGGER_PAYLOAD_FILE`.
    pub payload: Option<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Where the new root is assembled when the mount namespace is used.
    pub root_mount: PathBuf,
    /// The work directory on the host, used when there is no mount namespace.
    pub host_workdir: PathBuf,
    /// Read-only system paths bound into the new root (or allowed by landlock).
    pub system_paths: Vec<PathBuf>,
    /// Further host paths bound at the same place (and allowed by landlock): a run's environment, read-only,
    /// or what an environment build reads and writes.
    pub binds: Vec<Bind>,
    pub limits: crate::Limits,
    /// Whether TCP is allowed (landlock); the network namespace is switched by `layers.net_ns`.
    pub network: bool,
    /// For a networked run in its own network namespace: how to connect that namespace to the outside.
    pub user_net: Option<UserNet>,
    /// A prepared sandbox (`warm.rs`): the workload's stdin is a pipe from the init, which waits for a
    /// [`HandOver`] on the channel before it writes the payload and passes the run to the interpreter.
    #[serde(default)]
    pub warm: bool,
}

/// What the sandbox sends a prepared sandbox's supervisor, after [`HAND_OVER`], to start the run it serves.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct HandOver {
    /// Written by the init, as for a cold run by the workload before it drops privileges: the run's uid
    /// cannot make it writable.
    pub payload: Option<String>,
    /// The run as the interpreter's bootstrap reads it on stdin.
    pub run: String,
}

/// The byte that precedes a [`HandOver`] on a prepared sandbox's channel; any other byte, or EOF, kills the run.
pub(crate) const HAND_OVER: u8 = b's';

/// A script and the file name it is saved as in the work directory (also its `sys.argv[0]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ScriptFile {
    pub name: String,
    pub content: String,
}

/// A host path the workload sees at the same place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Bind {
    pub path: PathBuf,
    pub writable: bool,
}

/// User-mode networking for one run: slirp4netns, started by the supervisor on the host's side of its new
/// network namespace, and the egress policy installed inside that namespace before the script starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct UserNet {
    pub slirp4netns: PathBuf,
    /// Whether the egress policy applies; only switched off to show that its test can fail.
    pub policy: bool,
    /// Configured destinations to refuse, besides those always refused.
    pub deny: Vec<crate::Cidr>,
}

/// How the run ended, from the helper's point of view.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum RunOutcome {
    Exited(i32),
    Signaled(i32),
    Failed(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RunReport {
    pub outcome: RunOutcome,
    pub max_rss_kb: Option<u64>,
    pub cpu_ms: Option<u64>,
    /// When the init had built the sandbox and started the workload ([`monotonic_ns`]): the sandbox subtracts
    /// its own start of the helper to get the setup time.
    #[serde(default)]
    pub workload_started_ns: Option<u64>,
}

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for every process of the host, so a time taken in the helper
/// compares with one taken in the sandbox.
pub(crate) fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into `now`, which is valid and exclusively borrowed.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}

pub(crate) fn write_message<T: Serialize>(out: &mut impl Write, message: &T) -> std::io::Result<()> {
    let body = serde_json::to_vec(message)?;
    let len = u32::try_from(body.len()).map_err(|_| std::io::Error::other("message too large"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&body)?;
    out.flush()
}

pub(crate) fn read_message<T: for<'de> Deserialize<'de>>(input: &mut impl Read) -> std::io::Result<T> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_REQUEST {
        return Err(std::io::Error::other("message too large"));
    }
    let mut body = vec![0u8; len as usize];
    input.read_exact(&mut body)?;
    serde_json::from_slice(&body).map_err(std::io::Error::other)
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> std::io::Result<T> {
    let mut input = bytes;
    read_message(&mut input)
}
