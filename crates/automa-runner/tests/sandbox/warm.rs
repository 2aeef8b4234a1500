//! Warm starts: a run handed to a prepared sandbox behaves as a cold one and shares nothing with the runs
//! before it. The isolation tests of `hostile` run in both modes too.

use automa_runner::{Limits, Profile, RunSpec, Stream};
use tokio::sync::{mpsc, watch};

use crate::support::{self, Harness, Mode, Outcome, run, spec};

async fn warm(profile: Profile) -> Harness {
    support::harness(profile, &[], Mode::Warm).await
}

#[tokio::test]
async fn a_warm_run_starts_warm_and_runs_its_script() {
    for profile in [Profile::Strict, Profile::None] {
        let h = warm(profile).await;
        let out = run(&h, spec("print('hello')")).await;
        assert_eq!(out.ok(), "hello\n");
        assert!(out.report.warm_start && out.report.setup.is_none(), "{:#?}", out.report);
    }
}

/// Looks for anything an earlier run left: files in the work directory and the temporary directory, other
/// runs' variables (their secrets), module and builtins changes, processes. Then leaves all of these itself
/// (a background process only where the sandbox contains them: profile `none` does not, cold or warm).
const LEAVE_AND_LOOK: &str = r#"
import builtins, os, sys, subprocess, tempfile
me = os.environ["RUN"]
tmp = tempfile.gettempdir()
for name in sorted(os.listdir(".")) + sorted(os.listdir(tmp)):
    if name.startswith("left-by-"):
        print("LEAK file", name)
for key in os.environ:
    if key.startswith("SECRET_") and key != "SECRET_" + me:
        print("LEAK variable", key)
if "planted" in sys.modules or hasattr(builtins, "planted") or hasattr(sys, "planted"):
    print("LEAK module state")
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        if b"left-by-" + os.environ["TEST"].encode() in cmdline and int(pid) != os.getpid():
            print("LEAK process", pid, cmdline)
open("left-by-" + me, "w").write(os.environ["SECRET_" + me])
open(os.path.join(tmp, "left-by-" + me), "w").write("x")
sys.modules["planted"] = sys
builtins.planted = sys.planted = me
if os.environ["DETACH"] == "yes":
    marker = "left-by-" + os.environ["TEST"] + "-" + me
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", marker], start_new_session=True)
print("looked", me)
"#;

#[tokio::test]
async fn consecutive_warm_runs_share_no_state() {
    for profile in [Profile::Strict, Profile::None] {
        let h = warm(profile).await;
        let test = format!("{}-{}", std::process::id(), h.dir.path().display()).replace('/', "");
        let detach = if profile == Profile::Strict { "yes" } else { "no" };
        // Two slots: of three runs one after the other, at least two are served by the same slot.
        for index in 0..3 {
            let mut env: Vec<(String, String)> =
                [("RUN", index.to_string()), ("TEST", test.clone()), ("DETACH", detach.to_owned())]
                    .map(|(k, v)| (k.to_owned(), v))
                    .to_vec();
            env.push((format!("SECRET_{index}"), format!("value-{index}")));
            let out = run(&h, RunSpec { env, ..spec(LEAVE_AND_LOOK) }).await;
            assert_eq!(out.ok(), format!("looked {index}\n"), "{profile:?}: {out:#?}");
        }
        for index in 0..3 {
            let survivors = crate::attacks::processes_with(&format!("left-by-{test}-{index}"));
            for pid in &survivors {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::SIGKILL);
            }
            assert!(survivors.is_empty(), "{profile:?}: a process of run {index} survived it");
        }
    }
}

/// What a cold and a warm run must agree on: argv, environment, working directory, `__main__`, sys.path,
/// modules, stdin, rlimits, the payload file and the script's own file.
const INTROSPECT: &str = r#"
import __main__, os, resource, stat, sys
here = os.getcwd()
print(sys.argv, sys.orig_argv[1:], __name__, __main__.__file__ == os.path.join(here, "main.py"))
print(type(__main__.__loader__).__name__, sorted(globals()), sys.path[0] == here, sorted(sys.modules))
print({k: v for k, v in os.environ.items() if k != "TMPDIR" and not v.startswith("/tmp")})
print(sys.stdin.read() == "", sys.flags)
for limit in ("AS", "CPU", "NPROC", "NOFILE", "FSIZE", "CORE"):
    print(limit, resource.getrlimit(getattr(resource, "RLIMIT_" + limit)))
payload = os.environ["AUTOMA_TRIGGER_PAYLOAD"]
info = os.stat(payload)
print(open(payload).read(), stat.filemode(info.st_mode), info.st_uid == os.getuid())
info = os.stat(__main__.__file__)
print(stat.filemode(info.st_mode), info.st_uid == os.getuid(), sorted(os.listdir(".")))
print("to stderr", file=sys.stderr)
"#;

const TRACEBACK: &str = "def fail():\n    raise ValueError('from the script')\n\nif __name__ == '__main__':\n    print('before')\n    fail()\n";

