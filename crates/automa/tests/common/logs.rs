//! Reading what a server logged, for the end-to-end tests: its log files (the current one and the rolled
//! ones), and the check that no secret, token or password appears in them.

use std::path::{Path, PathBuf};

/// The log file `path` and its rolled files (`path.1`, `path.2`, ...), oldest first, with their text.
pub fn log_files(path: &Path) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    for index in 1.. {
        let rolled = PathBuf::from(format!("{}.{index}", path.display()));
        match std::fs::read_to_string(&rolled) {
            Ok(text) => files.push((rolled, text)),
            Err(_) => break,
        }
    }
    files.reverse();
    if let Ok(text) = std::fs::read_to_string(path) {
        files.push((path.to_path_buf(), text));
    }
    files
}

/// Panics naming the first of `secrets` found in `text` (and where), without printing the secret.
pub fn assert_no_secrets(what: &str, text: &str, secrets: &[&str]) {
    for (index, secret) in secrets.iter().enumerate() {
        assert!(!secret.is_empty(), "secret #{index} is empty: the search would find it everywhere");
        if let Some(at) = text.find(secret) {
            let line = text[..at].matches('\n').count() + 1;
            panic!("secret #{index} ({} characters) appears in {what}, line {line}", secret.len());
        }
    }
}

/// The same check over a log file and its rolled files.
pub fn assert_no_secrets_in_log(path: &Path, secrets: &[&str]) {
    for (file, text) in log_files(path) {
        assert_no_secrets(&file.display().to_string(), &text, secrets);
    }
}
