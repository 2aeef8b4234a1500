//! Hostile scripts, each returning whether the attack worked. The `hostile` tests assert that none does
//! under the full sandbox; `layers_off` asserts that each does once the layers that stop it are switched
//! off, which shows the test can fail.
//!
//! Every script prints `REACHED <attack>` just before each attacking call, and [`verdict`] fails the test
//! when one is missing: a script that breaks before it attacks proves nothing.

use std::io::Read;
use std::net::TcpListener;
use std::time::Duration;

use automa_runner::{Limits, Stream};
use tokio::sync::{mpsc, watch};

use crate::support::{Harness, Outcome, limits, run, spec};

fn with_args(script: &str, args: &[String]) -> automa_runner::RunSpec {
    let mut s = spec(script);
    s.args = args.to_vec();
    s
}

fn leaked(out: &Outcome) -> bool {
    out.stdout.lines().any(|l| l.starts_with("LEAK"))
}

/// Whether the attack worked, after checking that the script reached each of `attacks`.
pub fn verdict(out: &Outcome, attacks: &[&str]) -> bool {
    assert_reached(out, attacks);
    leaked(out)
}

pub fn assert_reached(out: &Outcome, attacks: &[&str]) {
    for attack in attacks {
        let marker = format!("REACHED {attack}");
        assert!(out.stdout.lines().any(|l| l == marker), "the script never reached {attack:?}: {out:#?}");
    }
}

/// Reads a secret the test wrote outside the sandbox, the server's "database", /etc/shadow and /root.
pub async fn read_outside(h: &Harness) -> bool {
    let secret = h.dir.path().join("secret.txt");
    std::fs::write(&secret, "top-secret").expect("write secret");
    let db = h.dir.path().join("automa.db");
    std::fs::write(&db, "SQLite format 3").expect("write db");
    let out = run(h, with_args(READ_OUTSIDE, &[secret.display().to_string(), db.display().to_string()])).await;
    verdict(&out, &["read 0", "read 1", "read 2", "read 3", "read 4", "list /root"])
}

const READ_OUTSIDE: &str = r#"
import os, sys
paths = sys.argv[1:] + ["/etc/shadow", "../../automa.db", "../../../automa.db"]
for i, p in enumerate(paths):
    print("REACHED read", i)
    try:
        data = open(p).read()
        print("LEAK", p, data[:20])
    except OSError as e:
        print("blocked", p, e)
print("REACHED list /root")
try:
    print("LEAK /root", os.listdir("/root/.ssh") if os.path.exists("/root/.ssh") else os.listdir("/root"))
except OSError as e:
    print("blocked /root", e)
"#;

/// Writes into a host directory, a system path and a kernel tunable.
pub async fn write_outside(h: &Harness) -> bool {
    let target = h.dir.path().join("planted.txt");
    let out = run(h, with_args(WRITE_OUTSIDE, &[target.display().to_string()])).await;
    let leaked = verdict(&out, &["write 0", "write 1", "write 2", "write drop_caches"]);
    target.exists() || leaked
}

const WRITE_OUTSIDE: &str = r#"
import sys
for i, p in enumerate([sys.argv[1], "/usr/planted.txt", "/etc/planted.txt"]):
    print("REACHED write", i)
    try:
        open(p, "w").write("x")
        print("LEAK wrote", p)
    except OSError as e:
        print("blocked", p, e)
print("REACHED write drop_caches")
try:
    open("/proc/sys/vm/drop_caches", "w").write("1")
    print("LEAK wrote drop_caches")
except OSError as e:
    print("blocked drop_caches", e)
"#;

/// Connects to a listener the test holds on 127.0.0.1.
pub async fn connect_loopback(h: &Harness, network: bool) -> bool {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut s = with_args(CONNECT, &[port.to_string()]);
    s.network = network;
    let out = run(h, s).await;
    verdict(&out, &["connect"])
}

const CONNECT: &str = r#"
import socket, sys
print("REACHED connect")
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5).close()
    print("LEAK connected")
except OSError as e:
    print("blocked", e)
"#;

/// Sees the test process in /proc or signals it.
pub async fn see_host_process(h: &Harness) -> bool {
    let out = run(h, with_args(SEE_HOST, &[std::process::id().to_string()])).await;
    verdict(&out, &["stat", "signal"])
}

const SEE_HOST: &str = r#"
import os, sys, signal
pid = int(sys.argv[1])
print("REACHED stat")
if os.path.exists(f"/proc/{pid}"):
    print("LEAK sees", pid)
