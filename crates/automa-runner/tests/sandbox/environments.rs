//! Runs in a prepared environment, and environment builds: uv builds a virtual environment inside the sandbox
//! from a local wheel (no index, no network), and a script imports it from its read-only mount.

use std::path::{Path, PathBuf};
use std::process::Command;

use automa_runner::{BuildSpec, Layer, Profile, Report, RunSpec};
use tokio::sync::{mpsc, watch};

use crate::packages::{make_wheel, test_uv};
use crate::support::{self, Harness};

/// A find-links directory holding the `automa-demo 1.2.3` wheel, and a lock of it with its hash.
struct Packages {
    find_links: PathBuf,
    lock: String,
}

fn packages(uv: &Path, dir: &Path) -> Packages {
    let find_links = dir.join("wheels");
    make_wheel(&find_links, "automa-demo", "1.2.3");
    let mut compile = Command::new(uv)
        .args(["pip", "compile", "--universal", "--generate-hashes", "--no-build", "--no-index", "--quiet"])
        .arg("--find-links")
        .arg(&find_links)
        .args(["--no-config", "--cache-dir"])
        .arg(dir.join("lock-cache"))
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("uv starts");
    use std::io::Write;
    compile.stdin.take().expect("stdin").write_all(b"automa-demo\n").expect("requirement written");
    let out = compile.wait_with_output().expect("uv pip compile");
    assert!(out.status.success(), "uv pip compile: {}", String::from_utf8_lossy(&out.stderr));
    let lock = String::from_utf8(out.stdout).expect("utf-8 lock");
    assert!(lock.contains("--hash=sha256:"), "{lock}");
    Packages { find_links, lock }
}

/// Build limits: uv runs many threads, each counted as a process.
fn build_limits() -> automa_runner::Limits {
    automa_runner::Limits { max_processes: 512, memory_mb: 2048, open_files: 1024, ..support::limits() }
}

/// Builds an environment from `lock` in the sandbox, in `<work>/env`, as the agent does: `uv venv`, then
/// `uv pip install` of the lock with its hashes, offline from the find-links directory. Returns both reports
/// and what the build printed.
async fn build(harness: &Harness, uv: &Path, packages: &Packages, lock: &str, work: &Path) -> (Report, String) {
    std::fs::create_dir_all(work.join("cache")).expect("build directory");
    std::fs::write(work.join("lock.txt"), lock).expect("lock written");
    let env = work.join("env");
    let interpreter = harness.sandbox.interpreter().to_str().expect("utf-8").to_owned();
    let steps: [Vec<String>; 2] = [
        vec!["venv".into(), "--relocatable".into(), "--python".into(), interpreter, path(&env)],
        vec![
            "pip".into(),
            "install".into(),
            "--python".into(),
            path(&env.join("bin/python")),
            "--no-deps".into(),
            "--require-hashes".into(),
            "--no-build".into(),
            "--offline".into(),
            "--no-index".into(),
            "--find-links".into(),
            path(&packages.find_links),
            "-r".into(),
            path(&work.join("lock.txt")),
        ],
    ];
    let mut printed = String::new();
    let mut last = Report::default();
    for step in steps {
        let spec = BuildSpec {
            program: uv.to_path_buf(),
            args: step,
            env: vec![
                ("UV_CACHE_DIR".into(), path(&work.join("cache"))),
                ("UV_NO_CONFIG".into(), "1".into()),
                ("UV_PYTHON_DOWNLOADS".into(), "never".into()),
                ("NO_COLOR".into(), "1".into()),
            ],
            readable: vec![packages.find_links.clone()],
            writable: vec![work.to_path_buf()],
            limits: build_limits(),
            network: false,
        };
        let (tx, mut rx) = mpsc::channel::<automa_runner::OutputChunk>(64);
        let (_cancel, cancelled) = watch::channel(false);
        let collect = tokio::spawn(async move {
            let mut text = String::new();
            while let Some(chunk) = rx.recv().await {
                text.push_str(&chunk.data);
            }
            text
        });
        last = harness.sandbox.build(spec, tx, cancelled).await.expect("the sandbox runs the build");
        printed.push_str(&collect.await.expect("collector"));
        if last.exit_code != Some(0) {
            break;
        }
    }
    (last, printed)
}

fn path(path: &Path) -> String {
    path.to_str().expect("utf-8 path").to_owned()
}

fn in_environment(script: &str, environment: &Path) -> RunSpec {
    RunSpec { environment: Some(environment.to_path_buf()), ..support::spec(script) }
}

const IMPORT: &str = "import sys, automa_demo\nprint(automa_demo.VALUE)\nprint(sys.prefix)\n";

/// Tries to change what later runs import: rewrite the module, drop a new module beside it, replace the
/// package directory. Prints what each attempt got.
const TAMPER: &str = r#"
import os, sysconfig, automa_demo
site = sysconfig.get_paths()["purelib"]
module = automa_demo.__file__
print("site", site)
for name, attempt in [
    ("rewrite", lambda: open(module, "w").write("VALUE = 'tampered'\n")),
    ("create", lambda: open(os.path.join(site, "injected.py"), "w").write("x = 1\n")),
    ("rename", lambda: os.rename(os.path.dirname(module), os.path.join(site, "moved"))),
    ("chmod", lambda: os.chmod(module, 0o666)),
]:
    try:
        attempt()
        print(name, "succeeded")
    except OSError as e:
        print(name, "refused", e.errno)
