//! Startup cost of the sandbox: runs `hi.py` RUNS times at concurrency 2, bare (the interpreter spawned
//! directly) against `Profile::None`, `Profile::Strict` and `Profile::Strict` with network (slirp4netns and
//! the egress policy), and prints wall times, ratios and the per-run overhead over bare, and the CPU time the
//! runs' process trees used per run, which a busy machine distorts less than wall time. `none warm` and
//! `strict warm` ask for warm starts (the first run of each slot starts cold and prepares the next); for every
//! sandboxed mode it also prints the median of the runs' own `duration`, and of one run at a time on an idle
//! system. `cargo bench -p automa-runner --bench startup`; AUTOMA_BENCH_RUNS overrides the count,
//! AUTOMA_BENCH_PYTHON the interpreter (default: the one behind `python3`) and AUTOMA_BENCH_DISABLE
//! (comma-separated layer names, e.g. `net_ns,landlock`) finds what a layer costs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use automa_runner::{HelperCommand, Limits, Profile, RunSpec, Sandbox, SandboxConfig};
use tokio::sync::{mpsc, watch};

const CONCURRENCY: usize = 2;
const SCRIPT: &str = "print('hi')\n";

fn main() {
    let runs: usize = std::env::var("AUTOMA_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let python = std::env::var_os("AUTOMA_BENCH_PYTHON").map(std::path::PathBuf::from);
    let interpreter = automa_runner::resolve_interpreter(python.as_deref()).expect("python3");
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("hi.py");
    std::fs::write(&script, SCRIPT).expect("write hi.py");
    let helper = HelperCommand { program: env!("CARGO_BIN_EXE_automa-sandbox-helper").into(), args: Vec::new() };

    let cpu_before = children_cpu();
    let bare = runtime.block_on(measure(runs, {
        let interpreter = interpreter.clone();
        move || {
            let interpreter = interpreter.clone();
            let script = script.clone();
            async move {
                let out = tokio::process::Command::new(&interpreter).arg(&script).env_clear().output().await;
                assert_eq!(out.expect("bare run").stdout, b"hi\n");
            }
        }
    }));
    let mut results = vec![("bare", bare, children_cpu() - cpu_before)];
    let mut durations = Vec::new();
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
        let concurrent = Arc::new(std::sync::Mutex::new(Vec::new()));
        let elapsed = runtime.block_on(measure(runs, {
            let (sandbox, concurrent) = (sandbox.clone(), concurrent.clone());
            move || {
                let (sandbox, concurrent) = (sandbox.clone(), concurrent.clone());
                async move {
                    let (tx, mut rx) = mpsc::channel(8);
                    let (_cancel, cancel_rx) = watch::channel(false);
                    let spec = RunSpec { warm, ..hi(network) };
                    let report = sandbox.run(spec, tx, cancel_rx).await.expect("sandboxed run");
                    assert_eq!(report.exit_code, Some(0), "{report:?}");
                    assert_eq!(rx.recv().await.map(|c| c.data), Some("hi\n".to_owned()));
                    concurrent.lock().expect("durations").push(report.duration);
                }
            }
        }));
        results.push((name, elapsed, children_cpu() - cpu_before));
        let alone = runtime.block_on(async {
            let mut alone = Vec::new();
            for _ in 0..runs.min(50) {
                let (tx, _rx) = mpsc::channel(8);
                let (_cancel, cancel_rx) = watch::channel(false);
                let spec = RunSpec { warm, ..hi(network) };
                let report = sandbox.run(spec, tx, cancel_rx).await.expect("sandboxed run");
                alone.push(report.duration);
                // The slot's next sandbox is prepared in the background: one run at a time means after it.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            alone
        });
        let concurrent = std::mem::take(&mut *concurrent.lock().expect("durations"));
        durations.push((name, median(concurrent), median(alone)));
    }

    let base = results[0].1;
    let per_run = |d: Duration| d.as_secs_f64() * 1000.0 * CONCURRENCY as f64 / runs as f64;
    println!("{runs} runs of hi.py at concurrency {CONCURRENCY} ({})", interpreter.display());
    let cpu_per_run = |d: Duration| d.as_secs_f64() * 1000.0 / runs as f64;
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
    println!("{:<12} {:>26} {:>26}", "mode", "median duration ms (conc.)", "median duration ms (alone)");
    for (name, concurrent, alone) in durations {
        println!("{name:<12} {:>26.2} {:>26.2}", concurrent.as_secs_f64() * 1000.0, alone.as_secs_f64() * 1000.0);
    }
}

fn hi(network: bool) -> RunSpec {
    RunSpec {
        script_name: "hi.py".into(),
        script: SCRIPT.into(),
        args: Vec::new(),
        env: Vec::new(),
        limits: Limits::default(),
        network,
        payload: None,
        environment: None,
        warm: false,
    }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or_default()
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
async fn measure<F, Fut>(runs: usize, job: F) -> Duration
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let job = Arc::new(job);
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
