//! A long history: the same reads and the same throughput on an empty database and on one seeded, before its
//! server starts, with `--history-runs` finished runs over `--history-tasks` tasks (`Store::seed_history`),
//! on SQLite and, with `--database`, PostgreSQL. The empty database is each line's baseline.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

use automa_store::{RunPage, Store};

use crate::bench::Settings;
use crate::bench::floor;
use crate::bench::report::{Measurement, Report, Samples, Target};
use crate::bench::server::{DataDir, Running, ServerSpec, Session};

pub const PHASE: &str = "history";

/// Requests of each read, one after another after a few unmeasured ones, within [`READ_BUDGET`].
const READS: usize = 100;
const READS_UNMEASURED: usize = 3;
const READ_BUDGET: Duration = Duration::from_secs(10);
/// The largest page of the run list, to walk to a deep cursor quickly.
const PAGE: usize = 500;
/// Throughput with history is compared with the empty database's: at most this ratio.
const THROUGHPUT_RATIO: f64 = 1.10;

/// What one database measured.
struct Measured {
    startup_ms: f64,
    reads: Vec<(&'static str, Samples)>,
    throughput: Duration,
}

pub async fn history(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let (runs, tasks) = (settings.history_runs, settings.history_tasks);
    println!(
        "\n## {PHASE}: {runs} runs over {tasks} tasks, against an empty database (each read: p50 and p99 of up to {READS})"
    );
    let mut backends = vec![None];
    backends.extend(settings.database.iter().map(|url| Some(url.as_str())));
    for postgres in backends {
        let empty = DataDir::new(postgres).await?;
        let backend = empty.backend();
        let empty = measure(settings, empty).await?;
        let seeded = DataDir::new(postgres).await?;
        let seeding = Instant::now();
        if let Err(error) = seed(&seeded.database_url, tasks, runs).await {
            seeded.remove().await?;
            return Err(error);
        }
        println!("{backend}: seeded in {:.1} s", seeding.elapsed().as_secs_f64());
        let seeded = measure(settings, seeded).await?;
        report.add(
            PHASE,
            Measurement::new(format!("{backend}: spawn → ready"), seeded.startup_ms, "ms")
                .against(empty.startup_ms)
                .target(Target::AtMost(100.0)),
        );
        for (name, with_history) in &seeded.reads {
            let without = empty.reads.iter().find(|(read, _)| read == name).map(|(_, samples)| samples);
            let row = |what: &str, value: f64, baseline: Option<f64>| {
                let mut row = Measurement::new(format!("{backend}: {name} {what}"), value, "ms");
                row.baseline = baseline;
                row
            };
            report.add(PHASE, row("p50", with_history.median(), without.map(Samples::median)));
            let p99 = |samples: &Samples| samples.percentile(0.99);
            report.add(PHASE, row("p99", p99(with_history), without.map(p99)).target(Target::AtMost(10.0)));
        }
        report.add(
            PHASE,
            Measurement::new(
                format!("{backend}: wall of {} runs (none)", settings.runs),
                millis(seeded.throughput),
                "ms",
            )
            .against(millis(empty.throughput))
            .target(Target::RatioAtMost(THROUGHPUT_RATIO)),
        );
    }
    report.print_phase(PHASE);
    Ok(())
}

async fn seed(database_url: &str, tasks: u32, runs: u64) -> anyhow::Result<()> {
    let store = Store::connect(database_url).await?;
    store.migrate().await?;
    let seeded = store.seed_history(tasks, runs).await;
    store.close().await;
    seeded.context("seeding the history")?;
    Ok(())
}

/// Starts a server on `data`, reads, runs the throughput batch, and stops it.
async fn measure(settings: &Settings, data: DataDir) -> anyhow::Result<Measured> {
    let spec = ServerSpec { profile: "none", python: &settings.python, agent: true, env: Vec::new() };
    Running::start(data, &spec)
        .await?
        .with(async |running| {
            let script = running.session.add_script("hi", "hi.py", floor::SCRIPT).await?;
            let batch = running.session.batch(script, settings.runs, false).await?;
            // After the batch, so that the empty database has runs to read one of.
            let reads = reads(&running.session, settings.history_runs * 9 / 10).await?;
            Ok(Measured { startup_ms: millis(running.server.startup), reads, throughput: batch.wall })
        })
        .await
}

/// The run list's and task list's reads the dashboard makes, each timed on its own; `deep` is how far into
/// the list the deep pages are (the seeded number of runs' 90%, also on the empty database, where the deep
/// page is empty), the offset page no deeper than the server allows.
async fn reads(session: &Session, deep: u64) -> anyhow::Result<Vec<(&'static str, Samples)>> {
    let newest: Value = session.api.get("/runs", &[("limit", "1".to_owned())]).await?.value;
    let run_id = newest["items"][0]["id"].as_i64().unwrap_or(1);
    let tasks: Value = session.api.get("/tasks", &[("limit", "1".to_owned())]).await?.value;
    let task_id = tasks["items"][0]["id"].as_i64().unwrap_or(1);
    let limit = || ("limit", "50".to_owned());
    let read = |name, path: &str, query| Read { name, path: path.to_owned(), query };
    let mut reads = vec![
        read("GET /runs?limit=50", "/runs", vec![limit()]),
        read("GET /runs?status=failed", "/runs", vec![limit(), ("status", "failed".into())]),
        read(
            "GET /runs?task_id&status",
            "/runs",
            vec![limit(), ("task_id", task_id.to_string()), ("status", "succeeded".into())],
        ),
        // The server refuses deeper offsets: the cursor goes there.
        read(
            "GET /runs?offset=min(90%, 10000)",
            "/runs",
            vec![limit(), ("offset", deep.min(RunPage::MAX_OFFSET as u64).to_string())],
        ),
        read("GET /runs/{id}", &format!("/runs/{run_id}"), vec![]),
        read("GET /tasks", "/tasks", vec![]),
    ];
    match deep_cursor(session, deep).await? {
        Some(cursor) => reads.push(read("GET /runs?cursor=90%", "/runs", [vec![limit()], cursor].concat())),
        None => println!("the run list has no `next_cursor`: the deep page by cursor is not measured"),
    }
    let mut timed = Vec::new();
    for read in reads {
        timed.push((read.name, time_read(session, &read.path, &read.query).await?));
    }
    Ok(timed)
}

/// One of the reads, named as the table shows it.
struct Read {
    name: &'static str,
    path: String,
    query: Vec<(&'static str, String)>,
}

/// The query (`cursor`) of the page `deep` runs into the list, walked to page by page: none when the list ends
/// before; `None` when the list has no cursors.
async fn deep_cursor(session: &Session, deep: u64) -> anyhow::Result<Option<Vec<(&'static str, String)>>> {
    let mut query = Vec::new();
    let mut walked = 0;
    while walked < deep {
        let mut paged = vec![("limit", PAGE.to_string())];
        paged.extend(query.iter().cloned());
        let page: Value = session.api.get("/runs", &paged).await?.value;
        walked += page["items"].as_array().map_or(0, Vec::len) as u64;
        match page.get("next_cursor") {
            None => return Ok(None),
            Some(Value::String(next)) => query = vec![("cursor", next.clone())],
            Some(_) => break,
        }
    }
    Ok(Some(query))
}

/// One read after another: the time from sending the request to the answer's last byte, in ms.
async fn time_read(session: &Session, path: &str, query: &[(&str, String)]) -> anyhow::Result<Samples> {
    let read = async || -> anyhow::Result<f64> {
        let start = Instant::now();
        session.api.get_text(path, query).await?;
        Ok(millis(start.elapsed()))
    };
    for _ in 0..READS_UNMEASURED {
        read().await?;
    }
    let started = Instant::now();
    let mut samples = Vec::new();
    while samples.len() < READS && (samples.is_empty() || started.elapsed() < READ_BUDGET) {
        samples.push(read().await?);
    }
    Ok(Samples::new(samples))
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
