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
    let BenchServer { base, client, token, script_id, mut events, stop, server } =
        BenchServer::start(config, "hi.py", SCRIPT).await?;
    let start = Instant::now();
    for _ in 0..RUNS {
        client
            .post(format!("{base}/execute"))
            .bearer_auth(&token)
            .json(&json!({"script_id": script_id}))
            .send()
            .await?
            .error_for_status()?;
    }
    let mut ended = HashSet::new();
    while ended.len() < RUNS {
        let event = tokio::time::timeout(Duration::from_secs(120), events.recv()).await.context("runs stalled")??;
        if let Event::Run(run) = &*event {
            anyhow::ensure!(
                run.status == RunStatus::Succeeded || !run.status.is_terminal(),
                "run {} ended {}",
                run.id,
                run.status
            );
            if run.status.is_terminal() {
                ended.insert(run.id);
            }
        }
    }
    let elapsed = start.elapsed();
    let _ = stop.send(());
    server.await??;
    Ok(elapsed)
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
