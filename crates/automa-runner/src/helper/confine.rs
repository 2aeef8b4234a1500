//! The workload's last steps before it becomes the interpreter: its own session, rlimits, no_new_privs, no
//! capabilities, the slot's unprivileged uid, landlock and seccomp, a closed set of fds, then `execve`.

use std::convert::Infallible;
use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::path::Path;

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    Scope, path_beneath_rules,
};
use nix::sys::resource::{Resource, setrlimit};
use nix::unistd::{Gid, Uid};

use super::status;
use crate::protocol::RunRequest;

/// Newest landlock ABI whose rights this code was written and tested against; newer kernels get these.
const LANDLOCK_ABI: ABI = ABI::V6;

pub(super) fn run(request: &RunRequest, mut status_pipe: File) -> ! {
    let error = match confine_and_exec(request) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = writeln!(status_pipe, "{}{error}", status::ERROR);
    std::process::exit(127)
}

fn confine_and_exec(request: &RunRequest) -> Result<Infallible, String> {
    let layers = &request.layers;
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    if layers.rlimits {
        set_rlimits(&request.limits)?;
    }
    // Everything is prepared before the first restriction, which then cannot get in the way.
    let program = cstring(request.program.as_os_str().as_encoded_bytes())?;
    let script_name = request.script.as_ref().map(|s| cstring(s.name.as_bytes())).transpose()?;
    let argv = std::iter::once(program.clone())
        .chain(script_name)
        .chain(request.args.iter().map(|a| cstring(a.as_bytes())).collect::<Result<Vec<_>, _>>()?)
        .collect::<Vec<_>>();
    let env = request.env.iter().map(|(k, v)| cstring(format!("{k}={v}").as_bytes())).collect::<Result<Vec<_>, _>>()?;
    let filters = if layers.seccomp { super::seccomp::filters()? } else { Vec::new() };
    let workdir = std::env::current_dir().map_err(|e| format!("getcwd: {e}"))?;

    if layers.no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(|e| format!("PR_SET_NO_NEW_PRIVS: {e}"))?;
    }
    if layers.drop_caps {
        drop_bounding_and_ambient()?;
    }
    if layers.landlock {
        restrict_filesystem(request, &workdir)?;
    }
    // seccomp needs no_new_privs or CAP_SYS_ADMIN; only when no_new_privs is switched off must it come
    // before the uid switch takes the capability away.
    if !layers.no_new_privs {
        super::seccomp::apply(&filters)?;
    }
    // Written before the uid switch, so that with a slot user the file is the helper's, not the run's: the run
    // can neither write it nor chmod it back to writable. Without one (unprivileged helper, or profile `none`)
    // the run's uid owns it and only its mode says read-only.
    if let Some(payload) = &request.payload {
        write_read_only(&workdir.join(crate::TRIGGER_PAYLOAD_FILE), payload)?;
    }
    if let Some((uid, gid)) = request.user {
        nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
        nix::unistd::setresgid(Gid::from_raw(gid), Gid::from_raw(gid), Gid::from_raw(gid))
            .map_err(|e| format!("setresgid({gid}): {e}"))?;
        nix::unistd::setresuid(Uid::from_raw(uid), Uid::from_raw(uid), Uid::from_raw(uid))
            .map_err(|e| format!("setresuid({uid}): {e}"))?;
    }
    if layers.drop_caps {
        clear_capabilities()?;
    }
    if let Some(script) = &request.script {
        write_script(&workdir.join(&script.name), &script.content)?;
    }
    close_inherited_fds()?;
    if layers.no_new_privs {
        super::seccomp::apply(&filters)?;
    }
    let err = nix::unistd::execve(&program, &argv, &env).unwrap_err();
    Err(format!("exec {}: {err}", request.program.display()))
}

fn cstring(bytes: &[u8]) -> Result<CString, String> {
    CString::new(bytes).map_err(|_| "argument or environment contains a NUL byte".to_owned())
}

