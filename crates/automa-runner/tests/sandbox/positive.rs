//! What a script is given: its arguments, environment, exit status and output, in order; and what callers
//! are told when they get something wrong.

use std::time::Duration;

use automa_runner::{Profile, RunnerError, SandboxConfig, Stream};
use tokio::sync::{mpsc, watch};

use crate::attacks;
use crate::support::{self, run, run_with, script, spec};

#[tokio::test]
async fn arguments_reach_sys_argv() {
    let h = support::strict();
    let mut s = spec("import sys, json\nprint(json.dumps(sys.argv))");
    s.args = vec!["one".into(), "two words".into(), "ünïcode".into()];
    let out = run(&h, s).await;
    assert_eq!(out.ok(), "[\"main.py\", \"one\", \"two words\", \"\\u00fcn\\u00efcode\"]\n");
}

#[tokio::test]
async fn environment_is_clean_plus_the_tasks_own() {
    let h = support::strict();
    // /proc/self/environ is what was exec'd, before Python's own locale coercion adds LC_CTYPE.
    let mut s = spec(
        "import json\nenv = open('/proc/self/environ').read().strip('\\0').split('\\0')\nprint(json.dumps(dict(e.split('=', 1) for e in env)))",
    );
    s.env = vec![("API_TOKEN".into(), "s3cret".into()), ("LANG".into(), "en_US.UTF-8".into())];
    let out = run(&h, s).await;
    let env: serde_json::Value = serde_json::from_str(out.ok()).expect("json");
    assert_eq!(
        env,
        serde_json::json!({
            "API_TOKEN": "s3cret",
            "HOME": "/work",
            "LANG": "en_US.UTF-8",
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
        })
    );
}

/// Core refuses these names in a task's environment and as secrets; a variable the sandbox set outside the list
/// could be silently replaced by a task's own.
#[tokio::test]
async fn the_sandbox_sets_only_variables_core_reserves() {
    let h = support::strict();
    let mut s = spec("import os\nprint('\\n'.join(k for k in os.environ if k != 'LC_CTYPE'))");
    s.payload = Some("{}".into());
    let out = run(&h, s).await;
    let names: Vec<&str> = out.ok().lines().collect();
    assert!(names.contains(&automa_core::params::TRIGGER_PAYLOAD_ENV), "{names:?}");
    for name in names {
        assert!(automa_core::params::SANDBOX_ENV.contains(&name), "{name} is not in SANDBOX_ENV");
    }
}

#[tokio::test]
async fn workdir_holds_the_script_and_is_writable() {
    let h = support::strict();
    let out =
        script(&h, "import os\nopen('out.txt', 'w').write('x')\nprint(os.getcwd(), sorted(os.listdir('.')))").await;
    assert_eq!(out.ok(), "/work ['main.py', 'out.txt']\n");
}

