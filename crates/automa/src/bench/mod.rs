//! `automa bench`: the benchmark suite of issue 12 (`suite`), measured from outside, and what a cached
//! environment adds to a run (`environments`). Every server measured is `automa serve` started from this
//! executable as a child process on a fresh data directory; the suite is its client over HTTP and measures
//! the baselines (bare interpreter starts, an unauthenticated route, an empty database) in the same run.

mod environments;
mod floor;
mod history;
mod idle;
mod load;
mod postgres;
mod report;
mod runs;
mod schedule;
mod server;
mod startup;

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

pub use environments::bench as environments;

/// What `automa bench` measures.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// The performance suite: throughput, a single run, authenticated reads under load, the scheduler's
    /// lateness, the idle server, start-up and a long history, each against a baseline measured in the same
    /// run, printed as tables with issue 12's targets and a Markdown summary.
    Suite(SuiteFlags),
    /// What a cached environment adds to a run, and its first build.
    Environments {
        /// The interpreter to measure (default: /usr/bin/python3, else the real executable behind python3).
        #[arg(long, env = "AUTOMA_PYTHON")]
        python: Option<PathBuf>,
        /// The uv that builds environments (default: `uv` on PATH).
        #[arg(long, env = "AUTOMA_UV")]
        uv: Option<PathBuf>,
    },
}

/// The suite's phases, in the order they run.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    Throughput,
    Single,
    Get,
    Schedule,
    Idle,
    Startup,
    History,
}

#[derive(Args)]
pub struct SuiteFlags {
    /// The interpreter runs and the floor use (default: /usr/bin/python3, else the real executable behind
    /// python3).
    #[arg(long)]
    python: Option<PathBuf>,
    /// A PostgreSQL server (postgres://user:password@host/database, a role that may create databases): the
    /// history phase also runs there, each server on a database of its own, dropped afterwards. Better from
    /// AUTOMA_BENCH_DATABASE_URL: a password in the command line is visible to every user of the host.
    #[arg(long, env = "AUTOMA_BENCH_DATABASE_URL", hide_env_values = true)]
    database: Option<String>,
    /// Only these phases (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Phase>,
    /// Runs in each throughput batch (and the history phase's).
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// Runs one after another in the single-run phase.
    #[arg(long, default_value_t = 30)]
    single_runs: usize,
    /// Connections of the load generator.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds each route is loaded, after a second of warm-up.
    #[arg(long, default_value_t = 10)]
    load_seconds: u64,
    /// How many one-off tasks come due in the same second; each number is a burst on a fresh server.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    schedule_tasks: Vec<usize>,
    /// Seconds the server is left idle while its wake-ups are counted.
    #[arg(long, default_value_t = 60)]
    idle_seconds: u64,
    /// Finished runs seeded for the history phase.
    #[arg(long, default_value_t = 1_000_000)]
    history_runs: u64,
    /// Tasks seeded for the history phase.
    #[arg(long, default_value_t = 10_000)]
    history_tasks: u32,
}

/// The flags, resolved, and the script the floor starts.
pub struct Settings {
    python: PathBuf,
    /// `hi.py`, for the bare starts.
    script: PathBuf,
    database: Option<String>,
    runs: usize,
    single_runs: usize,
    connections: usize,
    load_seconds: u64,
    schedule_tasks: Vec<usize>,
    idle_seconds: u64,
    history_runs: u64,
    history_tasks: u32,
}

/// The interpreter issue 12 measures with: the system's, not a slower one first on PATH (a pyenv build may
/// take five times as long to start, which would hide Automa's own costs in the ratios).
pub fn default_python(python: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let system = PathBuf::from("/usr/bin/python3");
    let chosen = match python {
        Some(python) => Some(python),
        None => system.exists().then_some(system),
    };
    Ok(automa_runner::resolve_interpreter(chosen.as_deref())?)
}

pub async fn suite(flags: SuiteFlags) -> anyhow::Result<()> {
    anyhow::ensure!(flags.runs > 0 && flags.single_runs > 0 && flags.connections > 0, "counts must be at least 1");
    anyhow::ensure!(flags.schedule_tasks.iter().all(|tasks| *tasks > 0), "--schedule-tasks must be at least 1");
    anyhow::ensure!(flags.load_seconds > 0 && flags.idle_seconds > 0, "durations must be at least 1 second");
    if let Some(url) = &flags.database {
        postgres::check_url(url)?;
    }
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("hi.py");
    std::fs::write(&script, floor::SCRIPT)?;
    let settings = Settings {
        python: default_python(flags.python)?,
        script,
        database: flags.database,
        runs: flags.runs,
        single_runs: flags.single_runs,
        connections: flags.connections,
        load_seconds: flags.load_seconds,
        schedule_tasks: flags.schedule_tasks,
        idle_seconds: flags.idle_seconds,
        history_runs: flags.history_runs,
        history_tasks: flags.history_tasks,
    };
    println!(
        "automa {} bench suite: interpreter {}, {} core(s); the server is `automa serve` in a child process",
        env!("CARGO_PKG_VERSION"),
        settings.python.display(),
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    let mut report = report::Report::default();
    for &phase in Phase::value_variants() {
        if !flags.only.is_empty() && !flags.only.contains(&phase) {
            continue;
        }
        match phase {
            Phase::Throughput => runs::throughput(&settings, &mut report).await?,
            Phase::Single => runs::single(&settings, &mut report).await?,
            Phase::Get => load::authenticated_get(&settings, &mut report).await?,
            Phase::Schedule => schedule::lateness(&settings, &mut report).await?,
            Phase::Idle => idle::idle(&settings, &mut report).await?,
            Phase::Startup => startup::startup(&settings, &mut report).await?,
            Phase::History => history::history(&settings, &mut report).await?,
        }
    }
    println!("\n## summary\n\n{}", report.summary());
    Ok(())
}
