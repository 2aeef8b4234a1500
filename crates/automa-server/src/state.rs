//! What every handler shares.

use std::{path::PathBuf, sync::Arc};

use automa_store::Store;

use crate::{
    auth::{Sessions, SharedAccess},
    config::Config,
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
}
