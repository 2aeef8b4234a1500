//! The Automa server: the REST API with its OpenAPI document, authentication, and the audit log, over the
//! store, and the execution of runs (the agent protocol and the embedded agent). `Application::build` binds and prepares everything; `run_until_stopped` serves until the caller's
//! shutdown future completes, so tests and `main` start the server the same way.

pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod dashboard;
pub mod db_size;
pub mod error;
pub mod events;
pub mod execution;
pub mod extract;
pub mod file_modes;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod notify;
pub mod packages;
pub mod python;
pub mod rate_limit;
pub mod requests;
pub mod retention;
pub mod scheduler;
pub mod sealing;
pub mod serving;
pub mod state;

pub use app::Application;
pub use config::Config;
