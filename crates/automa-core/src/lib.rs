//! Automa's domain: the types and rules every other crate shares. Nothing here does IO, so the rules can be
//! tested exhaustively and reused by the server, the store and the agent alike.

pub mod audit;
pub mod dependencies;
pub mod fire;
pub mod names;
pub mod params;
pub mod role;
pub mod run;
pub mod schedule;

pub use audit::{AuditKey, AuditRecord, GENESIS_HASH, HashScheme};
pub use dependencies::{Requirement, RequiresPython, ScriptMetadata, read_script_metadata};
pub use fire::{FireOutcome, FirePlan, PlannedFire, SkipReason};
pub use names::{Email, InvalidField, ResourceName};
pub use params::{Args, EnvVars, Labels, Limits, RunParams, RunParamsChange, SecretNames};
pub use role::Role;
pub use run::{RunStatus, Trigger};
pub use schedule::{Schedule, ScheduleKind};