print("REACHED signal")
try:
    os.kill(pid, 0)
    print("LEAK can signal", pid)
except OSError as e:
    print("blocked", e)
"#;

pub const CANARY: &str = "AUTOMA_TEST_CANARY";

/// Finds a canary variable of the sandbox's own process (which the helper would inherit) or of a stand-in
/// "server" process started with it, in the script's environment, its init's or the server's.
pub async fn read_server_env(h: &Harness) -> bool {
    // SAFETY: tokio's default test runtime is single-threaded, so nothing reads the environment meanwhile.
    unsafe { std::env::set_var(CANARY, "canary-value-1234") };
    let mut server = std::process::Command::new("/bin/sleep")
        .arg("120")
        .env(CANARY, "canary-value-1234")
        .spawn()
        .expect("start the stand-in server");
    let out = run(h, with_args(READ_ENV, &[server.id().to_string()])).await;
    let _ = server.kill();
    let _ = server.wait();
    verdict(&out, &["environ", "proc 0", "proc 1", "proc 2", "proc 3"])
}

const READ_ENV: &str = r#"
import os, sys
print("REACHED environ")
if any("canary-value-1234" in v for v in os.environ.values()):
    print("LEAK os.environ")
for i, p in enumerate(["/proc/self/environ", "/proc/1/environ", f"/proc/{os.getppid()}/environ", f"/proc/{sys.argv[1]}/environ"]):
    print("REACHED proc", i)
    try:
        if b"canary-value-1234" in open(p, "rb").read():
            print("LEAK", p)
    except OSError as e:
        print("blocked", p, e)
"#;

/// Starts far more processes than the run's limit of 32.
pub async fn fork_bomb(h: &Harness) -> bool {
    let out = run(h, spec(FORK_BOMB)).await;
    verdict(&out, &["fork"])
}

const FORK_BOMB: &str = r#"
import os, time
started = 0
print("REACHED fork")
for _ in range(200):
    try:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        started += 1
    except OSError as e:
        print("blocked after", started, e)
        break
if started >= 200:
    print("LEAK started", started)
"#;

/// Allocates 1 GiB with a 128 MiB budget. Returns the outcome for the test to check how it was stopped.
pub async fn exhaust_memory(h: &Harness) -> (bool, Outcome) {
    let mut s = spec(EAT_MEMORY);
    s.limits = Limits { memory_mb: 128, ..limits() };
    let out = run(h, s).await;
    (verdict(&out, &["allocate"]), out)
}

const EAT_MEMORY: &str = r#"
hog = []
print("REACHED allocate")
for i in range(64):
    hog.append(bytearray(16 * 1024 * 1024))
    for j in range(0, len(hog[-1]), 4096):
        hog[-1][j] = 1
print("LEAK allocated", len(hog) * 16, "MiB")
"#;

/// Writes 64 MiB in many files into a 16 MiB work directory.
pub async fn fill_disk(h: &Harness) -> bool {
    let out = run(h, spec(FILL_DISK)).await;
    verdict(&out, &["fill"])
}

const FILL_DISK: &str = r#"
written = 0
print("REACHED fill")
try:
    for i in range(16):
        with open(f"fill-{i}", "wb") as f:
            f.write(b"x" * (4 * 1024 * 1024))
        written += 4
    print("LEAK wrote", written, "MiB")
except OSError as e:
    print("blocked after", written, "MiB", e)
"#;

/// Burns 3 CPU seconds with a budget of 1.
pub async fn exceed_cpu(h: &Harness) -> (bool, Outcome) {
    let mut s = spec(BURN_CPU);
    s.limits = Limits { cpu_seconds: 1, ..limits() };
    let out = run(h, s).await;
    (verdict(&out, &["burn"]), out)
}

const BURN_CPU: &str = r#"
import time
print("REACHED burn")
while time.process_time() < 3:
    pass
print("LEAK burned", time.process_time())
"#;

/// Leaves a double-forked, `setsid` daemon behind and looks for it in the host's /proc after the run.
pub async fn leave_process(h: &Harness) -> bool {
    let marker = format!("automa-survivor-{}-{}", std::process::id(), rand_suffix());
    let out = run(h, with_args(DAEMONIZE, std::slice::from_ref(&marker))).await;
    assert_eq!(out.report.exit_code, Some(0), "{out:#?}");
    assert_reached(&out, &["daemonize"]);
    let survivors = processes_with(&marker);
    for pid in &survivors {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::SIGKILL);
    }
    !survivors.is_empty()
}

const DAEMONIZE: &str = r#"
import os, sys
print("REACHED daemonize")
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", sys.argv[1]])
    os._exit(0)
