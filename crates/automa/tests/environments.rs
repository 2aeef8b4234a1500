//! The agent's environment cache with the real strict sandbox, real uv and a wheel built by the test: a
//! script imports its package, a second use does not rebuild, concurrent first uses build once, a bad lock
//! fails with uv's reason and leaves nothing, and the size cap evicts what no run uses. No index, no network:
//! packages come from a local find-links directory. It lives in this crate because the sandbox helper is the
//! `automa` binary re-executed (`automa __sandbox-helper`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use automa_agent::{EnvironmentSpec, Environments, PackageSettings};
use automa_runner::{HelperCommand, Limits, OutputChunk, Profile, RunSpec, Sandbox, SandboxConfig, Stream};
use tokio::sync::{mpsc, watch};

#[path = "../../../tests/support/packages.rs"]
mod packages;

struct Setup {
    dir: tempfile::TempDir,
    sandbox: Arc<Sandbox>,
    uv: PathBuf,
}

impl Setup {
    fn new(profile: Profile) -> Option<Setup> {
        let uv = packages::test_uv()?;
        let dir = tempfile::tempdir().expect("tempdir");
        let helper =
            HelperCommand { program: env!("CARGO_BIN_EXE_automa").into(), args: vec!["__sandbox-helper".into()] };
        let interpreter = automa_runner::resolve_interpreter(None).expect("python3");
        let mut config = SandboxConfig::new(profile, interpreter, helper, dir.path().join("runs"));
        config.slots = 4;
        // Slot uids of this test process's own: RLIMIT_NPROC counts a uid's processes host-wide.
        config.uid_base = SandboxConfig::DEFAULT_UID_BASE + 300_000 + (std::process::id() % 100_000) * 4;
        let sandbox = Arc::new(Sandbox::new(config).expect("the sandbox starts"));
        Some(Setup { dir, sandbox, uv })
    }

    fn find_links(&self) -> PathBuf {
        self.dir.path().join("wheels")
    }

    fn settings(&self, cache_mb: u64) -> PackageSettings {
        PackageSettings {
            uv: Some(self.uv.clone()),
            find_links: vec![self.find_links().to_string_lossy().into_owned()],
            offline: true,
            cache_mb,
            ..PackageSettings::new(self.dir.path())
        }
    }

    fn environments(&self, cache_mb: u64) -> Environments {
        Environments::new(self.settings(cache_mb), self.sandbox.clone()).expect("the cache opens")
    }

    /// Builds the wheel `name` `version` into the find-links directory and returns a lock of it.
    fn lock(&self, name: &str, version: &str) -> String {
        self.padded_lock(name, version, 0)
    }

    /// [`Setup::lock`] of a wheel holding `padding_kb` KiB of zeros besides its module.
    fn padded_lock(&self, name: &str, version: &str, padding_kb: u64) -> String {
        packages::make_padded_wheel(&self.find_links(), name, version, padding_kb);
        let mut compile = Command::new(&self.uv)
            .args(["pip", "compile", "--universal", "--generate-hashes", "--no-build", "--no-index", "--quiet"])
            .args(["--no-config", "--find-links"])
            .arg(self.find_links())
            .arg("--cache-dir")
            .arg(self.dir.path().join("lock-cache"))
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("uv");
        use std::io::Write;
        compile.stdin.take().expect("stdin").write_all(format!("{name}=={version}\n").as_bytes()).expect("write");
        let out = compile.wait_with_output().expect("uv pip compile");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8")
    }

    fn environment_dirs(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path().join("environments"))
            .expect("environments dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|name| name != ".lock" && name != ".locks")
            .collect();
        names.sort();
        names
    }
}

fn spec(lock: &str) -> EnvironmentSpec {
    EnvironmentSpec { lock: lock.to_owned(), requires_python: Some(">=3.8".into()) }
}

/// Prepares `spec`, returning the result and what went to the run's log.
async fn prepare(
    environments: &Environments,
    spec: &EnvironmentSpec,
) -> (Result<automa_agent::PreparedEnvironment, String>, String) {
    let (tx, mut rx) = mpsc::channel::<OutputChunk>(256);
    let collect = tokio::spawn(async move {
        let mut text = String::new();
        while let Some(chunk) = rx.recv().await {
            assert_eq!(chunk.stream, Stream::System, "the build's output is system output: {chunk:?}");
            text.push_str(&chunk.data);
        }
        text
    });
    let result = environments.prepare(spec, &tx).await;
    drop(tx);
    (result, collect.await.expect("collector"))
}

