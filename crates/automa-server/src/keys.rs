//! The server's secret key. In development a random key is generated once into the data directory, readable
//! only by its owner; in production the operator must provide one, because a key that changes on every
//! deployment would log everyone out and make encrypted secrets unreadable.

use std::{
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
};

use anyhow::{Context, bail};

use crate::config::{Config, Environment};

pub const MIN_KEY_BYTES: usize = 32;
pub const KEY_FILE: &str = "secret.key";

/// The key from configuration, or in development the one kept in the data directory (created if missing).
/// A key under [`MIN_KEY_BYTES`] is refused in every environment: a short key makes sessions forgeable and
/// secrets guessable offline, in development as much as anywhere else. `AUTOMA_SECRET_KEY` set but empty is
/// refused too, never taken for "absent": an empty value is far more likely a deployment mistake (an unset
/// variable interpolated into a template) than a wish for the development key.
pub fn secret_key(config: &Config) -> anyhow::Result<Vec<u8>> {
    if let Some(key) = &config.secret_key {
        let key = key.expose().as_bytes();
        if key.is_empty() {
            bail!(
                "AUTOMA_SECRET_KEY is set but empty; set it to at least {MIN_KEY_BYTES} bytes (e.g. `openssl rand -hex 32`), \
                 or in development unset it to use the generated key file"
            );
        }
        if key.len() < MIN_KEY_BYTES {
            bail!("AUTOMA_SECRET_KEY must be at least {MIN_KEY_BYTES} bytes (it has {})", key.len());
        }
        return Ok(key.to_vec());
    }
    if config.env == Environment::Production {
        bail!(
            "AUTOMA_ENV=production needs AUTOMA_SECRET_KEY (at least {MIN_KEY_BYTES} bytes), e.g. `openssl rand -hex 32`"
        );
    }
    development_key(&config.data_dir)
}

fn development_key(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let path = data_dir.join(KEY_FILE);
    match fs::read_to_string(&path) {
        Ok(existing) => {
            let mode = fs::metadata(&path)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "the secret key file is readable by others; fixing to 0600");
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
            }
            let key = existing.trim().as_bytes().to_vec();
            // An empty or short file is not regenerated: sessions and sealed secrets depend on the key, and
            // replacing it silently would make the secrets unreadable. The operator decides.
            if key.len() < MIN_KEY_BYTES {
                bail!(
                    "the secret key file {} holds {} bytes; a key needs at least {MIN_KEY_BYTES}. If nothing was \
                     encrypted with it yet, delete the file and a new key is generated; otherwise restore the key",
                    path.display(),
                    key.len()
                );
            }
            Ok(key)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            let key = hex::encode(bytes);
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            file.write_all(key.as_bytes())?;
            tracing::info!(path = %path.display(), "generated a development secret key");
            Ok(key.into_bytes())
        }
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretString;

    #[test]
    fn development_key_is_generated_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { data_dir: dir.path().to_path_buf(), ..Config::default() };
        let first = secret_key(&config).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(secret_key(&config).unwrap(), first);
        let mode = fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn production_refuses_a_missing_or_short_key() {
        let dir = tempfile::tempdir().unwrap();
        let production =
            Config { data_dir: dir.path().to_path_buf(), env: Environment::Production, ..Config::default() };
        assert!(secret_key(&production).unwrap_err().to_string().contains("AUTOMA_SECRET_KEY"));
        let short = Config { secret_key: Some(SecretString::new("short")), ..production.clone() };
        assert!(secret_key(&short).unwrap_err().to_string().contains("at least 32 bytes"));
        let good = Config { secret_key: Some(SecretString::new("k".repeat(32))), ..production };
        assert_eq!(secret_key(&good).unwrap().len(), 32);
        assert!(!dir.path().join(KEY_FILE).exists(), "production never writes a key file");
    }

    #[test]
    fn development_refuses_a_short_or_empty_key_too() {
        let dir = tempfile::tempdir().unwrap();
        let development = Config { data_dir: dir.path().to_path_buf(), ..Config::default() };
        let empty = Config { secret_key: Some(SecretString::new("")), ..development.clone() };
        assert!(secret_key(&empty).unwrap_err().to_string().contains("AUTOMA_SECRET_KEY is set but empty"));
        assert!(!dir.path().join(KEY_FILE).exists(), "an empty key is not taken for an absent one");
        let short = Config { secret_key: Some(SecretString::new("k".repeat(31))), ..development };
        assert!(secret_key(&short).unwrap_err().to_string().contains("at least 32 bytes (it has 31)"));
    }

    #[test]
    fn an_empty_or_short_key_file_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { data_dir: dir.path().to_path_buf(), ..Config::default() };
        for content in ["", "\n", "0123456789abcdef"] {
            fs::write(dir.path().join(KEY_FILE), content).unwrap();
            let error = secret_key(&config).unwrap_err().to_string();
            assert!(error.contains("secret.key") && error.contains("at least 32"), "{error}");
            assert_eq!(fs::read_to_string(dir.path().join(KEY_FILE)).unwrap(), content, "the file is left alone");
        }
    }
}
