//! `automa bench suite` end to end with tiny settings, against the real binary and a real server child on
//! SQLite and PostgreSQL, so the command cannot rot. Only its shape is asserted: the tables and their rows,
//! never a timing (they depend on the machine and on whatever else runs).

use std::process::Command;

#[path = "../../../tests/support/pg_database.rs"]
mod pg_database;

const AUTOMA: &str = env!("CARGO_BIN_EXE_automa");

/// The suite with the fewest runs, requests and seconds each phase accepts (`idle_seconds` aside).
fn tiny_suite(dir: &std::path::Path, idle_seconds: &str) -> Command {
    let mut command = Command::new(AUTOMA);
    command
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TMPDIR", dir)
        .args(["bench", "suite", "--runs", "2", "--single-runs", "2", "--connections", "2", "--load-seconds", "1"])
        .args([
            "--schedule-tasks",
            "3",
            "--idle-seconds",
            idle_seconds,
            "--history-runs",
            "50",
            "--history-tasks",
            "3",
        ]);
    command
}

/// The tiny suite with more flags and environment; its standard output.
fn suite(extra: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = tiny_suite(dir.path(), "1").args(extra).envs(env.iter().copied()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// The summary's row for `measurement`, split into its cells (phase, measurement, value, ...).
fn summary_row<'a>(stdout: &'a str, measurement: &str) -> Vec<&'a str> {
    let summary = stdout.split("## summary").nth(1).expect("a summary");
    let row = summary.lines().find(|line| line.contains(measurement)).unwrap_or_else(|| panic!("no {measurement}"));
    row.trim_matches('|').split('|').map(str::trim).collect()
}

#[test]
fn every_phase_prints_its_table_and_the_summary_holds_every_row_with_a_verdict() {
    let stdout = suite(&[], &[]);
    for phase in ["throughput", "single run", "authenticated GET", "scheduler", "idle", "start-up", "history"] {
        assert!(stdout.contains(&format!("\n## {phase}")), "no {phase} phase:\n{stdout}");
    }
    for (phase, measurement) in [
        ("throughput", "none: wall of 2 runs"),
        ("throughput", "strict: wall of 2 runs"),
        ("single run", "none: submit → finished p50"),
        ("single run", "strict: duration_ms p50"),
        ("authenticated GET", "GET /tasks/{id} (bearer) against GET /health: p99"),
        ("scheduler", "3 tasks due in one second: lateness p99"),
        ("idle", "wake-ups over 1 s idle"),
        ("start-up", "spawn → ready, empty SQLite"),
        ("history", "SQLite: GET /runs?status=failed p99"),
        ("history", "SQLite: wall of 2 runs (none)"),
    ] {
        let row = summary_row(&stdout, measurement);
        assert_eq!(row[0], phase, "{row:?}");
        assert!(row[2].split_whitespace().next().unwrap().parse::<f64>().is_ok(), "no value: {row:?}");
        assert!(["met", "NOT met"].contains(&row[6]), "no verdict: {row:?}");
    }
    // Each baseline is measured in the same run: the floor beside the throughput, /health beside /tasks/{id}.
    assert!(!summary_row(&stdout, "none: wall of 2 runs")[3].is_empty());
    assert!(!summary_row(&stdout, "GET /tasks/{id} (bearer) against GET /health: req/s")[3].is_empty());
    assert!(!stdout.contains("PostgreSQL"), "no --database, yet PostgreSQL was measured:\n{stdout}");
    // The resident size is shown with its two parts, read at the same moment.
    let mib =
        |measurement: &str| summary_row(&stdout, measurement)[2].split_whitespace().next().unwrap().parse::<f64>();
    let rss = mib("RSS after a login").unwrap();
    let parts = mib("of which anonymous").unwrap() + mib("of which mapped files").unwrap();
    assert!(parts > 0.0 && (rss - parts).abs() <= 0.2, "RSS {rss} MiB, parts {parts} MiB:\n{stdout}");
}