fn set_rlimits(limits: &crate::Limits) -> Result<(), String> {
    const MIB: u64 = 1024 * 1024;
    let set = |resource: Resource, soft: u64, hard: u64| {
        setrlimit(resource, soft, hard).map_err(|e| format!("setrlimit({resource:?}): {e}"))
    };
    let memory = limits.memory_mb.saturating_mul(MIB);
    set(Resource::RLIMIT_AS, memory, memory)?;
    // The soft limit sends SIGXCPU, the hard one a second later SIGKILL for a script that ignores it.
    set(Resource::RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds.saturating_add(1))?;
    set(Resource::RLIMIT_NPROC, u64::from(limits.max_processes), u64::from(limits.max_processes))?;
    set(Resource::RLIMIT_NOFILE, limits.open_files, limits.open_files)?;
    let disk = limits.disk_mb.saturating_mul(MIB);
    set(Resource::RLIMIT_FSIZE, disk, disk)?;
    set(Resource::RLIMIT_CORE, 0, 0)
}

fn drop_bounding_and_ambient() -> Result<(), String> {
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only; EINVAL marks the first capability the kernel lacks.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(format!("PR_CAPBSET_DROP({cap}): {err}"));
        }
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) } != 0 {
        return Err(format!("PR_CAP_AMBIENT_CLEAR_ALL: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Clears the effective, permitted and inheritable sets. Switching from root to the slot uid already does,
/// but an unprivileged helper keeps its user-namespace capabilities until told otherwise.
fn clear_capabilities() -> Result<(), String> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = Header { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [Data { effective: 0, permitted: 0, inheritable: 0 }; 2];
    // SAFETY: capset reads one header and, for version 3, two data structs, both valid for the call.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(format!("capset: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Read-only access to the system paths and read-only binds, read-write to the work directory, `/tmp` and
/// writable binds, no TCP unless the run has network, and no signals or abstract sockets outside the sandbox.
fn restrict_filesystem(request: &RunRequest, workdir: &Path) -> Result<(), String> {
    let abi = LANDLOCK_ABI;
    let err = |e: landlock::RulesetError| format!("landlock: {e}");
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))
        .map_err(err)?
        .scope(Scope::from_all(abi))
        .map_err(err)?;
    if !request.network {
        ruleset = ruleset.handle_access(AccessNet::from_all(abi)).map_err(err)?;
    }
    let mut readable: Vec<&Path> = request.system_paths.iter().map(|p| p.as_path()).collect();
    readable.extend([Path::new("/proc"), Path::new("/dev")]);
    readable.extend(request.binds.iter().filter(|b| !b.writable).map(|b| b.path.as_path()));
    let mut writable = vec![workdir, Path::new("/dev/null"), Path::new("/dev/zero"), Path::new("/dev/full")];
    writable.extend(request.binds.iter().filter(|b| b.writable).map(|b| b.path.as_path()));
    if request.layers.mount_ns {
        // Without a mount namespace /tmp is the host's, shared with everything else.
        writable.push(Path::new("/tmp"));
    }
    let status = ruleset
        .create()
        .map_err(err)?
        .no_new_privs(request.layers.no_new_privs)
        .add_rules(path_beneath_rules(readable, AccessFs::from_read(abi)))
        .map_err(err)?
        .add_rules(path_beneath_rules(writable, AccessFs::from_all(abi)))
        .map_err(err)?
        .restrict_self()
        .map_err(err)?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err("landlock: the ruleset is not enforced".into());
    }
    Ok(())
}

fn write_script(path: &Path, script: &str) -> Result<(), String> {
    std::fs::write(path, script).map_err(|e| format!("write {}: {e}", path.display()))
}

/// Creates `path` with mode 0444, so the script can read but not rewrite it: data it was started with stays as
/// it came. `create_new` refuses to follow anything already there.
pub(super) fn write_read_only(path: &Path, content: &str) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(path)
        .map_err(|e| format!("create {}: {e}", path.display()))?;
    file.write_all(content.as_bytes()).map_err(|e| format!("write {}: {e}", path.display()))
}

/// Marks every fd above stderr close-on-exec, so nothing the helper held reaches the script.
fn close_inherited_fds() -> Result<(), String> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range takes integers only and affects this process's fd table.
    if unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) } != 0 {
        return Err(format!("close_range: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}
