//! The API's integration tests: one binary, one module per concern, each test on its own database and
//! server, against SQLite and (when available) PostgreSQL.

mod helpers;

mod access;
mod agent_fuzz;
mod agent_lifecycle;
mod agent_protocol;
mod audit;
mod client_limits;
mod crud;
mod dashboard;
mod dependencies;
mod errors;
mod events;
mod fuzz;
mod metrics;
mod notifications;
mod openapi;
#[path = "../../../../tests/support/packages.rs"]
mod packages;
#[path = "../../../../tests/support/pg_database.rs"]
mod pg_database;
mod retention;
mod run_history;
mod schedule;
mod secrets;
mod sessions;
mod triggers;
mod validation;
