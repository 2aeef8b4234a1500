//! The single-threaded helper that builds one run's sandbox and supervises it (SANDBOX.md, trap 1).
//!
//! The process tree of a run is:
//!
//! - the slot's helper ([`server`]): started once per slot by the sandbox with a cleared environment; it joins
//!   the slot's cgroups, then forks a supervisor for each run and does nothing else. Everything below is
//!   born in those cgroups: a move into a cgroup waits for an RCU grace period (milliseconds) when it is
//!   the first after a pause, and no run makes one.
//! - the supervisor: stdin a socket carrying the request and, at the end, the report; stdout and stderr the
//!   run's output pipes. It creates the namespaces and forks the init; a byte or EOF on the socket
//!   means "kill the run".
//! - for a networked run, slirp4netns: forked by the supervisor before it unshares, so it stays in the host's
//!   network namespace and links it to the run's ([`network`]).
//! - the init: pid 1 of the new pid namespace, with `PR_SET_PDEATHSIG(SIGKILL)` so the whole namespace dies
//!   with the supervisor (trap 4). It builds the root, starts the workload and reaps.
//! - the workload: drops privileges, confines itself and execs the interpreter.

mod confine;
mod init;
mod mounts;
mod network;
mod probe;
mod seccomp;
mod server;

pub(crate) use confine::write_read_only;

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use crate::protocol::{HAND_OVER, HandOver, Request, RunOutcome, RunReport, RunRequest, read_message, write_message};

/// Entry point of the helper process: `automa __sandbox-helper` and `automa-sandbox-helper` call it.
pub fn main() -> ! {
    answer(Origin::Started)
}

/// How this process came to answer the request on its fd 0.
enum Origin<'a> {
    /// Started by the sandbox: it may become the slot's long-lived helper.
    Started,
    /// Forked by the slot's helper for one run, with the slot's empty network namespace when it holds one.
    Forked { empty_network: Option<&'a OwnedFd> },
}

/// Reads one request from fd 0 and answers it on the same socket.
fn answer(origin: Origin<'_>) -> ! {
    // SAFETY: fd 0 is the socket the sandbox passed as stdin; nothing else in this process owns it.
    let mut channel = unsafe { File::from_raw_fd(0) };
    let request: Request = match read_message(&mut channel) {
        Ok(r) => r,
        Err(_) => std::process::exit(2),
    };
    let empty_network = match origin {
        Origin::Started => None,
        Origin::Forked { empty_network } => empty_network,
    };
    let written = match request {
        Request::Probe(probe) => write_message(&mut channel, &probe::run(&probe)),
        Request::Serve { cgroup_procs } if matches!(origin, Origin::Started) => server::serve(channel, &cgroup_procs),
        Request::Serve { .. } => std::process::exit(2),
        Request::Run(run) => {
            let report = supervise(&run, &channel, empty_network);
            write_message(&mut channel, &report)
        }
    };
    std::process::exit(if written.is_ok() { 0 } else { 3 })
}

/// The slot's empty network namespace, made once by a root helper and entered by its runs without network
/// ([`server`]). `None` where the helper may not make one, or its runs could not enter it.
fn empty_network() -> Option<OwnedFd> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let host = File::open("/proc/self/ns/net").ok()?;
    nix::sched::unshare(CloneFlags::CLONE_NEWNET).ok()?;
    let empty = File::open("/proc/self/ns/net");
    if nix::sched::setns(&host, CloneFlags::CLONE_NEWNET).is_err() {
        // Stuck in the empty namespace: every networked run's slirp4netns would start from here. Refuse
        // service instead; the sandbox reports the helper gone.
        std::process::exit(4);
    }
    empty.ok().map(OwnedFd::from)
}

/// Lines the init sends the supervisor through the status pipe.
pub(crate) mod status {
    pub const PID: &str = "pid ";
    pub const EXIT: &str = "exit ";
    pub const SIGNAL: &str = "signal ";
    pub const ERROR: &str = "error ";
}

