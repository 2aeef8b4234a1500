//! The slot's long-lived helper: started once per slot, it forks a fresh supervisor for every run instead of
//! the sandbox executing the helper again (the exec of a large binary cost more than the rest of the setup).
//!
//! It joins the slot's cgroups when it starts, so that every process of every run is born in them. It stays
//! single-threaded and never runs anything of a run itself: it receives a run's three descriptors
//! (the channel, and the pipes that become stdout and stderr) with one byte, forks, and answers with a pidfd of
//! the new supervisor, which dies with it (parent-death signal). The supervisor then reads its request from
//! the channel exactly as a freshly started helper reads it from stdin. EOF on the control socket ends it;
//! runs in flight end with their channels.
//!
//! When it runs as root it also holds the slot's empty network namespace: made once, entered by every run
//! that has no network instead of creating and tearing down one per run. A networked run, and every run of an
//! unprivileged helper (whose per-run user namespace could not enter it), still unshares its own.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::ForkResult;

/// Descriptors that come with each run: channel, stdout, stderr.
const RUN_FDS: usize = 3;

pub(super) fn serve(control: std::fs::File, cgroup_procs: &[PathBuf]) -> ! {
    let control = control.as_raw_fd();
    if join_cgroups(cgroup_procs).is_err() {
        // A helper outside its slot's cgroups would start runs without limits: refuse service instead.
        std::process::exit(4);
    }
    let empty_network = super::empty_network();
    let helper = nix::unistd::getpid();
    loop {
        // Supervisors that ended since the last run are reaped here (their pidfds told the sandbox already),
        // so that their CPU time adds up to this helper's children's, as a started helper's did.
        reap(WaitPidFlag::WNOHANG);
        let fds = match receive(control) {
            Ok(Some(fds)) => fds,
            Ok(None) => {
                reap(WaitPidFlag::empty());
                std::process::exit(0)
            }
            Err(_) => std::process::exit(4),
        };
        // SAFETY: the helper is single-threaded, so the child may allocate and run ordinary code.
        let answer = match unsafe { nix::unistd::fork() } {
            Ok(ForkResult::Child) => {
                // A supervisor never outlives its helper: one replaced after it stopped answering may have
                // forked this one on fds the sandbox has given up on, and nothing would watch it.
                if nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).is_err()
                    || nix::unistd::getppid() != helper
                {
                    std::process::exit(5);
                }
                let [channel, stdout, stderr] = fds;
                let wired =
                    dup_onto(&channel, 0).and_then(|()| dup_onto(&stdout, 1)).and_then(|()| dup_onto(&stderr, 2));
                drop((channel, stdout, stderr));
                if wired.is_err() {
                    std::process::exit(5);
                }
                super::answer(super::Origin::Forked { empty_network: empty_network.as_ref() })
            }
            Ok(ForkResult::Parent { child }) => super::pidfd_open(child),
            Err(e) => Err(e.into()),
        };
        drop(fds);
        if reply(control, answer.ok()).is_err() {
            std::process::exit(4);
        }
    }
}

/// Moves this helper into the slot's cgroups, once: the runs it forks are born there, and none pays for a move
/// of its own. The helper and each run's supervisor are exempt from the slot's OOM killer where the helper
/// may say so (`CAP_SYS_RESOURCE`; the init takes the exemption back for the run). Elsewhere the killer's
/// choice by size picks the run, whose memory fills the cgroup, over the helper's few MiB; a helper killed
/// anyway is replaced at the slot's next run.
fn join_cgroups(cgroup_procs: &[PathBuf]) -> std::io::Result<()> {
    for procs in cgroup_procs {
        std::fs::write(procs, "0")?;
    }
    if !cgroup_procs.is_empty() {
        let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    }
    Ok(())
}

/// Reaps ended supervisors: those already ended with `WNOHANG`, else all of them.
fn reap(flags: WaitPidFlag) {
    loop {
        match waitpid(None, Some(flags)) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// The next run's descriptors, or `None` when the sandbox closed the control socket.
fn receive(control: RawFd) -> nix::Result<Option<[OwnedFd; RUN_FDS]>> {
    let mut byte = [0u8; 1];
    let mut space = nix::cmsg_space!([RawFd; RUN_FDS]);
    loop {
        let mut iov = [IoSliceMut::new(&mut byte)];
        let message = match recvmsg::<()>(control, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => other?,
        };
        let mut owned = Vec::new();
        for cmsg in message.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                // SAFETY: each fd arrived with this message and is owned by nothing else yet.
                owned.extend(fds.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        if message.bytes == 0 {
            return Ok(None);
        }
        return owned.try_into().map(Some).map_err(|_| nix::errno::Errno::EBADMSG);
    }
}

fn reply(control: RawFd, pidfd: Option<OwnedFd>) -> nix::Result<()> {
    let raw = pidfd.as_ref().map(AsRawFd::as_raw_fd);
    let fds: Vec<RawFd> = raw.into_iter().collect();
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [std::io::IoSlice::new(if pidfd.is_some() { b"1" } else { b"0" })];
    sendmsg::<()>(control, &iov, if fds.is_empty() { &[] } else { &cmsg }, MsgFlags::empty(), None).map(drop)
}

fn dup_onto(fd: &OwnedFd, target: RawFd) -> nix::Result<()> {
    // SAFETY: dup2 takes integers only; the target is one of the standard descriptors this process rewires.
    if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(())
}
