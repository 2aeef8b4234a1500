//! The sandbox's init: pid 1 of the run's pid namespace. It ties the namespace's life to the supervisor's,
//! builds the root while the supervisor moves it into the slot's cgroups, starts the workload once it is in
//! them and reaps until the workload exits; its own exit then makes the kernel kill everything left in the
//! namespace.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use super::status;
use crate::protocol::RunRequest;

pub(super) fn run(request: &RunRequest, status_w: OwnedFd, lifeline: OwnedFd, joined: OwnedFd) -> ! {
    let mut status_pipe = File::from(status_w);
    if let Err(e) = prepare(request, &lifeline, joined) {
        let _ = writeln!(status_pipe, "{}{e}", status::ERROR);
        std::process::exit(1);
    }
    drop(lifeline);
    // SAFETY: the init is single-threaded, so the child may allocate and run ordinary code.
    let workload = match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => super::confine::run(request, status_pipe),
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => {
            let _ = writeln!(status_pipe, "{}fork: {e}", status::ERROR);
            std::process::exit(1);
        }
    };
    let _ = writeln!(status_pipe, "{}{workload}", status::PID);
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

fn prepare(request: &RunRequest, lifeline: &OwnedFd, joined: OwnedFd) -> Result<(), String> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
    // The supervisor may have died before the death signal was armed; its closed lifeline tells.
    let mut fds = [PollFd::new(lifeline.as_fd(), PollFlags::POLLIN)];
    if nix::poll::poll(&mut fds, PollTimeout::ZERO).map_err(|e| format!("poll: {e}"))? > 0 {
        std::process::exit(1);
    }
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
    // Everything the workload starts must be born in the slot's cgroups, which the supervisor moves this
    // process into meanwhile.
    let mut byte = [0u8; 1];
    File::from(joined)
        .read_exact(&mut byte)
        .map_err(|_| "the supervisor could not move the run into its cgroups".to_owned())
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
