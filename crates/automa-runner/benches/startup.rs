//! Startup cost of the sandbox: runs `hi.py` RUNS times at concurrency 2, bare (the interpreter spawned
//! directly) against `Profile::None`, `Profile::Strict` and `Profile::Strict` with network (slirp4netns and
//! the egress policy), and prints wall times, ratios and the per-run overhead over bare, and the CPU time the
//! runs' process trees used per run, which a busy machine distorts less than wall time. `none warm` and
//! `strict warm` ask for warm starts (the first run of each slot starts cold and prepares the next).
//! `cargo bench -p automa-runner --bench startup`; AUTOMA_BENCH_RUNS overrides the count, AUTOMA_BENCH_PYTHON
//! the interpreter (default Debian's `/usr/bin/python3`, not a slow pyenv build), and AUTOMA_BENCH_DISABLE
//! (comma-separated layer names, e.g. `net_ns,landlock`) finds what a layer costs, and AUTOMA_BENCH_PAUSE_MS
//! pauses before each single run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use automa_runner::{HelperCommand, Limits, Profile, RunSpec, Sandbox, SandboxConfig};
use tokio::sync::{mpsc, watch};

const CONCURRENCY: usize = 2;
const SCRIPT: &str = "print('hi')\n";

fn main() {
    let runs: usize = std::env::var("AUTOMA_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let python = std::env::var_os("AUTOMA_BENCH_PYTHON").unwrap_or_else(|| "/usr/bin/python3".into());
    let interpreter = automa_runner::resolve_interpreter(Some(python.as_ref())).expect("python3");
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("hi.py");
    std::fs::write(&script, SCRIPT).expect("write hi.py");
    let helper = HelperCommand { program: env!("CARGO_BIN_EXE_automa-sandbox-helper").into(), args: Vec::new() };

    let cpu_before = children_cpu();
    let bare_job = Arc::new({
        let interpreter = interpreter.clone();
        move || {
            let interpreter = interpreter.clone();
            let script = script.clone();
            async move {
                let start = Instant::now();
                let out = tokio::process::Command::new(&interpreter).arg(&script).env_clear().output().await;
                assert_eq!(out.expect("bare run").stdout, b"hi\n");
                start.elapsed()
            }
        }
    });
    let bare = runtime.block_on(measure(runs, bare_job.clone()));
    let mut results = vec![("bare", bare, children_cpu() - cpu_before)];
    let mut singles = vec![("bare", runtime.block_on(measure_single(runs, bare_job.clone())))];
    for (name, profile, network, warm) in [
        ("none", Profile::None, false, false),
        ("strict", Profile::Strict, false, false),
        ("network", Profile::Strict, true, false),
        ("none warm", Profile::None, false, true),
        ("strict warm", Profile::Strict, false, true),
    ] {
        let mut config = SandboxConfig::new(profile, interpreter.clone(), helper.clone(), dir.path().join(name));
        config.slots = CONCURRENCY;
        config.disabled_layers = disabled_layers();
        let sandbox = Arc::new(Sandbox::new(config).expect("sandbox"));
        let cpu_before = children_cpu();
        let job = Arc::new(move || {
            let sandbox = sandbox.clone();
            async move {
                let (tx, mut rx) = mpsc::channel(8);
                let (_cancel, cancel_rx) = watch::channel(false);
                let spec = RunSpec {
                    script_name: "hi.py".into(),
                    script: SCRIPT.into(),
                    args: Vec::new(),
                    env: Vec::new(),
                    limits: Limits::default(),
                    network,
                    payload: None,
                    environment: None,
                    warm,
                };
                let report = sandbox.run(spec, tx, cancel_rx).await.expect("sandboxed run");
                assert_eq!(report.exit_code, Some(0), "{report:?}");
                assert_eq!(rx.recv().await.map(|c| c.data), Some("hi\n".to_owned()));
                report.duration
            }
        });
        let elapsed = runtime.block_on(measure(runs, job.clone()));
        singles.push((name, runtime.block_on(measure_single(runs, job.clone()))));
        // The slot helpers' CPU time is theirs until they exit: with the sandbox.
        drop(job);
        results.push((name, elapsed, children_cpu() - cpu_before));
    }

    let base = results[0].1;
    let per_run = |d: Duration| d.as_secs_f64() * 1000.0 * CONCURRENCY as f64 / runs as f64;
    println!("{runs} runs of hi.py at concurrency {CONCURRENCY} ({})", interpreter.display());
    // Every run counts, the single ones too.
    let cpu_per_run = |d: Duration| d.as_secs_f64() * 1000.0 / (runs + single_runs(runs)) as f64;
    println!(
        "{:<8} {:>10} {:>8} {:>14} {:>18} {:>14}",
        "mode", "wall ms", "ratio", "ms per run", "overhead ms/run", "cpu ms/run"
    );
    for (name, elapsed, cpu) in &results {
        println!(
            "{:<8} {:>10.0} {:>8.2} {:>14.2} {:>18.2} {:>14.2}",
            name,
            elapsed.as_secs_f64() * 1000.0,
            elapsed.as_secs_f64() / base.as_secs_f64(),
            per_run(*elapsed),
            per_run(*elapsed) - per_run(base),
            cpu_per_run(*cpu),
        );
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let bare_median = singles[0].1.1;
    println!("{} single runs, one at a time: the run's own duration", single_runs(runs));
    println!("{:<8} {:>10} {:>10} {:>18}", "mode", "min ms", "median ms", "median - bare ms");
    for (name, (min, median)) in &singles {
        println!("{:<8} {:>10.2} {:>10.2} {:>18.2}", name, ms(*min), ms(*median), ms(*median) - ms(bare_median));
    }
}

fn single_runs(runs: usize) -> usize {
    (runs / 4).max(10)
}

/// User and system time of every reaped descendant so far: the helpers, the interpreters and slirp4netns.
fn children_cpu() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: see above; the pointer is valid for the call.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

fn disabled_layers() -> Vec<automa_runner::Layer> {
    std::env::var("AUTOMA_BENCH_DISABLE")
        .unwrap_or_default()
        .split(',')
        .filter(|name| !name.is_empty())
        .map(|name| serde_json::from_value(serde_json::Value::from(name)).expect("a layer name"))
        .collect()
}

/// Runs `job` `runs` times, `CONCURRENCY` at a time, and returns the wall time.
async fn measure<F, Fut>(runs: usize, job: Arc<F>) -> Duration
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Duration> + Send + 'static,
{
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (job, next) = (job.clone(), next.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < runs {
                    job().await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
    start.elapsed()
}

/// Runs `job` [`single_runs`] times, one at a time, and returns the minimum and median of
/// the durations it reports: a run's own duration on an otherwise idle sandbox.
/// `AUTOMA_BENCH_PAUSE_MS` between single runs (default none): some costs show only after a pause, as between
/// the runs of an idle agent (the first move into a cgroup after one waits for an RCU grace period).
fn single_pause() -> Duration {
    let ms = std::env::var("AUTOMA_BENCH_PAUSE_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_millis(ms)
}

async fn measure_single<F, Fut>(runs: usize, job: Arc<F>) -> (Duration, Duration)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Duration> + Send + 'static,
{
    let mut durations = Vec::new();
    for _ in 0..single_runs(runs) {
        tokio::time::sleep(single_pause()).await;
        durations.push(job().await);
    }
    durations.sort();
    (durations[0], durations[durations.len() / 2])
}
