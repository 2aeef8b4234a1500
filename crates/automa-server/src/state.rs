//! What every handler shares.

use std::{
    path::PathBuf,
    sync::{Arc, OnceLock},
};

use automa_agent::SandboxStatus;
use automa_store::Store;

use crate::{
    auth::{Passwords, Sessions, SharedAccess},
    config::Config,
    db_size::DatabaseSize,
    events::Hub,
    execution::Execution,
    limits::{FailedLogins, LoginLimiter},
    python::SyntaxChecker,
};

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub config: Arc<Config>,
    pub sessions: Arc<Sessions>,
    pub access: SharedAccess,
    pub syntax: Arc<SyntaxChecker>,
    pub login_limiter: Arc<LoginLimiter>,
    /// Bounds concurrent password hashing.
    pub passwords: Arc<Passwords>,
    /// Failed logins waiting to be summarised in the audit log.
    pub failed_logins: Arc<FailedLogins>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
    pub data_dir: PathBuf,
    pub execution: Arc<Execution>,
    /// Changes to runs, tasks and agents, published once their transaction commits: handlers publish theirs
    /// here, [`Execution`] the agent protocol's; `/events`, log streams and waiting claims subscribe.
    pub events: Hub,
    /// The embedded agent's sandbox status, set once it started; unset without one.
    pub sandbox: Arc<OnceLock<SandboxStatus>>,
    /// Wakes the scheduler when a task's schedule may have changed.
    pub schedule_changed: Arc<tokio::sync::Notify>,
    /// Sends notices: the outbox worker, and the channels' "send test".
    pub notifier: Arc<crate::notify::Notifier>,
    /// The database's size, read at most every few seconds for `/ready` and `/metrics`.
    pub database_size: Arc<DatabaseSize>,
    /// Locks scripts' dependencies with uv.
    pub locker: Arc<crate::packages::Locker>,
}
