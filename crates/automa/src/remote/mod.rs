//! The CLI as a client of the REST API: `login`/`logout`, one command group per resource, `logs`, and
//! `run`. Requests and answers are the API's own types (those its OpenAPI document is generated from), so the
//! client cannot drift from the server. Exit codes: 0 done, 1 the server refused (or could not be reached),
//! 2 a usage error; commands that follow a run exit with the script's code instead.

mod admin;
mod login;
mod resources;
mod runs;
mod table;

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use serde::{Serialize, de::DeserializeOwned};

use automa_server::api::Page;

pub use admin::{AuditListFlags, audit_list, audit_verify};
pub use runs::{RunFlags, run};

use crate::client::{Answer, Api};

/// Where `automa run` and the client commands look when no URL is given or stored.
const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// How and where to reach the server. A token comes from `--token-file`, else AUTOMA_TOKEN, else the login
/// `automa login` stored; never from the command line, where every local user could read it in the process
/// list.
#[derive(Args, Clone)]
#[command(next_help_heading = "Connection")]
pub struct ClientFlags {
    /// The server's URL (default: the one `automa login` stored, else http://127.0.0.1:8080).
    #[arg(long, env = "AUTOMA_URL", global = true)]
    pub url: Option<String>,
    /// A file holding an API token (atm_...) or session token, instead of AUTOMA_TOKEN or the stored login.
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// Allow plain http:// to a server that is not on loopback: the token travels in clear.
    #[arg(long, env = "AUTOMA_ALLOW_INSECURE_HTTP", global = true)]
    pub allow_insecure_http: bool,
    /// `table`: aligned columns sized to the terminal; `json`: the API's JSON exactly as it answered.
    #[arg(long, short = 'o', value_enum, default_value = "table", global = true)]
    pub output: Output,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// The commands that talk to a server through its API.
#[derive(Subcommand)]
pub enum Remote {
    /// Sign in: asks for the server's URL, your e-mail and password, creates an API token for this CLI and
    /// stores it (mode 0600) in $XDG_CONFIG_HOME/automa or ~/.config/automa.
    Login(login::LoginFlags),
    /// Revoke the stored token on the server and delete it.
    Logout(login::LogoutFlags),
    /// Scripts: list, get, create, update, delete, versions, and push a local file.
    Scripts {
        #[command(flatten)]
        flags: ClientFlags,
        #[command(subcommand)]
        command: resources::ScriptCommand,
    },
    /// Tasks: list, get, create, update, delete, and start.
    Tasks {
        #[command(flatten)]
        flags: ClientFlags,
        #[command(subcommand)]
        command: resources::TaskCommand,
    },
    /// Runs: list, get, start (with --follow for live output), cancel.
    Runs {
        #[command(flatten)]
        flags: ClientFlags,
        #[command(subcommand)]
        command: runs::RunCommand,
    },
    /// A run's output; with --follow, live until the run ends, then exit with the script's exit code.
    Logs {
        run: i64,
        #[arg(long, short = 'f')]
        follow: bool,
        #[command(flatten)]
        flags: ClientFlags,
    },
    /// Agents: list, get, create (shows the enrollment token once), update (drain, disable), delete.
    Agents {
        #[command(flatten)]
        flags: ClientFlags,
        #[command(subcommand)]
        command: admin::AgentCommand,
    },
    /// Users through the API: list, get, me, create, update, delete (admins).
    Users {
        #[command(flatten)]
        flags: ClientFlags,
        #[command(subcommand)]
        command: admin::UserCommand,
    },
    /// Secrets: list, get, create, update, delete. Values are read from a prompt or standard input, never
    /// from the command line, and never shown.
    Secrets {
        #[command(flatten)]
        flags: ClientFlags,
        #[command(subcommand)]
        command: admin::SecretCommand,
    },
    /// Your API tokens: list, create (shows the token once), delete (revoke).
    Tokens {
        #[command(flatten)]
        flags: ClientFlags,
        #[command(subcommand)]
        command: admin::TokenCommand,
    },
}

/// A mistake in how the command was called, as opposed to a refusal by the server: exit code 2.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Usage(message.into()))
}

/// Runs a client command and exits with its code.
pub async fn main(command: Remote) -> ! {
    let result = match command {
        Remote::Login(flags) => login::login(flags).await,
        Remote::Logout(flags) => login::logout(flags).await,
        Remote::Scripts { flags, command } => resources::scripts(&flags, command).await,
        Remote::Tasks { flags, command } => resources::tasks(&flags, command).await,
        Remote::Runs { flags, command } => runs::runs(&flags, command).await,
        Remote::Logs { run, follow, flags } => runs::logs(&flags, run, follow).await,
        Remote::Agents { flags, command } => admin::agents(&flags, command).await,
        Remote::Users { flags, command } => admin::users(&flags, command).await,
        Remote::Secrets { flags, command } => admin::secrets(&flags, command).await,
        Remote::Tokens { flags, command } => admin::tokens(&flags, command).await,
    };
    exit(result)
}

