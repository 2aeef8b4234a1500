//! Packages for the dependency tests of every crate (included with `#[path]`): the uv they lock and build
//! with, and wheels they make themselves with `tests/fixtures/make_wheel.py`, so no test needs an index or
//! the network.

// Each test crate includes this module and uses only some of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The uv of `AUTOMA_TEST_UV` (set by `scripts/test`); `None`, with a notice, when it names no uv binary, so
/// the test returns; a panic instead when `AUTOMA_REQUIRE_UV=1`.
pub fn test_uv() -> Option<PathBuf> {
    match std::env::var_os("AUTOMA_TEST_UV").map(PathBuf::from).filter(|path| path.is_file()) {
        Some(uv) => Some(uv),
        None if std::env::var("AUTOMA_REQUIRE_UV").as_deref() == Ok("1") => {
            panic!("AUTOMA_REQUIRE_UV=1 but AUTOMA_TEST_UV names no uv binary")
        }
        None => {
            eprintln!("NOTICE: AUTOMA_TEST_UV names no uv binary: skipping a test that needs uv");
            None
        }
    }
}

/// Writes the wheel `name` `version` into `dir` (created if needed) and returns its path. Its module (`name`
/// with `-` as `_`) holds `VALUE = "<name> <version>"`.
pub fn make_wheel(dir: &Path, name: &str, version: &str) -> PathBuf {
    make_padded_wheel(dir, name, version, 0)
}

/// [`make_wheel`], with `padding_kb` KiB of zeros in the package: a small wheel that unpacks big.
pub fn make_padded_wheel(dir: &Path, name: &str, version: &str, padding_kb: u64) -> PathBuf {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/make_wheel.py");
    let made = Command::new("/usr/bin/python3")
        .arg(fixture)
        .arg(format!("--padding-kb={padding_kb}"))
        .arg(dir)
        .args([name, version])
        .output()
        .unwrap();
    assert!(made.status.success(), "make_wheel.py: {}", String::from_utf8_lossy(&made.stderr));
    PathBuf::from(String::from_utf8(made.stdout).expect("utf-8 path").trim())
}
