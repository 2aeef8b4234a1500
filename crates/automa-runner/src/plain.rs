//! Profile `none`: the interpreter spawned straight from the sandbox, without the helper.
//!
//! `none` promises rlimits, a timeout, the kill of the run's whole process group, output caps and a fresh
//! work directory, nothing more; none of it needs the single-threaded helper. Between `fork` and `exec` the
//! child makes only raw, async-signal-safe system calls (SANDBOX.md, trap 1): its own session, the rlimits,
//! the parent-death signal and close-on-exec for every inherited fd. Everything that allocates (writing the
//! script, building argv and the environment) happens before the fork.

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Instant;

use std::sync::Arc;

use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};

use crate::output::{self, Budget};
use crate::protocol::{RunOutcome, RunReport, RunRequest};
use crate::sandbox::{HelperReport, Kill, cancelled, join_drains, kill_note};
use crate::{OutputChunk, RunnerError, Stream};

/// A spawned interpreter, not yet reaped. Dropped before its end (the run's future abandoned), it kills the
/// run's process group and is reaped in the background.
pub(crate) struct Plain {
    pid: libc::pid_t,
    exited: AsyncFd<OwnedFd>,
    reaped: bool,
    pub(crate) stdout: Option<tokio::net::unix::pipe::Receiver>,
    pub(crate) stderr: Option<tokio::net::unix::pipe::Receiver>,
    /// How long writing the files and spawning took.
    pub(crate) setup: std::time::Duration,
}

