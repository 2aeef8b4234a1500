//! The `automa` binary: the server, the remote agent, the CLI client, operations commands, and the sandbox
//! helper entry point.

mod backup;
mod bench;
mod client;
mod logging;
mod remote;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, CommandFactory, Parser, Subcommand};
use serde::Serialize;

use automa_core::{Email, Role};
use automa_server::{
    Application, Config,
    config::{LogFormat, SecretString},
    file_modes,
};
use automa_store::{Actor, AuditCheckpoint, AuditKey, NewUser, Store};

#[derive(Parser)]
#[command(name = "automa", version, about = "Manage, schedule, sandbox and audit Python scripts")]
struct Cli {
    /// Configuration file (default: ./automa.toml when it exists); `automa agent` reads none, only its flags and
    /// environment, and refuses to start when given one.
    #[arg(long, global = true, env = "AUTOMA_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API, the dashboard, the scheduler and an embedded agent.
    Serve(ServeFlags),
    /// Apply pending database migrations and exit.
    Migrate(StoreFlags),
    /// Manage users directly in the database.
    #[command(subcommand)]
    User(UserCommand),
    /// The audit log: verify it or take a checkpoint in the database directly, or list and verify it through
    /// the API.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Copy the SQLite database to PATH, consistently, while the server runs (for PostgreSQL: how to pg_dump).
    Backup {
        path: PathBuf,
        /// Replace PATH if it exists.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        store: StoreFlags,
    },
    /// Replace the SQLite database with a backup, after checking it; refused while a server or another automa
    /// command has the database open.
    Restore {
        path: PathBuf,
        #[command(flatten)]
        store: StoreFlags,
    },
    /// Run a task (by name or id) or a local script.py through the server.
    Run(remote::RunFlags),
    #[command(flatten)]
    Remote(remote::Remote),
    /// Print a shell completion script, e.g. `automa completions bash > /etc/bash_completion.d/automa`.
    Completions { shell: clap_complete::Shell },
    /// Execute runs for a server: a remote agent, connecting out to the server only.
    Agent(AgentFlags),
    /// Measure from outside: `suite`, issue 12's performance suite against `automa serve` as a child process;
    /// `environments`, what a cached environment adds to a run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// The agent's token (atma_..., shown once when the agent was created) comes from the AUTOMA_TOKEN
/// environment variable or from --token-file, never from the command line, where every local user could read
/// it in the process list. The agent's settings are its flags and their AUTOMA_* variables, the same names as
/// the server's; it reads no configuration file.
#[derive(Args)]
struct AgentFlags {
    /// The server's URL: https://, or http:// on this host's loopback. Several servers sharing one database:
    /// repeat --server or separate the URLs with commas; the agent moves to the next when one cannot be reached.
    #[arg(long, env = "AUTOMA_URL", required = true)]
    server: Vec<String>,
    /// A file holding the agent's token (instead of the AUTOMA_TOKEN environment variable).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Allow plain http:// to a server that is not on loopback: the token and run secrets travel in clear.
    #[arg(long, env = "AUTOMA_ALLOW_INSECURE_HTTP")]
    allow_insecure_http: bool,
    /// Runs at once, 1-1024 (default: the number of cores); the server may cap it lower.
    #[arg(long, env = "AUTOMA_AGENT_CONCURRENCY")]
    concurrency: Option<usize>,
    /// Where run directories live.
    #[arg(long, default_value = "automa-agent-data")]
    data_dir: PathBuf,
    /// Address ranges networked runs may not reach (repeatable, or comma-separated), e.g. 10.0.0.0/8.
    #[arg(long, env = "AUTOMA_NETWORK_DENY", value_delimiter = ',')]
    network_deny: Vec<String>,
    /// `strict` or `none` (scripts run without isolation).
    #[arg(long, env = "AUTOMA_SANDBOX", default_value = automa_agent::SandboxSettings::DEFAULT_PROFILE)]
    sandbox: String,
    /// The interpreter runs use (default: the real executable behind python3).
    #[arg(long, env = "AUTOMA_PYTHON")]
    python: Option<PathBuf>,
    /// The program that sets up the sandbox (default: this binary).
    #[arg(long, env = "AUTOMA_SANDBOX_HELPER")]
    sandbox_helper: Option<PathBuf>,
    /// Keep a sandbox prepared for the next run that asks for a warm start, in each slot that served one
    /// (`false`: every run starts cold).
    #[arg(long, env = "AUTOMA_WARM_POOL", default_value_t = true, action = clap::ArgAction::Set)]
    warm_pool: bool,
    /// On SIGTERM, how long running runs may finish before they are stopped and handed back.
    #[arg(long, env = "AUTOMA_SHUTDOWN_GRACE_SECONDS", default_value_t = automa_agent::DEFAULT_SHUTDOWN_GRACE_SECONDS)]
    shutdown_grace_seconds: u64,
    /// `text` or `json` (JSON lines).
    #[arg(long, env = "AUTOMA_LOG_FORMAT", default_value = "text", value_parser = parse_log_format)]
    log_format: LogFormat,
    #[command(flatten)]
    packages: PackageFlags,
}

/// Where runs' packages come from.
#[derive(Args)]
struct PackageFlags {
    /// The uv that builds environments (default: `uv` on PATH).
    #[arg(long, env = "AUTOMA_UV")]
    uv: Option<PathBuf>,
    /// The package index (default: uv's, PyPI).
    #[arg(long, env = "AUTOMA_PACKAGE_INDEX_URL")]
    package_index_url: Option<String>,
    /// More indexes (repeatable, or comma-separated).
    #[arg(long, env = "AUTOMA_PACKAGE_EXTRA_INDEX_URLS", value_delimiter = ',')]
    package_extra_index_urls: Vec<String>,
    /// Directories or URLs of wheels (repeatable, or comma-separated).
    #[arg(long, env = "AUTOMA_PACKAGE_FIND_LINKS", value_delimiter = ',')]
    package_find_links: Vec<String>,
    /// Use no index and no network: packages come from --package-find-links only.
    #[arg(long, env = "AUTOMA_PACKAGE_OFFLINE")]
    package_offline: bool,
    /// The most megabytes environments may take before the least recently used are removed.
    #[arg(long, env = "AUTOMA_ENV_CACHE_MB", default_value_t = automa_agent::PackageSettings::DEFAULT_CACHE_MB)]
    env_cache_mb: u64,
}

impl AgentFlags {
    fn sandbox_settings(&self) -> automa_agent::SandboxSettings {
        automa_agent::SandboxSettings {
            profile: self.sandbox.clone(),
            python: self.python.clone(),
            helper: self.sandbox_helper.clone(),
            warm_pool: self.warm_pool,
            // As for the server's setting, "a, b," in the environment is two ranges.
            network_deny: self
                .network_deny
                .iter()
                .map(|cidr| cidr.trim())
                .filter(|cidr| !cidr.is_empty())
                .map(str::to_owned)
                .collect(),
            ..automa_agent::SandboxSettings::new(&self.data_dir)
        }
    }

