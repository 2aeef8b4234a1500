//! The sandbox's side of each slot's long-lived helper (`helper::server`): started at the slot's first run,
//! asked to fork a supervisor for every run after, and started again when it is found dead.

use std::io::{IoSlice, IoSliceMut, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use crate::protocol::{self, Request};
use crate::{HelperCommand, RunnerError};

/// How long the slot's helper may take to fork a supervisor; it is a fork and a pidfd.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a slot's helper may take to leave once the sandbox is dropped.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// A launch that failed; its helper is gone.
#[derive(Debug)]
pub(crate) struct LaunchError {
    pub error: RunnerError,
    /// The helper was one started for an earlier run: a new one may do better.
    pub retry: bool,
}

/// One long-lived helper per slot, each started on first use.
#[derive(Debug)]
pub(crate) struct SlotHelpers {
    command: HelperCommand,
    slots: Vec<Mutex<Option<SlotHelper>>>,
    /// Each slot's `cgroup.procs` files, which its helper joins when it starts.
    cgroup_procs: Vec<Vec<PathBuf>>,
}

#[derive(Debug)]
struct SlotHelper {
    process: std::process::Child,
    control: UnixStream,
}

impl SlotHelpers {
    pub(crate) fn new(command: HelperCommand, cgroup_procs: Vec<Vec<PathBuf>>) -> SlotHelpers {
        SlotHelpers { command, slots: cgroup_procs.iter().map(|_| Mutex::new(None)).collect(), cgroup_procs }
    }

    /// Has the slot's helper fork a supervisor whose stdin is `channel` and whose stdout and stderr are the
    /// given pipes, and returns the supervisor's pidfd; blocks for up to [`LAUNCH_TIMEOUT`] (and the start of
    /// a helper), so call it off the runtime's workers.
    ///
    /// A helper that fails is killed and reaped before this returns, and with it any supervisor it may have
    /// forked on these fds already (parent-death signal): the caller retries with fresh fds, never these,
    /// which could be a live supervisor's. [`LaunchError::retry`] says whether a retry may succeed: the
    /// failed helper was one started earlier, which may have died since, not one started for this launch.
    pub(crate) fn launch(&self, slot: usize, fds: [BorrowedFd<'_>; 3]) -> Result<OwnedFd, LaunchError> {
        let mut held = self.slots[slot].lock().unwrap_or_else(|e| e.into_inner());
        let retry = held.is_some();
        let helper = match held.as_mut() {
            Some(helper) => helper,
            None => {
                let request = Request::Serve { cgroup_procs: self.cgroup_procs[slot].clone() };
                held.insert(SlotHelper::start(&self.command, &request).map_err(|error| LaunchError { error, retry })?)
            }
        };
        helper.launch(fds).map_err(|e| {
            // Dropping it kills and reaps it.
            *held = None;
            let error = RunnerError::Helper(format!("the slot's helper did not start a run: {e}"));
            LaunchError { error, retry }
        })
    }

    /// The process id of the slot's helper, if it has one: it lives in the slot's cgroups.
    pub(crate) fn pid(&self, slot: usize) -> Option<u32> {
        self.slots[slot].lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|h| h.process.id())
    }

    /// The process ids of the slots' helpers started so far; for tests that kill one.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.slots
            .iter()
            .filter_map(|slot| slot.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|h| h.process.id()))
            .collect()
    }
}

impl SlotHelper {
    fn start(command: &HelperCommand, request: &Request) -> Result<SlotHelper, RunnerError> {
        let (process, control) = start_helper(command, request)?;
        let helper = SlotHelper { process, control };
        helper.control.set_read_timeout(Some(LAUNCH_TIMEOUT))?;
        helper.control.set_write_timeout(Some(LAUNCH_TIMEOUT))?;
        Ok(helper)
    }

    fn launch(&mut self, fds: [BorrowedFd<'_>; 3]) -> std::io::Result<OwnedFd> {
        let socket = self.control.as_raw_fd();
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        sendmsg::<()>(socket, &[IoSlice::new(b"r")], &[ControlMessage::ScmRights(&raw)], MsgFlags::MSG_NOSIGNAL, None)?;
        let mut answer = [0u8; 1];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let mut iov = [IoSliceMut::new(&mut answer)];
        let message = recvmsg::<()>(socket, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
        let mut pidfd = None;
        for cmsg in message.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                for fd in received {
                    // SAFETY: the fd arrived with this message and nothing else owns it.
                    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                    pidfd.get_or_insert(owned);
                }
            }
        }
        match (message.bytes, pidfd) {
            (1, Some(pidfd)) => Ok(pidfd),
            (0, _) => Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the helper exited")),
            _ => Err(std::io::Error::other("the helper could not fork a supervisor")),
        }
    }
}

/// Starts the helper with a cleared environment and a socket as stdin, and sends it `request`. Nothing runs
/// between fork and exec here: `Command` only wires the fds.
pub(crate) fn start_helper(
    command: &HelperCommand,
    request: &Request,
) -> Result<(std::process::Child, UnixStream), RunnerError> {
    let (mut ours, theirs) = UnixStream::pair()?;
    let mut process = std::process::Command::new(&command.program)
        .args(&command.args)
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| RunnerError::Spawn { program: command.program.clone(), source })?;
    let mut framed = Vec::new();
    protocol::write_message(&mut framed, request)?;
    if let Err(e) = ours.write_all(&framed) {
        let _ = process.kill();
        let _ = process.wait();
        return Err(e.into());
    }
    Ok((process, ours))
}

impl Drop for SlotHelper {
    fn drop(&mut self) {
        // Closing the control socket ends a live helper once it has reaped its supervisors; the kill is for one
        // that is stuck or already gone. Its supervisors die with it (parent-death signal) either way.
        let _ = self.control.shutdown(std::net::Shutdown::Both);
        let wait_for_exit = || {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(self.process.id()).unwrap_or(i32::MAX));
            if let Ok(pidfd) = crate::helper::pidfd_open(pid) {
                let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
                let _ = nix::poll::poll(&mut fds, PollTimeout::try_from(EXIT_GRACE).unwrap_or(PollTimeout::MAX));
            }
        };
        // A helper without supervisors leaves at once; the grace is for one still reaping them, so that nothing
        // of a run is left in the slot's cgroups when they are removed. A multi-threaded runtime's worker hands
        // its other tasks on meanwhile; a single-threaded runtime's waits, as any other thread, at most
        // EXIT_GRACE.
        match tokio::runtime::Handle::try_current().map(|runtime| runtime.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait_for_exit),
            _ => wait_for_exit(),
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
