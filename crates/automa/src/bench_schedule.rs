//! `automa bench schedule`: 1,000 tasks due in the same second on the SQLite store; prints p50, p99 and max of
//! each run's `queued_at` minus its planned fire time — the scheduler's lateness.

use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use automa_core::{RunStatus, Trigger};
use automa_server::{Config, config::SecretString, events::Event};

use crate::bench::BenchServer;

const TASKS: usize = 1000;
/// Time allowed to create the tasks before they come due.
const LEAD: i64 = 30;

pub async fn bench() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        bind: "127.0.0.1:0".into(),
        secret_key: Some(SecretString::new("b".repeat(32))),
        no_agent: true,
        ..Config::default()
    };
    let BenchServer { base, client, token, script_id, mut events, stop, server } =
        BenchServer::start(config, "hi.py", "print('hi')\n").await?;
    let due = chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp() + LEAD, 0).context("clock")?;
    for index in 0..TASKS {
        client
            .post(format!("{base}/tasks"))
            .bearer_auth(&token)
            .json(&json!({"name": format!("due-{index}"), "script_id": script_id, "scheduled_time": due}))
            .send()
            .await?
            .error_for_status()?;
    }
    anyhow::ensure!(chrono::Utc::now() < due, "creating {TASKS} tasks took longer than {LEAD} s; nothing measured");
    println!("{TASKS} one-off tasks due at {due}, SQLite store");
    let mut lateness_ms = Vec::with_capacity(TASKS);
    let mut visible_ms = Vec::with_capacity(TASKS);
    while lateness_ms.len() < TASKS {
        let event = tokio::time::timeout(Duration::from_secs(LEAD as u64 + 30), events.recv())
            .await
            .context("fires stalled")??;
        if let Event::Run(run) = &*event
            && run.trigger == Trigger::Schedule
            && run.status == RunStatus::Queued
            && let Some(planned) = run.scheduled_for
        {
            lateness_ms.push(milliseconds(run.queued_at - planned));
            visible_ms.push(milliseconds(chrono::Utc::now() - planned));
        }
    }
    report("lateness (queued_at - planned fire)", &mut lateness_ms);
    report("visible (committed and announced - planned fire)", &mut visible_ms);
    let _ = stop.send(());
    server.await??;
    Ok(())
}

fn milliseconds(duration: chrono::Duration) -> f64 {
    duration.num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0
}

fn report(what: &str, samples: &mut [f64]) {
    samples.sort_by(f64::total_cmp);
    let percentile = |p: f64| samples[((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1];
    println!(
        "{what}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(0.50),
        percentile(0.99),
        samples[samples.len() - 1]
    );
}
