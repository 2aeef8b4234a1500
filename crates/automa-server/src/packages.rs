//! Locking scripts' dependencies when a version is saved: `uv pip compile --universal --generate-hashes` turns
//! the requirements into exact versions and hashes, stored with the version so that it always runs with the
//! same packages. uv is found once at start and reported in `/ready`; without it, saving a script that has
//! dependencies is refused and every other script is unaffected.
//!
//! uv runs on the server, outside any sandbox, so it is held to wheels (`--no-build`: building an sdist runs the
//! package's own code), gets an empty environment apart from the proxy and certificate variables (no inherited
//! secrets, no `UV_*` configuration), reads no configuration file (`--no-config`), downloads no Python, works
//! in a directory of its own under the data directory, is given a time limit and has its output bounded.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    process::Command,
    sync::Semaphore,
};
use utoipa::ToSchema;

use automa_core::{Requirement, RequiresPython};

use crate::config::{Config, SecretString};

/// Locks at once: each is a uv process resolving and downloading.
const LOCK_SLOTS: usize = 2;
/// How long a save waits for a lock slot before it is answered 503 with `Retry-After`.
const SLOT_WAIT: Duration = Duration::from_secs(5);
/// The `Retry-After` of that answer.
pub const BUSY_RETRY_AFTER_SECONDS: u64 = 10;
/// How each lock's uv cache directory under `<data dir>/packages` is named.
const CACHE_PREFIX: &str = "uv-cache-";
/// The largest lock accepted from uv; a real one is a few kilobytes per package.
const MAX_LOCK_BYTES: u64 = 1024 * 1024;
/// How much of uv's error output is read, and how much of it a client is shown.
const MAX_ERROR_BYTES: u64 = 64 * 1024;
const MAX_MESSAGE_CHARS: usize = 2000;
/// The environment variables uv keeps from the server's: how to reach an index through a proxy and which
/// certificates to trust. Nothing else, so no secret of the server's environment reaches it.
const PASSED_VARIABLES: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// Why a set of requirements could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("this server has no uv to lock dependencies with (install it and set AUTOMA_UV to its path)")]
    NoUv,
    #[error("this server has no Python interpreter to lock dependencies for")]
    NoInterpreter,
    /// uv ran and refused: its message, trimmed and bounded.
    #[error("could not be resolved: {0}")]
    Unresolvable(String),
    #[error("could not be locked: {0}")]
    Failed(String),
    /// Both lock slots stayed taken for [`Locker::slot_wait`]: the client is told to come back rather than
    /// held until its request times out.
    #[error("the server is locking other scripts' dependencies; try again")]
    Busy,
}

/// Where packages come from (`AUTOMA_PACKAGE_*`), shared by locking and by the agents that install the locks.
#[derive(Debug, Clone, Default)]
pub struct PackageSources {
    pub index_url: Option<SecretString>,
    pub extra_index_urls: Vec<SecretString>,
    /// Directories (made absolute) or URLs.
    pub find_links: Vec<String>,
    /// Packages come only from the find-links directories and nothing is fetched from the network.
    pub offline: bool,
}

impl PackageSources {
    pub fn from_config(config: &Config) -> PackageSources {
        let find_links = config
            .package_find_links
            .iter()
            .map(|entry| match entry.contains("://") {
                true => entry.clone(),
                // uv runs in a directory of its own: a relative directory means the one the server started in.
                false => std::path::absolute(entry).map_or_else(|_| entry.clone(), |path| path.display().to_string()),
            })
            .collect();
        PackageSources {
            index_url: config.package_index_url.clone(),
            extra_index_urls: config.package_extra_index_urls.clone(),
            find_links,
            offline: config.package_offline,
        }
    }

    /// Index URLs may carry credentials: they go to uv in its environment, not on its command line, where any
    /// user of the host could read them.
    fn apply(&self, command: &mut Command) {
        if let Some(url) = &self.index_url {
            command.env("UV_INDEX_URL", url.expose());
        }
        if !self.extra_index_urls.is_empty() {
            let urls: Vec<&str> = self.extra_index_urls.iter().map(SecretString::expose).collect();
            command.env("UV_EXTRA_INDEX_URL", urls.join(" "));
        }
        if !self.find_links.is_empty() {
            command.env("UV_FIND_LINKS", self.find_links.join(","));
        }
        if self.offline {
            command.args(["--offline", "--no-index"]);
        }
    }
}

/// Locks requirements with uv, at most two at once.
pub struct Locker {
    /// uv's path and version, when it was found.
    uv: Option<(PathBuf, String)>,
    interpreter: Option<PathBuf>,
    sources: PackageSources,
    work_dir: PathBuf,
    timeout: Duration,
    slots: Semaphore,
    /// How long a lock waits for a free slot before it is refused as [`LockError::Busy`].
    slot_wait: Duration,
}