/// Runs `script` in `environment` and returns its stdout, failing on a non-zero exit.
async fn run(sandbox: &Sandbox, script: &str, environment: &Path) -> String {
    let spec = RunSpec {
        script_name: "main.py".into(),
        script: script.into(),
        args: Vec::new(),
        env: Vec::new(),
        limits: Limits { timeout: std::time::Duration::from_secs(60), ..Limits::default() },
        network: false,
        payload: None,
        environment: Some(environment.to_path_buf()),
        warm: false,
    };
    let (tx, mut rx) = mpsc::channel(64);
    let (_cancel, cancelled) = watch::channel(false);
    let report = sandbox.run(spec, tx, cancelled).await.expect("the sandbox runs the script");
    let mut output = String::new();
    while let Some(chunk) = rx.recv().await {
        output.push_str(&chunk.data);
    }
    assert_eq!(report.exit_code, Some(0), "{output}");
    output
}

const IMPORT: &str = "import automa_demo\nprint(automa_demo.VALUE)\n";

#[tokio::test]
async fn a_script_imports_its_package_and_the_second_use_does_not_rebuild() {
    let Some(setup) = Setup::new(Profile::Strict) else { return };
    let lock = setup.lock("automa-demo", "1.2.3");
    let environments = setup.environments(5120);
    let (first, log) = prepare(&environments, &spec(&lock)).await;
    let first = first.expect("the environment is built");
    assert!(!first.cached);
    assert!(log.contains("+ automa-demo==1.2.3"), "uv's output reaches the run's log: {log}");
    assert_eq!(environments.builds(), 1);
    assert_eq!(run(&setup.sandbox, IMPORT, first.lease.path()).await, "automa-demo 1.2.3\n");
    assert_eq!(environments.report().cached_environments, 1);

    let (second, log) = prepare(&environments, &spec(&lock)).await;
    let second = second.expect("cached");
    assert!(second.cached, "{log}");
    assert_eq!(log, "", "a cached environment builds nothing");
    assert_eq!(second.lease.path(), first.lease.path());
    assert_eq!(environments.builds(), 1, "no rebuild");
    assert_eq!(run(&setup.sandbox, IMPORT, second.lease.path()).await, "automa-demo 1.2.3\n");

    // Another agent process on the same data directory finds it too, and builds nothing.
    let other = setup.environments(5120);
    assert!(prepare(&other, &spec(&lock)).await.0.expect("cached").cached);
    assert_eq!(other.builds(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_concurrent_first_uses_build_once() {
    let Some(setup) = Setup::new(Profile::Strict) else { return };
    let lock = setup.lock("automa-demo", "1.2.3");
    let environments = setup.environments(5120);
    let mut asking = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (environments, spec) = (environments.clone(), spec(&lock));
        asking.spawn(async move { prepare(&environments, &spec).await.0.map(|p| p.lease.path().to_path_buf()) });
    }
    let mut paths = Vec::new();
    while let Some(result) = asking.join_next().await {
        paths.push(result.expect("task").expect("prepared"));
    }
    assert_eq!(environments.builds(), 1, "ten requests, one build");
    paths.dedup();
    assert_eq!(paths.len(), 1, "{paths:?}");
    assert_eq!(run(&setup.sandbox, IMPORT, &paths[0]).await, "automa-demo 1.2.3\n");
}

/// Two caches on one data directory, as two agent processes would have: between them one build, and both use it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_caches_on_one_directory_build_once_between_them() {
    let Some(setup) = Setup::new(Profile::Strict) else { return };
    let lock = setup.lock("automa-demo", "1.2.3");
    let (one, two) = (setup.environments(5120), setup.environments(5120));
    let mut asking = tokio::task::JoinSet::new();
    for environments in [one.clone(), two.clone(), one.clone(), two.clone()] {
        let spec = spec(&lock);
        asking.spawn(async move { prepare(&environments, &spec).await.0.map(|p| p.lease.path().to_path_buf()) });
    }
    while let Some(result) = asking.join_next().await {
        assert_eq!(run(&setup.sandbox, IMPORT, &result.expect("task").expect("prepared")).await, "automa-demo 1.2.3\n");
    }
    assert_eq!(one.builds() + two.builds(), 1, "one build between the two");
    assert_eq!(setup.environment_dirs().len(), 1, "{:?}", setup.environment_dirs());
}

#[tokio::test]
async fn a_lock_that_does_not_match_its_wheel_fails_with_the_reason_and_leaves_nothing() {
    let Some(setup) = Setup::new(Profile::Strict) else { return };
    let lock = setup.lock("automa-demo", "1.2.3");
    let (before, after) = lock.split_once("sha256:").expect("a hash");
    let wrong = format!("{before}sha256:{}{}", "0".repeat(8), &after[8..]);
    let environments = setup.environments(5120);
    let (result, log) = prepare(&environments, &spec(&wrong)).await;
    let error = result.expect_err("the build fails");
    assert!(error.starts_with("environment build failed: "), "{error}");
    assert!(error.contains("Hash mismatch"), "the error quotes uv: {error}");
    assert!(log.contains("Hash mismatch"), "{log}");
    assert_eq!(setup.environment_dirs(), Vec::<String>::new(), "no environment, no staging left");
    // The failure is not cached: the right lock still builds.
    assert!(prepare(&environments, &spec(&lock)).await.0.is_ok());
}

#[tokio::test]
async fn unmet_requirements_are_refused_before_any_build() {
    let Some(setup) = Setup::new(Profile::Strict) else { return };
    let environments = setup.environments(5120);
    let too_new = EnvironmentSpec { lock: String::new(), requires_python: Some(">=4".into()) };
    let error = prepare(&environments, &too_new).await.0.expect_err("refused");
    assert!(error.starts_with("this script requires Python >=4, but the agent's interpreter is Python 3."), "{error}");

    let without_uv = PackageSettings { uv: Some(setup.dir.path().join("no-such-uv")), ..setup.settings(5120) };
    let environments = Environments::new(without_uv, setup.sandbox.clone()).expect("the cache opens without uv");
    assert_eq!(environments.report().uv, None);
    let error = prepare(&environments, &spec("automa-demo==1.2.3")).await.0.expect_err("refused");
    assert_eq!(error, "this run needs packages but the agent has no uv (set AUTOMA_UV)");
    assert_eq!(environments.builds(), 0);
}

#[tokio::test]
async fn the_size_cap_evicts_unused_environments_never_one_in_use() {
    let Some(setup) = Setup::new(Profile::Strict) else { return };
    // Environments of about 600 KiB under a cap of 1 MiB: each build leaves only itself and what runs are using.
    let lock = |version| setup.padded_lock("automa-demo", version, 600);
    let (one, two, three) = (lock("1.0.0"), lock("2.0.0"), lock("3.0.0"));
    let environments = setup.environments(1);
    let first = prepare(&environments, &spec(&one)).await.0.expect("one");
    let first_key = environments.key(&one);
    drop(first);
    let second = prepare(&environments, &spec(&two)).await.0.expect("two");
    assert_eq!(setup.environment_dirs(), vec![environments.key(&two)], "the unused one was evicted");
    // While a run holds the second, building a third keeps it.
    let third = prepare(&environments, &spec(&three)).await.0.expect("three");
    let mut expected = vec![environments.key(&two), environments.key(&three)];
    expected.sort();
    assert_eq!(setup.environment_dirs(), expected);
    assert_eq!(run(&setup.sandbox, IMPORT, second.lease.path()).await, "automa-demo 2.0.0\n");
    drop((second, third));
    // The evicted one is built again when asked for.
    let again = prepare(&environments, &spec(&one)).await.0.expect("one again");
    assert!(!again.cached);
    assert_eq!(again.lease.path().file_name().and_then(|n| n.to_str()), Some(first_key.as_str()));
    assert_eq!(environments.builds(), 4);
}

/// A small wheel that unpacks past the cache's cap fails the build, leaving nothing: the sandbox bounds each file
/// a build writes, not their sum.
#[tokio::test]
async fn an_environment_larger_than_the_cap_is_refused() {
    let Some(setup) = Setup::new(Profile::Strict) else { return };
    let lock = setup.padded_lock("automa-huge", "1.0.0", 3 * 1024);
    let wheel_bytes: u64 =
        std::fs::read_dir(setup.find_links()).expect("wheels").map(|w| w.unwrap().metadata().unwrap().len()).sum();
    assert!(wheel_bytes < 64 * 1024, "the wheel itself is small: {wheel_bytes} bytes");
    let environments = setup.environments(1);
    let error = prepare(&environments, &spec(&lock)).await.0.expect_err("too big");
    assert_eq!(
        error,
        "environment build failed: the environment is larger than the cache may hold (1 MB, AUTOMA_ENV_CACHE_MB)"
    );
    assert_eq!(setup.environment_dirs(), Vec::<String>::new(), "no environment, no staging left");
}

/// The cap holds while uv runs, not only once it is done: a build writing past it is stopped at once rather
/// than when uv ends (this stand-in for uv writes 3 MiB into the environment, then sleeps for a minute).
#[tokio::test]
async fn a_build_growing_past_the_cap_is_stopped_while_it_runs() {
    let Some(setup) = Setup::new(Profile::Strict) else { return };
    let lock = setup.lock("automa-demo", "1.2.3");
    let greedy = setup.dir.path().join("greedy-uv");
    std::fs::write(
        &greedy,
        "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'uv 0.0.0'; exit 0; fi\n\
         for last; do :; done\nmkdir -p \"$last\"\nhead -c 3145728 /dev/urandom > \"$last/big\"\nexec sleep 60\n",
    )
    .unwrap();
    std::fs::set_permissions(&greedy, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let settings = PackageSettings { uv: Some(greedy), ..setup.settings(1) };
    let environments = Environments::new(settings, setup.sandbox.clone()).expect("the cache opens");
    let started = std::time::Instant::now();
    let error = prepare(&environments, &spec(&lock)).await.0.expect_err("too big");
    assert_eq!(
        error,
        "environment build failed: the environment is larger than the cache may hold (1 MB, AUTOMA_ENV_CACHE_MB)"
    );
    // Not a timing claim: only that the build did not run until its stand-in uv ended a minute later.
    assert!(started.elapsed() < std::time::Duration::from_secs(45), "stopped after {:?}", started.elapsed());
    assert_eq!(setup.environment_dirs(), Vec::<String>::new(), "no environment, no staging left");
}

/// Under profile `none` the same environment is used by a plain process.
#[tokio::test]
async fn profile_none_runs_in_the_environment_too() {
    let Some(setup) = Setup::new(Profile::None) else { return };
    let lock = setup.lock("automa-demo", "1.2.3");
    let environments = setup.environments(5120);
    let prepared = prepare(&environments, &spec(&lock)).await.0.expect("built without isolation");
    assert_eq!(run(&setup.sandbox, IMPORT, prepared.lease.path()).await, "automa-demo 1.2.3\n");
}

/// A server in memory for the agent loop: it hands out the queued assignments one at a time and records what
/// the agent sends back.
#[derive(Default)]
struct Server {
    queue: std::sync::Mutex<std::collections::VecDeque<automa_agent::Assignment>>,
    logs: std::sync::Mutex<std::collections::HashMap<i64, Vec<automa_agent::WireChunk>>>,
    finished: tokio::sync::Mutex<Vec<(i64, automa_agent::Outcome)>>,
    ended: tokio::sync::Notify,
}

struct Backend(Arc<Server>);

impl automa_agent::AgentBackend for Backend {
    async fn heartbeat(
        &self,
        _heartbeat: automa_agent::Heartbeat,
        _patience: std::time::Duration,
    ) -> Result<automa_agent::HeartbeatReply, automa_agent::AgentError> {
        Ok(automa_agent::HeartbeatReply { lease_seconds: 60, ..Default::default() })
    }

    async fn claim(
        &self,
        wait: std::time::Duration,
    ) -> Result<Option<automa_agent::Assignment>, automa_agent::AgentError> {
        let next = self.0.queue.lock().expect("queue").pop_front();
        if next.is_none() {
            // An empty queue holds the claim as a server's long poll does; the test stops the agent meanwhile.
            let _ = tokio::time::timeout(wait, std::future::pending::<()>()).await;
        }
        Ok(next)
    }

    async fn append_logs(
        &self,
        run_id: i64,
        batch: automa_agent::LogBatch,
    ) -> Result<automa_agent::LogsReply, automa_agent::AgentError> {
        self.0.logs.lock().expect("logs").entry(run_id).or_default().extend(batch.chunks);
        Ok(automa_agent::LogsReply::default())
    }

    async fn finish(
        &self,
        run_id: i64,
        outcome: automa_agent::Outcome,
    ) -> Result<automa_agent::FinishReply, automa_agent::AgentError> {
        let status = outcome.status().to_string();
        self.0.finished.lock().await.push((run_id, outcome));
        self.0.ended.notify_one();
        Ok(automa_agent::FinishReply { status })
    }

    async fn hand_back(&self, _run_id: i64) -> Result<automa_agent::FinishReply, automa_agent::AgentError> {
        Ok(automa_agent::FinishReply { status: "queued".into() })
    }

    async fn goodbye(&self) -> Result<(), automa_agent::AgentError> {
        Ok(())
    }
}

impl Server {
    fn queue(&self, run_id: i64, environment: Option<EnvironmentSpec>) {
        self.queue.lock().expect("queue").push_back(automa_agent::Assignment {
            run_id,
            attempt: 1,
            filename: "main.py".into(),
            content: IMPORT.into(),
            args: Default::default(),
            env: Default::default(),
            limits: Default::default(),
            network: false,
            warm: false,
            last_log_seq: 0,
            payload: None,
            held_ms: None,
            environment,
        });
    }

    /// Waits until `count` runs have ended.
    async fn ended(&self, count: usize) {
        loop {
            let notified = self.ended.notified();
            if self.finished.lock().await.len() >= count {
                return;
            }
            notified.await;
        }
    }

    fn log(&self, run_id: i64, stream: &str) -> String {
        let logs = self.logs.lock().expect("logs");
        logs.get(&run_id).into_iter().flatten().filter(|c| c.stream == stream).map(|c| c.data.as_str()).collect()
    }
}

/// The agent loop, one run at a time: a run that needs packages says it prepares them, reports how long it
/// took (0 when cached), and a failed build or a missing uv ends the run failed with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_prepares_environments_for_its_runs_and_says_so() {
    let Some(setup) = Setup::new(Profile::Strict) else { return };
    let lock = setup.lock("automa-demo", "1.2.3");
    let (before, after) = lock.split_once("sha256:").expect("a hash");
    let wrong = format!("{before}sha256:{}{}", "0".repeat(8), &after[8..]);
    let server = Arc::new(Server::default());
    server.queue(1, Some(spec(&lock)));
    server.queue(2, Some(spec(&lock)));
    server.queue(3, Some(spec(&wrong)));
    server.queue(4, None);
    let config = automa_agent::AgentConfig {
        concurrency: 1,
        shutdown_grace: std::time::Duration::from_secs(5),
        hostname: "test".into(),
        packages: setup.settings(5120),
    };
    let agent = automa_agent::Agent::new(Backend(server.clone()), Ok(setup.sandbox.clone()), config);
    let capabilities = serde_json::to_value(agent.capabilities()).unwrap();
    assert_eq!(capabilities["packages"]["uv"], serde_json::json!(uv_version(&setup.uv)), "{capabilities}");
    assert_eq!(capabilities["packages"]["environment_builds"], 0);
    let environments = agent.environments().cloned().expect("environments");
    let (stop, stopping) = watch::channel(false);
    let running = tokio::spawn(agent.run(stopping));
    let all_ended = tokio::time::timeout(std::time::Duration::from_secs(120), server.ended(4)).await;
    assert!(all_ended.is_ok(), "the runs did not end: {:?}", server.finished.lock().await);
    stop.send_replace(true);
    running.await.expect("agent task").expect("the agent stops cleanly");

    let finished = server.finished.lock().await;
    let outcome = |id: i64| finished.iter().find(|(run, _)| *run == id).map(|(_, o)| o.clone()).expect("finished");
    let built = outcome(1);
    assert_eq!(built.exit_code, Some(0), "{built:?}");
    assert!(built.environment_ms.is_some_and(|ms| ms > 0), "{built:?}");
    assert_eq!(server.log(1, "stdout"), "automa-demo 1.2.3\n");
    let system = server.log(1, "system");
    assert!(system.starts_with("preparing environment\n"), "{system}");
    assert!(system.contains("+ automa-demo==1.2.3"), "uv's output is in the run's log: {system}");
    let ready = system.lines().last().expect("a last line");
    assert!(ready.starts_with("environment ready (") && ready.ends_with(" ms, built)"), "{ready}");

    let cached = outcome(2);
    assert_eq!((cached.exit_code, cached.environment_ms), (Some(0), Some(0)), "{cached:?}");
    assert_eq!(server.log(2, "system"), "preparing environment\nenvironment ready (0 ms, cached)\n");
    assert_eq!(server.log(2, "stdout"), "automa-demo 1.2.3\n");

    let failed = outcome(3);
    assert_eq!(failed.exit_code, None);
    assert_eq!(failed.status(), automa_core::RunStatus::Failed);
    let error = failed.error.clone().expect("an error");
    assert!(error.starts_with("environment build failed: ") && error.contains("Hash mismatch"), "{error}");
    assert_eq!(server.log(3, "stdout"), "", "the script did not run");

    let plain = outcome(4);
    assert_eq!(plain.environment_ms, None, "no environment, no environment time");
    assert!(server.log(4, "stderr").contains("No module named 'automa_demo'"), "a run without packages has none");
    assert_eq!(environments.builds(), 2, "one build for runs 1 and 2, one failed for run 3");
}

fn uv_version(uv: &Path) -> String {
    let out = Command::new(uv).arg("--version").output().expect("uv --version");
    String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1).expect("a version").to_owned()
}
