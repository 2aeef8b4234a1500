//! Scripts with dependencies through the real binary, offline: wheels the test makes in a find-links
//! directory, locked by `automa serve` on save and built by an agent in the strict sandbox. A PEP 723 script
//! imports its package and a second run uses the cached environment (the agent's build counter does not
//! move); ten concurrent first runs build once; a run cannot change what the next one imports; a build failure
//! ends the run `failed` with uv's reason and the agent keeps working; a script without dependencies is
//! unaffected; bad and unresolvable requirements are 422s. The embedded agent on SQLite and a remote
//! `automa agent` on PostgreSQL.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::packages::{make_wheel, test_uv};
use crate::pg_database::Database;
use crate::support::{PATIENCE, Server, command, fresh_database, postgres_url, text_of};

/// The package the scripts import, and what its module's `VALUE` says.
const DEMO: &str = "automa-demo";
const DEMO_VALUE: &str = "automa-demo 1.0.0";

/// A short lease, so an idle agent heartbeats (and reports its build counter) every two seconds.
const LEASE_SECONDS: &str = "6";

fn pep723(requirement: &str, body: &str) -> String {
    format!("# /// script\n# dependencies = [\"{requirement}\"]\n# ///\n{body}")
}

/// A server with an agent to run on, both told to use uv offline with `wheels` as their only package source.
struct Deployment {
    /// The remote agent, killed before the server goes.
    agent_process: Option<Child>,
    server: Server,
    agent_id: i64,
    wheels: TempDir,
    _database: Option<Database>,
    _dir: TempDir,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if let Some(process) = &mut self.agent_process {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

/// The package settings, as environment variables of `serve` (and of a remote agent).
fn package_settings<'a>(uv: &'a Path, wheels: &'a Path) -> [(&'static str, &'a str); 3] {
    let (uv, wheels) = (uv.to_str().expect("utf-8"), wheels.to_str().expect("utf-8"));
    [("AUTOMA_UV", uv), ("AUTOMA_PACKAGE_FIND_LINKS", wheels), ("AUTOMA_PACKAGE_OFFLINE", "true")]
}

impl Deployment {
    /// `serve` on SQLite running everything on its embedded agent; `extra` adds settings.
    async fn embedded(uv: &Path, extra: &[(&str, &str)]) -> Deployment {
        let (dir, wheels) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        make_wheel(wheels.path(), DEMO, "1.0.0");
        let mut settings = vec![("AUTOMA_LEASE_SECONDS", LEASE_SECONDS)];
        settings.extend(package_settings(uv, wheels.path()));
        settings.extend_from_slice(extra);
        let server = Server::start(dir.path(), &settings, true).await;
        let agents = server.get("/agents").await;
        let embedded =
            agents["items"].as_array().unwrap().iter().find(|a| a["name"].as_str().unwrap().starts_with("embedded-"));
        let agent_id = embedded.unwrap_or_else(|| panic!("the embedded agent in {agents}"))["id"].as_i64().unwrap();
        Deployment { agent_process: None, server, agent_id, wheels, _database: None, _dir: dir }
    }

    /// `serve` on a database of its own on PostgreSQL, API only, and one `automa agent` process given the
    /// package settings as flags; `None` without PostgreSQL.
    async fn remote_on_postgres(uv: &Path) -> Option<Deployment> {
        let database = fresh_database(&postgres_url()?).await;
        let (dir, wheels) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        make_wheel(wheels.path(), DEMO, "1.0.0");
        let mut settings = vec![
            ("AUTOMA_DATABASE_URL", database.url.as_str()),
            ("AUTOMA_NO_AGENT", "true"),
            ("AUTOMA_LEASE_SECONDS", LEASE_SECONDS),
        ];
        settings.extend(package_settings(uv, wheels.path()));
        let server = Server::start(dir.path(), &settings, true).await;
        let (status, agent) = server.post("/agents", json!({"name": "builder", "max_concurrency": 2})).await;
        assert_eq!(status, 201, "{agent}");
        // The agent's own environment has no package settings: they come from its flags.
        let process = command(dir.path(), &[("AUTOMA_LOG", "warn")])
            .args(["agent", "--server", &server.base, "--uv"])
            .arg(uv)
            .arg("--package-find-links")
            .arg(wheels.path())
            .arg("--package-offline")
            .arg("--data-dir")
            .arg(dir.path().join("agent"))
            .env("AUTOMA_TOKEN", agent["token"].as_str().unwrap())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let agent_id = agent["id"].as_i64().unwrap();
        Some(Deployment {
            agent_process: Some(process),
            server,
            agent_id,
            wheels,
            _database: Some(database),
            _dir: dir,
        })
    }

