//! Finding the real Python executable once, and the read-only system paths a run needs to start it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::RunnerError;

/// The real Python executable: `configured` if given, else the one behind `python3` on `PATH`.
///
/// `python3` on `PATH` may be a pyenv shim costing 100 ms per start, so it is asked once for
/// `sys.executable` and every run execs that file directly.
pub fn resolve_interpreter(configured: Option<&Path>) -> Result<PathBuf, RunnerError> {
    let program = configured.map_or_else(|| PathBuf::from("python3"), Path::to_path_buf);
    let out = Command::new(&program)
        .args(["-c", "import sys; print(sys.executable)"])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| RunnerError::Spawn { program: program.clone(), source })?;
    if !out.status.success() {
        return Err(RunnerError::InvalidConfig(format!(
            "{} does not run: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if printed.is_empty() {
        return Err(RunnerError::InvalidConfig(format!("{} reports no sys.executable", program.display())));
    }
    Ok(std::fs::canonicalize(&printed)?)
}

/// System paths every run sees read-only, whichever of them exist on this host.
const SYSTEM_PATHS: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/protocols",
    "/etc/services",
    "/etc/mime.types",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/alternatives",
];

/// The read-only paths for `interpreter`: the system paths plus the interpreter's install prefixes, which a
/// pyenv build needs at their original location (its RUNPATH is absolute).
pub(crate) fn system_paths(interpreter: &Path) -> Result<Vec<PathBuf>, RunnerError> {
    let out = Command::new(interpreter)
        .args(["-I", "-c", "import sys; print(sys.prefix); print(sys.base_prefix); print(sys.exec_prefix)"])
        .env_clear()
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| RunnerError::Spawn { program: interpreter.to_path_buf(), source })?;
    if !out.status.success() {
        return Err(RunnerError::InvalidConfig(format!(
            "interpreter {} does not run: {}",
            interpreter.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let mut paths: Vec<PathBuf> =
        SYSTEM_PATHS.iter().map(PathBuf::from).filter(|p| p.symlink_metadata().is_ok()).collect();
    let prefixes = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .chain(interpreter.parent().and_then(Path::parent).map(Path::to_path_buf))
        .collect::<Vec<_>>();
    for prefix in prefixes {
        let prefix = std::fs::canonicalize(&prefix).unwrap_or(prefix);
        if prefix.is_absolute() && prefix != Path::new("/") && !paths.iter().any(|p| prefix.starts_with(p)) {
            paths.push(prefix);
        }
    }
    Ok(paths)
}