    fn package_settings(&self) -> automa_agent::PackageSettings {
        let listed = |values: &[String]| -> Vec<String> {
            values.iter().map(|value| value.trim()).filter(|value| !value.is_empty()).map(str::to_owned).collect()
        };
        let packages = &self.packages;
        automa_agent::PackageSettings {
            uv: packages.uv.clone(),
            index_url: packages.package_index_url.clone(),
            extra_index_urls: listed(&packages.package_extra_index_urls),
            find_links: listed(&packages.package_find_links),
            offline: packages.package_offline,
            cache_mb: packages.env_cache_mb,
            ..automa_agent::PackageSettings::new(&self.data_dir)
        }
    }
}

fn parse_log_format(value: &str) -> Result<LogFormat, String> {
    serde_json::from_value(value.into()).map_err(|_| format!("'{value}' is not a log format: text or json"))
}

/// Flags override the environment and the configuration file.
#[derive(Args, Serialize, Default)]
struct ServeFlags {
    /// Listen address, e.g. 127.0.0.1:8080.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    bind: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    store: StoreFlags,
    /// Serve the API only, without the embedded agent.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    no_agent: bool,
}

#[derive(Args, Serialize, Default)]
struct StoreFlags {
    /// sqlite://PATH or postgres://...
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    database_url: Option<SecretString>,
    /// Directory for the default database and the development key.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user; the password is read from AUTOMA_PASSWORD or prompted on standard input.
    Add {
        email: String,
        /// Make the user an admin (default: viewer, unless --role is given).
        #[arg(long)]
        admin: bool,
        #[arg(long, conflicts_with = "admin")]
        role: Option<Role>,
        #[command(flatten)]
        store: StoreFlags,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute the hash chain; exits 1 and names the first bad entry if it is broken. Reads the database
    /// directly and needs the server's secret key (the same configuration as `serve`), since entries are keyed
    /// with it; with --remote, asks the server through the API instead (admins).
    Verify {
        /// A checkpoint printed earlier by `automa audit checkpoint` (the JSON itself, or a file holding it):
        /// also fail if the chain no longer holds that entry with that hash.
        #[arg(long)]
        checkpoint: Option<String>,
        /// Verify through the API of the server you are signed in to (see `automa login`).
        #[arg(long)]
        remote: bool,
        #[command(flatten)]
        store: StoreFlags,
        #[command(flatten)]
        client: remote::ClientFlags,
    },
    /// The audit log through the API, newest first.
    List(remote::AuditListFlags),
    /// Verify the chain and print its head as one JSON line ({"id":..,"hash":..}) to keep outside the
    /// database, e.g. in a log shipper; exits 1 without printing a head if the chain is broken.
    Checkpoint(StoreFlags),
}

fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some(automa_agent::SANDBOX_HELPER_ARG) {
        automa_runner::helper::main();
    }
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(flags) => {
            let config = Config::load(cli.config, &flags)?;
            let _log_file = logging::for_server(&config)?;
            for variable in Config::unknown_variables() {
                tracing::warn!(%variable, "unknown AUTOMA_* variable ignored; is it misspelt?");
            }
            serve(config).await
        }
        Command::Migrate(flags) => {
            let config = Config::load(cli.config, &flags)?;
            init_logging(config.log_format);
            open_store(&config).await?;
            println!("database migrated");
            Ok(())
        }
        Command::User(UserCommand::Add { email, admin, role, store }) => {
            let config = Config::load(cli.config, &store)?;
            init_logging(config.log_format);
            let email = Email::parse("email", &email).map_err(|e| anyhow::anyhow!("{e}"))?;
            let role = if admin { Role::Admin } else { role.unwrap_or(Role::Viewer) };
            let password = read_password()?;
            if password.chars().count() < 8 {
                bail!("the password must be at least 8 characters");
            }
            let store = open_store(&config).await?;
            let password_hash = automa_server::auth::hash_password(password).await?;
            let new = NewUser { email: email.as_str().to_owned(), password_hash, role };
            let user = store.create_user(&Actor::system(), new, false).await?.context("the user was not created")?;
            println!("created {} ({}) with id {}", user.email, user.role, user.id);
            Ok(())
        }
        Command::Run(flags) => remote::run(flags).await,
        Command::Remote(command) => remote::main(command).await,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "automa", &mut std::io::stdout());
            Ok(())
        }
        Command::Agent(flags) => {
            refuse_configuration_file(cli.config.as_deref(), Path::new(Config::DEFAULT_FILE))?;
            init_logging(flags.log_format);
            let servers = automa_agent::parse_server_urls(&flags.server, flags.allow_insecure_http)?;
            let token = token_from(flags.token_file.as_deref(), "the agent")?;
            remote_agent(&flags, &servers, &token).await
        }
        Command::Backup { path, force, store } => {
            let config = Config::load(cli.config, &store)?;
            init_logging(config.log_format);
            backup::backup(&config, &path, force).await
        }
        Command::Restore { path, store } => {
            let config = Config::load(cli.config, &store)?;
            init_logging(config.log_format);
            backup::restore(&config, &path).await
        }
        Command::Bench(bench::BenchCommand::Suite(flags)) => bench::suite(flags).await,
        Command::Bench(bench::BenchCommand::Environments { python, uv }) => bench::environments(python, uv).await,
        Command::Audit(AuditCommand::Verify { checkpoint, remote: true, client, .. }) => {
            let checkpoint = checkpoint.as_deref().map(read_checkpoint).transpose();
            match checkpoint {
                Ok(checkpoint) => remote::audit_verify(&client, checkpoint).await,
                Err(error) => remote::exit(Err(remote::usage(format!("{error:#}")))),
            }
        }
        Command::Audit(AuditCommand::List(flags)) => remote::audit_list(flags).await,
        Command::Audit(AuditCommand::Verify { checkpoint, store, .. }) => {
            let config = Config::load(cli.config, &store)?;
            init_logging(config.log_format);
            let checkpoint = checkpoint.as_deref().map(read_checkpoint).transpose()?;
            let store = open_store(&config).await?;
            let result = store.verify_audit(checkpoint.as_ref()).await?;
            println!("{}", serde_json::to_string_pretty(&result)?);
            if !result.ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Audit(AuditCommand::Checkpoint(flags)) => {
            let config = Config::load(cli.config, &flags)?;
            init_logging(config.log_format);
            let store = open_store(&config).await?;
            let result = store.verify_audit(None).await?;
            if !result.ok {
                eprintln!("{}", serde_json::to_string_pretty(&result)?);
                bail!("the audit chain is broken: no checkpoint taken");
            }
            println!("{}", serde_json::to_string(&result.head)?);
            Ok(())
        }
    }
}