os.wait()
print("daemon started")
"#;

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// Pids of host processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let mut cmdline = Vec::new();
        if let Ok(mut f) = std::fs::File::open(entry.path().join("cmdline")) {
            let _ = f.read_to_end(&mut cmdline);
        }
        if String::from_utf8_lossy(&cmdline).contains(marker) {
            found.push(pid);
        }
    }
    found
}

/// ptrace, mount, unshare and chroot through libc.
pub async fn escape_syscalls(h: &Harness) -> bool {
    let out = run(h, spec(SYSCALLS)).await;
    verdict(&out, &["ptrace", "mount", "unshare", "chroot"])
}

const SYSCALLS: &str = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER = 0x10000000
CLONE_NEWNS = 0x00020000
def attempt(name, fn):
    print("REACHED", name)
    if fn() == 0:
        print("LEAK", name)
    else:
        print("blocked", name, os.strerror(ctypes.get_errno()))
attempt("ptrace", lambda: libc.ptrace(0, 0, None, None))
attempt("mount", lambda: libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))
attempt("unshare", lambda: libc.unshare(CLONE_NEWUSER | CLONE_NEWNS))
attempt("chroot", lambda: libc.chroot(b"/tmp"))
"#;

/// Holds a capability or may gain privileges through exec.
pub async fn hold_privilege(h: &Harness) -> bool {
    let out = run(h, spec(PRIVILEGES)).await;
    verdict(&out, &["capabilities", "uid"])
}

const PRIVILEGES: &str = r#"
import os
print("REACHED capabilities")
for line in open("/proc/self/status"):
    key, _, value = line.partition(":")
    value = value.strip()
    if key in ("CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb") and int(value, 16) != 0:
        print("LEAK", key, value)
    if key == "NoNewPrivs" and value != "1":
        print("LEAK no_new_privs", value)
print("REACHED uid")
if os.getuid() == 0 or os.geteuid() == 0:
    print("LEAK uid 0")
"#;

/// Reads a file another, concurrent run keeps in its work directory.
pub async fn read_other_run(h: &Harness) -> bool {
    let (cancel, cancel_rx) = watch::channel(false);
    let (tx, mut rx) = mpsc::channel(16);
    let victim = h.sandbox.run(automa_runner::RunSpec { warm: h.warm, ..spec(VICTIM) }, tx, cancel_rx);
    let attacker = async {
        // The victim's first line says its secret is in place.
        let first = rx.recv().await.expect("the victim reports");
        assert_eq!(first.stream, Stream::Stdout, "{first:?}");
        let work_root = h.work_root().display().to_string();
        let out = run(h, with_args(SNOOP, &[work_root])).await;
        cancel.send(true).expect("cancel the victim");
        out
    };
    let (victim, out) = tokio::join!(victim, attacker);
    assert!(victim.expect("victim ran").cancelled);
    verdict(&out, &["snoop"])
}

const VICTIM: &str = r#"
import time
open("victim-secret.txt", "w").write("victim-secret-5678")
print("ready", flush=True)
time.sleep(60)
"#;

const SNOOP: &str = r#"
import glob, os, sys
print("REACHED snoop")
candidates = glob.glob(sys.argv[1] + "/*/work/victim-secret.txt") + glob.glob("/proc/*/root/work/victim-secret.txt") \
    + glob.glob("/proc/*/cwd/victim-secret.txt") + glob.glob("/tmp/*/victim-secret.txt")
for p in candidates:
    try:
        if "victim-secret-5678" in open(p).read():
            print("LEAK", p)
    except OSError as e:
        print("blocked", p, e)
print("searched", len(candidates))
"#;

/// A wall-clock limit of one second against a script that sleeps for a minute.
pub async fn overstay(h: &Harness) -> Outcome {
    let mut s = spec("import time\nprint('REACHED sleep')\ntime.sleep(60)\nprint('LEAK woke up')");
    s.limits = Limits { timeout: Duration::from_secs(1), ..limits() };
    let out = run(h, s).await;
    assert_reached(&out, &["sleep"]);
    out
}

/// Tries to write 2 GiB to stdout against a 1 MiB budget.
pub async fn flood_output(h: &Harness) -> Outcome {
    let s = spec(
        "import sys\nblock = 'x' * (1024 * 1024 - 1) + '\\n'\nprint('REACHED flood')\nfor _ in range(2048):\n    sys.stdout.write(block)\nprint('LEAK done')",
    );
    let out = run(h, s).await;
    assert_reached(&out, &["flood"]);
    out
}