/// A hook's payload is a read-only file beside the script, named by `AUTOMA_TRIGGER_PAYLOAD`, under either
/// profile; a task's own variable of that name cannot point the script elsewhere. Under `strict` with a slot
/// user (a root helper, as here) the script can neither write it nor chmod it; under `none` (possibly root, who
/// ignores modes) only its mode says so.
#[tokio::test]
async fn the_payload_is_a_read_only_file_named_in_the_environment() {
    let payload = r#"{"ref": "refs/heads/main", "note": "ünïcode \u0000 and \"quotes\""}"#;
    let read = "import os, json, stat\n\
        path = os.environ['AUTOMA_TRIGGER_PAYLOAD']\n\
        print(os.path.dirname(path) == os.getcwd(), oct(stat.S_IMODE(os.stat(path).st_mode)))\n\
        print(json.load(open(path))['ref'])\n\
        print(open(path, encoding='utf-8').read())\n";
    // Not the run's file under `strict` with a slot user: it cannot make it writable again.
    let write = "try:\n    os.chmod(os.environ['AUTOMA_TRIGGER_PAYLOAD'], 0o644)\n    print('CHMOD')\n\
        except PermissionError:\n    print('chmod refused')\n\
        try:\n    open(os.environ['AUTOMA_TRIGGER_PAYLOAD'], 'a').write('x')\n    print('WROTE')\n\
        except PermissionError:\n    print('refused')\n";
    for (profile, tail, expected_tail) in
        [(Profile::Strict, write, "chmod refused\nrefused\n"), (Profile::None, "", "")]
    {
        let h = support::with(profile, &[]);
        let mut s = spec(&format!("{read}{tail}"));
        s.payload = Some(payload.to_owned());
        s.env = vec![("AUTOMA_TRIGGER_PAYLOAD".into(), "/etc/passwd".into())];
        let out = run(&h, s).await;
        assert_eq!(out.ok(), format!("True 0o444\nrefs/heads/main\n{payload}\n{expected_tail}"), "{profile:?}");

        let mut without = spec("import os\nprint(os.environ.get('AUTOMA_TRIGGER_PAYLOAD'), sorted(os.listdir('.')))");
        without.env = vec![("AUTOMA_TRIGGER_PAYLOAD".into(), "/etc/passwd".into())];
        assert_eq!(run(&h, without).await.ok(), "None ['main.py']\n", "{profile:?}: no payload, no variable");
    }
}

#[tokio::test]
async fn exit_codes_are_reported() {
    let h = support::strict();
    let out = script(&h, "import sys\nsys.exit(3)").await;
    assert_eq!((out.report.exit_code, out.report.signal), (Some(3), None));
    let out = script(&h, "raise SystemExit('boom')").await;
    assert_eq!(out.report.exit_code, Some(1));
    assert_eq!(out.stderr, "boom\n");
}

#[tokio::test]
async fn signals_are_reported() {
    let h = support::strict();
    let out = script(&h, "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)").await;
    assert_eq!((out.report.exit_code, out.report.signal), (None, Some(libc::SIGTERM)));
}

#[tokio::test]
async fn each_stream_keeps_its_order() {
    let h = support::strict();
    let out = script(&h, "import sys\nfor i in range(2000):\n    print(i)\n    print(-i, file=sys.stderr)").await;
    let stdout: Vec<i64> = out.ok().lines().map(|l| l.parse().expect("number")).collect();
    let stderr: Vec<i64> = out.stderr.lines().map(|l| l.parse().expect("number")).collect();
    assert_eq!(stdout, (0..2000).collect::<Vec<_>>());
    assert_eq!(stderr, (0..2000).map(|i: i64| -i).collect::<Vec<_>>());
    assert!(out.chunks.iter().all(|c| c.data.ends_with('\n')), "a chunk split a line");
    assert_eq!(out.report.output_bytes, (out.stdout.len() + out.stderr.len()) as u64);
    assert!(!out.report.truncated);
}

#[tokio::test]
async fn cancel_kills_the_run() {
    let h = support::strict();
    let (cancel, cancel_rx) = watch::channel(false);
    let (tx, mut rx) = mpsc::channel(16);
    let running = h.sandbox.run(spec("import time\nprint('started', flush=True)\ntime.sleep(60)"), tx, cancel_rx);
    let canceller = async {
        let first = rx.recv().await.expect("output");
        assert_eq!((first.stream, first.data.as_str()), (Stream::Stdout, "started\n"));
        cancel.send(true).expect("cancel");
        while rx.recv().await.is_some() {}
    };
    let (report, ()) = tokio::join!(running, canceller);
    let report = report.expect("run");
    assert!(report.cancelled && !report.timed_out, "{report:#?}");
    assert_eq!(report.signal, Some(9));
}

