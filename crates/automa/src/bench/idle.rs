//! The server at rest after real use: its resident memory after a login and a few runs, and how often its
//! threads wake up while nothing happens (no client connected, no run, the embedded agent waiting for work).

use std::time::Duration;

use crate::bench::Settings;
use crate::bench::floor;
use crate::bench::report::{Measurement, Report, Target};
use crate::bench::server::{Running, ServerSpec};

pub const PHASE: &str = "idle";

/// Runs before the server is left alone, as in issue 12's "after first login and 2 runs".
const RUNS: usize = 2;
/// Time for the last run's clean-up and the connections' close before counting starts.
const SETTLE: Duration = Duration::from_secs(2);

pub async fn idle(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let seconds = settings.idle_seconds;
    println!(
        "\n## {PHASE}: after a login and {RUNS} runs, {seconds} s with no client; wake-ups = growth of the voluntary \
         and involuntary context switches summed over the server's threads (/proc/PID/task/*/status), per second: \
         a thread waking and sleeping again switches once voluntarily; involuntary switches (preemptions) add \
         to it on a busy machine without more wake-ups"
    );
    let spec = ServerSpec { profile: "strict", python: &settings.python, agent: true, env: Vec::new() };
    let running = Running::sqlite(&spec).await?;
    let ready_rss = running.server.ready_rss_kib;
    let (memory, wake_ups) = running
        .with(async |running| {
            let script = running.session.add_script("hi", "hi.py", floor::SCRIPT).await?;
            running.session.batch(script, RUNS, false).await?;
            running.session.disconnect()?;
            tokio::time::sleep(SETTLE).await;
            let before = running.server.context_switches()?;
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            let after = running.server.context_switches()?;
            let per_second = |after: u64, before: u64| after.saturating_sub(before) as f64 / seconds as f64;
            Ok((running.server.rss_parts_kib()?, (per_second(after.0, before.0), per_second(after.1, before.1))))
        })
        .await?;
    let (rss, anonymous, files) = memory;
    let (voluntary, involuntary) = wake_ups;
    let mib = |kib: u64| kib as f64 / 1024.0;
    report.add(
        PHASE,
        Measurement::new(
            format!("RSS after a login, {RUNS} runs and {seconds} s idle (baseline: when ready)"),
            mib(rss),
            "MiB",
        )
        .against(mib(ready_rss))
        .target(Target::AtMost(20.0)),
    );
    report.add(PHASE, Measurement::new("of which anonymous (heap, stacks)", mib(anonymous), "MiB"));
    report.add(
        PHASE,
        Measurement::new("of which mapped files (the binary's code, shared through the page cache)", mib(files), "MiB"),
    );
    report.add(
        PHASE,
        Measurement::new(format!("wake-ups over {seconds} s idle"), voluntary + involuntary, "/s")
            .target(Target::AtMost(1.0)),
    );
    report.add(
        PHASE,
        Measurement::new(format!("of which involuntary (preempted while awake, {seconds} s)"), involuntary, "/s"),
    );
    report.print_phase(PHASE);
    Ok(())
}