    /// Saves a script and returns it, checking that it was locked when it has dependencies.
    async fn save(&self, name: &str, content: &str) -> Value {
        let (status, script) = self.server.post("/scripts", json!({"name": name, "content": content})).await;
        assert_eq!(status, 201, "{script}");
        let has_dependencies = !script["dependencies"].as_array().unwrap().is_empty();
        assert_eq!(script["lock"].is_string(), has_dependencies, "{script}");
        script
    }

    /// Queues a saved script on the agent and returns the run's id.
    async fn queue(&self, script: &Value) -> i64 {
        let body = json!({"script_id": script["id"], "agent_id": self.agent_id});
        let (status, run) = self.server.post("/execute", body).await;
        assert_eq!(status, 202, "{run}");
        run["id"].as_i64().unwrap()
    }

    /// Runs a saved script on the agent to its end; returns its log and the run as stored.
    async fn run(&self, script: &Value) -> (Vec<Value>, Value) {
        let run = self.queue(script).await;
        self.finish(run).await
    }

    async fn finish(&self, run: i64) -> (Vec<Value>, Value) {
        let (chunks, _) = self.server.follow(run).await;
        (chunks, self.server.get(&format!("/runs/{run}")).await)
    }

    /// The agent's environment build counter as its first heartbeat after `run` finished reported it. A
    /// heartbeat carries the counter of when it was sent, and the run's environment was ready before its
    /// script started, so a heartbeat received after the finish counts that run's build (heartbeats have no
    /// event of their own: polled, bounded by [`PATIENCE`]).
    async fn builds_after(&self, run: &Value) -> u64 {
        let finished: DateTime<Utc> = run["finished_at"].as_str().expect("finished").parse().unwrap();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let agent = self.server.get(&format!("/agents/{}", self.agent_id)).await;
            let seen: Option<DateTime<Utc>> = agent["last_seen_at"].as_str().map(|at| at.parse().unwrap());
            if seen.is_some_and(|seen| seen > finished) {
                let packages = &agent["capabilities"]["packages"];
                return packages["environment_builds"].as_u64().unwrap_or_else(|| panic!("a build counter: {agent}"));
            }
            assert!(tokio::time::Instant::now() < deadline, "no heartbeat within {PATIENCE:?} after the run: {agent}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn assert_succeeded(chunks: &[Value], run: &Value, stdout: &str) {
    assert_eq!(run["status"], "succeeded", "{run}\n{}", text_of(chunks, "stderr") + &text_of(chunks, "system"));
    assert_eq!(text_of(chunks, "stdout"), stdout, "{run}");
}

/// The whole life of a script with dependencies on one agent: scenarios 1, 3, 4 and 5 of the issue.
async fn a_script_with_dependencies_runs_cached_read_only_and_fails_cleanly(deployment: Deployment) {
    let importing =
        deployment.save("importing", &pep723("automa-demo>=1", "import automa_demo\nprint(automa_demo.VALUE)\n")).await;
    assert_eq!(importing["locked_packages"][0]["version"], "1.0.0", "{importing}");

    // The first run builds the environment, with the build's lines in its log.
    let (chunks, first) = deployment.run(&importing).await;
    assert_succeeded(&chunks, &first, &format!("{DEMO_VALUE}\n"));
    let system = text_of(&chunks, "system");
    assert!(system.starts_with("preparing environment\n"), "{system}");
    let ready = system.lines().last().unwrap();
    assert!(ready.starts_with("environment ready (") && ready.ends_with(" ms, built)"), "{system}");
    assert!(first["environment_ms"].as_i64().unwrap() > 0, "{first}");
    let built = deployment.builds_after(&first).await;
    assert_eq!(built, 1, "the first run built its environment");

    // The second uses it as it is.
    let (chunks, second) = deployment.run(&importing).await;
    assert_succeeded(&chunks, &second, &format!("{DEMO_VALUE}\n"));
    assert_eq!(second["environment_ms"], 0, "{second}");
    assert!(text_of(&chunks, "system").ends_with(" ms, cached)\n"), "{}", text_of(&chunks, "system"));
    assert_eq!(deployment.builds_after(&second).await, built, "the second run built nothing");

    // A run that tries to change the installed module cannot; the next run imports the original. The same
    // requirements lock the same packages, so this script shares the environment.
    let tampering = "import automa_demo\ntry:\n    with open(automa_demo.__file__, 'w') as module:\n        \
                     module.write('VALUE = \"changed\"\\n')\n    print('written')\nexcept OSError as error:\n    \
                     print('refused', error.strerror)\n";
    let tampering = deployment.save("tampering", &pep723("automa-demo>=1", tampering)).await;
    assert_eq!(tampering["lock"], importing["lock"]);
    let (chunks, tampered) = deployment.run(&tampering).await;
    assert_succeeded(&chunks, &tampered, "refused Read-only file system\n");
    let (chunks, after) = deployment.run(&importing).await;
    assert_succeeded(&chunks, &after, &format!("{DEMO_VALUE}\n"));

    // A script without dependencies prepares nothing.
    let plain = deployment.save("plain", "import json\nprint(json.dumps([1]))\n").await;
    let (chunks, standard) = deployment.run(&plain).await;
    assert_succeeded(&chunks, &standard, "[1]\n");
    assert_eq!((standard["environment_ms"].clone(), text_of(&chunks, "system")), (Value::Null, String::new()));
    assert_eq!(deployment.builds_after(&standard).await, built, "nothing was built for it");

    // A lock whose wheel the agent cannot find any more: the run fails with uv's reason, and the agent goes on.
    let gone = make_wheel(deployment.wheels.path(), "automa-gone", "1.0.0");
    let vanishing = deployment.save("vanishing", &pep723("automa-gone", "import automa_gone\n")).await;
    std::fs::remove_file(gone).unwrap();
    let (chunks, failed) = deployment.run(&vanishing).await;
    assert_eq!((failed["status"].as_str(), failed["exit_code"].as_i64()), (Some("failed"), None), "{failed}");
    let error = failed["error"].as_str().unwrap_or_else(|| panic!("a reason: {failed}"));
    assert!(error.starts_with("environment build failed: ") && error.contains("automa-gone"), "{error}");
    assert!(text_of(&chunks, "system").starts_with("preparing environment\n"), "{chunks:?}");
    assert_eq!(text_of(&chunks, "stdout"), "", "the script never started");
    let (chunks, later) = deployment.run(&plain).await;
    assert_succeeded(&chunks, &later, "[1]\n");
    let (chunks, cached) = deployment.run(&importing).await;
    assert_succeeded(&chunks, &cached, &format!("{DEMO_VALUE}\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_agent_with_sqlite() {
    let Some(uv) = test_uv() else { return };
    a_script_with_dependencies_runs_cached_read_only_and_fails_cleanly(Deployment::embedded(&uv, &[]).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_remote_agent_with_postgres() {
    let Some(uv) = test_uv() else { return };
    let Some(deployment) = Deployment::remote_on_postgres(&uv).await else { return };
    a_script_with_dependencies_runs_cached_read_only_and_fails_cleanly(deployment).await;
}

/// Ten runs asking at once for an environment no run has built yet share one build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_first_runs_build_once() {
    const RUNS: usize = 10;
    let Some(uv) = test_uv() else { return };
    let deployment = Deployment::embedded(&uv, &[("AUTOMA_AGENT_CONCURRENCY", "10")]).await;
    make_wheel(deployment.wheels.path(), "automa-crowd", "2.0.0");
    let crowd =
        deployment.save("crowd", &pep723("automa-crowd", "import automa_crowd\nprint(automa_crowd.VALUE)\n")).await;
    let plain = deployment.save("plain", "print('before')\n").await;
    let (_, before) = deployment.run(&plain).await;
    let builds = deployment.builds_after(&before).await;

    let mut runs = Vec::new();
    for _ in 0..RUNS {
        runs.push(deployment.queue(&crowd).await);
    }
    let mut last_finish: Option<Value> = None;
    let mut built = 0;
    for run in runs {
        let (chunks, run) = deployment.finish(run).await;
        assert_succeeded(&chunks, &run, "automa-crowd 2.0.0\n");
        built += usize::from(text_of(&chunks, "system").ends_with(" ms, built)\n"));
        if last_finish.as_ref().is_none_or(|last| last["finished_at"].as_str() < run["finished_at"].as_str()) {
            last_finish = Some(run);
        }
    }
    // Every run that waited for the build reports it built; the counter says how many builds there were.
    assert!(built >= 1, "some run reports the build");
    assert_eq!(deployment.builds_after(&last_finish.unwrap()).await, builds + 1, "one build for {RUNS} runs");
}

/// Bad requirements are refused by name and unresolvable ones with uv's message, before anything is stored.
#[tokio::test]
async fn bad_and_unresolvable_requirements_are_refused() {
    let Some(uv) = test_uv() else { return };
    let deployment = Deployment::embedded(&uv, &[]).await;
    let server = &deployment.server;
    let (status, bad) =
        server.post("/scripts", json!({"name": "bad", "content": pep723("not a requirement!!", "")})).await;
    assert_eq!(status, 422, "{bad}");
    assert!(
        bad["detail"].as_str().unwrap().contains("'not a requirement!!' is not a valid PEP 508 requirement"),
        "{bad}"
    );

    let body = json!({"name": "missing", "content": pep723("nonexistent-package", "")});
    let (status, missing) = server.post("/scripts", body).await;
    assert_eq!((status, missing["field"].as_str()), (422, Some("dependencies")), "{missing}");
    let detail = missing["detail"].as_str().unwrap();
    assert!(detail.contains("could not be resolved") && detail.contains("nonexistent-package"), "{detail}");
    assert!(detail.contains("was not found in the provided package locations"), "uv's own words: {detail}");
    assert_eq!(server.get("/scripts").await["total"], 0, "nothing refused was stored");
}
