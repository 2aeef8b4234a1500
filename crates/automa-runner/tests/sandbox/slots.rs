//! What a slot keeps from one run to the next: its long-lived helper and, for runs without network, its empty
//! network namespace; and what it must not keep: anything a run made.

use automa_runner::{Layer, Profile, RunnerError, Sandbox};
use tokio::sync::{mpsc, watch};

use crate::support::{self, Harness, script};

/// A sandbox of one slot, so that consecutive runs share it.
fn one_slot(disabled: &[Layer]) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = support::config(Profile::Strict, &dir);
    config.slots = 1;
    config.disabled_layers = disabled.to_vec();
    let sandbox = Sandbox::new(config).expect("the sandbox starts");
    Harness { sandbox, dir, warm: false }
}

/// Leaves a file in /tmp and the work directory, a SysV shared memory segment, and a background process in
/// a session of its own listening on an abstract unix socket; prints the network namespace it ran in.
const LEAVE_TRACES: &str = r#"
import ctypes, os, socket, subprocess, sys
open('/tmp/left-behind', 'w').write('x')
open('left-behind', 'w').write('x')
libc = ctypes.CDLL(None, use_errno=True)
if libc.shmget(0x4155544f, 4096, 0o1000 | 0o666) < 0:
    sys.exit('shmget: %d' % ctypes.get_errno())
listener = '''
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.bind('\\0automa-left-behind')
s.listen()
print('listening', flush=True)
time.sleep(600)
'''
child = subprocess.Popen([sys.executable, '-c', listener], stdout=subprocess.PIPE, start_new_session=True)
assert child.stdout.readline() == b'listening\n'
# The traces are there for this run to see: the next run's not seeing them means something.
socket.socket(socket.AF_UNIX).connect('\0automa-left-behind')
assert libc.shmget(0x4155544f, 0, 0) >= 0
print(os.stat('/proc/self/ns/net').st_ino)
"#;

/// Looks for each trace, and prints its network namespace and the processes it can see.
const LOOK_FOR_TRACES: &str = r#"
import ctypes, os, socket
print('tmp file', os.path.exists('/tmp/left-behind'))
print('work file', os.path.exists('left-behind'))
libc = ctypes.CDLL(None, use_errno=True)
print('shm segment', libc.shmget(0x4155544f, 0, 0) >= 0)
s = socket.socket(socket.AF_UNIX)
try:
    s.connect('\0automa-left-behind')
    print('abstract socket True')
except OSError:
    print('abstract socket False')
others = [p for p in os.listdir('/proc') if p.isdigit() and int(p) not in (1, os.getpid())]
print('processes', others)
print(os.stat('/proc/self/ns/net').st_ino)
"#;

const CLEAN: &str = "tmp file False\nwork file False\nshm segment False\nabstract socket False\nprocesses []\n";

async fn nothing_survives(h: &Harness) {
    let first = script(h, LEAVE_TRACES).await;
    let first_network = first.ok().trim().to_owned();
    let second = script(h, LOOK_FOR_TRACES).await;
    let (traces, second_network) = second.ok().trim_end().rsplit_once('\n').expect("several lines");
    assert_eq!(format!("{traces}\n"), CLEAN, "{second:#?}");
    if !nix::unistd::geteuid().is_root() {
        // Only a root helper pools a network namespace: there is no reused namespace to check.
        return;
    }
    // Both ran in the namespace the slot's helper holds open, which no other namespace can have taken the
    // inode number of meanwhile: the check above is about a namespace that was reused.
    let held = held_networks(h);
    assert!(held.contains(&first_network), "{held:?}\n{first:#?}");
    assert_eq!(first_network, second_network, "{first:#?}\n{second:#?}");
}

/// The inode numbers of the network namespaces the slots' helpers (one, still the same) hold open.
fn held_networks(h: &Harness) -> Vec<String> {
    let helpers = h.sandbox.slot_helper_pids();
    assert_eq!(helpers.len(), 1, "one slot, one helper: {helpers:?}");
    let fds = std::fs::read_dir(format!("/proc/{}/fd", helpers[0])).expect("the helper's fds");
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(target.strip_prefix("net:[")?.strip_suffix(']')?.to_owned())
        })
        .collect()
}

