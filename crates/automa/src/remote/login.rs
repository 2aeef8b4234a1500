//! `automa login` and `automa logout`, and the file between them. Login exchanges the password for a short
//! session once, uses it to create an API token named for this CLI with an expiry, and keeps only that token
//! (and the URL it belongs to) in the user's config directory: the directory 0700, the file 0600, and a file
//! that others could read is refused, as ssh refuses a readable private key. The password is never an argument.

use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use serde::{Deserialize, Serialize};

use automa_server::api::{
    session::{LoginForm, TokenResponse},
    tokens::{CreateToken, CreatedToken, TokenInfo},
};

use super::{DEFAULT_URL, usage};
use crate::client::{Api, Refused};

#[derive(Args)]
pub struct LoginFlags {
    /// The server's URL (asked for when not given).
    #[arg(long, env = "AUTOMA_URL")]
    url: Option<String>,
    /// Your e-mail address (asked for when not given). The password is read from AUTOMA_PASSWORD, else a
    /// prompt that does not echo, else a line of standard input.
    #[arg(long, env = "AUTOMA_EMAIL")]
    email: Option<String>,
    /// Days until the stored token expires (1-3650).
    #[arg(long, default_value_t = 90)]
    expires_in_days: i64,
    /// Allow plain http:// to a server that is not on loopback: the password and token travel in clear.
    #[arg(long, env = "AUTOMA_ALLOW_INSECURE_HTTP")]
    allow_insecure_http: bool,
}

#[derive(Args)]
pub struct LogoutFlags {
    /// Allow plain http:// to a server that is not on loopback.
    #[arg(long, env = "AUTOMA_ALLOW_INSECURE_HTTP")]
    allow_insecure_http: bool,
}

/// What `automa login` stores.
#[derive(Serialize, Deserialize)]
pub struct Credentials {
    pub url: String,
    pub email: String,
    pub token: String,
    pub token_id: i64,
    pub token_name: String,
    pub expires_at: Option<DateTime<Utc>>,
}

pub async fn login(flags: LoginFlags) -> anyhow::Result<i32> {
    let url = match flags.url {
        Some(url) => url,
        None => Some(ask(&format!("Server URL [{DEFAULT_URL}]: "))?)
            .filter(|url| !url.is_empty())
            .unwrap_or_else(|| DEFAULT_URL.to_owned()),
    };
    let url = url.trim_end_matches('/').to_owned();
    let email = match flags.email {
        Some(email) => email,
        None => ask("E-mail: ")?,
    };
    let password = read_password("Password: ")?;
    let anonymous = Api::new(&url, None, flags.allow_insecure_http)?;
    let form = LoginForm { username: email.clone(), password };
    let session: TokenResponse = anonymous.post_form("/token", &form).await?.value;
    let api = Api::new(&url, Some(&session.access_token), flags.allow_insecure_http)?;
    let request = CreateToken { name: token_name(), role: None, expires_in_days: Some(flags.expires_in_days) };
    let created: CreatedToken = api.post("/tokens", &request).await?.value;
    let previous = stored().ok().flatten();
    let credentials = Credentials {
        url: url.clone(),
        email: email.clone(),
        token: created.token,
        token_id: created.info.id,
        token_name: created.info.name.clone(),
        expires_at: created.info.expires_at,
    };
    let path = store(&credentials)?;
    if let Some(previous) = previous.filter(|previous| previous.url == url) {
        // The token this login replaces would otherwise stay valid, unused, until it expired.
        let _ = revoke(&previous, flags.allow_insecure_http).await;
    }
    let expires = credentials.expires_at.map_or_else(|| "never".to_owned(), |at| at.format("%Y-%m-%d").to_string());
    eprintln!(
        "Signed in to {url} as {email}. API token '{}' (expires {expires}) stored in {}",
        credentials.token_name,
        path.display()
    );
    Ok(0)
}

pub async fn logout(flags: LogoutFlags) -> anyhow::Result<i32> {
    let Some(credentials) = stored()? else {
        return Err(usage("not signed in: there is no stored login"));
    };
    let path = credentials_path().context("no config directory")?;
    match revoke(&credentials, flags.allow_insecure_http).await {
        Ok(()) => eprintln!("Revoked token '{}' on {}", credentials.token_name, credentials.url),
        // A token the server no longer accepts (expired, revoked, its user deleted) cannot be used again anyway.
        Err(error) if error.downcast_ref::<Refused>().is_some_and(|refused| refused.status == 401) => {
            eprintln!("The server no longer accepted token '{}'; forgetting it", credentials.token_name)
        }
        Err(error) => return Err(error.context("the token was not revoked, so it is kept; try again")),
    }
    std::fs::remove_file(&path).with_context(|| format!("deleting {}", path.display()))?;
    eprintln!("Signed out: deleted {}", path.display());
    Ok(0)
}