#[tokio::test]
async fn cancel_before_start_runs_nothing() {
    let h = support::strict();
    let (_cancel, cancel_rx) = watch::channel(true);
    let out = run_with(&h, spec("print('never')"), cancel_rx).await;
    assert!(out.report.cancelled);
    assert_eq!(out.report.exit_code, None);
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn resource_use_is_reported() {
    let h = support::strict();
    let out = script(&h, "x = bytearray(64 * 1024 * 1024)\nfor i in range(0, len(x), 4096): x[i] = 1").await;
    out.ok();
    assert!(out.report.max_rss_kb.is_some_and(|kb| kb > 60 * 1024), "{:#?}", out.report);
    assert!(out.report.cpu_ms.is_some());
    assert!(out.report.duration > Duration::ZERO);
}

#[tokio::test]
async fn capabilities_report_every_layer_on_this_host() {
    let h = support::strict();
    let caps = h.sandbox.capabilities();
    assert!(caps.mount_ns && caps.pid_ns && caps.net_ns && caps.ipc_ns && caps.uts_ns, "{caps:#?}");
    assert!(caps.no_new_privs && caps.seccomp && caps.rlimits && caps.running_as_root, "{caps:#?}");
    assert!(caps.landlock.is_some(), "{caps:#?}");
    assert!(caps.missing_required.is_empty());
    let json = serde_json::to_value(caps).expect("serialize");
    assert_eq!(json["cgroup_memory"], "v1", "{json}");
}

#[tokio::test]
async fn profile_none_runs_a_plain_process_with_rlimits() {
    let h = support::with(Profile::None, &[]);
    let caps = h.sandbox.capabilities();
    assert!(!caps.pid_ns && !caps.seccomp && caps.rlimits, "{caps:#?}");
    assert!(caps.warnings.iter().any(|w| w.contains("none")), "{caps:#?}");
    let out =
        script(&h, "import resource, os\nprint(resource.getrlimit(resource.RLIMIT_NOFILE)[0], os.getcwd() != '/work')")
            .await;
    assert_eq!(out.ok(), "64 True\n");
    let timed = attacks::overstay(&h).await;
    assert!(timed.report.timed_out, "{timed:#?}");
}

#[tokio::test]
async fn invalid_runs_are_refused_with_a_clear_message() {
    let h = support::strict();
    let (tx, _rx) = mpsc::channel(1);
    let (_c, cancel) = watch::channel(false);
    let mut s = spec("pass");
    s.script_name = "../escape.py".into();
    let err = h.sandbox.run(s, tx.clone(), cancel.clone()).await.expect_err("refused");
    assert_eq!(err.to_string(), "invalid run: script name \"../escape.py\" must be a plain file name");
    let mut s = spec("pass");
    s.env = vec![("A=B".into(), "c".into())];
    let err = h.sandbox.run(s, tx, cancel).await.expect_err("refused");
    assert_eq!(err.to_string(), "invalid run: environment variable \"A=B\" is not a valid name=value pair");
}

#[test]
fn invalid_configuration_is_refused_with_a_clear_message() {
    let err = "sandboxed".parse::<Profile>().expect_err("unknown profile");
    assert_eq!(
        err.to_string(),
        "invalid sandbox configuration: unknown sandbox profile \"sandboxed\": expected \"strict\" or \"none\""
    );
    assert_eq!("STRICT".parse::<Profile>().expect("parse"), Profile::Strict);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = support::config(Profile::Strict, &dir);
    config.slots = 0;
    let err = automa_runner::Sandbox::new(config).expect_err("no slots");
    assert!(matches!(err, RunnerError::InvalidConfig(_)));
    assert_eq!(err.to_string(), "invalid sandbox configuration: slots must be at least 1");
    let mut config =
        SandboxConfig::new(Profile::Strict, "/nonexistent/python3".into(), support::helper(), dir.path().into());
    config.slots = 1;
    let err = automa_runner::Sandbox::new(config).expect_err("no interpreter");
    assert!(err.to_string().starts_with("could not start /nonexistent/python3"), "{err}");
}
