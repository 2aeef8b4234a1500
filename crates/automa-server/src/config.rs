//! Configuration: defaults < `automa.toml` < `AUTOMA_*` environment (a `.env` file is read first) < flags.
//! Secrets are redacted wherever the configuration is printed.

use std::{fmt, path::PathBuf};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

use automa_agent::{PackageSettings, SandboxSettings};

/// A secret value: its `Debug` and `Display` never show it.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        SecretString(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for SecretString {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(SecretString::new(s))
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Development,
    Production,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Who may grant a run network access (`network: true` on a task or an ad-hoc run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkGrant {
    Admin,
    Operator,
}

/// Every setting of `automa serve`. Field names are the lower-case forms of the `AUTOMA_*` variables.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Where the development secret key and the default SQLite database live.
    pub data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://...`; defaults to SQLite in `data_dir`.
    pub database_url: Option<SecretString>,
    pub bind: String,
    pub env: Environment,
    /// Signs sessions and encrypts secrets: at least 32 bytes. Required in production; in development a key is
    /// generated into `data_dir` when this is absent. Set but empty is refused, never taken as absent.
    pub secret_key: Option<SecretString>,
    /// Session lifetime.
    pub token_ttl_seconds: i64,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Largest accepted script.
    pub max_script_bytes: usize,
    /// Lets anyone create a viewer account; off by default: only admins create users.
    pub open_signup: bool,
    /// Origins allowed to call the API from a browser, besides the server's own.
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub cors_origins: Vec<String>,
    pub log_format: LogFormat,
    /// `strict` (default) or `none`.
    pub sandbox: String,
    /// The interpreter runs use; default: the real executable behind `python3`.
    pub python: Option<PathBuf>,
    /// Runs the embedded agent executes at once; default: the number of cores.
    pub agent_concurrency: Option<usize>,
    /// Serve the API only, without the embedded agent (for API replicas).
    pub no_agent: bool,
    /// Login attempts allowed per client address per minute before 429 (successful ones are not counted).
    pub login_attempts_per_minute: u32,
    /// Login attempts allowed per account per minute before 429, from all addresses together.
    pub login_attempts_per_account_per_minute: u32,
    /// Passwords hashed or checked at once (each argon2 call holds about 19 MiB); default: the number of cores.
    pub password_hashing_concurrency: Option<usize>,
    /// Proxies (addresses or CIDRs) whose `X-Forwarded-For` is believed. Empty (the default): the header is
    /// ignored and the peer's address is the client's. A list, or one comma-separated string.
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub trusted_proxies: Vec<String>,
    /// How long a claimed run's lease lasts; agents renew it three times per lease.
    pub lease_seconds: u64,
    /// Output stored per run; past it a note says what was cut.
    pub max_log_bytes: i64,
    /// How long running runs may finish after SIGTERM before they are given back.
    pub shutdown_grace_seconds: u64,
    /// The program that sets up the sandbox; default: this binary with `__sandbox-helper`.
    pub sandbox_helper: Option<PathBuf>,
    /// Requests per minute per user token, or per client address without one (bursts up to this many);
    /// beyond it 429 with `Retry-After`. 0 turns the limit off.
    pub requests_per_minute: u32,
    /// The same for agent tokens, which ship output in many small requests. 0 turns the limit off.
    pub agent_requests_per_minute: u32,
    /// Longest time a request may take, body upload included, before 408; the agent long-poll
    /// (`/agent/claim`) is bounded by its own wait instead, and event streams once they have started.
    pub request_timeout_seconds: u64,
    /// Time a client has to send a request's headers, idle keep-alive connections included, before the
    /// connection is closed: slow clients cannot hold connections open.
    pub header_read_timeout_seconds: u64,
    /// Largest request head (request line and headers); larger ones get 431. At least 4096.
    pub max_header_bytes: usize,
    /// Who may grant network to a task or an ad-hoc run: `admin` (default) or `operator`.
    pub network_grant: NetworkGrant,
    /// Address ranges networked runs may not reach, besides the host's loopback and own addresses, link-local
    /// and multicast, which are always refused. A list, or one comma-separated string as in the environment.
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub network_deny: Vec<String>,
    /// The embedded agent keeps a sandbox prepared for the next run that asks for a warm start (`warm`), in
    /// each slot that served one, dropped after five idle minutes (default). `false`: every run starts cold.
    pub warm_pool: bool,

    // Restarts and upgrades.
    /// Apply pending database migrations when `serve` starts (default). Off: `serve` refuses to start while
    /// any is pending and names them, so migrations run only through `automa migrate`.
    pub auto_migrate: bool,
    /// The embedded agent's name; default `embedded-<hostname>`. Servers sharing one database on one host need
    /// different names, since an agent that starts gives up every run its record held.
    pub embedded_agent_name: Option<String>,
    // Triggers (webhooks).
    /// Runs a new hook may start per rolling minute when its creator names no rate.
    pub hook_rate_per_minute: u32,
    /// The highest rate a hook may be given.
    pub hook_max_rate_per_minute: u32,
    // Retention. Each rule is off while unset; a run is deleted when either run rule says so, and queued or
    // running runs never are.
    /// Finished runs, with their output, are deleted this many days after they finished (ad-hoc runs too).
    pub retention_run_days: Option<u32>,
    /// Of each task's finished runs, only the newest this many (in the order they were queued) are kept.
    pub retention_runs_per_task: Option<u32>,
    /// Audit entries older than this many days are deleted; verification then starts from a checkpoint.
    pub retention_audit_days: Option<u32>,
    /// Time between retention passes; the first runs when the server starts.
    pub retention_interval_seconds: u64,
    // Observability: metrics and logs.
    /// A second listen address that serves `GET /metrics` without a token, and nothing else: for a
    /// Prometheus server on a private network. On the main address `/metrics` needs a viewer's token.
    pub metrics_bind: Option<String>,
    /// Logs go to this file, rolled by size, instead of standard error (`automa serve` only).
    pub log_file: Option<PathBuf>,
    /// A log file is rolled before it grows past this size.
    pub log_max_bytes: u64,
    /// Rolled log files kept (`automa.log.1` is the newest) besides the current one; older ones are deleted.
    pub log_max_files: usize,
    // Trigger bounds.
    /// The largest JSON body a hook call may carry; it is kept until the run's last attempt ends.
    pub hook_max_payload_bytes: usize,
    /// The most run-after links one chain may follow from the run that started it (hook, API call, schedule);
    /// a run one link deeper is recorded `skipped` instead of queued.
    pub run_after_max_depth: u32,
    /// The most run-after runs of one task that may wait in the queue at once; one more is recorded `skipped`.
    pub run_after_max_queued: u32,
    // Notifications (docs/architecture.md, "Notifications").
    /// The dashboard's address as users reach it (`https://automa.example.com`), for the run links in notices;
    /// without it notices carry no link.
    pub public_url: Option<String>,
    /// The SMTP relay e-mail channels send through; without it e-mail channels cannot be created.
    pub smtp_host: Option<String>,
    /// Default: 587 with `starttls`, 465 with `tls`, 25 with `none`.
    pub smtp_port: Option<u16>,
    pub smtp_username: Option<String>,
    pub smtp_password: Option<SecretString>,
    /// The sender address of notices, e.g. `Automa <automa@example.com>`.
    pub smtp_from: String,
    /// `starttls` (default: the relay must offer STARTTLS), `tls` (implicit TLS, usually port 465) or `none`
    /// (plain text, for tests and a relay on the same host only).
    pub smtp_tls: SmtpTls,
    /// Attempts per delivery before it is given up as failed.
    pub notification_attempts: u32,
    /// Delay before the second attempt; each later one waits twice as long as the one before, up to an hour.
    pub notification_backoff_seconds: u64,
    /// Deliveries one server sends at once; it claims no more than this from the outbox.
    pub notification_concurrency: usize,
    /// Longest a webhook call or an SMTP exchange may take.
    pub notification_timeout_seconds: u64,
    /// An agent silent this long is reported offline to the default channels. 0 turns this off.
    pub agent_offline_seconds: u64,
    /// A scheduled fire this late is reported to the default channels (at most every 10 minutes). 0 turns this
    /// off.
    pub scheduler_late_seconds: u64,
    // Packages: scripts' dependencies (docs/architecture.md, "Dependencies"). The same names configure agents.
    /// The uv that locks scripts' dependencies; default: `uv` on `PATH`. Without one, scripts that have
    /// dependencies cannot be saved.
    pub uv: Option<PathBuf>,
    /// The package index (default: PyPI). May carry credentials: it is passed to uv in its environment.
    pub package_index_url: Option<SecretString>,
    /// More indexes, searched besides the first. A list, or one comma-separated string.
    #[serde(deserialize_with = "secret_list_or_comma_separated")]
    pub package_extra_index_urls: Vec<SecretString>,
    /// Directories or URLs of wheels to use besides the indexes. A list, or one comma-separated string.
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub package_find_links: Vec<String>,
    /// No network: packages come only from the find-links directories.
    pub package_offline: bool,
    /// The most megabytes an agent's environments may take before the least recently used are removed.
    pub env_cache_mb: u64,
}

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    Starttls,
    Tls,
    None,
}