#[tokio::test]
async fn nothing_a_run_leaves_survives_into_the_next_run_of_its_slot() {
    nothing_survives(&one_slot(&[])).await;
}

/// Landlock alone would keep the next run from the abstract socket: without it, the namespaces must.
#[tokio::test]
async fn nothing_survives_into_the_next_run_without_landlock_either() {
    nothing_survives(&one_slot(&[Layer::Landlock])).await;
}

#[tokio::test]
async fn the_pooled_network_namespace_reaches_nothing_and_stays_empty() {
    let h = one_slot(&[]);
    let probe = r#"
import socket
print(sorted(name for _, name in socket.if_nameindex()))
for address in [('127.0.0.1', 9), ('10.0.2.2', 9), ('1.1.1.1', 53)]:
    s = socket.socket()
    try:
        s.connect(address)
        print('reached', address)
    except OSError as e:
        print('refused')
"#;
    let unreachable = "['lo']\nrefused\nrefused\nrefused\n";
    for _ in 0..2 {
        assert_eq!(script(&h, probe).await.ok(), unreachable);
    }
}

#[tokio::test]
async fn a_killed_slot_helper_is_replaced_and_the_next_run_succeeds() {
    let h = one_slot(&[]);
    assert_eq!(script(&h, "print('first')").await.ok(), "first\n");
    let helpers = h.sandbox.slot_helper_pids();
    assert_eq!(helpers.len(), 1, "one slot, one helper: {helpers:?}");
    for pid in &helpers {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), nix::sys::signal::Signal::SIGKILL)
            .expect("kill the slot's helper");
    }
    assert_eq!(script(&h, "print('second')").await.ok(), "second\n");
    let replaced = h.sandbox.slot_helper_pids();
    assert_eq!(replaced.len(), 1);
    assert_ne!(replaced, helpers, "the dead helper was replaced");
}

/// A supervisor never outlives the slot helper that forked it: a helper given up on (replaced after a launch
/// failed) could otherwise leave a run going that nothing watches.
#[tokio::test]
async fn a_run_ends_with_the_slot_helper_that_forked_its_supervisor() {
    let h = one_slot(&[]);
    let (tx, mut rx) = mpsc::channel(64);
    let (_cancel, cancel) = watch::channel(false);
    let spec = support::spec("import time\nprint('started', flush=True)\ntime.sleep(600)");
    let run = h.sandbox.run(spec, tx, cancel);
    tokio::pin!(run);
    loop {
        tokio::select! {
            chunk = rx.recv() => {
                if chunk.expect("output until the run ends").data.contains("started") {
                    break;
                }
            }
            result = &mut run => panic!("the run ended before its helper was killed: {result:?}"),
        }
    }
    for pid in h.sandbox.slot_helper_pids() {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL)
            .expect("kill the slot's helper");
    }
    // Its supervisor died with it, and the run's init with the supervisor: no report, and no timeout either.
    let ended = run.await;
    assert!(matches!(ended, Err(RunnerError::Helper(_))), "{ended:?}");
    assert_eq!(script(&h, "print('next')").await.ok(), "next\n");
}

/// The controllers' lines (`memory`, `pids`, `cpuacct` or the v2 line) of a `/proc/<pid>/cgroup`.
fn slot_cgroups(membership: &str) -> Vec<String> {
    let mut lines: Vec<String> = membership
        .lines()
        .filter_map(|l| {
            let controllers = l.split(':').nth(1)?;
            let wanted =
                controllers.is_empty() || controllers.split(',').any(|c| ["memory", "pids", "cpuacct"].contains(&c));
            wanted.then_some(l)
        })
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// Whether this process has `CAP_SYS_RESOURCE` (some containers drop it even for root), as the helper has.
fn may_lower_oom_scores() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let effective = status.lines().find_map(|l| l.strip_prefix("CapEff:")).expect("CapEff");
    // CAP_SYS_RESOURCE is capability 24.
    u64::from_str_radix(effective.trim(), 16).expect("hex") & (1 << 24) != 0
}

/// Prints the run's cgroups, its OOM score adjustment and whether it may lower it again.
const CGROUP_PROBE: &str = r#"
import os
print(open('/proc/self/cgroup').read(), end='')
print('oom_score_adj', open('/proc/self/oom_score_adj').read().strip())
try:
    open('/proc/self/oom_score_adj', 'w').write('-1000')
    print('lowered')