/// Exits with the command's code, or reports its error: 2 for a usage error, else 1.
pub fn exit(result: anyhow::Result<i32>) -> ! {
    let code = match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            if error.is::<Usage>() { 2 } else { 1 }
        }
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

/// The client for these flags, with the first token found: `--token-file`, AUTOMA_TOKEN, then the stored login
/// (which is only ever sent to the server it was issued by). `who` names the command in the error.
pub fn connect(flags: &ClientFlags, who: &str) -> anyhow::Result<Api> {
    let explicit = match &flags.token_file {
        Some(path) => {
            Some(std::fs::read_to_string(path).map_err(|error| usage(format!("reading {}: {error}", path.display())))?)
        }
        None => std::env::var("AUTOMA_TOKEN").ok(),
    };
    if let Some(token) = explicit.as_deref().map(str::trim).filter(|token| !token.is_empty()) {
        return Api::new(flags.url.as_deref().unwrap_or(DEFAULT_URL), Some(token), flags.allow_insecure_http);
    }
    let Some(stored) = login::stored()? else {
        return Err(usage(format!(
            "{who} needs its token: set AUTOMA_TOKEN or pass --token-file PATH, or sign in with `automa login`"
        )));
    };
    if let Some(url) = &flags.url
        && url.trim_end_matches('/') != stored.url.trim_end_matches('/')
    {
        return Err(usage(format!(
            "you are signed in to {}, not {url}: the stored token is only sent to the server that issued it. \
             Run `automa login --url {url}`, or give that server's token with AUTOMA_TOKEN or --token-file",
            stored.url
        )));
    }
    Api::new(&stored.url, Some(&stored.token), flags.allow_insecure_http)
}

/// Prints an answer: as it came, or its fields one per line.
pub fn print_object<T: Serialize>(output: Output, answer: &Answer<T>) -> anyhow::Result<()> {
    match output {
        Output::Json => print_raw(&answer.raw),
        Output::Table => table::fields(&answer.value, &[])?.print(),
    }
    Ok(())
}

/// Prints a page of a list: as it came, or as a table with `columns`, and how many more there are.
pub fn print_page<T>(output: Output, answer: &Answer<Page<T>>, columns: &[Column<T>]) {
    match output {
        Output::Json => print_raw(&answer.raw),
        Output::Table => {
            print_rows(&answer.value.items, columns);
            let page = &answer.value;
            let shown = page.items.len() as i64;
            if page.offset > 0 || shown < page.total {
                println!("({}-{} of {}; see --limit and --offset)", page.offset + 1, page.offset + shown, page.total);
            }
        }
    }
}

pub fn print_rows<T>(items: &[T], columns: &[Column<T>]) {
    let headers = columns.iter().map(|(header, _)| *header).collect();
    let rows = items.iter().map(|item| columns.iter().map(|(_, cell)| cell(item)).collect()).collect();
    table::Table { headers, rows }.print();
}

/// A column of a table: its header and how to read its cell from an item.
pub type Column<T> = (&'static str, fn(&T) -> String);

/// A message for people: on standard output for tables, on standard error beside JSON, which stays parseable.
pub fn say(output: Output, message: &str) {
    match output {
        Output::Table => println!("{message}"),
        Output::Json => eprintln!("{message}"),
    }
}

pub fn print_raw(raw: &str) {
    if raw.ends_with('\n') {
        print!("{raw}");
    } else {
        println!("{raw}");
    }
}

/// The paging flags of every list.
#[derive(Args, Clone, Copy)]
pub struct PageFlags {
    /// Items per page (1-500, default 50).
    #[arg(long)]
    limit: Option<i64>,
    /// Items to skip.
    #[arg(long)]
    offset: Option<i64>,
}

impl PageFlags {
    pub fn query(self) -> Vec<(&'static str, String)> {
        let mut query = Vec::new();
        if let Some(limit) = self.limit {
            query.push(("limit", limit.to_string()));
        }
        if let Some(offset) = self.offset {
            query.push(("offset", offset.to_string()));
        }
        query
    }
}

/// Reads an API answer's type from the answer of another call, e.g. the resource a DELETE gave back.
pub fn parse<T: DeserializeOwned>(raw: String) -> anyhow::Result<Answer<T>> {
    Ok(Answer { value: serde_json::from_str(&raw)?, raw })
}

pub fn when(time: Option<chrono::DateTime<chrono::Utc>>) -> String {
    time.map_or_else(|| "-".to_owned(), |time| time.format("%Y-%m-%d %H:%M:%S").to_string())
}

pub fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |value| value.to_string())
}
