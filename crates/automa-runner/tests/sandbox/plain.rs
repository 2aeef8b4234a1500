//! Profile `none`: the interpreter spawned by the sandbox itself, without the helper.

use std::os::fd::AsFd;

use automa_runner::{Profile, RunnerError};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use tokio::sync::{mpsc, watch};

use crate::support::{self, run, script, spec};

#[tokio::test]
async fn profile_none_kills_what_the_run_left_in_its_process_group() {
    let h = support::with(Profile::None, &[]);
    let out = run(&h, spec("import subprocess\nchild = subprocess.Popen(['sleep', '600'])\nprint(child.pid)")).await;
    let pid: i32 = out.ok().trim().parse().expect("a pid");
    // Already gone, or on its way: its pidfd turns readable when it has exited. A survivor sleeps for ten
    // minutes, far past the poll's limit.
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd >= 0 {
        // SAFETY: the kernel just returned this fd and nothing else owns it.
        let pidfd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        let exited = nix::poll::poll(&mut fds, PollTimeout::from(30_000u16)).expect("poll");
        assert_eq!(exited, 1, "the run's background process outlived it");
    }
}

#[tokio::test]
async fn profile_none_starts_the_program_with_no_signal_blocked() {
    let h = support::with(Profile::None, &[]);
    let out = script(
        &h,
        "status = dict(l.split(':\\t') for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)\n\
         print(status['SigBlk'].strip())",
    )
    .await;
    // The sandbox blocks every signal around the clone; the program must not inherit that.
    assert_eq!(out.ok(), "0000000000000000\n");
}

#[tokio::test]
async fn profile_none_refuses_a_program_it_cannot_start_and_goes_on() {
    let h = support::with(Profile::None, &[]);
    let environment = h.dir.path().join("broken-env");
    std::fs::create_dir_all(environment.join("bin")).expect("mkdir");
    // A python that is not executable: the exec fails in the child, and the caller hears why.
    std::fs::write(environment.join("bin/python"), "not a program").expect("write");
    let mut broken = spec("print('unreachable')");
    broken.environment = Some(environment);
    let (tx, _rx) = mpsc::channel(8);
    let (_cancel, cancel) = watch::channel(false);
    let error = h.sandbox.run(broken, tx, cancel).await.expect_err("the program cannot start");
    assert!(
        matches!(&error, RunnerError::Spawn { source, .. } if source.raw_os_error() == Some(libc::EACCES)),
        "{error:?}"
    );
    assert_eq!(script(&h, "print('next')").await.ok(), "next\n");
}
