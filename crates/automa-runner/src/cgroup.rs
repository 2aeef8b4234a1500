//! Per-slot cgroups for memory, process-count and CPU accounting, on cgroup v1 or v2 detected per controller
//! (this kind of host is a v1 hybrid where `memory.max` would limit nothing, SANDBOX.md trap 6).
//!
//! Cgroups are created once per slot when the sandbox starts, never per run: creating and removing one costs
//! about 10 ms. Nothing moves into them per run either: the slot's helper joins them when it starts, and
//! every run it forks is born there (a move waits for an RCU grace period when it is the first after a
//! pause, 6 ms at the median on a v1 host). Per run, only limits that changed since the slot's last run are
//! written, and counters read.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::CgroupVersion;

/// One controller's directory for one slot.
#[derive(Debug, Clone)]
struct Controller {
    dir: PathBuf,
    version: CgroupVersion,
}

/// Where each controller's hierarchy holds this process, as found in `/proc/self/cgroup` and the mounts.
#[derive(Debug, Default, Clone)]
pub(crate) struct Hierarchy {
    memory: Option<(PathBuf, CgroupVersion)>,
    pids: Option<(PathBuf, CgroupVersion)>,
    cpu: Option<(PathBuf, CgroupVersion)>,
}

impl Hierarchy {
    /// Finds, for each controller, the cgroup directory this process is in. v1 wins when a controller is
    /// mounted as v1, since a controller cannot be active in both.
    pub(crate) fn detect() -> Hierarchy {
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let membership = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mut found = Hierarchy::default();
        let mut v2_dir = None;
        for line in membership.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let path = path.trim_start_matches('/');
            if controllers.is_empty() {
                v2_dir = mount_point(&mounts, "cgroup2", None).map(|m| m.join(path));
                continue;
            }
            for controller in controllers.split(',') {
                let slot = match controller {
                    "memory" => &mut found.memory,
                    "pids" => &mut found.pids,
                    "cpuacct" => &mut found.cpu,
                    _ => continue,
                };
                if let Some(m) = mount_point(&mounts, "cgroup", Some(controller)) {
                    *slot = Some((m.join(path), CgroupVersion::V1));
                }
            }
        }
        if let Some(dir) = v2_dir {
            let available = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
            for controller in available.split_whitespace() {
                let slot = match controller {
                    "memory" => &mut found.memory,
                    "pids" => &mut found.pids,
                    "cpu" => &mut found.cpu,
                    _ => continue,
                };
                if slot.is_none() {
                    *slot = Some((dir.clone(), CgroupVersion::V2));
                }
            }
        }
        found
    }
}

fn mount_point(mounts: &str, fstype: &str, option: Option<&str>) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(point), Some(kind), Some(options)) = (fields.get(1), fields.get(2), fields.get(3)) else {
            return None;
        };
        let options_match = option.is_none_or(|o| options.split(',').any(|x| x == o));
        (*kind == fstype && options_match).then(|| PathBuf::from(point))
    })
}

/// The cgroups of every slot of one sandbox, removed again when it is dropped.
#[derive(Debug)]
pub(crate) struct CgroupPool {
    slots: Vec<SlotCgroup>,
    bases: Vec<PathBuf>,
    pub(crate) warnings: Vec<String>,
}

/// The cgroups of one slot.
#[derive(Debug, Default)]
pub(crate) struct SlotCgroup {
    memory: Option<Controller>,
    pids: Option<Controller>,
    cpu: Option<Controller>,
    /// The memory (MiB) and process limits last written: most runs of a slot have the same, and write none.
    written: Mutex<Option<(u64, u32)>>,
}

/// Counters read before a run, to tell what happened during it.
#[derive(Debug, Default)]
pub(crate) struct Baseline {
    oom_kills: u64,
    cpu_usec: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Usage {
    pub oom_killed: bool,
    pub cpu_ms: Option<u64>,
}

/// Processes of the sandbox's own in a slot's cgroups during a run, on top of the run's `max_processes`: the
/// slot's helper and the run's supervisor.
const HELPER_PROCESSES: u32 = 2;

static POOL_COUNTER: AtomicU64 = AtomicU64::new(0);

impl CgroupPool {
    /// Creates `slots` cgroups under this process's own cgroup in each usable controller. A controller that
    /// cannot be used becomes a warning: cgroups are an optional layer.
    pub(crate) fn create(hierarchy: &Hierarchy, slots: usize) -> CgroupPool {
        let name = format!("automa-{}-{}", std::process::id(), POOL_COUNTER.fetch_add(1, Ordering::Relaxed));
        let mut pool = CgroupPool {
            slots: (0..slots).map(|_| SlotCgroup::default()).collect(),
            bases: Vec::new(),
            warnings: Vec::new(),
        };
        let controllers = [("memory", &hierarchy.memory), ("pids", &hierarchy.pids), ("cpu", &hierarchy.cpu)];
        for (label, found) in controllers {
            let Some((parent, version)) = found else {
                pool.warnings.push(format!("no {label} cgroup controller: runs have no {label} cgroup limit"));
                continue;
            };
            let base = parent.join(&name);
            if !pool.bases.contains(&base) {
                if let Err(e) = create_base(&base, *version) {
                    pool.warnings.push(format!("cannot create {label} cgroup {}: {e}", base.display()));
                    continue;
                }
                pool.bases.push(base.clone());
            }
            for (i, slot) in pool.slots.iter_mut().enumerate() {
                let dir = base.join(format!("slot-{i}"));
                if let Err(e) = fs::create_dir(&dir).or_else(|e| exists_ok(e, &dir)) {
                    pool.warnings.push(format!("cannot create {label} cgroup {}: {e}", dir.display()));
                    continue;
                }
                let controller = Some(Controller { dir, version: *version });
                match label {
                    "memory" => slot.memory = controller,
                    "pids" => slot.pids = controller,
                    _ => slot.cpu = controller,
                }
            }
        }
        pool
    }

