//! Exactly once on PostgreSQL: two `automa serve` processes on one database, 200 tasks on a one-second
//! interval for over 20 seconds. Every tick of every task produces exactly one run, and killing one server
//! half-way (kill -9, in the middle of whatever it was doing) loses no tick.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::{Value, json};
use sqlx::Connection;

#[path = "../../../tests/support/pg_database.rs"]
mod pg_database;

const AUTOMA: &str = env!("CARGO_BIN_EXE_automa");
const SECRET_KEY: &str = "exactly-once-test-key-0123456789abcdef";

#[path = "common/logs.rs"]
mod logs;

type Instant = chrono::DateTime<chrono::Utc>;
const TASKS: usize = 200;
/// Ticks each task must reach; the first half runs on both servers, the rest on the survivor.
const TICKS: i64 = 22;

fn serve(database_url: &str, data_dir: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(AUTOMA)
        .args(["serve", "--no-agent", "--bind", "127.0.0.1:0"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AUTOMA_DATABASE_URL", database_url)
        .env("AUTOMA_DATA_DIR", data_dir)
        .env("AUTOMA_SECRET_KEY", SECRET_KEY)
        .env("AUTOMA_LOG_FILE", data_dir.join("automa.log"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    // Read on a thread, so that a server that never says it is running fails the test instead of hanging it.
    let (found, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let address = stdout.lines().map_while(Result::ok).find_map(|line| {
            let rest = line.strip_prefix("Automa is running: open ")?.to_owned();
            Some(rest.split_whitespace().next()?.trim_end_matches('/').to_owned())
        });
        let _ = found.send(address);
    });
    if let Ok(Some(address)) = receive.recv_timeout(Duration::from_secs(60)) {
        return (child, address);
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("serve exited or did not say it was running within 60 s");
}

/// The fewest runs any task has.
async fn fewest_runs(db: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT COALESCE(MIN(n), 0) FROM (SELECT t.id, COUNT(r.id) AS n FROM tasks t LEFT JOIN runs r ON r.task_id = t.id GROUP BY t.id) c",
    )
    .fetch_one(db)
    .await
    .unwrap()
}

async fn wait_for_runs(db: &mut sqlx::PgConnection, at_least: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while fewest_runs(db).await < at_least {
        assert!(tokio::time::Instant::now() < deadline, "the schedulers fell behind");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits for a stopping server, killing it and failing the test after a minute.
fn wait_bounded(child: &mut Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server did not stop within 60 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_fire_every_tick_exactly_once() {
    let Some(server_url) = pg_database::postgres_url() else { return };
    let database = pg_database::Database::fresh(&server_url, "automa_once").await;
    let database_url = database.url.clone();
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut first, base) = serve(&database_url, dirs.0.path());
    let (mut second, _) = serve(&database_url, dirs.1.path());

    let client = reqwest::Client::new();
    client
        .post(format!("{base}/users"))
        .json(&json!({"email": "a@example.com", "password": "password-123"}))
        .send()
        .await
        .unwrap();
    let login: Value = client
        .post(format!("{base}/token"))
        .json(&json!({"username": "a@example.com", "password": "password-123"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().unwrap().to_owned();
    let script: Value = client
        .post(format!("{base}/scripts"))
        .bearer_auth(&token)
        .json(&json!({"name": "tick", "content": "print('tick')\n"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for index in 0..TASKS {
        let schedule = json!({"kind": "interval", "every_seconds": 1, "coalesce": false, "max_instances": 10_000});
        let task = client
            .post(format!("{base}/tasks"))
            .bearer_auth(&token)
            .json(&json!({"name": format!("tick-{index}"), "script_id": script["id"], "schedule": schedule}))
            .send()
            .await
            .unwrap();
        assert!(task.status().is_success());
    }

    let mut db = sqlx::PgConnection::connect(&database_url).await.unwrap();
    wait_for_runs(&mut db, TICKS / 2).await;
    second.kill().unwrap();
    second.wait().unwrap();
    wait_for_runs(&mut db, TICKS).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(wait_bounded(&mut first).success(), "a graceful stop exits 0");
    for dir in [&dirs.0, &dirs.1] {
        logs::assert_no_secrets_in_log(&dir.path().join("automa.log"), &[SECRET_KEY, "password-123", &token]);
    }

    let rows: Vec<(i64, String, Instant, Instant)> = sqlx::query_as(
        "SELECT r.task_id, r.status, r.scheduled_for, (t.schedule->>'at')::timestamptz FROM runs r \
         JOIN tasks t ON t.id = r.task_id ORDER BY r.task_id, r.scheduled_for",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    let mut by_task: std::collections::BTreeMap<i64, Vec<(String, Instant, Instant)>> = Default::default();
    for (task, status, tick, anchor) in rows {
        by_task.entry(task).or_default().push((status, tick, anchor));
    }
    assert_eq!(by_task.len(), TASKS);
    for (task, runs) in by_task {
        assert!(runs.len() as i64 >= TICKS, "task {task} has {} runs", runs.len());
        for (index, (status, tick, anchor)) in runs.iter().enumerate() {
            let expected = *anchor + chrono::Duration::seconds(index as i64 + 1);
            assert_eq!(*tick, expected, "task {task}: tick {index} is missing or doubled");
            assert_eq!(status, "queued", "task {task}: tick {tick} was not run: {status}");
        }
    }
}