#[tokio::test]
async fn the_history_phase_measures_postgresql_on_a_database_of_its_own_that_it_drops() {
    let Some(server_url) = pg_database::postgres_url() else { return };
    let before = bench_databases(&server_url).await;
    // From the environment, as the README advises: a password in the command line is visible to every user.
    let stdout = suite(&["--only", "history"], &[("AUTOMA_BENCH_DATABASE_URL", &server_url)]);
    let row = summary_row(&stdout, "PostgreSQL: GET /runs?task_id&status p99");
    assert_eq!(row[0], "history", "{row:?}");
    assert!(!row[3].is_empty(), "no empty-database baseline: {row:?}");
    assert!(summary_row(&stdout, "PostgreSQL: spawn → ready")[2].ends_with("ms"));
    assert!(!stdout.contains("throughput"), "--only history ran more:\n{stdout}");
    assert_eq!(bench_databases(&server_url).await, before, "a throwaway database was left behind");
}

/// The names of the suite's databases on the server (none once a suite has ended).
async fn bench_databases(server_url: &str) -> Vec<String> {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(server_url).await.unwrap();
    let names: Vec<(String,)> = sqlx::query_as("SELECT datname FROM pg_database WHERE datname LIKE 'automa_bench_%'")
        .fetch_all(&mut admin)
        .await
        .unwrap();
    names.into_iter().map(|(name,)| name).collect()
}

#[test]
fn a_malformed_database_url_is_refused_before_anything_is_measured() {
    let out = Command::new(AUTOMA)
        .env_clear()
        .args(["bench", "suite", "--only", "history", "--database", "postgres://nowhere"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("must be a URL ending with /DATABASE"), "{stderr}");
}

/// The pid of a child of `parent` whose command line holds `word`, if there is one now.
fn child_running(parent: u32, word: &str) -> Option<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{parent}/task")).ok()?;
    let children: Vec<u32> = tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("children")).ok())
        .flat_map(|list| list.split_whitespace().filter_map(|pid| pid.parse().ok()).collect::<Vec<u32>>())
        .collect();
    children.into_iter().find(|pid| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        cmdline.split(|byte| *byte == 0).any(|argument| argument == word.as_bytes())
    })
}

/// Whether the process is gone (or a zombie nobody reaped yet).
fn ended(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |stat| stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
}

/// The server a suite starts has its admin before it listens: with the suite frozen the moment the server is
/// spawned, so that it cannot sign in, nobody else can sign up as the first user and become admin. And the
/// server does not outlive a suite that is killed.
#[tokio::test]
async fn the_suites_server_has_its_admin_before_it_listens_and_dies_with_the_suite() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let dir = tempfile::tempdir().unwrap();
    let mut bench = tiny_suite(dir.path(), "600")
        .args(["--only", "idle"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let server = loop {
        if let Some(server) = child_running(bench.id(), "serve") {
            break server;
        }
        assert!(bench.try_wait().unwrap().is_none(), "the suite ended before it started a server");
        assert!(std::time::Instant::now() < deadline, "no server was started");
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    kill(Pid::from_raw(bench.id() as i32), Signal::SIGSTOP).unwrap();
    let environ = std::fs::read(format!("/proc/{server}/environ")).unwrap();
    let bind = environ
        .split(|byte| *byte == 0)
        .find_map(|variable| variable.strip_prefix(b"AUTOMA_BIND="))
        .map(|bind| String::from_utf8_lossy(bind).into_owned())
        .expect("the server's address");
    let client = reqwest::Client::new();
    while !client.get(format!("http://{bind}/ready")).send().await.is_ok_and(|reply| reply.status().is_success()) {
        assert!(!ended(server) && std::time::Instant::now() < deadline, "the server never got ready");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let squatter = serde_json::json!({"email": "squatter@example.com", "password": "squatter-password-1234"});
    let signed_up = client.post(format!("http://{bind}/users")).json(&squatter).send().await.unwrap().status();

    bench.kill().unwrap();
    bench.wait().unwrap();
    while !ended(server) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let outlived = !ended(server);
    if outlived {
        let _ = kill(Pid::from_raw(server as i32), Signal::SIGKILL);
    }
    assert!(signed_up.is_client_error(), "a stranger signed up first on the suite's server: {signed_up}");
    assert!(!outlived, "the server outlived the killed suite");
}
