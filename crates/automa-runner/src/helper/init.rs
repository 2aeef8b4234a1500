//! The sandbox's init: pid 1 of the run's pid namespace. It ties the namespace's life to the supervisor's,
//! builds the root, starts the workload and reaps until the workload exits; its own exit then makes the
//! kernel kill everything left in the namespace.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use super::status;
use crate::protocol::{HandOver, RunRequest, read_message};

/// `hand_over` is set for a prepared sandbox: the supervisor passes the run's [`HandOver`] through it.
pub(super) fn run(request: &RunRequest, status_w: OwnedFd, lifeline: OwnedFd, hand_over: Option<OwnedFd>) -> ! {
    let mut status_pipe = File::from(status_w);
    let fail = |status_pipe: &mut File, e: String| -> ! {
        let _ = writeln!(status_pipe, "{}{e}", status::ERROR);
        std::process::exit(1)
    };
    if let Err(e) = prepare(request, &lifeline) {
        fail(&mut status_pipe, e);
    }
    drop(lifeline);
    let run_pipe = match hand_over.is_some().then(|| nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)).transpose() {
        Ok(pipe) => pipe,
        Err(e) => fail(&mut status_pipe, format!("pipe: {e}")),
    };
    let (run_r, run_w) = run_pipe.unzip();
    // SAFETY: the init is single-threaded, so the child may allocate and run ordinary code.
    let workload = match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            drop((hand_over, run_w));
            if let Some(Err(e)) = run_r.map(|run_r| nix::unistd::dup2_stdin(&run_r)) {
                fail(&mut status_pipe, format!("dup2: {e}"));
            }
            super::confine::run(request, status_pipe)
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => fail(&mut status_pipe, format!("fork: {e}")),
    };
    drop(run_r);
    let _ = writeln!(status_pipe, "{}{workload}", status::PID);
    if let Some(Err(e)) = hand_over.zip(run_w).map(|(hand_over, run_w)| start_prepared(hand_over, run_w)) {
        let _ = kill(Pid::from_raw(-workload.as_raw()), Signal::SIGKILL);
        fail(&mut status_pipe, e);
    }
    let line = match reap_until(workload, request.layers.pid_ns) {
        WaitStatus::Exited(_, code) => format!("{}{code}", status::EXIT),
        WaitStatus::Signaled(_, sig, _) => format!("{}{}", status::SIGNAL, sig as i32),
        other => format!("{}unexpected wait status {other:?}", status::ERROR),
    };
    // Whatever the workload left in its session goes with it. With a pid namespace the kernel does this
    // anyway when the init exits, without one this is what stops an ordinary background child.
    let _ = kill(Pid::from_raw(-workload.as_raw()), Signal::SIGKILL);
    let _ = writeln!(status_pipe, "{line}");
    std::process::exit(0)
}

fn prepare(request: &RunRequest, lifeline: &OwnedFd) -> Result<(), String> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
    // The supervisor may have died before the death signal was armed; its closed lifeline tells.
    let mut fds = [PollFd::new(lifeline.as_fd(), PollFlags::POLLIN)];
    if nix::poll::poll(&mut fds, PollTimeout::ZERO).map_err(|e| format!("poll: {e}"))? > 0 {
        std::process::exit(1);
    }
    // The slot's helper and its supervisors may be exempt from the OOM killer of the slot's memory cgroup they
    // share with the run; the run is not. Raising the score is always allowed, and an init that could have
    // lowered it (`CAP_SYS_RESOURCE`) also raises the floor, so that the workload cannot lower it again.
    std::fs::write("/proc/self/oom_score_adj", "0").map_err(|e| format!("reset oom_score_adj: {e}"))?;
    // A non-dumpable init keeps the script (same uid when unprivileged) out of its /proc entries and fds.
    nix::sys::prctl::set_dumpable(false).map_err(|e| format!("PR_SET_DUMPABLE: {e}"))?;
    // The socket to the sandbox stays with the supervisor only.
    let null = File::open("/dev/null").map_err(|e| format!("open /dev/null: {e}"))?;
    nix::unistd::dup2_stdin(&null).map_err(|e| format!("dup2: {e}"))?;
    if request.layers.mount_ns {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare(NEWNS): {e}"))?;
        super::mounts::build_root(request)?;
    } else {
        std::env::set_current_dir(&request.host_workdir)
            .map_err(|e| format!("chdir {}: {e}", request.host_workdir.display()))?;
    }
    if request.layers.uts_ns {
        nix::unistd::sethostname("automa").map_err(|e| format!("sethostname: {e}"))?;
    }
    Ok(())
}

/// Waits for the run a prepared sandbox serves, writes its payload as a cold run's workload would (before the
/// uid switch, so owned by the helper's uid) and passes the rest to the waiting interpreter. EOF, when the
/// sandbox discards the prepared sandbox, passes nothing: the interpreter then exits.
fn start_prepared(hand_over: OwnedFd, run_w: OwnedFd) -> Result<(), String> {
    let Ok(message) = read_message::<HandOver>(&mut File::from(hand_over)) else {
        return Ok(());
    };
    if let Some(payload) = &message.payload {
        let dir = std::env::current_dir().map_err(|e| format!("getcwd: {e}"))?;
        super::confine::write_read_only(&dir.join(crate::TRIGGER_PAYLOAD_FILE), payload)?;
    }
    File::from(run_w).write_all(message.run.as_bytes()).map_err(|e| format!("hand the run over: {e}"))
}

/// As pid 1 the init also reaps orphans the workload leaves; it stops at the workload's own exit.
fn reap_until(workload: Pid, pid_ns: bool) -> WaitStatus {
    let target = if pid_ns { None } else { Some(workload) };
    loop {
        match waitpid(target, None) {
            Ok(status) if status.pid() == Some(workload) => return status,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            // ECHILD: the workload is gone without a status, reported as unexpected.
            Err(_) => return WaitStatus::StillAlive,
        }
    }
}