fn list_or_comma_separated<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Form::deserialize(deserializer)? {
        Form::List(list) => list,
        Form::Text(text) => text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect(),
    })
}

fn secret_list_or_comma_separated<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<SecretString>, D::Error> {
    Ok(list_or_comma_separated(deserializer)?.into_iter().map(SecretString::new).collect())
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("automa-data"),
            database_url: None,
            bind: "127.0.0.1:8080".into(),
            env: Environment::Development,
            secret_key: None,
            token_ttl_seconds: 12 * 3600,
            max_body_bytes: 5 * 1024 * 1024,
            max_script_bytes: 1024 * 1024,
            open_signup: false,
            cors_origins: Vec::new(),
            log_format: LogFormat::Text,
            sandbox: SandboxSettings::DEFAULT_PROFILE.into(),
            python: None,
            agent_concurrency: None,
            no_agent: false,
            login_attempts_per_minute: 10,
            login_attempts_per_account_per_minute: 10,
            password_hashing_concurrency: None,
            trusted_proxies: Vec::new(),
            lease_seconds: 30,
            max_log_bytes: 10 * 1024 * 1024,
            shutdown_grace_seconds: automa_agent::DEFAULT_SHUTDOWN_GRACE_SECONDS,
            sandbox_helper: None,
            requests_per_minute: 1200,
            agent_requests_per_minute: 12_000,
            request_timeout_seconds: 60,
            header_read_timeout_seconds: 10,
            max_header_bytes: 16 * 1024,
            network_deny: Vec::new(),
            warm_pool: true,
            network_grant: NetworkGrant::Admin,
            auto_migrate: true,
            embedded_agent_name: None,
            hook_rate_per_minute: 60,
            hook_max_rate_per_minute: 1000,
            retention_run_days: None,
            retention_runs_per_task: None,
            retention_audit_days: None,
            retention_interval_seconds: 3600,
            metrics_bind: None,
            log_file: None,
            log_max_bytes: 10 * 1024 * 1024,
            log_max_files: 5,
            hook_max_payload_bytes: 1024 * 1024,
            run_after_max_depth: 10,
            run_after_max_queued: 100,
            public_url: None,
            smtp_host: None,
            smtp_port: None,
            smtp_username: None,
            smtp_password: None,
            smtp_from: "Automa <automa@localhost>".into(),
            smtp_tls: SmtpTls::Starttls,
            notification_attempts: 6,
            notification_backoff_seconds: 10,
            notification_concurrency: 4,
            notification_timeout_seconds: 10,
            agent_offline_seconds: 90,
            scheduler_late_seconds: 60,
            uv: None,
            package_index_url: None,
            package_extra_index_urls: Vec::new(),
            package_find_links: Vec::new(),
            package_offline: false,
            env_cache_mb: PackageSettings::DEFAULT_CACHE_MB,
        }
    }
}