"#;

#[tokio::test]
async fn a_script_imports_its_environment_which_it_cannot_change() {
    let Some(uv) = test_uv() else { return };
    let harness = support::strict();
    let packages = packages(&uv, harness.dir.path());
    let work = harness.dir.path().join("build");
    let (report, printed) = build(&harness, &uv, &packages, &packages.lock, &work).await;
    assert_eq!(report.exit_code, Some(0), "the build failed: {printed}");
    assert!(printed.contains("+ automa-demo==1.2.3"), "{printed}");
    // Built in a staging directory, used from where it was renamed to, as the agent does.
    let environment = harness.dir.path().join("environments").join("demo");
    std::fs::create_dir_all(environment.parent().expect("parent")).expect("mkdir");
    std::fs::rename(work.join("env"), &environment).expect("rename into place");

    let run = support::run(&harness, in_environment(IMPORT, &environment)).await;
    let stdout = run.ok();
    assert_eq!(stdout.lines().next(), Some("automa-demo 1.2.3"), "{run:#?}");
    assert_eq!(stdout.lines().nth(1), Some(path(&environment).as_str()), "sys.prefix is the environment");

    let tamper = support::run(&harness, in_environment(TAMPER, &environment)).await;
    let out = tamper.ok();
    assert!(out.contains("site "), "the script reached the attack: {out}");
    for attempt in ["rewrite", "create", "rename", "chmod"] {
        assert!(out.contains(&format!("{attempt} refused")), "{attempt}: {out}");
    }
    let again = support::run(&harness, in_environment(IMPORT, &environment)).await;
    assert_eq!(again.ok().lines().next(), Some("automa-demo 1.2.3"));
    // No run's uid owns what the build made.
    let meta = std::fs::metadata(environment.join("pyvenv.cfg")).expect("pyvenv.cfg");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), nix::unistd::geteuid().as_raw());
}

/// Only the read-only mount keeps the environment as built when a run's uid could write it: without the mount
/// namespace and landlock, a script whose uid owns the files (here: the helper's, as under profile `none`)
/// changes what the next run imports. This is what the test above shows cannot happen.
#[tokio::test]
async fn without_the_mount_and_landlock_a_script_could_change_its_environment() {
    let Some(uv) = test_uv() else { return };
    let harness = support::with(Profile::None, &[]);
    let packages = packages(&uv, harness.dir.path());
    let work = harness.dir.path().join("build");
    let (report, printed) = build(&harness, &uv, &packages, &packages.lock, &work).await;
    assert_eq!(report.exit_code, Some(0), "the build failed under profile none: {printed}");
    let environment = work.join("env");

    let run = support::run(&harness, in_environment(IMPORT, &environment)).await;
    assert_eq!(run.ok().lines().next(), Some("automa-demo 1.2.3"), "profile none uses the environment too");
    let rewrite = "import automa_demo\nopen(automa_demo.__file__, 'w').write('VALUE = \"tampered\"\\n')\n";
    support::run(&harness, in_environment(rewrite, &environment)).await.ok();
    let after = support::run(&harness, in_environment(IMPORT, &environment)).await;
    assert_eq!(after.ok().lines().next(), Some("tampered"));
}

#[tokio::test]
async fn a_lock_whose_hash_does_not_match_fails_the_build_with_uvs_reason() {
    let Some(uv) = test_uv() else { return };
    let harness = support::strict();
    let packages = packages(&uv, harness.dir.path());
    let (prefix, rest) = packages.lock.split_once("sha256:").expect("a hash");
    let wrong = format!("{prefix}sha256:{}{}", "0".repeat(8), &rest[8..]);
    let (report, printed) = build(&harness, &uv, &packages, &wrong, &harness.dir.path().join("build")).await;
    assert_ne!(report.exit_code, Some(0), "{printed}");
    assert!(printed.contains("Hash mismatch"), "{printed}");
}

#[tokio::test]
async fn a_build_writes_only_where_it_is_allowed() {
    let Some(uv) = test_uv() else { return };
    let harness = support::with(Profile::Strict, &[Layer::Cgroups]);
    let packages = packages(&uv, harness.dir.path());
    // The find-links directory is readable, not writable: a venv created there is refused.
    let spec = BuildSpec {
        program: uv.clone(),
        args: vec![
            "venv".into(),
            "--python".into(),
            path(harness.sandbox.interpreter()),
            path(&packages.find_links.join("env")),
        ],
        env: vec![("UV_NO_CONFIG".into(), "1".into()), ("UV_PYTHON_DOWNLOADS".into(), "never".into())],
        readable: vec![packages.find_links.clone()],
        writable: Vec::new(),
        limits: build_limits(),
        network: false,
    };
    let (tx, mut rx) = mpsc::channel(64);
    let (_cancel, cancelled) = watch::channel(false);
    let report = harness.sandbox.build(spec, tx, cancelled).await.expect("the sandbox runs the build");
    let mut printed = String::new();
    while let Some(chunk) = rx.recv().await {
        printed.push_str(&chunk.data);
    }
    assert_ne!(report.exit_code, Some(0), "{printed}");
    assert!(printed.contains("Creating virtual environment"), "uv got as far as writing: {printed}");
    assert!(!packages.find_links.join("env").join("pyvenv.cfg").exists());
}