async fn revoke(credentials: &Credentials, allow_insecure_http: bool) -> anyhow::Result<()> {
    let api = Api::new(&credentials.url, Some(&credentials.token), allow_insecure_http)?;
    let raw = api.delete(&format!("/tokens/{}", credentials.token_id)).await?;
    let _: TokenInfo = serde_json::from_str(&raw)?;
    Ok(())
}

/// A name that says where the token came from, unique per login, within the API's name rules.
fn token_name() -> String {
    let host: String = automa_agent::hostname()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '.') { c } else { '-' })
        .take(40)
        .collect();
    format!("automa CLI on {host} {}", Utc::now().format("%Y-%m-%d %H.%M.%S"))
}

/// $XDG_CONFIG_HOME/automa, else ~/.config/automa.
fn config_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|path| path.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(base.join("automa"))
}

pub fn credentials_path() -> Option<PathBuf> {
    config_dir().map(|dir| dir.join("credentials.json"))
}

/// The stored login, if there is one; an error if the file belongs to another user, can be read by others, or is
/// not a login.
pub fn stored() -> anyhow::Result<Option<Credentials>> {
    let Some(path) = credentials_path() else { return Ok(None) };
    let text = match std::fs::File::open(&path) {
        Ok(file) => {
            let metadata = file.metadata()?;
            // Like ssh: a file someone else owns could have been put there for this user to send its token
            // to a server of their choosing, or be read by them at will.
            let me = nix::unistd::getuid().as_raw();
            if metadata.uid() != me {
                return Err(usage(format!(
                    "{} is owned by user {}, not by you (user {me}); refusing to use the token in it. Remove it \
                     and run `automa login` again",
                    path.display(),
                    metadata.uid()
                )));
            }
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(usage(format!(
                    "{} is accessible by other users (mode {mode:04o}); refusing to use the token in it. Run \
                     `chmod 600 {}` (and `automa login` again if someone may have read it)",
                    path.display(),
                    path.display()
                )));
            }
            std::io::read_to_string(file)?
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    let credentials = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a login stored by `automa login`", path.display()))?;
    Ok(Some(credentials))
}

/// Writes the login where only this user can read it: the file is created 0600 under a new name and renamed
/// over the old one, so it is never readable by others, not even half-written.
fn store(credentials: &Credentials) -> anyhow::Result<PathBuf> {
    let dir =
        config_dir().ok_or_else(|| usage("neither XDG_CONFIG_HOME nor HOME is set: nowhere to store the login"))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let path = dir.join("credentials.json");
    let partial = dir.join(".credentials.json.partial");
    let _ = std::fs::remove_file(&partial);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    file.write_all(serde_json::to_string_pretty(credentials)?.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&partial, &path)?;
    Ok(path)
}

/// A line from standard input after a prompt on standard error.
fn ask(prompt: &str) -> anyhow::Result<String> {
    eprint!("{prompt}");
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line)? == 0 {
        return Err(usage(format!("no answer to '{}' on standard input", prompt.trim_end_matches([' ', ':']))));
    }
    Ok(line.trim().to_owned())
}

/// A password: AUTOMA_PASSWORD, else typed at a prompt without echo, else a line of standard input.
pub fn read_password(prompt: &str) -> anyhow::Result<String> {
    if let Ok(password) = std::env::var("AUTOMA_PASSWORD") {
        return Ok(password);
    }
    read_hidden(prompt, false)
}

/// Something secret, typed at a prompt that does not echo; from a pipe, one line (or all of it, `whole`).
pub fn read_hidden(prompt: &str, whole: bool) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut text = String::new();
        if whole {
            text = std::io::read_to_string(stdin.lock())?;
        } else {
            stdin.lock().read_line(&mut text)?;
        }
        let text = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
        return Ok(text.to_owned());
    }
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    eprint!("{prompt}");
    let original = tcgetattr(&stdin)?;
    let mut quiet = original.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet.local_modes.insert(LocalModes::ECHONL);
    tcsetattr(&stdin, OptionalActions::Now, &quiet)?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    tcsetattr(&stdin, OptionalActions::Now, &original)?;
    read?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}
