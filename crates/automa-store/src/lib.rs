//! Automa's store: one type over SQLite or PostgreSQL, chosen from the URL scheme at runtime, with one method
//! per use case and the transactions inside. Every mutation writes its audit entry in the same transaction, so
//! a change and its record are committed together or not at all.

mod agents;
mod audit;
mod backup;
mod gauges;
mod history;
mod hooks;
mod models;
pub mod notifications;
mod retention;
mod run_logs;
mod runs;
mod schedule;
mod scripts;
mod secrets;
mod tasks;
mod tokens;
mod users;

use std::{path::PathBuf, str::FromStr, time::Duration};

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::{
    PgPool, Postgres, Sqlite, SqlitePool, Transaction,
    postgres::PgPoolOptions,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

pub use agents::NO_CAP;
pub use audit::{AuditCheckpoint, AuditFilter, AuditVerification};
pub use automa_core::AuditKey;
pub use backup::{BackupCheck, check_sqlite_backup, restore_sqlite};
pub use gauges::PoolUse;
pub use history::SeedReport;
pub use models::*;
pub use notifications::{
    AttemptOutcome, ChannelUpdate, Delivery, NewChannel, NotificationChannel, RUN_EVENTS, SYSTEM_EVENTS,
    TaskNotifications,
};
pub use retention::{AuditPruneSummary, BatchLimits, RunPruneSummary, RunRetention};
pub use run_logs::NewLogChunk;
pub use runs::{MAX_HAND_BACKS, WAKE_CHANNEL};
pub use schedule::{Fired, TASKS_CHANNEL};

/// Runs the same statement text against whichever backend the store was opened on. Both arms expand the
/// same body, so each query is written once; `$pool` is a `SqlitePool` in one arm and a `PgPool` in the other.
/// Where the SQL must differ, the body matches on `Backend` itself instead.
macro_rules! dispatch {
    ($store:expr, $pool:ident => $body:expr) => {
        match &*$store.backend {
            $crate::Backend::Sqlite($pool) => $body,
            $crate::Backend::Postgres($pool) => $body,
        }
    };
}
pub(crate) use dispatch;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A unique name or key is already taken; the message names it.
    #[error("{0}")]
    Conflict(String),
    /// A row other rows still depend on; the message says which.
    #[error("{0}")]
    InUse(String),
    /// A reference to something that does not exist, named by the field that holds it.
    #[error("{0}")]
    Invalid(#[from] automa_core::InvalidField),
    #[error("unsupported database URL '{0}': use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot prepare the database directory: {0}")]
    Io(#[from] std::io::Error),
    /// Audited changes need the audit key; a store opened without one refuses them.
    #[error("the store was opened without the audit key, so it cannot write or verify the audit log")]
    NoAuditKey,
    /// An operation refused, with why: a database being restored, a backup that is not one.
    #[error("{0}")]
    Refused(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    /// Maps a constraint violation to the user-facing error the caller describes; other errors pass through.
    pub(crate) fn from_constraint(error: sqlx::Error, conflict: impl FnOnce() -> String) -> StoreError {
        match &error {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(conflict()),
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::InUse(conflict()),
            _ => StoreError::Database(error),
        }
    }
}

pub(crate) enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The handle the server, scheduler and embedded agent share; cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: std::sync::Arc<Backend>,
    audit_key: Option<std::sync::Arc<AuditKey>>,
    /// A shared `flock` on the SQLite file for as long as the store is open, so that `automa restore`, which
    /// needs it exclusively, can tell that a server or another command is using the database.
    _in_use: Option<std::sync::Arc<std::fs::File>>,
    chains: ChainLimits,
}

/// How far run-after links may carry one run: without bounds, layers of fan-in multiply it (a task waiting
/// for 32 tasks starts once per run of each, so k layers give 32^k runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainLimits {
    /// The longest chain of `after` runs from the run that started it (hook, API, schedule: depth 0).
    pub max_depth: i64,
    /// How many `after` runs of one task may wait in the queue at once.
    pub max_queued: i64,
}

impl Default for ChainLimits {
    fn default() -> ChainLimits {
        ChainLimits { max_depth: 10, max_queued: 100 }
    }
}

/// The current time as stored: microsecond precision, the finest both databases keep, so a value read back
/// compares equal to the value written.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

impl Store {
    /// Opens (and for SQLite creates) the database the URL names. Does not migrate.
    pub async fn connect(url: &str) -> StoreResult<Store> {
        let mut in_use = None;
        let backend = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .foreign_keys(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10));
            create_private_database_file(options.get_filename())?;
            in_use = hold_shared(options.get_filename())?;
            // No ping before each acquire, as sqlx does by default: a SQLite connection is a file handle in this
            // process, not a socket that can go stale, and the ping is one more hand-off to the connection's
            // worker thread and back for every statement.
            let pool =
                SqlitePoolOptions::new().max_connections(8).test_before_acquire(false).connect_with(options).await?;
            Backend::Sqlite(pool)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pool =
                PgPoolOptions::new().max_connections(16).acquire_timeout(Duration::from_secs(10)).connect(url).await?;
            Backend::Postgres(pool)
        } else {
            return Err(StoreError::UnsupportedUrl(redact_url(url)));
        };
        Ok(Store {
            backend: std::sync::Arc::new(backend),
            audit_key: None,
            _in_use: in_use.map(std::sync::Arc::new),
            chains: ChainLimits::default(),
        })
    }

    /// The same store, writing and verifying audit entries with `key` (derived from the server's secret key).
    pub fn with_audit_key(self, key: AuditKey) -> Store {
        Store { audit_key: Some(std::sync::Arc::new(key)), ..self }
    }

    /// The same store, bounding run-after chains by `chains`.
    pub fn with_chain_limits(self, chains: ChainLimits) -> Store {
        Store { chains, ..self }
    }

    /// Applies the pending migrations of this backend.
    pub async fn migrate(&self) -> StoreResult<()> {
        match &*self.backend {
            Backend::Sqlite(pool) => sqlx::migrate!("./migrations/sqlite").run(pool).await?,
            Backend::Postgres(pool) => sqlx::migrate!("./migrations/postgres").run(pool).await?,
        }
        Ok(())
    }

    /// The migrations of this build not yet applied to the database, as `version_description`, oldest first.
    pub async fn pending_migrations(&self) -> StoreResult<Vec<String>> {
        let (migrator, applied) = match &*self.backend {
            Backend::Sqlite(pool) => {
                let exists: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
                )
                .fetch_one(pool)
                .await?;
                let applied: Vec<i64> = if exists {
                    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success").fetch_all(pool).await?
                } else {
                    Vec::new()
                };
                (sqlx::migrate!("./migrations/sqlite"), applied)
            }
            Backend::Postgres(pool) => {
                let exists: bool =
                    sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(pool).await?;
                let applied: Vec<i64> = if exists {
                    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success").fetch_all(pool).await?
                } else {
                    Vec::new()
                };
                (sqlx::migrate!("./migrations/postgres"), applied)
            }
        };
        Ok(migrator
            .iter()
            .filter(|migration| migration.migration_type.is_up_migration() && !applied.contains(&migration.version))
            .map(|migration| format!("{:04}_{}", migration.version, migration.description.replace(' ', "_")))
            .collect())
    }

    /// Whether the database answers and every migration of this build is applied, for `/ready`.
    pub async fn is_ready(&self) -> bool {
        let expected = match &*self.backend {
            Backend::Sqlite(_) => sqlx::migrate!("./migrations/sqlite").iter().count(),
            Backend::Postgres(_) => sqlx::migrate!("./migrations/postgres").iter().count(),
        } as i64;
        let applied: Result<i64, sqlx::Error> = dispatch!(self, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success").fetch_one(pool).await
        });
        applied.is_ok_and(|applied| applied >= expected)
    }

    pub fn backend_name(&self) -> &'static str {
        match &*self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Whether other servers may write this database too: PostgreSQL, where servers share one database. A
    /// SQLite file has one server (docs/deployment.md), so what changes in it is this server's doing and can
    /// wake what waits for it directly, without polling for the changes of others.
    pub fn shared_by_servers(&self) -> bool {
        matches!(&*self.backend, Backend::Postgres(_))
    }

    /// The SQLite file behind this store, if any: the sandbox must keep it out of scripts' reach.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        match &*self.backend {
            Backend::Sqlite(pool) => Some(pool.connect_options().get_filename().to_path_buf()),
            Backend::Postgres(_) => None,
        }
    }

    /// Calls `wake` whenever another process on the same PostgreSQL database queues a run. Returns at once on
    /// SQLite, where every writer is in this process.
    pub async fn listen_for_runs(&self, wake: impl Fn() + Send + 'static) -> StoreResult<()> {
        self.listen(runs::WAKE_CHANNEL, wake).await
    }

    /// Calls `wake` for every notification on `channel` until the store is closed (PostgreSQL only). The
    /// listener reconnects by itself after a lost connection; a notification may have been missed meanwhile,
    /// so a reconnect wakes too, which costs the woken side one look at the database.
    pub(crate) async fn listen(&self, channel: &'static str, wake: impl Fn() + Send + 'static) -> StoreResult<()> {
        let Backend::Postgres(pool) = &*self.backend else { return Ok(()) };
        let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
        listener.listen(channel).await?;
        let pool = pool.clone();
        tokio::spawn(async move {
            loop {
                match listener.try_recv().await {
                    Ok(Some(_)) => wake(),
                    // The connection was lost and made again (with its LISTEN): what was sent in between is lost.
                    // The pause keeps a connection that drops as soon as it is made from being remade in a loop.
                    Ok(None) => {
                        tracing::warn!(channel, "lost a notification channel; reconnected");
                        wake();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(_) if pool.is_closed() => return,
                    Err(error) => {
                        tracing::warn!(%error, channel, "lost a notification channel; reconnecting");
                        // Never spin: a database that is down fails every attempt at once.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        wake();
                    }
                }
            }
        });
        Ok(())
    }

    /// Runs one statement that takes no parameters, such as `CREATE DATABASE` in test set-up. Never pass
    /// user input.
    pub async fn execute_raw(&self, statement: &str) -> StoreResult<()> {
        dispatch!(self, pool => {
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_owned())).execute(pool).await?;
            Ok(())
        })
    }

    pub async fn close(&self) {
        dispatch!(self, pool => pool.close().await)
    }
}

