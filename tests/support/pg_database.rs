//! The tests' PostgreSQL tier: whether it runs, and a database for one test, dropped when the guard goes:
//! when the test passes and when it panics. Shared by the test binaries of several crates with `#[path]`.

// Each test crate includes this module and uses only some of it.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::Connection;

pub struct Database {
    pub url: String,
    server_url: String,
    name: String,
}

/// The PostgreSQL server of the tests' second tier, or `None` (with a notice) when it is not configured; a panic
/// when it is required (`AUTOMA_REQUIRE_PG=1`) and missing.
pub fn postgres_url() -> Option<String> {
    match std::env::var("AUTOMA_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("AUTOMA_REQUIRE_PG").is_ok_and(|v| v == "1") => {
            panic!("AUTOMA_REQUIRE_PG=1 but AUTOMA_TEST_PG_URL is not set")
        }
        _ => {
            eprintln!("NOTICE: AUTOMA_TEST_PG_URL is not set: skipping the PostgreSQL tier of this test");
            None
        }
    }
}

impl Database {
    /// A database of its own, named after `prefix`, this process and the time, on the server `server_url`.
    pub async fn fresh(server_url: &str, prefix: &str) -> Database {
        // Several tests may start in one process within the same microsecond.
        static CREATED: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{prefix}_{}_{}_{}",
            std::process::id(),
            chrono::Utc::now().timestamp_micros(),
            CREATED.fetch_add(1, Ordering::Relaxed)
        );
        Database::create(server_url, &name).await
    }

    /// Creates `name` on the server `server_url` points at.
    pub async fn create(server_url: &str, name: &str) -> Database {
        let mut admin = sqlx::PgConnection::connect(server_url).await.expect("connecting to AUTOMA_TEST_PG_URL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await.unwrap();
        let (base, _) = server_url.rsplit_once('/').expect("a PostgreSQL URL ends with /database");
        Database { url: format!("{base}/{name}"), server_url: server_url.to_owned(), name: name.to_owned() }
    }
}

/// Tries, 400 ms apart, to drop a test database: autovacuum may hold it for a few seconds after a busy test.
const DROP_ATTEMPTS: u32 = 25;

impl Drop for Database {
    fn drop(&mut self) {
        let (server_url, name) = (self.server_url.clone(), self.name.clone());
        // Drop cannot await and may run while a panicking test unwinds: a thread with its own runtime drops the
        // database, `WITH (FORCE)` ending the connections of servers that may still be running.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let Ok(mut admin) = sqlx::PgConnection::connect(&server_url).await else { return };
                // An autovacuum worker on the database can make the drop fail for a moment: retried, then left.
                for attempt in 1..=DROP_ATTEMPTS {
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    match sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut admin).await {
                        Ok(_) => break,
                        Err(error) if attempt == DROP_ATTEMPTS => {
                            eprintln!("NOTICE: test database {name} left behind: {error}")
                        }
                        Err(_) => tokio::time::sleep(std::time::Duration::from_millis(400)).await,
                    }
                }
            })
        });
        let _ = dropped.join();
    }
}
