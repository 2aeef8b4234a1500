//! `automa bench`: 200 trivial runs (`hi.py`) through the API at concurrency 2, for the `none` and `strict`
//! profiles, against the floor of starting the same interpreter on the same file 200 times at concurrency 2,
//! measured in the same process just before. Prints the ratio and the per-run overhead.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use automa_core::RunStatus;
use automa_server::{Application, Config, config::SecretString, events::Event};

const RUNS: usize = 200;
const CONCURRENCY: usize = 2;
const SCRIPT: &str = "print('hi')\n";

pub async fn bench(python: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let interpreter = automa_runner::resolve_interpreter(python.as_deref())?;
    let script = dir.path().join("hi.py");
    std::fs::write(&script, SCRIPT)?;
    println!("{RUNS} runs of hi.py at concurrency {CONCURRENCY}, interpreter {}", interpreter.display());
    for profile in ["none", "strict"] {
        let floor = floor(&interpreter, &script).await?;
        let wall = through_api(dir.path(), profile, &interpreter).await?;
        let ratio = wall.as_secs_f64() / floor.as_secs_f64();
        let overhead_ms = (wall.as_secs_f64() - floor.as_secs_f64()) * CONCURRENCY as f64 * 1000.0 / RUNS as f64;
        println!(
            "profile {profile:>6}: floor {:>7.1} ms, API {:>7.1} ms, ratio {ratio:.3}x, overhead {overhead_ms:.2} ms per run",
            floor.as_secs_f64() * 1000.0,
            wall.as_secs_f64() * 1000.0,
        );
    }
    Ok(())
}

/// Starting the interpreter directly, `RUNS` times, `CONCURRENCY` at once.
async fn floor(interpreter: &Path, script: &Path) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (interpreter, script) = (interpreter.to_path_buf(), script.to_path_buf());
        workers.spawn(async move {
            for _ in 0..RUNS / CONCURRENCY {
                let out = tokio::process::Command::new(&interpreter).arg(&script).output().await?;
                anyhow::ensure!(out.status.success(), "the interpreter failed on hi.py");
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    Ok(start.elapsed())
}

/// A fresh server with this profile; the time from the first request until every run has ended.
async fn through_api(dir: &Path, profile: &str, interpreter: &Path) -> anyhow::Result<Duration> {
    let config = Config {
        data_dir: dir.join(profile),
        bind: "127.0.0.1:0".into(),
        secret_key: Some(SecretString::new("b".repeat(32))),
        sandbox: profile.into(),
        python: Some(interpreter.to_path_buf()),
        agent_concurrency: Some(CONCURRENCY),
        ..Config::default()
    };
    let mut server = BenchServer::start(config, "hi.py", SCRIPT).await?;
    let script_id = server.script_id.clone();
    let batch = server.batch(&script_id, RUNS).await?;
    server.stop().await?;
    Ok(batch.wall)
}

/// A server in this process for a benchmark, with an admin session and one script.
pub(crate) struct BenchServer {
    pub base: String,
    pub client: reqwest::Client,
    pub token: String,
    pub script_id: Value,
    pub events: tokio::sync::broadcast::Receiver<std::sync::Arc<Event>>,
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl BenchServer {
    pub(crate) async fn start(config: Config, filename: &str, content: &str) -> anyhow::Result<BenchServer> {
        let app = Application::build(config).await?;
        let base = format!("http://{}", app.local_addr());
        let events = app.events().subscribe();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::new();
        let token = login(&client, &base).await?;
        let mut bench = BenchServer { base, client, token, script_id: Value::Null, events, stop, server };
        bench.script_id = bench.add_script("hi", filename, content).await?;
        Ok(bench)
    }

    /// Saves another script; its id.
    pub(crate) async fn add_script(&self, name: &str, filename: &str, content: &str) -> anyhow::Result<Value> {
        let script: Value = self
            .client
            .post(format!("{}/scripts", self.base))
            .bearer_auth(&self.token)
            .json(&json!({"name": name, "filename": filename, "content": content}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(script["id"].clone())
    }

    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.server.await?
    }

    /// Submits `count` runs of `script_id` at once and waits for all of them to succeed.
    pub(crate) async fn batch(&mut self, script_id: &Value, count: usize) -> anyhow::Result<Batch> {
        let setup_before = self.sandbox_setup().await?;
        let start = Instant::now();
        let mut pending = HashSet::new();
        for _ in 0..count {
            let run: Value = self
                .client
                .post(format!("{}/execute", self.base))
                .bearer_auth(&self.token)
                .json(&json!({"script_id": script_id}))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            pending.insert(run["id"].as_i64().context("a run without an id")?);
        }
        let ids = pending.iter().copied().collect();
        let mut runs = Vec::with_capacity(count);
        while !pending.is_empty() {
            let event =
                tokio::time::timeout(Duration::from_secs(300), self.events.recv()).await.context("runs stalled")??;
            let Event::Run(run) = &*event else { continue };
            if !run.status.is_terminal() || !pending.remove(&run.id) {
                continue;
            }
            anyhow::ensure!(
                run.status == RunStatus::Succeeded,
                "run {} ended {}: {}",
                run.id,
                run.status,
                run.error.as_deref().unwrap_or("")
            );
            let duration = run.started_at.zip(run.finished_at).map(|(start, end)| end - start);
            let duration = duration.and_then(|d| d.num_microseconds()).context("a finished run without times")?;
            runs.push(RunTimes {
                duration_ms: duration as f64 / 1000.0,
                environment_ms: run.environment_ms.unwrap_or(0) as f64,
            });
        }
        let wall = start.elapsed();
        let setup_after = self.sandbox_setup().await?;
        let setup_ms = (setup_after.0 - setup_before.0) * 1000.0 / (setup_after.1 - setup_before.1).max(1.0);
        Ok(Batch { ids, runs, wall, setup_ms })
    }

    /// A successful answer to `GET path` as the admin.
    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        Ok(self.client.get(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await?.error_for_status()?)
    }

    /// `automa_sandbox_setup_seconds`' sum and count.
    async fn sandbox_setup(&self) -> anyhow::Result<(f64, f64)> {
        let text = self.get("/metrics").await?.text().await?;
        let value = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Ok((value("automa_sandbox_setup_seconds_sum"), value("automa_sandbox_setup_seconds_count")))
    }
}

async fn login(client: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let (email, password) = ("bench@example.com", "bench password");
    client
        .post(format!("{base}/users"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await?
        .error_for_status()?;
    let token: Value = client
        .post(format!("{base}/token"))
        .form(&[("username", email), ("password", password)])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    token["access_token"].as_str().map(str::to_owned).context("no access token")
}

/// One run as its agent recorded it.
pub(crate) struct RunTimes {
    /// The script's own time in the sandbox (`duration_ms`), in ms.
    pub duration_ms: f64,
    pub environment_ms: f64,
}

impl RunTimes {
    pub(crate) fn agent_ms(&self) -> f64 {
        self.duration_ms + self.environment_ms
    }
}

/// A batch of runs of one script, submitted at once.
pub(crate) struct Batch {
    pub ids: Vec<i64>,
    pub runs: Vec<RunTimes>,
    /// From the first submission until the last run ended.
    pub wall: Duration,
    /// The runs' mean sandbox setup (from the helper's start to the script's exec), from the server's metrics.
    pub setup_ms: f64,
}
