//! `automa bench environments`: what a script with dependencies costs once its environment is cached, against
//! a standard-library script. It writes a test wheel into a find-links directory, serves it offline to an
//! `automa serve` child (profile `strict`, concurrency 2), times the first run of a PEP 723 script importing it
//! (the environment's build), then runs three scripts in rounds whose order turns: the standard-library one,
//! one with the package that first loads the base interpreter's site-packages (so it starts as the first one
//! does, see [`BASE_SITE_PACKAGES`]) and the plain one with the package. Per round and as medians over the
//! rounds it prints each one's per-run time as the agent recorded it (`duration_ms` plus `environment_ms`)
//! and as the client saw it (the batch's wall time from the first submission to the last run's end, shared
//! among the runs by the agent's slots); then, by the agent's own clocks, the two things a cached
//! environment adds that `duration_ms` does not isolate: the sandbox's setup with the extra mount, and the
//! cache lookup, which happens before `duration_ms` starts.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;

use automa_server::api::runs::RunResponse;

use crate::bench::server::{Batch, Running, ServerSpec, Session};

const ROUNDS: usize = 10;
/// Runs of each script per round: 200 of each in all.
const RUNS_PER_ROUND: usize = 20;
const CONCURRENCY: usize = 2;
const WHEEL: (&str, &str) = ("automa-bench-pkg", "1.0.0");
const STDLIB_SCRIPT: &str = "import json\nprint(json.dumps('hi'))\n";
const PACKAGE_BLOCK: &str = "# /// script\n# dependencies = [\"automa-bench-pkg==1.0.0\"]\n# ///\n";
const PACKAGE_BODY: &str = "import automa_bench_pkg\nprint(automa_bench_pkg.VALUE)\n";
/// An environment's interpreter does not read the base interpreter's site-packages, whose `.pth` files may
/// import anything (on some hosts tens of ms of it) before a standard-library script's first line. A script
/// with packages that then adds them itself starts as that script does, so the difference is Automa's.
const BASE_SITE_PACKAGES: &str = "import site, sys\nfor path in site.getsitepackages([sys.base_prefix]):\n    \
                                  site.addsitedir(path)\n";
const MAKE_WHEEL: &str = include_str!("../../../../tests/fixtures/make_wheel.py");

pub async fn bench(python: Option<PathBuf>, uv: Option<PathBuf>) -> anyhow::Result<()> {
    let uv = match uv {
        Some(uv) => uv,
        None => on_path("uv").context("no uv: pass --uv or set AUTOMA_UV (this benchmark builds an environment)")?,
    };
    let dir = tempfile::tempdir()?;
    let interpreter = crate::bench::default_python(python)?;
    let wheels = dir.path().join("wheels");
    make_wheel(&interpreter, &wheels)?;
    let packages = vec![
        ("AUTOMA_UV", uv.to_string_lossy().into_owned()),
        ("AUTOMA_PACKAGE_FIND_LINKS", wheels.to_string_lossy().into_owned()),
        ("AUTOMA_PACKAGE_OFFLINE", "true".to_owned()),
    ];
    let spec = ServerSpec { profile: "strict", python: &interpreter, agent: true, env: packages };
    Running::sqlite(&spec).await?.with(async |running| measure(&interpreter, &mut running.session).await).await
}