impl Locker {
    /// Finds uv (`AUTOMA_UV`, else `uv` on `PATH`) and asks its version, logging what it found.
    pub async fn detect(config: &Config, interpreter: Option<PathBuf>) -> Locker {
        let uv = match find_uv(config.uv.as_deref()) {
            Some(path) => match uv_version(&path).await {
                Ok(version) => {
                    tracing::info!(uv = %path.display(), %version, "scripts' dependencies are locked with uv");
                    Some((path, version))
                }
                Err(error) => {
                    tracing::warn!(uv = %path.display(), %error, "uv does not answer: scripts with dependencies cannot be saved");
                    None
                }
            },
            None => {
                tracing::warn!("no uv found (AUTOMA_UV, or uv on PATH): scripts with dependencies cannot be saved");
                None
            }
        };
        let work_dir = config.data_dir.join("packages");
        remove_leftover_caches(&work_dir);
        Locker {
            uv,
            interpreter,
            sources: PackageSources::from_config(config),
            work_dir,
            // Answered before the request's own time limit, so the client reads why.
            timeout: Duration::from_secs(config.request_timeout_seconds.saturating_sub(5).max(5)),
            slots: Semaphore::new(LOCK_SLOTS),
            slot_wait: SLOT_WAIT,
        }
    }

    /// The version of the uv found at start, if one was.
    pub fn uv_version(&self) -> Option<&str> {
        self.uv.as_ref().map(|(_, version)| version.as_str())
    }

    /// Resolves `requirements` into a lock valid on every platform for every Python `requires_python` admits.
    pub async fn lock(
        &self,
        requirements: &[Requirement],
        requires_python: Option<&RequiresPython>,
    ) -> Result<String, LockError> {
        let (uv, _) = self.uv.as_ref().ok_or(LockError::NoUv)?;
        let interpreter = self.interpreter.as_ref().ok_or(LockError::NoInterpreter)?;
        let _slot = tokio::time::timeout(self.slot_wait, self.slots.acquire())
            .await
            .map_err(|_| LockError::Busy)?
            .map_err(|e| LockError::Failed(e.to_string()))?;
        // A cache of its own, removed when the lock ends however it ends: wheels uv unpacks there would
        // otherwise pile up for good, and one large wheel could fill the data directory's disk.
        std::fs::create_dir_all(&self.work_dir)
            .map_err(|e| LockError::Failed(format!("cannot create {}: {e}", self.work_dir.display())))?;
        let cache = tempfile::Builder::new()
            .prefix(CACHE_PREFIX)
            .tempdir_in(&self.work_dir)
            .map_err(|e| LockError::Failed(format!("cannot create a cache in {}: {e}", self.work_dir.display())))?;
        let mut command = Command::new(uv);
        command
            .args(["pip", "compile", "--universal", "--generate-hashes", "--no-build", "--no-header"])
            .args(["--no-config", "--no-python-downloads", "--quiet"])
            .arg("--python")
            .arg(interpreter)
            .arg("--cache-dir")
            .arg(cache.path());
        if let Some(lowest) = requires_python.and_then(RequiresPython::lowest_python) {
            command.args(["--python-version", &lowest]);
        }
        command.env_clear();
        for name in PASSED_VARIABLES {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        self.sources.apply(&mut command);
        command.arg("-").current_dir(&self.work_dir).kill_on_drop(true);
        let input: String = requirements.iter().map(|requirement| format!("{requirement}\n")).collect();
        tokio::time::timeout(self.timeout, run(command, input))
            .await
            .map_err(|_| LockError::Failed(format!("uv took longer than {} s", self.timeout.as_secs())))?
    }
}

/// Removes the caches of locks a stopped server left behind, so that none outlives its lock for good.
fn remove_leftover_caches(work_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(work_dir) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(CACHE_PREFIX)
            && let Err(error) = std::fs::remove_dir_all(entry.path())
        {
            tracing::warn!(dir = %entry.path().display(), %error, "cannot remove a leftover uv cache");
        }
    }
}

async fn run(mut command: Command, input: String) -> Result<String, LockError> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| LockError::Failed(format!("cannot start uv: {e}")))?;
    let mut stdin = child.stdin.take().ok_or_else(|| LockError::Failed("uv has no input".into()))?;
    let stdout = child.stdout.take().ok_or_else(|| LockError::Failed("uv has no output".into()))?;
    let stderr = child.stderr.take().ok_or_else(|| LockError::Failed("uv has no error output".into()))?;
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(input.as_bytes()).await;
    });
    let (lock, errors, status) =
        tokio::join!(read_bounded(stdout, MAX_LOCK_BYTES), read_bounded(stderr, MAX_ERROR_BYTES), child.wait());
    let _ = writer.await;
    let status = status.map_err(|e| LockError::Failed(e.to_string()))?;
    if !status.success() {
        return Err(LockError::Unresolvable(trimmed_message(&errors)));
    }
    if lock.len() as u64 > MAX_LOCK_BYTES {
        return Err(LockError::Failed(format!("the lock is larger than {MAX_LOCK_BYTES} bytes")));
    }
    String::from_utf8(lock).map_err(|_| LockError::Failed("uv's lock is not UTF-8".into()))
}

