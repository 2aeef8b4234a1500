//! SQLite backups: a consistent copy taken while the server runs, and a restore that checks the copy first
//! and refuses to replace a database something still has open.

use std::{
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use sqlx::{Connection, sqlite::SqliteConnectOptions};

use crate::{Backend, Store, StoreError, StoreResult};

/// What a backup holds, as far as restoring it is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupCheck {
    /// The newest migration applied to it.
    pub migration: i64,
    /// Migrations this build has that it lacks; the server applies them when it starts.
    pub pending_migrations: usize,
}

impl Store {
    /// Writes a consistent copy of a SQLite database into `path`, which must not exist or be empty, while
    /// others go on reading and writing (`VACUUM INTO` reads one snapshot). PostgreSQL is backed up with
    /// `pg_dump`; this refuses it.
    pub async fn backup_into(&self, path: &Path) -> StoreResult<()> {
        let Backend::Sqlite(pool) = &*self.backend else {
            return Err(StoreError::Refused("PostgreSQL is backed up with pg_dump".into()));
        };
        let path = path.to_str().ok_or_else(|| StoreError::Refused("the backup path is not UTF-8".into()))?;
        sqlx::query("VACUUM INTO $1").bind(path).execute(pool).await?;
        Ok(())
    }
}

/// Opens `path` read-only and checks that it is a sound Automa database this build can run: SQLite's
/// `integrity_check` passes, it has the migrations table, and every migration it records is one of ours.
pub async fn check_sqlite_backup(path: &Path) -> StoreResult<BackupCheck> {
    if !path.is_file() {
        return Err(StoreError::Refused(format!("{} is not a file", path.display())));
    }
    check_sqlite_file(path, path).await
}

/// The checks of [`check_sqlite_backup`] on the file at `path`, naming it `shown` in refusals (a restore
/// checks its staged copy but speaks of the backup).
async fn check_sqlite_file(path: &Path, shown: &Path) -> StoreResult<BackupCheck> {
    let options = SqliteConnectOptions::new().filename(path).read_only(true).create_if_missing(false);
    let mut connection = sqlx::SqliteConnection::connect_with(&options).await?;
    let integrity: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(&mut connection)
        .await
        .map_err(|error| StoreError::Refused(format!("{} is not a SQLite database: {error}", shown.display())))?;
    if integrity != ["ok"] {
        return Err(StoreError::Refused(format!(
            "{} fails SQLite's integrity check: {}",
            shown.display(),
            integrity.join("; ")
        )));
    }
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(&mut connection)
        .await
        .map_err(|_| {
            StoreError::Refused(format!("{} is not an Automa database: it has no migrations", shown.display()))
        })?;
    connection.close().await?;
    let ours: Vec<i64> = sqlx::migrate!("./migrations/sqlite").iter().map(|m| m.version).collect();
    if let Some(unknown) = applied.iter().find(|version| !ours.contains(version)) {
        return Err(StoreError::Refused(format!(
            "{} has migration {unknown}, which this version of Automa does not know: restore it with the version \
             that wrote it",
            shown.display()
        )));
    }
    let Some(&migration) = applied.last() else {
        return Err(StoreError::Refused(format!(
            "{} is not an Automa database: no migration applied",
            shown.display()
        )));
    };
    Ok(BackupCheck { migration, pending_migrations: ours.len() - applied.len() })
}

/// Replaces the SQLite database at `database` with a copy of `backup`, after checking the copy: the backup is
/// read once, into a staged file beside the database, and that file is what is checked and renamed into
/// place, so a backup swapped after the check cannot slip in unchecked. Refused
/// while anything has the database open: every `Store` holds a shared `flock` on the file, and this takes it
/// exclusively for the whole swap, so neither a running server nor one starting meanwhile sees a half-restored
/// database. The old write-ahead log goes too: its frames belong to the old database.
pub async fn restore_sqlite(database: &Path, backup: &Path) -> StoreResult<BackupCheck> {
    let not_a_file = || StoreError::Refused(format!("{} is not a file", backup.display()));
    // Checked by path first, since opening a named pipe would wait for a writer; then on what was opened.
    if !backup.is_file() {
        return Err(not_a_file());
    }
    let mut source = std::fs::File::open(backup)?;
    if !source.metadata()?.is_file() {
        return Err(not_a_file());
    }
    let existed = database.exists();
    crate::create_private_database_file(database)?;
    let current = std::fs::File::open(database)?;
    match current.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(StoreError::Refused(format!(
                "{} is in use by a running server or another automa command: stop it first",
                database.display()
            )));
        }
        Err(std::fs::TryLockError::Error(error)) => return Err(error.into()),
    }
    let staged = sibling(database, ".restoring");
    remove_all(std::slice::from_ref(&staged))?;
    let mut copy = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&staged)?;
    std::io::copy(&mut source, &mut copy)?;
    copy.flush()?;
    copy.sync_all()?;
    drop(copy);
    let checked = check_sqlite_file(&staged, backup).await;
    // Opening a write-ahead-log database, even read-only, may leave its -wal and -shm files beside it.
    let mut leftovers = vec![sibling(&staged, "-wal"), sibling(&staged, "-shm")];
    let check = match checked {
        Ok(check) => check,
        Err(error) => {
            leftovers.push(staged);
            // The empty file made only to be locked is not left behind to pass for a database.
            if !existed {
                leftovers.push(database.to_path_buf());
            }
            remove_all(&leftovers)?;
            return Err(error);
        }
    };
    leftovers.extend([sibling(database, "-wal"), sibling(database, "-shm")]);
    remove_all(&leftovers)?;
    std::fs::rename(&staged, database)?;
    if let Some(parent) = database.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)?.sync_all()?;
    }
    drop(current);
    Ok(check)
}

/// Removes the files that exist among `paths`.
fn remove_all(paths: &[PathBuf]) -> StoreResult<()> {
    for path in paths {
        match std::fs::remove_file(path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error.into()),
            _ => {}
        }
    }
    Ok(())
}

/// `path` with `suffix` appended to its file name, as SQLite names its `-wal` and `-shm` files.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_restore_checks_its_staged_copy_and_leaves_nothing_behind_when_refused() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source.db");
        let store = Store::connect(&format!("sqlite://{}", source.display())).await.unwrap();
        store.migrate().await.unwrap();
        let backup = dir.path().join("backup.db");
        store.backup_into(&backup).await.unwrap();
        store.close().await;

        let fresh = dir.path().join("fresh/automa.db");
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, b"not a database").unwrap();
        let refused = restore_sqlite(&fresh, &junk).await.unwrap_err().to_string();
        assert!(refused.contains("junk.db") && !refused.contains(".restoring"), "{refused}");
        let left: Vec<_> =
            std::fs::read_dir(fresh.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "no staged copy and no empty database remain: {left:?}");

        let check = restore_sqlite(&fresh, &backup).await.unwrap();
        assert_eq!(check.pending_migrations, 0);
        let refused = restore_sqlite(&fresh, &junk).await.unwrap_err().to_string();
        assert!(refused.contains("not a SQLite database"), "{refused}");
        assert_eq!(std::fs::read(&fresh).unwrap(), std::fs::read(&backup).unwrap(), "the database is untouched");
        let left: Vec<_> =
            std::fs::read_dir(fresh.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["automa.db"]);
        let missing = restore_sqlite(&fresh, &dir.path().join("nowhere.db")).await.unwrap_err().to_string();
        assert!(missing.contains("is not a file"), "{missing}");
    }
}