impl Plain {
    /// Writes the script and payload into the fresh work directory and starts the program in it.
    pub(crate) fn spawn(request: &RunRequest) -> Result<Plain, RunnerError> {
        let started = Instant::now();
        let workdir = &request.host_workdir;
        let mut command = std::process::Command::new(&request.program);
        if let Some(script) = &request.script {
            std::fs::write(workdir.join(&script.name), &script.content)?;
            command.arg(&script.name);
        }
        if let Some(payload) = &request.payload {
            crate::helper::write_read_only(&workdir.join(crate::TRIGGER_PAYLOAD_FILE), payload)
                .map_err(RunnerError::Helper)?;
        }
        command
            .args(&request.args)
            .env_clear()
            .envs(request.env.iter().map(|(k, v)| (k, v)))
            .current_dir(workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let rlimits = request.layers.rlimits.then(|| request.limits.rlimits());
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the closure makes only async-signal-safe system calls on values computed before the fork,
        // and allocates nothing, not even for an error.
        unsafe {
            command.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                for (resource, soft, hard) in rlimits.iter().flatten() {
                    let limit = libc::rlimit { rlim_cur: *soft, rlim_max: *hard };
                    if libc::setrlimit(*resource, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // The death signal follows the thread that forked: a runtime worker, which lives as long as
                // the sandbox's caller can collect the run.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
                if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child =
            command.spawn().map_err(|source| RunnerError::Spawn { program: request.program.clone(), source })?;
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        let pipe = |fd: Option<OwnedFd>| fd.map(tokio::net::unix::pipe::Receiver::from_owned_fd).transpose();
        let stdout = pipe(child.stdout.take().map(OwnedFd::from));
        let stderr = pipe(child.stderr.take().map(OwnedFd::from));
        let exited = crate::helper::pidfd_open(nix::unistd::Pid::from_raw(pid)).and_then(|pidfd| {
            // SAFETY: an OwnedFd is open and keeps the same fd for as long as the AsyncFd owns it.
            unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }.map_err(|e| e.into())
        });
        // From here on the child is reaped by `Plain`, dropped or not; std's handle never waits.
        drop(child);
        let mut plain = Plain {
            pid,
            exited: exited.map_err(|e| kill_unwatched(pid, e))?,
            reaped: false,
            stdout: None,
            stderr: None,
            setup: started.elapsed(),
        };
        plain.stdout = stdout?;
        plain.stderr = stderr?;
        Ok(plain)
    }

    /// Resolves when the program has exited (it is not reaped yet, so its pid, and with it the process group's
    /// id, stays taken).
    pub(crate) async fn exited(&self) {
        let _ = self.exited.readable().await;
    }

    /// Kills the run's process group: the program and whatever it started and left in its session.
    pub(crate) fn kill_group(&self) {
        // SAFETY: kill takes integers only.
        unsafe { libc::kill(-self.pid, libc::SIGKILL) };
    }

    /// Kills what is left in the group and reaps the program; call once [`Plain::exited`] resolved.
    pub(crate) fn reap(mut self) -> RunReport {
        self.kill_group();
        let mut status = 0;
        // SAFETY: a zeroed rusage is a valid value for wait4 to fill.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid for the call; the pid is our unreaped child.
        let reaped = unsafe { libc::wait4(self.pid, &mut status, 0, &mut usage) };
        self.reaped = true;
        if reaped != self.pid {
            let error = std::io::Error::last_os_error();
            return failed(format!("waiting for the run: {error}"));
        }
        let outcome = if libc::WIFSIGNALED(status) {
            RunOutcome::Signaled(libc::WTERMSIG(status))
        } else {
            RunOutcome::Exited(libc::WEXITSTATUS(status))
        };
        let millis = |t: libc::timeval| u64::try_from(t.tv_sec * 1000 + t.tv_usec / 1000).unwrap_or(0);
        RunReport {
            outcome,
            max_rss_kb: u64::try_from(usage.ru_maxrss).ok(),
            cpu_ms: Some(millis(usage.ru_utime) + millis(usage.ru_stime)),
            workload_started_ns: None,
        }
    }
}

impl Drop for Plain {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        self.kill_group();
        let pid = self.pid;
        // SAFETY: kill takes integers only.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        // The program dies at once but its exit is not instant: never block the caller's thread on it.
        std::thread::spawn(move || {
            // SAFETY: waitpid on our own child, no status wanted.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        });
    }
}

/// Kills and reaps a child that cannot be watched, and passes the error on.
fn kill_unwatched(pid: libc::pid_t, error: std::io::Error) -> RunnerError {
    // SAFETY: kill and waitpid on our own, unreaped child.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    RunnerError::Io(error)
}

fn failed(message: String) -> RunReport {
    RunReport { outcome: RunOutcome::Failed(message), max_rss_kb: None, cpu_ms: None, workload_started_ns: None }
}

/// Runs the program to its end as [`Sandbox::supervise`](crate::sandbox) does with the helper: drains its
/// output, and kills its process group on timeout, cancel or output past the hard cap.
pub(crate) async fn supervise(
    request: &RunRequest,
    limits: &crate::Limits,
    output: &mpsc::Sender<OutputChunk>,
    mut cancel: watch::Receiver<bool>,
) -> Result<(HelperReport, Option<Kill>, Arc<Budget>), RunnerError> {
    let mut plain = Plain::spawn(request)?;
    let budget = Budget::new(limits.max_output_bytes);
    let drains = [(plain.stdout.take(), Stream::Stdout), (plain.stderr.take(), Stream::Stderr)]
        .map(|(pipe, stream)| pipe.map(|p| tokio::spawn(output::drain(p, stream, budget.clone(), output.clone()))));
    let deadline = tokio::time::sleep(limits.timeout);
    tokio::pin!(deadline);
    let mut killed = None;
    loop {
        let kill = tokio::select! {
            () = plain.exited() => break,
            () = &mut deadline, if killed.is_none() => Kill::Timeout,
            () = cancelled(&mut cancel), if killed.is_none() => Kill::Cancel,
            () = budget.over_cap.notified(), if killed.is_none() => Kill::Output,
        };
        killed = Some(kill);
        plain.kill_group();
    }
    let setup = plain.setup;
    let report = plain.reap();
    join_drains(drains).await;
    if let Some(kill) = killed {
        output::send(output, Stream::System, kill_note(kill, limits).as_bytes()).await;
    }
    Ok((HelperReport { report, setup: Some(setup) }, killed, budget))
}