/// A checkpoint given inline as JSON, or the path of a file holding one.
fn read_checkpoint(value: &str) -> anyhow::Result<AuditCheckpoint> {
    let text = if value.trim_start().starts_with('{') {
        value.to_owned()
    } else {
        std::fs::read_to_string(value).with_context(|| format!("reading the checkpoint file {value}"))?
    };
    serde_json::from_str(text.trim())
        .with_context(|| format!("the checkpoint is not {{\"id\":N,\"hash\":\"...\"}}: {value}"))
}

/// Opens the database as the server does, keyed with the same audit key, so that entries written by the CLI
/// join the server's chain and verification checks them with the server's key.
async fn open_store(config: &Config) -> anyhow::Result<Store> {
    file_modes::prepare_data_dir(&config.data_dir)?;
    let key = automa_server::keys::secret_key(config)?;
    let url = config.database_url();
    let store = Store::connect(&url)
        .await
        .with_context(|| format!("opening {}", automa_store::redact_url(&url)))?
        .with_audit_key(AuditKey::derive(&key));
    store.migrate().await?;
    file_modes::warn_if_exposed(&file_modes::sensitive_paths(&config.data_dir, store.sqlite_path().as_deref()));
    Ok(store)
}

fn read_password() -> anyhow::Result<String> {
    if let Ok(password) = std::env::var("AUTOMA_PASSWORD") {
        return Ok(password);
    }
    eprint!("password: ");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    let stop = shutdown_signal();
    let addr = app.local_addr();
    tracing::info!(database = app.store().backend_name(), "serving on http://{addr}");
    println!("Automa is running: open http://{addr}/ (API docs at http://{addr}/docs)");
    app.run_until_stopped(stop).await?;
    tracing::info!("stopped");
    Ok(())
}