/// `AUTOMA_*` variables that are not settings of `serve` but are still ours: the CLI client's and the tests'.
const OTHER_KNOWN_VARIABLES: &[&str] = &[
    "AUTOMA_URL",
    "AUTOMA_TOKEN",
    "AUTOMA_ALLOW_INSECURE_HTTP",
    "AUTOMA_TEST_PG_URL",
    "AUTOMA_REQUIRE_PG",
    "AUTOMA_TEST_UV",
    "AUTOMA_REQUIRE_UV",
    "AUTOMA_CONFIG",
];

impl Config {
    /// The configuration file read when none is given, in the working directory.
    pub const DEFAULT_FILE: &str = "automa.toml";

    /// Loads the layered configuration. `overrides` are the command line's flags, applied last.
    pub fn load(file: Option<PathBuf>, overrides: impl Serialize) -> Result<Config, Box<figment::Error>> {
        let file = file.unwrap_or_else(|| PathBuf::from(Config::DEFAULT_FILE));
        Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file(file))
            .merge(Env::prefixed("AUTOMA_").filter(|key| !is_other_known(key.as_str())).split("__"))
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(Box::new)
    }

    /// The names of `AUTOMA_*` variables that match no setting, most likely misspelt.
    pub fn unknown_variables() -> Vec<String> {
        let known = serde_json::to_value(Config::default()).unwrap_or_default();
        std::env::vars()
            .map(|(key, _)| key)
            .filter(|key| key.starts_with("AUTOMA_") && !OTHER_KNOWN_VARIABLES.contains(&key.as_str()))
            .filter(|key| known.get(key["AUTOMA_".len()..].to_lowercase()).is_none())
            .collect()
    }

    /// The trusted proxies as networks; a bare address is a network of one.
    pub fn trusted_proxy_networks(&self) -> anyhow::Result<Vec<ipnet::IpNet>> {
        self.trusted_proxies
            .iter()
            .map(|entry| {
                let entry = entry.trim();
                entry
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| anyhow::anyhow!("AUTOMA_TRUSTED_PROXIES: '{entry}' is not an address or CIDR"))
            })
            .collect()
    }

    /// The embedded agent's sandbox settings: its run directories live under `data_dir`.
    pub fn sandbox_settings(&self) -> SandboxSettings {
        SandboxSettings {
            profile: self.sandbox.clone(),
            python: self.python.clone(),
            helper: self.sandbox_helper.clone(),
            network_deny: self.network_deny.clone(),
            warm_pool: self.warm_pool,
            ..SandboxSettings::new(&self.data_dir)
        }
    }

    /// The embedded agent's package settings: its environments live under `data_dir`.
    pub fn package_settings(&self) -> PackageSettings {
        PackageSettings {
            uv: self.uv.clone(),
            index_url: self.package_index_url.as_ref().map(|url| url.expose().to_owned()),
            extra_index_urls: self.package_extra_index_urls.iter().map(|url| url.expose().to_owned()).collect(),
            find_links: self.package_find_links.clone(),
            offline: self.package_offline,
            cache_mb: self.env_cache_mb,
            ..PackageSettings::new(&self.data_dir)
        }
    }

    /// The run retention policy, refusing zeros: "keep 0 days" or "keep 0 runs" is far more likely a mistake
    /// than a wish to delete every finished run as soon as it ends.
    pub fn run_retention(&self) -> anyhow::Result<automa_store::RunRetention> {
        let positive = |value: Option<u32>, name: &str| match value {
            Some(0) => Err(anyhow::anyhow!("{name} must be at least 1 (leave it unset to keep everything)")),
            other => Ok(other),
        };
        let days = positive(self.retention_run_days, "AUTOMA_RETENTION_RUN_DAYS")?;
        let per_task = positive(self.retention_runs_per_task, "AUTOMA_RETENTION_RUNS_PER_TASK")?;
        positive(self.retention_audit_days, "AUTOMA_RETENTION_AUDIT_DAYS")?;
        if self.retention_interval_seconds == 0 {
            anyhow::bail!("AUTOMA_RETENTION_INTERVAL_SECONDS must be at least 1");
        }
        Ok(automa_store::RunRetention {
            max_age: days.map(|days| chrono::Duration::days(days.into())),
            per_task: per_task.map(i64::from),
        })
    }

    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.expose().to_owned(),
            None => format!("sqlite://{}", self.data_dir.join("automa.db").display()),
        }
    }
}