except OSError:
    print('kept')
"#;

#[tokio::test]
async fn runs_are_born_in_the_cgroups_their_slot_helper_joined_once_and_only_the_run_is_oom_killable() {
    // Without the address-space rlimit only the memory cgroup stops the hog below.
    let h = one_slot(&[Layer::Rlimits]);
    let out = script(&h, CGROUP_PROBE).await;
    let helper = h.sandbox.slot_helper_pids()[0];
    let helper_cgroups = slot_cgroups(&std::fs::read_to_string(format!("/proc/{helper}/cgroup")).expect("helper"));
    let run_cgroups = slot_cgroups(out.ok());
    assert_eq!(run_cgroups, helper_cgroups, "{out:#?}");
    let in_slot = helper_cgroups.iter().filter(|l| l.ends_with("/slot-0")).count();
    assert!(in_slot >= 1, "{helper_cgroups:?}");
    assert!(out.ok().ends_with("oom_score_adj 0\nkept\n"), "{out:#?}");
    let helper_score = std::fs::read_to_string(format!("/proc/{helper}/oom_score_adj")).expect("helper's score");
    let expected = if may_lower_oom_scores() { "-1000" } else { "0" };
    assert_eq!(helper_score.trim(), expected);

    // The run that exhausts its memory is the one killed; the slot's helper serves the next run.
    let mut hog = support::spec(
        "hog = []\nwhile True:\n    hog.append(bytearray(16 * 1024 * 1024))\n    \
         for j in range(0, len(hog[-1]), 4096): hog[-1][j] = 1\n",
    );
    hog.limits = automa_runner::Limits { memory_mb: 64, ..support::limits() };
    let hog = support::run(&h, hog).await;
    assert!(hog.report.oom_killed && hog.report.signal == Some(9), "{hog:#?}");
    assert_eq!(script(&h, "print('after')").await.ok(), "after\n");
    assert_eq!(h.sandbox.slot_helper_pids(), vec![helper], "the helper survived the run's OOM kill");
}

/// Starts children that wait until the run ends, as many as the process limit allows; prints how many.
const COUNT_CHILDREN: &str = r#"
import os
r, w = os.pipe()
started = 0
for _ in range(64):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    started += 1
print(started)
"#;

#[tokio::test]
async fn the_slot_helper_and_supervisor_do_not_count_against_the_runs_process_limit() {
    let h = one_slot(&[Layer::Rlimits]);
    let mut spec = support::spec(COUNT_CHILDREN);
    spec.limits.max_processes = 8;
    // The init and the workload are two of the run's eight.
    for _ in 0..2 {
        assert_eq!(support::run(&h, spec.clone()).await.ok(), "6\n");
    }
}

#[tokio::test]
async fn cpu_time_reported_is_the_runs_own() {
    let h = one_slot(&[]);
    let busy =
        "import os\nn = 0\nfor i in range(3_000_000): n += i\nt = os.times()\nprint(int((t.user + t.system) * 1000))";
    for _ in 0..2 {
        let out = script(&h, busy).await;
        let own: u64 = out.ok().trim().parse().expect("the run's own CPU time");
        let reported = out.report.cpu_ms.expect("cpu_ms");
        // The cgroup counts the whole run (interpreter start-up, init, supervisor) but nothing of the idle
        // helper between runs.
        assert!(reported >= own && reported < own + 500, "reported {reported} ms, the script used {own} ms");
    }
}

/// Without the pid namespace a daemon outlives its run's supervisor; the end of the run still kills it, because
/// it is in the slot's cgroups (each member pinned by a pidfd and checked still there before the signal), and
/// spares the slot's helper, which serves the next run.
#[tokio::test]
async fn the_slot_cgroups_kill_a_daemon_the_pid_namespace_did_not_and_keep_the_helper() {
    let h = one_slot(&[Layer::PidNs]);
    assert!(!crate::attacks::leave_process(&h).await, "a daemon survived its run");
    let helpers = h.sandbox.slot_helper_pids();
    assert_eq!(script(&h, "print('next')").await.ok(), "next\n");
    assert_eq!(h.sandbox.slot_helper_pids(), helpers, "the same helper served the next run");
}