/// A token from `--token-file`, else from AUTOMA_TOKEN; `who` names the command in the error.
fn token_from(file: Option<&std::path::Path>, who: &str) -> anyhow::Result<String> {
    let token = match file {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        None => std::env::var("AUTOMA_TOKEN").unwrap_or_default(),
    };
    let token = token.trim();
    if token.is_empty() {
        bail!("{who} needs its token: set AUTOMA_TOKEN or pass --token-file PATH");
    }
    Ok(token.to_owned())
}

/// The settings an agent took from `automa.toml` before it stopped reading one, with what sets each now.
const AGENT_SETTINGS_FROM_FILE: &[(&str, &str)] = &[
    ("network_deny", "--network-deny or AUTOMA_NETWORK_DENY"),
    ("sandbox", "--sandbox or AUTOMA_SANDBOX"),
    ("python", "--python or AUTOMA_PYTHON"),
    ("sandbox_helper", "--sandbox-helper or AUTOMA_SANDBOX_HELPER"),
    // The flag only: an agent has always ignored AUTOMA_DATA_DIR, which containers set for the server.
    ("data_dir", "--data-dir"),
    ("agent_concurrency", "--concurrency or AUTOMA_AGENT_CONCURRENCY"),
    ("shutdown_grace_seconds", "--shutdown-grace-seconds or AUTOMA_SHUTDOWN_GRACE_SECONDS"),
    ("log_format", "--log-format or AUTOMA_LOG_FORMAT"),
    ("uv", "--uv or AUTOMA_UV"),
    ("package_index_url", "--package-index-url or AUTOMA_PACKAGE_INDEX_URL"),
    ("package_extra_index_urls", "--package-extra-index-urls or AUTOMA_PACKAGE_EXTRA_INDEX_URLS"),
    ("package_find_links", "--package-find-links or AUTOMA_PACKAGE_FIND_LINKS"),
    ("package_offline", "--package-offline or AUTOMA_PACKAGE_OFFLINE"),
    ("env_cache_mb", "--env-cache-mb or AUTOMA_ENV_CACHE_MB"),
];

