//! Finds out which layers work by trying each in a throwaway child, as the helper's own user: a kernel may
//! list a feature that a container or a sysctl then refuses.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use nix::mount::{MsFlags, mount};
use nix::sched::CloneFlags;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::ForkResult;

use crate::protocol::{ProbeReport, ProbeRequest};

pub(super) fn run(request: &ProbeRequest) -> ProbeReport {
    let root = nix::unistd::geteuid().is_root();
    // Without root, every namespace is only reachable through a user namespace of its own.
    let user = if root { CloneFlags::empty() } else { CloneFlags::CLONE_NEWUSER };
    let ns = |flags: CloneFlags| in_child(move || enter(user | flags, !root));
    ProbeReport {
        euid: nix::unistd::geteuid().as_raw(),
        egid: nix::unistd::getegid().as_raw(),
        user_ns: in_child(|| enter(CloneFlags::CLONE_NEWUSER, true)),
        mount_ns: in_child(move || {
            enter(user | CloneFlags::CLONE_NEWNS, !root)?;
            private_tmpfs()
        }),
        pid_ns: in_child(move || {
            enter(user | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID, !root)?;
            private_tmpfs()?;
            // Only a process inside the new pid namespace can mount its proc.
            in_child(|| {
                std::fs::create_dir("/tmp/proc").map_err(|e| format!("mkdir: {e}"))?;
                mount(Some("proc"), "/tmp/proc", Some("proc"), MsFlags::empty(), None::<&str>)
                    .map_err(|e| format!("mount proc: {e}"))
            })
        }),
        net_ns: ns(CloneFlags::CLONE_NEWNET),
        ipc_ns: ns(CloneFlags::CLONE_NEWIPC),
        uts_ns: ns(CloneFlags::CLONE_NEWUTS),
        no_new_privs: in_child(|| nix::sys::prctl::set_no_new_privs().map_err(|e| e.to_string())),
        seccomp: in_child(|| {
            nix::sys::prctl::set_no_new_privs().map_err(|e| e.to_string())?;
            super::seccomp::apply(&super::seccomp::filters()?)
        }),
        landlock_abi: landlock_abi(),
        rlimits: nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_AS)
            .and_then(|(soft, hard)| nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_AS, soft, hard))
            .map_err(|e| e.to_string()),
        cgroups_writable: request
            .cgroup_procs
            .iter()
            .try_for_each(|p| writable(p).map_err(|e| format!("{}: {e}", p.display()))),
        tun: std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map(drop)
            .map_err(|e| e.to_string()),
    }
}

fn enter(flags: CloneFlags, map_ids: bool) -> Result<(), String> {
    let (uid, gid) = (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw());
    nix::sched::unshare(flags).map_err(|e| format!("unshare: {e}"))?;
    if map_ids && flags.contains(CloneFlags::CLONE_NEWUSER) {
        super::map_own_ids(uid, gid)?;
    }
    Ok(())
}

fn private_tmpfs() -> Result<(), String> {
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(|e| format!("make / private: {e}"))?;
    mount(Some("tmpfs"), "/tmp", Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("size=1m"))
        .map_err(|e| format!("mount tmpfs: {e}"))
}

fn writable(path: &Path) -> nix::Result<()> {
    nix::unistd::access(path, nix::unistd::AccessFlags::W_OK)
}

fn landlock_abi() -> Option<u8> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute and the version flag the call only returns the ABI number.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u8::try_from(abi).ok().filter(|&v| v > 0)
}

/// Runs `f` in a forked child and returns its result, carried back through a pipe.
fn in_child(f: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: the helper is single-threaded, so the child may allocate and run ordinary code.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(read);
            let mut out = File::from(write);
            let code = match f() {
                Ok(()) => 0,
                Err(e) => {
                    let _ = out.write_all(e.as_bytes());
                    1
                }
            };
            std::process::exit(code)
        }
        ForkResult::Parent { child } => {
            drop(write);
            let mut message = String::new();
            let _ = File::from(read).read_to_string(&mut message);
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, 0)) => Ok(()),
                Ok(WaitStatus::Exited(..)) if !message.is_empty() => Err(message),
                other => Err(format!("probe ended with {other:?}")),
            }
        }
    }
}
