//! Profile `none`: the interpreter spawned straight from the sandbox, without the helper.
//!
//! `none` promises rlimits, a timeout, the kill of the run's whole process group, output caps and a fresh
//! work directory, nothing more; none of it needs the single-threaded helper. Between `clone` and `exec` the
//! child makes only raw, async-signal-safe system calls (SANDBOX.md, trap 1): its standard fds, work
//! directory, own session, the rlimits, the parent-death signal and the close of every other inherited fd.
//! Everything that allocates (writing the script, building argv and the environment) happens before.
//!
//! The child shares the caller's memory until it execs (`CLONE_VM | CLONE_VFORK`, as `posix_spawn` does):
//! a plain `fork` of the agent would copy its page tables, and the exec would then tear that copy down, which
//! measured several milliseconds of CPU per run for a parent of 150 MiB (std's `Command` forks as soon as a
//! `pre_exec` hook is set).

use std::ffi::{CString, c_char, c_int, c_void};
use std::os::fd::AsRawFd;
use std::os::fd::OwnedFd;
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
        let mut argv = vec![request.program.as_os_str().as_encoded_bytes().to_vec()];
        if let Some(script) = &request.script {
            std::fs::write(workdir.join(&script.name), &script.content)?;
            argv.push(script.name.clone().into_bytes());
        }
        if let Some(payload) = &request.payload {
            crate::helper::write_read_only(&workdir.join(crate::TRIGGER_PAYLOAD_FILE), payload)
                .map_err(RunnerError::Helper)?;
        }
        argv.extend(request.args.iter().map(|a| a.clone().into_bytes()));
        let env = request.env.iter().map(|(k, v)| format!("{k}={v}").into_bytes()).collect();
        let rlimits = request.layers.rlimits.then(|| request.limits.rlimits());
        let (pid, stdout, stderr) = spawn_vfork(argv, env, workdir, rlimits)
            .map_err(|source| RunnerError::Spawn { program: request.program.clone(), source })?;
        let pipe = |fd: OwnedFd| tokio::net::unix::pipe::Receiver::from_owned_fd(fd).map(Some);
        let stdout = pipe(stdout);
        let stderr = pipe(stderr);
        let exited = crate::helper::pidfd_open(nix::unistd::Pid::from_raw(pid)).and_then(|pidfd| {
            // SAFETY: an OwnedFd is open and keeps the same fd for as long as the AsyncFd owns it.
            unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }.map_err(|e| e.into())
        });
        // From here on the child is reaped by `Plain`, dropped or not.
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

/// What the vfork child needs, all prepared before the clone: it reads this from the parent's memory.
struct ChildSetup {
    program: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    workdir: *const c_char,
    fds: [c_int; 3],
    /// Past the highest fd this process may have open: where closing them one by one ends when the kernel
    /// has no `close_range`.
    fd_limit: c_int,
    rlimits: Option<[(libc::__rlimit_resource_t, libc::rlim_t, libc::rlim_t); 6]>,
    parent: libc::pid_t,
    mask: libc::sigset_t,
    /// The errno of the step that failed; 0 when the exec succeeded.
    error: std::sync::atomic::AtomicI32,
}

/// The vfork child's stack, with a page below it that faults instead of letting an overflow write into
/// whatever memory lies there.
struct ChildStack {
    base: *mut c_void,
    length: usize,
}

impl ChildStack {
    const SIZE: usize = 64 * 1024;

    fn new() -> std::io::Result<ChildStack> {
        // SAFETY: sysconf takes an integer only.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let length = Self::SIZE + page;
        // SAFETY: a new private anonymous mapping, aliasing nothing.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                length,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let stack = ChildStack { base, length };
        // SAFETY: the lowest page of the mapping just made; the stack grows down towards it.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The stack's 16-byte aligned top, where it starts growing down from.
    fn top(&self) -> *mut c_void {
        let end = self.base as usize + self.length;
        (end - end % 16) as *mut c_void
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer used: the child has exec'd or exited.
        unsafe { libc::munmap(self.base, self.length) };
    }
}

/// A copy of `fd` above the standard fds, closed on exec.
fn above_standard_fds(fd: &impl AsRawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: fcntl takes integers only.
    let copy = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if copy < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(copy) })
}

