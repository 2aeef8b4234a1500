//! The run's root filesystem: a read-only tmpfs holding read-only binds of the system paths and the Python
//! install, a fresh `/proc` with read-only `/proc/sys`, a few device nodes, and size-capped tmpfs `/work` and
//! `/tmp`, and the request's own binds (a run's environment, read-only; what an environment build writes).
//! Nothing else of the host (its home directories, the server's data, other runs) exists in it.

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::protocol::{RunRequest, WORKDIR};

const RESOLV_CONF: &str = "/etc/resolv.conf";
/// slirp4netns's built-in DNS forwarder, at the default network's address + 3.
const SLIRP_RESOLV_CONF: &str = "nameserver 10.0.2.3\n";
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom"];
const DEV_LINKS: &[(&str, &str)] = &[
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("shm", "/tmp"),
];

pub(super) fn build_root(request: &RunRequest) -> Result<(), String> {
    // Nothing mounted from here on may propagate back to the host.
    mount_(None, Path::new("/"), None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None)?;
    let root = &request.root_mount;
    let base = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount_(Some(Path::new("tmpfs")), root, Some("tmpfs"), base, Some("size=1m,mode=0755"))?;
    let resolv_conf = Path::new(RESOLV_CONF);
    for path in &request.system_paths {
        if request.user_net.is_none() || path != resolv_conf {
            bind_read_only(root, path)?;
        }
    }
    if request.user_net.is_some() {
        // The host's resolver may be on its loopback, out of the run's reach: slirp4netns answers DNS itself.
        let target = inside(root, resolv_conf);
        mkdir(root, "/etc")?;
        fs::write(&target, SLIRP_RESOLV_CONF).map_err(|e| format!("write {}: {e}", target.display()))?;
    }
    build_dev(root)?;
    // A user namespace may mount proc only while the host's proc is still visible (trap 7).
    let proc_dir = mkdir(root, "/proc")?;
    mount_(Some(Path::new("proc")), &proc_dir, Some("proc"), base | MsFlags::MS_NOEXEC, None)?;
    let sys = proc_dir.join("sys");
    mount_(Some(sys.as_path()), &sys, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
    remount_read_only(&sys, &sys)?;

    let (uid, gid) = request.user.unwrap_or_else(|| (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw()));
    let disk = request.limits.disk_mb.max(1);
    let work = mkdir(root, WORKDIR)?;
    mount_(
        Some(Path::new("tmpfs")),
        &work,
        Some("tmpfs"),
        base,
        Some(&format!("size={disk}m,mode=0700,uid={uid},gid={gid}")),
    )?;
    let tmp = mkdir(root, "/tmp")?;
    mount_(Some(Path::new("tmpfs")), &tmp, Some("tmpfs"), base, Some(&format!("size={disk}m,mode=1777")))?;
    // After /tmp, which would otherwise hide a bind of a path under it (test data directories live there).
    for bind in &request.binds {
        if bind.writable {
            bind_writable(root, &bind.path)?;
        } else {
            bind_read_only(root, &bind.path)?;
        }
    }

    mount_(None, root, None, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | base, None)?;
    std::env::set_current_dir(root).map_err(|e| format!("chdir {}: {e}", root.display()))?;
    // Stacking the old root under the new one and detaching it needs no directory for it.
    nix::unistd::pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detach old root: {e}"))?;
    std::env::set_current_dir(WORKDIR).map_err(|e| format!("chdir {WORKDIR}: {e}"))
}

fn build_dev(root: &Path) -> Result<(), String> {
    let dev = mkdir(root, "/dev")?;
    for name in DEVICES {
        let target = dev.join(name);
        fs::File::create(&target).map_err(|e| format!("create {}: {e}", target.display()))?;
        mount_(Some(Path::new("/dev").join(name).as_path()), &target, None, MsFlags::MS_BIND, None)?;
    }
    for (name, to) in DEV_LINKS {
        symlink(to, dev.join(name)).map_err(|e| format!("symlink /dev/{name}: {e}"))?;
    }
    Ok(())
}

/// Binds `path` at the same place under `root`, read-only; a symlink is copied as a symlink. Binds are not
/// recursive, so no writable submount comes along (trap 8).
fn bind_read_only(root: &Path, path: &Path) -> Result<(), String> {
    let target = inside(root, path);
    let meta = fs::symlink_metadata(path).map_err(|e| format!("stat {}: {e}", path.display()))?;
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
    }
    if meta.file_type().is_symlink() {
        let to = fs::read_link(path).map_err(|e| format!("readlink {}: {e}", path.display()))?;
        return symlink(&to, &target).map_err(|e| format!("symlink {}: {e}", target.display()));
    }
    if meta.is_dir() {
        fs::create_dir_all(&target).map_err(|e| format!("mkdir {}: {e}", target.display()))?;
    } else {
        fs::File::create(&target).map_err(|e| format!("create {}: {e}", target.display()))?;
    }
    mount_(Some(path), &target, None, MsFlags::MS_BIND, None)?;
    remount_read_only(path, &target)
}

/// Binds the directory `path` at the same place under `root`, writable but without setuid or device files.
fn bind_writable(root: &Path, path: &Path) -> Result<(), String> {
    let target = inside(root, path);
    fs::create_dir_all(&target).map_err(|e| format!("mkdir {}: {e}", target.display()))?;
    mount_(Some(path), &target, None, MsFlags::MS_BIND, None)?;
    remount(path, &target, MsFlags::MS_NOSUID | MsFlags::MS_NODEV)
}

fn remount_read_only(source: &Path, target: &Path) -> Result<(), String> {
    remount(source, target, MsFlags::MS_RDONLY | MsFlags::MS_NOSUID)
}

/// A bind gets its flags (read-only, nosuid) from a second, remounting call, which in a user namespace must
/// keep every flag the source mount has locked (nodev, noexec, atime), or the kernel refuses it.
fn remount(source: &Path, target: &Path, wanted: MsFlags) -> Result<(), String> {
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | wanted;
    let c_source = CString::new(source.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: statvfs fills the zeroed struct it is given and reads only the NUL-terminated path.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: see above; both pointers are valid for the call.
    if unsafe { libc::statvfs(c_source.as_ptr(), &mut stat) } == 0 {
        for (st, ms) in [
            (libc::ST_NODEV, MsFlags::MS_NODEV),
            (libc::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (libc::ST_NOATIME, MsFlags::MS_NOATIME),
            (libc::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (libc::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if stat.f_flag & st != 0 {
                flags |= ms;
            }
        }
    }
    mount_(None, target, None, flags, None)
}

fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn mkdir(root: &Path, path: &str) -> Result<PathBuf, String> {
    let dir = inside(root, Path::new(path));
    fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    Ok(dir)
}

fn mount_(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    mount(source, target, fstype, flags, data)
        .map_err(|e| format!("mount {:?} on {} ({flags:?}): {e}", source, target.display()))
}