async fn measure(interpreter: &Path, server: &mut Session) -> anyhow::Result<()> {
    let stdlib = server.add_script("stdlib", "stdlib.py", STDLIB_SCRIPT).await?;
    let packaged = server.add_script("packaged", "packaged.py", &format!("{PACKAGE_BLOCK}{PACKAGE_BODY}")).await?;
    let same_start_script = format!("{PACKAGE_BLOCK}{BASE_SITE_PACKAGES}{PACKAGE_BODY}");
    let same_start = server.add_script("same-start", "same_start.py", &same_start_script).await?;
    println!(
        "interpreter {}, profile strict, concurrency {CONCURRENCY}, wheel {} {} (offline find-links)",
        interpreter.display(),
        WHEEL.0,
        WHEEL.1
    );

    // The interpreter's files into the page cache before anything is timed.
    timed_batch(server, stdlib, 1).await?;
    let first = timed_batch(server, packaged, 1).await?;
    let built = first.batch.runs.first().context("no first run")?;
    let built_ms = environment_ms(built);
    anyhow::ensure!(built_ms > 0.0, "the first run with packages did not build its environment");
    println!(
        "first run with packages: environment built in {built_ms:.0} ms, run {:.0} ms (agent), {:.0} ms submit to end",
        agent_ms(built)?,
        first.batch.wall.as_secs_f64() * 1000.0
    );

    println!("{ROUNDS} rounds of {RUNS_PER_ROUND} runs of each script, the order turning each round; per-run ms:");
    println!("round  agent: stdlib same-start overhead | client: stdlib same-start overhead | plain: agent client");
    let scripts = [&stdlib, &same_start, &packaged];
    let mut agent = Columns::default();
    let mut client = Columns::default();
    let mut plain = Columns::default();
    let mut setup = Columns::default();
    let mut lookup = Vec::new();
    for round in 0..ROUNDS {
        let mut batches: [Option<TimedBatch>; 3] = Default::default();
        for turn in 0..scripts.len() {
            let which = (round + turn) % scripts.len();
            batches[which] = Some(timed_batch(server, *scripts[which], RUNS_PER_ROUND).await?);
        }
        let [Some(stdlib_batch), Some(same_start_batch), Some(packaged_batch)] = batches else {
            unreachable!("every script ran this round")
        };
        anyhow::ensure!(
            [&same_start_batch, &packaged_batch].iter().all(|timed| timed
                .batch
                .runs
                .iter()
                .all(|run| environment_ms(run) == 0.0)),
            "a run with packages did not find its environment cached"
        );
        agent.push(stdlib_batch.agent_mean()?, same_start_batch.agent_mean()?);
        setup.push(stdlib_batch.setup_ms, same_start_batch.setup_ms);
        lookup.push(lookup_us(server, &same_start_batch.batch).await?);
        client.push(stdlib_batch.client_per_run(), same_start_batch.client_per_run());
        plain.push(packaged_batch.agent_mean()?, packaged_batch.client_per_run());
        let last = plain.last();
        println!("{round:>5}  {} | {} | {:>7.2} {:>7.2}", agent.last(), client.last(), last.stdlib, last.packaged);
    }
    let plain = plain.median();
    println!("median {} | {} | {:>7.2} {:>7.2}", agent.median(), client.median(), plain.stdlib, plain.packaged);
    println!(
        "overhead of a cached environment: {:.2} ms per run (agent), {:.2} ms (client); first build {:.0} ms",
        agent.median().overhead,
        client.median().overhead,
        built_ms
    );
    println!(
        "the plain script with packages, which skips the base interpreter's site-packages: {:+.2} ms (agent), \
         {:+.2} ms (client) against the standard-library script",
        plain.stdlib - agent.median().stdlib,
        plain.packaged - client.median().stdlib
    );
    let setup = setup.median();
    lookup.sort_by(f64::total_cmp);
    println!(
        "of which, by the agent's clocks: sandbox setup {:.2} ms (stdlib) and {:.2} ms (packages), {:+.2} ms; \
         the cache lookup {:.0} µs (median of the rounds' means)",
        setup.stdlib,
        setup.packaged,
        setup.overhead,
        lookup[lookup.len() / 2]
    );
    Ok(())
}

