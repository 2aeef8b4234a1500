//! The run path, cold and warm, for the `none` and `strict` profiles: throughput (a batch of trivial runs
//! through the agent's two slots against the same number of bare interpreter starts two at a time) and a
//! single run on an idle server (what the client waits, and the run's own `duration_ms`, against one bare
//! start measured alongside).

use std::time::Duration;

use anyhow::Context;

use crate::bench::Settings;
use crate::bench::floor;
use crate::bench::report::{Measurement, Report, Samples, Target};
use crate::bench::server::{Running, ServerSpec};

pub const THROUGHPUT: &str = "throughput";
pub const SINGLE: &str = "single run";

/// The agent's slots, as in issue 12's measurements; the floor starts as many interpreters at once.
const CONCURRENCY: usize = 2;
/// Only `warm` runs can be refused as unknown.
pub const COLD_REFUSED: &str = "the server refused a cold run";
/// Runs before anything is timed: the interpreter's files into the page cache, the server's first-use costs.
const WARM_UP: usize = 4;

pub async fn throughput(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let runs = settings.runs;
    println!("\n## {THROUGHPUT}: {runs} runs of hi.py submitted at once, agent concurrency {CONCURRENCY}");
    let measure_floor = async || floor::batch(&settings.python, &settings.script, runs, CONCURRENCY).await;
    for profile in ["none", "strict"] {
        let spec = ServerSpec { profile, python: &settings.python, agent: true, env: Vec::new() };
        let (floor, cold, warm) = Running::sqlite(&spec)
            .await?
            .with(async |running| {
                let script = running.session.add_script("hi", "hi.py", floor::SCRIPT).await?;
                running.session.batch(script, WARM_UP, false).await?;
                // The floor just before and just after the batch, their mean the baseline: on a machine whose
                // load changes (other builds), one taken a few seconds apart would be measured in other weather.
                let before = measure_floor().await?;
                let cold = running.session.batch(script, runs, false).await?.context(COLD_REFUSED)?;
                let floor = (before + measure_floor().await?) / 2;
                let warm = match running.session.batch(script, WARM_UP, true).await? {
                    Some(_) => running.session.batch(script, runs, true).await?,
                    None => None,
                };
                Ok((floor, cold.wall, warm.map(|batch| batch.wall)))
            })
            .await?;
        let target = if profile == "none" { 1.05 } else { 1.20 };
        report.add(
            THROUGHPUT,
            wall(format!("{profile}: wall of {runs} runs"), cold, floor).target(Target::RatioAtMost(target)),
        );
        match warm {
            // ≥ 3× the floor's throughput: the same runs in at most a third of its time.
            Some(warm) => report.add(
                THROUGHPUT,
                wall(format!("{profile} warm: wall of {runs} runs"), warm, floor)
                    .target(Target::RatioAtMost(1.0 / 3.0)),
            ),
            None => println!("{profile} warm: not available (the server refuses `warm` in POST /execute)"),
        }
    }
    report.print_phase(THROUGHPUT);
    Ok(())
}

fn wall(what: String, wall: Duration, floor: Duration) -> Measurement {
    Measurement::new(what, wall.as_secs_f64() * 1000.0, "ms").against(floor.as_secs_f64() * 1000.0)
}

pub async fn single(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let count = settings.single_runs;
    println!(
        "\n## {SINGLE}: {count} runs one after another on an idle server, each beside a bare start; baseline: the \
         bare starts' median"
    );
    for profile in ["none", "strict"] {
        let spec = ServerSpec { profile, python: &settings.python, agent: true, env: Vec::new() };
        let (cold, warm) = Running::sqlite(&spec)
            .await?
            .with(async |running| {
                let script = running.session.add_script("hi", "hi.py", floor::SCRIPT).await?;
                running.session.batch(script, WARM_UP, false).await?;
                let cold = sequence(settings, running, script, false).await?.context(COLD_REFUSED)?;
                // The warm pool, when there is one, may fill on first use: not what a single run measures.
                let warm = match running.session.batch(script, WARM_UP, true).await? {
                    Some(_) => sequence(settings, running, script, true).await?,
                    None => None,
                };
                Ok((cold, warm))
            })
            .await?;
        let bare = cold.bare.median();
        let target = Target::AboveBaselineAtMost(if profile == "none" { 2.0 } else { 4.0 });
        let add = |report: &mut Report, what: String, value: f64, target: Option<Target>| {
            let mut row = Measurement::new(what, value, "ms").against(bare);
            row.target = target;
            report.add(SINGLE, row);
        };
        add(report, format!("{profile}: submit → finished p50"), cold.client.median(), Some(target));
        add(report, format!("{profile}: submit → finished p90"), cold.client.percentile(0.9), None);
        add(report, format!("{profile}: duration_ms p50"), cold.duration.median(), Some(target));
        add(report, format!("{profile}: duration_ms p90"), cold.duration.percentile(0.9), None);
        match warm {
            Some(warm) => {
                add(
                    report,
                    format!("{profile} warm: submit → finished p50"),
                    warm.client.median(),
                    Some(Target::AtMost(3.0)),
                );
                add(report, format!("{profile} warm: duration_ms p50"), warm.duration.median(), None);
            }
            None => println!("{profile} warm: not available (the server refuses `warm` in POST /execute)"),
        }
    }
    report.print_phase(SINGLE);
    Ok(())
}

/// Single runs, each after a bare start: the times in ms.
struct Sequence {
    bare: Samples,
    client: Samples,
    duration: Samples,
}

/// `single_runs` runs one after another, each after a bare start; `None` when the server does not know `warm`.
async fn sequence(
    settings: &Settings,
    running: &mut Running,
    script: i64,
    warm: bool,
) -> anyhow::Result<Option<Sequence>> {
    let (mut bare, mut client, mut duration) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..settings.single_runs {
        bare.push(floor::bare_start(&settings.python, &settings.script).await?.as_secs_f64() * 1000.0);
        let Some((seen, run)) = running.session.one_run(script, warm).await? else { return Ok(None) };
        client.push(seen.as_secs_f64() * 1000.0);
        duration.push(run.duration_ms.unwrap_or_default() as f64);
    }
    Ok(Some(Sequence { bare: Samples::new(bare), client: Samples::new(client), duration: Samples::new(duration) }))
}