#[tokio::test]
async fn a_warm_run_behaves_as_a_cold_one() {
    let scripts = [
        INTROSPECT,
        TRACEBACK,
        "x = (\n",
        "import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(7)",
        "import sys\nsys.exit('a message')",
        "raise KeyboardInterrupt",
        "import os, signal\nprint('going', flush=True)\nos.kill(os.getpid(), signal.SIGTERM)",
        "import atexit\natexit.register(lambda: print('at exit'))\nprint('main')",
    ];
    for profile in [Profile::Strict, Profile::None] {
        let cold = support::harness(profile, &[], Mode::Cold).await;
        let warm_harness = warm(profile).await;
        for script in scripts {
            let spec = || RunSpec {
                args: vec!["one".into(), "two words".into(), "ünï".into()],
                env: vec![("TOKEN".into(), "secret value".into())],
                payload: Some(r#"{"hook": true}"#.into()),
                ..spec(script)
            };
            let (cold_out, warm_out) = (run(&cold, spec()).await, run(&warm_harness, spec()).await);
            let (cold, warm) = (seen(&cold, cold_out), seen(&warm_harness, warm_out));
            assert_eq!(cold.0, warm.0, "{profile:?}, {script}\ncold: {cold:#?}\nwarm: {warm:#?}");
            assert!(warm.1 && !cold.1);
        }
    }
}

/// The run's exit, signal and streams, with its slot's work directory (profile `none`) spelled `/work`; and
/// whether it started warm.
#[allow(clippy::type_complexity)]
fn seen(h: &Harness, out: Outcome) -> ((Option<i32>, Option<i32>, String, String, String), bool) {
    let slots = (0..2).map(|slot| h.work_root().join(format!("slot-{slot}/work")).display().to_string());
    let normal = |text: &str| slots.clone().fold(text.to_owned(), |text, dir| text.replace(&dir, "/work"));
    let report = &out.report;
    ((report.exit_code, report.signal, normal(&out.stdout), normal(&out.stderr), out.system), report.warm_start)
}

#[tokio::test]
async fn a_warm_run_is_cancelled() {
    for profile in [Profile::Strict, Profile::None] {
        let h = warm(profile).await;
        let (cancel, cancel_rx) = watch::channel(false);
        let (tx, mut rx) = mpsc::channel(16);
        let spec = RunSpec { warm: true, ..spec("import time\nprint('started', flush=True)\ntime.sleep(60)") };
        let running = h.sandbox.run(spec, tx, cancel_rx);
        let canceller = async {
            let first = rx.recv().await.expect("the run starts");
            assert_eq!((first.stream, first.data.as_str()), (Stream::Stdout, "started\n"));
            cancel.send(true).expect("cancel");
            while rx.recv().await.is_some() {}
        };
        let (report, ()) = tokio::join!(running, canceller);
        let report = report.expect("the run ends");
        assert!(report.cancelled && report.warm_start && report.signal == Some(9), "{report:#?}");
    }
}

#[tokio::test]
async fn runs_that_cannot_start_warm_run_cold_and_say_so() {
    let mut h = warm(Profile::None).await;
    // Each run asks for a warm start itself: the harness would insist on one.
    h.warm = false;
    let spec = |script| RunSpec { warm: true, ..spec(script) };
    // Both slots hold a sandbox prepared after runs with a smaller /work.
    let bigger = RunSpec { limits: Limits { disk_mb: 32, ..support::limits() }, ..spec("print('roomier')") };
    let out = run(&h, bigger).await;
    assert_eq!(out.ok(), "roomier\n");
    assert!(!out.report.warm_start, "a prepared sandbox's /work is the size of the runs it was prepared after");

    let networked = run(&h, RunSpec { network: true, ..spec("print('online')") }).await;
    assert_eq!(networked.ok(), "online\n");
    assert!(!networked.report.warm_start);

    let environment = h.dir.path().join("environment");
    std::fs::create_dir_all(environment.join("bin")).expect("mkdir");
    std::os::unix::fs::symlink(support::interpreter(), environment.join("bin/python")).expect("symlink");
    let packaged = run(&h, RunSpec { environment: Some(environment), ..spec("import sys\nprint(sys.prefix)") }).await;
    assert!(!packaged.ok().is_empty(), "{packaged:#?}");
    assert!(!packaged.report.warm_start);

    let hashed = RunSpec { env: vec![("PYTHONHASHSEED".into(), "7".into())], ..spec("print(hash('x'))") };
    let cold_hash =
        run(&support::harness(Profile::None, &[], Mode::Cold).await, RunSpec { warm: false, ..hashed.clone() }).await;
    let out = run(&h, hashed).await;
    assert_eq!(out.ok(), cold_hash.ok(), "PYTHONHASHSEED changes how the interpreter starts");
    assert!(!out.report.warm_start);
}

#[tokio::test]
async fn warm_runs_of_an_unprivileged_helper_are_confined() {
    let h = support::warmed(support::unprivileged(&[])).await;
    assert!(!crate::attacks::read_outside(&h).await);
    assert!(!crate::attacks::escape_syscalls(&h).await);
    assert!(!crate::attacks::hold_privilege(&h).await);
    assert!(!crate::attacks::leave_process(&h).await);
}

#[tokio::test]
async fn without_the_pool_every_run_starts_cold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = support::config(Profile::Strict, &dir);
    config.warm_pool = false;
    let h = Harness { sandbox: automa_runner::Sandbox::new(config).expect("the sandbox starts"), dir, warm: false };
    for _ in 0..3 {
        let out = run(&h, RunSpec { warm: true, ..spec("print('cold')") }).await;
        assert_eq!(out.ok(), "cold\n");
        assert!(!out.report.warm_start);
    }
}