/// Writes the test wheel with the tests' own fixture, run by the benchmark's interpreter.
fn make_wheel(interpreter: &Path, wheels: &Path) -> anyhow::Result<()> {
    let made = std::process::Command::new(interpreter)
        .args(["-I", "-c", MAKE_WHEEL])
        .arg(wheels)
        .args([WHEEL.0, WHEEL.1])
        .output()
        .context("the interpreter does not start")?;
    anyhow::ensure!(made.status.success(), "make_wheel.py failed: {}", String::from_utf8_lossy(&made.stderr));
    Ok(())
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// A batch, and the runs' mean sandbox setup (from the helper's start to the script's exec) by the server's
/// metrics.
struct TimedBatch {
    batch: Batch,
    setup_ms: f64,
}

async fn timed_batch(server: &mut Session, script: i64, count: usize) -> anyhow::Result<TimedBatch> {
    let before = sandbox_setup(server).await?;
    let batch = server.batch(script, count, false).await?;
    let after = sandbox_setup(server).await?;
    let setup_ms = (after.0 - before.0) * 1000.0 / (after.1 - before.1).max(1.0);
    Ok(TimedBatch { batch, setup_ms })
}

/// `automa_sandbox_setup_seconds`' sum and count.
async fn sandbox_setup(server: &Session) -> anyhow::Result<(f64, f64)> {
    let text = server.api.get_text("/metrics", &[]).await?;
    let value = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((value("automa_sandbox_setup_seconds_sum"), value("automa_sandbox_setup_seconds_count")))
}

fn environment_ms(run: &RunResponse) -> f64 {
    run.environment_ms.unwrap_or(0) as f64
}

/// The run as its agent recorded it: the script's time in the sandbox to the µs (`duration_ms` is whole ms)
/// plus the environment's preparation.
fn agent_ms(run: &RunResponse) -> anyhow::Result<f64> {
    let duration = run.started_at.zip(run.finished_at).map(|(start, end)| end - start);
    let duration = duration.and_then(|d| d.num_microseconds()).context("a finished run without times")?;
    Ok(duration as f64 / 1000.0 + environment_ms(run))
}

impl TimedBatch {
    fn agent_mean(&self) -> anyhow::Result<f64> {
        let runs = &self.batch.runs;
        Ok(runs.iter().map(agent_ms).sum::<anyhow::Result<f64>>()? / runs.len() as f64)
    }

    /// The wall time shared among the runs: each of `CONCURRENCY` slots ran its share one after another.
    fn client_per_run(&self) -> f64 {
        let runs = self.batch.runs.len();
        self.batch.wall.as_secs_f64() * 1000.0 * CONCURRENCY.min(runs) as f64 / runs as f64
    }
}

/// The mean time, in µs, from a run's `preparing environment` line to its `environment ready` line, both
/// stamped by the agent: the cached environment's lookup.
async fn lookup_us(server: &Session, batch: &Batch) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for id in &batch.ids {
        let logs: Value = server.api.get(&format!("/runs/{id}/logs"), &[]).await?.value;
        let stamp = |prefix: &str| {
            logs["chunks"].as_array().into_iter().flatten().find_map(|chunk| {
                let line = chunk["data"].as_str()?;
                line.starts_with(prefix).then(|| chunk["ts"].as_str()?.parse::<chrono::DateTime<chrono::Utc>>().ok())?
            })
        };
        let (Some(preparing), Some(ready)) = (stamp("preparing environment"), stamp("environment ready")) else {
            anyhow::bail!("run {id}'s log does not show its environment's preparation");
        };
        total += (ready - preparing).num_microseconds().unwrap_or(0) as f64;
    }
    Ok(total / batch.ids.len() as f64)
}

/// One round's per-run times of both scripts, or their medians.
#[derive(Clone, Copy)]
struct Row {
    stdlib: f64,
    packaged: f64,
    overhead: f64,
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:>7.2} {:>8.2} {:>8.2}", self.stdlib, self.packaged, self.overhead)
    }
}

#[derive(Default)]
struct Columns {
    rows: Vec<Row>,
}

impl Columns {
    fn push(&mut self, stdlib: f64, packaged: f64) {
        self.rows.push(Row { stdlib, packaged, overhead: packaged - stdlib });
    }

    fn last(&self) -> Row {
        self.rows[self.rows.len() - 1]
    }

    /// Each column's median on its own: the overhead is the median of the rounds' differences.
    fn median(&self) -> Row {
        let median = |pick: fn(&Row) -> f64| {
            let mut values: Vec<f64> = self.rows.iter().map(pick).collect();
            values.sort_by(f64::total_cmp);
            let middle = values.len() / 2;
            if values.len().is_multiple_of(2) { (values[middle - 1] + values[middle]) / 2.0 } else { values[middle] }
        };
        Row {
            stdlib: median(|row| row.stdlib),
            packaged: median(|row| row.packaged),
            overhead: median(|row| row.overhead),
        }
    }
}