/// Creates a missing SQLite database file, and any missing directory above it, readable by the owner only
/// (0600, 0700) before SQLite opens it: SQLite gives the `-wal` and `-shm` files it creates the database
/// file's mode, so all three stay private whatever the process's umask. An existing file is left as it is.
pub(crate) fn create_private_database_file(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if path.as_os_str().is_empty() || path == std::path::Path::new(":memory:") {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent)?;
    }
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Err(error) if error.kind() != std::io::ErrorKind::AlreadyExists => Err(error),
        _ => Ok(()),
    }
}

/// Takes a shared `flock` on the database file (independent of SQLite's own POSIX locks), refused while a
/// restore holds it exclusively.
fn hold_shared(path: &std::path::Path) -> StoreResult<Option<std::fs::File>> {
    if path.as_os_str().is_empty() || path == std::path::Path::new(":memory:") {
        return Ok(None);
    }
    let file = std::fs::File::open(path)?;
    match file.try_lock_shared() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Refused(format!(
            "{} is being restored (automa restore holds it); start again when the restore is done",
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(error)) => Err(error.into()),
    }
}

/// Starts a transaction that holds the write lock from its first statement. Writers are serialised so that
/// the audit chain is extended one link at a time: SQLite takes its lock at `BEGIN IMMEDIATE` (a deferred
/// transaction that reads first could fail to upgrade); PostgreSQL takes a transaction-scoped advisory lock.
pub(crate) trait WritePool {
    type Db: sqlx::Database;
    async fn begin_write(&self) -> Result<Transaction<'static, Self::Db>, sqlx::Error>;
    /// A transaction for unaudited writes (claims, leases, logs): SQLite still takes its write lock up front,
    /// PostgreSQL relies on row locks and guarded statements rather than the audit lock, so runs on different
    /// rows proceed in parallel.
    async fn begin_with_lock(&self) -> Result<Transaction<'static, Self::Db>, sqlx::Error>;
}

