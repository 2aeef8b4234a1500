//! Profile `none`: the interpreter spawned by the sandbox itself, without the helper.

use std::os::fd::AsFd;

use automa_runner::{Profile, RunnerError};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use tokio::sync::{mpsc, watch};

use crate::support::{self, run, script, spec};

#[tokio::test]
async fn profile_none_kills_what_the_run_left_in_its_process_group() {
    let h = support::with(Profile::None, &[]);
    let out = run(
        &h,
        spec(
            "import subprocess\nchild = subprocess.Popen(['sleep', '600'])\n\
             print(child.pid, open(f'/proc/{child.pid}/stat').read().rsplit(')', 1)[1].split()[19])",
        ),
    )
    .await;
    let (pid, started) = out.ok().trim().split_once(' ').expect("a pid and a start time");
    let pid: i32 = pid.parse().expect("a pid");
    // Already gone, or on its way: its pidfd turns readable when it has exited. A survivor sleeps for ten
    // minutes, far past the poll's limit.
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return;
    }
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    let pidfd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    // The pid may have been reaped and taken by another process before the pidfd was opened: the start time
    // tells. The pidfd, once open, stays the process it was opened for.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    if stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(19)) != Some(started) {
        return;
    }
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    let exited = nix::poll::poll(&mut fds, PollTimeout::from(30_000u16)).expect("poll");
    assert_eq!(exited, 1, "the run's background process outlived it");
}

/// Lists the fds open in the program above the standard ones, and what its standard fds are.
const LIST_FDS: &str = r#"
import os, stat
def kind(fd):
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return 'closed'
    if os.path.samestat(os.fstat(fd), os.stat('/dev/null')):
        return 'null'
    return 'pipe' if stat.S_ISFIFO(mode) else 'other'
print([kind(fd) for fd in range(3)], [fd for fd in range(3, 4096) if kind(fd) != 'closed'])
"#;
const ONLY_STANDARD_FDS: &str = "['null', 'pipe', 'pipe'] []\n";

#[tokio::test]
async fn profile_none_starts_the_program_with_only_the_standard_fds() {
    let h = support::with(Profile::None, &[]);
    // An fd of the sandbox's process that is not close-on-exec: the program must not get it either.
    let (read, write) = nix::unistd::pipe().expect("pipe");
    assert_eq!(script(&h, LIST_FDS).await.ok(), ONLY_STANDARD_FDS);
    drop((read, write));
}

/// The sandbox started with its stdin closed: /dev/null lands on fd 0, where it must still become the
/// program's stdin. Closing a standard fd touches the whole process, so the test runs itself again in a
/// process of its own, and only that process closes its stdin.
#[test]
fn profile_none_wires_the_standard_fds_when_the_sandbox_has_them_closed() {
    const TEST: &str = "plain::profile_none_wires_the_standard_fds_when_the_sandbox_has_them_closed";
    const STDIN_CLOSED: &str = "AUTOMA_TEST_STDIN_CLOSED";
    if std::env::var_os(STDIN_CLOSED).is_some() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let h = support::with(Profile::None, &[]);
            // SAFETY: close takes an integer; nothing in this process reads its stdin.
            assert_eq!(unsafe { libc::close(0) }, 0);
            assert_eq!(script(&h, LIST_FDS).await.ok(), ONLY_STANDARD_FDS);
        });
        return;
    }
    let child = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", TEST, "--test-threads=1"])
        .env(STDIN_CLOSED, "1")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the test binary");
    let stdout = String::from_utf8_lossy(&child.stdout);
    // A filter that matches nothing also exits 0: the child must have run exactly this test.
    assert!(
        child.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{}\n{stdout}\n{}",
        child.status,
        String::from_utf8_lossy(&child.stderr)
    );
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
