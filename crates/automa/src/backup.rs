//! `automa backup` and `automa restore`: the SQLite database copied while the server runs, and put back while
//! nothing uses it. PostgreSQL has its own tools; for it these print the commands to use.

use std::{
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};

use automa_server::{Config, file_modes};
use automa_store::Store;

/// A restored PostgreSQL database has no planner statistics and no visibility map until autovacuum passes,
/// minutes later; until then a filtered run list counts its matches by scanning the table.
const VACUUM_AFTER_RESTORE: &str = "psql \"$AUTOMA_DATABASE_URL\" -c 'VACUUM (ANALYZE)'";

/// Writes a consistent copy of the database to `target` (mode 0600). The copy is made beside `target` and
/// moved into place only once it passes its checks, so a failed backup never leaves a partial file under the
/// name, and without `force` an existing file is never replaced, even one created meanwhile.
pub async fn backup(config: &Config, target: &Path, force: bool) -> anyhow::Result<()> {
    let url = config.database_url();
    let Some(database) = automa_store::sqlite_file(&url)? else {
        bail!(
            "automa backup copies SQLite databases; for PostgreSQL use pg_dump, which reads one consistent snapshot \
             while the servers run:\n  pg_dump --format=custom --file={} \"$AUTOMA_DATABASE_URL\"\nand restore it \
             into an empty database, with every server stopped, with:\n  pg_restore --no-owner \
             --dbname=\"$AUTOMA_DATABASE_URL\" {}\n  {VACUUM_AFTER_RESTORE}\n(database: {})",
            target.display(),
            target.display(),
            automa_store::redact_url(&url)
        );
    };
    if !database.is_file() {
        bail!("there is no database at {}", database.display());
    }
    if !force && target.symlink_metadata().is_ok() {
        bail!("{} exists: pass --force to replace it", target.display());
    }
    let staged = staging_path(target, "partial");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staged)
        .with_context(|| format!("creating {}", staged.display()))?;
    let copied = copy_into(&url, &staged).await;
    let placed = copied.and_then(|check| {
        place(&staged, target, force)?;
        Ok(check)
    });
    let _ = std::fs::remove_file(&staged);
    let check = placed?;
    let size = std::fs::metadata(target)?.len();
    println!("backed up {} to {} ({size} bytes, migration {})", database.display(), target.display(), check.migration);
    Ok(())
}

/// `VACUUM INTO` the staged file, then check what was written.
async fn copy_into(url: &str, staged: &Path) -> anyhow::Result<automa_store::BackupCheck> {
    // Not migrated: a backup changes nothing in the database it copies.
    let store = Store::connect(url).await.with_context(|| format!("opening {}", automa_store::redact_url(url)))?;
    let written = store.backup_into(staged).await;
    store.close().await;
    written.context("copying the database")?;
    std::fs::File::open(staged)?.sync_all()?;
    automa_store::check_sqlite_backup(staged).await.context("checking the backup")
}

/// Moves the finished copy to `target`: replacing it with `force`, else linking, which fails if it exists.
fn place(staged: &Path, target: &Path, force: bool) -> anyhow::Result<()> {
    if force { std::fs::rename(staged, target) } else { std::fs::hard_link(staged, target) }
        .with_context(|| format!("writing {}", target.display()))
}

/// A file beside `path` for work in progress, unique to this process.
fn staging_path(path: &Path, what: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{what}-{}", std::process::id()));
    PathBuf::from(name)
}

/// Replaces the configured SQLite database with the backup at `path`.
pub async fn restore(config: &Config, path: &Path) -> anyhow::Result<()> {
    let url = config.database_url();
    let Some(database) = automa_store::sqlite_file(&url)? else {
        bail!(
            "automa restore replaces SQLite databases; for PostgreSQL stop every server, then restore a pg_dump \
             archive into an empty database:\n  pg_restore --no-owner --dbname=\"$AUTOMA_DATABASE_URL\" {}\n  \
             {VACUUM_AFTER_RESTORE}\n(database: {})",
            path.display(),
            automa_store::redact_url(&url)
        );
    };
    file_modes::prepare_data_dir(&config.data_dir)?;
    let check = automa_store::restore_sqlite(&database, path).await?;
    let pending = match check.pending_migrations {
        0 => String::new(),
        n => format!("; {n} newer migrations are applied when the server starts"),
    };
    println!("restored {} from {} (migration {}{pending})", database.display(), path.display(), check.migration);
    Ok(())
}