fn is_other_known(lowercase_key: &str) -> bool {
    OTHER_KNOWN_VARIABLES.iter().any(|known| known["AUTOMA_".len()..].eq_ignore_ascii_case(lowercase_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_in_debug() {
        let config = Config { secret_key: Some(SecretString::new("hunter2hunter2")), ..Config::default() };
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn network_deny_is_a_list_or_a_comma_separated_string() {
        let load = |value: serde_json::Value| {
            Figment::from(Serialized::defaults(Config::default()))
                .merge(Serialized::defaults(serde_json::json!({ "network_deny": value })))
                .extract::<Config>()
                .expect("loads")
                .network_deny
        };
        assert_eq!(load("10.0.0.0/8, fd00::/8".into()), ["10.0.0.0/8", "fd00::/8"]);
        assert_eq!(load(serde_json::json!(["192.168.0.0/16"])), ["192.168.0.0/16"]);
        assert!(load("".into()).is_empty());
    }

    #[test]
    fn every_list_setting_takes_a_comma_separated_string_as_the_environment_gives_it() {
        let config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Serialized::defaults(serde_json::json!({
                "trusted_proxies": "10.0.0.0/8, 127.0.0.1",
                "cors_origins": "https://a.example,https://b.example",
            })))
            .extract::<Config>()
            .expect("loads");
        assert_eq!(config.trusted_proxies, ["10.0.0.0/8", "127.0.0.1"]);
        assert_eq!(config.cors_origins, ["https://a.example", "https://b.example"]);
    }

    #[test]
    fn trusted_proxies_are_addresses_or_networks() {
        let config = Config { trusted_proxies: vec!["10.0.0.0/8".into(), " ::1 ".into()], ..Config::default() };
        let networks = config.trusted_proxy_networks().unwrap();
        assert!(networks[0].contains(&"10.1.2.3".parse::<std::net::IpAddr>().unwrap()));
        assert!(networks[1].contains(&"::1".parse::<std::net::IpAddr>().unwrap()));
        let bad = Config { trusted_proxies: vec!["proxy.local".into()], ..Config::default() };
        assert!(bad.trusted_proxy_networks().unwrap_err().to_string().contains("'proxy.local'"));
    }

    #[test]
    fn retention_is_off_by_default_and_refuses_zero() {
        let policy = Config::default().run_retention().unwrap();
        assert_eq!((policy.max_age, policy.per_task), (None, None));
        let set = Config { retention_run_days: Some(7), retention_runs_per_task: Some(3), ..Config::default() };
        let policy = set.run_retention().unwrap();
        assert_eq!((policy.max_age, policy.per_task), (Some(chrono::Duration::days(7)), Some(3)));
        for zero in [
            Config { retention_run_days: Some(0), ..Config::default() },
            Config { retention_runs_per_task: Some(0), ..Config::default() },
            Config { retention_audit_days: Some(0), ..Config::default() },
            Config { retention_interval_seconds: 0, ..Config::default() },
        ] {
            assert!(zero.run_retention().unwrap_err().to_string().contains("at least 1"));
        }
    }

    #[test]
    fn default_database_is_sqlite_in_the_data_dir() {
        assert_eq!(Config::default().database_url(), "sqlite://automa-data/automa.db");
    }
}