/// Reads up to `limit` bytes and one more (so that going past the limit shows), then drains the rest so that
/// the process is never blocked on a full pipe.
async fn read_bounded(mut reader: impl AsyncRead + Unpin, limit: u64) -> Vec<u8> {
    let mut kept = Vec::new();
    let _ = (&mut reader).take(limit + 1).read_to_end(&mut kept).await;
    let _ = tokio::io::copy(&mut reader, &mut tokio::io::sink()).await;
    kept
}

/// uv's error output as a client reads it: trimmed, blank lines dropped, at most [`MAX_MESSAGE_CHARS`].
fn trimmed_message(errors: &[u8]) -> String {
    let text = String::from_utf8_lossy(errors);
    let lines: Vec<&str> = text.lines().map(str::trim_end).filter(|line| !line.trim().is_empty()).collect();
    let message = lines.join("\n");
    if message.is_empty() {
        return "uv failed without saying why".into();
    }
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &message[..cut]),
        None => message,
    }
}

/// `AUTOMA_UV` when set; otherwise the first `uv` on `PATH`.
fn find_uv(configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = configured {
        return Some(path.to_owned());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("uv")).find(|candidate| candidate.is_file())
}

async fn uv_version(uv: &Path) -> Result<String, String> {
    let output = tokio::time::timeout(
        Duration::from_secs(10),
        Command::new(uv).arg("--version").env_clear().stdin(Stdio::null()).kill_on_drop(true).output(),
    )
    .await
    .map_err(|_| "`uv --version` did not answer within 10 s".to_owned())?
    .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&output.stdout);
    match text.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["uv", version, ..] if output.status.success() => Ok((*version).to_owned()),
        _ => Err(format!("`uv --version` answered {:?}", text.trim())),
    }
}

/// One package of a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    /// The environment marker limiting where it is installed (`sys_platform == 'win32'`), if any.
    pub marker: Option<String>,
    /// `sha256:<hex>` of each file the package may be installed from.
    pub hashes: Vec<String>,
}

/// The packages of a lock in uv's requirements format, in its order.
pub fn locked_packages(lock: &str) -> Vec<LockedPackage> {
    let mut packages: Vec<LockedPackage> = Vec::new();
    for line in lock.lines() {
        let entry = line.trim().trim_end_matches('\\').trim();
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        if let Some(hash) = entry.strip_prefix("--hash=") {
            if let Some(package) = packages.last_mut() {
                package.hashes.push(hash.to_owned());
            }
            continue;
        }
        if line.starts_with(char::is_whitespace) || entry.starts_with('-') {
            continue;
        }
        let (pin, marker) = match entry.split_once(';') {
            Some((pin, marker)) => (pin.trim(), Some(marker.trim().to_owned())),
            None => (entry, None),
        };
        if let Some((name, version)) = pin.split_once("==") {
            packages.push(LockedPackage {
                name: name.trim().to_owned(),
                version: version.trim().to_owned(),
                marker,
                hashes: Vec::new(),
            });
        }
    }
    packages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_lists_its_packages_with_markers_and_hashes() {
        let lock = "colorama==0.4.6 ; sys_platform == 'win32' \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n    # via rich\nrich==13.7.1 \\\n    --hash=sha256:cc\n";
        let packages = locked_packages(lock);
        assert_eq!(packages.len(), 2);
        assert_eq!(packages[0].name, "colorama");
        assert_eq!(packages[0].version, "0.4.6");
        assert_eq!(packages[0].marker.as_deref(), Some("sys_platform == 'win32'"));
        assert_eq!(packages[0].hashes, ["sha256:aa", "sha256:bb"]);
        assert_eq!((packages[1].name.as_str(), packages[1].marker.as_deref()), ("rich", None));
        assert_eq!(packages[1].hashes, ["sha256:cc"]);
    }

    #[test]
    fn error_output_is_trimmed_and_bounded() {
        assert_eq!(trimmed_message(b"\nerror: no\n\n  cause: because\n"), "error: no\n  cause: because");
        assert!(trimmed_message(&vec![b'x'; 10_000]).chars().count() <= MAX_MESSAGE_CHARS + 1);
        assert_eq!(trimmed_message(b""), "uv failed without saying why");
    }
}