/// An agent used to read the configuration file; one upgraded with its settings still there would silently run
/// without them (its `network_deny` ranges above all), so it refuses to start until they are moved to flags.
fn refuse_configuration_file(given: Option<&Path>, default: &Path) -> anyhow::Result<()> {
    if let Some(file) = given {
        bail!(
            "automa agent reads no configuration file ({} given with --config or AUTOMA_CONFIG): use its flags or \
             AUTOMA_* variables (--network-deny, --sandbox, --data-dir, ...; see automa agent --help)",
            file.display()
        );
    }
    let text = match std::fs::read_to_string(default) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => bail!("{} cannot be read to check for agent settings it would ignore: {e}", default.display()),
    };
    let table: toml::Table =
        text.parse().map_err(|e| anyhow::anyhow!("{} is not valid TOML: {e}", default.display()))?;
    let ignored: Vec<String> = AGENT_SETTINGS_FROM_FILE
        .iter()
        .filter(|(key, _)| table.contains_key(*key))
        .map(|(key, replacement)| format!("{key} (use {replacement})"))
        .collect();
    if !ignored.is_empty() {
        bail!(
            "automa agent reads no configuration file, but {} sets agent settings it would ignore: {}; move them \
             to the agent's flags or AUTOMA_* variables, or start the agent from another directory if the file is a \
             server's",
            default.display(),
            ignored.join(", ")
        );
    }
    Ok(())
}

async fn remote_agent(flags: &AgentFlags, servers: &[reqwest::Url], token: &str) -> anyhow::Result<()> {
    // Run directories hold scripts and, while they run, their output: keep them from other local users.
    file_modes::prepare_data_dir(&flags.data_dir)?;
    let mut settings = flags.sandbox_settings();
    for server in servers {
        deny_the_server(&mut settings, server).await;
    }
    let concurrency = automa_agent::concurrency(flags.concurrency)?;
    let sandbox = automa_agent::build_sandbox(&settings, concurrency).await?;
    let backend = automa_agent::HttpBackend::new(servers, token, flags.allow_insecure_http)?;
    let agent_config = automa_agent::AgentConfig {
        concurrency,
        shutdown_grace: std::time::Duration::from_secs(flags.shutdown_grace_seconds),
        hostname: automa_agent::hostname(),
        packages: flags.package_settings(),
    };
    let agent = automa_agent::Agent::new(backend, sandbox, agent_config);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let signal = shutdown_signal();
    tokio::spawn(async move {
        signal.await;
        stop.send_replace(true);
    });
    let urls: Vec<&str> = servers.iter().map(reqwest::Url::as_str).collect();
    tracing::info!(servers = ?urls, concurrency, "agent started");
    agent.run(stopping).await?;
    Ok(())
}

/// Networked runs on a remote agent must not reach the Automa server any more than runs on the server's own
/// agent do: its addresses, as resolved at start, join the deny list. (This host's own addresses and loopback
/// are refused to networked runs already.)
async fn deny_the_server(settings: &mut automa_agent::SandboxSettings, server: &reqwest::Url) {
    let Some((host, port)) =
        server.host_str().map(|host| host.trim_matches(['[', ']']).to_owned()).zip(server.port_or_known_default())
    else {
        return;
    };
    match tokio::net::lookup_host((host.as_str(), port)).await {
        Ok(addresses) => {
            let addresses: Vec<String> =
                addresses.map(|a| a.ip()).filter(|ip| !ip.is_loopback()).map(|ip| ip.to_string()).collect();
            tracing::info!(%host, ?addresses, "networked runs may not reach the server's addresses");
            settings.network_deny.extend(addresses);
        }
        Err(error) => tracing::warn!(
            %host, %error,
            "cannot resolve the server's address: networked runs are not kept from reaching it; list it in --network-deny"
        ),
    }
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not when the future is
/// first polled, so a signal that arrives while the server is still starting stops it gracefully instead of
/// killing it.
fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("installing a SIGTERM handler cannot fail on Unix");
    let mut interrupt = signal(SignalKind::interrupt()).expect("installing a SIGINT handler cannot fail on Unix");
    async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down: finishing in-flight requests");
    }
}

fn init_logging(format: LogFormat) {
    logging::to_stderr(format);
}
