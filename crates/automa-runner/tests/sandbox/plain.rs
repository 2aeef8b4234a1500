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
/// program's stdin. Closing a standard fd touches the whole process, so it happens in a process of its own.
#[test]
fn profile_none_wires_the_standard_fds_when_the_sandbox_has_them_closed() {
    in_own_process("plain::profile_none_wires_the_standard_fds_when_the_sandbox_has_them_closed", || async {
        let h = support::with(Profile::None, &[]);
        // SAFETY: close takes an integer; nothing in this process reads its stdin.
        assert_eq!(unsafe { libc::close(0) }, 0);
        assert_eq!(script(&h, LIST_FDS).await.ok(), ONLY_STANDARD_FDS);
    });
}

/// On a kernel without `close_range` (before 5.9) the child closes the fds one by one instead. A seccomp
/// filter makes this process's kernel answer like such a kernel, so the filter stays in a process of its own.
#[test]
fn profile_none_closes_inherited_fds_without_close_range() {
    in_own_process("plain::profile_none_closes_inherited_fds_without_close_range", || async {
        refuse_close_range();
        // SAFETY: close_range with an empty range (first above last) closes nothing.
        let refused = unsafe { libc::syscall(libc::SYS_close_range, 2u32, 1u32, 0u32) };
        assert_eq!((refused, std::io::Error::last_os_error().raw_os_error()), (-1, Some(libc::ENOSYS)));
        let h = support::with(Profile::None, &[]);
        let (read, write) = nix::unistd::pipe().expect("pipe");
        assert_eq!(script(&h, LIST_FDS).await.ok(), ONLY_STANDARD_FDS);
        drop((read, write));
    });
}

/// Runs `body` when this process is the one started for `test`; otherwise starts the test binary again with
/// only `test` selected and checks that it ran and passed there.
fn in_own_process<F: std::future::Future<Output = ()>>(test: &str, body: impl FnOnce() -> F) {
    const IN_OWN_PROCESS: &str = "AUTOMA_TEST_IN_OWN_PROCESS";
    if std::env::var_os(IN_OWN_PROCESS).is_some_and(|selected| selected == test) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(body());
        return;
    }
    let child = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", test, "--test-threads=1"])
        .env(IN_OWN_PROCESS, test)
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

/// Makes `close_range` fail with ENOSYS in every thread of this process and in what it starts.
fn refuse_close_range() {
    let nr = u32::try_from(libc::SYS_close_range).expect("a syscall number");
    let errno = u32::try_from(libc::ENOSYS).expect("an errno");
    let statement = |code: u16, k: u32| libc::sock_filter { code, jt: 0, jf: 0, k };
    let mut filter = [
        // The syscall number is the first field of struct seccomp_data.
        statement((libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16, 0),
        libc::sock_filter { code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16, jt: 0, jf: 1, k: nr },
        statement((libc::BPF_RET | libc::BPF_K) as u16, libc::SECCOMP_RET_ERRNO | errno),
        statement((libc::BPF_RET | libc::BPF_K) as u16, libc::SECCOMP_RET_ALLOW),
    ];
    let program = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_mut_ptr() };
    // SAFETY: prctl with integer arguments; seccomp reads `program`, which outlives the call.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        let installed = libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            &raw const program,
        );
        assert_eq!(installed, 0, "{}", std::io::Error::last_os_error());
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
