//! The scheduler under a burst: thousands of one-off tasks due in the same second, created over HTTP before
//! they come due, on a server without an agent so the runs stay queued and nothing else competes. Lateness is
//! each run's `queued_at` minus its planned fire time (`scheduled_for`), both recorded by the server.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};

use crate::bench::Settings;
use crate::bench::floor;
use crate::bench::report::{Measurement, Report, Samples, Target};
use crate::bench::server::{Running, ServerSpec, Session};

pub const PHASE: &str = "scheduler";

/// Tasks created at once: a few clients, not a flood.
const CREATING_CONCURRENCY: usize = 4;
/// Tasks created first, due in a day, to time a creation and so choose the lead time.
const CALIBRATION: usize = 20;
/// The longest the suite waits for every fire to appear.
const PATIENCE: Duration = Duration::from_secs(120);
/// The most runs one page of the run list holds.
const PAGE: usize = 500;

pub async fn lateness(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    println!("\n## {PHASE}: one-off tasks due in the same second, no agent; lateness = queued_at − planned fire");
    for &tasks in &settings.schedule_tasks {
        let spec = ServerSpec { profile: "none", python: &settings.python, agent: false, env: Vec::new() };
        let lateness = Running::sqlite(&spec).await?.with(async |running| burst(&running.session, tasks).await).await?;
        let what = format!("{tasks} tasks due in one second: lateness");
        report.add(PHASE, Measurement::new(format!("{what} p50"), lateness.median(), "ms"));
        report.add(
            PHASE,
            Measurement::new(format!("{what} p99"), lateness.percentile(0.99), "ms").target(Target::AtMost(20.0)),
        );
        report.add(PHASE, Measurement::new(format!("{what} max"), lateness.max(), "ms"));
    }
    report.print_phase(PHASE);
    Ok(())
}

async fn burst(session: &Session, tasks: usize) -> anyhow::Result<Samples> {
    let script = session.add_script("hi", "hi.py", floor::SCRIPT).await?;
    let calibrating = Instant::now();
    let tomorrow = Utc::now() + chrono::Duration::days(1);
    create_tasks(session, script, "later", CALIBRATION, tomorrow).await?;
    let per_task = calibrating.elapsed() / CALIBRATION as u32;
    // Twice the time the creations should take, and a margin: a slower creation would leave no burst.
    let lead = Duration::from_secs(3) + per_task * 2 * tasks as u32;
    let due = DateTime::from_timestamp((Utc::now() + lead).timestamp() + 1, 0).context("clock")?;
    let creating = Instant::now();
    create_tasks(session, script, "due", tasks, due).await?;
    anyhow::ensure!(
        Utc::now() < due,
        "creating {tasks} tasks took {:?}, past their due time: nothing measured",
        creating.elapsed()
    );
    println!("{tasks} tasks created in {:.1} s, due at {due}", creating.elapsed().as_secs_f64());
    // Listing runs while they fire would compete with the scheduler: the first look is after the burst.
    let wait = (due - Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(2);
    tokio::time::sleep(wait).await;
    let fired = fires(session, due, tasks).await?;
    let lateness = fired.values().map(milliseconds).collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Samples::new(lateness))
}

async fn create_tasks(
    session: &Session,
    script: i64,
    prefix: &str,
    count: usize,
    due: DateTime<Utc>,
) -> anyhow::Result<()> {
    futures::stream::iter(0..count)
        .map(|index| async move {
            let body = json!({"name": format!("{prefix}-{index}"), "script_id": script, "scheduled_time": due});
            session.api.post::<_, Value>("/tasks", &body).await.map(drop)
        })
        .buffer_unordered(CREATING_CONCURRENCY)
        .try_collect()
        .await
}

/// The scheduled runs planned for `due`, by id, once there are `expected` of them.
async fn fires(session: &Session, due: DateTime<Utc>, expected: usize) -> anyhow::Result<HashMap<i64, Value>> {
    let started = Instant::now();
    let mut fired = HashMap::new();
    loop {
        let mut offset = 0;
        loop {
            let query =
                [("trigger", "schedule".to_owned()), ("limit", PAGE.to_string()), ("offset", offset.to_string())];
            let page: Value = session.api.get("/runs", &query).await?.value;
            let items = page["items"].as_array().context("a run list without items")?;
            for run in items.iter().filter(|run| planned(run) == Some(due)) {
                fired.insert(run["id"].as_i64().context("a run without an id")?, run.clone());
            }
            if items.len() < PAGE {
                break;
            }
            offset += PAGE;
        }
        if fired.len() >= expected {
            return Ok(fired);
        }
        anyhow::ensure!(started.elapsed() < PATIENCE, "only {} of {expected} tasks fired", fired.len());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn planned(run: &Value) -> Option<DateTime<Utc>> {
    run["scheduled_for"].as_str()?.parse().ok()
}

/// A run's `queued_at` minus its `scheduled_for`, in ms.
fn milliseconds(run: &Value) -> anyhow::Result<f64> {
    let queued: DateTime<Utc> = run["queued_at"].as_str().context("no queued_at")?.parse()?;
    let planned = planned(run).context("no scheduled_for")?;
    Ok((queued - planned).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0)
}