/// The advisory lock key that serialises audited writers on PostgreSQL ("automa" in ASCII).
const AUDIT_LOCK_KEY: i64 = 0x6175_746f_6d61;

impl WritePool for SqlitePool {
    type Db = Sqlite;
    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
    async fn begin_with_lock(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

impl WritePool for PgPool {
    type Db = Postgres;
    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        let mut tx = self.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(AUDIT_LOCK_KEY).execute(&mut *tx).await?;
        Ok(tx)
    }
    async fn begin_with_lock(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.begin().await
    }
}

/// The file a `sqlite:` URL names; `None` for any other URL.
pub fn sqlite_file(url: &str) -> StoreResult<Option<PathBuf>> {
    if !url.starts_with("sqlite:") {
        return Ok(None);
    }
    Ok(Some(SqliteConnectOptions::from_str(url)?.get_filename().to_path_buf()))
}

/// A database URL with any password replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Bounds a client's `limit` and `offset`: lists are always paginated and never unbounded.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
}

impl Page {
    pub const MAX_LIMIT: i64 = 500;
    pub const DEFAULT_LIMIT: i64 = 50;

    pub fn new(limit: Option<i64>, offset: Option<i64>) -> Page {
        Page {
            limit: limit.unwrap_or(Self::DEFAULT_LIMIT).clamp(1, Self::MAX_LIMIT),
            offset: offset.unwrap_or(0).max(0),
        }
    }
}

impl Default for Page {
    fn default() -> Self {
        Page::new(None, None)
    }
}

/// One page of a list, with the total so clients can page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed<T> {
    pub items: Vec<T>,
    pub total: i64,
}

/// Marks SQL assembled from this crate's constant fragments (column lists) as safe. Never pass user input:
/// values always travel as bound parameters.
pub(crate) fn composed(sql: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_url("sqlite://a.db"), "sqlite://a.db");
    }

    #[test]
    fn pages_are_bounded() {
        let page = Page::new(Some(100_000), Some(-5));
        assert_eq!((page.limit, page.offset), (Page::MAX_LIMIT, 0));
        assert_eq!(Page::new(Some(0), None).limit, 1);
    }
}
