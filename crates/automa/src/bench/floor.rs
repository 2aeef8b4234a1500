//! The baseline every run is compared with: the same client starting the interpreter on the same file
//! directly, output captured, with nothing of Automa in between.

use std::path::Path;
use std::time::{Duration, Instant};

/// The script every run-path phase runs.
pub const SCRIPT: &str = "print('hi')\n";

/// `runs` starts of `interpreter script`, `concurrency` at once: the wall time of all of them.
pub async fn batch(interpreter: &Path, script: &Path, runs: usize, concurrency: usize) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let (interpreter, script) = (interpreter.to_path_buf(), script.to_path_buf());
        // The runs shared out as the agent's slots share them: the first workers take one more if they do not
        // divide evenly.
        let share = runs / concurrency + usize::from(worker < runs % concurrency);
        workers.spawn(async move {
            for _ in 0..share {
                bare_start(&interpreter, &script).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    Ok(start.elapsed())
}

/// One start of the interpreter on the script, output captured; its wall time.
pub async fn bare_start(interpreter: &Path, script: &Path) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let out = tokio::process::Command::new(interpreter).arg(script).output().await?;
    let elapsed = start.elapsed();
    anyhow::ensure!(out.status.success() && out.stdout == b"hi\n", "the interpreter failed on {}", script.display());
    Ok(elapsed)
}
