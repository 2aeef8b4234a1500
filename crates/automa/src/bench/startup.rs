//! Start-up: from spawning `automa serve` until its first 200 from `GET /ready`, polled back to back, on an
//! empty database (the history phase measures it on a big one). Baseline: spawning this executable for
//! `--version` until it exits, what any start costs before the server's own work.

use std::time::Instant;

use crate::bench::Settings;
use crate::bench::report::{Measurement, Report, Samples, Target};
use crate::bench::server::{DataDir, Server, ServerSpec};

pub const PHASE: &str = "start-up";

/// Starts measured; their median is reported.
const STARTS: usize = 3;

pub async fn startup(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    println!("\n## {PHASE}: spawn → first 200 from GET /ready, median of {STARTS} starts on a fresh SQLite database");
    let mut version = Vec::new();
    let mut ready = Vec::new();
    for _ in 0..STARTS {
        let spawned = Instant::now();
        let out = tokio::process::Command::new(std::env::current_exe()?).arg("--version").output().await?;
        anyhow::ensure!(out.status.success(), "automa --version failed");
        version.push(spawned.elapsed().as_secs_f64() * 1000.0);
        let data = DataDir::new(None).await?;
        let spec = ServerSpec { profile: "strict", python: &settings.python, agent: true, env: Vec::new() };
        let server = Server::start(&data, &spec).await?;
        ready.push(server.startup.as_secs_f64() * 1000.0);
        server.stop().await?;
    }
    report.add(
        PHASE,
        Measurement::new(
            "spawn → ready, empty SQLite (baseline: automa --version)",
            Samples::new(ready).median(),
            "ms",
        )
        .against(Samples::new(version).median())
        .target(Target::AtMost(100.0)),
    );
    report.print_phase(PHASE);
    Ok(())
}
