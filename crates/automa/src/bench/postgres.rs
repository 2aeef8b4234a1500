//! A PostgreSQL database of the suite's own for each server it starts on `--database`, dropped afterwards, so
//! that every measurement starts from an empty (or freshly seeded) database and nothing is left behind.

use std::time::Duration;

use anyhow::Context;

use automa_store::Store;

/// Tries, 500 ms apart for up to two minutes, to drop the database: an autovacuum worker, which `WITH (FORCE)`
/// may not end for a role that is not a superuser, can hold it for tens of seconds after a million rows.
const DROP_ATTEMPTS: u32 = 240;

pub struct Throwaway {
    pub url: String,
    server_url: String,
    name: String,
}

impl Throwaway {
    /// Creates a database named after this process and the time on the server `server_url` points at (its
    /// own database in the URL is only connected to, to create the new one).
    pub async fn create(server_url: &str) -> anyhow::Result<Throwaway> {
        let name = format!("automa_bench_{}_{}", std::process::id(), chrono::Utc::now().timestamp_micros());
        let admin = connect(server_url).await?;
        let created = admin.execute_raw(&format!("CREATE DATABASE {name}")).await;
        admin.close().await;
        created.with_context(|| format!("creating the database {name}"))?;
        Ok(Throwaway { url: with_database(server_url, &name)?, server_url: server_url.to_owned(), name })
    }

    pub async fn drop_database(self) -> anyhow::Result<()> {
        let admin = connect(&self.server_url).await?;
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let mut attempt = 1;
        let dropped = loop {
            match admin.execute_raw(&statement).await {
                Err(_) if attempt < DROP_ATTEMPTS => tokio::time::sleep(Duration::from_millis(500)).await,
                result => break result,
            }
            attempt += 1;
        };
        admin.close().await;
        dropped.with_context(|| format!("dropping the database {}; drop it by hand", self.name))
    }
}

/// Refuses a URL the suite could not derive its databases' URLs from, before anything is measured.
pub fn check_url(server_url: &str) -> anyhow::Result<()> {
    with_database(server_url, "automa_bench").map(drop)
}

async fn connect(server_url: &str) -> anyhow::Result<Store> {
    Store::connect(server_url).await.with_context(|| format!("connecting to {}", automa_store::redact_url(server_url)))
}

/// `server_url` with its database replaced by `name`, its query (`?sslmode=...`) kept.
fn with_database(server_url: &str, name: &str) -> anyhow::Result<String> {
    let (location, query) = match server_url.split_once('?') {
        Some((location, query)) => (location, Some(query)),
        None => (server_url, None),
    };
    let (base, _) =
        location.rsplit_once('/').filter(|(base, _)| base.contains("://") && !base.ends_with('/')).context(
            "--database (or AUTOMA_BENCH_DATABASE_URL) must be a URL ending with /DATABASE, e.g. \
             postgres://user:password@host/postgres",
        )?;
    Ok(match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    })
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_of_the_url_is_replaced_and_its_options_kept() {
        assert_eq!(with_database("postgres://u:p@h:5432/postgres", "x").unwrap(), "postgres://u:p@h:5432/x");
        assert_eq!(
            with_database("postgres://h/postgres?sslmode=disable", "x").unwrap(),
            "postgres://h/x?sslmode=disable"
        );
        assert!(with_database("postgres://host", "x").is_err());
    }
}