    pub(crate) fn slot(&self, slot: usize) -> &SlotCgroup {
        &self.slots[slot]
    }

    pub(crate) fn versions(&self) -> [Option<CgroupVersion>; 3] {
        let first = self.slots.first();
        [
            first.and_then(|s| s.memory.as_ref()).map(|c| c.version),
            first.and_then(|s| s.pids.as_ref()).map(|c| c.version),
            first.and_then(|s| s.cpu.as_ref()).map(|c| c.version),
        ]
    }

    /// Every `cgroup.procs` file a slot's helper writes itself into.
    pub(crate) fn procs_files(&self, slot: usize) -> Vec<PathBuf> {
        self.slots[slot].dirs().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Forgets every controller, for a sandbox whose helper cannot join them.
    pub(crate) fn disable(&mut self) {
        for slot in &mut self.slots {
            *slot = SlotCgroup::default();
        }
    }
}

fn create_base(base: &Path, version: CgroupVersion) -> std::io::Result<()> {
    if version == CgroupVersion::V2 {
        // v2 controllers must be enabled for the children of our own cgroup and of the new one.
        let parent = base.parent().unwrap_or(base);
        fs::write(parent.join("cgroup.subtree_control"), "+memory +pids +cpu")?;
    }
    fs::create_dir(base).or_else(|e| exists_ok(e, base))?;
    if version == CgroupVersion::V2 {
        fs::write(base.join("cgroup.subtree_control"), "+memory +pids +cpu")?;
    }
    Ok(())
}

fn exists_ok(e: std::io::Error, dir: &Path) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() { Ok(()) } else { Err(e) }
}

impl Drop for CgroupPool {
    fn drop(&mut self) {
        for slot in &self.slots {
            for dir in slot.dirs() {
                // A cgroup whose last task just exited can still be busy for a moment (trap 6).
                for _ in 0..50 {
                    if fs::remove_dir(dir).is_ok() || !dir.exists() {
                        break;
                    }
                    std::thread::yield_now();
                }
            }
        }
        for base in &self.bases {
            let _ = fs::remove_dir(base);
        }
    }
}

impl SlotCgroup {
    fn dirs(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.memory, &self.pids, &self.cpu].into_iter().flatten().map(|c| &c.dir)
    }

    /// Writes this run's limits, unless the slot has them already, and reads the counters the report compares.
    pub(crate) fn prepare(&self, limits: &crate::Limits) -> std::io::Result<Baseline> {
        let wanted = (limits.memory_mb, limits.max_processes);
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if *written != Some(wanted) {
            // Unknown until every write succeeded.
            *written = None;
            self.write_limits(limits)?;
            *written = Some(wanted);
        }
        let mut baseline = Baseline::default();
        if let Some(mem) = &self.memory {
            baseline.oom_kills = match mem.version {
                CgroupVersion::V1 => read_key(&mem.dir.join("memory.oom_control"), "oom_kill"),
                CgroupVersion::V2 => read_key(&mem.dir.join("memory.events"), "oom_kill"),
            };
        }
        if let Some(cpu) = &self.cpu {
            baseline.cpu_usec = cpu_usec(cpu);
        }
        Ok(baseline)
    }

    fn write_limits(&self, limits: &crate::Limits) -> std::io::Result<()> {
        if let Some(mem) = &self.memory {
            let bytes = (limits.memory_mb * 1024 * 1024).to_string();
            match mem.version {
                CgroupVersion::V1 => set_v1_memory_limit(&mem.dir, &bytes)?,
                CgroupVersion::V2 => {
                    fs::write(mem.dir.join("memory.max"), &bytes)?;
                    let _ = fs::write(mem.dir.join("memory.swap.max"), "0");
                }
            }
        }
        if let Some(pids) = &self.pids {
            fs::write(pids.dir.join("pids.max"), (limits.max_processes + HELPER_PROCESSES).to_string())?;
        }
        Ok(())
    }

