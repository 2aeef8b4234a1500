//! What every handler shares.

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
};

use automa_store::Store;

use crate::{
    auth::{Sessions, SharedAccess},
    config::Config,
    execution::Execution,
    limits::LoginLimiter,
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
    pub data_dir: PathBuf,
    pub execution: Arc<Execution>,
    /// The embedded agent's sandbox capabilities, or why it refuses to run scripts; `None` without one.
    pub sandbox: Arc<RwLock<Option<serde_json::Value>>>,
}
