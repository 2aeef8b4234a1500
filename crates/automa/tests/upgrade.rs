//! Upgrades: `automa serve` on a database an older version left behind (every migration applied but the
//! newest) applies the pending migration itself, or, with `AUTOMA_AUTO_MIGRATE=false`, refuses to start and
//! names the pending migration and `automa migrate`. On SQLite, and on PostgreSQL when `AUTOMA_TEST_PG_URL` is
//! set.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sqlx::Connection;

#[path = "../../../tests/support/pg_database.rs"]
mod pg_database;

const AUTOMA: &str = env!("CARGO_BIN_EXE_automa");
const PATIENCE: Duration = Duration::from_secs(60);

fn automa(dir: &Path, database_url: &str) -> Command {
    let mut command = Command::new(AUTOMA);
    command
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AUTOMA_DATABASE_URL", database_url)
        .env("AUTOMA_SECRET_KEY", "upgrade-test-key-0123456789abcdefghij")
        .env("AUTOMA_NO_AGENT", "true")
        .args(["serve", "--bind", "127.0.0.1:0"]);
    command
}

/// This build's migrations for `backend`, oldest first.
fn migrations(backend: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../automa-store/migrations").join(backend);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().path()).collect();
    files.sort();
    files
}

/// A folder holding every migration but the newest, as the previous version shipped them; and the newest's
/// name as `serve` reports it (`0005_audit_keyed`).
fn previous_version(backend: &str, into: &Path) -> (PathBuf, String) {
    let mut files = migrations(backend);
    let newest = files.pop().unwrap();
    let older = into.join(format!("migrations-{backend}"));
    std::fs::create_dir_all(&older).unwrap();
    for file in files {
        std::fs::copy(&file, older.join(file.file_name().unwrap())).unwrap();
    }
    (older, newest.file_stem().unwrap().to_string_lossy().into_owned())
}

/// Runs `serve` expecting a refusal; returns what it wrote. A server that starts after all is killed after a
/// bounded wait, so a regression fails instead of hanging.
fn refused(command: &mut Command) -> String {
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success());
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            return stderr;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("serve started on an older database although AUTOMA_AUTO_MIGRATE=false");
}

/// Starts `serve`, waits (bounded) until it says it is running, and stops it with SIGTERM; returns its stderr.
fn serves_and_stops(command: &mut Command) -> String {
    let mut child: Child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (found, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let running = stdout.lines().map_while(Result::ok).any(|line| line.starts_with("Automa is running"));
        let _ = found.send(running);
    });
    let running = receive.recv_timeout(PATIENCE).unwrap_or(false);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let deadline = std::time::Instant::now() + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(running, "serve did not start on the older database: {stderr}");
    stderr
}

async fn applied(database_url: &str) -> i64 {
    let query = "SELECT COUNT(*) FROM _sqlx_migrations WHERE success";
    if database_url.starts_with("sqlite:") {
        let mut db = sqlx::SqliteConnection::connect(database_url).await.unwrap();
        sqlx::query_scalar(query).fetch_one(&mut db).await.unwrap()
    } else {
        let mut db = sqlx::PgConnection::connect(database_url).await.unwrap();
        sqlx::query_scalar(query).fetch_one(&mut db).await.unwrap()
    }
}

async fn upgrade(backend: &str, database_url: &str, dir: &Path) {
    let (older, newest) = previous_version(backend, dir);
    let migrator = sqlx::migrate::Migrator::new(older.as_path()).await.unwrap();
    if backend == "sqlite" {
        let mut db = sqlx::SqliteConnection::connect(database_url).await.unwrap();
        migrator.run(&mut db).await.unwrap();
    } else {
        let mut db = sqlx::PgConnection::connect(database_url).await.unwrap();
        migrator.run(&mut db).await.unwrap();
    }
    let total = migrations(backend).len() as i64;
    assert_eq!(applied(database_url).await, total - 1, "the database is one migration behind");

    let stderr = refused(automa(dir, database_url).env("AUTOMA_AUTO_MIGRATE", "false"));
    assert!(stderr.contains("1 pending migration(s)") && stderr.contains(&newest), "names what is pending: {stderr}");
    assert!(stderr.contains("automa migrate"), "says how to apply it: {stderr}");
    assert_eq!(applied(database_url).await, total - 1, "a refusal changes nothing");

    let stderr = serves_and_stops(&mut automa(dir, database_url));
    assert!(stderr.contains("applying pending database migrations"), "{stderr}");
    assert_eq!(applied(database_url).await, total, "serve applied the pending migration itself");
    serves_and_stops(automa(dir, database_url).env("AUTOMA_AUTO_MIGRATE", "false"));
}

#[tokio::test]
async fn serve_upgrades_an_older_sqlite_database_or_refuses_when_told_to() {
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}?mode=rwc", dir.path().join("old.db").display());
    upgrade("sqlite", &database_url, dir.path()).await;
}

#[tokio::test]
async fn serve_upgrades_an_older_postgres_database_or_refuses_when_told_to() {
    let Some(server_url) = pg_database::postgres_url() else { return };
    let database = pg_database::Database::fresh(&server_url, "automa_upgrade").await;
    let dir = tempfile::tempdir().unwrap();
    upgrade("postgres", &database.url, dir.path()).await;
}