    /// What the run used, then kills anything still in the slot but its helper (`helper`, its pid) so that the
    /// next run starts with the slot to itself.
    pub(crate) async fn finish(&self, baseline: &Baseline, helper: Option<u32>) -> Usage {
        let mut usage = Usage::default();
        if let Some(mem) = &self.memory {
            let kills = match mem.version {
                CgroupVersion::V1 => read_key(&mem.dir.join("memory.oom_control"), "oom_kill"),
                CgroupVersion::V2 => read_key(&mem.dir.join("memory.events"), "oom_kill"),
            };
            usage.oom_killed = kills > baseline.oom_kills;
        }
        if let Some(cpu) = &self.cpu {
            usage.cpu_ms = Some(cpu_usec(cpu).saturating_sub(baseline.cpu_usec) / 1000);
        }
        for dir in self.dirs() {
            empty(dir, helper).await;
        }
        usage
    }
}

/// In v1 the memory+swap limit must stay at or above the memory limit, so the order of the two writes
/// depends on whether the limit goes up or down; on hosts without swap accounting the second file is absent.
fn set_v1_memory_limit(dir: &Path, bytes: &str) -> std::io::Result<()> {
    let memsw = dir.join("memory.memsw.limit_in_bytes");
    if fs::write(dir.join("memory.limit_in_bytes"), bytes).is_ok() {
        if memsw.exists() {
            fs::write(&memsw, bytes)?;
        }
        return Ok(());
    }
    if memsw.exists() {
        fs::write(&memsw, bytes)?;
    }
    fs::write(dir.join("memory.limit_in_bytes"), bytes)
}

fn cpu_usec(cpu: &Controller) -> u64 {
    match cpu.version {
        CgroupVersion::V1 => fs::read_to_string(cpu.dir.join("cpuacct.usage"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map_or(0, |ns| ns / 1000),
        CgroupVersion::V2 => read_key(&cpu.dir.join("cpu.stat"), "usage_usec"),
    }
}

fn read_key(file: &Path, key: &str) -> u64 {
    fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// Kills every process left in the cgroup but the slot's helper. The pid namespace normally leaves nothing
/// but the run's supervisor on its way out; this is what catches escapees when it is switched off. No
/// `cgroup.kill`: it would take the helper too.
async fn empty(dir: &Path, helper: Option<u32>) {
    let procs = dir.join("cgroup.procs");
    for _ in 0..1000 {
        let left: Vec<i32> = members(&procs).into_iter().filter(|&pid| u32::try_from(pid).ok() != helper).collect();
        if left.is_empty() {
            return;
        }
        kill_members(&left, &procs);
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    tracing::warn!(cgroup = %dir.display(), "processes survive in a sandbox cgroup");
}

/// The pids `cgroup.procs` lists now.
fn members(procs: &Path) -> Vec<i32> {
    fs::read_to_string(procs).unwrap_or_default().split_whitespace().filter_map(|pid| pid.parse().ok()).collect()
}

/// SIGKILLs those of `listed` that are still members of the cgroup whose `cgroup.procs` is `procs`. A listed
/// process may have exited and its pid gone to a process outside the sandbox (pids wrap at `pid_max`, 32,768
/// on many hosts) before a plain `kill` arrives. So each pid is pinned first with a pidfd, and the membership
/// read again: a pid still listed after its pidfd was opened names the same process, unless that process has
/// died, and a signal through the pidfd of a dead process goes nowhere. Kernels without pidfds (before 5.3)
/// get the plain `kill`.
fn kill_members(listed: &[i32], procs: &Path) {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut pinned = Vec::with_capacity(listed.len());
    for &pid in listed {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        match i32::try_from(fd) {
            // SAFETY: the kernel just returned this fd and nothing else owns it.
            Ok(fd) if fd >= 0 => pinned.push((pid, unsafe { OwnedFd::from_raw_fd(fd) })),
            _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) => {}
            _ => {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
            }
        }
    }
    if pinned.is_empty() {
        return;
    }
    let still = members(procs);
    for (pid, pidfd) in pinned {
        if still.contains(&pid) {
            // SAFETY: pidfd_send_signal takes a pidfd this function owns, a signal number, a null siginfo and
            // flags; it touches no memory of ours.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0u32,
                )
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Child, Command};

    use super::*;

    fn sleeper() -> (Child, i32) {
        let child = Command::new("sleep").arg("600").spawn().expect("spawn sleep");
        let pid = i32::try_from(child.id()).expect("a pid");
        (child, pid)
    }

    /// Of the pids a first read listed, only those the cgroup still lists after they were pinned are killed:
    /// one gone meanwhile may be a process outside the sandbox by now.
    #[test]
    fn only_processes_still_in_the_cgroup_are_killed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let procs = dir.path().join("cgroup.procs");
        let (mut stranger, stranger_pid) = sleeper();
        let (mut member, member_pid) = sleeper();
        fs::write(&procs, format!("{member_pid}\n")).expect("write cgroup.procs");
        kill_members(&[stranger_pid, member_pid], &procs);
        assert_eq!(member.wait().expect("wait").signal(), Some(libc::SIGKILL));
        // The stranger's signal, had one been sent, went out before the member's, which has landed.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(stranger.try_wait().expect("try_wait").is_none(), "a process the cgroup no longer lists survives");
        stranger.kill().expect("kill");
        stranger.wait().expect("wait");
    }
}