fn supervise(request: &RunRequest, channel: &File, empty_network: Option<&OwnedFd>) -> RunReport {
    let failed = |message: String| RunReport {
        outcome: RunOutcome::Failed(message),
        max_rss_kb: None,
        cpu_ms: None,
        workload_started_ns: None,
    };
    let launcher = match request.user_net.as_ref().map(network::Launcher::fork) {
        None => None,
        Some(Ok(launcher)) => Some(launcher),
        Some(Err(e)) => return failed(e),
    };
    if let Err(e) = enter_namespaces(request, empty_network) {
        return failed(e);
    }
    // Held to the end of the run: dropping it stops slirp4netns, after the init and its usage are collected.
    let _slirp = match launcher.map(network::Launcher::start) {
        None => None,
        Some(Ok(slirp)) => Some(slirp),
        Some(Err(e)) => return failed(e),
    };
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC);
    let pipes = pipe().and_then(|status| Ok((status, pipe()?)));
    let ((status_r, status_w), (lifeline_r, lifeline_w)) = match pipes {
        Ok(p) => p,
        Err(e) => return failed(format!("pipe: {e}")),
    };
    let hand_over = match request.warm.then(|| nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)).transpose() {
        Ok(pipe) => pipe,
        Err(e) => return failed(format!("pipe: {e}")),
    };
    let (hand_over_r, hand_over_w) = hand_over.unzip();
    // SAFETY: the helper is single-threaded, so the child may allocate and run ordinary code.
    match unsafe { nix::unistd::fork() } {
        Err(e) => failed(format!("fork: {e}")),
        Ok(ForkResult::Child) => {
            drop((status_r, lifeline_w, hand_over_w));
            init::run(request, status_w, lifeline_r, hand_over_r)
        }
        Ok(ForkResult::Parent { child }) => {
            drop((status_w, lifeline_r, hand_over_r));
            let hand_over = hand_over_w.map(File::from);
            let (text, killed, workload_started_ns) = watch(child, channel, status_r, hand_over, request.layers.pid_ns);
            let wait = waitpid(child, None);
            // Only now, with the init reaped, may the lifeline close: the init never sees it early.
            drop(lifeline_w);
            let mut report = collect(&text, wait, killed);
            report.workload_started_ns = workload_started_ns;
            let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN);
            if let Ok(usage) = usage {
                report.max_rss_kb = u64::try_from(usage.max_rss()).ok();
                let cpu = usage.user_time() + usage.system_time();
                report.cpu_ms = u64::try_from(cpu.tv_sec() * 1000 + cpu.tv_usec() / 1000).ok();
            }
            report
        }
    }
}