/// Starts `argv` in `workdir` with `env` only, stdin `/dev/null` and stdout and stderr new pipes, whose read
/// ends it returns with the pid.
fn spawn_vfork(
    argv: Vec<Vec<u8>>,
    env: Vec<Vec<u8>>,
    workdir: &std::path::Path,
    rlimits: Option<[(libc::__rlimit_resource_t, libc::rlim_t, libc::rlim_t); 6]>,
) -> std::io::Result<(libc::pid_t, OwnedFd, OwnedFd)> {
    let nul = |_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a NUL byte in an argument or variable");
    let cstrings = |list: Vec<Vec<u8>>| list.into_iter().map(CString::new).collect::<Result<Vec<_>, _>>();
    let argv = cstrings(argv).map_err(nul)?;
    let env = cstrings(env).map_err(nul)?;
    let pointers = |list: &[CString]| list.iter().map(|c| c.as_ptr()).chain([std::ptr::null()]).collect::<Vec<_>>();
    let (argv_ptrs, env_ptrs) = (pointers(&argv), pointers(&env));
    let workdir = CString::new(workdir.as_os_str().as_encoded_bytes()).map_err(nul)?;
    let null = std::fs::File::open("/dev/null")?;
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from);
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    // With one of this process's standard fds closed, a source could be a target fd itself, where `dup2`
    // would keep its close-on-exec flag or overwrite a source not yet duplicated: above 2, none is.
    let sources = [above_standard_fds(&null)?, above_standard_fds(&stdout_w)?, above_standard_fds(&stderr_w)?];
    drop((null, stdout_w, stderr_w));
    let stack = ChildStack::new()?;
    // SAFETY: sigset_t is plain data; sigfillset and pthread_sigmask only write the sets they are given.
    let mut setup = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        let mut mask: libc::sigset_t = std::mem::zeroed();
        // No handler of this process may run in the child while it shares this memory.
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut mask);
        ChildSetup {
            program: argv[0].as_ptr(),
            argv: argv_ptrs.as_ptr(),
            envp: env_ptrs.as_ptr(),
            workdir: workdir.as_ptr(),
            fds: sources.each_ref().map(AsRawFd::as_raw_fd),
            fd_limit: c_int::try_from(libc::sysconf(libc::_SC_OPEN_MAX)).unwrap_or(c_int::MAX),
            rlimits,
            parent: libc::getpid(),
            mask,
            error: std::sync::atomic::AtomicI32::new(0),
        }
    };
    // SAFETY: the stack grows down from its 16-byte aligned top, inside the mapping, which outlives the
    // child's use of it (CLONE_VFORK suspends this thread until the child has exec'd or exited). The child runs
    // only `vfork_child`, which makes raw system calls on `setup`.
    let pid = unsafe {
        let top = stack.top();
        let pid = libc::clone(
            vfork_child,
            top.cast::<c_void>(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&raw mut setup).cast::<c_void>(),
        );
        libc::pthread_sigmask(libc::SIG_SETMASK, &setup.mask, std::ptr::null_mut());
        pid
    };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    drop(stack);
    let error = setup.error.load(std::sync::atomic::Ordering::SeqCst);
    if error != 0 {
        // SAFETY: waitpid on our own child, which has exited.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        return Err(std::io::Error::from_raw_os_error(error));
    }
    Ok((pid, stdout_r, stderr_r))
}

/// The vfork child: sets itself up from `setup` and execs, or records the errno and exits.
extern "C" fn vfork_child(setup: *mut c_void) -> c_int {
    // SAFETY: `setup` is the parent's ChildSetup, alive and unchanged while the parent is suspended; every call
    // below is a raw, async-signal-safe system call on values prepared before the clone.
    unsafe {
        let setup = &*setup.cast::<ChildSetup>();
        let fail = |setup: &ChildSetup| -> c_int {
            setup.error.store(*libc::__errno_location(), std::sync::atomic::Ordering::SeqCst);
            libc::_exit(127)
        };
        // The parent's handlers are its own: the program starts with every signal at its default.
        for signal in 1..65 {
            let mut action: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut action) == 0
                && action.sa_sigaction != libc::SIG_DFL
                && action.sa_sigaction != libc::SIG_IGN
            {
                let default: libc::sigaction = std::mem::zeroed();
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
        }
        for (target, fd) in setup.fds.iter().enumerate() {
            if libc::dup2(*fd, target as c_int) < 0 {
                return fail(setup);
            }
        }
        if libc::chdir(setup.workdir) != 0 || libc::setsid() < 0 {
            return fail(setup);
        }
        for (resource, soft, hard) in setup.rlimits.iter().flatten() {
            let limit = libc::rlimit { rlim_cur: *soft, rlim_max: *hard };
            if libc::setrlimit(*resource, &limit) != 0 {
                return fail(setup);
            }
        }
        // The death signal follows the thread that cloned: a runtime worker, which lives as long as the
        // sandbox's caller can collect the run.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            return fail(setup);
        }
        if libc::getppid() != setup.parent {
            *libc::__errno_location() = libc::ESRCH;
            return fail(setup);
        }
        // The child's fd table is its own (no CLONE_FILES): closing here leaves the parent's alone.
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) != 0 {
            if !matches!(*libc::__errno_location(), libc::ENOSYS | libc::EINVAL) {
                return fail(setup);
            }
            for fd in 3..setup.fd_limit {
                libc::close(fd);
            }
        }
        libc::sigprocmask(libc::SIG_SETMASK, &setup.mask, std::ptr::null_mut());
        libc::execve(setup.program, setup.argv, setup.envp);
        fail(setup)
    }
}
