//! Who may read the server's files. The data directory holds the database (every secret's ciphertext, every
//! token hash, the audit log) and, in development, the secret key: it is created 0700 and its files 0600, and
//! start-up warns about any that an earlier version or an operator left readable by others. Existing modes
//! are reported, not changed, since a wider mode may be deliberate (a backup user's group, say).

use std::{
    fs,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::Context;

/// Creates the data directory (and any missing parent) readable by its owner only.
pub fn prepare_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))
}

/// The files start-up checks: the data directory, its key file, and the SQLite database with its WAL and
/// shared-memory files (SQLite creates those with the database file's mode).
pub fn sensitive_paths(data_dir: &Path, database: Option<&Path>) -> Vec<PathBuf> {
    let mut paths = vec![data_dir.to_path_buf(), data_dir.join(crate::keys::KEY_FILE)];
    if let Some(database) = database {
        paths.push(database.to_path_buf());
        for suffix in ["-wal", "-shm"] {
            let mut name = database.as_os_str().to_owned();
            name.push(suffix);
            paths.push(PathBuf::from(name));
        }
    }
    paths
}

/// Warns about each existing path that others than its owner may access; returns those paths.
pub fn warn_if_exposed(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut exposed = Vec::new();
    for path in paths {
        let Ok(metadata) = fs::metadata(path) else { continue };
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            let wanted = if metadata.is_dir() { "0700" } else { "0600" };
            tracing::warn!(
                path = %path.display(),
                mode = format!("{mode:04o}"),
                "readable or writable by others than its owner; chmod {wanted} unless that is intended"
            );
            exposed.push(path.clone());
        }
    }
    exposed
}

/// Warns if the log file (`AUTOMA_LOG_FILE`) is readable or writable by others than its owner, or if its
/// directory is writable by others: they could then replace the file or plant the names it is rolled to.
/// A directory others may only read is not reported (a packaged `/var/log/automa` is often 0755). Returns the
/// paths warned about.
pub fn warn_if_log_exposed(log_file: &Path) -> Vec<PathBuf> {
    let mut exposed = warn_if_exposed(&[log_file.to_path_buf()]);
    let directory = match log_file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if let Ok(metadata) = fs::metadata(directory) {
        let mode = metadata.permissions().mode() & 0o7777;
        if mode & 0o022 != 0 {
            tracing::warn!(
                path = %directory.display(),
                mode = format!("{mode:04o}"),
                "the log file's directory is writable by others than its owner, who could replace or plant log \
                 files; chmod go-w or choose another AUTOMA_LOG_FILE"
            );
            exposed.push(directory.to_path_buf());
        }
    }
    exposed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_directory_is_created_private_and_wider_files_are_reported() {
        let root = tempfile::tempdir().unwrap();
        let data_dir = root.path().join("nested/data");
        prepare_data_dir(&data_dir).unwrap();
        assert_eq!(fs::metadata(&data_dir).unwrap().permissions().mode() & 0o777, 0o700);
        let database = data_dir.join("automa.db");
        fs::write(&database, "").unwrap();
        fs::set_permissions(&database, fs::Permissions::from_mode(0o644)).unwrap();
        let paths = sensitive_paths(&data_dir, Some(&database));
        assert_eq!(warn_if_exposed(&paths), vec![database.clone()], "missing files are skipped");
        fs::set_permissions(&database, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(warn_if_exposed(&paths).is_empty());
    }

    #[test]
    fn a_readable_log_file_and_a_writable_log_directory_are_reported() {
        let root = tempfile::tempdir().unwrap();
        let logs = root.path().join("logs");
        fs::create_dir(&logs).unwrap();
        fs::set_permissions(&logs, fs::Permissions::from_mode(0o755)).unwrap();
        let log = logs.join("automa.log");
        assert!(warn_if_log_exposed(&log).is_empty(), "a missing file and a world-readable directory are fine");
        fs::write(&log, "").unwrap();
        fs::set_permissions(&log, fs::Permissions::from_mode(0o640)).unwrap();
        fs::set_permissions(&logs, fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(warn_if_log_exposed(&log), vec![log.clone(), logs.clone()]);
        fs::set_permissions(&log, fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(&logs, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(warn_if_log_exposed(&log).is_empty());
    }
}