/// Unshares every namespace but the mount namespace, which the init unshares for itself so that its
/// `pivot_root` does not move the supervisor too. A run without network enters the slot's empty network
/// namespace instead of making one, when there is one and no user namespace of the run's stands between.
fn enter_namespaces(request: &RunRequest, empty_network: Option<&OwnedFd>) -> Result<(), String> {
    let mut layers = request.layers;
    let mut flags = CloneFlags::empty();
    if let Some(empty) = empty_network.filter(|_| layers.net_ns && !layers.user_ns && request.user_net.is_none()) {
        nix::sched::setns(empty, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns(NEWNET): {e}"))?;
        layers.net_ns = false;
    }
    for (on, flag) in [
        (layers.user_ns, CloneFlags::CLONE_NEWUSER),
        (layers.pid_ns, CloneFlags::CLONE_NEWPID),
        (layers.net_ns, CloneFlags::CLONE_NEWNET),
        (layers.ipc_ns, CloneFlags::CLONE_NEWIPC),
        (layers.uts_ns, CloneFlags::CLONE_NEWUTS),
    ] {
        if on {
            flags |= flag;
        }
    }
    if flags.is_empty() {
        return Ok(());
    }
    let uid = nix::unistd::getuid();
    let gid = nix::unistd::getgid();
    nix::sched::unshare(flags).map_err(|e| format!("unshare({flags:?}): {e}"))?;
    if layers.user_ns {
        map_own_ids(uid.as_raw(), gid.as_raw())?;
    }
    Ok(())
}

/// Maps the helper's own uid and gid to themselves: an unprivileged helper can map nothing else, and the
/// script is never uid 0, not even inside its namespace.
pub(crate) fn map_own_ids(uid: u32, gid: u32) -> Result<(), String> {
    let write = |file: &str, text: String| {
        std::fs::write(format!("/proc/self/{file}"), text).map_err(|e| format!("write /proc/self/{file}: {e}"))
    };
    write("setgroups", "deny".into())?;
    write("uid_map", format!("{uid} {uid} 1"))?;
    write("gid_map", format!("{gid} {gid} 1"))
}

/// Waits for the init to exit, killing the run when the sandbox asks (a byte or EOF on the channel), and
/// collects the init's status lines as they come. A prepared sandbox's init (`hand_over`) is first passed the
/// run's [`HAND_OVER`] message, once. Returns the lines, whether the run was killed, and when the init
/// reported the workload started.
fn watch(
    init: Pid,
    mut channel: &File,
    status: OwnedFd,
    mut hand_over: Option<File>,
    pid_ns: bool,
) -> (String, bool, Option<u64>) {
    let mut status = File::from(status);
    let mut text = String::new();
    let mut killed = false;
    let mut status_open = true;
    let mut started = None;
    let Ok(pidfd) = pidfd_open(init) else {
        // Without pidfd the sandbox's SIGKILL of the supervisor still ends the run through the init's
        // parent-death signal; the status is read once the init is gone.
        let _ = status.read_to_string(&mut text);
        return (text, killed, started);
    };
    loop {
        let mut fds = vec![PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        if !killed {
            fds.push(PollFd::new(channel.as_fd(), PollFlags::POLLIN));
        }
        if status_open {
            fds.push(PollFd::new(status.as_fd(), PollFlags::POLLIN));
        }
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
            Ok(_) => {}
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.any().unwrap_or(true)).collect();
        drop(fds);
        if status_open && ready[ready.len() - 1] {
            let mut buf = [0u8; 4096];
            match status.read(&mut buf) {
                Ok(0) | Err(_) => status_open = false,
                Ok(n) => {
                    text.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if started.is_none() && text.contains(status::PID) {
                        started = Some(crate::protocol::monotonic_ns());
                    }
                }
            }
        }
        if !killed && ready[1] {
            if hand_over.take().is_some_and(|to_init| forward_hand_over(&mut channel, to_init).is_ok()) {
                continue;
            }
            killed = true;
            kill_run(init, &text, pid_ns);
        }
        if ready[0] {
            break;
        }
    }
    let _ = status.read_to_string(&mut text);
    (text, killed, started)
}

/// Passes the run's hand-over from the channel to the init, which is waiting for nothing else; an error (any
/// other byte, EOF, a broken message or init) means the run is to be killed.
fn forward_hand_over(channel: &mut &File, mut to_init: File) -> std::io::Result<()> {
    let mut tag = [0u8; 1];
    channel.read_exact(&mut tag)?;
    if tag[0] != HAND_OVER {
        return Err(std::io::Error::other("not a hand-over"));
    }
    let message: HandOver = read_message(channel)?;
    write_message(&mut to_init, &message)
}

/// With a pid namespace, killing the init ends everything. Without one the workload's process group is
/// killed too, and the sandbox empties the slot's cgroup of anything that left the group.
fn kill_run(init: Pid, text: &str, pid_ns: bool) {
    let _ = kill(init, Signal::SIGKILL);
    if pid_ns {
        return;
    }
    let workload = text.lines().find_map(|l| l.strip_prefix(status::PID).and_then(|p| p.parse::<i32>().ok()));
    if let Some(pid) = workload {
        let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
    }
}

pub(crate) fn pidfd_open(pid: Pid) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is shared.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Turns the init's status lines and its wait status into the report.
fn collect(text: &str, wait: nix::Result<WaitStatus>, killed: bool) -> RunReport {
    let mut outcome = None;
    for line in text.lines() {
        if let Some(message) = line.strip_prefix(status::ERROR) {
            outcome = Some(RunOutcome::Failed(message.to_owned()));
            break;
        } else if let Some(code) = line.strip_prefix(status::EXIT).and_then(|c| c.parse().ok()) {
            outcome = Some(RunOutcome::Exited(code));
        } else if let Some(sig) = line.strip_prefix(status::SIGNAL).and_then(|c| c.parse().ok()) {
            outcome = Some(RunOutcome::Signaled(sig));
        }
    }
    let outcome = outcome.unwrap_or_else(|| match wait {
        _ if killed => RunOutcome::Signaled(Signal::SIGKILL as i32),
        Ok(WaitStatus::Signaled(_, sig, _)) => RunOutcome::Signaled(sig as i32),
        other => RunOutcome::Failed(format!("the sandbox init ended without a status: {other:?}")),
    });
    RunReport { outcome, max_rss_kb: None, cpu_ms: None, workload_started_ns: None }
}
