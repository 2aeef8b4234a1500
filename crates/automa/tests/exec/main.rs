//! End-to-end tests of execution: the real `automa` binary serving on a free port, real Python in the real
//! sandbox, the embedded agent and a remote agent. They live in the `automa` crate because the sandbox helper
//! is this binary re-executed (`automa __sandbox-helper`), which only this crate's tests can start
//! (`CARGO_BIN_EXE_automa`). Every wait is an event (SSE) or a bounded read, never a sleep.

mod agents;
mod api;
mod cli;
mod client;
mod concurrency;
mod crash;
mod dependencies;
mod fence;
mod fleet;
mod load;
mod logs;
#[path = "../../../../tests/support/packages.rs"]
mod packages;
#[path = "../../../../tests/support/pg_database.rs"]
mod pg_database;
mod restart;
mod support;
mod warm;
