//! The run path, cold and warm, for the `none` and `strict` profiles: throughput (a batch of trivial runs
//! through the agent's two slots against the same number of bare interpreter starts two at a time) and a
//! single run on an idle server (what the client waits, and the run's own `duration_ms`, against one bare
//! start measured alongside).

use std::time::Duration;

use automa_server::api::runs::RunResponse;

use crate::bench::Settings;
use crate::bench::floor;
use crate::bench::report::{Measurement, Report, Samples, Target};
use crate::bench::server::{Running, ServerSpec};

pub const THROUGHPUT: &str = "throughput";
pub const SINGLE: &str = "single run";

/// The agent's slots, as in issue 12's measurements; the floor starts as many interpreters at once.
const CONCURRENCY: usize = 2;
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
                let cold = running.session.batch(script, runs, false).await?;
                let floor = (before + measure_floor().await?) / 2;
                // The first warm run of each slot starts cold and prepares the slot's next sandbox.
                running.session.batch(script, WARM_UP, true).await?;
                let warm = running.session.batch(script, runs, true).await?;
                Ok((floor, cold.wall, warm))
            })
            .await?;
        let target = if profile == "none" { 1.05 } else { 1.20 };
        report.add(
            THROUGHPUT,
            wall(format!("{profile}: wall of {runs} runs"), cold, floor).target(Target::RatioAtMost(target)),
        );
        // ≥ 3× the floor's throughput: the same runs in at most a third of its time.
        report.add(
            THROUGHPUT,
            wall(format!("{profile} warm: wall of {runs} runs ({})", started_warm(&warm.runs)), warm.wall, floor)
                .target(Target::RatioAtMost(1.0 / 3.0)),
        );
    }
    report.print_phase(THROUGHPUT);
    Ok(())
}

/// How many of `runs` the agent started warm: a warm request runs cold when its slot has no prepared sandbox.
fn started_warm(runs: &[RunResponse]) -> String {
    format!("{} of {} started warm", runs.iter().filter(|run| run.warm_start).count(), runs.len())
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
                let cold = sequence(settings, running, script, false).await?;
                // The warm pool fills on first use: not what a single run measures.
                running.session.batch(script, WARM_UP, true).await?;
                let warm = sequence(settings, running, script, true).await?;
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
        let started = format!("{} of {count} started warm", warm.warm_starts);
        add(
            report,
            format!("{profile} warm: submit → finished p50 ({started})"),
            warm.client.median(),
            Some(Target::AtMost(3.0)),
        );
        add(report, format!("{profile} warm: duration_ms p50"), warm.duration.median(), None);
    }
    report.print_phase(SINGLE);
    Ok(())
}

/// Single runs, each after a bare start: the times in ms, and how many of the runs started warm.
struct Sequence {
    bare: Samples,
    client: Samples,
    duration: Samples,
    warm_starts: usize,
}

/// `single_runs` runs one after another, each after a bare start.
async fn sequence(settings: &Settings, running: &mut Running, script: i64, warm: bool) -> anyhow::Result<Sequence> {
    let (mut bare, mut client, mut duration, mut warm_starts) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for _ in 0..settings.single_runs {
        bare.push(floor::bare_start(&settings.python, &settings.script).await?.as_secs_f64() * 1000.0);
        let (seen, run) = running.session.one_run(script, warm).await?;
        client.push(seen.as_secs_f64() * 1000.0);
        duration.push(run.duration_ms.unwrap_or_default() as f64);
        warm_starts += usize::from(run.warm_start);
    }
    Ok(Sequence {
        bare: Samples::new(bare),
        client: Samples::new(client),
        duration: Samples::new(duration),
        warm_starts,
    })
}
